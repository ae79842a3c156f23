"""Lock the worker process down before any plugin code runs in it.

Runs inside the worker, single-threaded, in this order (each step relies on the ones
before it):

1. become a child subreaper, so orphaned descendants stay visible to the supervisor;
2. resource limits (address space, file size, open files, core dumps, CPU seconds);
3. drop privileges: switch to an unprivileged uid, or, when that would leave the worker
   unable to read its own interpreter, drop every capability while staying uid 0;
4. parent-death signal, after the uid switch because a credential change clears it;
5. ``no_new_privs``, which Landlock and seccomp both require;
6. Landlock: filesystem, TCP ports, and scoping of signals and abstract unix sockets;
7. seccomp: system calls Landlock does not cover.

Whatever the kernel lacks is skipped and recorded in :class:`AppliedLockdown`; nothing here
raises for a missing feature. The result is what the worker reports to the host.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...implicit import CODE_SUFFIXES, DEVICES, implicit_reads
from ..wire import IsolationReport, isolation_level
from . import landlock, seccomp
from .bytecode import cache_in_use

__all__ = ["LISTENED", "AppliedLockdown", "LockdownSpec", "ParentGoneError", "apply_lockdown",
           "kernel_extras", "landlock_plan"]

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE, each with its lock, plus KEEP_CAPS_LOCKED:
# uid 0 gains no capabilities on execve, and nothing can undo that.
_SECUREBITS_LOCKED_DOWN = 0xEF
_CAP_VERSION_3 = 0x20080522

_CLONE_THREAD = 0x00010000
_CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                     0x20000000, 0x40000000)  # NEWNS CGROUP UTS IPC USER PID NET
_MSG_FASTOPEN = 0x20000000
_SOCK_TYPE_MASK = 0xF
_SOCK_RAW = 3
_SOCK_PACKET = 10
_AF_LIMIT = 64  # above every address family Linux defines (AF_MAX is 46 in 6.x)

# Dangerous whatever the policy says: they escape or attack the sandbox rather than do work.
_ALWAYS_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # io_uring performs socket/connect/open without passing through the seccomp filter.
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # A new user namespace hands out a fresh capability set and kernel attack surface.
    "unshare", "setns", "bpf", "userfaultfd", "perf_event_open",
    "keyctl", "add_key", "request_key", "open_by_handle_at", "name_to_handle_at",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsmount", "fspick", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "acct", "swapon", "swapoff", "reboot",
)
# Memory held outside the resident set the host samples, where no cgroup counts it: an
# anonymous memfd and System V shared memory (POSIX shared memory lives in the capped
# /dev/shm tmpfs, which the host counts).
_OUTSIDE_MEMORY = ("memfd_create", "shmget")
_PROCESS_CREATION = ("execve", "execveat", "fork", "vfork")
# Every system call that sets a file mode, with the index of its mode argument. A mode with
# the set-user-ID or set-group-ID bit is refused, whatever the policy: a plugin must never
# leave a set-id program behind. ``openat2`` passes its mode in a struct the filter cannot
# read, so it is refused outright (ENOSYS: callers fall back to ``openat``).
_MODE_ARGUMENT = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2),
                  ("open", 2), ("openat", 3), ("creat", 1), ("mknod", 1), ("mknodat", 2))
_SET_ID_BITS = (0o4000, 0o2000)  # S_ISUID, S_ISGID
_UNREADABLE_MODE = ("openat2",)

_PROGRAM_DIRS = ("/usr", "/bin", "/sbin")  # only with subprocess permission
_PROGRAM_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
_NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
                  "/etc/host.conf", "/etc/ssl", "/etc/ca-certificates",
                  "/usr/share/ca-certificates", "/usr/lib/ssl")


@dataclass(frozen=True, slots=True)
class LockdownSpec:
    """What the worker keeps; JSON-able, sent by the host in the init frame.

    Sizes are bytes and times seconds; 0 means "no limit" for the rlimits. ``run_as_uid``
    None means "stay uid 0 and drop every capability"; the host only asks for a uid
    switch after checking the new uid can still read the interpreter and plugin, and puts
    its reason for not asking in ``no_drop_reason``.
    """

    scratch_dir: str
    plugin_dir: str
    memory_bytes: int = 512 * 1024 * 1024
    file_size_bytes: int = 64 * 1024 * 1024
    cpu_seconds: int = 3600  # lifetime backstop of a persistent worker, not a per-call limit
    nofile: int = 256
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    connect_ports: tuple[int, ...] = ()
    connect_any_port: bool = False  # a host granted without a port: TCP connect is not fenced
    allow_network: bool = False
    allow_subprocess: bool = False
    run_as_uid: int | None = None
    run_as_gid: int | None = None
    no_drop_reason: str = ""
    #: Test-only: False starts the worker without its audit hook, so tests can show that the
    #: kernel layers alone hold. Only the host's spec carries it; the plugin cannot reach it.
    audit_hook: bool = True
    #: Paths denied inside granted trees, masked in the sandbox's view by an empty mount.
    mask_paths: tuple[str, ...] = ()
    #: RLIMIT_NPROC: the most tasks (processes and threads) the worker's uid may have; 0 is
    #: none. The kernel counts it per uid, so the host sets it only where the worker runs
    #: under a uid of its own (a sandbox on a root host).
    nproc: int = 0
    #: Audit mode: directories the sandbox covers with an empty, size-capped tmpfs the
    #: plugin may write (its write grants, its data directory); nothing written there
    #: reaches the host.
    throwaway_paths: tuple[str, ...] = ()
    #: Hand the host a seccomp listener for opens and program starts (see
    #: :func:`apply_lockdown`), so the host sees them from the kernel's side.
    kernel_records: bool = False
    #: True where the worker's cgroup counts every page the sandbox holds (memfd, System V
    #: and tmpfs pages included): seccomp then leaves ``memfd_create`` and ``shmget`` alone.
    memory_counted: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict for the init frame."""
        return {
            "scratch_dir": self.scratch_dir,
            "plugin_dir": self.plugin_dir,
            "memory_bytes": self.memory_bytes,
            "file_size_bytes": self.file_size_bytes,
            "cpu_seconds": self.cpu_seconds,
            "nofile": self.nofile,
            "read_paths": list(self.read_paths),
            "write_paths": list(self.write_paths),
            "connect_ports": list(self.connect_ports),
            "connect_any_port": self.connect_any_port,
            "allow_network": self.allow_network,
            "allow_subprocess": self.allow_subprocess,
            "run_as_uid": self.run_as_uid,
            "run_as_gid": self.run_as_gid,
            "no_drop_reason": self.no_drop_reason,
            "audit_hook": self.audit_hook,
            "mask_paths": list(self.mask_paths),
            "nproc": self.nproc,
            "throwaway_paths": list(self.throwaway_paths),
            "kernel_records": self.kernel_records,
            "memory_counted": self.memory_counted,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LockdownSpec:
        """Rebuild a spec from :meth:`to_json` output."""
        def optional_int(value: Any) -> int | None:
            return None if value is None else int(value)

        return cls(
            scratch_dir=str(data["scratch_dir"]),
            plugin_dir=str(data["plugin_dir"]),
            memory_bytes=int(data.get("memory_bytes", 0)),
            file_size_bytes=int(data.get("file_size_bytes", 0)),
            cpu_seconds=int(data.get("cpu_seconds", 0)),
            nofile=int(data.get("nofile", 0)),
            read_paths=tuple(str(p) for p in data.get("read_paths", ())),
            write_paths=tuple(str(p) for p in data.get("write_paths", ())),
            connect_ports=tuple(int(p) for p in data.get("connect_ports", ())),
            connect_any_port=bool(data.get("connect_any_port", False)),
            allow_network=bool(data.get("allow_network", False)),
            allow_subprocess=bool(data.get("allow_subprocess", False)),
            run_as_uid=optional_int(data.get("run_as_uid")),
            run_as_gid=optional_int(data.get("run_as_gid")),
            no_drop_reason=str(data.get("no_drop_reason", "")),
            audit_hook=bool(data.get("audit_hook", True)),
            mask_paths=tuple(str(p) for p in data.get("mask_paths", ())),
            nproc=int(data.get("nproc", 0)),
            throwaway_paths=tuple(str(p) for p in data.get("throwaway_paths", ())),
            kernel_records=bool(data.get("kernel_records", False)),
            memory_counted=bool(data.get("memory_counted", False)),
        )


@dataclass(frozen=True, slots=True)
class AppliedLockdown:
    """What :func:`apply_lockdown` actually did; ``missing`` says what it could not."""

    subreaper: bool
    rlimits: Mapping[str, int]
    uid: int
    privileges_dropped: bool
    capabilities_dropped: bool
    parent_death_signal: bool
    no_new_privs: bool
    landlock_abi: int
    landlock: bool
    landlock_network: bool
    scoping: bool
    seccomp: bool
    missing: tuple[str, ...]

    def report(self) -> IsolationReport:
        """The isolation report the worker sends to the host."""
        return IsolationReport(
            level=isolation_level(self.landlock_abi, self.landlock, self.seccomp,
                                         self.scoping),
            landlock_abi=self.landlock_abi,
            seccomp=self.seccomp,
            scoping=self.scoping,
            privileges_dropped=self.privileges_dropped,
            missing=self.missing,
        )


@dataclass(slots=True)
class _Progress:
    """Filled in step by step while the lockdown runs; frozen into AppliedLockdown at the end."""

    subreaper: bool = False
    rlimits: dict[str, int] = field(default_factory=dict)
    uid: int = -1
    privileges_dropped: bool = False
    capabilities_dropped: bool = False
    parent_death_signal: bool = False
    no_new_privs: bool = False
    landlock_abi: int = 0
    landlock: bool = False
    landlock_network: bool = False
    scoping: bool = False
    seccomp: bool = False
    missing: list[str] = field(default_factory=list)

    def freeze(self) -> AppliedLockdown:
        return AppliedLockdown(
            subreaper=self.subreaper, rlimits=dict(self.rlimits), uid=self.uid,
            privileges_dropped=self.privileges_dropped,
            capabilities_dropped=self.capabilities_dropped,
            parent_death_signal=self.parent_death_signal, no_new_privs=self.no_new_privs,
            landlock_abi=self.landlock_abi, landlock=self.landlock,
            landlock_network=self.landlock_network, scoping=self.scoping, seccomp=self.seccomp,
            missing=tuple(self.missing))


class ParentGoneError(RuntimeError):
    """The host died before the worker could tie its life to it."""


def apply_lockdown(spec: LockdownSpec, *, parent_pid: int,
                   hand_off: Callable[[int], None] | None = None) -> AppliedLockdown:
    """Apply every step to the calling (single-threaded) process; see the module doc.

    With ``spec.kernel_records`` and a ``hand_off``, a second seccomp filter hands opens and
    program starts to a listener: ``hand_off(fd)`` gives its descriptor to the host right
    after it is loaded (before anything else opens a file, which would wait on it), and
    this process closes its own copy, so no plugin code ever holds it."""
    applied = _Progress()
    libc = ctypes.CDLL(None, use_errno=True)
    applied.subreaper = _prctl(libc, _PR_SET_CHILD_SUBREAPER, 1) == 0
    if not applied.subreaper:
        applied.missing.append("subreaper: prctl(PR_SET_CHILD_SUBREAPER) failed")
    _apply_rlimits(spec, applied)
    _drop_privileges(spec, applied, libc)
    _tie_to_parent(libc, parent_pid, applied)
    applied.no_new_privs = _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1) == 0
    if not applied.no_new_privs:
        applied.missing.append("no_new_privs: not supported by the kernel")
    _apply_landlock(spec, applied)
    _apply_seccomp(spec, applied, hand_off if spec.kernel_records else None)
    return applied.freeze()


def _prctl(libc: ctypes.CDLL, option: int, arg2: int) -> int:
    return int(libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0)))


# -- 2. resource limits ---------------------------------------------------------------------

def _apply_rlimits(spec: LockdownSpec, applied: _Progress) -> None:
    # A write past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills; ignored, the
    # write fails with EFBIG instead, which the worker turns into FileSizeError.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    wanted: list[tuple[str, int, int]] = [("core", resource.RLIMIT_CORE, 0)]
    if spec.memory_bytes > 0:
        # A backstop only: the supervisor enforces the real memory limit on resident memory.
        # Address space counts reservations too (thread stacks, malloc arenas), so allow what
        # the interpreter already reserved on top of twice the limit.
        wanted.append(("as", resource.RLIMIT_AS,
                       max(2 * spec.memory_bytes, _address_space() + spec.memory_bytes)))
    if spec.file_size_bytes > 0:
        wanted.append(("fsize", resource.RLIMIT_FSIZE, spec.file_size_bytes))
    if spec.nofile > 0:
        wanted.append(("nofile", resource.RLIMIT_NOFILE, spec.nofile))
    if spec.cpu_seconds > 0:
        wanted.append(("cpu", resource.RLIMIT_CPU, spec.cpu_seconds))
    if spec.nproc > 0:
        wanted.append(("nproc", resource.RLIMIT_NPROC, spec.nproc))
    for name, which, value in wanted:
        try:
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # lowering only: raising needs privileges we drop
            hard_value = value
            if which == resource.RLIMIT_CPU:
                # Soft limit sends SIGXCPU; a few seconds later the hard limit SIGKILLs.
                hard_value = value + 5 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(which, (value, hard_value))
            applied.rlimits[name] = value
        except (OSError, ValueError) as error:
            applied.missing.append(f"rlimit {name}: {error}")


def _address_space() -> int:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# -- 3. privileges --------------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_privileges(spec: LockdownSpec, applied: _Progress, libc: ctypes.CDLL) -> None:
    if os.geteuid() == 0 and spec.run_as_uid is not None:
        uid = spec.run_as_uid
        gid = spec.run_as_gid if spec.run_as_gid is not None else uid
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        except OSError as error:
            applied.missing.append(f"privilege-drop: switching to uid {uid} failed: {error}")
    elif os.geteuid() == 0:
        reason = spec.no_drop_reason or "no unprivileged uid was requested"
        applied.missing.append(f"privilege-drop: {reason}; all capabilities dropped instead")
    applied.uid = os.geteuid()
    applied.capabilities_dropped = _drop_capabilities(libc)
    if not applied.capabilities_dropped:
        applied.missing.append("capabilities: could not clear the capability sets")
    applied.privileges_dropped = applied.uid != 0 and applied.capabilities_dropped


def _drop_capabilities(libc: ctypes.CDLL) -> bool:
    """Empty every capability set, bounding and ambient included; True when all are empty."""
    if _capability_state() == 0 and os.geteuid() != 0:
        return True
    # Securebits and the bounding set need CAP_SETPCAP, so they go before capset.
    _prctl(libc, _PR_SET_SECUREBITS, _SECUREBITS_LOCKED_DOWN)
    for cap in range(_last_capability() + 1):
        _prctl(libc, _PR_CAPBSET_DROP, cap)
    libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    libc.capset(ctypes.byref(header), data)
    return _capability_state() == 0


def _capability_state() -> int:
    """0 when the effective and permitted sets are empty, 1 when not, -1 when unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(("CapEff:", "CapPrm:")) and int(line.split()[1], 16):
                    return 1
    except OSError:
        return -1
    return 0


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last:
            return int(last.read())
    except (OSError, ValueError):
        return 63


# -- 4. parent death ------------------------------------------------------------------------

def _tie_to_parent(libc: ctypes.CDLL, parent_pid: int, applied: _Progress) -> None:
    applied.parent_death_signal = _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    if not applied.parent_death_signal:
        applied.missing.append("parent-death signal: prctl(PR_SET_PDEATHSIG) failed")
    # The host may have died before the prctl: then nobody will ever send the signal.
    if os.getppid() != parent_pid:
        raise ParentGoneError("the host process is gone")


# -- 6. Landlock ----------------------------------------------------------------------------

def _interpreter_paths() -> list[str]:
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += [entry for entry in sys.path if entry and os.path.isabs(entry)]
    # This package: the worker imports it lazily (tracebacks, error classes).
    paths.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    paths.append(cache_in_use())  # the host's bytecode of this package, when it serves
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def _code_files(plugin_dir: str, limit: int = 10_000) -> list[str]:
    """The plugin's code files (:data:`~policy_engine.implicit.CODE_SUFFIXES`), bounded."""
    found: list[str] = []
    for root, _dirs, files in os.walk(plugin_dir):
        found += [os.path.join(root, f) for f in files if f.endswith(CODE_SUFFIXES)]
        if len(found) >= limit:
            break
    return found[:limit]


def landlock_plan(spec: LockdownSpec) -> landlock.LandlockPlan:
    """The Landlock rules for ``spec``: what the worker can still reach afterwards."""
    grants: list[tuple[str, int]] = []
    # The implicit-read list (policy_engine.implicit), as the audit hook and decide use it.
    implicit = implicit_reads(spec.plugin_dir, extra_paths=tuple(_interpreter_paths()))
    grants += [(p, landlock.READ_EXECUTE) for p in implicit.trees
               if p not in DEVICES and os.path.exists(p)]
    grants += [("/dev/null", landlock.READ_FILE | landlock.WRITE_FILE | landlock.TRUNCATE
                | landlock.IOCTL_DEV)]
    grants += [(p, landlock.READ_FILE | landlock.IOCTL_DEV)
               for p in ("/dev/urandom", "/dev/random", "/dev/zero")]
    grants += [("/proc/self", landlock.READ)]
    # The plugin's directory: listing, and its code files; other files only if granted.
    grants += [(spec.plugin_dir, landlock.READ_DIR)]
    grants += [(p, landlock.READ_FILE) for p in _code_files(spec.plugin_dir)]
    grants += [(p, landlock.READ) for p in spec.read_paths]
    grants += [(spec.scratch_dir, landlock.READ_WRITE)]
    grants += [(p, landlock.READ_WRITE) for p in spec.throwaway_paths if os.path.isdir(p)]
    # A write grant gives no read: reading needs its own grant (the rights of the same path
    # are merged, so read and write together give both).
    grants += [(p, landlock.WRITE_ONLY) for p in spec.write_paths]
    if spec.allow_subprocess:
        grants += [(p, landlock.READ_EXECUTE) for p in _PROGRAM_DIRS]
        grants += [(p, landlock.READ_FILE) for p in _PROGRAM_FILES]
    if spec.allow_network:
        grants += [(p, landlock.READ) for p in _NETWORK_FILES]
    ports = spec.connect_ports if spec.allow_network else ()
    any_port = spec.allow_network and spec.connect_any_port
    return landlock.LandlockPlan(paths=tuple(grants), connect_ports=tuple(ports),
                                 restrict_connect=not any_port)


def _apply_landlock(spec: LockdownSpec, applied: _Progress) -> None:
    applied.landlock_abi = landlock.abi_version()
    if applied.landlock_abi <= 0:
        applied.missing.append("landlock: not available in this kernel")
        return
    try:
        result = landlock.apply_plan(landlock_plan(spec))
    except landlock.LandlockError as error:
        applied.missing.append(f"landlock: {error}")
        return
    applied.landlock = result.filesystem
    applied.landlock_network = result.network
    applied.scoping = result.scoping
    if not result.network:
        applied.missing.append(f"landlock-network: needs ABI 4, kernel has {result.abi}")
    if not result.scoping:
        applied.missing.append(f"landlock-scoping: needs ABI 6, kernel has {result.abi}")


# -- 7. seccomp -----------------------------------------------------------------------------

def _apply_seccomp(spec: LockdownSpec, applied: _Progress,
                   hand_off: Callable[[int], None] | None = None) -> None:
    if not seccomp.available():
        applied.missing.append("seccomp: libseccomp or kernel support not available")
        return
    why = seccomp.notify_unavailable(kernel=False) if hand_off is not None else "not requested"
    listen = not why
    try:
        rules = seccomp.SeccompFilter()
    except seccomp.SeccompError as error:
        applied.missing.append(f"seccomp: {error}")
        return
    try:
        # With a listener, program starts go to it (the host answers EPERM without the
        # permission and records them); the errno filter would win over the listener.
        _seccomp_rules(rules, spec, exec_to_listener=listen)
        unknown = list(rules.unknown)
        rules.load()
    except seccomp.SeccompError as error:
        rules.release()
        applied.missing.append(f"seccomp: {error}")
        return
    applied.seccomp = True
    # A call libseccomp cannot name cannot be filtered: that rule is a missing layer.
    applied.missing += [f"seccomp: libseccomp does not know `{name}`, which stays unfiltered"
                        for name in dict.fromkeys(unknown)]
    if hand_off is None:
        return
    if listen:
        why = _apply_listener(hand_off)
    if why:
        applied.missing.append(f"kernel-records: {why}")
        if listen and not spec.allow_subprocess:
            _deny_exec_fallback(applied)


#: System calls the listener filter hands to the host (:mod:`..host.syscalls`).
LISTENED = ("open", "openat", "creat", "execve", "execveat")


def _apply_listener(hand_off: Callable[[int], None]) -> str:
    """Load the listener filter and give its descriptor away; empty, or why it failed."""
    try:
        rules = seccomp.SeccompFilter()
    except seccomp.SeccompError as error:
        return str(error)
    try:
        for name in LISTENED:
            rules.notify(name)
        listener = rules.load()
    except seccomp.SeccompError as error:
        rules.release()
        return str(error)
    if listener is None:
        return "libseccomp gave no listener descriptor"
    try:
        hand_off(listener)
    except OSError as error:
        # Nobody holds the listener once this copy is closed: every listened call then
        # fails with ENOSYS, which refuses programs too (closed, never open).
        return f"could not hand the listener to the host: {error}"
    finally:
        os.close(listener)
    return ""


def _deny_exec_fallback(applied: _Progress) -> None:
    """The exec refusal the listener would have held, as a plain errno filter."""
    try:
        rules = seccomp.SeccompFilter()
        for name in ("execve", "execveat"):
            rules.deny(name, errno.EPERM)
        rules.load()
    except seccomp.SeccompError as error:
        applied.missing.append(f"seccomp: exec refusal: {error}")
        applied.seccomp = False


def kernel_extras(spec: LockdownSpec, *, devices_only: bool = False) -> tuple[str, ...]:
    """Paths the Landlock plan grants outside the policy (devices, the process's own
    information, program and network configuration when those are granted)."""
    extras = [*DEVICES, "/dev/null"]
    if devices_only:
        return tuple(extras)
    if spec.allow_subprocess:
        extras += [*_PROGRAM_DIRS, *_PROGRAM_FILES]
    if spec.allow_network:
        extras += list(_NETWORK_FILES)
    return tuple(dict.fromkeys(extras))


def _seccomp_rules(rules: seccomp.SeccompFilter, spec: LockdownSpec, *,
                   exec_to_listener: bool = False) -> None:
    eperm = errno.EPERM
    for name in _ALWAYS_DENIED:
        rules.deny(name, eperm)
    # The memory fallback: only where no cgroup counts what these hold.
    if not spec.memory_counted:
        for name in _OUTSIDE_MEMORY:
            rules.deny(name, eperm)
    for name, index in _MODE_ARGUMENT:
        for bit in _SET_ID_BITS:
            rules.deny(name, eperm, seccomp.masked_eq(index, bit, bit))
    for name in _UNREADABLE_MODE:
        rules.deny(name, errno.ENOSYS)
    # TCP Fast Open connects inside sendto/sendmsg, past Landlock's connect rule.
    rules.deny("sendto", eperm, seccomp.masked_eq(3, _MSG_FASTOPEN, _MSG_FASTOPEN))
    rules.deny("sendmsg", eperm, seccomp.masked_eq(2, _MSG_FASTOPEN, _MSG_FASTOPEN))
    rules.deny("sendmmsg", eperm, seccomp.masked_eq(3, _MSG_FASTOPEN, _MSG_FASTOPEN))
    # clone3 passes its flags in memory, which seccomp cannot read; ENOSYS makes glibc fall
    # back to clone, whose flags are a register we can filter.
    rules.deny("clone3", errno.ENOSYS)
    for flag in _CLONE_NAMESPACES:
        rules.deny("clone", eperm, seccomp.masked_eq(0, flag, flag))
    if not spec.allow_subprocess:
        for name in _PROCESS_CREATION:
            if not (exec_to_listener and name.startswith("exec")):
                rules.deny(name, eperm)
        # Threads (CLONE_THREAD) stay allowed: plugins and the interpreter use them.
        rules.deny("clone", eperm, seccomp.masked_eq(0, _CLONE_THREAD, 0))
    allowed = {socket.AF_INET, socket.AF_INET6} if spec.allow_network else set()
    for family in range(_AF_LIMIT):
        if family not in allowed:
            # Masked to 32 bits: the domain is an int and the upper half of the register is
            # not guaranteed to be zero. AF_UNIX is denied too: the IPC socket already
            # exists and socketpair() (asyncio's self-pipe) is a separate, harmless call.
            rules.deny("socket", eperm, seccomp.masked_eq(0, 0xFFFFFFFF, family))
    for kind in (_SOCK_RAW, _SOCK_PACKET):
        rules.deny("socket", eperm, seccomp.masked_eq(1, _SOCK_TYPE_MASK, kind))
