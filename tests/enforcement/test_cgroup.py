"""Limits that count everything, and no plugin code between calls: real workers.

Each attack runs where this host has a writable cgroup hierarchy (a parent made for the
test, removed afterwards) and, for the freeze, also in the fallback without any cgroup (the
reaper's SIGSTOP fixed point). The audit hook is switched off: the kernel alone holds.
"""

from __future__ import annotations

import errno
import glob
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host import bwrap, cgroup
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.supervisor import SANDBOX_TASKS, WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import ResourceLimitError

pytestmark = pytest.mark.integration

PLUGIN = '''
import asyncio
import ctypes
import os
import signal
import threading
import time


class Plugin:
    def initialize(self, ctx):
        self.ctx = ctx
        self.count = 0
        self.ticks = 0
        with open("/proc/self/cgroup") as handle:
            return {"cgroup": handle.read()}

    def start_counter(self):
        def run():
            while True:
                self.count += 1
                time.sleep(0.001)
        threading.Thread(target=run, daemon=True).start()
        time.sleep(0.05)
        return self.count

    def start_waker(self):
        # A thread that keeps sending SIGCONT to its own process, to undo a SIGSTOP.
        def run():
            while True:
                self.count += 1
                os.kill(os.getpid(), signal.SIGCONT)
                time.sleep(0.0005)
        threading.Thread(target=run, daemon=True).start()
        time.sleep(0.05)
        return self.count

    def counter(self):
        return self.count

    def start_loop(self):
        self.loop = asyncio.new_event_loop()

        async def tick():
            while True:
                self.ticks += 1
                await asyncio.sleep(0.001)

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.create_task(tick())
            self.loop.run_forever()
        threading.Thread(target=run, daemon=True).start()
        time.sleep(0.05)
        return self.ticks

    def ticks_now(self):
        return self.ticks

    def ask_loop(self, value):
        async def double():
            await asyncio.sleep(0.01)
            return value * 2
        return asyncio.run_coroutine_threadsafe(double(), self.loop).result(5)

    async def background(self):
        # A task of the call's own loop: it runs while the call awaits.
        seen = []

        async def note():
            seen.append(1)
        task = asyncio.ensure_future(note())
        await asyncio.sleep(0.01)
        await task
        return len(seen)

    def memfd(self, size):
        # Several of 16 MB each: one file stays under the file-size limit.
        self.held = []
        chunk = b"x" * (1 << 20)
        for index in range(size >> 20):
            if index % 16 == 0:
                self.held.append(os.memfd_create("held"))
            os.write(self.held[-1], chunk)
        return 0

    def shm(self, size):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
        libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        libc.shmat.restype = ctypes.c_void_p
        shmid = libc.shmget(0, size, 0o1000 | 0o600)
        if shmid < 0:
            return ctypes.get_errno()
        address = libc.shmat(shmid, None, 0)
        ctypes.memset(address, 1, size)
        return 0

    def fill(self, path, size):
        with open(path, "wb") as handle:
            for _ in range(size >> 20):
                handle.write(b"x" * (1 << 20))
        return 0

    def fork_bomb(self):
        made = 0
        try:
            while made < 2000:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                made += 1
        except OSError as error:
            return [made, error.errno]
        return [made, 0]

    def spin(self, seconds):
        start = time.process_time()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return time.process_time() - start

    def escape(self, path):
        try:
            with open(path, "w") as handle:
                handle.write(str(os.getpid()))
        except OSError as error:
            return error.errno
        return 0

    def cleanup(self):
        with open("cleaned", "w") as handle:  # in its scratch directory, its cwd
            handle.write("yes")
'''

Starter = Callable[..., WorkerProcess]
UID_FIRST = 0x5E100000
SANDBOXES = [pytest.param(False, id="plain")] + (
    [] if bwrap.available() else [pytest.param(True, id="bwrap")])


@pytest.fixture(scope="module")
def parent() -> Iterator[str]:
    """A parent cgroup made for these tests in every writable hierarchy, removed after."""
    path = f"/policy-engine-test-{os.getpid()}"
    support = cgroup.detect(path, refresh=True)
    if not support.active:
        pytest.skip(f"no writable cgroup hierarchy here ({support.note})")
    yield path
    for directory in (support.v2_dir, *support.v1_dirs.values()):
        if directory is not None:
            for child in glob.glob(f"{directory}/worker-*"):
                os.rmdir(child)
            os.rmdir(directory)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "demo.py").write_text(PLUGIN)
    return tmp_path


@pytest.fixture
def start(tree: Path) -> Iterator[Starter]:
    workers: list[WorkerProcess] = []

    def starter(*, cgroup_parent: str, sandbox: bool, limits: ResourceLimits | None = None,
                **fields: Any) -> WorkerProcess:
        identities = IdentityMap(tree / "identities.json", first=UID_FIRST, count=1024)
        worker = WorkerProcess(sandbox=sandbox, identities=identities,
                               cgroup_parent=cgroup_parent)
        workers.append(worker)
        spec = LockdownSpec(scratch_dir=str(tree / "scratch"), plugin_dir=str(tree / "plugin"),
                            audit_hook=False, **fields)
        worker.start(WorkerInit(
            plugin="demo", plugin_dir=str(tree / "plugin"), entry_point="demo:Plugin",
            lockdown=spec, checker={"allow": []}, data_dir=str(tree / "data"),
            limits=limits or ResourceLimits(memory_bytes=256 * 1024 * 1024)))
        return worker

    yield starter
    for worker in workers:
        worker.stop()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def _in(worker: WorkerProcess, name: str) -> bool:
    with open(f"/proc/{worker.pid}/cgroup") as handle:
        return name in handle.read()


# -- placement and the report ------------------------------------------------------------------


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_the_worker_is_in_its_cgroup_before_plugin_code_runs(start: Starter, parent: str,
                                                              sandbox: bool) -> None:
    worker = start(cgroup_parent=parent, sandbox=sandbox)
    group = worker._cgroup
    assert group is not None and _in(worker, group.name)
    proc = worker._proc
    assert proc is not None
    with open(f"/proc/{proc.pid}/cgroup") as handle:  # bwrap itself, under bubblewrap
        assert group.name in handle.read()
    with open(f"/proc/{os.getpid()}/cgroup") as handle:
        assert group.name not in handle.read()  # the host never moves
    held = worker.limit_mechanisms
    assert held == dict(cgroup.detect(parent).mechanisms)
    assert held["freeze"] in cgroup.KERNEL
    worker.stop()
    assert not glob.glob(f"/sys/fs/cgroup/*{parent}/{group.name}")  # removed at unload


def test_the_cgroup_is_joined_at_fork_so_initialize_runs_inside(start: Starter,
                                                                 parent: str) -> None:
    worker = start(cgroup_parent=parent, sandbox=False)
    group = worker._cgroup
    assert group is not None
    report = worker.call("counter", timeout=10)
    assert report == 0
    # initialize() read /proc/self/cgroup: the plain worker sees the host's paths.
    with open(f"/proc/{worker.pid}/cgroup") as handle:
        assert group.name in handle.read()


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_plugin_cannot_leave_its_cgroup(start: Starter, parent: str, sandbox: bool) -> None:
    worker = start(cgroup_parent=parent, sandbox=sandbox)
    support = cgroup.detect(parent)
    targets = [f"{d}/cgroup.procs" for d in (support.v2_dir, *support.v1_dirs.values()) if d]
    targets += [t.rsplit(parent, 1)[0] + "/cgroup.procs" for t in targets]  # the root
    for target in targets:
        # Not in the sandbox's view at all (bubblewrap), or refused by Landlock.
        assert worker.call("escape", [target], timeout=10) in (errno.ENOENT, errno.EACCES,
                                                               errno.EROFS, errno.EPERM)
    group = worker._cgroup
    assert group is not None and _in(worker, group.name)


def test_a_dead_hosts_empty_worker_cgroups_are_removed(parent: str) -> None:
    support = cgroup.detect(parent)
    dead = 2 ** 22 + 12345  # above pid_max's default: no such host
    while os.path.exists(f"/proc/{dead}"):
        dead += 1
    stale = f"worker-demo-{cgroup._PID_NAMESPACE}.{dead}-0"
    other = f"worker-demo-1.{dead}-0"  # another PID namespace's host: not ours to judge
    directories = [d for d in (support.v2_dir, *support.v1_dirs.values()) if d]
    for directory in directories:
        os.mkdir(f"{directory}/{stale}")
        os.mkdir(f"{directory}/{other}")
    try:
        group = cgroup.WorkerCgroup.create(support, "demo", memory_bytes=0, pids=0,
                                           cpu_share=0)
        group.remove()
        for directory in directories:
            assert not os.path.exists(f"{directory}/{stale}")
            assert os.path.exists(f"{directory}/{other}")
    finally:
        for directory in directories:
            for name in (stale, other):
                if os.path.exists(f"{directory}/{name}"):
                    os.rmdir(f"{directory}/{name}")


def test_without_a_cgroup_the_report_names_the_fallbacks(start: Starter) -> None:
    worker = start(cgroup_parent="", sandbox=False)
    held = worker.limit_mechanisms
    assert held["memory"] == "sampler" and held["cpu"] == "sampler"
    assert held["freeze"] == "signals" and held["pids"] in ("rlimit", "none")


# -- memory, tasks, CPU --------------------------------------------------------------------------


def _needs(parent: str, limit: str) -> None:
    if cgroup.detect(parent).mechanisms[limit] not in cgroup.KERNEL:
        pytest.skip(f"no cgroup holds `{limit}` here")


@pytest.mark.parametrize("sandbox", SANDBOXES)
@pytest.mark.parametrize("method", ["memfd", "shm"])
def test_memory_outside_the_resident_set_is_counted(start: Starter, parent: str, sandbox: bool,
                                                    method: str) -> None:
    _needs(parent, "memory")
    worker = start(cgroup_parent=parent, sandbox=sandbox,
                   limits=ResourceLimits(memory_bytes=128 * 1024 * 1024))
    # The cgroup counts it, so the memory fallback's seccomp refusal is lifted...
    assert worker.call(method, [16 * 1024 * 1024], timeout=20) == 0
    # ... and 256 MB under a 128 MB limit is stopped by the kernel.
    with pytest.raises(ResourceLimitError, match="ran out of memory") as raised:
        worker.call(method, [256 * 1024 * 1024], timeout=20)
    assert raised.value.resource == "memory"


@pytest.mark.skipif(bool(bwrap.available()), reason="tmpfs mounts exist under bubblewrap")
def test_tmpfs_pages_count_as_the_sandbox_memory(start: Starter, parent: str) -> None:
    _needs(parent, "memory")
    worker = start(cgroup_parent=parent, sandbox=True, write_paths=("/tmp",))
    group = worker._cgroup
    assert group is not None
    before = group.memory_used() or 0
    assert worker.call("fill", ["/tmp/held", 24 * 1024 * 1024], timeout=20) == 0
    assert (group.memory_used() or 0) - before >= 20 * 1024 * 1024


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_fork_bomb_is_stopped_by_the_pids_limit(start: Starter, parent: str,
                                                  sandbox: bool) -> None:
    _needs(parent, "pids")
    worker = start(cgroup_parent=parent, sandbox=sandbox, allow_subprocess=True)
    made, error = worker.call("fork_bomb", timeout=30)
    assert error == errno.EAGAIN and made < SANDBOX_TASKS
    assert worker.call("counter", timeout=10) == 0  # swept after the call; the worker lives


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_cpu_is_throttled_by_the_kernel(start: Starter, parent: str, sandbox: bool) -> None:
    _needs(parent, "cpu")
    worker = start(cgroup_parent=parent, sandbox=sandbox,
                   limits=ResourceLimits(cpu_share=0.25, on_violation="warn"))
    used = worker.call("spin", [1.0], timeout=20)
    assert used < 0.5  # a quarter of one core, not the whole of it


def test_a_tree_held_at_its_cpu_quota_is_stopped_with_terminate(start: Starter,
                                                                parent: str) -> None:
    _needs(parent, "cpu")
    worker = start(cgroup_parent=parent, sandbox=False,
                   limits=ResourceLimits(cpu_share=0.25, cpu_window=0.5))
    with pytest.raises(ResourceLimitError, match="throttled it") as raised:
        worker.call("spin", [5.0], timeout=20)
    assert raised.value.resource == "cpu"


# -- no plugin code between calls ----------------------------------------------------------------


@pytest.fixture(params=["fallback", "cgroup"])
def where(request: pytest.FixtureRequest) -> str:
    """The parent cgroup (``""``: none, the SIGSTOP fallback)."""
    if request.param == "fallback":
        return ""
    parent: str = request.getfixturevalue("parent")
    return parent


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_thread_makes_no_progress_between_calls(start: Starter, where: str,
                                                  sandbox: bool) -> None:
    worker = start(cgroup_parent=where, sandbox=sandbox)
    assert worker.call("start_counter", timeout=10) > 0
    assert worker.frozen
    first = worker.call("counter", timeout=10)
    time.sleep(0.3)  # about 300 increments if it ran
    second = worker.call("counter", timeout=10)
    assert second - first < 30
    time.sleep(0.05)
    assert worker.call("counter", timeout=10) - second < 30


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_plugin_cannot_send_itself_sigcont_out_of_the_freeze(start: Starter, where: str,
                                                                sandbox: bool) -> None:
    worker = start(cgroup_parent=where, sandbox=sandbox)
    worker.call("start_waker", timeout=10)
    for _ in range(25):  # many freezes, each racing the waker's SIGCONT
        first = worker.call("counter", timeout=10)
        time.sleep(0.05)  # about 100 increments if it ran
        assert worker.call("counter", timeout=10) - first < 30
    first = worker.call("counter", timeout=10)
    time.sleep(0.3)
    assert worker.call("counter", timeout=10) - first < 60
    assert worker.restarts == 0  # held, not killed for failing to freeze


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_an_asyncio_plugin_works_across_freeze_and_resume(start: Starter, where: str,
                                                          sandbox: bool) -> None:
    worker = start(cgroup_parent=where, sandbox=sandbox)
    worker.call("start_loop", timeout=10)
    first = worker.call("ticks_now", timeout=10)
    time.sleep(0.3)
    resumed = worker.call("ticks_now", timeout=10)
    assert resumed - first < 30  # the loop's background task was paused
    assert worker.call("ask_loop", [21], timeout=10) == 42  # and runs again when called
    assert worker.call("ticks_now", timeout=10) > resumed
    assert worker.call("background", timeout=10) == 1  # a task of an async method's own loop


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_frozen_worker_unloads_and_runs_its_cleanup(start: Starter, where: str, sandbox: bool,
                                                      tree: Path) -> None:
    worker = start(cgroup_parent=where, sandbox=sandbox)
    worker.call("start_counter", timeout=10)
    assert worker.frozen
    pid = worker.pid
    started = time.monotonic()
    worker.stop()
    assert time.monotonic() - started < 2.0
    assert (tree / "scratch" / "cleaned").read_text() == "yes"
    assert pid is not None and worker.pid is None and not worker.frozen
    assert not os.path.exists(f"/proc/{pid}/cmdline") or _is_zombie(pid)


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_timeout_kills_a_tree_that_was_frozen_before(start: Starter, where: str,
                                                       sandbox: bool) -> None:
    worker = start(cgroup_parent=where, sandbox=sandbox)
    worker.call("start_counter", timeout=10)
    from policy_engine.errors import PluginTimeoutError

    with pytest.raises(PluginTimeoutError):
        worker.call("spin", [5.0], timeout=0.5)
    assert worker.call("counter", timeout=10) == 0  # a fresh worker, frozen again after
    assert worker.frozen



@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_sandbox_whose_freeze_does_not_hold_is_killed_between_calls(
        start: Starter, where: str, sandbox: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.enforcement.host import supervisor

    monkeypatch.setattr(supervisor, "_FREEZE_TIMEOUT", 0.3)
    worker = start(cgroup_parent=where, sandbox=sandbox)
    worker.call("start_counter", timeout=10)
    monkeypatch.setattr(worker, "wait_frozen", lambda timeout=0.0: False)  # never "frozen"
    monkeypatch.setattr(supervisor, "_stop_every_thread", lambda pidfd, pid: False)
    assert worker.call("counter", timeout=10) >= 0  # the call itself still answers
    deadline = time.monotonic() + 5
    while worker.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.alive  # a kernel freezer: the sampler's check; signals: at once
    monkeypatch.undo()
    assert worker.call("counter", timeout=10) == 0  # the next call runs in a fresh worker
    assert worker.restarts == 1


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_a_call_right_after_a_call_does_not_wait_for_the_freeze(
        start: Starter, where: str, sandbox: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = start(cgroup_parent=where, sandbox=sandbox)
    worker.call("start_counter", timeout=10)
    asked: list[float] = []
    monkeypatch.setattr(worker, "wait_frozen", lambda timeout=0.0: asked.append(timeout))
    for _ in range(20):
        worker.call("counter", timeout=10)
    assert asked == []  # neither waited for nor read on the call path
    monkeypatch.undo()
    time.sleep(0.3)
    assert worker.wait_frozen(2.0)  # and the freeze does hold once asked


PINGPONG = '''
import os, signal, sys, time
a = os.fork()
if a == 0:
    while True:
        time.sleep(30)
b = os.fork()
if b == 0:
    while True:
        os.kill(a, signal.SIGCONT)
        time.sleep(0.0002)
while True:  # the root: it wakes its children too, until it is stopped itself
    os.kill(a, signal.SIGCONT)
    os.kill(b, signal.SIGCONT)
    time.sleep(0.0002)
'''


def test_the_sigstop_fixed_point_holds_against_processes_waking_each_other() -> None:
    import signal
    import subprocess
    import sys

    import psutil

    from policy_engine.enforcement.host import reaper

    root = subprocess.Popen([sys.executable, "-c", PINGPONG])
    try:
        deadline = time.monotonic() + 5
        while len(reaper.descendants(root.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        frozen = reaper.freeze([root.pid], [psutil.Process(root.pid)])
        assert len(frozen) == 3
        time.sleep(0.1)
        assert all(p.status() == psutil.STATUS_STOPPED for p in frozen.values())
    finally:
        root.send_signal(signal.SIGKILL)
        for pid in reaper.descendants(root.pid):
            os.kill(pid, signal.SIGKILL)
        root.wait()


# -- configuration and the report (no workers) --------------------------------------------------


def test_the_host_setting_names_a_cgroup_path_or_turns_cgroups_off() -> None:
    assert cgroup.configured_parent({}) is None
    assert cgroup.configured_parent({cgroup.ENV: "policy-engine/"}) == "/policy-engine"
    assert cgroup.configured_parent({cgroup.ENV: "/a/b"}) == "/a/b"
    for off in ("none", "off", "", " "):
        assert cgroup.configured_parent({cgroup.ENV: off}) == ""
    assert not cgroup.detect("", refresh=True).active


def test_each_limit_takes_the_first_mechanism_that_holds_it() -> None:
    mixed = cgroup.CgroupSupport("/p", v2_dir="/sys/fs/cgroup/unified/p",
                                 v1_dirs={"memory": "/m/p", "pids": "/x/p", "cpu": "/c/p"})
    assert dict(mixed.mechanisms) == {"memory": "cgroup v1", "pids": "cgroup v1",
                                      "cpu": "cgroup v1", "freeze": "cgroup v2"}
    v2 = cgroup.CgroupSupport("/p", v2_dir="/sys/fs/cgroup/p",
                              v2_controllers=frozenset({"memory", "cpu"}))
    assert dict(v2.mechanisms) == {"memory": "cgroup v2", "pids": "rlimit", "cpu": "cgroup v2",
                                   "freeze": "cgroup v2"}
    assert dict(cgroup.CgroupSupport(None).mechanisms) == dict(cgroup.FALLBACK)


def test_a_delegated_cgroup_is_used_only_when_the_host_sits_in_a_child_of_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "_v2_mount", lambda: "/sys/fs/cgroup")
    monkeypatch.setattr(cgroup, "_is_delegated",
                        lambda directory: directory == "/sys/fs/cgroup/system.slice/app.service")
    monkeypatch.setattr(cgroup, "_own_v2_path", lambda: "/system.slice/app.service/supervisor")
    assert cgroup.delegated_parent() == "/system.slice/app.service"
    # The host itself in the delegated cgroup: it would have to move, so it is not used.
    monkeypatch.setattr(cgroup, "_own_v2_path", lambda: "/system.slice/app.service")
    assert cgroup.delegated_parent() is None


def test_doctor_names_the_mechanism_of_each_limit(parent: str) -> None:
    from policy_engine.enforcement.host import doctor

    check = doctor._cgroup_check(False, cgroup.detect(parent))
    assert check.ok == (cgroup.detect(parent).mechanisms["memory"] in cgroup.KERNEL)
    assert f"under `{parent}`" in check.detail and "freeze by cgroup v" in check.detail
    off = doctor._cgroup_check(True, cgroup.detect(""))
    assert off.ok and "freeze by signals" in off.detail and cgroup.ENV in off.detail


def test_the_cgroup_layer_holds_where_a_cgroup_counts_memory_without_the_fallback() -> None:
    from types import SimpleNamespace

    from policy_engine.enforcement.host import doctor

    report = SimpleNamespace(seccomp=False, missing=(), landlock_abi=0, scoping=False)
    assert not doctor.worker_layers(report, False)["cgroup"]
    assert doctor.worker_layers(report, False, {"memory": "cgroup v1"})["cgroup"]
    assert not doctor.worker_layers(report, False, {"memory": "sampler"})["cgroup"]


# -- the cgroup v2 controller files, against a stand-in tree -------------------------------------
# This machine's memory, pids and cpu controllers sit in cgroup v1, so the pure v2 path cannot
# run against the kernel here; this checks what it writes and reads, in the kernel's formats
# (Documentation/admin-guide/cgroup-v2.rst), with a directory standing in for the hierarchy.


def test_the_v2_controller_path_writes_each_limit_and_reads_the_kernels_counters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = os.mkdir

    def mkdir(path: str, mode: int = 0o777) -> None:  # the kernel populates a new cgroup
        real_mkdir(path, mode)
        for name in ("cgroup.procs", "cgroup.freeze", "memory.swap.max"):
            (Path(path) / name).write_text("")
        (Path(path) / "cgroup.events").write_text("populated 1\nfrozen 0\n")

    monkeypatch.setattr(cgroup.os, "mkdir", mkdir)
    support = cgroup.CgroupSupport(parent="/stand-in", v2_dir=str(tmp_path),
                                   v2_controllers=frozenset({"memory", "pids", "cpu"}))
    assert dict(support.mechanisms) == {limit: cgroup.V2 for limit in cgroup.LIMITS}
    group = cgroup.WorkerCgroup.create(support, "demo", memory_bytes=64 << 20, pids=32,
                                       cpu_share=0.5)
    (directory,) = [p for p in tmp_path.iterdir() if p.name.startswith("worker-demo-")]
    assert (directory / "memory.max").read_text() == str(64 << 20)
    assert (directory / "memory.swap.max").read_text() == "0"
    assert (directory / "memory.oom.group").read_text() == "1"
    assert (directory / "pids.max").read_text() == "32"
    quota, period = (directory / "cpu.max").read_text().split()
    assert int(quota) / int(period) == 0.5

    (directory / "memory.current").write_text("10485760\n")
    (directory / "memory.stat").write_text("anon 8388608\ninactive_file 2097152\nshmem 0\n")
    (directory / "memory.peak").write_text("12582912\n")
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (directory / "cpu.stat").write_text("usage_usec 100\nnr_periods 40\nnr_throttled 7\n")
    assert group.memory_used() == 10485760 - 2097152  # the working set
    assert group.memory_peak() == 12582912
    assert group.oom_kills() == 1
    assert group.cpu_periods() == (40, 7)

    group.request_freeze()
    assert (directory / "cgroup.freeze").read_text() == "1"
    assert not group.wait_frozen(0.05)  # the kernel has not said `frozen 1`
    (directory / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert group.wait_frozen(0.05)
    group.thaw()
    assert (directory / "cgroup.freeze").read_text() == "10"  # both writes reached the file
    group.remove()  # closes its descriptors (rmdir refuses the stand-in, whose files are real)
