"""Real plugins in real worker processes: calls, errors, limits, escapes and crashes."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from policy_engine import Engine
from policy_engine.enforcement.host import kernel
from policy_engine.enforcement.host.broker import NetworkBroker
from policy_engine.enforcement.host.supervisor import StartResult, WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.wire import AuditRecord, WireEntry, WireRule, WireTable
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import (
    FileSizeError,
    PermissionDeniedError,
    PluginCrashedError,
    PluginRaisedError,
    PluginTimeoutError,
    ResourceLimitError,
)
from policy_engine.manifest import manifest_from_mapping

pytestmark = pytest.mark.integration

PLUGIN = '''
import asyncio
import logging
import os
import signal
import struct
import sys
import time


class Plugin:
    def initialize(self, ctx):
        self.ctx = ctx
        return {"pid": os.getpid(), "name": ctx.plugin_name}

    def echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    async def async_echo(self, value):
        await asyncio.sleep(0)
        return value

    def fail(self):
        raise ValueError("plugin says no")

    def pid(self):
        return os.getpid()

    def environ(self):
        return dict(os.environ)

    def read(self, path):
        with open(path) as handle:
            return handle.read()

    def write(self, path, size, swallow=False):
        try:
            with open(path, "wb") as handle:
                for _ in range(size // 65536):
                    handle.write(b"x" * 65536)
        except OSError:
            if not swallow:
                raise
        return size

    def spin_ignoring_sigterm(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass

    def spin_for(self, seconds):
        end = time.monotonic() + seconds
        count = 0
        while time.monotonic() < end:
            count += 1
        return count

    def burn_cpu(self, seconds, most=30.0):
        # Spins until it has used ``seconds`` of CPU (not wall time: on a loaded machine a
        # wall-clock spin may never reach its share), or ``most`` seconds have passed.
        start, end = time.thread_time(), time.monotonic() + most
        count = 0
        while time.thread_time() - start < seconds and time.monotonic() < end:
            count += 1
        return count

    def hidden_system(self):
        return getattr(__import__("o" + "s"), "sys" + "tem")("true")

    def fork(self):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return pid

    def daemon(self):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(write_end, str(os.getpid()).encode())
                time.sleep(60)
            os._exit(0)
        os.waitpid(child, 0)
        os.close(write_end)
        grandchild = int(os.read(read_end, 32))
        os.close(read_end)
        return grandchild

    def memory_bomb(self):
        hoard = []
        while True:
            hoard.append(bytearray(8 * 1024 * 1024))

    def hold_memory(self, megabytes, seconds):
        block = bytearray(megabytes * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page: make it resident
        time.sleep(seconds)
        return len(block)

    def huge_allocation(self):
        return len(bytearray(1 << 40))

    def exit(self, status):
        os._exit(status)

    def segfault(self):
        os.kill(os.getpid(), signal.SIGSEGV)

    def connect(self, port):
        import socket
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            return conn.recv(16).decode()

    def use_ctypes(self):
        import ctypes
        return ctypes.CDLL(None) is not None

    def corrupt_channel(self, kind):
        fd = int(sys.argv[-1])  # the IPC socket, as passed by the host
        if kind == "oversize":
            os.write(fd, struct.pack(">I", 0xFFFFFFF0))
        else:
            payload = b"[" * 200 + b"]" * 200
            os.write(fd, struct.pack(">I", len(payload)) + payload)
        time.sleep(5)

    def config_value(self, key):
        return self.ctx.config.get(key)

    def register_hook(self, name):
        self.ctx.hooks.register(name, lambda value: value * 2)
        return True

    def log(self, message):
        logging.getLogger("policy_engine.plugins.demo").warning("%s", message)
        return True
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "plugin"
    directory.mkdir()
    (directory / "demo.py").write_text(PLUGIN)
    return directory


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    directory = tmp_path / "granted"
    directory.mkdir()
    (directory / "public.txt").write_text("public data")
    return directory


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("the host's secret")
    return path


Starter = Callable[..., tuple[WorkerProcess, StartResult]]


def rules_table(rules: list[list[Any]], plugin_dir: Path) -> dict[str, Any]:
    """Checker data allowing each ``[permission, pattern-or-None]``, with the real patterns."""
    by_permission: dict[str, list[WireRule]] = {}
    for permission, pattern in rules:
        by_permission.setdefault(permission, []).append(
            WireRule("test.policy:1:1", None if pattern is None else (pattern,)))
    table = WireTable("demo", str(plugin_dir), True, True, tuple(
        WireEntry(permission, True, None, tuple(allows), ()) for permission, allows
        in by_permission.items()))
    return {"table": table.encode(), "audit": False}


@pytest.fixture
def start(tmp_path: Path, plugin_dir: Path, granted: Path) -> Iterator[Starter]:
    """Start a worker for the demo plugin; keyword arguments tweak the spec and checker."""
    workers: list[WorkerProcess] = []

    def starter(*, allow: list[list[Any]] | None = None, limits: ResourceLimits | None = None,
                handler: Any = None, sandbox: bool | None = None,
                network_policy: str | None = None,
                **spec: Any) -> tuple[WorkerProcess, StartResult]:
        rules = [["file:read", f"{granted}/*"]] + (allow or [])
        lockdown = LockdownSpec(scratch_dir=str(tmp_path / "scratch"),
                                plugin_dir=str(plugin_dir), read_paths=(str(granted),), **spec)
        broker: Callable[[], NetworkBroker] | None = None
        if network_policy is not None:
            manifest = manifest_from_mapping(
                {"name": "demo", "version": "1.0.0", "type": "agent",
                 "entry_point": "demo:Plugin", "permissions": ["network:request"]},
                file="demo.yaml", plugin_path=plugin_dir)
            engine = Engine.from_source(network_policy, [manifest])

            def broker() -> NetworkBroker:
                return NetworkBroker("demo", engine.decide)

        worker = WorkerProcess(capability_handler=handler, sandbox=sandbox,
                               broker_factory=broker)
        workers.append(worker)
        result = worker.start(WorkerInit(
            plugin="demo", plugin_dir=str(plugin_dir), entry_point="demo:Plugin",
            lockdown=lockdown, checker=rules_table(rules, plugin_dir),
            limits=limits or ResourceLimits(memory_bytes=256 * 1024 * 1024)))
        return worker, result

    yield starter
    for worker in workers:
        worker.stop()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- calls -------------------------------------------------------------------------------------

def test_warm_call_returns_data(start: Starter) -> None:
    worker, result = start()
    # Under bubblewrap the plugin sees its own PID namespace: pid 2, after bwrap's reaper.
    expected_pid = 2 if worker._sandboxed else result.pid
    assert result.init_result == {"pid": expected_pid, "name": "demo"}
    assert worker.pid == result.pid and worker.alive
    assert worker.call("echo", [1, "two", [3.5]], {"k": {"n": None}}, timeout=5) == {
        "args": [1, "two", [3.5]], "kwargs": {"k": {"n": None}}}
    assert worker.call("async_echo", ["async"], timeout=5) == "async"
    assert worker.pid == result.pid  # the same persistent worker served every call


def test_isolation_report(start: Starter) -> None:
    _worker, result = start()
    report = result.report
    features = kernel.detect()
    assert report.landlock_abi == features.landlock_abi
    assert report.seccomp == features.seccomp
    assert report.level in ("full", "landlock-without-scoping", "filesystem-only", "process-only")
    if features.landlock_abi >= 6 and features.seccomp:
        assert report.level == "full" and report.scoping
    if not report.privileges_dropped:
        assert any(item.startswith("privilege-drop") for item in report.missing)


def test_plugin_exception_comes_back_as_data(start: Starter, plugin_dir: Path) -> None:
    worker, _ = start()
    with pytest.raises(PluginRaisedError) as caught:
        worker.call("fail", timeout=5)
    assert caught.value.type_name == "ValueError"
    assert caught.value.remote_message == "plugin says no"
    assert str(plugin_dir / "demo.py") in caught.value.remote_traceback
    assert "demo" in str(caught.value)
    assert worker.call("echo", [1], timeout=5)["args"] == [1]  # the worker lives on


def test_unknown_and_private_methods(start: Starter) -> None:
    worker, _ = start()
    with pytest.raises(PluginRaisedError, match="no method"):
        worker.call("nope", timeout=5)
    with pytest.raises(PluginRaisedError, match="private"):
        worker.call("__class__", timeout=5)


# -- time limits -------------------------------------------------------------------------------

def test_timeout_kills_a_loop_that_ignores_sigterm(start: Starter) -> None:
    worker, result = start()
    old_pid = result.pid
    began = time.monotonic()
    with pytest.raises(PluginTimeoutError) as caught:
        worker.call("spin_ignoring_sigterm", timeout=0.3, phase="call")
    assert time.monotonic() - began < 5
    assert caught.value.limit == 0.3 and caught.value.phase == "call"
    assert gone(old_pid)
    assert worker.call("pid", timeout=5) != old_pid  # a fresh worker, transparently
    assert worker.restarts == 1


# -- processes ---------------------------------------------------------------------------------

def test_double_forked_daemon_does_not_outlive_the_call(start: Starter) -> None:
    # The reaper of the fallback (no PID namespace): the plugin's pids are the host's.
    worker, _ = start(allow_subprocess=True, allow=[["subprocess:execute", None]],
                      sandbox=False)
    daemon = worker.call("daemon", timeout=10)
    assert daemon != worker.pid
    assert gone(daemon)
    assert worker.call("echo", [1], timeout=5)["args"] == [1]


def test_fork_is_denied_without_subprocess_permission(start: Starter) -> None:
    worker, _ = start()
    with pytest.raises(PermissionDeniedError, match="subprocess"):
        worker.call("fork", timeout=5)


def test_hidden_os_system_is_denied(start: Starter) -> None:
    worker, _ = start()
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("hidden_system", timeout=5)
    assert caught.value.decision.action == "subprocess:execute"
    assert caught.value.decision.resource == "true"


def test_ctypes_is_denied_without_subprocess_permission(start: Starter) -> None:
    worker, _ = start()
    with pytest.raises(PermissionDeniedError, match="ctypes"):
        worker.call("use_ctypes", timeout=5)


# -- files -------------------------------------------------------------------------------------

def test_reading_a_granted_file_works(start: Starter, granted: Path) -> None:
    worker, _ = start()
    assert worker.call("read", [str(granted / "public.txt")], timeout=5) == "public data"


def test_reading_outside_granted_paths_is_denied(start: Starter, secret: Path,
                                                 granted: Path, tmp_path: Path) -> None:
    worker, _ = start()
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("read", [str(secret)], timeout=5)
    assert caught.value.decision.action == "file:read"
    assert caught.value.decision.resource == str(secret)
    # `..` out of a granted directory
    with pytest.raises(PermissionDeniedError):
        worker.call("read", [f"{granted}/../secret.txt"], timeout=5)
    # a symlink inside a granted directory pointing out of it
    (granted / "link.txt").symlink_to(secret)
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("read", [str(granted / "link.txt")], timeout=5)
    assert caught.value.decision.resource == str(secret)
    # a symlink in the plugin's own scratch directory
    (tmp_path / "scratch" / "escape").symlink_to(secret)
    with pytest.raises(PermissionDeniedError):
        worker.call("read", ["escape"], timeout=5)


def test_write_past_the_file_size_limit(start: Starter, tmp_path: Path) -> None:
    limit = 1024 * 1024
    worker, _ = start(file_size_bytes=limit)
    target = tmp_path / "scratch" / "big.bin"
    assert worker.call("write", [str(target), limit // 2], timeout=10) == limit // 2
    assert target.stat().st_size == limit // 2
    with pytest.raises(FileSizeError) as caught:
        worker.call("write", [str(target), 4 * limit], timeout=10)
    assert caught.value.resource == "file_size"
    assert not target.exists()
    # Swallowing the error in the plugin does not keep the truncated file either.
    with pytest.raises(FileSizeError):
        worker.call("write", [str(target), 4 * limit, True], timeout=10)
    assert not target.exists()
    assert worker.call("echo", [1], timeout=5)["args"] == [1]


# -- memory ------------------------------------------------------------------------------------

def test_memory_bomb_is_stopped_and_the_host_is_fine(start: Starter) -> None:
    limit = 96 * 1024 * 1024
    worker, _ = start(memory_bytes=limit, limits=ResourceLimits(memory_bytes=limit))
    with pytest.raises(ResourceLimitError) as caught:
        worker.call("memory_bomb", timeout=20)
    assert caught.value.resource == "memory"
    with pytest.raises(ResourceLimitError):
        worker.call("huge_allocation", timeout=10)
    assert worker.call("echo", ["after"], timeout=5)["args"] == ["after"]


def test_memory_over_the_warning_threshold_is_logged_once(
        start: Starter, caplog: pytest.LogCaptureFixture) -> None:
    limit = 256 * 1024 * 1024
    worker, _ = start(limits=ResourceLimits(memory_bytes=limit, memory_warn_fraction=0.3))
    with caplog.at_level(logging.WARNING, logger="policy_engine.enforcement"):
        # 60 MB: over the 30 % warning with the worker's own memory, and far enough under
        # the limit with the sandbox's tmpfs caps (sized from the lockdown's own memory
        # limit, counted as if full) that the call is never stopped.
        for _ in range(2):
            worker.call("hold_memory", [60, 0.35], timeout=10)
    warnings = [r for r in caplog.records if "of its limit" in r.getMessage()]
    assert len(warnings) == 1
    assert worker.usage.peak_memory_bytes > 0.3 * limit


# -- environment and channel -------------------------------------------------------------------

def test_host_environment_is_not_visible(start: Starter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_SECRET", "hunter2")
    worker, _ = start()
    environ = worker.call("environ", timeout=5)
    assert "HOST_SECRET" not in environ
    assert "hunter2" not in repr(environ)
    with pytest.raises(PermissionDeniedError):
        worker.call("read", [f"/proc/{os.getpid()}/environ"], timeout=5)


@pytest.mark.parametrize("kind", ["oversize", "deep"])
def test_crafted_frames_from_the_worker_are_rejected(start: Starter, kind: str) -> None:
    worker, result = start()
    with pytest.raises(PluginCrashedError, match="broke the protocol") as caught:
        worker.call("corrupt_channel", [kind], timeout=10)
    assert "FrameError" in type(caught.value.__cause__).__name__
    assert gone(result.pid)
    assert worker.call("echo", [1], timeout=5)["args"] == [1]


# -- crashes -----------------------------------------------------------------------------------

def test_worker_exit_is_a_crash_and_the_next_call_works(start: Starter) -> None:
    worker, result = start()
    with pytest.raises(PluginCrashedError, match="status 3"):
        worker.call("exit", [3], timeout=5)
    assert not worker.alive
    assert worker.call("pid", timeout=5) != result.pid


def test_segfault_is_a_crash_and_the_next_call_works(start: Starter) -> None:
    worker, _ = start()
    with pytest.raises(PluginCrashedError, match="SIGSEGV"):
        worker.call("segfault", timeout=5)
    assert worker.call("echo", [2], timeout=5)["args"] == [2]


# -- network -----------------------------------------------------------------------------------

@pytest.fixture
def servers() -> Iterator[list[socket.socket]]:
    listeners = []
    for _ in range(2):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listeners.append(listener)
    yield listeners
    for listener in listeners:
        listener.close()


def test_connect_to_an_ungranted_port_is_refused(start: Starter,
                                                 servers: list[socket.socket]) -> None:
    granted_port = servers[0].getsockname()[1]
    other_port = servers[1].getsockname()[1]
    worker, _ = start(allow_network=True, connect_ports=(granted_port,),
                      allow=[["network:request", f"127.0.0.1:{granted_port}"]],
                      network_policy=f'allow plugin "demo" to network:request on '
                                     f'"127.0.0.1:{granted_port}"')
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("connect", [other_port], timeout=5)
    assert caught.value.decision.resource == f"127.0.0.1:{other_port}"

    def answer() -> None:
        conn, _ = servers[0].accept()
        conn.sendall(b"hello")
        conn.close()

    import threading

    server = threading.Thread(target=answer)
    server.start()
    assert worker.call("connect", [granted_port], timeout=5) == "hello"
    server.join()


def test_no_network_without_permission(start: Starter, servers: list[socket.socket]) -> None:
    worker, _ = start()
    with pytest.raises(PermissionDeniedError, match="network"):
        worker.call("connect", [servers[0].getsockname()[1]], timeout=5)


# -- capabilities, hooks and logs --------------------------------------------------------------

def test_capability_calls_reach_the_host(start: Starter) -> None:
    calls: list[tuple[str, str, list[Any]]] = []

    def handler(capability: str, method: str, args: list[Any]) -> Any:
        calls.append((capability, method, args))
        if args == ["forbidden"]:
            from policy_engine.enforcement.worker.checker import DeniedDecision, denial

            raise denial(DeniedDecision("demo", "config:read", "forbidden", "not granted"))
        return {"value": args[0]} if method == "get" else None

    worker, _ = start(handler=handler)
    assert worker.call("config_value", ["colour"], timeout=5) == {"value": "colour"}
    with pytest.raises(PermissionDeniedError, match="forbidden"):
        worker.call("config_value", ["forbidden"], timeout=5)
    assert worker.call("register_hook", ["file.saved"], timeout=5) is True
    assert worker.call("hook:file.saved", [21], timeout=5) == 42
    assert ("hooks", "register", ["file.saved"]) in calls


def test_plugin_logs_reach_the_host(start: Starter, caplog: pytest.LogCaptureFixture) -> None:
    worker, _ = start()
    with caplog.at_level(logging.WARNING, logger="policy_engine.plugins"):
        assert worker.call("log", ["from the plugin"], timeout=5) is True
    assert any(r.name == "policy_engine.plugins.demo" and r.getMessage() == "from the plugin"
               for r in caplog.records)


# -- resources ---------------------------------------------------------------------------------

def test_usage_is_sampled(start: Starter) -> None:
    worker, _ = start()
    worker.call("spin_for", [0.3], timeout=5)
    deadline = time.monotonic() + 3
    while worker.usage.memory_bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    usage = worker.usage
    assert usage.memory_bytes > 0 and usage.peak_memory_bytes >= usage.memory_bytes
    assert usage.threads >= 1 and usage.open_files >= 1 and usage.wall_time > 0


def test_cpu_over_its_share_is_terminated(start: Starter) -> None:
    limits = ResourceLimits(cpu_share=0.3, cpu_window=0.5, on_violation="terminate")
    worker, _ = start(limits=limits)
    with pytest.raises(ResourceLimitError) as caught:
        worker.call("burn_cpu", [10], timeout=40)
    assert caught.value.resource == "cpu"
    assert worker.call("echo", [1], timeout=5)["args"] == [1]


def test_cpu_over_its_share_is_throttled_with_warn(start: Starter,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    limits = ResourceLimits(cpu_share=0.3, cpu_window=0.5, on_violation="warn")
    worker, _ = start(limits=limits)
    with caplog.at_level(logging.WARNING, logger="policy_engine.enforcement"):
        assert worker.call("burn_cpu", [1.5], timeout=40) > 0
    assert any("throttling" in record.getMessage() for record in caplog.records)


# -- the real decision table and plugin types --------------------------------------------------

def table_checker(granted: Path, *, audit: bool = False) -> dict[str, Any]:
    from policy_engine.enforcement.host.spec import wire_table
    from policy_engine.engine import Engine

    engine = Engine.from_source(
        f'allow plugin * to file:read on "{granted}/**"',
        [{"name": "demo", "version": "1.0.0", "type": "agent", "entry_point": "demo:Plugin",
          "permissions": [f"file:read {granted}/**"]}], plugin_paths={"demo": granted.parent / "plugin"})
    table = engine.plugin_table("demo")
    assert table is not None
    return {"table": wire_table(table).encode(), "audit": audit}


def start_with(tmp_path: Path, plugin_dir: Path, granted: Path, *,
               audit_handler: Any = None, **init: Any) -> WorkerProcess:
    worker = WorkerProcess(audit_handler=audit_handler)
    lockdown = LockdownSpec(scratch_dir=str(tmp_path / "scratch"), plugin_dir=str(plugin_dir),
                            read_paths=(str(granted),))
    init.setdefault("entry_point", "demo:Plugin")
    try:
        worker.start(WorkerInit(plugin="demo", plugin_dir=str(plugin_dir), lockdown=lockdown,
                                **init))
    except BaseException:
        worker.stop()
        raise
    return worker


def test_real_decision_table_decides_in_the_worker(tmp_path: Path, plugin_dir: Path,
                                                   granted: Path, secret: Path) -> None:
    worker = start_with(tmp_path, plugin_dir, granted, checker=table_checker(granted))
    try:
        assert worker.call("read", [str(granted / "public.txt")], timeout=10) == "public data"
        with pytest.raises(PermissionDeniedError) as caught:
            worker.call("read", [str(secret)], timeout=10)
        # The worker's denial names what was asked; the host's runner decides why.
        assert caught.value.decision.action == "file:read"
        assert caught.value.decision.resource == str(secret)
    finally:
        worker.stop()


def test_audit_mode_reports_records_instead_of_denying(tmp_path: Path, plugin_dir: Path,
                                                       granted: Path, secret: Path) -> None:
    reported: list[AuditRecord] = []
    worker = start_with(tmp_path, plugin_dir, granted, checker=table_checker(granted, audit=True),
                        audit_handler=reported.append)
    try:
        # The audit hook lets it through; Landlock still holds the line underneath.
        # (Under bubblewrap the file is not even in the view.)
        with pytest.raises(PluginRaisedError, match="PermissionError|FileNotFoundError"):
            worker.call("read", [str(secret)], timeout=10)
        assert AuditRecord("file:read", str(secret), False) in reported
        assert all(record.worker_reported for record in reported)
    finally:
        worker.stop()


TYPED_PLUGIN = """
from policy_engine.plugin_api import BaseAgentPlugin


class Agent(BaseAgentPlugin):
    def run(self, value):
        return {"value": value, "name": self.name, "data_dir": str(self.ctx.data_dir)}


class NotAnAgent:
    def run(self, value):
        return value
"""


def test_plugin_type_and_data_dir(tmp_path: Path, plugin_dir: Path, granted: Path) -> None:
    from policy_engine.errors import PluginValidationError

    (plugin_dir / "typed.py").write_text(TYPED_PLUGIN)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    worker = start_with(tmp_path, plugin_dir, granted, entry_point="typed:Agent",
                        plugin_type="agent", data_dir=str(data_dir))
    try:
        assert worker.call("run", [7], timeout=10) == {
            "value": 7, "name": "demo", "data_dir": str(data_dir)}
    finally:
        worker.stop()
    with pytest.raises(PluginValidationError, match="does not derive from `BaseAgentPlugin`"):
        start_with(tmp_path, plugin_dir, granted, entry_point="typed:NotAnAgent",
                   plugin_type="agent")


# -- lifecycle ---------------------------------------------------------------------------------

def test_stop_ends_the_worker(start: Starter) -> None:
    worker, result = start()
    worker.stop()
    assert not worker.alive and worker.pid is None
    assert gone(result.pid)
    worker.stop()  # idempotent


def test_init_failure_is_reported(tmp_path: Path, plugin_dir: Path) -> None:
    (plugin_dir / "broken.py").write_text("raise RuntimeError('cannot load')\n")
    worker = WorkerProcess()
    with pytest.raises(PluginRaisedError, match="cannot load"):
        worker.start(WorkerInit(
            plugin="broken", plugin_dir=str(plugin_dir), entry_point="broken:Plugin",
            lockdown=LockdownSpec(scratch_dir=str(tmp_path / "s"), plugin_dir=str(plugin_dir))))
    assert not worker.alive
    worker.stop()


def test_daemon_left_behind_does_not_survive_stop(start: Starter,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    worker, _ = start(allow_subprocess=True, allow=[["subprocess:execute", None]],
                      sandbox=False)
    # Skip the sweep after the call, so the daemon is still there when stop() comes.
    monkeypatch.setattr(worker, "_sweep_leftovers", lambda: None)
    daemon = worker.call("daemon", timeout=10)
    assert not gone(daemon)
    assert psutil.Process(daemon).ppid() == worker.pid  # re-parented to the subreaper
    worker.stop()
    assert gone(daemon)


HOST = """
import sys, time
sys.path.insert(0, {repo!r})
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
worker = WorkerProcess()
result = worker.start(WorkerInit(plugin="demo", plugin_dir={plugin!r}, entry_point="demo:Plugin",
    lockdown=LockdownSpec(scratch_dir={scratch!r}, plugin_dir={plugin!r})))
print(result.pid, flush=True)
time.sleep(60)
"""


def test_worker_dies_with_the_host(tmp_path: Path, plugin_dir: Path) -> None:
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    program = HOST.format(repo=repo, plugin=str(plugin_dir), scratch=str(tmp_path / "s"))
    host = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        worker_pid = int(host.stdout.readline())
        assert not gone(worker_pid)
    finally:
        host.kill()  # SIGKILL: no atexit, no cleanup; only the parent-death signal is left
        host.wait()
        if host.stdout is not None:
            host.stdout.close()
    deadline = time.monotonic() + 5
    while not gone(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(worker_pid)
