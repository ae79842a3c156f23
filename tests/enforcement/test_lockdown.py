"""The kernel layers on their own: lockdown applied in a child with no audit hook at all.

Each test runs a small program that applies :func:`apply_lockdown` and then tries things
directly, printing what happened as JSON; whatever the audit hook would have caught, the
kernel must refuse by itself here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host import kernel
from policy_engine.enforcement.worker.lockdown import LockdownSpec

FEATURES = kernel.detect()
needs_landlock = pytest.mark.skipif(FEATURES.landlock_abi < 1, reason="no Landlock")
needs_seccomp = pytest.mark.skipif(not FEATURES.seccomp, reason="no seccomp")
REPO = Path(__file__).resolve().parents[2]

PRELUDE = '''
import errno, json, os, signal, socket, sys
from policy_engine.enforcement.worker.lockdown import LockdownSpec, apply_lockdown

def attempt(function):
    try:
        result = function()
        return "ok" if result is None else result
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))

spec = LockdownSpec.from_json(json.loads(sys.argv[1]))
applied = apply_lockdown(spec, parent_pid=os.getppid())
out = {"missing": applied.missing}
'''


def run_locked(spec: LockdownSpec, body: str, *extra: str) -> dict[str, Any]:
    program = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    # Register the package bare, as the worker's bootstrap does: the lockdown modules need
    # nothing from the rest of the engine.
    stub = (f"import sys, types; package = types.ModuleType('policy_engine'); "
            f"package.__path__ = [{str(REPO / 'policy_engine')!r}]; "
            f"sys.modules['policy_engine'] = package\n")
    completed = subprocess.run(
        [sys.executable, "-I", "-B", "-c", stub + program, json.dumps(spec.to_json()), *extra],
        capture_output=True, text=True, timeout=30, cwd=spec.scratch_dir)
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def spec(tmp_path: Path) -> LockdownSpec:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "plugin").mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    return LockdownSpec(scratch_dir=str(tmp_path / "scratch"), plugin_dir=str(tmp_path / "plugin"),
                        file_size_bytes=1024 * 1024)


@needs_landlock
def test_filesystem_is_confined(spec: LockdownSpec, tmp_path: Path) -> None:
    out = run_locked(spec, f'''
    out["secret"] = attempt(lambda: open({str(tmp_path / "secret.txt")!r}).read())
    out["scratch"] = attempt(lambda: open("note.txt", "w").write("x") and None)
    out["stdlib"] = attempt(lambda: __import__("json.tool") and None)
    out["etc"] = attempt(lambda: open("/etc/hostname").read() and None)
    out["plugin_write"] = attempt(lambda: open({str(tmp_path / "plugin" / "x.py")!r}, "w"))
    ''')
    assert out["secret"] == "EACCES"
    assert out["scratch"] == "ok"
    assert out["stdlib"] == "ok"
    assert out["etc"] == "EACCES"
    assert out["plugin_write"] == "EACCES"


def test_file_size_limit_is_efbig(spec: LockdownSpec) -> None:
    out = run_locked(spec, '''
    def write():
        with open("big.bin", "wb") as handle:
            handle.write(b"x" * (2 * 1024 * 1024))
    out["write"] = attempt(write)
    out["size"] = os.path.getsize("big.bin")
    ''')
    assert out["write"] == "EFBIG"
    assert out["size"] == 1024 * 1024


@needs_seccomp
def test_processes_and_sockets_are_denied(spec: LockdownSpec) -> None:
    out = run_locked(spec, '''
    out["fork"] = attempt(lambda: os.fork() and None)
    out["unix"] = attempt(lambda: socket.socket(socket.AF_UNIX).close())
    out["inet"] = attempt(lambda: socket.socket(socket.AF_INET).close())
    out["netlink"] = attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
    out["socketpair"] = attempt(lambda: [s.close() for s in socket.socketpair()] and None)
    import threading
    seen = []
    thread = threading.Thread(target=lambda: seen.append(1))
    thread.start(); thread.join()
    out["thread"] = seen == [1]
    ''')
    assert out["fork"] == "EPERM"
    assert out["unix"] == "EPERM"
    assert out["inet"] == "EPERM"
    assert out["netlink"] == "EPERM"
    assert out["socketpair"] == "ok"  # asyncio's self-pipe needs it
    assert out["thread"] is True


@needs_seccomp
def test_subprocess_permission_allows_fork_and_exec(spec: LockdownSpec) -> None:
    from dataclasses import replace

    out = run_locked(replace(spec, allow_subprocess=True), '''
    import subprocess
    out["run"] = subprocess.run(["/bin/true"]).returncode
    ''')
    assert out["run"] == 0


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    sockets = []
    for _ in range(2):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        sockets.append(listener)
    yield sockets
    for listener in sockets:
        listener.close()


@pytest.mark.skipif(FEATURES.landlock_abi < 4, reason="Landlock without TCP rules")
def test_tcp_connect_only_to_granted_ports(spec: LockdownSpec,
                                           listeners: list[socket.socket]) -> None:
    from dataclasses import replace

    granted, other = (listener.getsockname()[1] for listener in listeners)
    out = run_locked(replace(spec, allow_network=True, connect_ports=(granted,)), f'''
    def connect(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return None
    out["granted"] = attempt(lambda: connect({granted}))
    out["other"] = attempt(lambda: connect({other}))
    def fastopen():
        with socket.socket() as sock:
            sock.sendto(b"x", 0x20000000, ("127.0.0.1", {other}))
    out["fastopen"] = attempt(fastopen)
    ''')
    assert out["granted"] == "ok"
    assert out["other"] == "EACCES"
    assert out["fastopen"] in ("EPERM", "EACCES")


@pytest.mark.skipif(FEATURES.landlock_abi < 4, reason="Landlock without TCP rules")
def test_any_port_grant_leaves_tcp_connect_open(spec: LockdownSpec,
                                                listeners: list[socket.socket]) -> None:
    from dataclasses import replace

    port = listeners[1].getsockname()[1]
    out = run_locked(replace(spec, allow_network=True, connect_any_port=True), f'''
    def connect():
        with socket.create_connection(("127.0.0.1", {port}), timeout=5):
            return None
    def bind():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
    out["connect"] = attempt(connect)
    out["bind"] = attempt(bind)
    ''')
    assert out["connect"] == "ok"
    assert out["bind"] == "EACCES"


def test_kernel_features_predict_the_level() -> None:
    features = kernel.detect()
    assert features is kernel.detect()  # cached
    assert features.level in ("full", "landlock-without-scoping", "filesystem-only",
                              "process-only")
    assert (features.level == "full") == (not features.missing and features.seccomp)
    assert kernel.isolation_level(0, False, True, False) == "process-only"
    assert kernel.isolation_level(3, True, False, False) == "filesystem-only"
    assert kernel.isolation_level(5, True, True, False) == "landlock-without-scoping"
    assert kernel.isolation_level(6, True, True, True) == "full"


@pytest.mark.skipif(FEATURES.landlock_abi < 6, reason="Landlock without scoping")
def test_signals_cannot_leave_the_sandbox(spec: LockdownSpec) -> None:
    out = run_locked(spec, '''
    out["parent"] = attempt(lambda: os.kill(os.getppid(), 0))
    out["self"] = attempt(lambda: os.kill(os.getpid(), 0))
    ''')
    assert out["parent"] == "EPERM"
    assert out["self"] == "ok"


def test_capabilities_and_no_new_privs(spec: LockdownSpec) -> None:
    out = run_locked(spec, '''
    status = open("/proc/self/status").read()
    out["status"] = {line.split(":")[0]: line.split(":")[1].strip()
                     for line in status.splitlines() if ":" in line}
    ''')
    status = out["status"]
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    if FEATURES.seccomp:
        assert status["Seccomp"] == "2"


def test_missing_steps_are_recorded_not_fatal(spec: LockdownSpec) -> None:
    from dataclasses import replace

    # An impossible uid switch (not root, or an id that is refused) must not crash.
    out = run_locked(replace(spec, run_as_uid=None, no_drop_reason="testing"), "")
    if os.geteuid() == 0:
        assert any("testing" in item for item in out["missing"])


def test_privilege_drop_blocker_reads_permission_bits(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "x").write_text("x")
    os.chmod(tmp_path, 0o755)
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    # Another uid than this process's own (CI runs these tests as nobody too), for which
    # the owner's bits of the directories just made do not apply.
    other = 65534 if os.geteuid() != 65534 else 65533
    reason = kernel.privilege_drop_blocker(other, other, [str(private / "x")])
    assert reason is not None and "not searchable" in reason
    parents_ok = all(os.stat(p).st_mode & 0o001 for p in tmp_path.parents)
    if parents_ok:
        assert kernel.privilege_drop_blocker(other, other, [str(open_dir)]) is None


@pytest.mark.skipif(os.geteuid() != 0 or kernel.unprivileged_ids() is None,
                    reason="switching uid needs root and a `nobody` account")
def test_switch_to_an_unprivileged_uid(tmp_path: Path) -> None:
    import shutil
    import tempfile
    from dataclasses import replace

    uid, gid = kernel.unprivileged_ids() or (65534, 65534)
    # Directories the new uid can reach (pytest's tmp_path is private to root).
    base = Path(tempfile.mkdtemp(prefix="pe-uid-"))
    try:
        os.chmod(base, 0o755)
        scratch, plugin = base / "scratch", base / "plugin"
        scratch.mkdir()
        plugin.mkdir(mode=0o755)
        os.chown(scratch, uid, gid)  # what the supervisor does for a worker
        private = tmp_path / "root-only.txt"
        private.write_text("root only")
        os.chmod(private, 0o600)
        spec = LockdownSpec(scratch_dir=str(scratch), plugin_dir=str(plugin),
                            run_as_uid=uid, run_as_gid=gid)
        out = run_locked(replace(spec), f'''
        out["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
        out["scratch"] = attempt(lambda: open("note.txt", "w").write("x") and None)
        out["private"] = attempt(lambda: open({str(private)!r}).read())
        out["regain"] = attempt(lambda: os.setuid(0))
        out["report"] = applied.report().privileges_dropped
        ''')
        assert out["ids"] == [uid, uid, gid, []]
        assert out["scratch"] == "ok"
        assert out["private"] == "EACCES"
        assert out["regain"] == "EPERM"
        assert out["report"] is True
        assert not any(item.startswith("privilege-drop") for item in out["missing"])
    finally:
        shutil.rmtree(base)


@needs_seccomp
def test_no_route_creates_a_set_id_file(spec: LockdownSpec) -> None:
    """Every system call that sets a mode refuses the set-user-ID and set-group-ID bits."""
    result = run_locked(spec, '''
        import ctypes, stat
        libc = ctypes.CDLL(None, use_errno=True)

        def raw(number, *args):
            if libc.syscall(number, *args) < 0:
                raise OSError(ctypes.get_errno(), "raw")

        open("plain", "w").close()
        os.mkdir("dir")
        fd = os.open("plain", os.O_RDONLY)
        dir_fd = os.open(".", os.O_RDONLY)
        routes = {
            "chmod": lambda: os.chmod("plain", 0o4755),
            "chmod-setgid": lambda: os.chmod("plain", 0o2755),
            "chmod-dir-setgid": lambda: os.chmod("dir", 0o2755),
            "fchmod": lambda: os.fchmod(fd, 0o4755),
            "fchmodat": lambda: os.chmod("plain", 0o4755, dir_fd=dir_fd),
            "fchmodat2": lambda: raw(452, -100, b"plain", 0o4755, 0),
            "open": lambda: os.close(os.open("o1", os.O_CREAT | os.O_WRONLY, 0o4755)),
            "openat": lambda: os.close(os.open("o2", os.O_CREAT | os.O_WRONLY, 0o6755,
                                               dir_fd=dir_fd)),
            "creat": lambda: raw(85, b"o3", 0o4755),
            "mknod": lambda: os.mknod("o4", stat.S_IFREG | 0o4755),
            "mknodat": lambda: os.mknod("o5", stat.S_IFREG | 0o2755, dir_fd=dir_fd),
            "openat2": lambda: raw(437, -100, b"o6", b"\\0" * 24, 24),
            "plain-chmod": lambda: os.chmod("plain", 0o755),
        }
        out["routes"] = {name: attempt(route) for name, route in routes.items()}
        out["set_id"] = sorted(name for name in os.listdir(".")
                               if os.lstat(name).st_mode & 0o6000)
    ''')
    routes = result["routes"]
    assert routes.pop("openat2") == "ENOSYS"  # its mode is in a struct: refused outright
    assert routes.pop("plain-chmod") == "ok"
    assert routes == dict.fromkeys(routes, "EPERM")
    assert result["set_id"] == []
    assert not [m for m in result["missing"] if "does not know" in m]


@needs_landlock
def test_a_write_grant_alone_is_write_only(spec: LockdownSpec, tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "old.txt").write_text("written by the host")
    (tmp_path / "both").mkdir()
    spec = LockdownSpec(scratch_dir=spec.scratch_dir, plugin_dir=spec.plugin_dir,
                        write_paths=(str(tmp_path / "drop"), str(tmp_path / "both")),
                        read_paths=(str(tmp_path / "both"),))
    result = run_locked(spec, '''
        drop, both = sys.argv[2], sys.argv[3]
        def write(path):
            with open(path, "w") as handle:
                handle.write("x")
        def read(path):
            with open(path) as handle:
                handle.read()
        out["write"] = attempt(lambda: write(drop + "/new.txt"))
        out["read_new"] = attempt(lambda: read(drop + "/new.txt"))
        out["read_old"] = attempt(lambda: read(drop + "/old.txt"))
        out["list"] = attempt(lambda: os.listdir(drop) and None)
        out["both_write"] = attempt(lambda: write(both + "/f.txt"))
        out["both_read"] = attempt(lambda: read(both + "/f.txt"))
    ''', str(tmp_path / "drop"), str(tmp_path / "both"))
    assert result["write"] == "ok"
    assert result["read_new"] == result["read_old"] == result["list"] == "EACCES"
    assert result["both_write"] == result["both_read"] == "ok"
