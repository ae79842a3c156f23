"""The immutable, indexed decision table and the decision procedure.

The table is built from a :class:`PolicySet` and the plugins' manifests: for each plugin and
each permission, the declared scopes, the allow rules and the deny rules that can apply,
with templates filled in and patterns compiled. ``decide`` is then two dictionary lookups, a
resource normalisation and a handful of pattern matches: it never scans every rule. For each
entry without conditions ``decide`` reads one flat record (:data:`_Record`) whose simplest
patterns are strings it compares in line.

Conditions that read only ``plugin.*`` are evaluated once, when the table is built; only
conditions that read ``context.*`` are evaluated per request.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import codes, nodes
from .compiler import CompiledRule, PolicySet, check_pattern, expand_variables
from .conditions import ConditionError, evaluate, references_context
from .decision import (
    MAX_RESOURCE_LENGTH,
    Decision,
    Reason,
    RuleRef,
    deny,
    fast_decision,
    make_decision,
)
from .diagnostics import Diagnostic, Span, did_you_mean
from .implicit import implicit_reads, is_code_below
from .matchers import Matcher, Prefixes, any_matcher, host_shape, prefix_shape
from .nodes import Effect
from .patterns import (
    _LONG_PATH,
    HostPort,
    InvalidResourceError,
    Pattern,
    compile_pattern,
    normalize,
    normalize_host_text,
)
from .patterns import _normalize_path as normalize_path
from .permissions import Permission, ResourceKind
from .settings import EMPTY_OVERLAY, Effective, Overlay, resolve

__all__ = [
    "ActionEntry",
    "DecisionTable",
    "PinStatus",
    "PluginFacts",
    "PluginTable",
    "TableRule",
    "build_plugin_table",
    "cached_pattern",
]

_PERMISSIONS: dict[str, Permission] = {p.value: p for p in Permission}


class PinStatus(str, enum.Enum):
    """Whether a plugin's content matches the policy's ``trust`` pin."""

    UNPINNED = "unpinned"
    MATCH = "match"
    MISMATCH = "mismatch"


#: The implicit reads every plugin shares (runtime, system libraries and data, devices); a
#: plugin's own code files are checked against its table's ``code_dir`` (see ``_implicit``).
_RUNTIME_READS = implicit_reads(None)


def _implicit(code_dir: str | None, path: str) -> bool:
    """``implicit_reads(plugin_dir).covers(path)``, with ``code_dir`` the normalised directory:
    the same list the worker's kernel plan and audit hook use."""
    if path.startswith(_RUNTIME_BELOW) or (len(path) <= _RUNTIME_LONGEST and path in _RUNTIME_EXACT):
        return True
    if code_dir is None or not path.startswith(code_dir):
        return False
    size = len(code_dir)
    return (len(path) == size or path[size] == "/") and is_code_below(path)


_RUNTIME_BELOW, _RUNTIME_EXACT = _RUNTIME_READS._below, _RUNTIME_READS._exact
#: No set lookup (a hash of the whole path) for a path longer than every tree's root.
_RUNTIME_LONGEST = max(map(len, _RUNTIME_EXACT), default=-1)


# What many tables share (a wildcard rule's patterns, a manifest line every plugin has) is
# asked for again with every plugin and stays in a small cache; a plugin's own patterns are
# asked for once and would only fill a large one (about 0.8 KB per plugin at 10,000).
@functools.lru_cache(maxsize=4096)
def cached_pattern(kind: ResourceKind, text: str) -> Pattern:
    """Compile a pattern once per (kind, text): thousands of plugins share global rules."""
    return compile_pattern(kind, text)


@dataclass(frozen=True, slots=True)
class TableRule:
    """A rule as it applies to one plugin and one permission."""

    ref: RuleRef
    patterns: tuple[Pattern, ...] | None
    when: nodes.Condition | None
    unless: nodes.Condition | None
    error: str | None = None  # a plugin-only condition that failed to evaluate

    def matches_resource(self, resource: str | HostPort | None) -> bool:
        """Whether the rule's patterns cover the (normalised) resource."""
        if self.patterns is None:
            return True
        if resource is None:
            return False
        for pattern in self.patterns:
            if pattern.matches(resource):
                return True
        return False


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """What applies to one plugin for one permission.

    ``plan`` is the same data prepared for ``decide``: each rule paired with one predicate
    over the resource (see :mod:`policy_engine.matchers`). It is built from the other fields
    wherever an entry is made, in the host as in a worker, and never serialised; ``decide``
    reads its parts from the entry's own slots (one object less to reach per request).
    """

    declared: bool
    declared_patterns: tuple[Pattern, ...] | None  # None: declared for any resource
    allows: tuple[TableRule, ...]
    denies: tuple[TableRule, ...]
    _deny_steps: tuple[_Step, ...] = field(init=False, compare=False, repr=False)
    _declared_test: Matcher | None = field(init=False, compare=False, repr=False)
    _allow_steps: tuple[_Step, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_deny_steps", tuple(_step(r) for r in self.denies))
        object.__setattr__(self, "_declared_test",
                           None if self.declared_patterns is None else any_matcher(self.declared_patterns))
        object.__setattr__(self, "_allow_steps", tuple(_step(r) for r in self.allows))

    @property
    def plan(self) -> _Plan:
        """The prepared rules: deny steps, the declaration's predicate, allow steps."""
        return _Plan(self._deny_steps, self._declared_test, self._allow_steps, self.declared)

    def is_declared_for(self, resource: str | HostPort | None) -> bool:
        """Whether the manifest's declaration covers the resource."""
        if not self.declared:
            return False
        if self.declared_patterns is None:
            return True
        if resource is None:
            return False
        return any(p.matches(resource) for p in self.declared_patterns)


#: One rule on the hot path: (matches the resource?, its reference as a 1-tuple (a decision's
#: ``rules`` when it decides alone, built once), the rule, applies without a condition?).
#: ``None`` as the predicate: the rule covers any resource.
_Step = tuple["Matcher | None", tuple[RuleRef], TableRule, bool]


@dataclass(frozen=True, slots=True)
class _Plan:
    denies: tuple[_Step, ...]
    declared: Matcher | None  # None: declared for any resource
    allows: tuple[_Step, ...]
    is_declared: bool  # the manifest declares the permission (for ``declared``'s resources)


@functools.lru_cache(maxsize=4096)
def _step(rule: TableRule) -> _Step:
    # Remembered by value: a wildcard rule gives an equal TableRule in every plugin's table
    # (see `_table_rule`), so all of them share one step; a plugin's own rules pass through.
    test = None if rule.patterns is None else any_matcher(rule.patterns)
    return test, (rule.ref,), rule, rule.when is None and rule.unless is None and rule.error is None


@functools.lru_cache(maxsize=4096)
def _table_rule(ref: RuleRef, patterns: tuple[Pattern, ...] | None, when: nodes.Condition | None,
                unless: nodes.Condition | None, error: str | None) -> TableRule:
    """``TableRule(...)``, one object for equal rules: a wildcard rule without templates is the
    same for thousands of plugins, and is kept once (with its patterns' tuple), not per plugin."""
    return TableRule(ref, patterns, when, unless, error)


@dataclass(frozen=True, slots=True)
class PluginTable:
    """Everything ``decide`` needs about one plugin."""

    name: str
    plugin_dir: str | None  # None: the manifest came without a directory
    enabled: bool
    pin: PinStatus
    digest: str | None
    attributes: Mapping[str, Any]
    entries: Mapping[Permission, ActionEntry]
    effective: Effective
    #: ``entries`` as a plain dict for ``decide``: a permission is a ``str`` enum whose hash and
    #: equality are its value's, so the request's action string looks an entry up directly.
    _by_action: dict[str, ActionEntry] = field(init=False, compare=False, repr=False)
    #: The normalised plugin directory, for the implicit reads of the plugin's code files.
    _code_dir: str | None = field(init=False, compare=False, repr=False)
    #: ``decide``'s view of the entries: one :data:`_Record` per permission (by
    #: ``_ACTION_INDEX``), None where the plugin has no entry, each made when a request first
    #: needs it (``_UNBUILT`` until then: a load does not pay for the records of permissions
    #: nobody asks about). A tuple (its items in the object itself, one cache line less to
    #: reach than a list's), replaced by a copy with the slot filled (see ``_fill``); the
    #: plugin table keeps the latest, so a reload keeps the records of the plugins it did
    #: not rebuild.
    _records: tuple[Any, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_action: dict[str, ActionEntry] = dict(self.entries)  # type: ignore[arg-type]
        object.__setattr__(self, "_by_action", by_action)
        object.__setattr__(self, "entries", MappingProxyType(by_action))  # one dict, not two
        code_dir = self.plugin_dir
        if code_dir is not None:
            normal = os.path.normpath(code_dir)
            code_dir = code_dir if normal == code_dir else normal
        object.__setattr__(self, "_code_dir", code_dir)
        object.__setattr__(self, "_records", tuple(_UNBUILT if action in by_action else None for action in _ACTIONS))


@dataclass(frozen=True, slots=True)
class DecisionTable:
    """The compiled answer to every question: one :class:`PluginTable` per known plugin."""

    plugins: Mapping[str, PluginTable]
    content_hash: str
    #: Which build of the engine this table is; every decision it makes carries it.
    revision: int = 0
    #: The plugins ``decide``'s fast path serves (enabled and not failing their pin), each as
    #: its table's ``_records``: a request reaches its rules without touching the table.
    _open: dict[str, tuple[Any, ...]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_open", {
            name: table._records for name, table in self.plugins.items()
            if table.enabled and table.pin is not PinStatus.MISMATCH
        })

    def _fill(self, plugin: str, index: int) -> _Record:
        """Make the record of ``plugin``'s entry for permission number ``index`` and keep it
        in a copy of the plugin's records, in the plugin table and in ``_open``: each a single
        assignment, so a concurrent ``decide`` reads the old tuple or the new one. Two threads
        filling two slots at once may each keep only its own: the other is made again."""
        table = self.plugins[plugin]
        action = _ACTIONS[index]
        record = _record(table._by_action[action], table, _CODES[action])
        records = table._records
        records = (*records[:index], record, *records[index + 1:])
        object.__setattr__(table, "_records", records)
        self._open[plugin] = records
        return record

    def suggest_plugin(self, name: str) -> str | None:
        """A ``did you mean`` for an unknown plugin name (same first letter, close spelling).

        A search over the plugin names: ``decide`` never calls it, a denial's
        :meth:`~policy_engine.decision.Decision.hints` does, when someone asks.
        """
        initial = name[:1]
        candidates = tuple(c for c in self.plugins if c[:1] == initial)
        if len(candidates) > _SUGGEST_LIMIT:
            candidates = tuple(c for c in candidates if abs(len(c) - len(name)) <= 2)[:_SUGGEST_LIMIT]
        return did_you_mean(name, candidates)

    def _plugin_hints(self, name: str) -> tuple[str, ...]:
        hint = self.suggest_plugin(name)
        return (hint,) if hint else ()

    def decide(
        self,
        plugin: str,
        action: str,
        resource: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Decide one request. Never raises: any failure is a deny with reason ``error``."""
        try:
            # The hot path: a known, open plugin, a permission it has an entry for and a str
            # resource reach the entry's record (two dictionary lookups and an index), and a
            # plain entry (no conditions) is decided here, its rules' predicates called in
            # line. Every other case goes where it would without this block, and answers the
            # same way: `_run` (an entry with conditions, no resource), `_evaluate` (a deny
            # matches, or the declaration does not: to name the rules), `_decide_general`.
            records = self._open.get(plugin)
            if records is not None and (index := _ACTION_INDEX.get(action)) is not None and (
                    record := records[index]) is not None:
                if record is _UNBUILT:
                    record = self._fill(plugin, index)
                if resource.__class__ is not str or not record[0]:
                    if resource is not None and resource.__class__ is not str:
                        return self._decide_general(plugin, action, resource, context)
                    return _run(record[-1], record[1], self.plugins[plugin], plugin, action, resource, context,
                                self.revision)
                if TYPE_CHECKING:
                    assert isinstance(resource, str)
                (_, code, base_dir, code_dir, gate, allow_starts, allow_exact, allow_test, granting, allow_steps,
                 entry) = record
                deny_starts, deny_exact, deny_test, blocking, declared_starts, declared_exact, declared_test = gate
                if len(resource) > MAX_RESOURCE_LENGTH:
                    return fast_decision(False, Reason.RESOURCE_TOO_LONG, plugin, action, resource, (), (),
                                         self.revision)
                normalised: str | HostPort
                try:
                    if code <= _READ_CODE:
                        # `normalize_path`'s test for a path already normal, in line.
                        if not (resource[:1] == "/" and len(resource) < _LONG_PATH
                                and "/." not in resource and "//" not in resource
                                and "\0" not in resource and resource[-1] != "/"):
                            resource = normalize_path(resource, base_dir)
                        normalised = resource
                        if code == _READ_CODE and (
                                resource.startswith(_RUNTIME_BELOW)
                                or (len(resource) <= _RUNTIME_LONGEST
                                    and resource in _RUNTIME_EXACT) or (
                                    code_dir is not None and resource.startswith(code_dir)
                                    and (len(resource) == len(code_dir)
                                         or resource[len(code_dir)] == "/")
                                    and is_code_below(resource))):
                            return fast_decision(True, _IMPLICIT, plugin, action, resource, (), (), self.revision)
                    elif code == _HOST_CODE:
                        normalised, resource = normalize_host_text(resource)
                    elif resource and "\0" not in resource and not resource.isspace():
                        normalised = resource
                    else:
                        normalised = normalize(_NAME, resource)
                except (InvalidResourceError, TypeError, ValueError) as exc:
                    return Decision(False, Reason.INVALID_RESOURCE, plugin, action, resource, detail=str(exc),
                                    revision=self.revision)
                if deny_starts is not None:  # the deny gate's comparisons in line, then the rest
                    denied = (resource.startswith(deny_starts) or resource in deny_exact
                              or (deny_test is not None and deny_test(normalised)))
                else:
                    denied = deny_test is not None and deny_test(normalised)
                if denied:
                    if blocking is None:  # several deny rules: each one that matches blocks
                        for test, ref, _, _ in entry._deny_steps:
                            if test(normalised):
                                blocking = ref if blocking is None else (*blocking, *ref)
                    return fast_decision(False, _DENIED, plugin, action, resource, blocking or (), (),
                                         self.revision)
                if declared_starts is not None:  # the declaration's comparisons in line, then the rest
                    declared = (resource.startswith(declared_starts) or resource in declared_exact
                                or (declared_test is not None and declared_test(normalised)))
                else:
                    declared = declared_test is None or declared_test(normalised)
                if not declared:  # `_evaluate` names the rules that would grant it
                    return _evaluate(entry, self.plugins[plugin], plugin, action, resource, normalised, context,
                                     self.revision)
                if granting is None:  # several allow rules (or none): each one that matches grants
                    for starts, exact, test, ref in allow_steps:
                        if starts is not None:
                            if not (resource.startswith(starts) or resource in exact
                                    or (test is not None and test(normalised))):
                                continue
                        elif test is not None and not test(normalised):
                            continue
                        granting = ref if granting is None else (*granting, *ref)
                    if granting is None:
                        return fast_decision(False, _NO_ALLOW, plugin, action, resource, (), (), self.revision)
                elif allow_starts is not None:  # the allow rule's comparisons in line, then the rest
                    if not (resource.startswith(allow_starts) or resource in allow_exact
                            or (allow_test is not None and allow_test(normalised))):
                        return fast_decision(False, _NO_ALLOW, plugin, action, resource, (), (), self.revision)
                elif allow_test is not None and not allow_test(normalised):
                    return fast_decision(False, _NO_ALLOW, plugin, action, resource, (), (), self.revision)
                return fast_decision(True, _ALLOWED, plugin, action, resource, granting, (), self.revision)
            return self._decide_general(plugin, action, resource, context)
        except Exception as exc:  # fail closed: a bug or odd input must never become an allow
            return deny(Reason.ERROR, str(plugin), str(action), _text(resource),
                        errors=(f"{type(exc).__name__}: {exc}",), revision=self.revision)

    def _decide_general(
        self,
        plugin: str,
        action: str,
        resource: str | None,
        context: Mapping[str, Any] | None,
    ) -> Decision:
        """Every request, step by step (explanations and "did you mean" stay lazy)."""
        revision = self.revision
        table = self.plugins.get(plugin)
        if table is None:
            return make_decision(False, Reason.UNKNOWN_PLUGIN, plugin, action, resource, revision=revision,
                                 lazy_suggestions=functools.partial(self._plugin_hints, plugin))
        permission = _PERMISSIONS.get(action)
        if permission is None:
            return Decision(False, Reason.UNKNOWN_ACTION, plugin, action, resource,
                            lazy_suggestions=functools.partial(_action_hints, action), revision=revision)
        if not table.enabled:
            return Decision(False, Reason.PLUGIN_DISABLED, plugin, action, resource, revision=revision)
        if table.pin is PinStatus.MISMATCH:
            return Decision(False, Reason.UNTRUSTED, plugin, action, resource,
                            detail=f"the plugin's content digest `{table.digest}` does not match the policy's pin",
                            revision=revision)
        normalised: str | HostPort | None = None
        if resource is not None:
            if len(resource) > MAX_RESOURCE_LENGTH:
                return make_decision(False, Reason.RESOURCE_TOO_LONG, plugin, action, resource, revision=revision)
            if resource.__class__ is not str and isinstance(resource, str):
                resource = str.__str__(resource)  # the text it holds: the matchers take exact strs
            try:
                normalised = normalize(_KINDS[permission], resource, base_dir=table.plugin_dir)
            except (InvalidResourceError, TypeError, ValueError) as exc:
                return Decision(False, Reason.INVALID_RESOURCE, plugin, action, _text(resource), detail=str(exc),
                                revision=revision)
            resource = normalised if normalised.__class__ is str else str(normalised)
            if permission is Permission.FILE_READ and _implicit(table._code_dir, resource):
                # The runtime, the plugin's code and read-only system data: one list, the
                # same the worker's kernel plan and audit hook use.
                return Decision(True, Reason.IMPLICIT, plugin, action, resource, revision=revision)
        entry = table.entries.get(permission)
        if entry is None:
            return make_decision(False, Reason.NOT_DECLARED, plugin, action, resource, revision=revision)
        return _evaluate(entry, table, plugin, action, resource, normalised, context, revision)


def _action_hints(action: str) -> tuple[str, ...]:
    hint = did_you_mean(action, _PERMISSIONS)
    return (hint,) if hint else ()


_SUGGEST_LIMIT = 500
_KINDS: dict[Permission, ResourceKind] = {p: p.kind for p in Permission}


def _text(resource: object) -> str | None:
    if resource is None:
        return None
    return str(resource)


def _condition_holds(rule: TableRule, table: PluginTable, context: Mapping[str, Any] | None) -> bool:
    if rule.when is not None and not evaluate(rule.when, table.attributes, context):
        return False
    if rule.unless is not None and evaluate(rule.unless, table.attributes, context):
        return False
    return True


def _deny_applies(rule: TableRule, table: PluginTable, context: Mapping[str, Any] | None,
                  errors: list[str]) -> bool:
    if rule.error is not None:
        errors.append(f"{rule.ref.location}: {rule.error} (a deny rule that cannot be evaluated applies)")
        return True
    try:
        return _condition_holds(rule, table, context)
    except ConditionError as exc:
        errors.append(f"{rule.ref.location}: {exc} (a deny rule that cannot be evaluated applies)")
        return True


def _allow_applies(rule: TableRule, table: PluginTable, context: Mapping[str, Any] | None,
                   errors: list[str]) -> bool:
    try:
        return _condition_holds(rule, table, context)
    except ConditionError as exc:
        errors.append(f"{rule.ref.location}: {exc} (an allow rule that cannot be evaluated does not apply)")
        return False


# The hot path ----------------------------------------------------------------------------

#: How ``_run`` normalises the resource of each action: a path (``file:read`` also checks the
#: implicit reads), a host, a name. Keyed by the value: a ``Permission`` looks itself up too.
_PATH_CODE, _READ_CODE, _HOST_CODE, _NAME_CODE = range(4)
_CODES: dict[str, int] = {
    p.value: (_READ_CODE if p is Permission.FILE_READ else
              {ResourceKind.PATH: _PATH_CODE, ResourceKind.HOST: _HOST_CODE}.get(p.kind, _NAME_CODE))
    for p in Permission
}
#: The index of each permission in a table's ``_records``, by value.
_ACTIONS: tuple[str, ...] = tuple(p.value for p in Permission)
_ACTION_INDEX: dict[str, int] = {action: index for index, action in enumerate(_ACTIONS)}

#: What ``decide`` needs of one entry, in one tuple: (plain, code, the plugin's directory, its
#: code directory, the gate, the allow rule's prefixes, literals and predicate, the granting
#: rules, the allow steps, the entry), the gate being (the deny gate's prefixes, literals and
#: predicate, the blocking rules, the declaration's prefixes, literals and predicate): one
#: tuple for every plugin whose deny rules and declaration are the same objects (wildcard
#: denies, a shared manifest line), so that a plugin's own record is two cache lines and the
#: gate one many plugins share. It holds nothing that refers back to its table (no cycle).
#:
#: - ``plain``: no rule of the entry has a condition or an error, and the manifest declares
#:   the permission; otherwise ``decide`` hands the entry to ``_run``.
#: - the deny gate: every deny rule's patterns (it matches exactly where some deny rule does),
#:   None without deny rules; with one deny rule, its reference as the decision's ``rules``,
#:   else None (``decide`` loops over ``_deny_steps`` to name them).
#: - with one allow rule, its predicate (None: any resource) and its reference as the decision's
#:   ``rules``; with several or none, None and None, and the allow steps: (prefixes, literals,
#:   predicate, reference) per rule, which ``decide`` loops over.
#: - the patterns of the deny gate, the declaration and the one allow rule that are one
#:   comparison with the request's normal text come as data (prefixes and literals:
#:   :func:`~policy_engine.matchers.prefix_shape`, :func:`~policy_engine.matchers.host_shape`),
#:   tested in line, and the predicate covers only the rest (prefixes None: the
#:   predicate covers all). A plugin's own rule is then strings in its record, not a closure,
#:   its cells and its code (fewer cache lines to reach per request in a table of thousands
#:   of plugins).
_Gate = tuple["Prefixes | None", "tuple[str, ...]", "Matcher | None", "tuple[RuleRef, ...] | None",
              "Prefixes | None", "tuple[str, ...]", "Matcher | None"]
_Record = tuple[bool, int, "str | None", "str | None", _Gate,
                "Prefixes | None", "tuple[str, ...]", "Matcher | None", "tuple[RuleRef, ...] | None",
                "tuple[_InLineStep, ...]", ActionEntry]
#: One allow rule of several in a record: (prefixes, literals, predicate, its reference), as
#: in :data:`_Record` (prefixes None: the predicate covers all, a None predicate any resource).
_InLineStep = tuple["Prefixes | None", "tuple[str, ...]", "Matcher | None", "tuple[RuleRef, ...]"]
#: A slot of ``PluginTable._records`` whose record is not made yet (the entry exists).
_UNBUILT: Any = object()


def _record(entry: ActionEntry, table: PluginTable, code: int) -> _Record:
    plain = entry.declared
    for step in entry._deny_steps:
        if not step[3] or step[0] is None:  # a deny of every resource: `_run` names it
            plain = False
    for step in entry._allow_steps:
        if not step[3]:
            plain = False
    if not plain:  # `decide` hands the entry to `_run`: only the code and the entry are read
        return (False, code, None, None, _NO_GATE, None, (), None, None, (), entry)
    blocking: tuple[RuleRef, ...] | None = None
    if len(entry._deny_steps) == 1:
        deny_test, blocking, rule, _ = entry._deny_steps[0]
        denies = rule.patterns
    else:
        denies = tuple(dict.fromkeys(pattern for rule in entry.denies for pattern in rule.patterns or ()))
        deny_test = any_matcher(denies) if denies else None
    deny_starts, deny_exact, deny_test = _in_line(code, denies, deny_test)
    declared_starts, declared_exact, declared_test = _in_line(code, entry.declared_patterns, entry._declared_test)
    gate: _Gate = (deny_starts, deny_exact, deny_test, blocking, declared_starts, declared_exact, declared_test)
    gate = _GATES.get(gate, lambda: gate)
    allow_starts: Prefixes | None = None
    allow_exact: tuple[str, ...] = ()
    allow_test: Matcher | None = None
    granting: tuple[RuleRef, ...] | None = None
    allow_steps: tuple[_InLineStep, ...] = ()
    if len(entry._allow_steps) == 1:
        test, granting, rule, _ = entry._allow_steps[0]
        allow_starts, allow_exact, allow_test = _in_line(code, rule.patterns, test)
    else:
        allow_steps = tuple((*_in_line(code, rule.patterns, test), ref) for test, ref, rule, _ in entry._allow_steps)
    return (True, code, table.plugin_dir, table._code_dir, gate, allow_starts, allow_exact, allow_test, granting,
            allow_steps, entry)


def _in_line(code: int, patterns: tuple[Pattern, ...] | None,
             test: Matcher | None) -> tuple[Prefixes | None, tuple[str, ...], Matcher | None]:
    """The comparisons of ``patterns`` that ``decide`` makes in line, on the request's normal
    text (a path, a name, a host's ``host:port``), and the predicate of the rest; without
    such comparisons, None, none and ``test`` (the patterns' own predicate)."""
    if not patterns:
        return None, (), test
    host = code == _HOST_CODE
    shape = _SHAPES.get((host, *patterns), lambda: host_shape(patterns) if host else prefix_shape(patterns))
    return (None, (), test) if shape is None else shape


_T = TypeVar("_T")


class _ByIdentity(Generic[_T]):
    """Values made from tuples of objects, remembered by the identities of those objects.

    What many plugin tables share (a wildcard rule's patterns, a manifest line many plugins
    have, see ``_table_rule`` and ``cached_pattern``) is the same objects in each, so it is
    made once and every table holds the same result: what ``decide`` reads for it is one set
    of objects, in cache, not one per plugin. A lookup costs a tuple of ids, where one by
    value would hash every pattern (each one's ``__hash__``, in Python). Each entry holds its
    objects, so their ids stay theirs while it is remembered; equal objects (``==`` sees the
    same ones first) are as good as the same. A full memo starts over.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple[int, ...], tuple[tuple[object, ...], _T]] = {}

    def get(self, parts: tuple[object, ...], make: Callable[[], _T]) -> _T:
        """The value remembered for ``parts``, or ``make()``, remembered for them."""
        key = tuple(map(id, parts))
        known = self._entries.get(key)
        if known is not None and known[0] == parts:
            return known[1]
        value = make()
        if len(self._entries) >= _REMEMBERED:
            self._entries.clear()
        self._entries[key] = (parts, value)
        return value


_REMEMBERED = 8192
#: The in-line shapes of patterns (by whether they are hosts, and the patterns).
_SHAPES: _ByIdentity[tuple[Prefixes, tuple[str, ...], Matcher | None] | None] = _ByIdentity()
#: The gates of the records: one tuple for the plugins whose deny rules and declaration are
#: the same objects.
_GATES: _ByIdentity[_Gate] = _ByIdentity()
_NO_GATE: _Gate = (None, (), None, None, None, (), None)


_NOT_DECLARED, _DENIED, _ALLOWED, _NO_ALLOW, _IMPLICIT = (
    Reason.NOT_DECLARED, Reason.DENIED_BY_RULE, Reason.ALLOWED, Reason.NO_MATCHING_ALLOW, Reason.IMPLICIT)


def _run(entry: ActionEntry, code: int, table: PluginTable, plugin: str, action: str, resource: str | None,
         context: Mapping[str, Any] | None, revision: int) -> Decision:
    """``_decide_general`` for an open plugin and an entry it has, ``resource`` a str or None:
    the same steps with the permission's normalisation chosen by ``code``, then
    ``_evaluate``. (``decide`` decides the plain entries itself; what comes here has a
    condition or an error to evaluate, or no resource.)"""
    normalised: str | HostPort | None = None
    if resource is not None:
        if len(resource) > MAX_RESOURCE_LENGTH:
            return fast_decision(False, Reason.RESOURCE_TOO_LONG, plugin, action, resource, (), (), revision)
        try:
            if code <= _READ_CODE:
                normalised = resource = normalize_path(resource, table.plugin_dir)
                if code == _READ_CODE and _implicit(table._code_dir, resource):
                    return fast_decision(True, _IMPLICIT, plugin, action, resource, (), (), revision)
            elif code == _HOST_CODE:
                normalised, resource = normalize_host_text(resource)
            elif resource and "\0" not in resource and not resource.isspace():
                normalised = resource  # a name is its own normal form (`normalize` checks the rest)
            else:
                normalised = normalize(_NAME, resource)
        except (InvalidResourceError, TypeError, ValueError) as exc:
            return Decision(False, Reason.INVALID_RESOURCE, plugin, action, resource, detail=str(exc),
                            revision=revision)
    return _evaluate(entry, table, plugin, action, resource, normalised, context, revision)


_NAME = ResourceKind.NAME


def _evaluate(entry: ActionEntry, table: PluginTable, plugin: str, action: str, resource: str | None,
              normalised: str | HostPort | None, context: Mapping[str, Any] | None, revision: int) -> Decision:
    """The rules of one entry for a normalised resource: denies, the declaration, allows."""
    errors: list[str] | None = None
    blocking: tuple[RuleRef, ...] | None = None
    for test, ref, rule, plain in entry._deny_steps:
        if test is None or (normalised is not None and test(normalised)):
            if not plain:
                if errors is None:
                    errors = []
                if not _deny_applies(rule, table, context, errors):
                    continue
            blocking = ref if blocking is None else (*blocking, *ref)
    if blocking is not None:
        return fast_decision(False, _DENIED, plugin, action, resource, blocking,
                             () if errors is None else tuple(errors), revision)
    declared = entry._declared_test
    if not entry.declared or (declared is not None and (normalised is None or not declared(normalised))):
        would = tuple(
            ref[0] for test, ref, rule, _ in entry._allow_steps
            if rule.when is None and rule.unless is None
            and (test is None or (normalised is not None and test(normalised)))
        )
        return fast_decision(False, _NOT_DECLARED, plugin, action, resource, would,
                             () if errors is None else tuple(errors), revision)
    granting: tuple[RuleRef, ...] | None = None
    for test, ref, rule, plain in entry._allow_steps:
        if test is None or (normalised is not None and test(normalised)):
            if not plain:  # an allow whose condition could not be evaluated was never kept
                if errors is None:
                    errors = []
                if not _allow_applies(rule, table, context, errors):
                    continue
            granting = ref if granting is None else (*granting, *ref)
    if granting is not None:
        return fast_decision(True, _ALLOWED, plugin, action, resource, granting,
                             () if errors is None else tuple(errors), revision)
    return fast_decision(False, _NO_ALLOW, plugin, action, resource, (),
                         () if errors is None else tuple(errors), revision)


# Building ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PluginFacts:
    """What the table needs to know about one plugin, taken from its manifest."""

    name: str
    plugin_dir: str | None  # None: the manifest came without a directory
    enabled: bool
    attributes: Mapping[str, Any]
    declared: Mapping[Permission, tuple[tuple[str, ...], ...]]  # per permission: scope lists
    declared_pointers: Mapping[tuple[Permission, str], str]  # (permission, scope) -> JSON pointer
    requested_timeouts: Mapping[str, float]
    requested_limits: Mapping[str, float]
    digest: str | None
    manifest_file: str = "<manifest>"


#: What one build keeps of the rules that give every plugin the same table rules (no
#: per-plugin template, no condition decided per plugin; most wildcard rules):
#: ``id(rule) -> (rule, ((permission, table rule), ...))``.
SharedRules = dict[int, tuple[CompiledRule, tuple[tuple[Permission, TableRule], ...]]]


def build_plugin_table(
    policy: PolicySet, facts: PluginFacts, rules: Iterable[CompiledRule],
    shared: SharedRules | None = None,
) -> tuple[PluginTable, list[Diagnostic]]:
    """Build one plugin's table from the rules that name it (or every plugin).

    Returns the table and the problems found in the manifest's scopes (unknown variables,
    invalid patterns); an entry with a problem declares nothing. ``shared``, one dict for
    every table of one policy set, saves specialising the plugin-independent rules again
    for each plugin.
    """
    problems: list[Diagnostic] = []
    pin = policy.pins.get(facts.name)
    if pin is None:
        pin_status = PinStatus.UNPINNED
    else:
        pin_status = PinStatus.MATCH if facts.digest == pin.digest else PinStatus.MISMATCH
    attributes = dict(facts.attributes)
    attributes["trusted"] = pin_status is PinStatus.MATCH
    attributes.setdefault("name", facts.name)
    frozen_attributes = MappingProxyType(attributes)

    allows: dict[Permission, list[TableRule]] = {}
    denies: dict[Permission, list[TableRule]] = {}
    for rule in rules:
        known = shared.get(id(rule)) if shared is not None else None
        if known is not None and known[0] is rule:
            placed = known[1]
        else:
            table_rule = _specialise(rule, facts, frozen_attributes)
            if table_rule is None:
                continue
            placed = _placed(rule, table_rule)
            # A rule naming one plugin is placed once anyway.
            if shared is not None and not _of_one_plugin(rule) and _is_plugin_independent(rule):
                shared[id(rule)] = (rule, placed)
        target = allows if rule.effect is Effect.ALLOW else denies
        for permission, per_kind in placed:
            target.setdefault(permission, []).append(per_kind)

    declared: dict[Permission, tuple[Pattern, ...] | None] = {}
    for permission, scope_lists in facts.declared.items():
        patterns: list[Pattern] = []
        any_resource = False
        for scopes in scope_lists:
            if not scopes:
                any_resource = True
            for scope in scopes:
                compiled = _declared_pattern(policy, facts, permission, scope, problems)
                if compiled is not None:
                    patterns.append(compiled)
        if any_resource:
            declared[permission] = None
        elif patterns:
            declared[permission] = tuple(patterns)

    entries: dict[Permission, ActionEntry] = {}
    for permission in set(allows) | set(denies) | set(declared):
        entries[permission] = ActionEntry(
            declared=permission in declared,
            declared_patterns=declared.get(permission),
            allows=tuple(allows.get(permission, ())),
            denies=tuple(denies.get(permission, ())),
        )
    overlay = policy.plugin_settings.get(facts.name, EMPTY_OVERLAY)
    if facts.requested_timeouts or facts.requested_limits:
        effective = resolve(policy.defaults, overlay, facts.requested_timeouts, facts.requested_limits)
    else:
        effective = _resolved(policy.defaults, overlay)
    table = PluginTable(
        name=facts.name,
        plugin_dir=facts.plugin_dir,
        enabled=facts.enabled,
        pin=pin_status,
        digest=facts.digest,
        attributes=frozen_attributes,
        entries=MappingProxyType(entries),
        effective=effective,
    )
    return table, problems


# The settings of the last (defaults, plugin block) pair resolved without requests: most
# plugins of a policy have no block of their own and ask for nothing, so they share one
# (immutable) Effective instead of each resolving and holding its own.
_last_resolved: tuple[Overlay, Overlay, Effective] | None = None


def _resolved(defaults: Overlay, overlay: Overlay) -> Effective:
    global _last_resolved
    last = _last_resolved
    if last is not None and last[0] is defaults and last[1] is overlay:
        return last[2]
    effective = resolve(defaults, overlay)
    _last_resolved = (defaults, overlay, effective)
    return effective


def _placed(rule: CompiledRule, table_rule: TableRule) -> tuple[tuple[Permission, TableRule], ...]:
    """The table rule for each of the rule's permissions that it has patterns for."""
    placed = []
    for permission in rule.permissions:
        per_kind = _for_kind(table_rule, _KINDS[permission])
        if per_kind is not None:
            placed.append((permission, per_kind))
    return tuple(placed)


def _of_one_plugin(rule: CompiledRule) -> bool:
    """Whether the rule names exactly one plugin (it is placed in one table only)."""
    return rule.plugins is not None and len(rule.plugins) == 1


def _is_plugin_independent(rule: CompiledRule) -> bool:
    """Whether :func:`_specialise` gives every plugin the same table rule: no per-plugin
    template, and no condition it decides for the plugin (those reading ``context`` stay)."""
    return ((rule.when is None or references_context(rule.when))
            and (rule.unless is None or references_context(rule.unless))
            and (rule.patterns is None or all(p.compiled is not None for p in rule.patterns)))


def _specialise(rule: CompiledRule, facts: PluginFacts, attributes: Mapping[str, Any]) -> TableRule | None:
    """The rule for one plugin: plugin-only conditions decided now, templates filled in."""
    when, unless, error = rule.when, rule.unless, None
    try:
        if when is not None and not references_context(when):
            if not evaluate(when, attributes, None):
                return None
            when = None
        if unless is not None and not references_context(unless):
            if evaluate(unless, attributes, None):
                return None
            unless = None
    except ConditionError as exc:
        if rule.effect is Effect.ALLOW:
            return None  # an allow that cannot be evaluated never grants
        error = str(exc)
    patterns: tuple[Pattern, ...] | None = None
    if rule.patterns is not None:
        compiled: list[Pattern] = []
        for pattern in rule.patterns:
            shared = pattern.compiled
            if shared is not None:  # no per-plugin variable: compiled once, by the compiler
                compiled.extend(shared)
                continue
            if facts.plugin_dir is None and "{plugin_dir}" in pattern.text:
                continue  # no directory, so `{plugin_dir}` names nothing: never the cwd
            text = pattern.instantiate(facts.name, facts.plugin_dir or "")
            for kind in pattern.kinds:
                try:
                    compiled.append(cached_pattern(kind, text))
                except ValueError:
                    continue  # invalid once filled in (an odd plugin_dir): the pattern matches nothing
        patterns = tuple(compiled)
    if _of_one_plugin(rule):
        # A rule of one plugin's own is specialised once per build: nothing to share, and
        # remembering it would cost a hash of its patterns and push out what is shared.
        return TableRule(rule.ref, patterns, when, unless, error)
    return _table_rule(rule.ref, patterns, when, unless, error)


def _for_kind(rule: TableRule, kind: ResourceKind) -> TableRule | None:
    if rule.patterns is None:
        return rule
    patterns = tuple(p for p in rule.patterns if p.kind is kind)
    if not patterns:
        return None
    if len(patterns) == len(rule.patterns):
        return rule
    return _table_rule(rule.ref, patterns, rule.when, rule.unless, rule.error)


def _declared_pattern(
    policy: PolicySet, facts: PluginFacts, permission: Permission, scope: str, problems: list[Diagnostic]
) -> Pattern | None:
    pointer = facts.declared_pointers.get((permission, scope), "/permissions")
    text, unknown = expand_variables(scope, policy.variables)
    if unknown:
        names = ", ".join(f"`{{{u}}}`" for u in unknown)
        hint = did_you_mean(unknown[0], ("plugin", "plugin_dir", *policy.variables))
        problems.append(Diagnostic(
            f"unknown variable {names} in scope `{scope}` of `{permission.value}`",
            Span(facts.manifest_file, 0, 0), hint, code=codes.MANIFEST_UNKNOWN_VARIABLE, pointer=pointer))
        return None
    kind = _KINDS[permission]
    if "{" not in text:
        # No variable left: the check is this compile, shared by every plugin declaring it.
        try:
            return cached_pattern(kind, text)
        except ValueError:
            pass  # reported below, as any invalid scope
    valid, error = check_pattern(text, (kind,))
    if not valid:
        problems.append(Diagnostic(
            f"invalid scope `{scope}` for `{permission.value}`: {error}",
            Span(facts.manifest_file, 0, 0), error.hint if error else None, code=codes.MANIFEST_INVALID_SCOPE, pointer=pointer))
        return None
    if facts.plugin_dir is None and "{plugin_dir}" in text:
        problems.append(Diagnostic(
            f"scope `{scope}` of `{permission.value}` uses `{{plugin_dir}}`, but the plugin has no directory",
            Span(facts.manifest_file, 0, 0),
            "give the plugin's directory (`Engine.from_source(..., plugin_paths={name: dir})`) "
            "or load the manifest from its file", code=codes.MANIFEST_INVALID_SCOPE, pointer=pointer))
        return None
    filled = text.replace("{plugin_dir}", facts.plugin_dir or "").replace("{plugin}", facts.name)
    try:
        return cached_pattern(kind, filled)
    except ValueError:
        return None
