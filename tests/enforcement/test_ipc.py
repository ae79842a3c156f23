"""Frames between host and worker: round trips, limits, and hostile input."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from policy_engine.enforcement.wire import (
    ChannelClosedError,
    FrameError,
    encode_frame,
    recv_frame,
    send_frame,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def raw(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_round_trip_of_json_values(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    value = {"op": "call", "args": [1, 2.5, "ünïcode", None, True], "kwargs": {"x": [[]]}}
    send_frame(left, value)
    assert recv_frame(right) == value


def test_frames_keep_their_boundaries(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    for index in range(3):
        send_frame(left, {"n": index})
    assert [recv_frame(right)["n"] for _ in range(3)] == [0, 1, 2]


def test_large_frame_with_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    value = {"blob": "x" * (3 * 1024 * 1024)}  # larger than the socket buffer
    sender = threading.Thread(target=send_frame, args=(left, value),
                              kwargs={"deadline": time.monotonic() + 10})
    sender.start()
    assert recv_frame(right, deadline=time.monotonic() + 10) == value
    sender.join()


def test_oversize_frame_is_refused_before_reading(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">I", 0xFFFFFFF0))  # claims ~4 GiB, sends nothing else
    with pytest.raises(FrameError, match="exceeds the limit"):
        recv_frame(right)


def test_custom_size_limit(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    send_frame(left, "x" * 100)
    with pytest.raises(FrameError, match="exceeds"):
        recv_frame(right, max_bytes=50)


def test_too_deep_frame_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(raw(b"[" * 65 + b"]" * 65))
    with pytest.raises(FrameError, match="deeper"):
        recv_frame(right)


def test_depth_at_the_limit_is_fine(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(raw(b"[" * 64 + b"]" * 64))
    value = recv_frame(right)
    assert isinstance(value, list)


def test_brackets_inside_strings_do_not_count_as_depth(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    send_frame(left, {"text": "[" * 500})
    assert recv_frame(right) == {"text": "[" * 500}


def test_recursion_bomb_is_a_frame_error(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    depth = 100_000  # deep enough to exhaust the C decoder's recursion guard
    payload = b"[" * depth + b"]" * depth
    sender = threading.Thread(target=left.sendall, args=(raw(payload),))
    sender.start()
    with pytest.raises(FrameError, match="deeper"):
        recv_frame(right)
    sender.join()


def test_bad_json_and_bad_utf8(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(raw(b"{not json"))
    with pytest.raises(FrameError, match="not valid"):
        recv_frame(right)
    left.sendall(raw(b'"\xff\xfe"'))
    with pytest.raises(FrameError, match="not valid"):
        recv_frame(right)


def test_end_of_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">I", 10) + b"abc")
    left.close()
    with pytest.raises(ChannelClosedError, match="after 3 of 10 bytes"):
        recv_frame(right)
    with pytest.raises(ChannelClosedError):
        recv_frame(right)


def test_frame_error_is_a_connection_error() -> None:
    assert issubclass(FrameError, ConnectionError)
    assert issubclass(ChannelClosedError, FrameError)


def test_stalled_half_frame_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">I", 100) + b"{")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        recv_frame(right, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 5


def test_never_unpickles(pair: tuple[socket.socket, socket.socket]) -> None:
    import pickle

    left, right = pair
    left.sendall(raw(pickle.dumps({"a": 1})))
    with pytest.raises(FrameError):
        recv_frame(right)


def test_not_json_able_values_are_refused_before_sending() -> None:
    with pytest.raises(TypeError):
        encode_frame({"x": object()})
    with pytest.raises(ValueError):
        encode_frame(float("nan"))


def test_encoding_is_compact_utf8() -> None:
    frame = encode_frame({"a": "é"})
    assert frame[4:] == json.dumps({"a": "é"}, separators=(",", ":"),
                                   ensure_ascii=False).encode()
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
