"""Exceptions as data, so they can cross the IPC channel without pickle.

An exception becomes ``{"type", "message", "traceback", "kind", ...}``; ``kind`` tells the
receiving side which of our own errors to rebuild (a permission denial, a file-size or
memory limit) and anything else becomes a :class:`PluginRaisedError` carrying the original
type name, message and traceback text. Nothing received is ever evaluated or imported.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from ...errors import (
    ChannelValueError,
    FileSizeError,
    PermissionDeniedError,
    PluginRaisedError,
    PluginValidationError,
    ResourceLimitError,
)
from .checker import DeniedDecision, denial

__all__ = ["PluginRaisedError", "exception_from_data", "exception_to_data", "remote_type"]

# Long enough for any real message, short enough that a hostile peer cannot flood logs.
_MAX_TEXT = 64 * 1024
# A type is named by ``module.qualname``: long enough for real names, no longer.
_MAX_TYPE = 200
# Where in a value, and its type: a path of a few keys, never a page.
_MAX_WHERE = 1024


def exception_to_data(error: BaseException, *, with_traceback: bool = True) -> dict[str, Any]:
    """Describe ``error`` as JSON-able data.

    The host sends capability errors with ``with_traceback=False``: its stack frames are
    none of the plugin's business.
    """
    import traceback  # only on the error path: keeps it out of the worker's start-up

    data: dict[str, Any] = {
        "type": remote_type(error),
        "message": _clip(str(error)),
        "traceback": _clip("".join(traceback.format_exception(error))) if with_traceback else "",
        "kind": "exception",
    }
    if isinstance(error, PermissionDeniedError):
        decision = error.decision
        if isinstance(decision, DeniedDecision):
            data["decision"] = decision.to_json()
        else:  # the real Decision: keep what the host needs to rebuild
            reason = getattr(decision, "reason", "")
            data["decision"] = {
                "plugin": getattr(decision, "plugin", ""),
                "action": str(getattr(decision, "action", "")),
                "resource": getattr(decision, "resource", None),
                "reason": str(getattr(reason, "value", reason)),
                "explanation": decision.explain(),
            }
        data["kind"] = "permission_denied"
    elif isinstance(error, PluginValidationError):
        data["kind"] = "validation"
        data["errors"] = [_clip(str(item)) for item in error.errors]
    elif isinstance(error, ResourceLimitError):
        data["kind"] = "file_size" if isinstance(error, FileSizeError) else "resource_limit"
        data["resource"] = error.resource
        data["limit"] = error.limit
        data["used"] = error.used
    elif isinstance(error, ChannelValueError):
        data["kind"] = "value"
        data["where"] = _clip(error.where, _MAX_WHERE)
        data["value_type"] = _clip(error.value_type, _MAX_WHERE)
    elif isinstance(error, MemoryError):
        data["kind"] = "memory"
    elif isinstance(error, OSError) and error.errno == errno.EFBIG:
        data["kind"] = "file_size"
        data["resource"] = "file_size"
    return data


def exception_from_data(data: Mapping[str, Any], *, plugin: str | None = None) -> Exception:
    """The exception to raise for data made by :func:`exception_to_data`."""
    kind = data.get("kind")
    type_name = _clip(str(data.get("type", "Exception")), _MAX_TYPE)
    message = _clip(str(data.get("message", "")))
    remote_tb = _clip(str(data.get("traceback", "")))
    if kind == "permission_denied" and isinstance(data.get("decision"), Mapping):
        return denial(DeniedDecision.from_json(data["decision"]))
    if kind == "validation" and isinstance(data.get("errors"), list):
        return PluginValidationError(plugin or "?", [_clip(str(e)) for e in data["errors"]])
    if kind == "value":
        who = f"plugin `{plugin}`: " if plugin else ""
        return ChannelValueError(f"{who}{message}", where=_clip(str(data.get("where", "")),
                                                                 _MAX_WHERE),
                                 value_type=_clip(str(data.get("value_type", "")), _MAX_WHERE),
                                 plugin=plugin)
    if kind in ("file_size", "resource_limit", "memory"):
        resource = str(data.get("resource") or ("memory" if kind == "memory" else ""))
        limit = _number(data.get("limit"))
        used = _number(data.get("used"))
        cls = FileSizeError if kind == "file_size" else ResourceLimitError
        text = message if type_name.rpartition(".")[2] in ("FileSizeError", "ResourceLimitError") else (
            f"plugin `{plugin}` went over its {resource or 'resource'} limit ({type_name}: {message})"
        )
        error = cls(text, plugin=plugin, resource=resource, limit=limit, used=used)
        error.remote_traceback = remote_tb  # type: ignore[attr-defined]
        return error
    return PluginRaisedError(type_name, message, remote_tb, plugin=plugin)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def remote_type(error: BaseException) -> str:
    """``module.qualname`` of ``error``'s type (the bare name for built-ins), clipped."""
    cls = type(error)
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return _clip(name if module == "builtins" else f"{module}.{name}", _MAX_TYPE)


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + "... [truncated]"
