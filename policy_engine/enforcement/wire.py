"""Length-prefixed JSON frames between the host and a plugin worker.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON. JSON, and
never pickle, because the worker runs untrusted code: whatever it sends is parsed as plain
data, so a hostile worker can at worst send a wrong answer, not run code in the host.
The receiver bounds both the size and the nesting depth of what it accepts.
"""

from __future__ import annotations

import json
import math
import select
import socket
import struct
import time
from typing import Any

__all__ = [
    "ChannelClosedError",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "FrameError",
    "encode_frame",
    "recv_frame",
    "send_frame",
]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64

_HEADER = struct.Struct(">I")


class FrameError(ConnectionError):
    """The peer closed the channel or sent something that is not an acceptable frame."""


class ChannelClosedError(FrameError):
    """The peer closed the channel (end of stream), possibly in the middle of a frame."""


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
