"""Real workers under bubblewrap, with the audit hook switched off: the kernel alone holds.

Each test is an attack a plugin that has read the source would try; none relies on the
in-worker audit hook (``LockdownSpec(audit_hook=False)``).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host import bwrap
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess, view_inputs
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.host.view import MountKind, plan_view
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import EnforcementError, PluginRaisedError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(bwrap.available()), reason=bwrap.available() or "bwrap works"),
]

PLUGIN = '''
import ctypes
import os


class Plugin:
    def initialize(self, ctx):
        self.ctx = ctx
        return {"uid": os.getuid()}

    def status(self, field):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return line.split()[1]

    def fds(self):
        return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))

    def walk(self):
        seen = []
        for root, dirs, files in os.walk("/"):
            if root.startswith(("/proc", "/dev", "/sys")):
                dirs[:] = []
                continue
            for name in dirs + files:
                seen.append(os.path.join(root, name))
        return seen

    def exists(self, path):
        return os.path.lexists(path)

    def read(self, path):
        with open(path) as handle:
            return handle.read()

    def write(self, path, text):
        with open(path, "w") as handle:
            handle.write(text)
        return True

    def net(self, name):
        with open("/proc/self/net/" + name) as handle:
            return handle.read()

    def shm(self):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
        shmid = libc.shmget(0, 1 << 20, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
        return shmid, ctypes.get_errno()

    def tasks(self, most):
        import threading
        threading.stack_size(256 * 1024)  # small stacks: the address-space limit stays far
        stop = threading.Event()
        started = []
        try:
            for _ in range(most):
                thread = threading.Thread(target=stop.wait)
                thread.start()
                started.append(thread)
            return len(started)
        except RuntimeError:
            return len(started)
        finally:
            stop.set()
            for thread in started:
                thread.join()

    def memfd(self, size):
        try:
            fd = os.memfd_create("held")
        except OSError as error:
            return error.errno
        os.ftruncate(fd, size)
        return 0

    def fill(self, path, size):
        try:
            with open(path, "wb") as handle:
                for _ in range(size >> 20):
                    handle.write(b"x" * (1 << 20))
        except OSError as error:
            return error.errno
        return 0
'''

Starter = Callable[..., tuple[WorkerProcess, Any]]
UID_FIRST = 0x5E000000


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "demo.py").write_text(PLUGIN)
    (tmp_path / "granted").mkdir()
    (tmp_path / "granted" / "public.txt").write_text("public data")
    (tmp_path / "secret.txt").write_text("the host's secret")
    return tmp_path


def _spec(tree: Path, **fields: Any) -> LockdownSpec:
    return LockdownSpec(scratch_dir=str(tree / "scratch"), plugin_dir=str(tree / "plugin"),
                        read_paths=(str(tree / "granted"),), audit_hook=False, **fields)


def _init(tree: Path, **fields: Any) -> WorkerInit:
    return WorkerInit(plugin="demo", plugin_dir=str(tree / "plugin"), entry_point="demo:Plugin",
                      lockdown=_spec(tree, **fields), checker={"allow": []},
                      data_dir=str(tree / "data"),
                      limits=ResourceLimits(memory_bytes=256 * 1024 * 1024))


@pytest.fixture
def start(tree: Path) -> Iterator[Starter]:
    workers: list[WorkerProcess] = []

    def starter(cgroup_parent: str | None = None, **fields: Any) -> tuple[WorkerProcess, Any]:
        identities = IdentityMap(tree / "identities.json", first=UID_FIRST, count=1024)
        worker = WorkerProcess(sandbox=True, identities=identities, cgroup_parent=cgroup_parent)
        workers.append(worker)
        return worker, worker.start(_init(tree, **fields))

    yield starter
    for worker in workers:
        worker.stop()


def test_the_plugin_runs_unprivileged_with_no_capabilities(start: Starter, tree: Path) -> None:
    worker, result = start()
    uid = result.init_result["uid"]
    assert worker.call("status", ["CapEff"], timeout=10) == "0000000000000000"
    assert worker.call("status", ["CapBnd"], timeout=10) == "0000000000000000"
    if os.geteuid() == 0:
        assert uid >= UID_FIRST  # its own identity, never root
        for directory in ("data", "scratch"):
            info = os.stat(tree / directory)
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (uid, 0o700)
        worker.call("write", [str(tree / "scratch" / "made.txt"), "x"], timeout=10)
        assert os.stat(tree / "scratch" / "made.txt").st_uid == uid  # the same uid outside
    else:
        assert uid == os.getuid()


def test_only_the_channel_is_open(start: Starter) -> None:
    worker, _ = start()
    # stdin, stdout, stderr, the channel, and the descriptor listdir itself opens.
    assert len(worker.call("fds", timeout=10)) == 5


def test_walking_the_root_finds_only_the_plan(start: Starter, tree: Path) -> None:
    worker, _ = start()
    seen = worker.call("walk", timeout=60)
    init = _init(tree)
    uid = int(os.stat(tree / "data").st_uid)
    plan = plan_view(view_inputs(init, init.lockdown, python=worker._python, uid=uid, gid=uid))
    roots = [m.dest for m in plan.mounts if m.kind not in (MountKind.PROC, MountKind.DEV,
                                                           MountKind.REMOUNT_RO)]
    for path in seen:
        inside = any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots
                     if r != "/")
        ancestor = any(r.startswith(path + "/") for r in roots)
        assert inside or ancestor, f"{path} is visible but not in the plan"


def test_what_is_not_granted_does_not_exist(start: Starter, tree: Path) -> None:
    worker, _ = start()
    for path in (tree / "secret.txt", "/etc/shadow", "/root/.bashrc", "/home", "/var",
                 "/usr/bin/sudo", "/run"):
        assert not worker.call("exists", [str(path)], timeout=10), path
    assert worker.call("read", [str(tree / "granted" / "public.txt")], timeout=10) == \
        "public data"


def test_the_host_tree_is_unchanged_after_a_run(start: Starter, tree: Path) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        out = {}
        for root, dirs, files in os.walk(tree):
            for name in dirs + files:
                path = os.path.join(root, name)
                info = os.lstat(path)
                out[path] = (info.st_mode, info.st_size)
        return {p: v for p, v in out.items() if "/data" not in p and "/scratch" not in p
                and "identities" not in p}

    before = snapshot()
    worker, _ = start()
    with pytest.raises(PluginRaisedError, match="Read-only file system"):
        worker.call("write", [str(tree / "granted" / "public.txt"), "changed"], timeout=10)
    worker.stop()
    assert snapshot() == before
    assert (tree / "granted" / "public.txt").read_text() == "public data"


def test_the_host_sockets_are_not_visible(start: Starter) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = f"{listener.getsockname()[1]:04X}"
        worker, _ = start()
        assert port not in worker.call("net", ["tcp"], timeout=10)
        assert "eth" not in worker.call("net", ["dev"], timeout=10)


def test_system_v_shared_memory_is_refused_and_leaves_nothing(start: Starter) -> None:
    def segments() -> set[str]:
        with open("/proc/sysvipc/shm") as table:
            return {line.split()[1] for line in table.readlines()[1:]}

    before = segments()
    worker, _ = start(cgroup_parent="")
    # No cgroup counts it, so seccomp refuses it (the memory fallback).
    assert worker.call("shm", timeout=10) == (-1, errno.EPERM)
    worker.stop()
    assert segments() <= before


def test_memory_outside_the_resident_set_is_refused_or_capped(start: Starter) -> None:
    worker, _ = start(cgroup_parent="")  # the fallback, where no cgroup counts memory
    # An anonymous memfd is memory the sampler would not see: refused.
    assert worker.call("memfd", [512 * 1024 * 1024], timeout=10) == errno.EPERM
    # POSIX shared memory and /tmp are tmpfs capped at an eighth of the limit each (and
    # counted in it), where the plugin may write at all.
    for path in ("/dev/shm/held", "/tmp/held"):
        assert worker.call("fill", [path, 64 * 1024 * 1024], timeout=30) in (errno.ENOSPC,
                                                                             errno.EACCES)
    assert worker.usage.memory_bytes < 256 * 1024 * 1024


def test_the_grants_are_not_on_the_command_line(start: Starter, tree: Path) -> None:
    worker, _ = start()
    proc = worker._proc
    assert proc is not None
    with open(f"/proc/{proc.pid}/cmdline", "rb") as cmdline:
        assert str(tree / "granted").encode() not in cmdline.read()


def test_the_identity_map_is_persistent_and_skips_used_ids(tmp_path: Path) -> None:
    identities = IdentityMap(tmp_path / "ids.json", first=UID_FIRST + 4096, count=1024)
    first = identities.identity("a")
    assert identities.identity("b") != first
    again = IdentityMap(tmp_path / "ids.json", first=UID_FIRST + 4096, count=1024)
    assert again.identity("a") == first


def test_an_id_held_by_a_running_process_is_skipped(tmp_path: Path) -> None:
    mine = os.getuid()
    identities = IdentityMap(tmp_path / "ids.json", first=max(mine, 65536), count=4)
    if mine >= 65536:
        assert identities.identity("a").uid != mine
    with pytest.raises(EnforcementError, match="outside the range"):
        (tmp_path / "bad.json").write_text('{"a": 5}')
        IdentityMap(tmp_path / "bad.json").identity("a")


def test_a_denied_path_inside_a_grant_is_masked(start: Starter, tree: Path) -> None:
    (tmp := tree / "granted" / "private").mkdir()
    (tmp / "key").write_text("private key")
    (tree / "granted" / "secret.txt").write_text("granted tree, denied file")
    worker, _ = start(mask_paths=(str(tree / "granted" / "secret.txt"), str(tmp)))
    for path in (tree / "granted" / "secret.txt", tmp / "key"):
        with pytest.raises(PluginRaisedError, match="PermissionError"):
            worker.call("read", [str(path)], timeout=10)
    assert worker.call("read", [str(tree / "granted" / "public.txt")], timeout=10) == \
        "public data"
    worker.stop()
    assert (tmp / "key").read_text() == "private key"  # the host's file is untouched


def test_file_read_denies_become_masks(tmp_path: Path) -> None:
    from policy_engine import Engine
    from policy_engine.enforcement.host.spec import kernel_masks

    examples = Path(__file__).resolve().parents[2] / "examples" / "plugins"
    (tmp_path / "site.policy").write_text(
        'deny plugin "summarizer" to file:read on "{plugin_dir}/words.txt", '
        '"{plugin_dir}/private/**", "{plugin_dir}/*.key"\n')
    engine = Engine.load([str(Path(__file__).resolve().parents[2] / "policies"),
                          str(tmp_path / "site.policy")], plugins=examples,
                         variables={"data_dir": str(tmp_path)})
    table = engine.plugin_table("summarizer")
    assert table is not None
    masks = kernel_masks(table)
    plugin_dir = examples / "summarizer"
    assert str(plugin_dir / "words.txt") in masks
    assert str(plugin_dir / "private") in masks
    assert not [m for m in masks if m.endswith(".key")]  # a glob cannot be masked exactly
    assert not [m for m in masks if m == str(plugin_dir)]  # write denies are not masks


def test_inexact_denies_are_named_and_a_grant_a_tree_deny_covers_is_left_out(
        tmp_path: Path) -> None:
    from policy_engine import Engine
    from policy_engine.enforcement.host.spec import inexact_denies, kernel_grants

    examples = Path(__file__).resolve().parents[2] / "examples" / "plugins"
    (tmp_path / "srv" / "public").mkdir(parents=True)
    (tmp_path / "site.policy").write_text(
        f'allow plugin "summarizer" to file:read on "{tmp_path}/srv/**", "{tmp_path}/srv/public/**"\n'
        f'deny plugin "summarizer" to file:read on "{tmp_path}/srv/**/*.key"\n'
        f'deny plugin "summarizer" to file:read on "{tmp_path}/srv/later.txt"\n'
        f'deny plugin "summarizer" to file:read on "{tmp_path}/srv/public/**"\n'
        f'deny plugin "summarizer" to file:write on "{tmp_path}/own/**/*.db"\n')
    engine = Engine.load([str(Path(__file__).resolve().parents[2] / "policies"),
                          str(tmp_path / "site.policy")], plugins=examples,
                         variables={"data_dir": str(tmp_path)})
    table = engine.plugin_table("summarizer")
    assert table is not None
    found = inexact_denies(table)
    assert [why.split(": `", 1)[0].rsplit(":", 2)[-2] for why in found] == ["2", "3"]
    assert "glob inside granted" in found[0] and "does not exist yet" in found[1]
    # The plugin's own data directory is shown writable, granted or not.
    own = inexact_denies(table, str(tmp_path / "own"))
    assert len(own) == 3 and f"granted `{tmp_path}/own`" in own[2]
    # The deny of the whole public tree leaves that grant out of the kernel plan.
    assert str(tmp_path / "srv" / "public") not in kernel_grants(table).read_paths
    assert str(tmp_path / "srv") in kernel_grants(table).read_paths


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC is per uid: only a root host gives "
                    "each plugin its own")
def test_a_plugin_cannot_start_more_tasks_than_its_pids_limit(start: Starter) -> None:
    from policy_engine.enforcement.host.supervisor import SANDBOX_TASKS

    worker, _ = start()
    started = worker.call("tasks", [SANDBOX_TASKS * 2], timeout=60)
    assert SANDBOX_TASKS // 2 < started < SANDBOX_TASKS
    worker.stop()
    worker, _ = start(nproc=40)
    assert 20 < worker.call("tasks", [SANDBOX_TASKS], timeout=60) < 40
    # The worker is still healthy after the refusal.
    assert worker.call("status", ["CapEff"], timeout=10) == "0000000000000000"
