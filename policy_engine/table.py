"""The immutable, indexed decision table and the decision procedure.

The table is built from a :class:`PolicySet` and the plugins' manifests: for each plugin and
each permission, the declared scopes, the allow rules and the deny rules that can apply,
with templates filled in and patterns compiled. ``decide`` is then two dictionary lookups, a
resource normalisation and a handful of pattern matches: it never scans every rule.

Conditions that read only ``plugin.*`` are evaluated once, when the table is built; only
conditions that read ``context.*`` are evaluated per request.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import codes, nodes
from .compiler import CompiledRule, PolicySet, check_pattern, expand_variables
from .conditions import ConditionError, evaluate, references_context
from .decision import MAX_RESOURCE_LENGTH, Decision, Reason, RuleRef, deny, make_decision
from .diagnostics import Diagnostic, Span, did_you_mean
from .implicit import ImplicitReads, implicit_reads
from .matchers import Matcher, any_matcher
from .nodes import Effect
from .patterns import HostPort, InvalidResourceError, Pattern, compile_pattern, normalize
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


@functools.lru_cache(maxsize=4096)
def implicit_reads_for(plugin_dir: str | None) -> ImplicitReads:
    """The implicit-read list of a plugin in ``plugin_dir`` (the same list the worker uses)."""
    return implicit_reads(plugin_dir)


@functools.lru_cache(maxsize=65536)
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
    wherever an entry is made, in the host as in a worker, and never serialised.
    """

    declared: bool
    declared_patterns: tuple[Pattern, ...] | None  # None: declared for any resource
    allows: tuple[TableRule, ...]
    denies: tuple[TableRule, ...]
    plan: _Plan = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", _Plan(
            tuple(_step(r) for r in self.denies),
            None if self.declared_patterns is None else any_matcher(self.declared_patterns),
            tuple(_step(r) for r in self.allows),
        ))

    def is_declared_for(self, resource: str | HostPort | None) -> bool:
        """Whether the manifest's declaration covers the resource."""
        if not self.declared:
            return False
        if self.declared_patterns is None:
            return True
        if resource is None:
            return False
        return any(p.matches(resource) for p in self.declared_patterns)


#: One rule on the hot path: (matches the resource?, the rule, applies without a condition?).
#: ``None`` as the predicate: the rule covers any resource.
_Step = tuple["Matcher | None", TableRule, bool]


@dataclass(frozen=True, slots=True)
class _Plan:
    denies: tuple[_Step, ...]
    declared: Matcher | None  # None: declared for any resource
    allows: tuple[_Step, ...]


def _step(rule: TableRule) -> _Step:
    test = None if rule.patterns is None else any_matcher(rule.patterns)
    return test, rule, rule.when is None and rule.unless is None and rule.error is None


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


@dataclass(frozen=True, slots=True)
class DecisionTable:
    """The compiled answer to every question: one :class:`PluginTable` per known plugin."""

    plugins: Mapping[str, PluginTable]
    content_hash: str
    #: Which build of the engine this table is; every decision it makes carries it.
    revision: int = 0

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
            # The hot path: plain loops and early exits over prepared predicates; explanations
            # and "did you mean" are rendered lazily, so a decision costs no string formatting
            # and no search, whoever asks.
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
                try:
                    normalised = normalize(_KINDS[permission], resource, base_dir=table.plugin_dir)
                except (InvalidResourceError, TypeError, ValueError) as exc:
                    return Decision(False, Reason.INVALID_RESOURCE, plugin, action, _text(resource), detail=str(exc),
                                    revision=revision)
                resource = normalised if normalised.__class__ is str else str(normalised)
                if permission is Permission.FILE_READ and \
                        implicit_reads_for(table.plugin_dir).covers(resource):
                    # The runtime, the plugin's code and read-only system data: one list, the
                    # same the worker's kernel plan and audit hook use.
                    return Decision(True, Reason.IMPLICIT, plugin, action, resource, revision=revision)
            entry = table.entries.get(permission)
            if entry is None:
                return make_decision(False, Reason.NOT_DECLARED, plugin, action, resource, revision=revision)
            plan = entry.plan
            errors: list[str] | None = None
            blocking: list[RuleRef] | None = None
            for test, rule, plain in plan.denies:
                if test is None or (normalised is not None and test(normalised)):
                    if not plain:
                        if errors is None:
                            errors = []
                        if not _deny_applies(rule, table, context, errors):
                            continue
                    if blocking is None:
                        blocking = [rule.ref]
                    else:
                        blocking.append(rule.ref)
            if blocking is not None:
                return make_decision(False, Reason.DENIED_BY_RULE, plugin, action, resource, tuple(blocking),
                                     () if errors is None else tuple(errors), revision=revision)
            declared = plan.declared
            if not entry.declared or (declared is not None and (normalised is None or not declared(normalised))):
                would = tuple(
                    rule.ref for test, rule, _ in plan.allows
                    if rule.when is None and rule.unless is None
                    and (test is None or (normalised is not None and test(normalised)))
                )
                return make_decision(False, Reason.NOT_DECLARED, plugin, action, resource, would,
                                     () if errors is None else tuple(errors), revision=revision)
            granting: list[RuleRef] | None = None
            for test, rule, _ in plan.allows:
                if test is None or (normalised is not None and test(normalised)):
                    if not (rule.when is None and rule.unless is None):
                        if errors is None:
                            errors = []
                        if not _allow_applies(rule, table, context, errors):
                            continue
                    if granting is None:
                        granting = [rule.ref]
                    else:
                        granting.append(rule.ref)
            if granting is not None:
                return make_decision(True, Reason.ALLOWED, plugin, action, resource, tuple(granting),
                                     () if errors is None else tuple(errors), revision=revision)
            return make_decision(False, Reason.NO_MATCHING_ALLOW, plugin, action, resource, (),
                                 () if errors is None else tuple(errors), revision=revision)
        except Exception as exc:  # fail closed: a bug or odd input must never become an allow
            return deny(Reason.ERROR, str(plugin), str(action), _text(resource),
                        errors=(f"{type(exc).__name__}: {exc}",), revision=self.revision)


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


def build_plugin_table(
    policy: PolicySet, facts: PluginFacts, rules: Iterable[CompiledRule]
) -> tuple[PluginTable, list[Diagnostic]]:
    """Build one plugin's table from the rules that name it (or every plugin).

    Returns the table and the problems found in the manifest's scopes (unknown variables,
    invalid patterns); an entry with a problem declares nothing.
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
        table_rule = _specialise(rule, facts, frozen_attributes)
        if table_rule is None:
            continue
        target = allows if rule.effect is Effect.ALLOW else denies
        for permission in rule.permissions:
            per_kind = _for_kind(table_rule, _KINDS[permission])
            if per_kind is not None:
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
    return TableRule(rule.ref, patterns, when, unless, error)


def _for_kind(rule: TableRule, kind: ResourceKind) -> TableRule | None:
    if rule.patterns is None:
        return rule
    patterns = tuple(p for p in rule.patterns if p.kind is kind)
    if not patterns:
        return None
    if len(patterns) == len(rule.patterns):
        return rule
    return TableRule(rule.ref, patterns, rule.when, rule.unless, rule.error)


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
