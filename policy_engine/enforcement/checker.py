"""The permission check a worker runs for each audited action, and its denial record.

The worker only needs "may this plugin do ``action`` on ``resource``?". The real answer will
come from ``policy_engine.table.PluginTable.from_json(data).decide(action, resource)``; until
that lands, :func:`make_checker` reads an interim format. Swapping is a change to that one
function: everything else only sees a ``Checker``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..errors import PermissionDeniedError

__all__ = ["Checker", "DeniedDecision", "denial", "make_checker"]

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

    Interim format: ``{"allow": [[action, glob-or-null], ...]}``. ``action`` may itself be a
    glob (``file:*``). A null glob allows every resource of that action, and is the only
    thing that allows a resource-less request such as ``fork`` (resource None). Globs use
    :mod:`fnmatch`, where ``*`` also crosses ``/``.
    """
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
