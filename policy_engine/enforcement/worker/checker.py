"""The permission check a worker runs for each audited action, and its denial record.

The worker only needs "may this plugin do ``action`` on ``resource``?". :func:`make_checker`
is the one place that knows how the answer is computed (from the plugin's decision table,
received as data); everything else only sees a ``Checker``. A denial names what was asked;
the host, not the worker, says why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ...errors import PermissionDeniedError

__all__ = ["CACHE_SIZE", "Checker", "DeniedDecision", "Denials", "denial", "fresh_copy",
           "make_checker"]

#: Answers the checker remembers, as many as the engine's decision cache holds by default.
CACHE_SIZE = 4096

#: ``checker(action, resource)`` returns None when allowed, raises PermissionDeniedError if not.
Checker = Callable[[str, "str | None"], None]
#: ``denials(action, resource)`` is None when allowed, else the error whose copy
#: (:func:`fresh_copy`) a denial raises: a checker's remembered answers, looked up directly.
Denials = Callable[[str, "str | None"], "PermissionDeniedError | None"]


@dataclass(frozen=True, slots=True)
class DeniedDecision:
    """A stand-in for ``policy_engine.decision.Decision``, enough for PermissionDeniedError.

    The worker cannot ship the real decision object to the host (it never unpickles), and
    the host rebuilds a denial from plain data, so both sides use this small record.
    """

    plugin: str
    action: str
    resource: str | None
    reason: str
    explanation: str = ""  # the full message, when the deciding side wrote a richer one

    @property
    def allowed(self) -> bool:
        """Always False: this only records denials."""
        return False

    def explain(self) -> str:
        """One sentence saying what was denied and why."""
        if self.explanation:
            return self.explanation
        target = f" on `{self.resource}`" if self.resource is not None else ""
        return f"plugin `{self.plugin}` may not {self.action}{target}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, for sending the denial across the IPC channel."""
        return {"plugin": self.plugin, "action": self.action, "resource": self.resource,
                "reason": self.reason, "explanation": self.explain()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeniedDecision:
        """Rebuild from :meth:`to_json` output."""
        resource = data.get("resource")
        return cls(plugin=str(data.get("plugin", "")), action=str(data.get("action", "")),
                   resource=None if resource is None else str(resource),
                   reason=str(data.get("reason", "")),
                   explanation=str(data.get("explanation", "")))


def denial(decision: DeniedDecision) -> PermissionDeniedError:
    """The error for a denial, built without depending on the real Decision class."""
    return PermissionDeniedError(cast(Any, decision))


_new_error = PermissionDeniedError.__new__


def fresh_copy(error: PermissionDeniedError) -> PermissionDeniedError:
    """A new error equal to ``error`` in every attribute a plugin can read (type, ``args``,
    hence ``str()``, ``errno``, ``strerror`` and ``filename``; ``decision``, ``plugin``), with
    no traceback, cause or context of its own: what ``type(error)(error.decision)`` builds,
    for under a third of the cost, since neither ``__init__`` nor ``explain()`` runs again.

    A remembered denial is raised as a copy, never itself: an exception raised twice would
    carry both tracebacks, and a plugin holding the first would see the second's.
    (The exception's own ``__new__`` leaves ``args`` empty when its class has an
    ``__init__``; ``args`` and the instance dictionary are what ``__init__`` sets.)
    """
    copy = _new_error(error.__class__)
    copy.args = error.args
    copy.__dict__.update(error.__dict__)
    return copy


def make_checker(data: Mapping[str, Any], *, plugin: str = "",
                 on_audit: Callable[[str, str | None, bool], None] | None = None) -> Checker:
    """Build the checker for one plugin from its checker data (sent in the init frame).

    ``data`` is ``{"table": WireTable.encode(), "audit": bool}``: the plugin's own decision
    table as data (:class:`~policy_engine.enforcement.wire.WireTable`). The checker answers
    from it and nothing else. A denial carries only what the plugin asked (action and
    resource); the host decides it again with its engine. ``audit`` true denies nothing and
    reports each decision through ``on_audit(action, resource, allowed)``.
    """
    return _TableChecker(data.get("table"), plugin=plugin, audit=bool(data.get("audit")),
                         on_audit=on_audit)


class _TableChecker:
    """Decides with the plugin's own decision table, built from data on first use."""

    def __init__(self, table: Any, *, plugin: str, audit: bool,
                 on_audit: Callable[[str, str | None, bool], None] | None) -> None:
        self._data = table
        self._plugin = plugin
        self._audit = audit
        self._on_audit = on_audit
        self._table: _Decider | None = None
        self._denial: Denials | None = None
        self._failure: str | None = None
        self._loading = False

    def preload(self) -> None:
        """Build the matchers now (the worker does this while it waits for the first call)."""
        if self._table is None and self._failure is None and not self._loading:
            self._loading = True
            try:
                from ..wire import WireTable

                self._table = _Decider(WireTable.decode(self._data))
                self._plugin = self._table.plugin
                # The engine's cache rules: the table never changes in this process and the
                # answer depends on (action, resource) alone, so an exact-key LRU is exact.
                # A denial's error is built once, with its message, and each raise gets its
                # own copy of it (fresh_copy): the decision record is immutable and shared.
                self._denial = functools.lru_cache(maxsize=CACHE_SIZE)(self._denial_of)
            except Exception as error:  # fail closed: every check is then a denial
                self._failure = f"{type(error).__name__}: {error}"
            finally:
                self._loading = False

    def denials(self) -> Denials | None:
        """The remembered answers, once the table is built and outside audit mode (which
        reports every decision); None means: call the checker. The audit hook consults them
        directly on its hot path, so a denial unwinds one frame less. They never change once
        given."""
        return None if self._audit else self._denial

    def _denial_of(self, action: str, resource: str | None) -> PermissionDeniedError | None:
        """None when allowed; else the error a denial raises a copy of (never raised itself)."""
        assert self._table is not None  # only called once the table is built
        if self._table.allows(action, resource):
            return None
        return denial(DeniedDecision(self._plugin, action, resource,
                                     "the plugin's decision table does not allow it"))

    def __call__(self, action: str, resource: str | None) -> None:
        denial_of = self._denial
        if denial_of is not None and action.__class__ is str and (
                resource is None or resource.__class__ is str):
            denied = denial_of(action, resource)  # the common case: the table is built
            if self._audit:
                if self._on_audit is not None:
                    self._on_audit(action, resource, denied is None)
                return
            if denied is not None:
                # A copy of the remembered error, made in a call: a local naming the error
                # in this frame would make a reference cycle through the traceback.
                raise fresh_copy(denied)
            return
        if self._loading:
            # Loading the table must not need a decision; if it does, refuse rather than loop.
            raise denial(DeniedDecision(self._plugin, action, resource,
                                        "the decision table is still loading"))
        self.preload()
        if self._table is None:
            if not self._audit:
                raise denial(DeniedDecision(self._plugin, action, resource,
                                            f"the decision table could not be loaded "
                                            f"({self._failure})"))
            return
        allowed = self._table.allows(action, resource)
        if self._audit:
            # Audit mode denies nothing and reports every decision to the host, which marks
            # the record as reported by the worker.
            if self._on_audit is not None:
                self._on_audit(action, resource, allowed)
            return
        if not allowed:
            raise denial(DeniedDecision(self._plugin, action, resource,
                                        "the plugin's decision table does not allow it"))


class _Decider:
    """The answer of ``DecisionTable.decide(...).allowed`` for one plugin, without context.

    Same steps in the same order as the engine: unknown action, disabled, untrusted,
    normalisation, declaration, denies, declaration cover, allows.
    """

    def __init__(self, table: Any) -> None:
        from ...implicit import implicit_reads
        from ...patterns import compile_pattern, normalize
        from ...permissions import Permission, ResourceKind

        # Held here: an import statement in allows() costs on every audited event.
        self._normalize = normalize
        self._path = ResourceKind.PATH
        self.plugin: str = table.plugin
        self._dir: str = table.plugin_dir
        self._open = bool(table.enabled and table.trusted)
        self._implicit = implicit_reads(self._dir)
        self._entries: dict[str, tuple[Any, Any, Any, Any, Any]] = {}
        for entry in table.entries:
            try:
                permission = Permission(entry.permission)
            except ValueError:
                continue
            kind = permission.kind

            def compiled(texts: tuple[str, ...] | None, kind: Any = kind) -> Any:
                if texts is None:
                    return None
                out = []
                for text in texts:
                    try:
                        out.append(compile_pattern(kind, text))
                    except ValueError:
                        continue  # as the engine does: an invalid pattern matches nothing
                return tuple(out)

            self._entries[permission.value] = (
                kind, entry.declared, compiled(entry.declared_patterns),
                tuple(compiled(rule.patterns) for rule in entry.allows),
                tuple(compiled(rule.patterns) for rule in entry.denies),
            )

    def allows(self, action: str, resource: str | None) -> bool:
        """Whether the engine would allow ``action`` on ``resource`` (no context)."""
        if not self._open:
            return False
        normalised: Any = None
        path_kind = self._path
        if action == "file:read" and resource is not None:
            try:
                normalised = self._normalize(path_kind, resource, base_dir=self._dir)
            except (TypeError, ValueError):
                return False
            if isinstance(normalised, str) and self._implicit.covers(normalised):
                return True  # as decide: the implicit-read list needs no grant
        entry = self._entries.get(action)
        if entry is None:
            return False
        kind, declared, declared_patterns, allows, denies = entry
        if resource is not None and (normalised is None or kind is not path_kind):
            # (file:read's path, normalised above, is reused: same kind, same base)
            try:
                normalised = self._normalize(kind, resource, base_dir=self._dir)
            except (TypeError, ValueError):
                return False
        if any(_covers(patterns, normalised) for patterns in denies):
            return False
        if not declared or (declared_patterns is not None
                            and not _covers(declared_patterns, normalised)):
            return False
        return any(_covers(patterns, normalised) for patterns in allows)


def _covers(patterns: Any, resource: Any) -> bool:
    if patterns is None:
        return True
    if resource is None:
        return False
    for pattern in patterns:
        if pattern.matches(resource):
            return True
    return False
