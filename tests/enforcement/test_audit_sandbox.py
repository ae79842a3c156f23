"""Audit mode's sandbox and the kernel records, as data: the lockdown and view an audit-mode
worker gets, the listener's path handling, and the decision log's ``source``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from policy_engine import Engine
from policy_engine.decision_log import DecisionLog, DecisionLogger, flatten_event
from policy_engine.enforcement.host import syscalls
from policy_engine.enforcement.host.spec import lockdown_spec
from policy_engine.enforcement.host.supervisor import WorkerInit, view_inputs
from policy_engine.enforcement.host.view import MountKind, plan_view
from policy_engine.enforcement.worker.lockdown import LockdownSpec, kernel_extras, landlock_plan
from policy_engine.table import PluginTable

from ..test_engine import manifest


def _table(engine: Engine, plugin: str = "p") -> PluginTable:
    table = engine.plugin_table(plugin)
    assert table is not None
    return table


def _engine(tmp_path: Path) -> Engine:
    plugin = tmp_path / "plugin"
    plugin.mkdir(exist_ok=True)
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    policy = (f'allow plugin * to file:read on "{tmp_path}/in/**"\n'
              f'allow plugin * to file:write on "{tmp_path}/out/**"\n'
              f'deny plugin * to file:read on "{tmp_path}/in/secret"\n')
    (tmp_path / "in" / "secret").write_text("no")
    meta = manifest(permissions=[f"file:read {tmp_path}/in/**", f"file:write {tmp_path}/out/**"],
                    plugin_path=str(plugin))
    return Engine.from_source(policy, [meta])


def test_audit_mode_keeps_the_view_read_only_and_throws_writes_away(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    data = str(tmp_path / "data" / "p")
    spec = lockdown_spec(_table(engine), tmp_path / "scratch", audit=True, data_dir=data)
    assert spec.read_paths == (f"{tmp_path}/in",)
    assert spec.write_paths == ()
    assert set(spec.throwaway_paths) == {f"{tmp_path}/out", data}
    assert spec.mask_paths == (f"{tmp_path}/in/secret",)  # the default denies stay masked
    assert spec.allow_network and spec.allow_subprocess  # the broker and the view decide
    init = WorkerInit(plugin="p", plugin_dir=str(tmp_path / "plugin"), entry_point="m:C",
                      lockdown=spec, data_dir=data)
    plan = plan_view(view_inputs(init, spec, python="/usr/bin/python3", uid=1, gid=1))
    by_dest = {m.dest: m for m in plan.mounts}
    assert by_dest[f"{tmp_path}/out"].kind is MountKind.TMPFS
    assert by_dest[data].kind is MountKind.TMPFS
    assert by_dest[f"{tmp_path}/in"].kind is MountKind.RO_BIND
    assert not any(m.kind is MountKind.BIND and m.dest != spec.scratch_dir for m in plan.mounts)


def test_unsandboxed_audit_is_the_old_open_filesystem(tmp_path: Path) -> None:
    spec = lockdown_spec(_table(_engine(tmp_path)), tmp_path / "scratch", audit=True,
                         unsandboxed=True)
    assert spec.read_paths == ("/",) and spec.write_paths == ("/",)
    assert spec.throwaway_paths == () and spec.mask_paths == ()


def test_the_spec_carries_throwaway_paths_and_kernel_records(tmp_path: Path) -> None:
    spec = LockdownSpec(scratch_dir=str(tmp_path), plugin_dir=str(tmp_path),
                        throwaway_paths=(str(tmp_path),), kernel_records=True)
    assert LockdownSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    rights = dict(landlock_plan(spec).paths)
    assert str(tmp_path) in rights


def test_kernel_extras_follow_the_grants(tmp_path: Path) -> None:
    base = LockdownSpec(scratch_dir=str(tmp_path), plugin_dir=str(tmp_path))
    assert "/etc/passwd" not in kernel_extras(base)
    wide = LockdownSpec(scratch_dir=str(tmp_path), plugin_dir=str(tmp_path),
                        allow_subprocess=True, allow_network=True)
    assert {"/etc/passwd", "/etc/resolv.conf", "/dev/null"} <= set(kernel_extras(wide))
    assert "/etc/passwd" not in kernel_extras(wide, devices_only=True)


def test_the_listener_makes_paths_absolute_as_the_caller_sees_them(tmp_path: Path) -> None:
    pid = os.getpid()
    assert syscalls._absolute(pid, -100, "/a/../b//c") == "/b/c"
    assert syscalls._absolute(pid, -100, "x") == os.path.join(os.getcwd(), "x")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert syscalls._absolute(pid, fd, "y/z") == f"{tmp_path}/y/z"
    finally:
        os.close(fd)
    assert syscalls._absolute(pid, -100, "") is None
    assert syscalls._int32(0xFFFFFF9C) == -100
    assert syscalls._int32(5) == 5


def test_the_listener_reads_a_path_from_the_callers_memory() -> None:
    import ctypes

    text = ctypes.create_string_buffer(b"/etc/hostname")
    assert syscalls._read_string(os.getpid(), ctypes.addressof(text)) == "/etc/hostname"
    assert syscalls._read_string(os.getpid(), 0) is None


def test_a_descriptor_that_is_not_a_listener_is_refused(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        assert not syscalls.is_listener(read)
    finally:
        os.close(read)
        os.close(write)


def test_the_decision_log_says_who_saw_the_request() -> None:
    stream = io.StringIO()
    engine = Engine.from_source("allow plugin * to hook:register", [manifest()],
                                decision_log=DecisionLog(stream))
    engine.decide("p", "file:read", "/x", source="kernel")
    engine.decide("p", "file:read", "/y")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["source"] == "kernel" and first["allowed"] is False
    assert "source" not in second


def test_decision_events_carry_the_source_and_flatten_it() -> None:
    import logging

    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    keep = Keep()
    logger = DecisionLogger(handlers=[keep])
    try:
        engine = Engine.from_source("allow plugin * to hook:register", [manifest()],
                                    decision_log=logger)
        engine.decide("p", "file:read", "/x", source="kernel")
    finally:
        logger.close()
    (record,) = captured
    event = record.msg
    assert isinstance(event, dict) and event["source"] == "kernel"
    assert flatten_event(event)["source"] == "kernel"


def test_the_listener_frame_carries_exactly_its_descriptor_and_nothing_else_may() -> None:
    import socket

    import pytest

    from policy_engine.enforcement.wire import (
        PassFds,
        WireError,
        encode_frame,
        recv_worker_message_and_fds,
        send_frame_with_fds,
    )

    host, worker = socket.socketpair()
    read, write = os.pipe()
    try:
        send_frame_with_fds(worker, PassFds("seccomp", 1), [read])
        message, fds = recv_worker_message_and_fds(host, deadline=None)
        assert message == PassFds("seccomp", 1) and len(fds) == 1
        os.close(fds[0])
        # A descriptor on a frame that announces none is refused, and closed.
        socket.send_fds(worker, [encode_frame({"op": "result", "value": 1})], [read])
        with pytest.raises(WireError, match="announces 0 descriptors"):
            recv_worker_message_and_fds(host)
        worker.sendall(encode_frame({"op": "result", "value": 2}))
        message, fds = recv_worker_message_and_fds(host)
        assert fds == [] and message.op == "result"
    finally:
        for fd in (read, write):
            os.close(fd)
        host.close()
        worker.close()


def test_a_listener_the_host_never_got_refuses_instead_of_opening(tmp_path: Path) -> None:
    """Fail closed: when the hand-off fails, programs are refused (the errno filter comes
    back) and listened calls fail with ENOSYS, and the report says why."""
    import subprocess
    import sys

    import pytest

    from policy_engine.enforcement.host import kernel

    if not kernel.detect().seccomp or syscalls.unavailable():
        pytest.skip("no seccomp user notification")
    repo = Path(__file__).resolve().parents[2]
    spec = LockdownSpec(scratch_dir=str(tmp_path), plugin_dir=str(tmp_path),
                        kernel_records=True)
    program = f"""
import sys, types
package = types.ModuleType('policy_engine'); package.__path__ = [{str(repo / 'policy_engine')!r}]
sys.modules['policy_engine'] = package
import errno, json, os
from policy_engine.enforcement.worker.lockdown import LockdownSpec, apply_lockdown

def refuse(fd):
    raise OSError(errno.EPIPE, "the host went away")

spec = LockdownSpec.from_json(json.loads(sys.argv[1]))
applied = apply_lockdown(spec, parent_pid=os.getppid(), hand_off=refuse)
out = {{"missing": list(applied.missing)}}
for name, call in (("exec", lambda: os.execv("/bin/true", ["/bin/true"])),
                   ("open", lambda: os.open("/etc/hostname", os.O_RDONLY))):
    try:
        call()
        out[name] = "ok"
    except OSError as error:
        out[name] = errno.errorcode[error.errno]
sys.stdout.write(json.dumps(out) + "\\n")
"""
    completed = subprocess.run([sys.executable, "-I", "-B", "-c", program,
                                json.dumps(spec.to_json())], capture_output=True, text=True,
                               timeout=30, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    assert out["exec"] == "EPERM"
    assert out["open"] == "ENOSYS"
    assert any(m.startswith("kernel-records: could not hand the listener") for m in out["missing"])
