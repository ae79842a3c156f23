"""The permission check a worker runs for each audited action, and its denial record.

The worker only needs "may this plugin do ``action`` on ``resource``?". :func:`make_checker`
is the one place that knows how the answer is computed (the plugin's compiled decision
table, or a small interim format); everything else only sees a ``Checker``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ...errors import PermissionDeniedError

__all__ = ["AUDIT_LOGGER", "AUDIT_PREFIX", "Checker", "DeniedDecision", "denial", "make_checker"]

#: Log lines an audit-mode worker sends for each decision start with this, on this logger.
AUDIT_PREFIX = "policy-engine-audit: "
AUDIT_LOGGER = "policy_engine.plugins.audit"

#: ``checker(action, resource)`` returns None when allowed, raises PermissionDeniedError if not.
Checker = Callable[[str, "str | None"], None]


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


def make_checker(data: Mapping[str, Any], *, plugin: str = "") -> Checker:
    """Build the checker for one plugin from its checker data (sent in the init frame).

    This is the one place that knows the data's format. Two are accepted:

    ``{"table": plugin_table_to_json(...), "audit": bool}``
        the plugin's compiled decision table (:mod:`policy_engine.table`). It is rebuilt on
        first use, not at start-up: importing the decision machinery costs more than the
        rest of a worker's start. ``audit`` true logs would-be denials instead of raising.

    ``{"allow": [[action, glob-or-null], ...]}``
        the small interim format. ``action`` may itself be a glob (``file:*``). A null
        glob allows every resource of that action, and is the only thing that allows a
        resource-less request such as ``fork`` (resource None). Globs use :mod:`fnmatch`,
        where ``*`` also crosses ``/``.
    """
    if "table" in data:
        return _TableChecker(data["table"], plugin=plugin, audit=bool(data.get("audit")))
    entries: list[tuple[str, str | None]] = []
    for item in data.get("allow", ()):
        action, pattern = item
        entries.append((str(action), None if pattern is None else str(pattern)))

    def check(action: str, resource: str | None) -> None:
        for allowed_action, pattern in entries:
            if not fnmatch.fnmatchcase(action, allowed_action):
                continue
            if pattern is None or (resource is not None and fnmatch.fnmatchcase(resource, pattern)):
                return
        raise denial(DeniedDecision(plugin, action, resource, "no rule allows it"))

    return check


class _TableChecker:
    """Decides with the plugin's own compiled decision table, loaded on first use."""

    def __init__(self, table: Mapping[str, Any], *, plugin: str, audit: bool) -> None:
        self._data = table
        self._plugin = str(table.get("name") or plugin)
        self._audit = audit
        self._table: Any = None
        self._failure: str | None = None
        self._loading = False

    def preload(self) -> None:
        """Load the table now (the worker does this while it waits for the first call)."""
        if self._table is None and self._failure is None and not self._loading:
            self._loading = True
            try:
                from ...table import plugin_table_from_json

                self._table = plugin_table_from_json(self._data)
            except Exception as error:  # fail closed: every check is then a denial
                self._failure = f"{type(error).__name__}: {error}"
            finally:
                self._loading = False

    def __call__(self, action: str, resource: str | None) -> None:
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
        decision = self._table.decide(self._plugin, action, resource)
        if self._audit:
            # Audit mode denies nothing and reports every decision to the host (the log
            # channel carries it), so `learn` can list what the plugin needed.
            import json
            import logging

            audit_log = logging.getLogger(f"{AUDIT_LOGGER}.{self._plugin}")
            audit_log.setLevel(logging.INFO)
            audit_log.info(
                "%s%s", AUDIT_PREFIX, json.dumps({
                    "action": decision.action, "resource": decision.resource,
                    "allowed": decision.allowed, "reason": decision.reason.value,
                    "rules": [rule.location for rule in decision.rules],
                }))
            return
        if decision.allowed:
            return
        raise PermissionDeniedError(decision)
