"""Decision logs: one JSON line per decision (or per denial).

Two writers: :class:`DecisionLog` appends flat JSON lines to a file or stream, and
:class:`DecisionLogger` sends OPA-style decision events through a named :mod:`logging`
logger over a bounded queue, so any handler works and ``decide`` never waits on one.
:func:`read_decision_log` reads both formats.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .bounded import DEFAULT_LIMITS, InputLimits, UndecodableLineError, read_bounded_lines
from .decision import Decision
from .diagnostics import Diagnostic, Span
from .errors import DecisionLogError

__all__ = [
    "DecisionLog",
    "DecisionLogger",
    "LogEntryError",
    "LoggedDecision",
    "decision_event",
    "flatten_event",
    "read_decision_log",
    "read_log_entry",
]

#: The logger that :class:`DecisionLogger` writes decision events to.
LOGGER_NAME = "policy_engine.decisions"


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

    def record(self, decision: Decision, policy_hash: str, context: Mapping[str, Any] | None = None,
               *, source: str | None = None) -> None:
        """Write one decision (a failure to write is swallowed: logging must not break deciding).
        ``source`` (who saw the request, e.g. ``kernel``) becomes the line's ``source``."""
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
        if source is not None:
            entry["source"] = source
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


def read_decision_log(path: str | Path, *, limits: InputLimits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """Read back a decision log (for ``policy-engine diff --replay``): flat lines of
    :class:`DecisionLog` as they are, decision events of :class:`DecisionLogger` flattened
    to the same shape by :func:`flatten_event`.

    Bounded by ``limits`` (``log_bytes``, ``log_entries``, ``log_line_chars``;
    :class:`~policy_engine.errors.InputLimitError`); a line that is not UTF-8 or not JSON is
    a :class:`~policy_engine.errors.DecisionLogError` naming its line and column.
    """
    name = str(path)
    entries = []
    try:
        for number, line in read_bounded_lines(name, limits=limits):
            entries.append(flatten_event(_parse_line(name, number, line)))
    except UndecodableLineError as exc:
        raise DecisionLogError([Diagnostic(f"decision log line is not UTF-8 text (byte {exc.byte})",
                                           Span(name, exc.line, exc.byte),
                                           "a decision log is UTF-8 JSON lines")]) from None
    except OSError as exc:
        raise DecisionLogError([Diagnostic(f"cannot read the decision log `{name}`: {exc.strerror or exc}",
                                           None)]) from None
    return entries


def _parse_line(name: str, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DecisionLogError([Diagnostic(f"decision log line is not JSON: {exc.msg[:1].lower()}{exc.msg[1:]}",
                                           Span(name, number, exc.colno),
                                           "a decision log has one JSON object per line")]) from None
    except RecursionError:
        raise DecisionLogError([Diagnostic("decision log line is nested too deeply to read",
                                           Span(name, number, 1))]) from None


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
    :class:`DecisionLog` and the OPA-style events of :class:`DecisionLogger`). Raises
    :class:`LogEntryError`."""
    if not isinstance(entry, dict):
        raise LogEntryError("is not an object")
    return _read_native(flatten_event(entry))


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
# Decision events ------------------------------------------------------------------------------


def _timestamp(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decision_event(
    decision: Decision,
    *,
    labels: Mapping[str, str],
    bundles: Mapping[str, Mapping[str, Any]],
    context: Mapping[str, Any] | None = None,
    masks: Sequence[str] = (),
    decision_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """An OPA-style decision event: ``decision_id``, ``timestamp``, ``labels``, ``bundles``,
    ``input`` (plugin, action, resource, and ``context`` when given) and ``result``
    (allowed, reason, rules). Each mask is a JSON pointer (``/input/resource``) whose field is
    removed and listed under ``erased``, as OPA does."""
    event: dict[str, Any] = {
        "decision_id": decision_id or str(uuid.uuid4()),
        "timestamp": _timestamp(time.time() if timestamp is None else timestamp),
        "labels": dict(labels),
        "bundles": {name: dict(info) for name, info in bundles.items()},
        "input": {"plugin": decision.plugin, "action": decision.action, "resource": decision.resource},
        "result": {"allowed": decision.allowed, "reason": decision.reason.value,
                   "rules": [rule.location for rule in decision.rules]},
    }
    if context:
        event["input"]["context"] = {str(k): _jsonable(v) for k, v in context.items()}
    erased = [pointer for pointer in masks if _erase(event, pointer)]
    if erased:
        event["erased"] = erased
    return event


def _erase(event: dict[str, Any], pointer: str) -> bool:
    if not pointer.startswith("/"):
        return False
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    node: Any = event
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


def flatten_event(entry: Any) -> Any:
    """A decision event in the flat shape of :class:`DecisionLog` lines (other entries as
    they are): ``plugin``, ``action``, ``resource``, ``allowed``, ``reason``, ``rules``,
    ``context`` when logged, ``time`` and ``decision_id``."""
    if not (isinstance(entry, dict) and "decision_id" in entry and isinstance(entry.get("input"), dict)):
        return entry
    given, result = entry["input"], entry.get("result")
    result = result if isinstance(result, dict) else {}
    flat: dict[str, Any] = {
        "decision_id": entry["decision_id"],
        "time": entry.get("timestamp"),
        "plugin": given.get("plugin"),
        "action": given.get("action"),
        "resource": given.get("resource"),
        "allowed": result.get("allowed"),
        "reason": result.get("reason"),
        "rules": result.get("rules", []),
    }
    if "context" in given:
        flat["context"] = given["context"]
    if "source" in entry:
        flat["source"] = entry["source"]
    return flat


class _JSONFormatter(logging.Formatter):
    # ensure_ascii escapes every control character (C0, C1, bidirectional overrides, line
    # separators), so a text handler writes one line per event that a terminal cannot misread.
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record.msg, sort_keys=True, ensure_ascii=True, default=str)


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks: a full queue drops the event and counts it."""

    def __init__(self, bounded: queue.Queue[Any]) -> None:
        super().__init__(bounded)
        self.dropped = 0
        self._count_lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatting happens on the listener's thread

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1


class _Listener(logging.handlers.QueueListener):
    def __init__(self, bounded: queue.Queue[Any], *handlers: logging.Handler) -> None:
        super().__init__(bounded, *handlers, respect_handler_level=True)
        self._bounded = bounded

    def enqueue_sentinel(self) -> None:
        # The queue may be full of events: wait for room rather than lose the stop signal
        # (None is QueueListener's sentinel).
        self._bounded.put(None, timeout=30)


class DecisionLogger:
    """Decision events through the ``policy_engine.decisions`` logger, over a bounded queue.

    ``handlers`` (any :mod:`logging` handlers: file, syslog, journald, OpenTelemetry) run on
    a :class:`~logging.handlers.QueueListener` thread and receive one record per event whose
    message is the event as one line of ASCII JSON. When the queue is full the event is
    dropped and counted in :attr:`dropped`; ``decide`` never waits. Pass it to
    ``Engine(decision_log=...)``; call :meth:`close` to flush and stop the thread.
    """

    def __init__(
        self,
        handlers: Iterable[logging.Handler],
        *,
        labels: Mapping[str, str] | None = None,
        masks: Sequence[str] = (),
        include_context: bool = False,
        only_denials: bool = False,
        queue_size: int = 10_000,
        logger_name: str = LOGGER_NAME,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package_version = version("policy_engine")
        except PackageNotFoundError:
            package_version = "unknown"
        self.labels = {"id": socket.gethostname(), "version": package_version, **dict(labels or {})}
        self.masks = tuple(masks)
        self.include_context = include_context
        self.only_denials = only_denials
        self.bundles: dict[str, dict[str, Any]] = {}
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._handler = _BoundedQueueHandler(self._queue)
        self._handlers = list(handlers)
        formatter = _JSONFormatter()
        for handler in self._handlers:
            handler.setFormatter(formatter)
        self._listener = _Listener(self._queue, *self._handlers)
        self.logger = logging.getLogger(logger_name)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self._handler)
        self._listener.start()

    @property
    def dropped(self) -> int:
        """How many events were dropped: by a full queue here, and by any handler that
        counts its own (``dropped``, as :class:`~policy_engine.uploader.DecisionUploader`)."""
        own = sum(int(getattr(h, "dropped", 0)) for h in self._handlers)
        return self._handler.dropped + own

    def set_bundle(self, revision: str, serial: int | None = None, name: str = "policy") -> None:
        """Name the bundle in force, for the ``bundles`` field of later events."""
        info: dict[str, Any] = {"revision": revision}
        if serial is not None:
            info["serial"] = serial
        self.bundles = {name: info}

    def record(self, decision: Decision, policy_hash: str, context: Mapping[str, Any] | None = None,
               *, source: str | None = None) -> None:
        """Queue one decision event (never blocks, never raises); ``source`` (who saw the
        request, e.g. ``kernel``) becomes the event's ``source``."""
        if self.only_denials and decision.allowed:
            return
        try:
            event = decision_event(
                decision, labels=self.labels,
                bundles=self.bundles or {"policy": {"revision": policy_hash}},
                context=context if self.include_context else None, masks=self.masks,
            )
            if source is not None:
                event["source"] = source
            self.logger.info(event)
        except Exception:  # noqa: BLE001 - logging must never break deciding
            pass

    def close(self) -> None:
        """Deliver the queued events, stop the listener thread and detach from the logger."""
        self.logger.removeHandler(self._handler)
        self._listener.stop()
        for handler in self._handlers:
            handler.flush()
