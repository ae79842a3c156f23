"""An optional decision log: one JSON line per decision (or per denial)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .decision import Decision


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
