"""Cgroups for workers: limits the kernel counts, and a freeze between calls.

Each worker's sandbox gets a cgroup of its own, a child of a *delegated parent*, so the
kernel counts every page, task and CPU cycle of the sandbox (memfd, shared memory and tmpfs
pages included) and can freeze all of it at once. The host's own process is never moved:
the child the host forks writes its own pid into the worker's ``cgroup.procs`` before it
executes bwrap or the worker (:meth:`WorkerCgroup.join`), so no plugin code ever runs
outside the cgroup, and everything it starts inherits it.

The parent is, in this order: the host setting ``POLICY_ENGINE_CGROUP`` (a cgroup path such
as ``/policy-engine``, the same in every hierarchy; ``none`` turns cgroups off), or, without
it, the cgroup systemd delegated to the service (``Delegate=yes`` with ``DelegateSubgroup=``,
so that the service's own process sits in a child of the delegated cgroup and the workers
become its siblings). Each limit is held by the first mechanism that works there:

=========  ========================================  ========================================
limit      cgroup v2                                 cgroup v1
=========  ========================================  ========================================
memory     ``memory.max``, ``memory.swap.max=0``,    ``memory.limit_in_bytes`` and
           ``memory.oom.group=1``                    ``memory.memsw.limit_in_bytes`` (if any)
pids       ``pids.max``                              ``pids.max``
cpu        ``cpu.max``                               ``cpu.cfs_quota_us``
freeze     ``cgroup.freeze`` (``frozen 1``)          ``freezer.state`` (``FROZEN``)
=========  ========================================  ========================================

What no cgroup holds falls back (:data:`FALLBACK`): memory is sampled from outside (with the
tmpfs caps counted and memfd and System V shared memory refused), tasks are ``RLIMIT_NPROC``
on a root host, CPU is sampled and throttled with signals, and the freeze is the reaper's
SIGSTOP fixed point (:func:`.reaper.freeze`).
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ...errors import EnforcementError

__all__ = ["ENV", "FALLBACK", "KERNEL", "LIMITS", "V1", "V2", "CgroupSupport", "WorkerCgroup", "configured_parent",
           "delegated_parent", "describe", "detect", "mechanisms",
           "writable_hierarchies"]

log = logging.getLogger(__name__)

#: The host setting naming the delegated parent cgroup (a cgroup path, ``none`` for off).
ENV = "POLICY_ENGINE_CGROUP"
#: The limits a cgroup can hold, in report order.
LIMITS = ("memory", "pids", "cpu", "freeze")
#: What holds each limit where no cgroup does.
FALLBACK: Mapping[str, str] = MappingProxyType({
    "memory": "sampler", "pids": "rlimit", "cpu": "sampler", "freeze": "signals"})
V2 = "cgroup v2"
V1 = "cgroup v1"
#: The mechanisms that are the kernel's (the rest are fallbacks).
KERNEL = frozenset({V1, V2})
_V1_CONTROLLER = {"memory": "memory", "pids": "pids", "cpu": "cpu", "freeze": "freezer"}
_V2_CONTROLLERS = ("memory", "pids", "cpu")
_CPU_PERIOD_US = 100_000
_FREEZE_TIMEOUT = 2.0  # seconds: a sandbox that does not freeze in time is killed instead
_REMOVE_TIMEOUT = 1.0
_NAMES = itertools.count()
_OFF = ("none", "off", "0")
_LIVE: set[WorkerCgroup] = set()


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


_PID_NAMESPACE = _pid_namespace()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _remove_all() -> None:
    """A worker dropped without being stopped dies with the host; its cgroup goes too."""
    with _LIVE_LOCK:
        groups = list(_LIVE)
    for group in groups:
        group.remove()


@dataclass(frozen=True, slots=True)
class CgroupSupport:
    """Where a worker's cgroup would go, and which mechanism holds each limit.

    ``v2_dir`` is the parent's directory in the cgroup v2 hierarchy (None without a usable
    one), ``v2_controllers`` the controllers enabled for its children; ``v1_dirs`` maps a
    v1 controller to the parent's directory in its hierarchy. ``note`` says why no cgroup
    is used, when none is.
    """

    parent: str | None
    v2_dir: str | None = None
    v2_controllers: frozenset[str] = frozenset()
    v1_dirs: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def mechanisms(self) -> Mapping[str, str]:
        """``limit -> mechanism`` (``cgroup v2``, ``cgroup v1`` or the fallback's name)."""
        return mechanisms(self)

    @property
    def active(self) -> bool:
        """Whether any limit is held by a cgroup."""
        return any(m in KERNEL for m in self.mechanisms.values())


def mechanisms(support: CgroupSupport) -> Mapping[str, str]:
    """Which mechanism holds each limit of :data:`LIMITS` under ``support``."""
    held: dict[str, str] = {}
    for limit in LIMITS:
        if support.v2_dir is not None and (limit == "freeze" or limit in support.v2_controllers):
            held[limit] = V2
        elif _V1_CONTROLLER[limit] in support.v1_dirs:
            held[limit] = V1
        else:
            held[limit] = FALLBACK[limit]
    return MappingProxyType(held)


def configured_parent(environ: Mapping[str, str] | None = None) -> str | None:
    """The parent named by the host setting :data:`ENV`: a cgroup path, ``""`` for "off",
    None when the setting is absent."""
    value = (os.environ if environ is None else environ).get(ENV)
    if value is None:
        return None
    value = value.strip()
    if not value or value.lower() in _OFF:
        return ""
    return "/" + value.strip("/")


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, type, options) of every cgroup mount."""
    found = []
    for line in (_read("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            found.append((parts[1], parts[2], parts[3].split(",")))
    return found


def _v2_mount() -> str | None:
    for where, kind, options in _mounts():
        if kind == "cgroup2" and "ro" not in options:
            return where
    return None


def _own_v2_path() -> str | None:
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def _is_delegated(directory: str) -> bool:
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(directory, name) == b"1":
                return True
        except OSError:
            continue
    return False


def delegated_parent() -> str | None:
    """The cgroup systemd delegated to this service, when the service's own process sits
    in a child of it (``DelegateSubgroup=``); None otherwise. The host never moves itself,
    so a delegated cgroup that holds the host's own process is not used."""
    mount, own = _v2_mount(), _own_v2_path()
    if mount is None or own is None or own == "/":
        return None
    parent = os.path.dirname(own.rstrip("/")) or "/"
    if parent != "/" and _is_delegated(mount + parent):
        return parent
    return None


def _prepare_v2(mount: str, parent: str) -> tuple[str | None, frozenset[str], str]:
    directory = os.path.normpath(mount + parent)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        return None, frozenset(), f"cgroup v2 parent `{directory}`: {error.strerror}"
    if not os.access(os.path.join(directory, "cgroup.procs"), os.W_OK):
        return None, frozenset(), f"cgroup v2 parent `{directory}` is not writable"
    available = set((_read(os.path.join(directory, "cgroup.controllers")) or "").split())
    wanted = [c for c in _V2_CONTROLLERS if c in available]
    enabled = set((_read(os.path.join(directory, "cgroup.subtree_control")) or "").split())
    missing = [c for c in wanted if c not in enabled]
    if missing:
        try:
            _write(os.path.join(directory, "cgroup.subtree_control"),
                   " ".join(f"+{c}" for c in missing))
        except OSError as error:
            # EBUSY: the parent holds processes itself (cgroup v2 allows controllers only
            # for cgroups without them); the freeze still works.
            log.info("cannot enable %s in `%s`: %s", missing, directory, error.strerror)
        enabled = set((_read(os.path.join(directory, "cgroup.subtree_control")) or "").split())
    return directory, frozenset(c for c in wanted if c in enabled), ""


def _prepare_v1(parent: str) -> dict[str, str]:
    dirs: dict[str, str] = {}
    for where, kind, options in _mounts():
        if kind != "cgroup" or "ro" in options:
            continue
        for controller in set(_V1_CONTROLLER.values()) & set(options):
            if controller in dirs:
                continue
            directory = os.path.normpath(where + parent)
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError:
                continue
            if os.access(os.path.join(directory, "cgroup.procs"), os.W_OK):
                dirs[controller] = directory
    return dirs


def writable_hierarchies() -> list[str]:
    """What this host could use, without creating anything: the writable cgroup v2 mount
    (with the controllers its root offers) and each writable cgroup v1 controller."""
    found = []
    for where, kind, options in _mounts():
        if "ro" in options or not os.access(where, os.W_OK):
            continue
        if kind == "cgroup2":
            offered = (_read(os.path.join(where, "cgroup.controllers")) or "").split()
            wanted = [c for c in _V2_CONTROLLERS if c in offered]
            found.append(f"cgroup v2 at `{where}` (freeze" + "".join(f", {c}" for c in wanted)
                         + ")")
        else:
            found += [f"cgroup v1 {c} at `{where}`" for c in options
                      if c in _V1_CONTROLLER.values()]
    return found


def describe(support: CgroupSupport) -> str:
    """One line: which mechanism holds each limit, and where."""
    held = support.mechanisms
    text = ", ".join(f"{limit} by {held[limit]}" for limit in LIMITS)
    if support.parent is None or not support.active:
        return f"{support.note}; {text}"
    return f"workers' cgroups under `{support.parent}`: {text}"


_DETECT_LOCK = threading.Lock()
_DETECTED: dict[str | None, CgroupSupport] = {}


def detect(parent: str | None = None, *, refresh: bool = False) -> CgroupSupport:
    """Where workers' cgroups go here (the parent is created when missing, and its cgroup v2
    controllers enabled for its children). ``parent`` overrides the host setting."""
    with _DETECT_LOCK:
        if not refresh and parent in _DETECTED:
            return _DETECTED[parent]
        support = _detect(parent)
        _DETECTED[parent] = support
        return support


def _detect(parent: str | None) -> CgroupSupport:
    chosen = parent if parent is not None else configured_parent()
    how = "configured"
    if chosen is None:
        chosen, how = delegated_parent(), "delegated by systemd"
        if chosen is None:
            return CgroupSupport(None, note=f"no delegated cgroup and `{ENV}` is not set")
    if not chosen:
        return CgroupSupport(None, note=f"cgroups are turned off (`{ENV}`)")
    chosen = "/" + chosen.strip("/")
    v2_dir: str | None = None
    controllers: frozenset[str] = frozenset()
    note = ""
    mount = _v2_mount()
    if mount is not None:
        v2_dir, controllers, note = _prepare_v2(mount, chosen)
    v1_dirs = _prepare_v1(chosen) if os.geteuid() == 0 or how == "configured" else {}
    support = CgroupSupport(chosen, v2_dir, controllers, MappingProxyType(v1_dirs), note)
    if not support.active:
        return CgroupSupport(chosen, note=note or f"no writable cgroup hierarchy for `{chosen}`")
    return support


def _sweep_stale(support: CgroupSupport) -> None:
    """Remove the empty cgroups of workers whose host is gone (a host killed with SIGKILL
    cannot remove its own; its workers died with it, by their parent-death signal)."""
    for parent in (support.v2_dir, *support.v1_dirs.values()):
        if parent is None:
            continue
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            parts = name.rsplit("-", 2)
            if not name.startswith("worker-") or len(parts) != 3:
                continue
            namespace, _, host = parts[1].partition(".")
            # Only hosts of this PID namespace: another namespace's pids are not ours to test.
            if namespace != _PID_NAMESPACE or not host.isdigit():
                continue
            if int(host) == os.getpid() or os.path.exists(f"/proc/{host}"):
                continue
            directory = os.path.join(parent, name)
            try:
                os.rmdir(directory)  # fails (EBUSY) while anything lives
            except OSError:
                _end_stale(directory)


def _end_stale(directory: str) -> None:
    """Kill what is left in a dead host's worker cgroup (a cgroup v1 freezer keeps a frozen
    process from dying until it is thawed); the next sweep removes the cgroup."""
    for word in (_read(f"{directory}/cgroup.procs") or "").split():
        try:
            os.kill(int(word), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    try:
        if os.path.exists(f"{directory}/freezer.state"):
            _write(f"{directory}/freezer.state", "THAWED")
        elif os.path.exists(f"{directory}/cgroup.freeze"):
            _write(f"{directory}/cgroup.freeze", "0")
    except OSError:
        pass


class WorkerCgroup:
    """One worker's cgroup, in each hierarchy that holds a limit.

    Created with its limits before the worker starts; :meth:`join` (in the host's pre-exec
    child) puts the child in it; :meth:`remove` deletes it once everything in it is dead.
    """

    def __init__(self, support: CgroupSupport, name: str) -> None:
        self.support = support
        self.mechanisms = support.mechanisms
        self.name = name
        self._dirs: dict[str, str] = {}  # "v2" or a v1 controller -> this worker's directory
        self._join_fds: list[int] = []
        self._freeze_fd: int | None = None
        self._events_fd: int | None = None
        self._frozen = False

    @classmethod
    def create(cls, support: CgroupSupport, plugin: str, *, memory_bytes: int, pids: int,
               cpu_share: float) -> WorkerCgroup:
        """Make the cgroup(s) of one worker of ``plugin`` and set its limits. Raises
        :class:`EnforcementError` when a limit cannot be written (fail closed)."""
        _sweep_stale(support)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in plugin)[:64]
        name = f"worker-{safe}-{_PID_NAMESPACE}.{os.getpid()}-{next(_NAMES)}"
        group = cls(support, name)
        with _LIVE_LOCK:
            _LIVE.add(group)
        try:
            group._make(memory_bytes=memory_bytes, pids=pids, cpu_share=cpu_share)
        except OSError as error:
            group.remove()
            raise EnforcementError(f"cannot set up the cgroup of plugin `{plugin}` "
                                   f"(`{error.filename}`: {error.strerror}); check the parent "
                                   f"cgroup named by `{ENV}`", plugin=plugin) from error
        return group

    def _make(self, *, memory_bytes: int, pids: int, cpu_share: float) -> None:
        held = self.mechanisms
        if self.support.v2_dir is not None:
            directory = os.path.join(self.support.v2_dir, self.name)
            os.mkdir(directory, 0o755)
            self._dirs["v2"] = directory
        for limit in LIMITS:
            if held[limit] == V1:
                controller = _V1_CONTROLLER[limit]
                directory = os.path.join(self.support.v1_dirs[controller], self.name)
                os.mkdir(directory, 0o755)
                self._dirs[controller] = directory
        quota = max(1000, int(cpu_share * _CPU_PERIOD_US)) if cpu_share > 0 else 0
        v2 = self._dirs.get("v2")
        if held["memory"] == V2 and v2 and memory_bytes > 0:
            _write(f"{v2}/memory.max", str(memory_bytes))
            if os.path.exists(f"{v2}/memory.swap.max"):
                _write(f"{v2}/memory.swap.max", "0")
            _write(f"{v2}/memory.oom.group", "1")
        if held["pids"] == V2 and v2 and pids > 0:
            _write(f"{v2}/pids.max", str(pids))
        if held["cpu"] == V2 and v2 and quota:
            _write(f"{v2}/cpu.max", f"{quota} {_CPU_PERIOD_US}")
        memory = self._dirs.get("memory")
        if held["memory"] == V1 and memory and memory_bytes > 0:
            _write(f"{memory}/memory.limit_in_bytes", str(memory_bytes))
            if os.path.exists(f"{memory}/memory.memsw.limit_in_bytes"):
                _write(f"{memory}/memory.memsw.limit_in_bytes", str(memory_bytes))
        if held["pids"] == V1 and pids > 0:
            _write(f"{self._dirs['pids']}/pids.max", str(pids))
        if held["cpu"] == V1 and quota:
            _write(f"{self._dirs['cpu']}/cpu.cfs_period_us", str(_CPU_PERIOD_US))
            _write(f"{self._dirs['cpu']}/cpu.cfs_quota_us", str(quota))
        for directory in self._dirs.values():
            self._join_fds.append(os.open(f"{directory}/cgroup.procs",
                                          os.O_WRONLY | os.O_CLOEXEC))
        if held["freeze"] == V2 and v2:
            self._freeze_fd = os.open(f"{v2}/cgroup.freeze", os.O_WRONLY | os.O_CLOEXEC)
            self._events_fd = os.open(f"{v2}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        elif held["freeze"] == V1:
            self._freeze_fd = os.open(f"{self._dirs['freezer']}/freezer.state",
                                      os.O_RDWR | os.O_CLOEXEC)

    # -- the worker's side of the fork ------------------------------------------------------

    def join(self) -> None:
        """Move the calling process into this cgroup: called in the child the host forked,
        before it executes anything (the descriptors were opened beforehand)."""
        pid = str(os.getpid()).encode()
        for fd in self._join_fds:
            os.write(fd, pid)

    # -- freezing ---------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        """Whether the host froze the sandbox (and has not thawed it since)."""
        return self._frozen

    def freeze(self, timeout: float = _FREEZE_TIMEOUT) -> bool:
        """Freeze every process of the sandbox and wait until the kernel says it is frozen.
        False when it did not freeze within ``timeout`` (the caller kills it)."""
        self.request_freeze()
        return self.wait_frozen(timeout)

    def request_freeze(self) -> None:
        """Ask the kernel to freeze the sandbox and return at once. Each task stops at its
        next entry into the kernel (a running one is interrupted for it), before it runs
        another instruction of its own; :meth:`wait_frozen` confirms."""
        fd = self._freeze_fd
        if fd is None:
            raise EnforcementError("this cgroup has no freezer")
        self._frozen = True
        os.write(fd, b"1" if self.mechanisms["freeze"] == V2 else b"FROZEN")

    def wait_frozen(self, timeout: float = _FREEZE_TIMEOUT) -> bool:
        """Wait until the requested freeze holds (``frozen 1`` in ``cgroup.events``, or
        ``FROZEN`` in ``freezer.state``); False when it did not within ``timeout``."""
        fd = self._freeze_fd
        if fd is None or not self._frozen:
            return False
        deadline = time.monotonic() + timeout
        if self.mechanisms["freeze"] == V2:
            events = self._events_fd
            assert events is not None
            poller: select.poll | None = None
            while b"frozen 1" not in os.pread(events, 256, 0):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if poller is None:
                    poller = select.poll()
                    poller.register(events, select.POLLPRI)
                poller.poll(max(1, int(remaining * 1000)))
            return True
        while os.pread(fd, 32, 0).strip() != b"FROZEN":
            if time.monotonic() >= deadline:
                return False
            os.write(fd, b"FROZEN")  # v1 retries a freeze that a racing fork interrupted
            time.sleep(0.0002)
        return True

    def thaw(self) -> None:
        """Let the sandbox run again (before a call)."""
        fd = self._freeze_fd
        if fd is None or not self._frozen:
            return
        os.write(fd, b"0" if self.mechanisms["freeze"] == V2 else b"THAWED")
        self._frozen = False

    # -- measuring --------------------------------------------------------------------------

    def memory_used(self) -> int | None:
        """Memory the cgroup holds, less inactive file cache (which the kernel reclaims
        before it reaches the limit): the same "working set" container tools report."""
        if self.mechanisms["memory"] == V2:
            directory = self._dirs["v2"]
            current, stat_name, inactive = "memory.current", "memory.stat", "inactive_file"
        elif self.mechanisms["memory"] == V1:
            directory = self._dirs["memory"]
            current, stat_name, inactive = ("memory.usage_in_bytes", "memory.stat",
                                            "total_inactive_file")
        else:
            return None
        text = _read(f"{directory}/{current}")
        if text is None:
            return None
        used = int(text.strip() or 0)
        for line in (_read(f"{directory}/{stat_name}") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == inactive:
                used -= int(value or 0)
                break
        return max(used, 0)

    def memory_peak(self) -> int | None:
        """The most memory the cgroup held (``memory.peak``, ``memory.max_usage_in_bytes``)."""
        if self.mechanisms["memory"] == V2:
            text = _read(f"{self._dirs['v2']}/memory.peak")
        elif self.mechanisms["memory"] == V1:
            text = _read(f"{self._dirs['memory']}/memory.max_usage_in_bytes")
        else:
            return None
        try:
            return int((text or "").strip())
        except ValueError:
            return None

    def oom_kills(self) -> int:
        """How many processes the kernel killed for this cgroup's memory limit."""
        if self.mechanisms["memory"] == V2:
            text, key = _read(f"{self._dirs['v2']}/memory.events"), "oom_kill"
        elif self.mechanisms["memory"] == V1:
            text, key = _read(f"{self._dirs['memory']}/memory.oom_control"), "oom_kill"
        else:
            return 0
        for line in (text or "").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value or 0)
        return 0

    def cpu_periods(self) -> tuple[int, int] | None:
        """``(periods, throttled periods)`` of the CPU quota so far, where a cgroup holds it."""
        if self.mechanisms["cpu"] == V2:
            text = _read(f"{self._dirs['v2']}/cpu.stat")
        elif self.mechanisms["cpu"] == V1:
            text = _read(f"{self._dirs['cpu']}/cpu.stat")
        else:
            return None
        values = dict(line.partition(" ")[::2] for line in (text or "").splitlines())
        try:
            return int(values.get("nr_periods", 0)), int(values.get("nr_throttled", 0))
        except ValueError:
            return None

    def pids(self) -> list[int]:
        """Every process in the cgroup (host pids)."""
        found: set[int] = set()
        for directory in self._dirs.values():
            for word in (_read(f"{directory}/cgroup.procs") or "").split():
                found.add(int(word))
        return sorted(found)

    # -- ending -----------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL everything in the cgroup, then thaw it (a v1-frozen process dies only once
        thawed, and it dies before it runs again: the pending SIGKILL comes first)."""
        v2 = self._dirs.get("v2")
        killed = False
        if v2 is not None and os.path.exists(f"{v2}/cgroup.kill"):
            try:
                _write(f"{v2}/cgroup.kill", "1")
                killed = True
            except OSError:
                killed = False
        if not killed:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue
        if self._frozen:
            self.thaw()

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (waiting a moment for the dead to go)."""
        if self.pids():
            self.kill()
        elif self._frozen:
            self.thaw()
        for fd in (*self._join_fds, self._freeze_fd, self._events_fd):
            if fd is not None:
                os.close(fd)
        self._join_fds, self._freeze_fd, self._events_fd = [], None, None
        deadline = time.monotonic() + _REMOVE_TIMEOUT
        for directory in self._dirs.values():
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                        log.error("cannot remove cgroup `%s`: %s", directory, error.strerror)
                        break
                    time.sleep(0.002)
        self._dirs = {}
        with _LIVE_LOCK:
            _LIVE.discard(self)
