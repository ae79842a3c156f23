"""The wire: strict message kinds, the table of limits, the worker's table as data."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine.enforcement import wire
from policy_engine.enforcement.host import supervisor
from policy_engine.enforcement.host.spec import wire_table
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.wire import (
    LIMITS,
    PROTOCOL_VERSION,
    AuditRecord,
    CapabilityCall,
    ErrorReply,
    IsolationReport,
    LogRecord,
    PassFds,
    Ready,
    Reaped,
    Result,
    Stopped,
    WireError,
    WireLimits,
    WireTable,
    decode_json,
    decode_worker_message,
    encode_frame,
    recv_frame_with_fds,
    send_frame_with_fds,
)
from policy_engine.enforcement.worker.checker import _Decider
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.engine import Engine
from policy_engine.errors import PluginCrashedError, PluginRaisedError

REPORT = IsolationReport("full", 6, True, True, False, ())
MESSAGES: list[Any] = [
    Ready(PROTOCOL_VERSION, 1234, REPORT, {"x": [1, 2.5, None]}),
    Result({"rows": [[1, "a"], [2, "b"]]}),
    ErrorReply({"type": "ValueError", "message": "no", "traceback": "", "kind": "exception"}),
    ErrorReply({"type": "PermissionDeniedError", "message": "m", "traceback": "",
                "kind": "permission_denied",
                "decision": {"plugin": "p", "action": "file:read", "resource": "/x",
                             "reason": "r", "explanation": "e"}}, REPORT),
    CapabilityCall("config", "get", ("key", None)),
    LogRecord(30, "policy_engine.plugins.p", "hello"),
    AuditRecord("file:read", "/etc/hostname", False),
    Reaped((10, 11)),
    Stopped(),
    wire.ConnectRequest("example.com", 443),
    wire.ConnectRequest("example.com", 443, socket.AF_INET6),
    wire.ResolveRequest("example.com", 443, 0),
    PassFds("socket", 1),
]


def payload(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_kind_round_trips(message: Any) -> None:
    assert decode_worker_message(payload(message.encode())) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_unknown_fields_are_refused(message: Any) -> None:
    data = {**message.encode(), "extra": 1}
    with pytest.raises(WireError, match="unknown field `extra`"):
        decode_worker_message(payload(data))


@pytest.mark.parametrize("text", ['{"op":"result","value":NaN}',
                                  '{"op":"result","value":Infinity}',
                                  '{"op":"result","value":-Infinity}',
                                  '{"op":"result","value":1e999}'])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(WireError):
        decode_worker_message(text.encode())


def test_duplicate_keys_and_unknown_kinds_are_refused() -> None:
    with pytest.raises(WireError, match="repeats a key"):
        decode_worker_message(b'{"op":"result","op":"stopped"}')
    with pytest.raises(WireError, match="unknown message kind"):
        decode_worker_message(b'{"op":"pickle"}')
    with pytest.raises(WireError, match="not an object"):
        decode_worker_message(b"[1]")


def test_protocol_version_mismatch_is_refused() -> None:
    data = Ready(PROTOCOL_VERSION, 1, REPORT).encode()
    with pytest.raises(WireError, match="protocol version"):
        decode_worker_message(payload({**data, "version": PROTOCOL_VERSION + 1}))


# -- limits: each at the limit and one past it ---------------------------------------------

SMALL = WireLimits(frame_bytes=1000, string_chars=10, nesting=4, list_items=5, object_keys=3,
                   int_min=-100, int_max=100)


@pytest.mark.parametrize(("at", "past"), [
    (json.dumps("x" * 10), json.dumps("x" * 11)),                    # string_chars
    ("[[[[1]]]]", "[[[[[1]]]]]"),                                     # nesting
    (json.dumps([0] * 5), json.dumps([0] * 6)),                       # list_items
    (json.dumps({"a": 1, "b": 2, "c": 3}), json.dumps({"a": 1, "b": 2, "c": 3, "d": 4})),
    ("100", "101"), ("-100", "-101"),                                 # int range
    (json.dumps(" " * 998), json.dumps(" " * 999)),                   # frame_bytes (1000, 1001)
])
def test_value_limits(at: str, past: str) -> None:
    limits = replace(SMALL, string_chars=1000) if len(at) > 900 else SMALL
    decode_json(at.encode(), limits)
    with pytest.raises(WireError):
        decode_json(past.encode(), limits)


def test_default_frame_size_is_refused_from_the_header_alone() -> None:
    host, peer = socket.socketpair()
    with host, peer:
        peer.sendall(struct.pack(">I", LIMITS.frame_bytes + 1))
        with pytest.raises(WireError, match="exceeds the limit"):
            wire.recv_worker_message(host)
        peer.sendall(encode_frame(Stopped().encode()))
        assert wire.recv_worker_message(host) == Stopped()


def log(**fields: Any) -> bytes:
    return payload({"op": "log", "level": 20, "logger": "l", "message": "m", **fields})


@pytest.mark.parametrize(("field", "limit"), [
    ("logger", LIMITS.name_chars), ("message", LIMITS.text_chars)])
def test_string_field_limits(field: str, limit: int) -> None:
    decode_worker_message(log(**{field: "x" * limit}))
    with pytest.raises(WireError, match=f"field `{field}`"):
        decode_worker_message(log(**{field: "x" * (limit + 1)}))


def test_level_resource_pid_and_fd_limits() -> None:
    decode_worker_message(log(level=50))
    with pytest.raises(WireError):
        decode_worker_message(log(level=51))
    with pytest.raises(WireError):
        decode_worker_message(log(level=True))  # a bool is not an integer here
    record = {"op": "audit", "action": "file:read", "allowed": True}
    decode_worker_message(payload({**record, "resource": "/" * LIMITS.resource_chars}))
    with pytest.raises(WireError):
        decode_worker_message(payload({**record, "resource": "/" * (LIMITS.resource_chars + 1)}))
    decode_worker_message(payload({"op": "reaped", "pids": [1] * LIMITS.pids}))
    with pytest.raises(WireError):
        decode_worker_message(payload({"op": "reaped", "pids": [1] * (LIMITS.pids + 1)}))
    decode_worker_message(payload({"op": "fds", "purpose": "socket", "count": LIMITS.fds}))
    with pytest.raises(WireError):
        decode_worker_message(payload({"op": "fds", "purpose": "socket",
                                       "count": LIMITS.fds + 1}))


def test_default_nesting_limit() -> None:
    at = "[" * LIMITS.nesting + "]" * LIMITS.nesting
    decode_json(at.encode())
    with pytest.raises(WireError, match="nests deeper"):
        decode_json(("[" + at + "]").encode())
    with pytest.raises(WireError, match="nests deeper"):
        decode_json(("[" * 100_000 + "]" * 100_000).encode())


# -- fuzz ------------------------------------------------------------------------------------

def _mutate(rng: random.Random, data: bytearray) -> bytes:
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        position = rng.randrange(len(data) + 1)
        if choice < 0.3 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.5:
            data[position:position] = bytes([rng.choice(b'{}[]",:0-9eE.\\ntfu')])
        elif choice < 0.7 and data:
            del data[position:position + rng.randint(1, 8)]
        elif choice < 0.85:
            data[position:position] = rng.choice([b"NaN", b"1e999", b'"op":', b"[" * 70,
                                                  b"\xff", b"null", b'"extra":1,'])
        else:
            start = rng.randrange(len(data) + 1)
            data[position:position] = data[start:start + rng.randint(1, 32)]
    return bytes(data)


def test_fuzz_decoding_raises_only_wire_error() -> None:
    rng = random.Random(8)
    corpus = [json.dumps(m.encode()).encode() for m in MESSAGES]
    decoded = refused = 0
    for _ in range(100_000):
        frame = _mutate(rng, bytearray(rng.choice(corpus)))
        try:
            decode_worker_message(frame)
            decoded += 1
        except WireError:
            refused += 1
    assert decoded + refused == 100_000
    assert decoded > 0 and refused > 0


# -- descriptors -----------------------------------------------------------------------------

def test_descriptors_travel_with_their_frame(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("through the channel")
    host, peer = socket.socketpair()
    with host, peer, open(target) as handle:
        send_frame_with_fds(peer, PassFds("file", 1), [handle.fileno()])
        message, fds = recv_frame_with_fds(host)
        assert message == PassFds("file", 1) and len(fds) == 1
        with os.fdopen(fds[0]) as received:
            assert received.read() == "through the channel"


def test_descriptors_beyond_the_announced_count_are_refused_and_closed(tmp_path: Path) -> None:
    host, peer = socket.socketpair()
    with host, peer:
        read_end, write_end = os.pipe()
        frame = encode_frame(PassFds("file", 1).encode())
        socket.send_fds(peer, [frame], [read_end, write_end])
        os.close(read_end)
        os.close(write_end)
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(WireError, match="announces 1 descriptors, 2 arrived"):
            recv_frame_with_fds(host)
        assert set(os.listdir("/proc/self/fd")) <= before


def test_the_worker_reads_a_reply_with_or_without_descriptors(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("a socket, in real life")
    host, worker = socket.socketpair()
    with host, worker, open(target) as handle:
        send_frame_with_fds(host, PassFds("socket", 1), [handle.fileno()])
        value, fds = wire.recv_frame_and_fds(worker, max_fds=1)
        assert value == PassFds("socket", 1).encode() and len(fds) == 1
        with os.fdopen(fds[0]) as received:
            assert received.read() == "a socket, in real life"
        host.sendall(encode_frame({"op": "cap_error", "error": {"message": "no"}}))
        assert wire.recv_frame_and_fds(worker) == (
            {"op": "cap_error", "error": {"message": "no"}}, [])


def test_the_worker_refuses_more_descriptors_than_it_asked_for() -> None:
    host, worker = socket.socketpair()
    with host, worker:
        read_end, write_end = os.pipe()
        socket.send_fds(host, [encode_frame(PassFds("socket", 2).encode())],
                        [read_end, write_end])
        os.close(read_end)
        os.close(write_end)
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(wire.FrameError):
            wire.recv_frame_and_fds(worker, max_fds=1)
        assert set(os.listdir("/proc/self/fd")) <= before


# -- the decision table a worker receives ------------------------------------------------------

POLICY = '''
allow plugin * to file:read on "/srv/data/**"
deny plugin * to file:read on "/srv/data/secret/**"
allow plugin * to file:write on "/srv/out/*.txt"
allow plugin * to network:request on "*.example.com:443"
deny plugin * to network:request on "bad.example.com"
allow plugin * to subprocess:execute on "git"
allow plugin * to config:read on "app.*"
'''
MANIFEST = {"name": "demo", "version": "1.0.0", "type": "agent", "entry_point": "demo:Plugin",
            "permissions": ["file:read /srv/**", "file:write /srv/out/**",
                            "network:request *.example.com:443", "subprocess:execute git",
                            "config:read app.*"]}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_source(POLICY, [MANIFEST], plugin_paths={"demo": "/srv/plugins/demo"})


def test_table_codec_round_trips_and_is_strict(engine: Engine) -> None:
    table = engine.plugin_table("demo")
    assert table is not None
    data = wire_table(table).encode()
    assert WireTable.decode(json.loads(json.dumps(data))) == wire_table(table)
    with pytest.raises(WireError, match="unknown field"):
        WireTable.decode({**data, "code": "print(1)"})
    with pytest.raises(WireError, match="version"):
        WireTable.decode({**data, "version": PROTOCOL_VERSION + 1})


RESOURCES = {
    "file:read": ["/srv/data/a.csv", "/srv/data/secret/k", "/srv/data/../data/secret/k",
                  "/srv/data/", "/SRV/data/a", "/srv/data/ünï", "/srv/other", "relative.txt",
                  "/srv/data/x/../../etc/passwd"],
    "file:write": ["/srv/out/a.txt", "/srv/out/a.csv", "/srv/out/d/a.txt", "/srv/out/"],
    "network:request": ["api.example.com:443", "api.example.com:80", "bad.example.com:443",
                        "API.EXAMPLE.COM:443", "example.com:443", "10.0.0.1:443"],
    "subprocess:execute": ["git", "GIT", "rm", "/usr/bin/git"],
    "config:read": ["app.name", "app", "other.key"],
    "database:read": ["users"],
}
REQUESTS = [(action, resource) for action, resources in RESOURCES.items()
            for resource in [*resources, None]]


@settings(max_examples=200, deadline=None)
@given(request=st.sampled_from(REQUESTS), suffix=st.sampled_from(["", "/", "/x", "..", "é"]))
def test_worker_table_answers_as_the_engine(engine: Engine, request: tuple[str, str | None],
                                            suffix: str) -> None:
    action, resource = request
    if resource is not None:
        resource += suffix
    table = engine.plugin_table("demo")
    assert table is not None
    decider = _Decider(WireTable.decode(wire_table(table).encode()))
    assert decider.allows(action, resource) == engine.decide("demo", action, resource).allowed


# -- real workers ----------------------------------------------------------------------------

WORKER_PLUGIN = '''
import logging
import os
import struct
import sys
import threading
import time

AT_IMPORT = sorted(sys.modules)


class Plugin:
    def initialize(self, ctx):
        return AT_IMPORT

    def modules(self):
        return sorted(sys.modules)

    def with_api(self):
        from policy_engine import BasePlugin, PermissionDeniedError
        assert BasePlugin.__module__ == "policy_engine.plugin_api"
        assert issubclass(PermissionDeniedError, PermissionError)
        return sorted(sys.modules)

    def logs(self, count):
        for index in range(count):
            logging.getLogger("policy_engine.plugins.demo").warning("line %d", index)
        return count

    def stray_frame_later(self):
        fd = int(sys.argv[-1])
        def write():
            time.sleep(0.2)
            body = b'{"op":"result","value":"forged"}'
            os.write(fd, struct.pack(">I", len(body)) + body)
        threading.Thread(target=write).start()
        return "ok"

    def cut_short(self):
        fd = int(sys.argv[-1])
        os.write(fd, struct.pack(">I", 100) + b'{"op":')
        os._exit(0)
'''


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    workers: list[supervisor.WorkerProcess] = []
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "demo.py").write_text(WORKER_PLUGIN)
    engine = Engine.from_source('allow plugin * to file:read on "/nowhere/**"', [
        {**MANIFEST, "permissions": ["file:read /nowhere/**"]}], plugin_paths={"demo": plugin_dir})
    table = engine.plugin_table("demo")
    assert table is not None

    def start() -> tuple[supervisor.WorkerProcess, Any]:
        worker = supervisor.WorkerProcess()
        workers.append(worker)
        result = worker.start(supervisor.WorkerInit(
            plugin="demo", plugin_dir=str(plugin_dir), entry_point="demo:Plugin",
            lockdown=LockdownSpec(scratch_dir=str(tmp_path / "scratch"),
                                  plugin_dir=str(plugin_dir)),
            checker={"table": wire_table(table).encode(), "audit": False},
            limits=ResourceLimits(memory_bytes=256 * 1024 * 1024)))
        return worker, result

    yield start
    for worker in workers:
        worker.stop()


#: What a worker may have imported of this package; everything else is refused.
WORKER_ALLOWED = {
    "policy_engine", "policy_engine.errors", "policy_engine.diagnostics",
    "policy_engine.plugin_api", "policy_engine.patterns", "policy_engine.permissions",
    "policy_engine.implicit", "policy_engine.families", "policy_engine._version",
    "policy_engine.units",
    "policy_engine.plugin_types",
    "policy_engine.enforcement", "policy_engine.enforcement.wire",
    "policy_engine.enforcement.worker", "policy_engine.enforcement.worker.main",
    "policy_engine.enforcement.worker.audit", "policy_engine.enforcement.worker.checker",
    "policy_engine.enforcement.worker.lockdown", "policy_engine.enforcement.worker.landlock",
    "policy_engine.enforcement.worker.seccomp", "policy_engine.enforcement.worker.remote",
    "policy_engine.enforcement.worker.bytecode",
    "policy_engine.enforcement.worker.modules",
    "policy_engine.enforcement.worker.resolver",
}
NEVER = ("lark", "yaml", "jsonschema", "psutil")


def check_closure(modules: list[str]) -> None:
    ours = {m for m in modules if m == "policy_engine" or m.startswith("policy_engine.")}
    assert ours <= WORKER_ALLOWED, sorted(ours - WORKER_ALLOWED)
    assert not [m for m in modules if m.split(".")[0] in NEVER]


@pytest.mark.integration
def test_worker_import_closure_is_an_allow_list(start_worker: Any) -> None:
    worker, result = start_worker()
    check_closure(result.init_result)           # after start-up, as the plugin is imported
    check_closure(worker.call("modules", timeout=10))  # after the plugin and the table
    check_closure(worker.call("with_api", timeout=10))


@pytest.mark.integration
def test_frames_per_call_are_bounded(start_worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "LIMITS", replace(LIMITS, frames_per_call=4))
    worker, _ = start_worker()
    assert worker.call("logs", [3], timeout=10) == 3  # three logs and the result: at the limit
    with pytest.raises(PluginCrashedError, match="more than 4 frames"):
        worker.call("logs", [4], timeout=10)


@pytest.mark.integration
def test_a_frame_between_calls_is_refused(start_worker: Any) -> None:
    import time

    worker, _ = start_worker()
    assert worker.call("stray_frame_later", timeout=10) == "ok"
    # The sandbox is frozen between calls, so the thread cannot write then; thawed here by
    # hand, as if no freezer held it, the frame it writes is refused at the next call.
    assert worker.frozen
    worker._thaw()
    time.sleep(0.6)
    with pytest.raises(PluginCrashedError, match="between calls"):
        worker.call("modules", timeout=10)


@pytest.mark.integration
def test_a_frame_cut_short_is_refused(start_worker: Any) -> None:
    worker, _ = start_worker()
    with pytest.raises(PluginCrashedError):
        worker.call("cut_short", timeout=10)


@pytest.mark.integration
def test_worker_refuses_another_protocol_version(start_worker: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with pytest.raises(PluginRaisedError, match="protocol version"):
        start_worker()
