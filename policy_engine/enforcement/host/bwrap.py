"""Start a command under bubblewrap: mechanism without policy.

:func:`bwrap_arguments` turns a :class:`~.view.ViewPlan` and a few switches into bwrap's
argument list; :func:`spawn` starts it. The arguments go to bwrap through ``--args FD`` (a
memfd), so the grants never show in ``ps``; synthetic files go through memfds as well.

On a root host bwrap would map the sandbox's uid to root outside, and a root service must not
depend on unprivileged user namespaces (distributions restrict them). So the host makes the
user namespace itself: the child it forks (still root) enters a private mount namespace,
stages each bind source the plugin's uid could not reach at a path it can traverse (the
runtime often sits under a directory only root can enter; a source it can reach is bound by
bwrap where it is), unshares the user namespace and waits; the host
writes its uid and gid maps (``0`` inside is the plugin's uid outside); the child becomes
``0`` of that namespace and runs bwrap, which nests the sandbox's own user namespace
(``--unshare-user --disable-userns``) with the plugin's uid inside. Off root, bwrap makes
the user namespace and maps the plugin to the host's uid.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ...errors import EnforcementError
from .view import Mount, MountKind, ViewPlan

__all__ = ["SandboxOptions", "available", "bwrap_arguments", "bwrap_path", "spawn",
           "STAGE_DIR"]

#: Where a root host's child stages bind sources inside its private mount namespace (a
#: tmpfs is mounted over it there; the host's own directory stays empty).
STAGE_DIR = "/run/policy-engine-stage"

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MAP_TIMEOUT = 10.0  # seconds the host waits for the child to unshare its user namespace


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """Namespaces and identity of one sandbox (the view comes separately)."""

    uid: int
    gid: int
    hostname: str = "plugin"
    share_net: bool = False  # network granted: keep the host's network namespace
    env: Mapping[str, str] | None = None
    chdir: str = "/"


@functools.cache
def bwrap_path() -> str | None:
    """The bwrap executable, or None when bubblewrap is not installed."""
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


@functools.cache
def available() -> str:
    """Empty when workers can start under bwrap here, else why not (naming what to install)."""
    path = bwrap_path()
    if path is None:
        return "bubblewrap is not installed (Debian/Ubuntu: `apt-get install bubblewrap`)"
    probe = [path, "--unshare-user", "--unshare-pid", "--die-with-parent", "--ro-bind", "/",
             "/", "--proc", "/proc", "--", "/bin/true"]
    try:
        result = subprocess.run(probe, capture_output=True, timeout=10, text=True)
    except (OSError, subprocess.SubprocessError) as error:
        return f"bubblewrap does not start: {error}"
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or [f"status {result.returncode}"]
        return f"bubblewrap cannot create namespaces here: {detail[0]}"
    return ""


def _mount_arguments(mount: Mount, source: str, data_fds: Mapping[str, int]) -> list[str]:
    kind = mount.kind
    if kind is MountKind.RO_BIND:
        return ["--ro-bind", source, mount.dest]
    if kind is MountKind.BIND:
        return ["--bind", source, mount.dest]
    if kind is MountKind.SYMLINK:
        return ["--symlink", mount.source, mount.dest]
    if kind is MountKind.DATA:
        return ["--perms", mount.mode or "0444", "--ro-bind-data", str(data_fds[mount.dest]),
                mount.dest]
    if kind is MountKind.TMPFS:
        sized = ["--size", str(mount.size)] if mount.size else []
        perms = mount.mode or ("1777" if mount.dest != "/" else "0755")
        return [*sized, "--perms", perms, "--tmpfs", mount.dest]
    if kind is MountKind.PROC:
        return ["--proc", mount.dest]
    if kind is MountKind.DEV:
        return ["--dev", mount.dest]
    if kind is MountKind.REMOUNT_RO:
        return ["--remount-ro", mount.dest]
    raise AssertionError(kind)


def bwrap_arguments(plan: ViewPlan, options: SandboxOptions, *, data_fds: Mapping[str, int] | None = None,
                    sources: Mapping[str, str] | None = None) -> list[str]:
    """bwrap's options (what ``--args`` carries; the command follows on its command line).

    ``sources`` maps a bind source to where the launcher staged it; ``data_fds`` maps a
    synthetic file's destination to the descriptor its content is read from.
    """
    fds = data_fds or {}
    staged = sources or {}
    args = ["--unshare-user", "--uid", str(options.uid), "--gid", str(options.gid),
            "--disable-userns", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", options.hostname, "--unshare-cgroup-try", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--clearenv"]
    if not options.share_net:
        args.append("--unshare-net")
    for name, value in sorted((options.env or {}).items()):
        args += ["--setenv", name, value]
    for mount in plan.mounts:
        args += _mount_arguments(mount, staged.get(mount.source, mount.source), fds)
    args += ["--chdir", options.chdir]
    return args


def _memfd(name: str, content: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, content)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


class _Libc:
    """The few libc calls the child makes between fork and exec, resolved beforehand."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.unshare = libc.unshare
        self.mount = libc.mount
        self.unshare.argtypes = [ctypes.c_int]
        self.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_char_p]


@functools.cache
def _libc() -> _Libc:
    return _Libc()


def _prepare_stage_dir() -> None:
    try:
        os.mkdir(STAGE_DIR, 0o755)
    except FileExistsError:
        pass
    info = os.lstat(STAGE_DIR)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise EnforcementError(f"`{STAGE_DIR}` is not a directory owned by root and writable "
                               "only by it; refusing to stage sandbox mounts there")


def _staging(plan: ViewPlan, uid: int, gid: int
             ) -> tuple[dict[str, str], list[tuple[bytes, bytes, bool]]]:
    """Where each bind source the plugin's uid cannot reach is staged, and the (source,
    target, is_dir) mounts to make. A source every ancestor of which the uid can search is
    bound by bwrap from where it is: each staged bind is a mount in the child on every
    cold start."""
    sources: dict[str, str] = {}
    steps: list[tuple[bytes, bytes, bool]] = []
    for mount in plan.mounts:
        if mount.kind not in (MountKind.RO_BIND, MountKind.BIND) or mount.source in sources \
                or _reachable(mount.source, uid, gid):
            continue
        target = f"{STAGE_DIR}/{len(steps)}"
        sources[mount.source] = target
        steps.append((os.fsencode(mount.source), os.fsencode(target),
                      os.path.isdir(mount.source)))
    return sources, steps


def _reachable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` (no supplementary groups) may search every directory above
    ``path``; a path whose ancestors cannot be examined counts as unreachable."""
    parent = os.path.dirname(os.path.normpath(path))
    while True:
        try:
            info = os.stat(parent)
        except OSError:
            return False
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def spawn(plan: ViewPlan, options: SandboxOptions, command: Sequence[str], *,
          pass_fds: Sequence[int] = (), stdout: int | None = subprocess.DEVNULL,
          stderr: int | None = subprocess.DEVNULL,
          preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start ``command`` in a sandbox built from ``plan``; the Popen is bwrap's process.

    ``preexec`` runs first in the forked child, before anything else (the worker's cgroup
    is joined there, so bwrap and all it starts are inside)."""
    path = bwrap_path()
    if path is None:
        raise EnforcementError(available())
    root = os.geteuid() == 0
    sources: dict[str, str] = {}
    steps: list[tuple[bytes, bytes, bool]] = []
    if root:
        _prepare_stage_dir()
        sources, steps = _staging(plan, options.uid, options.gid)
    fds: list[int] = []
    try:
        data_fds = {m.dest: _memfd("view", m.data.encode()) for m in plan.mounts
                    if m.kind is MountKind.DATA}
        fds += data_fds.values()
        args = bwrap_arguments(plan, options, data_fds=data_fds, sources=sources)
        args_fd = _memfd("bwrap-args", b"".join(os.fsencode(a) + b"\0" for a in args))
        fds.append(args_fd)
        keep = (*pass_fds, *fds)
        argv = [path, "--args", str(args_fd), "--", *command]
        if not root:
            return subprocess.Popen(argv, env={}, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr, pass_fds=keep, close_fds=True,
                                    start_new_session=True, preexec_fn=preexec)
        return _spawn_as_root(argv, options, steps, keep, stdout, stderr, preexec)
    finally:
        for fd in fds:
            os.close(fd)


def _stage(libc: _Libc, steps: list[tuple[bytes, bytes, bool]]) -> None:
    """In the child: a private mount namespace with each step's source bound under the
    staging tmpfs (between fork and exec, like its caller)."""
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making mounts private")
    if libc.mount(b"tmpfs", STAGE_DIR.encode(), b"tmpfs", 0, b"mode=0755") != 0:
        raise OSError(ctypes.get_errno(), "mounting the staging tmpfs")
    for source, target, is_dir in steps:
        if is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o444))
        if libc.mount(source, target, None, _MS_BIND | _MS_REC, None) != 0:
            raise OSError(ctypes.get_errno(), f"staging {source!r}")


def _spawn_as_root(argv: list[str], options: SandboxOptions,
                   steps: list[tuple[bytes, bytes, bool]], keep: Sequence[int],
                   stdout: int | None, stderr: int | None,
                   preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    libc = _libc()
    pid_read, pid_write = os.pipe()
    go_read, go_write = os.pipe()
    failure: list[str] = []

    def child() -> None:  # between fork and exec: no locks, no imports, no allocation-heavy work
        if preexec is not None:
            preexec()  # still root, in the host's namespaces: the cgroup is joined here
        os.setgroups([])
        if steps:
            _stage(libc, steps)
        if libc.unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        os.write(pid_write, str(os.getpid()).encode())
        if os.read(go_read, 1) != b"1":
            raise OSError("the host did not map the user namespace")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)

    def map_ids() -> None:
        try:
            ready, _, _ = select.select([pid_read], [], [], _MAP_TIMEOUT)
            text = os.read(pid_read, 32) if ready else b""
            if not text:
                return  # the child failed before unsharing (or timed out): Popen reports it
            pid = int(text)
            with open(f"/proc/{pid}/uid_map", "w") as uid_map:
                uid_map.write(f"0 {options.uid} 1\n")
            with open(f"/proc/{pid}/gid_map", "w") as gid_map:
                gid_map.write(f"0 {options.gid} 1\n")
            os.write(go_write, b"1")
        except (OSError, ValueError) as error:
            failure.append(str(error))
            os.write(go_write, b"0")

    mapper = threading.Thread(target=map_ids, name="userns-mapper", daemon=True)
    mapper.start()
    try:
        return subprocess.Popen(argv, env={}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                pass_fds=tuple(keep), close_fds=True, preexec_fn=child,
                                start_new_session=True)
    except subprocess.SubprocessError as error:
        detail = f": {failure[0]}" if failure else ""
        raise EnforcementError(f"could not build the sandbox's user namespace{detail}") from error
    finally:
        os.close(pid_write)
        mapper.join(_MAP_TIMEOUT)
        for fd in (pid_read, go_read, go_write):
            os.close(fd)
