"""The wire between the host and a plugin worker: frames, message kinds and their limits.

This is the one module where bytes from a worker become objects, and it treats them as an
attacker's. A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
(never pickle: whatever a worker sends is parsed as plain data). Each message kind is a
frozen dataclass with an explicit, strict ``decode`` and ``encode``; there is no reflective
codec. One table of limits (:class:`WireLimits`, :data:`LIMITS`) bounds frame size, frames
per call, string lengths, nesting, list sizes and numbers; NaN and infinities, duplicate
keys and unknown fields are refused. Decoding raises only :class:`WireError`, and its cost
is linear in the frame's bytes.

Frames between calls and frames cut short are **refused**: the host reads a worker only
while it waits on a call; a frame found waiting when a call starts, a frame whose stream
ends before its length, or a frame that stalls past the deadline ends the worker (the host
raises one of the library's errors). Nothing is silently dropped.

File descriptors (SCM_RIGHTS) travel with the frame of a kind that announces them
(:class:`PassFds`, :class:`ConnectRequest`): the frame says how many, for what, and the
receiver takes exactly that many with :func:`recv_frame_with_fds`.

The decision table a worker receives has its own codec here (:class:`WireTable`): plain
data (permission names, pattern texts, rule locations), from which the worker builds its
matchers; generated code and the compiler never cross the wire.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import select
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from ..errors import ChannelValueError

__all__ = [
    "LIMITS",
    "MAX_NUMBER_DIGITS",
    "PROTOCOL_VERSION",
    "VALUE_TAGS",
    "AuditRecord",
    "CapabilityCall",
    "ChannelClosedError",
    "ConnectRequest",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "ErrorReply",
    "FrameError",
    "IsolationReport",
    "LogRecord",
    "PassFds",
    "ResolveRequest",
    "Ready",
    "Reaped",
    "Result",
    "Stopped",
    "WireEntry",
    "WireError",
    "WireLimits",
    "WireRule",
    "WireTable",
    "WorkerMessage",
    "decode_json",
    "decode_value",
    "decode_worker_message",
    "decode_worker_value",
    "INIT_FRAME_BYTES",
    "encode_frame",
    "encode_value",
    "isolation_level",
    "recv_frame",
    "recv_frame_and_fds",
    "recv_worker_message_and_fds",
    "recv_frame_with_fds",
    "recv_worker_message",
    "send_frame",
    "send_frame_with_fds",
]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: The host's ``init`` frame carries the plugin's digested sources (at most the
#: ``plugin_bytes`` input cap, base64-encoded): the worker reads it with this bound.
INIT_FRAME_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64

_HEADER = struct.Struct(">I")


class FrameError(ConnectionError):
    """The peer closed the channel or sent something that is not an acceptable frame."""


class ChannelClosedError(FrameError):
    """The peer closed the channel (end of stream), possibly in the middle of a frame."""


class WireError(FrameError):
    """Bytes from the peer that are not an acceptable message; the only error decoding raises."""


# Built once: json.dumps with non-default options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_frame(obj: Any) -> bytes:
    """The bytes of one frame carrying ``obj``; raises TypeError/ValueError if not JSON-able."""
    data = _ENCODER.encode(obj).encode("utf-8")
    return _HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, obj: Any, *, deadline: float | None = None) -> None:
    """Send ``obj`` as one frame.

    ``deadline`` is a :func:`time.monotonic` instant; past it the send fails with
    :class:`TimeoutError` instead of blocking on a peer that stopped reading. With a
    deadline the socket must be in blocking mode without a timeout (the default): each
    attempt is made with ``MSG_DONTWAIT`` and waits, when needed, in ``poll``.
    """
    frame = encode_frame(obj)
    if deadline is None:
        sock.sendall(frame)
        return
    view = memoryview(frame)
    while view:
        try:
            sent = sock.send(view, socket.MSG_DONTWAIT)
        except BlockingIOError:
            _wait(sock, select.POLLOUT, deadline)
            continue
        view = view[sent:]


def recv_frame(
    sock: socket.socket,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    deadline: float | None = None,
) -> Any:
    """Receive one frame and return the decoded JSON value.

    Raises :class:`FrameError` on end of stream (:class:`ChannelClosedError`), on a frame
    longer than ``max_bytes``, on bytes that are not UTF-8 JSON, and on values nested
    deeper than ``max_depth``. With a ``deadline`` (a :func:`time.monotonic` instant)
    raises :class:`TimeoutError` once it passes, so a peer that sends half a frame and
    stalls cannot hold the receiver; see :func:`send_frame` about the socket's mode.
    """
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if length > max_bytes:
        # Refuse before reading: the length field alone must not make us allocate 4 GiB.
        raise FrameError(f"frame of {length} bytes exceeds the limit of {max_bytes} bytes")
    payload = _recv_exact(sock, length, deadline)
    try:
        value = json.loads(payload.decode("utf-8"))
    except RecursionError as error:
        raise FrameError(f"frame nests deeper than {max_depth} levels") from error
    except (UnicodeDecodeError, ValueError) as error:
        raise FrameError(f"frame is not valid UTF-8 JSON: {error}") from error
    # Counting brackets is a cheap upper bound on depth: most frames skip the walk entirely.
    if payload.count(b"[") + payload.count(b"{") > max_depth and _depth(value) > max_depth:
        raise FrameError(f"frame nests deeper than {max_depth} levels")
    return value


def _recv_exact(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    """Exactly ``size`` bytes from ``sock``; ChannelClosedError if the stream ends first."""
    if size == 0:
        return b""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        if deadline is None:
            count = sock.recv_into(view[received:], size - received)
        else:
            try:
                count = sock.recv_into(view[received:], size - received, socket.MSG_DONTWAIT)
            except BlockingIOError:
                _wait(sock, select.POLLIN, deadline)
                continue
        if count == 0:
            raise ChannelClosedError(
                "channel closed by peer"
                + (f" after {received} of {size} bytes" if received else "")
            )
        received += count
    return bytes(buffer)


def _wait(sock: socket.socket, event: int, deadline: float) -> None:
    """Block until ``sock`` is ready for ``event`` or raise TimeoutError at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed while talking to the peer")
    poller = select.poll()
    poller.register(sock, event)
    # Whatever wakes us (readiness, hang-up, error), the next recv/send tells which it was.
    poller.poll(math.ceil(remaining * 1000))


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, iteratively so depth cannot blow the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


# -- limits ---------------------------------------------------------------------------------

#: The protocol's version: the host sends it in ``init``, the worker echoes it in ``ready``;
#: any other value is refused.
PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Every bound the host applies to what a worker sends, in one table.

    ``frame_bytes``: payload of one frame; ``frames_per_call``: frames (capability calls,
    logs, audit records) one call may send before its reply; ``name_chars``: identifiers
    (operation, capability, method, logger, action, exception type); ``resource_chars``: a
    resource; ``text_chars``: messages and tracebacks; ``string_chars``: any other string
    in a value; ``nesting``: depth of a value; ``list_items``: items of one list;
    ``object_keys``: keys of one object; ``int_min``/``int_max``: integers; floats must be
    finite; ``pids``: pids in one ``reaped``; ``fds``: descriptors in one message.
    """

    frame_bytes: int = DEFAULT_MAX_BYTES
    frames_per_call: int = 100_000
    name_chars: int = 256
    resource_chars: int = 4096
    text_chars: int = 64 * 1024
    string_chars: int = 1024 * 1024
    nesting: int = DEFAULT_MAX_DEPTH
    list_items: int = 100_000
    object_keys: int = 10_000
    int_min: int = -(2**63)
    int_max: int = 2**63 - 1
    pids: int = 4096
    fds: int = 16


#: The limits in force.
LIMITS = WireLimits()

_JSON_DECODER = json.JSONDecoder(
    parse_constant=lambda name: _refuse(f"`{name}` is not a finite number"),
    object_pairs_hook=lambda pairs: _object(pairs),
)


def _refuse(message: str) -> Any:
    raise WireError(message)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > LIMITS.object_keys:
        raise WireError(f"an object has {len(pairs)} keys, more than {LIMITS.object_keys}")
    out = dict(pairs)
    if len(out) != len(pairs):
        raise WireError("an object repeats a key")
    return out


def decode_json(payload: bytes, limits: WireLimits = LIMITS) -> Any:
    """The JSON value of one frame's payload, checked against ``limits``; only WireError.

    Strings, lists, objects, integers and floats are bounded; NaN and infinities and
    duplicate keys are refused. The walk that checks the value is iterative and visits each
    decoded item once, so the cost is linear in the payload.
    """
    if len(payload) > limits.frame_bytes:
        raise WireError(f"frame of {len(payload)} bytes exceeds the limit of "
                        f"{limits.frame_bytes} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise WireError(f"frame is not UTF-8: {error.reason} at byte {error.start}") from None
    # The C decoder stops at the interpreter's recursion limit (RecursionError, early in
    # the frame); what nests between that and the limit here is refused by the walk below.
    try:
        value = _JSON_DECODER.decode(text)
    except WireError:
        raise
    except RecursionError:
        raise WireError(f"frame nests deeper than {limits.nesting} levels") from None
    except (ValueError, TypeError) as error:  # JSONDecodeError, and int() digit limits
        raise WireError(f"frame is not valid JSON: {error}") from None
    _check_value(value, limits)
    return value


def _check_value(value: Any, limits: WireLimits) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        kind = type(item)
        if kind is str:
            if len(item) > limits.string_chars:
                raise WireError(f"a string of {len(item)} characters exceeds "
                                f"{limits.string_chars}")
        elif kind is int:
            if not limits.int_min <= item <= limits.int_max:
                raise WireError("an integer is out of range")
        elif kind is float:
            if not math.isfinite(item):
                raise WireError("a number is not finite")
        elif kind is list:
            if level > limits.nesting:
                raise WireError(f"frame nests deeper than {limits.nesting} levels")
            if len(item) > limits.list_items:
                raise WireError(f"a list of {len(item)} items exceeds {limits.list_items}")
            stack.extend((child, level + 1) for child in item)
        elif kind is dict:
            if level > limits.nesting:
                raise WireError(f"frame nests deeper than {limits.nesting} levels")
            if len(item) > limits.object_keys:
                raise WireError(f"an object has {len(item)} keys, more than {limits.object_keys}")
            stack.extend((child, level + 1) for child in item.values())


# -- field readers: each names the field it refuses -----------------------------------------

_Fields: TypeAlias = Mapping[str, Any]


def _fields(data: Any, op: str, required: Sequence[str], optional: Sequence[str] = ()) -> _Fields:
    if not isinstance(data, dict):
        raise WireError(f"`{op}` is not an object")
    allowed = {"op", *required, *optional}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise WireError(f"`{op}` has unknown field `{_clip_name(unknown[0])}`")
    missing = [name for name in required if name not in data]
    if missing:
        raise WireError(f"`{op}` lacks field `{missing[0]}`")
    return data


def _clip_name(text: str) -> str:
    return text[:64]


def _str(data: _Fields, name: str, limit: int, *, optional: bool = False) -> str:
    value = data.get(name, "" if optional else None)
    if type(value) is not str:
        raise WireError(f"field `{name}` is not a string")
    if len(value) > limit:
        raise WireError(f"field `{name}` has {len(value)} characters, more than {limit}")
    return value


def _opt_str(data: _Fields, name: str, limit: int) -> str | None:
    if data.get(name) is None:
        return None
    return _str(data, name, limit)


def _int(data: _Fields, name: str, low: int, high: int) -> int:
    value = data.get(name)
    if type(value) is not int:
        raise WireError(f"field `{name}` is not an integer")
    if not low <= value <= high:
        raise WireError(f"field `{name}` is {value}, outside {low}..{high}")
    return value


def _number(data: _Fields, name: str) -> float:
    value = data.get(name, 0)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise WireError(f"field `{name}` is not a finite number")
    return float(value)


def _bool(data: _Fields, name: str) -> bool:
    value = data.get(name)
    if type(value) is not bool:
        raise WireError(f"field `{name}` is not a boolean")
    return value


def _list(data: _Fields, name: str, limit: int) -> list[Any]:
    value = data.get(name)
    if type(value) is not list:
        raise WireError(f"field `{name}` is not a list")
    if len(value) > limit:
        raise WireError(f"field `{name}` has {len(value)} items, more than {limit}")
    return value


def _str_tuple(data: _Fields, name: str, items: int, chars: int) -> tuple[str, ...]:
    out = []
    for item in _list(data, name, items):
        if type(item) is not str or len(item) > chars:
            raise WireError(f"field `{name}` holds something other than a string of at most "
                            f"{chars} characters")
        out.append(item)
    return tuple(out)


# -- values: what a call's arguments and result may hold -------------------------------------

#: Most digits a ``$int`` or ``$decimal`` may carry (the interpreter's own default limit
#: for converting between ``int`` and ``str``).
MAX_NUMBER_DIGITS = 4300
_MAX_TIME_CHARS = 64
_FLOAT_TAGS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
#: Every tag a value may carry, in the order the README lists them.
VALUE_TAGS = ("$bytes", "$tuple", "$set", "$frozenset", "$dict", "$int", "$float",
              "$decimal", "$datetime", "$date", "$time", "$timedelta")


def encode_value(value: Any, where: str = "value", *, depth: int = 1,
                 limits: WireLimits = LIMITS) -> Any:
    """``value`` as JSON data that :func:`decode_value` turns back into an equal value.

    JSON's own types cross as they are. What JSON cannot say crosses as an object of exactly
    one key, its tag: ``{"$bytes": base64}``, ``{"$tuple": [...]}``, ``{"$set": [...]}``,
    ``{"$frozenset": [...]}``, ``{"$dict": [[key, value], ...]}`` (keys that are not
    strings, or a dict that would read as a tag), ``{"$int": digits}`` (outside 64 bits),
    ``{"$float": "nan" | "inf" | "-inf"}``, ``{"$decimal": text}``, ``{"$datetime": iso}``,
    ``{"$date": iso}``, ``{"$time": iso}``, ``{"$timedelta": [days, seconds, us]}``.
    Subclasses of these types cross as the type itself, other integral and real numbers
    (numpy's scalars) as ``int`` and ``float``. ``depth`` is the level of the frame
    ``value`` sits at, so the frame's nesting stays within ``limits``.

    Anything else, or a value over the limits, raises :class:`ChannelValueError` naming the
    type and where it was (``where`` is the name of the whole value: ``result["a"][2]``).
    """
    path: list[Any] = []
    return _encode(value, limits, path, depth, where)


def _encode(value: Any, limits: WireLimits, path: list[Any], level: int, where: str) -> Any:
    kind = type(value)
    if kind is str:
        if len(value) > limits.string_chars:
            raise _unencodable(value, where, path, f"a string of {len(value):,} characters "
                               f"is over the channel's limit of {limits.string_chars:,}")
        return value
    if kind is int:
        if limits.int_min <= value <= limits.int_max:
            return value
        return {"$int": _digits(value, where, path)}
    if kind is bool or value is None:
        return value
    if kind is float:
        if math.isfinite(value):
            return value
        return {"$float": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    if kind is list:
        return _encode_items(value, limits, path, level, where)
    if kind is dict:
        return _encode_dict(value, limits, path, level, where)
    if kind is tuple:
        return {"$tuple": _encode_items(value, limits, path, level + 1, where)}
    return _encode_other(value, limits, path, level, where)


def _encode_items(items: Any, limits: WireLimits, path: list[Any], level: int,
                  where: str) -> list[Any]:
    if level > limits.nesting:
        raise _unencodable(items, where, path, f"it nests deeper than the channel's "
                           f"{limits.nesting} levels")
    if len(items) > limits.list_items:
        raise _unencodable(items, where, path, f"{len(items):,} items are over the "
                           f"channel's limit of {limits.list_items:,}")
    out = []
    low, high, chars = limits.int_min, limits.int_max, limits.string_chars
    for index, item in enumerate(items):
        kind = type(item)
        # The common case inline: JSON's own scalars within the limits cross as they are.
        if (item is None or kind is bool or (kind is int and low <= item <= high)
                or (kind is str and len(item) <= chars)
                or (kind is float and math.isfinite(item))):
            out.append(item)
            continue
        path.append(index)
        out.append(_encode(item, limits, path, level + 1, where))
        path.pop()
    return out


def _encode_dict(value: Mapping[Any, Any], limits: WireLimits, path: list[Any], level: int,
                 where: str) -> Any:
    plain = all(type(key) is str for key in value) and not _looks_tagged(value)
    if level + (0 if plain else 2) > limits.nesting:
        raise _unencodable(value, where, path, f"it nests deeper than the channel's "
                           f"{limits.nesting} levels")
    if len(value) > (limits.object_keys if plain else limits.list_items):
        raise _unencodable(value, where, path, f"{len(value):,} keys are over the channel's "
                           f"limit of {limits.object_keys:,}")
    if plain:
        out: dict[str, Any] = {}
        low, high, chars = limits.int_min, limits.int_max, limits.string_chars
        for key, item in value.items():
            if len(key) > chars:
                raise _unencodable(key, where, path, "a key is over the channel's limit of "
                                   f"{limits.string_chars:,} characters")
            kind = type(item)
            if (item is None or kind is bool or (kind is int and low <= item <= high)
                    or (kind is str and len(item) <= chars)
                    or (kind is float and math.isfinite(item))):
                out[key] = item
                continue
            path.append(key)
            out[key] = _encode(item, limits, path, level + 1, where)
            path.pop()
        return out
    pairs = []
    for key, item in value.items():
        path.append(_Key(key))
        encoded_key = _encode(key, limits, path, level + 3, where)
        path[-1] = key
        pairs.append([encoded_key, _encode(item, limits, path, level + 3, where)])
        path.pop()
    return {"$dict": pairs}


class _Key:
    """A path step that names a dict's key itself (``keys(...)``), not the value under it."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key


def _looks_tagged(value: Mapping[Any, Any]) -> bool:
    if len(value) != 1:
        return False
    (key,) = value
    return type(key) is str and key.startswith("$")


def _encode_other(value: Any, limits: WireLimits, path: list[Any], level: int,
                  where: str) -> Any:
    # Optional modules are looked up, never imported: a value of theirs implies they are.
    datetime_module = sys.modules.get("datetime")
    decimal_module = sys.modules.get("decimal")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        size = 4 * ((len(data) + 2) // 3)
        if size > limits.string_chars:
            raise _unencodable(value, where, path, f"{len(data):,} bytes are over the "
                               f"channel's limit of {limits.string_chars // 4 * 3:,}")
        return {"$bytes": binascii.b2a_base64(data, newline=False).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        tag = "$frozenset" if isinstance(value, frozenset) else "$set"
        return {tag: _encode_items(list(value), limits, path, level + 1, where)}
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _encode(int(value), limits, path, level, where)
    if isinstance(value, float):
        return _encode(float(value), limits, path, level, where)
    if isinstance(value, str):
        return _encode(str.__str__(value), limits, path, level, where)
    if isinstance(value, (list, tuple)):
        return _encode((list if isinstance(value, list) else tuple)(value), limits, path,
                       level, where)
    if isinstance(value, dict):
        return _encode_dict(value, limits, path, level, where)
    numbers_module = sys.modules.get("numbers")
    if numbers_module is not None:  # numpy's scalars register here; a Fraction stays out
        if isinstance(value, numbers_module.Integral):
            return _encode(int(value), limits, path, level, where)
        if isinstance(value, numbers_module.Real) and not isinstance(
                value, numbers_module.Rational):
            return _encode(float(value), limits, path, level, where)
    if datetime_module is not None:
        if isinstance(value, datetime_module.datetime):
            return {"$datetime": datetime_module.datetime.isoformat(value)}
        if isinstance(value, datetime_module.date):
            return {"$date": datetime_module.date.isoformat(value)}
        if isinstance(value, datetime_module.time):
            return {"$time": datetime_module.time.isoformat(value)}
        if isinstance(value, datetime_module.timedelta):
            return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if decimal_module is not None and isinstance(value, decimal_module.Decimal):
        text = str(value)
        if len(text) > MAX_NUMBER_DIGITS:
            raise _unencodable(value, where, path, f"it has more than {MAX_NUMBER_DIGITS:,} "
                               "digits")
        return {"$decimal": text}
    raise _unencodable(value, where, path, "the channel carries JSON values, bytes, tuples, "
                       "sets, dates and times, decimals and dicts of these")


def _digits(value: int, where: str, path: list[Any]) -> str:
    try:
        text = str(value)
    except ValueError:  # past the interpreter's limit on int-to-str conversions
        text = ""
    if not text or len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _unencodable(value, where, path, f"it has more than {MAX_NUMBER_DIGITS:,} digits")
    return text


def _render_path(where: str, path: Sequence[Any]) -> str:
    out = [where]
    for step in path:
        if isinstance(step, _Key):
            return f"a key of {''.join(out)}"
        out.append(f"[{step}]" if type(step) is int else f"[{_clip_repr(step)}]")
    return "".join(out)


def _clip_repr(key: Any) -> str:
    text = f'"{key}"' if type(key) is str else repr(key)
    return text if len(text) <= 64 else text[:61] + "..."


def _type_name(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module == "builtins" else f"{module}.{name}"


def _unencodable(value: Any, where: str, path: Sequence[Any], why: str) -> ChannelValueError:
    location = _render_path(where, path)
    type_name = _type_name(value)
    return ChannelValueError(f"`{type_name}` at `{location}` cannot cross the channel "
                             f"between host and worker: {why}", where=location,
                             value_type=type_name)


def decode_value(value: Any, where: str = "value") -> Any:
    """The value :func:`encode_value` encoded; strict, raises only :class:`WireError`.

    ``value`` is JSON data already bounded by :func:`decode_json` (or :func:`recv_frame`).
    An object of one key that starts with ``$`` is a tag; an unknown tag, a payload of the
    wrong shape, an unhashable set member or dict key, or a repeated key is refused.
    """
    path: list[Any] = []
    return _decode(value, path, where)


def _decode(value: Any, path: list[Any], where: str) -> Any:
    kind = type(value)
    if kind is list:
        if not any(type(item) in _CONTAINERS for item in value):
            return value  # scalars only: a fresh list from the JSON decoder, kept as it is
        out = []
        for index, item in enumerate(value):
            path.append(index)
            out.append(_decode(item, path, where))
            path.pop()
        return out
    if kind is not dict:
        return value
    if len(value) == 1:
        ((key, payload),) = value.items()
        if key.startswith("$"):
            return _decode_tagged(key, payload, path, where)
    if not any(type(item) in _CONTAINERS for item in value.values()):
        return value
    decoded = {}
    for key, item in value.items():
        path.append(key)
        decoded[key] = _decode(item, path, where)
        path.pop()
    return decoded


def _decode_tagged(tag: str, payload: Any, path: list[Any], where: str) -> Any:
    def refuse(why: str) -> WireError:
        return WireError(f"`{_clip_name(tag)}` at `{_render_path(where, path)}` {why}")

    if tag in ("$tuple", "$set", "$frozenset"):
        if type(payload) is not list:
            raise refuse("does not hold a list")
        items = _decode(payload, path, where)
        if tag == "$tuple":
            return tuple(items)
        try:
            return set(items) if tag == "$set" else frozenset(items)
        except TypeError:
            raise refuse("holds an unhashable member") from None
    if tag == "$dict":
        if type(payload) is not list or any(type(pair) is not list or len(pair) != 2
                                            for pair in payload):
            raise refuse("does not hold a list of [key, value] pairs")
        out: dict[Any, Any] = {}
        for index, (raw_key, raw_item) in enumerate(payload):
            path.append(index)
            key = _decode(raw_key, path, where)
            item = _decode(raw_item, path, where)
            path.pop()
            try:
                if key in out:
                    raise refuse("repeats a key")
            except TypeError:
                raise refuse("has an unhashable key") from None
            out[key] = item
        return out
    if tag == "$timedelta":
        if (type(payload) is not list or len(payload) != 3
                or any(type(part) is not int for part in payload)):
            raise refuse("does not hold [days, seconds, microseconds]")
        import datetime

        try:
            return datetime.timedelta(*payload)
        except OverflowError:
            raise refuse("is out of range") from None
    if type(payload) is not str:
        raise refuse("does not hold a string")
    if tag == "$bytes":
        try:
            return binascii.a2b_base64(_strict_base64(payload))
        except (binascii.Error, ValueError):
            raise refuse("is not base64") from None
    if tag == "$float":
        if payload not in _FLOAT_TAGS:
            raise refuse("is not `nan`, `inf` or `-inf`")
        return _FLOAT_TAGS[payload]
    if tag in ("$int", "$decimal"):
        if len(payload) > MAX_NUMBER_DIGITS + 1:
            raise refuse(f"has more than {MAX_NUMBER_DIGITS:,} digits")
        if tag == "$int":
            if not _INT_TEXT.fullmatch(payload):
                raise refuse("is not an integer")
            return int(payload)
        import decimal

        try:
            return decimal.Decimal(payload)
        except decimal.InvalidOperation:
            raise refuse("is not a decimal number") from None
    if tag in ("$datetime", "$date", "$time"):
        if len(payload) > _MAX_TIME_CHARS:
            raise refuse(f"has more than {_MAX_TIME_CHARS} characters")
        import datetime

        parse = {"$datetime": datetime.datetime.fromisoformat,
                 "$date": datetime.date.fromisoformat,
                 "$time": datetime.time.fromisoformat}[tag]
        try:
            return parse(payload)
        except ValueError:
            raise refuse("is not an ISO 8601 text") from None
    raise refuse("is not a known value tag")


_CONTAINERS = (list, dict)
_INT_TEXT = re.compile(r"-?[0-9]+")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _strict_base64(text: str) -> str:
    if len(text) % 4 or not _BASE64_TEXT.fullmatch(text):
        raise ValueError("not canonical base64")
    return text


# -- the isolation report -------------------------------------------------------------------

_LEVELS = ("full", "landlock-without-scoping", "filesystem-only", "process-only")


def isolation_level(landlock_abi: int, landlock_applied: bool, seccomp_applied: bool,
                    scoping: bool) -> str:
    """The level name for a combination of applied protections."""
    if not landlock_applied or landlock_abi <= 0:
        return "process-only"
    if not seccomp_applied:
        return "filesystem-only"
    return "full" if scoping else "landlock-without-scoping"


@dataclass(frozen=True, slots=True)
class IsolationReport:
    """What isolation a worker actually runs under, sent by the worker after lockdown.

    ``level`` is one of ``full`` (Landlock with scoping, and seccomp), ``landlock-without-
    scoping``, ``filesystem-only`` (Landlock without seccomp) and ``process-only`` (no
    Landlock: rlimits, audit hook and whatever else applied). ``missing`` names every
    protection that was wanted but not applied, with the reason.
    """

    level: str
    landlock_abi: int
    seccomp: bool
    scoping: bool
    privileges_dropped: bool
    missing: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, as sent in the worker's ready frame."""
        return {
            "level": self.level,
            "landlock_abi": self.landlock_abi,
            "seccomp": self.seccomp,
            "scoping": self.scoping,
            "privileges_dropped": self.privileges_dropped,
            "missing": list(self.missing),
        }

    @classmethod
    def from_json(cls, data: Any) -> IsolationReport:
        """Strictly decode a report received from a worker; WireError if it is not one."""
        fields = _fields(data, "report", ("level", "landlock_abi", "seccomp", "scoping",
                                          "privileges_dropped", "missing"))
        level = _str(fields, "level", LIMITS.name_chars)
        if level not in _LEVELS:
            raise WireError("field `level` is not a known isolation level")
        return cls(
            level=level,
            landlock_abi=_int(fields, "landlock_abi", 0, 1000),
            seccomp=_bool(fields, "seccomp"),
            scoping=_bool(fields, "scoping"),
            privileges_dropped=_bool(fields, "privileges_dropped"),
            missing=_str_tuple(fields, "missing", 64, LIMITS.text_chars),
        )


# -- worker -> host messages ----------------------------------------------------------------

_ERROR_KINDS = ("exception", "permission_denied", "validation", "file_size", "resource_limit",
                "memory", "value")


@dataclass(frozen=True, slots=True)
class Ready:
    """``ready``: the worker is locked down and the plugin initialised."""

    op: ClassVar[str] = "ready"
    version: int
    pid: int
    report: IsolationReport
    init_result: Any = None

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "version": self.version, "pid": self.pid,
                "report": self.report.to_json(),
                "init_result": encode_value(self.init_result, "initialize()", depth=2)}

    @classmethod
    def decode(cls, data: Any) -> Ready:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("version", "pid", "report"), ("init_result",))
        version = _int(fields, "version", 0, LIMITS.int_max)
        if version != PROTOCOL_VERSION:
            raise WireError(f"protocol version {version} is not {PROTOCOL_VERSION}")
        return cls(version, _int(fields, "pid", 1, 2**31 - 1),
                   IsolationReport.from_json(fields["report"]),
                   decode_value(fields.get("init_result"), "initialize()"))


@dataclass(frozen=True, slots=True)
class Result:
    """``result``: the value a call returned (decoded from :func:`encode_value`'s form)."""

    op: ClassVar[str] = "result"
    value: Any = None

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "value": encode_value(self.value, "result", depth=2)}

    @classmethod
    def decode(cls, data: Any) -> Result:
        """Strict decoder; WireError when ``data`` is not this kind."""
        return cls(decode_value(_fields(data, cls.op, (), ("value",)).get("value"), "result"))


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``error``: a call, or the start, failed; ``error`` describes the exception as data.

    ``report`` is set when the failure came after the lockdown. The error's own fields are
    decoded strictly too (see :meth:`decode_error`).
    """

    op: ClassVar[str] = "error"
    error: Mapping[str, Any]
    report: IsolationReport | None = None

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        out: dict[str, Any] = {"op": self.op, "error": dict(self.error)}
        if self.report is not None:
            out["report"] = self.report.to_json()
        return out

    @classmethod
    def decode(cls, data: Any) -> ErrorReply:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("error",), ("report",))
        report = fields.get("report")
        return cls(cls.decode_error(fields["error"]),
                   None if report is None else IsolationReport.from_json(report))

    @staticmethod
    def decode_error(data: Any) -> dict[str, Any]:
        """The exception data, every field typed and bounded."""
        fields = _fields(data, "error", ("type", "message", "kind"),
                         ("traceback", "decision", "errors", "resource", "limit", "used",
                          "where", "value_type"))
        kind = _str(fields, "kind", LIMITS.name_chars)
        if kind not in _ERROR_KINDS:
            raise WireError("field `kind` is not a known error kind")
        out: dict[str, Any] = {
            "type": _str(fields, "type", LIMITS.text_chars),
            "message": _str(fields, "message", LIMITS.text_chars),
            "traceback": _str(fields, "traceback", LIMITS.text_chars, optional=True),
            "kind": kind,
        }
        if "decision" in fields:
            decision = _fields(fields["decision"], "decision",
                               ("plugin", "action", "resource", "reason"), ("explanation",))
            out["decision"] = {
                "plugin": _str(decision, "plugin", LIMITS.name_chars),
                "action": _str(decision, "action", LIMITS.name_chars),
                "resource": _opt_str(decision, "resource", LIMITS.resource_chars),
                "reason": _str(decision, "reason", LIMITS.text_chars),
                "explanation": _str(decision, "explanation", LIMITS.text_chars, optional=True),
            }
        if "errors" in fields:
            out["errors"] = list(_str_tuple(fields, "errors", 256, LIMITS.text_chars))
        if "resource" in fields:
            out["resource"] = _opt_str(fields, "resource", LIMITS.name_chars)
        for name in ("limit", "used"):
            if name in fields:
                out[name] = _number(fields, name)
        for name in ("where", "value_type"):
            if name in fields:
                out[name] = _str(fields, name, LIMITS.resource_chars)
        return out


@dataclass(frozen=True, slots=True)
class CapabilityCall:
    """``cap``: plugin code calls ``method(*args)`` on the host's ``capability`` mid-call."""

    op: ClassVar[str] = "cap"
    capability: str
    method: str
    args: tuple[Any, ...] = ()

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value; the arguments in the value encoding (:func:`encode_value`),
        so bytes, tuples and the rest cross as themselves. Raises :class:`ChannelValueError`
        naming what cannot cross, before anything is sent."""
        where = f"{self.capability}.{self.method}() arguments"
        return {"op": self.op, "capability": self.capability, "method": self.method,
                "args": encode_value(list(self.args), where, depth=2)}

    @classmethod
    def decode(cls, data: Any) -> CapabilityCall:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("capability", "method", "args"))
        args = _list(fields, "args", LIMITS.list_items)
        return cls(_str(fields, "capability", LIMITS.name_chars),
                   _str(fields, "method", LIMITS.name_chars),
                   tuple(decode_value(args, "args")))


@dataclass(frozen=True, slots=True)
class LogRecord:
    """``log``: a record the plugin logged during a call (``level`` 0..50)."""

    op: ClassVar[str] = "log"
    level: int
    logger: str
    message: str

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "level": self.level, "logger": self.logger,
                "message": self.message}

    @classmethod
    def decode(cls, data: Any) -> LogRecord:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("level", "logger", "message"))
        return cls(_int(fields, "level", 0, 50), _str(fields, "logger", LIMITS.name_chars),
                   _str(fields, "message", LIMITS.text_chars))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """``audit``: what the worker says its plugin did, in audit mode.

    Reported by the worker, so by the plugin's own process: a plugin can lie about itself.
    The host keeps the mark (:attr:`worker_reported`) wherever the record goes.
    """

    op: ClassVar[str] = "audit"
    worker_reported: ClassVar[bool] = True
    action: str
    resource: str | None
    allowed: bool

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "action": self.action, "resource": self.resource,
                "allowed": self.allowed}

    @classmethod
    def decode(cls, data: Any) -> AuditRecord:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("action", "resource", "allowed"))
        return cls(_str(fields, "action", LIMITS.name_chars),
                   _opt_str(fields, "resource", LIMITS.resource_chars),
                   _bool(fields, "allowed"))


@dataclass(frozen=True, slots=True)
class Reaped:
    """``reaped``: the pids of children the worker collected."""

    op: ClassVar[str] = "reaped"
    pids: tuple[int, ...] = ()

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "pids": list(self.pids)}

    @classmethod
    def decode(cls, data: Any) -> Reaped:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("pids",))
        pids = _list(fields, "pids", LIMITS.pids)
        if any(type(pid) is not int or not 0 < pid < 2**31 for pid in pids):
            raise WireError("field `pids` holds something other than a pid")
        return cls(tuple(pids))


@dataclass(frozen=True, slots=True)
class Stopped:
    """``stopped``: the plugin's ``cleanup()`` ran; the worker waits to be killed."""

    op: ClassVar[str] = "stopped"

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op}

    @classmethod
    def decode(cls, data: Any) -> Stopped:
        """Strict decoder; WireError when ``data`` is not this kind."""
        _fields(data, cls.op, ())
        return cls()


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """``connect``: the worker asks the host for a socket connected to ``host:port``.

    The host answers with :class:`PassFds` carrying one connected socket, or an error.
    """

    op: ClassVar[str] = "connect"
    host: str
    port: int
    #: the plugin's socket's address family (0: either)
    family: int = 0

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "host": self.host, "port": self.port, "family": self.family}

    @classmethod
    def decode(cls, data: Any) -> ConnectRequest:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("host", "port"), ("family",))
        family = _int(fields, "family", 0, 255) if "family" in fields else 0
        return cls(_str(fields, "host", LIMITS.name_chars), _int(fields, "port", 0, 65535),
                   family)


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """``resolve``: the worker's ``getaddrinfo`` for ``host``, served by the host's broker.

    The host answers ``cap_result`` with ``[[family, address], ...]`` or ``cap_error``.
    """

    op: ClassVar[str] = "resolve"
    host: str
    port: int
    family: int = 0

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "host": self.host, "port": self.port, "family": self.family}

    @classmethod
    def decode(cls, data: Any) -> ResolveRequest:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("host", "port", "family"))
        return cls(_str(fields, "host", LIMITS.name_chars), _int(fields, "port", 0, 65535),
                   _int(fields, "family", 0, 255))


@dataclass(frozen=True, slots=True)
class PassFds:
    """``fds``: ``count`` descriptors for ``purpose`` travel with this frame (SCM_RIGHTS)."""

    op: ClassVar[str] = "fds"
    purpose: str
    count: int

    #: ``seccomp``: the worker's seccomp listener, sent once, before any plugin code runs.
    PURPOSES: ClassVar[tuple[str, ...]] = ("socket", "file", "seccomp")

    def encode(self) -> dict[str, Any]:
        """The frame's JSON value."""
        return {"op": self.op, "purpose": self.purpose, "count": self.count}

    @classmethod
    def decode(cls, data: Any) -> PassFds:
        """Strict decoder; WireError when ``data`` is not this kind."""
        fields = _fields(data, cls.op, ("purpose", "count"))
        purpose = _str(fields, "purpose", LIMITS.name_chars)
        if purpose not in cls.PURPOSES:
            raise WireError("field `purpose` is not a known descriptor purpose")
        return cls(purpose, _int(fields, "count", 1, LIMITS.fds))


WorkerMessage: TypeAlias = (
    "Ready | Result | ErrorReply | CapabilityCall | LogRecord | AuditRecord | Reaped | Stopped"
    " | ConnectRequest | ResolveRequest | PassFds"
)

_WORKER_KINDS: dict[str, Any] = {
    kind.op: kind for kind in (Ready, Result, ErrorReply, CapabilityCall, LogRecord,
                               AuditRecord, Reaped, Stopped, ConnectRequest, ResolveRequest,
                               PassFds)
}


def decode_worker_message(payload: bytes, limits: WireLimits = LIMITS) -> WorkerMessage:
    """Decode one frame payload from a worker into its message; only :class:`WireError`."""
    return decode_worker_value(decode_json(payload, limits))


def decode_worker_value(value: Any) -> WorkerMessage:
    """The message for an already-parsed (and bounded) JSON value; only :class:`WireError`."""
    if not isinstance(value, dict):
        raise WireError("frame is not an object")
    op = value.get("op")
    kind = _WORKER_KINDS.get(op) if type(op) is str else None
    if kind is None:
        raise WireError(f"unknown message kind `{_clip_name(str(op))}`")
    message: WorkerMessage = kind.decode(value)
    return message


def recv_worker_message(sock: socket.socket, *, deadline: float | None = None,
                        limits: WireLimits = LIMITS) -> WorkerMessage:
    """Receive and strictly decode one message from a worker.

    Raises :class:`ChannelClosedError` at end of stream (also mid-frame: a frame cut short
    is refused), :class:`WireError` for anything that is not an acceptable message, and
    :class:`TimeoutError` past ``deadline``.
    """
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if length > limits.frame_bytes:
        raise WireError(f"frame of {length} bytes exceeds the limit of {limits.frame_bytes} bytes")
    return decode_worker_message(_recv_exact(sock, length, deadline), limits)


# -- descriptors ----------------------------------------------------------------------------

def send_frame_with_fds(sock: socket.socket, message: PassFds, fds: Sequence[int]) -> None:
    """Send ``message`` with ``fds`` attached (SCM_RIGHTS) in the same write."""
    if len(fds) != message.count:
        raise ValueError(f"the message announces {message.count} descriptors, not {len(fds)}")
    frame = encode_frame(message.encode())
    socket.send_fds(sock, [frame], list(fds))


def recv_frame_with_fds(sock: socket.socket, *, limits: WireLimits = LIMITS
                        ) -> tuple[PassFds, list[int]]:
    """Receive one :class:`PassFds` frame and exactly the descriptors it announces.

    Descriptors beyond the announced count, or a frame that is not ``fds``, are refused
    (WireError) after every received descriptor is closed.
    """
    data, fds, _flags, _address = socket.recv_fds(sock, limits.name_chars * 4, limits.fds + 1)
    try:
        if len(data) < _HEADER.size:
            raise WireError("descriptor frame cut short")
        (length,) = _HEADER.unpack(data[:_HEADER.size])
        if length != len(data) - _HEADER.size:
            raise WireError("descriptor frame cut short or followed by other data")
        message = decode_worker_message(data[_HEADER.size:], limits)
        if not isinstance(message, PassFds):
            raise WireError(f"expected `fds`, got `{message.op}`")
        if len(fds) != message.count:
            raise WireError(f"the frame announces {message.count} descriptors, "
                            f"{len(fds)} arrived")
    except WireError:
        for fd in fds:
            _close(fd)
        raise
    return message, fds


def recv_worker_message_and_fds(sock: socket.socket, *, deadline: float | None = None,
                                max_fds: int = 1, limits: WireLimits = LIMITS
                                ) -> tuple[WorkerMessage, list[int]]:
    """The host's side: one message from a worker, strictly decoded, and the descriptors
    that came with its first byte (at most ``max_fds``; more, truncated control data, or
    descriptors on anything but a :class:`PassFds` announcing exactly them, are refused
    with every one closed)."""
    import select

    if deadline is not None:
        import time

        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(remaining, 0))
        if not ready:
            raise TimeoutError("no frame before the deadline")
    data, fds, flags, _address = socket.recv_fds(sock, _HEADER.size, max_fds)
    try:
        if not data:
            raise ChannelClosedError("channel closed by peer")
        if flags & socket.MSG_CTRUNC or len(fds) > max_fds:
            raise WireError("more descriptors than announced arrived")
        header = data + _recv_exact(sock, _HEADER.size - len(data), deadline)
        (length,) = _HEADER.unpack(header)
        if length > limits.frame_bytes:
            raise WireError(f"frame of {length} bytes exceeds the limit of "
                            f"{limits.frame_bytes} bytes")
        message = decode_worker_message(_recv_exact(sock, length, deadline), limits)
        announced = message.count if isinstance(message, PassFds) else 0
        if len(fds) != announced:
            raise WireError(f"the frame announces {announced} descriptors, {len(fds)} arrived")
    except BaseException:
        for fd in fds:
            _close(fd)
        raise
    return message, list(fds)


def recv_frame_and_fds(sock: socket.socket, *, max_fds: int = 1,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Any, list[int]]:
    """The worker's side: one frame from the host and the descriptors that came with it.

    A reply that may carry descriptors (the answer to :class:`ConnectRequest`) is read with
    this; a reply without any gives an empty list. Descriptors arrive with the frame's first
    byte; more than ``max_fds`` (or truncated control data) is refused, all of them closed.
    """
    data, fds, flags, _address = socket.recv_fds(sock, _HEADER.size, max_fds)
    try:
        if not data:
            raise ChannelClosedError("channel closed by peer")
        if flags & socket.MSG_CTRUNC or len(fds) > max_fds:
            raise FrameError("more descriptors than announced arrived")
        header = data + _recv_exact(sock, _HEADER.size - len(data), None)
        (length,) = _HEADER.unpack(header)
        if length > max_bytes:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {max_bytes} bytes")
        payload = _recv_exact(sock, length, None)
        try:
            value = json.loads(payload.decode("utf-8"))
        except (RecursionError, UnicodeDecodeError, ValueError) as error:
            raise FrameError(f"frame is not valid UTF-8 JSON: {error}") from error
    except BaseException:
        for fd in fds:
            _close(fd)
        raise
    return value, list(fds)


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass


# -- the decision table a worker receives ---------------------------------------------------

@dataclass(frozen=True, slots=True)
class WireRule:
    """A rule as a worker needs it: where it is, and the pattern texts it covers.

    ``patterns`` None means every resource. Conditions never cross: the host evaluates
    them for a request without context before sending, so a rule either is here,
    unconditional, or is not.
    """

    location: str
    patterns: tuple[str, ...] | None

    def encode(self) -> dict[str, Any]:
        """JSON value."""
        return {"location": self.location,
                "patterns": None if self.patterns is None else list(self.patterns)}

    @classmethod
    def decode(cls, data: Any) -> WireRule:
        """Strict decoder."""
        fields = _fields(data, "rule", ("location", "patterns"))
        return cls(_str(fields, "location", LIMITS.text_chars),
                   None if fields["patterns"] is None else
                   _str_tuple(fields, "patterns", LIMITS.list_items, LIMITS.resource_chars))


@dataclass(frozen=True, slots=True)
class WireEntry:
    """What applies to one plugin for one permission (see :class:`~policy_engine.table.ActionEntry`)."""

    permission: str
    declared: bool
    declared_patterns: tuple[str, ...] | None
    allows: tuple[WireRule, ...]
    denies: tuple[WireRule, ...]

    def encode(self) -> dict[str, Any]:
        """JSON value."""
        return {"permission": self.permission, "declared": self.declared,
                "declared_patterns": None if self.declared_patterns is None
                else list(self.declared_patterns),
                "allows": [rule.encode() for rule in self.allows],
                "denies": [rule.encode() for rule in self.denies]}

    @classmethod
    def decode(cls, data: Any) -> WireEntry:
        """Strict decoder."""
        fields = _fields(data, "entry", ("permission", "declared", "declared_patterns",
                                         "allows", "denies"))
        declared = fields["declared_patterns"]
        return cls(
            permission=_str(fields, "permission", LIMITS.name_chars),
            declared=_bool(fields, "declared"),
            declared_patterns=None if declared is None else _str_tuple(
                fields, "declared_patterns", LIMITS.list_items, LIMITS.resource_chars),
            allows=tuple(WireRule.decode(r) for r in _list(fields, "allows", LIMITS.list_items)),
            denies=tuple(WireRule.decode(r) for r in _list(fields, "denies", LIMITS.list_items)),
        )


@dataclass(frozen=True, slots=True)
class WireTable:
    """One plugin's decision table as data, for its worker (replaces generated objects).

    ``trusted`` is False when the plugin's content does not match the policy's pin. The
    worker answers allowed / denied only; the host decides every denial again itself.
    """

    plugin: str
    plugin_dir: str
    enabled: bool
    trusted: bool
    entries: tuple[WireEntry, ...]

    def encode(self) -> dict[str, Any]:
        """JSON value, as sent in the init frame."""
        return {"version": PROTOCOL_VERSION, "plugin": self.plugin,
                "plugin_dir": self.plugin_dir, "enabled": self.enabled,
                "trusted": self.trusted, "entries": [e.encode() for e in self.entries]}

    @classmethod
    def decode(cls, data: Any) -> WireTable:
        """Strict decoder; WireError on anything else."""
        fields = _fields(data, "table", ("version", "plugin", "plugin_dir", "enabled",
                                         "trusted", "entries"))
        if fields["version"] != PROTOCOL_VERSION or type(fields["version"]) is not int:
            raise WireError(f"table version is not {PROTOCOL_VERSION}")
        return cls(
            plugin=_str(fields, "plugin", LIMITS.name_chars),
            plugin_dir=_str(fields, "plugin_dir", LIMITS.resource_chars),
            enabled=_bool(fields, "enabled"),
            trusted=_bool(fields, "trusted"),
            entries=tuple(WireEntry.decode(e) for e in _list(fields, "entries", 64)),
        )
