"""An optional decision log: one JSON line per decision (or per denial)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .decision import Decision

__all__ = ["DecisionLog", "LogEntryError", "LoggedDecision", "read_decision_log", "read_log_entry"]


class DecisionLog:
    """Appends decisions as JSON lines to a file or stream.

    Each line holds the time, plugin, action, resource, allowed, reason, the determining
    rules and the policy's content hash. Context values are left out unless
    ``include_context`` is set, since callers may pass secrets in them.
    """

    def __init__(
        self,
        target: str | Path | IO[str],
        *,
        only_denials: bool = False,
        include_context: bool = False,
    ) -> None:
        self.only_denials = only_denials
        self.include_context = include_context
        self._lock = threading.Lock()
        if isinstance(target, (str, Path)):
            self._stream: IO[str] = open(target, "a", encoding="utf-8")  # noqa: SIM115
            self._owned = True
        else:
            self._stream = target
            self._owned = False

    def record(self, decision: Decision, policy_hash: str, context: Mapping[str, Any] | None = None) -> None:
        """Write one decision (a failure to write is swallowed: logging must not break deciding)."""
        if self.only_denials and decision.allowed:
            return
        entry: dict[str, Any] = {
            "time": time.time(),
            "plugin": decision.plugin,
            "action": decision.action,
            "resource": decision.resource,
            "allowed": decision.allowed,
            "reason": decision.reason.value,
            "rules": [rule.location for rule in decision.rules],
            "policy": policy_hash,
        }
        if self.include_context and context:
            entry["context"] = {str(k): _jsonable(v) for k, v in context.items()}
        line = json.dumps(entry, sort_keys=True)
        try:
            with self._lock:
                self._stream.write(line + "\n")
                self._stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Close the file if this log opened it."""
        if self._owned:
            self._stream.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def read_decision_log(path: str | Path) -> list[dict[str, Any]]:
    """Read back a decision log (for ``policy-engine diff --replay``)."""
    entries = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            line = line.strip()
            if line:
                entries.append(json.loads(line))
    return entries


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """One recorded decision as replaying needs it. ``context`` is None when the log did not
    record one (which is not the same as a recorded empty context)."""

    plugin: str
    action: str
    resource: str | None
    allowed: bool
    context: Mapping[str, Any] | None


class LogEntryError(ValueError):
    """A log entry that is no decision in any known format; the message says why."""


def read_log_entry(entry: object) -> LoggedDecision:
    """A decision from one parsed log line, whatever format wrote it (today the lines of
    :class:`DecisionLog`; other formats are added here). Raises :class:`LogEntryError`."""
    if not isinstance(entry, dict):
        raise LogEntryError("is not an object")
    return _read_native(entry)


def _read_native(entry: Mapping[str, Any]) -> LoggedDecision:
    plugin, action, resource = entry.get("plugin"), entry.get("action"), entry.get("resource")
    if not isinstance(plugin, str) or not isinstance(action, str):
        raise LogEntryError("needs `plugin` and `action` strings")
    if resource is not None and not isinstance(resource, str):
        raise LogEntryError("has a `resource` that is not a string")
    allowed = entry.get("allowed")
    if not isinstance(allowed, bool):
        raise LogEntryError("needs `allowed` (true or false)")
    context = entry.get("context")
    if "context" in entry and not isinstance(context, dict):
        raise LogEntryError("has a `context` that is not an object")
    return LoggedDecision(plugin, action, resource, allowed, context)
