"""Host side of process isolation: one persistent, locked-down worker process per plugin.

:class:`WorkerProcess` starts the worker (:mod:`.worker`), sends it the init frame, and then
relays calls. Every call has a wall-clock deadline; past it the worker's whole tree is
stopped and killed and :class:`PluginTimeoutError` raised, and the next call starts a fresh
worker transparently. A worker that dies (signal, ``os._exit``, OOM kill) becomes a
:class:`PluginCrashedError`; the host never goes down with it. A sampler thread
(:mod:`.sampler`) enforces the memory limit and the CPU share of the whole tree.

Where a delegated cgroup exists (:mod:`.cgroup`) each worker's sandbox runs in a cgroup of
its own, joined before anything runs, and the kernel holds memory, tasks and CPU. Between
calls no plugin code runs: after a call (or hook, or start-up) returns, the sandbox is
frozen (the cgroup freezer, else the reaper's SIGSTOP fixed point) and thawed right before
the next call; threads and asyncio loops the plugin keeps in them are paused meanwhile.
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import logging
import math
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from ...decision import Decision
from ...digest import PluginTree, is_python_source, read_plugin_tree
from ...errors import (
    ChannelValueError,
    EnforcementError,
    FileSizeError,
    KernelDeniedError,
    PluginCrashedError,
    PluginRaisedError,
    PluginTimeoutError,
    ResourceLimitError,
    UsageError,
)
from ...units import human_size
from ..wire import (
    LIMITS,
    PROTOCOL_VERSION,
    AuditRecord,
    CapabilityCall,
    ChannelClosedError,
    ConnectRequest,
    ErrorReply,
    FrameError,
    IsolationReport,
    LogRecord,
    PassFds,
    Ready,
    ResolveRequest,
    Result,
    WireError,
    WorkerMessage,
    decode_worker_value,
    encode_frame,
    encode_value,
    recv_frame,
    recv_worker_message_and_fds,
    send_frame,
    send_frame_with_fds,
)
from ..worker.lockdown import LockdownSpec
from ..worker.main import BOOTSTRAP
from ..worker.remote import exception_from_data, exception_to_data
from . import cgroup, kernel, reaper
from .bytecode import worker_bytecode_dir
from .cgroup import WorkerCgroup
from .output import OutputCapture
from .sampler import Sampler
from .usage import ResourceLimits, ResourceUsage

if TYPE_CHECKING:
    from .broker import NetworkBroker
    from .identity import IdentityMap
    from .syscalls import SyscallListener

__all__ = ["CapabilityHandler", "StartResult", "WorkerInit", "WorkerProcess"]

log = logging.getLogger(__name__)

#: ``handler(capability, method, args)`` runs a plugin's capability call in the host and
#: returns a JSON-able value, or raises (PermissionDeniedError for a denial).
CapabilityHandler = Callable[[str, str, list[Any]], Any]

_T = TypeVar("_T")
_TERM_GRACE = 0.025  # seconds a worker gets to exit on SIGTERM before SIGKILL
_REAP_TIMEOUT = 1.0
_FREEZE_TIMEOUT = 2.0  # seconds a sandbox gets to freeze after a call before it is killed
# Busy-waiting for a reply before sleeping can save a thread wake-up, but whether that pays
# depends on the machine (measured on a 2-vCPU VM: from 100 to 40 us at one time, from 47 to
# 65 us at another). Off by default; ``WorkerProcess(spin=...)`` turns it on.
_DEFAULT_SPIN = 0.0
_WORKER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "MALLOC_ARENA_MAX": "2"}
_PLUGIN_LOGGER = "policy_engine.plugins"
#: The ``policy_engine`` package directory (this file is ``enforcement/host/supervisor.py``).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MAX_LOGGER_NAME = 100


@dataclass(frozen=True, slots=True)
class WorkerInit:
    """Everything a worker needs to load one plugin; sent as the ``init`` frame.

    ``checker`` is the decision data the worker's audit hook consults (see
    :func:`.checker.make_checker`); ``sys_path`` are extra import roots for the plugin's
    own dependencies (they become readable inside the sandbox). With ``plugin_type`` the
    worker checks that the entry class derives from that type's base class;
    ``data_dir`` is what the plugin sees as ``ctx.data_dir`` (default: its scratch dir).
    ``code`` is the one digested read of the plugin directory: the worker compiles the
    plugin's modules from its sources and reads none from disk
    (:mod:`policy_engine.enforcement.worker.modules`).
    """

    plugin: str
    plugin_dir: str
    entry_point: str
    lockdown: LockdownSpec
    checker: Mapping[str, Any] = field(default_factory=dict)
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    sys_path: tuple[str, ...] = ()
    plugin_type: str = ""
    data_dir: str | None = None
    code: PluginTree | None = field(default=None, repr=False)

    def to_frame(self) -> dict[str, Any]:
        """The init frame."""
        frame: dict[str, Any] = {
            "op": "init",
            "version": PROTOCOL_VERSION,
            "plugin": self.plugin,
            "plugin_dir": self.plugin_dir,
            "entry_point": self.entry_point,
            "sys_path": list(self.sys_path),
            "lockdown": self.lockdown.to_json(),
            "checker": dict(self.checker),
            "limits": self.limits.to_json(),
            "plugin_type": self.plugin_type,
            "data_dir": self.data_dir,
        }
        if self.code is not None:
            frame["code"] = {
                "digest": self.code.digest,
                "paths": list(self.code.paths),
                "sources": {path: base64.b64encode(data).decode("ascii")
                            for path, data in self.code.files.items()},
            }
        return frame


def _read_code(init: WorkerInit) -> PluginTree:
    try:
        return read_plugin_tree(init.plugin_dir, keep=is_python_source)
    except OSError as exc:  # PluginTreeError names the link, special file or cap
        raise EnforcementError(f"cannot read the plugin directory of `{init.plugin}`: {exc}",
                               plugin=init.plugin) from None


@dataclass(frozen=True, slots=True)
class StartResult:
    """What :meth:`WorkerProcess.start` returns."""

    report: IsolationReport  # what the worker actually applied
    init_result: Any  # the JSON value returned by the plugin's initialize(ctx)
    pid: int


class _Spawner:
    """Starts workers from one long-lived thread.

    The parent-death signal fires when the *thread* that forked the child exits, not the
    process: a worker forked from a short-lived thread (a thread pool, ``to_thread``) would
    be killed when that thread ends. This thread lives as long as the host.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, function: Callable[[], _T]) -> _T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="worker-spawner",
                                                daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((function, future))
        result: _T = future.result()
        return result

    def _serve(self) -> None:
        while True:
            function, future = self._queue.get()
            try:
                future.set_result(function())
            except BaseException as error:  # handed to the caller, who re-raises it
                future.set_exception(error)


_SPAWNER = _Spawner()
_LIVE: weakref.WeakSet[WorkerProcess] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for worker in list(_LIVE):
        worker.stop()


class WorkerProcess:
    """One plugin's worker process, restarted transparently after a timeout or crash.

    Calls are serialised: a worker runs one call at a time. The object is thread-safe.
    """

    def __init__(self, *, capability_handler: CapabilityHandler | None = None,
                 python: str | None = None, debug_stderr: bool = False,
                 spin: float = _DEFAULT_SPIN, sandbox: bool | None = None,
                 identities: IdentityMap | None = None,
                 audit_handler: Callable[[AuditRecord], None] | None = None,
                 broker_factory: Callable[[], NetworkBroker] | None = None,
                 syscall_decide: Callable[[str, str], Any] | None = None,
                 audit: bool = False,
                 cgroup_parent: str | None = None) -> None:
        """``spin`` is how long (seconds) to busy-wait for a reply before sleeping in the
        kernel; ``debug_stderr`` lets the worker write to the host's stderr. ``sandbox``
        starts the worker under bubblewrap (None: whenever bubblewrap works here, see
        :mod:`.bwrap`); on a root host each plugin then runs as its own uid from
        ``identities`` (default: :class:`~.identity.IdentityMap` at its default path).
        ``audit_handler`` receives the audit records an audit-mode worker reports.
        ``broker_factory`` makes the :class:`~.broker.NetworkBroker` that serves the
        connects and lookups of a worker granted the network (one per worker started);
        without it such a worker has no route out. ``syscall_decide(action, resource)``
        decides (and records) the opens and program starts a worker's seccomp listener
        hands the host (:mod:`.syscalls`; asked for with ``LockdownSpec.kernel_records``);
        with ``audit`` those are recorded and never refused. ``cgroup_parent`` names the
        delegated parent cgroup of the workers' cgroups (a cgroup path, ``""`` for none;
        default: the host setting ``POLICY_ENGINE_CGROUP``, else systemd's delegation, see
        :mod:`.cgroup`)."""
        self._capability_handler = capability_handler
        self._audit_handler = audit_handler
        self._broker_factory = broker_factory
        self._broker: NetworkBroker | None = None
        self._syscall_decide = syscall_decide
        self._audit = audit
        self._listener: SyscallListener | None = None
        # The last denial the seccomp listener answered during the current call.
        self._kernel_denial: Decision | None = None
        #: whether the current (or last) worker handed the host its seccomp listener
        self.kernel_records = False
        self._spin_seconds = spin
        self._python = python or sys.executable
        self._debug_stderr = debug_stderr
        self._init: WorkerInit | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._output: OutputCapture | None = None  # the worker's stdout and stderr
        self._pidfd: int | None = None
        self._poller: Any = None
        self._sampler: Sampler | None = None
        self._violation: EnforcementError | None = None
        self._report: IsolationReport | None = None
        self._sandbox = sandbox
        self._disk_dir: str | None = None  # a data directory this worker mounted (limit disk)
        self._identities = identities
        self._sandboxed = False  # the current worker runs under bubblewrap
        self._identity = (os.getuid(), os.getgid())
        self._sandbox_pids: list[int] = []  # bwrap's reaper and the worker, as host pids
        self._may_fork = True
        self._cgroup_parent = cgroup_parent
        self._cgroup: WorkerCgroup | None = None
        self._nproc = 0  # RLIMIT_NPROC of the current worker, 0 for none
        #: SIGSTOPped processes of the fallback freeze; None while the sandbox may run
        self._stopped: dict[int, psutil.Process] | None = None
        self._freeze_asked = 0.0
        self._freeze_held = False  # the freeze asked at _freeze_asked was seen to hold
        self._worker_process: psutil.Process | None = None  # the worker, for SIGSTOP
        self._worker_pidfd: int | None = None  # and its pidfd: a signal with no pid reuse
        #: host CPU seconds spent on this plugin's frames, over all calls, and in this call
        self.host_cpu_seconds = 0.0
        self._call_host_cpu = 0.0
        self._call_lock = threading.RLock()  # one call (or start/stop) at a time
        self._signal_lock = threading.RLock()  # signalling and killing the tree
        self.restarts = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The worker's pid, or None when no worker is running."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return None
        return self._worker_host_pid() if self._sandboxed else proc.pid

    @property
    def alive(self) -> bool:
        """True while a worker process is running."""
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def report(self) -> IsolationReport | None:
        """The isolation report of the current (or last) worker."""
        return self._report

    @property
    def sandboxed(self) -> bool:
        """Whether the current (or last) worker started under bubblewrap."""
        return bool(getattr(self, "_sandboxed", False))

    @property
    def limit_mechanisms(self) -> Mapping[str, str]:
        """Which mechanism holds each limit of the current (or next) worker: ``memory``,
        ``pids``, ``cpu``, ``freeze`` -> ``cgroup v2``, ``cgroup v1`` or the fallback
        (``sampler``, ``rlimit``, ``none``, ``signals``)."""
        group = self._cgroup
        held = dict(group.mechanisms if group is not None
                    else cgroup.detect(self._cgroup_parent).mechanisms)
        if held["pids"] == "rlimit" and not self._nproc:
            held["pids"] = "none"
        return held

    @property
    def frozen(self) -> bool:
        """Whether the worker's sandbox is frozen (between calls)."""
        group = self._cgroup
        return self._stopped is not None or (group is not None and group.frozen)

    @property
    def usage(self) -> ResourceUsage:
        """The latest resource sample of the worker's tree."""
        sampler = self._sampler
        return sampler.usage if sampler is not None else ResourceUsage()

    def start(self, init: WorkerInit) -> StartResult:
        """Start a worker for ``init`` (stopping a running one) and wait until it is ready.

        Raises :class:`PluginTimeoutError` (phase ``init``) when start-up takes longer
        than ``init.limits.init_timeout``, and the plugin's own error if importing or
        initialising it fails.
        """
        if init.code is None:  # the plugin's code is read once, here, and the worker gets it
            init = replace(init, code=_read_code(init))
        with self._call_lock:
            if self._proc is not None:
                self._shutdown()
            self._init = init
            return self._start()

    def call(self, method: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
             *, timeout: float, phase: str = "call") -> Any:
        """Call ``method(*args, **kwargs)`` on the plugin and return its JSON result.

        ``method`` ``"hook:<name>"`` calls the function the plugin registered for hook
        ``name``. Raises :class:`PluginTimeoutError` past ``timeout`` seconds,
        :class:`PluginCrashedError` when the worker dies, :class:`ResourceLimitError` /
        :class:`FileSizeError` over a limit, :class:`PermissionDeniedError` for a denied
        action, and :class:`~.remote.PluginRaisedError` for any other plugin exception.
        """
        if timeout <= 0:
            raise UsageError(f"timeout must be positive, not {timeout}")
        frame = {"op": "call", "method": method, **self._encode_arguments(args, kwargs),
                 "log_level": self._log_level()}
        with self._call_lock:
            init = self._require_init()
            if self.alive and self.frozen and self._freeze_overdue():
                log.error("the sandbox of plugin `%s` did not freeze between calls; starting "
                          "a fresh one", init.plugin)
                self._kill()
            if not self.alive:
                self._shutdown()
                self.restarts += 1
                log.info("starting a fresh worker for plugin `%s`", init.plugin)
                self._start()
            deadline = time.monotonic() + timeout
            self._refuse_stray_frames()
            self._call_host_cpu = 0.0
            self._kernel_denial = None
            output = self._output
            if output is not None:
                output.begin_call()
            try:
                try:
                    self._send_and_thaw(frame, deadline, phase, timeout)
                    reply = self._exchange(deadline, phase, timeout)
                finally:
                    if self._sampler is not None:
                        self._sampler.release_throttle()
                    if output is not None:
                        output.end_call()
                self._sweep_leftovers()
            finally:
                self._freeze()
            return self._result(reply)

    def _log_level(self) -> int:
        """The level the host logs the plugin's records at: the worker drops those below,
        so a debug call in a loop costs no frames unless someone listens."""
        return logging.getLogger(f"{_PLUGIN_LOGGER}.{self._plugin}").getEffectiveLevel()

    def _encode_arguments(self, args: Sequence[Any],
                          kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """``args`` and ``kwargs`` in the wire's value encoding; ChannelValueError names
        what cannot cross (``args[1]["when"]``) before anything is sent."""
        try:
            return {"args": encode_value(list(args), "args", depth=2),
                    "kwargs": encode_value(dict(kwargs or {}), "kwargs", depth=2)}
        except ChannelValueError as error:
            raise ChannelValueError(f"arguments for plugin `{self._plugin}`: {error}",
                                    where=error.where, value_type=error.value_type,
                                    plugin=self._plugin) from None

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the worker: ask nicely, then kill its tree. Safe to call repeatedly."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._call_lock.acquire(blocking=False):  # idle: a clean stop runs cleanup()
                try:
                    self._polite_stop(timeout)
                finally:
                    self._call_lock.release()
            # Always killed, never left to exit: its descendants die with it (and a call in
            # progress in another thread ends with PluginCrashedError).
            self._kill()
        with self._call_lock:
            self._shutdown()
            disk_dir, self._disk_dir = self._disk_dir, None
        if disk_dir is not None:  # restarts keep it; the last stop detaches it (data kept)
            from .disk import unmount_data_dir

            unmount_data_dir(disk_dir)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting ---------------------------------------------------------------------------

    def _require_init(self) -> WorkerInit:
        if self._init is None:
            raise UsageError("WorkerProcess.start() must be called before call()")
        return self._init

    def _start(self) -> StartResult:
        init = self._require_init()
        self._sandboxed = self._use_sandbox()
        spec = self._prepare_sandbox(init) if self._sandboxed else self._prepare(init)
        self._cgroup = self._make_cgroup(init)
        if self._cgroup is not None and self._cgroup.mechanisms["memory"] in cgroup.KERNEL:
            spec = replace(spec, memory_counted=True)
        if spec.kernel_records and self._syscall_decide is None:
            # Nobody here would serve the listener: the worker does not make one.
            spec = replace(spec, kernel_records=False)
        self._nproc = spec.nproc
        features = kernel.detect()
        # Without seccomp nothing stops a fork at the kernel level, so look for descendants.
        self._may_fork = spec.allow_subprocess or not features.seccomp
        host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output = OutputCapture(init.plugin)
        try:
            spawn = self._spawn_sandboxed if self._sandboxed else self._spawn
            self._proc = _SPAWNER.run(lambda: spawn(child_sock, spec, output))
        except BaseException:
            host_sock.close()
            if self._cgroup is not None:
                self._cgroup.remove()
                self._cgroup = None
            output.close()
            raise
        finally:
            child_sock.close()
        output.started()
        self._output = output
        self._sock = host_sock
        self._violation = None
        self._pidfd = _pidfd_open(self._proc.pid)
        self._poller = select.poll()
        self._poller.register(host_sock.fileno(), select.POLLIN)
        if self._pidfd is not None:
            self._poller.register(self._pidfd, select.POLLIN)
        _LIVE.add(self)
        limit = init.limits.init_timeout
        deadline = time.monotonic() + limit
        frame = replace(init, lockdown=spec).to_frame()
        frame["log_level"] = self._log_level()
        if spec.allow_network and self._broker_factory is not None:
            self._broker = self._broker_factory()
            frame["network_broker"] = True
        output.begin_call()
        try:
            self._send(frame, deadline, "init", limit)
            first = self._receive_listener(init, spec, deadline, limit) if spec.kernel_records \
                else None
            reply = self._exchange(deadline, "init", limit, first=first)
        finally:
            output.end_call()
        if isinstance(reply, (Ready, ErrorReply)) and reply.report is not None:
            self._report = reply.report
        if not isinstance(reply, Ready):
            self._kill()
            self._shutdown()
            raise self._error_from(reply)
        assert self._report is not None
        self._may_fork = spec.allow_subprocess or not self._report.seccomp
        if self._sandboxed:
            worker_pid = self._worker_host_pid()
            self._sandbox_pids = [p for p in (*reaper.child_pids(self._proc.pid), worker_pid)
                                  if p is not None]
        group = self._cgroup
        memory_probe = group.memory_used if group is not None and \
            group.mechanisms["memory"] in cgroup.KERNEL else None
        cpu_periods = group.cpu_periods if group is not None and \
            group.mechanisms["cpu"] in cgroup.KERNEL else None
        self._sampler = Sampler(
            self._proc.pid, plugin=init.plugin, limits=init.limits,
            with_descendants=self._may_fork or self._sandboxed, on_violation=self._on_violation,
            signal_tree=self._signal_tree,
            reserved_bytes=(2 + len(spec.throwaway_paths)) * tmpfs_cap(spec.memory_bytes)
            if self._sandboxed else 0,
            memory_probe=memory_probe, cpu_periods=cpu_periods, on_sample=self._check_freeze)
        self._sampler.start()
        pid = self.pid or self._proc.pid
        try:
            self._worker_process = psutil.Process(pid)
        except psutil.Error:
            self._worker_process = None
        self._worker_pidfd = _pidfd_open(pid)
        self._freeze()  # nothing of the plugin runs until its first call
        if not self.alive:
            raise self._death()
        return StartResult(self._report, reply.init_result, pid)

    def _make_cgroup(self, init: WorkerInit) -> WorkerCgroup | None:
        """The cgroup of the worker about to start, with its limits; None where none is
        usable (the fallbacks hold the limits)."""
        support = cgroup.detect(self._cgroup_parent)
        if not support.active:
            return None
        return WorkerCgroup.create(support, init.plugin, memory_bytes=init.limits.memory_bytes,
                                   pids=SANDBOX_TASKS, cpu_share=init.limits.cpu_share)

    def _join_cgroup(self) -> Callable[[], None] | None:
        """What the forked child runs first: joining the worker's cgroup."""
        group = self._cgroup
        return group.join if group is not None else None

    # -- freezing between calls -------------------------------------------------------------

    def _freeze(self) -> None:
        """Freeze the idle sandbox: no plugin code runs until :meth:`_thaw`.

        With a cgroup freezer only the request is made on the call path (a write to its
        freezer): the kernel stops each task at its next entry into the kernel, and
        interrupts a running one for it. It cannot be undone from inside, so the sampler
        confirms it off the call path (:meth:`_check_freeze`), and a sandbox that did not
        freeze within the freeze timeout is killed. Signals can be undone (a thread's SIGCONT
        ends a group stop not yet complete), so without a cgroup freezer the SIGSTOP fixed
        point runs here, to the end: one process repeated until each thread is stopped
        where nothing can fork, else the reaper's walk over the tree."""
        if not self.alive or self.frozen:
            return
        with self._signal_lock:
            self._freeze_asked = time.monotonic()
            self._freeze_held = False
            group = self._cgroup
            if group is not None and group.mechanisms["freeze"] in cgroup.KERNEL:
                try:
                    group.request_freeze()
                except OSError as error:
                    log.error("cannot freeze the sandbox of plugin `%s` (%s); stopping it",
                              self._plugin, error.strerror)
                    self._kill()
                return
            worker, fd = self._worker_process, self._worker_pidfd
            if not self._may_fork and worker is not None and fd is not None:
                # Seccomp forbids fork: the worker is every process of the sandbox (but the
                # reaper). A thread not yet stopped can still end the group stop with a
                # SIGCONT, so the SIGSTOP is repeated until every thread is stopped: then
                # none runs, and none can wake another.
                self._stopped = {worker.pid: worker}
                self._freeze_held = _stop_every_thread(fd, worker.pid)
                if not self._freeze_held:
                    log.error("the sandbox of plugin `%s` did not stop within %.0f s after a "
                              "call; stopping it", self._plugin, _FREEZE_TIMEOUT)
                    self._kill()
                return
            self._stopped = self._freeze_by_signals()
            self._freeze_held = True

    def wait_frozen(self, timeout: float = _FREEZE_TIMEOUT) -> bool:
        """Wait until the freeze requested after the last call holds; False when the sandbox
        is not frozen (not requested, or it did not freeze within ``timeout``)."""
        group = self._cgroup
        if group is not None and group.frozen:
            return group.wait_frozen(timeout)
        stopped = self._stopped
        if stopped is None:
            return False
        deadline = time.monotonic() + timeout
        for pid in stopped:
            while not reaper.stopped(pid):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.0001)
        return True

    def _freeze_overdue(self) -> bool:
        """Whether the freeze asked after the last call failed: older than the freeze
        timeout and still not holding (checked without waiting). A younger one (a cgroup
        freeze still landing; a SIGSTOP freeze has held by the time it returns) is not
        waited for: the next call thaws it anyway (``cgroup.freeze`` takes the new state),
        so a call that follows at once pays nothing."""
        if self._freeze_held:
            return False
        if time.monotonic() - self._freeze_asked < _FREEZE_TIMEOUT:
            return False
        self._freeze_held = self.wait_frozen(0.0)
        return not self._freeze_held

    def _check_freeze(self) -> None:
        """The sampler's check between calls: a sandbox whose freeze did not hold within
        the freeze timeout is killed (the next call starts a fresh worker)."""
        with self._signal_lock:
            if self._freeze_held or not self.frozen or not self.alive:
                return
            if self._freeze_overdue():
                log.error("the sandbox of plugin `%s` did not freeze within %.0f s after a "
                          "call; stopping it", self._plugin, _FREEZE_TIMEOUT)
                self._kill()

    def _freeze_by_signals(self) -> dict[int, psutil.Process]:
        """The reaper's SIGSTOP fixed point over every process of the sandbox but its pid 1
        (bubblewrap's reaper keeps reaping; it runs no plugin code)."""
        proc = self._proc
        assert proc is not None
        if self._sandboxed:
            return reaper.freeze(reaper.child_pids(proc.pid))
        try:
            worker = [psutil.Process(proc.pid)]
        except psutil.Error:
            worker = []
        return reaper.freeze([proc.pid], worker)

    def _thaw(self) -> None:
        """Let the sandbox run again, right before a call."""
        with self._signal_lock:
            stopped, self._stopped = self._stopped, None
            worker, fd = self._worker_process, self._worker_pidfd
            if stopped is not None and fd is not None and worker is not None and \
                    list(stopped) == [worker.pid]:
                try:
                    signal.pidfd_send_signal(fd, signal.SIGCONT)
                except OSError:
                    pass  # gone: the call reports it
            elif stopped is not None:
                reaper.signal_all(stopped.values(), signal.SIGCONT)
            if self._cgroup is not None:
                try:
                    self._cgroup.thaw()
                except OSError as error:  # it stays frozen: end it, the call reports it
                    log.error("cannot thaw the sandbox of plugin `%s` (%s); stopping it",
                              self._plugin, error.strerror)
                    self._kill()

    def _receive_listener(self, init: WorkerInit, spec: LockdownSpec, deadline: float,
                          limit: float) -> WorkerMessage | None:
        """The worker's first frame: its seccomp listener (served from now on), or, when it
        could not make one, the frame that came instead (for :meth:`_exchange`)."""
        from .syscalls import SyscallListener, is_listener

        self.kernel_records = False
        sock = self._sock
        assert sock is not None
        try:
            message, fds = recv_worker_message_and_fds(sock, deadline=deadline)
        except TimeoutError:
            raise self._timeout("init", limit, "no answer to the init frame") from None
        except ChannelClosedError as error:
            raise self._death() from error
        except (FrameError, WireError) as error:
            self._kill()
            raise PluginCrashedError(f"worker of plugin `{self._plugin}` broke the protocol: "
                                     f"{error}", plugin=self._plugin) from error
        if not isinstance(message, PassFds):
            return message
        if message.purpose != "seccomp" or len(fds) != 1 or not is_listener(fds[0]) \
                or self._syscall_decide is None:
            for fd in fds:
                os.close(fd)
            self._kill()
            raise PluginCrashedError(f"worker of plugin `{self._plugin}` broke the protocol: "
                                     "its first frame is not its seccomp listener",
                                     plugin=self._plugin)
        from ..worker.lockdown import kernel_extras

        def charge(seconds: float) -> None:
            # The listener's CPU is the host's CPU spent on this plugin: the call's share
            # check (:meth:`_exchange`) counts it too.
            self.host_cpu_seconds += seconds
            self._call_host_cpu += seconds

        decide = self._syscall_decide

        def decide_and_remember(action: str, resource: str) -> Any:
            decision = decide(action, resource)
            if not getattr(decision, "allowed", True):
                self._kernel_denial = decision  # the last one of this call
            return decision

        self._listener = SyscallListener(
            fds[0], plugin=init.plugin, decide=decide_and_remember,
            plugin_dir=spec.plugin_dir, scratch_dir=spec.scratch_dir,
            # Audit mode records those too (the kernel plan's extras serve its own wide grants).
            passthrough=(*kernel_extras(spec, devices_only=self._audit),
                         # this package's bytecode cache: part of the runtime
                         *filter(None, [worker_bytecode_dir(_PACKAGE_DIR)])),
            import_roots=init.sys_path, audit=self._audit,
            may_exec=spec.allow_subprocess, on_cpu=charge)
        self._listener.start()
        self.kernel_records = True
        return None

    def _prepare(self, init: WorkerInit) -> LockdownSpec:
        """Create the scratch directory and decide whether the worker can switch uid."""
        spec = init.lockdown
        os.makedirs(spec.scratch_dir, mode=0o700, exist_ok=True)
        if os.geteuid() == 0 and spec.run_as_uid is None and not spec.no_drop_reason:
            spec = _choose_identity(init, spec)
        if os.geteuid() == 0 and spec.run_as_uid is not None:
            gid = spec.run_as_gid if spec.run_as_gid is not None else spec.run_as_uid
            # The worker loses root before it runs plugin code; its scratch must stay its own.
            os.chown(spec.scratch_dir, spec.run_as_uid, gid)
        if init.limits.disk_bytes and init.data_dir:
            uid = spec.run_as_uid if spec.run_as_uid is not None else os.geteuid()
            gid = spec.run_as_gid if spec.run_as_gid is not None else uid
            self._mount_disk(init, uid, gid)
        return spec

    def _use_sandbox(self) -> bool:
        if self._sandbox is not None:
            return self._sandbox
        from . import bwrap

        return not bwrap.available()

    def _prepare_sandbox(self, init: WorkerInit) -> LockdownSpec:
        """The plugin's identity and its data directories (owned by it, mode 0700)."""
        spec = replace(init.lockdown, run_as_uid=None, run_as_gid=None, no_drop_reason="")
        if os.geteuid() == 0 and not spec.nproc:
            # The plugin's own uid: RLIMIT_NPROC, counted per uid, is its pids limit.
            spec = replace(spec, nproc=SANDBOX_TASKS)
        self._identity = _sandbox_identity(init.plugin, self._identities)
        if init.limits.disk_bytes and init.data_dir:
            self._mount_disk(init, *self._identity)
        for path in dict.fromkeys([spec.scratch_dir, init.data_dir or spec.scratch_dir]):
            os.makedirs(path, mode=0o700, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(path, self._identity[0], self._identity[1])
            os.chmod(path, 0o700)
        return spec

    def _mount_disk(self, init: WorkerInit, uid: int, gid: int) -> None:
        """``limit disk``: the data directory on its capped image, before the worker starts
        (fail closed: no worker without it)."""
        from .disk import DiskLimit, mount_data_dir

        assert init.data_dir is not None
        mount_data_dir(init.data_dir, DiskLimit(init.limits.disk_bytes, init.limits.disk_files),
                       uid, gid)
        self._disk_dir = init.data_dir

    def _spawn_sandboxed(self, child_sock: socket.socket, spec: LockdownSpec,
                         output: OutputCapture) -> subprocess.Popen[bytes]:
        from . import bwrap
        from .view import plan_view

        init = self._require_init()
        package_dir = _PACKAGE_DIR
        uid, gid = self._identity
        plan = plan_view(view_inputs(init, spec, python=self._python, uid=uid, gid=gid))
        fd = child_sock.fileno()
        flags = ["-I", "-B"] if sys.flags.dont_write_bytecode else ["-I"]
        # In its PID namespace the worker's parent is bwrap's reaper, pid 1.
        command = [self._python, *flags, "-c", BOOTSTRAP, package_dir,
                   worker_bytecode_dir(package_dir), "1", str(fd)]
        # Never the host's network: an empty namespace, the broker is the only route out.
        options = bwrap.SandboxOptions(uid=uid, gid=gid, share_net=False,
                                       env=worker_environment(init.limits),
                                       chdir=spec.scratch_dir)
        return bwrap.spawn(plan, options, command, pass_fds=(fd,), stdout=output.stdout,
                           stderr=None if self._debug_stderr else output.stderr,
                           preexec=self._join_cgroup())

    def _spawn(self, child_sock: socket.socket, spec: LockdownSpec,
               output: OutputCapture) -> subprocess.Popen[bytes]:
        package_dir = _PACKAGE_DIR
        fd = child_sock.fileno()
        # -I ignores the environment, so mirror the host's choice about writing bytecode.
        flags = ["-I", "-B"] if sys.flags.dont_write_bytecode else ["-I"]
        return subprocess.Popen(
            [self._python, *flags, "-c", BOOTSTRAP, package_dir,
             worker_bytecode_dir(package_dir), str(os.getpid()), str(fd)],
            env=worker_environment(self._require_init().limits),
            stdin=subprocess.DEVNULL,
            stdout=output.stdout,
            stderr=None if self._debug_stderr else output.stderr,
            pass_fds=(fd,),
            close_fds=True,
            start_new_session=True,
            cwd=spec.scratch_dir,
            preexec_fn=self._join_cgroup(),
        )

    # -- talking ----------------------------------------------------------------------------

    def _send(self, frame: Mapping[str, Any], deadline: float, phase: str, limit: float) -> None:
        sock = self._sock
        assert sock is not None
        try:
            send_frame(sock, frame, deadline=deadline)
        except (TypeError, ValueError) as error:
            raise UsageError(f"arguments for plugin `{self._plugin}` are not JSON-able: "
                             f"{error}") from error
        except TimeoutError:
            raise self._timeout(phase, limit, "the worker stopped reading") from None
        except OSError as error:
            raise self._death() from error

    def _send_and_thaw(self, frame: Mapping[str, Any], deadline: float, phase: str,
                       limit: float) -> None:
        """Send the call while the sandbox is still frozen, as far as the socket takes it,
        then thaw: the worker wakes once, to a frame already waiting."""
        try:
            data = encode_frame(frame)
        except (TypeError, ValueError) as error:
            raise UsageError(f"arguments for plugin `{self._plugin}` are not JSON-able: "
                             f"{error}") from error
        sock = self._sock
        assert sock is not None
        view = memoryview(data)
        try:
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT):]
            except BlockingIOError:
                pass
            finally:
                self._thaw()
            while view:
                try:
                    view = view[sock.send(view, socket.MSG_DONTWAIT):]
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError from None
                    poller = select.poll()
                    poller.register(sock, select.POLLOUT)
                    poller.poll(math.ceil(remaining * 1000))
        except TimeoutError:
            raise self._timeout(phase, limit, "the worker stopped reading") from None
        except OSError as error:
            raise self._death() from error

    def _refuse_stray_frames(self) -> None:
        """Frames that arrived between calls are refused: the worker is ended, not read.

        A worker writes only while the host waits on a call, so anything already waiting
        when a call starts could only be taken for that call's reply.
        """
        sock = self._sock
        if sock is None or not self.alive:
            return
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # nothing waiting: the normal case
        except OSError:
            return  # the next send or receive reports the channel's state
        self._kill()
        self._shutdown()
        raise PluginCrashedError(f"worker of plugin `{self._plugin}` broke the protocol: it "
                                 "sent a frame between calls", plugin=self._plugin)

    def _exchange(self, deadline: float, phase: str, limit: float, *,
                  first: WorkerMessage | None = None) -> WorkerMessage:
        """Wait for the reply to what was sent, serving capability, log and audit frames.

        The deadline is checked before every frame, not only while waiting: a worker that
        keeps the socket busy with cheap frames cannot keep the call alive. The host CPU
        spent on the plugin's frames (decoding, capability calls, logging) is charged to the
        plugin: past its CPU share of the call's wall time (plus one window of burst, as for
        the worker's own CPU), the worker is stopped as over its CPU limit.
        """
        started = time.monotonic()
        limits = self._init.limits if self._init is not None else None
        share = limits.cpu_share if limits is not None else 1.0
        window = limits.cpu_window if limits is not None else 2.0
        for _ in range(LIMITS.frames_per_call):
            if time.monotonic() >= deadline:
                raise self._timeout(phase, limit, "the worker kept sending frames")
            before = time.thread_time()
            broker = self._broker
            dns_before = broker.lookup_cpu_seconds if broker is not None else 0.0
            try:
                message = self._receive(deadline, phase, limit) if first is None else first
                first = None
                if isinstance(message, CapabilityCall):
                    self._send(self._capability(message), deadline, phase, limit)
                elif isinstance(message, LogRecord):
                    self._relay_log(message)
                elif isinstance(message, AuditRecord):
                    if self._audit_handler is not None:
                        self._audit_handler(message)
                elif isinstance(message, ConnectRequest):
                    self._serve_connect(message, deadline, phase, limit)
                elif isinstance(message, ResolveRequest):
                    self._send(self._serve_resolve(message, deadline), deadline, phase, limit)
                else:
                    return message
            finally:
                spent = time.thread_time() - before
                if broker is not None:  # DNS runs in the broker's resolver threads
                    spent += broker.lookup_cpu_seconds - dns_before
                self.host_cpu_seconds += spent
                self._call_host_cpu += spent
            if self._call_host_cpu > share * (time.monotonic() - started + window):
                self._kill()
                self._shutdown()
                raise ResourceLimitError(
                    f"plugin `{self._plugin}` made the host spend "
                    f"{self._call_host_cpu:.2f}s of CPU on its requests, over its CPU limit "
                    f"of {share:.0%} of one core; the worker was stopped",
                    plugin=self._plugin, resource="cpu", limit=share,
                    used=self._call_host_cpu)
        self._kill()
        raise PluginCrashedError(f"worker of plugin `{self._plugin}` broke the protocol: more "
                                 f"than {LIMITS.frames_per_call} frames in one call",
                                 plugin=self._plugin)

    def _receive(self, deadline: float, phase: str, limit: float) -> WorkerMessage:
        sock = self._sock
        assert sock is not None and self._poller is not None
        # When nothing can have forked, only the worker holds the other end of the socket,
        # so its death shows as end of stream and a plain timed read suffices (the warm
        # path). Otherwise a daemon may keep the socket open: watch the pidfd as well.
        while self._may_fork:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(phase, limit)
            # The pidfd wakes us at once when the worker dies, even when a daemon it forked
            # still holds its end of the socket open. Without pidfd, poll in short slices.
            wait = remaining if self._pidfd is not None else min(remaining, 0.05)
            events = dict(self._poller.poll(math.ceil(wait * 1000)))
            sock_events = events.get(sock.fileno(), 0)
            if sock_events & select.POLLIN:
                break
            if sock_events or (self._pidfd is not None and self._pidfd in events) or (
                    self._pidfd is None and not self.alive):
                raise self._death()
        self._spin(sock)
        try:
            frame = recv_frame(sock, deadline=deadline)
        except TimeoutError:
            stalled = "the worker stalled in the middle of a frame" if self._may_fork else ""
            raise self._timeout(phase, limit, stalled) from None
        except ChannelClosedError as error:
            raise self._death() from error
        except FrameError as error:
            self._kill()
            raise PluginCrashedError(f"worker of plugin `{self._plugin}` broke the protocol: "
                                     f"{error}", plugin=self._plugin) from error
        try:
            return decode_worker_value(frame)
        except WireError as error:
            self._kill()
            raise PluginCrashedError(f"worker of plugin `{self._plugin}` broke the protocol: "
                                     f"{error}", plugin=self._plugin) from error

    def _spin(self, sock: socket.socket) -> None:
        """Busy-wait up to the spin budget for the first byte of the reply."""
        if self._spin_seconds <= 0:
            return
        end = time.perf_counter() + self._spin_seconds
        while time.perf_counter() < end:
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                return  # data, or end of stream: either way recv_frame takes it from here
            except BlockingIOError:
                continue
            except OSError:
                return

    def _capability(self, call: CapabilityCall) -> dict[str, Any]:
        handler = self._capability_handler
        capability, method, args = call.capability, call.method, list(call.args)
        try:
            if handler is None:
                raise EnforcementError(f"the host offers no capabilities (`{capability}` "
                                       f"requested)", plugin=self._plugin)
            value = handler(capability, method, args)
            # Encoded here, inside the try: an answer that cannot cross is the call's error,
            # and the channel stays in step.
            return {"op": "cap_result",
                    "value": encode_value(value, f"{capability}.{method}()", depth=2)}
        except Exception as error:  # sent back to the plugin; the host carries on
            return _cap_error(error)

    def _require_broker(self) -> NetworkBroker:
        if self._broker is None:
            raise EnforcementError("the host offers this plugin no network", plugin=self._plugin)
        return self._broker

    def _serve_connect(self, request: ConnectRequest, deadline: float, phase: str,
                       limit: float) -> None:
        """Connect for the worker and pass the socket (SCM_RIGHTS), or send the error."""
        try:
            connected = self._require_broker().connect(request.host, request.port,
                                                       deadline=deadline, family=request.family)
        except Exception as error:
            self._send(_cap_error(error), deadline, phase, limit)
            return
        sock = self._sock
        assert sock is not None
        try:
            send_frame_with_fds(sock, PassFds("socket", 1), [connected.fileno()])
        except OSError as error:
            raise self._death() from error
        finally:
            connected.close()  # the worker holds the connection now (bounded by its RLIMIT_NOFILE)

    def _serve_resolve(self, request: ResolveRequest, deadline: float) -> dict[str, Any]:
        try:
            found = self._require_broker().getaddrinfo(request.host, request.port,
                                                       deadline=deadline, family=request.family)
        except Exception as error:
            return _cap_error(error)
        return {"op": "cap_result", "value": [[family, address] for family, address in found]}

    def _relay_log(self, record: LogRecord) -> None:
        # Always the plugin's own logger: every name a worker invents would otherwise stay
        # in logging's registry for the host's lifetime. The worker's name is text, clipped.
        source = record.logger[:_MAX_LOGGER_NAME]
        own = f"{_PLUGIN_LOGGER}.{self._plugin}"
        message = record.message[:8192]
        if source == own:
            logging.getLogger(own).log(record.level, "%s", message)
        else:
            logging.getLogger(own).log(record.level, "[%s] %s", source, message)

    def _result(self, reply: WorkerMessage) -> Any:
        if isinstance(reply, Result):
            return reply.value
        error = self._error_from(reply)
        denial = self._kernel_denial
        if denial is not None and isinstance(error, PluginRaisedError) \
                and error.remote_type == "PermissionError":
            # The kernel refused what the hook did not see (the host's listener answered
            # EACCES/EPERM): the call fails as the host decided it, with the rule.
            raise KernelDeniedError(denial) from error
        if isinstance(error, ResourceLimitError) and not isinstance(error, FileSizeError):
            # After a MemoryError the interpreter may be in a poor state: start afresh.
            self._kill()
            self._shutdown()
        raise error

    def _error_from(self, reply: WorkerMessage) -> Exception:
        if isinstance(reply, ErrorReply):
            return exception_from_data(reply.error, plugin=self._plugin)
        self._kill()
        return PluginCrashedError(f"worker of plugin `{self._plugin}` sent an unexpected "
                                  f"`{reply.op}` frame", plugin=self._plugin)

    @property
    def _plugin(self) -> str:
        return self._init.plugin if self._init is not None else "?"

    # -- failures -----------------------------------------------------------------------------

    def _timeout(self, phase: str, limit: float, detail: str = "") -> PluginTimeoutError:
        self._kill()
        self._shutdown()
        return PluginTimeoutError(self._plugin, phase, limit, detail)

    def _death(self) -> EnforcementError:
        """The error for a worker that died on its own (or was killed by the sampler)."""
        proc = self._proc
        if proc is not None and proc.poll() is None and not self._wait_exit(0.1):
            # Alive but its end of the channel is closed: it cannot be talked to any more.
            self._kill()
            self._shutdown()
            return PluginCrashedError(f"worker of plugin `{self._plugin}` closed its channel "
                                      "to the host and was stopped", plugin=self._plugin)
        returncode = proc.wait() if proc is not None else None
        oom = self._cgroup.oom_kills() if self._cgroup is not None else 0
        peak = self._cgroup.memory_peak() if oom and self._cgroup is not None else None
        if self._sandboxed and returncode is not None and 128 < returncode < 128 + 65:
            returncode = 128 - returncode  # bwrap reports a signal death as 128 + signal
        pid = self.pid or (proc.pid if proc is not None else 0)
        # Descendants were re-parented away from the dead worker; chase the ones last seen.
        self._kill()
        violation = self._violation
        last = self._output.last_error_line() if self._output is not None else ""
        said = f"; its last line on stderr: `{last}`" if last else ""
        self._shutdown()
        if violation is not None:
            return violation
        plugin = self._plugin
        if oom and self._init is not None:
            limit = self._init.limits.memory_bytes
            used = max(peak or 0, limit)
            return ResourceLimitError(
                f"plugin `{plugin}` ran out of memory: it used {human_size(used)} (peak), "
                f"all of its limit of {human_size(limit)}, counted by the kernel for the whole "
                "sandbox (memfd, shared memory and tmpfs included), and was stopped",
                plugin=plugin, resource="memory", limit=float(limit), used=float(used))
        if returncode is not None and returncode < 0:
            signum = -returncode
            name = _signal_name(signum)
            if signum == signal.SIGXCPU:
                return ResourceLimitError(
                    f"plugin `{plugin}` used up its lifetime CPU allowance ({name})",
                    plugin=plugin, resource="cpu")
            if signum == signal.SIGXFSZ:
                return FileSizeError(f"plugin `{plugin}` wrote past its file-size limit ({name})",
                                     plugin=plugin, resource="file_size")
            extra = " (possibly the kernel's OOM killer)" if signum == signal.SIGKILL else ""
            return PluginCrashedError(f"worker of plugin `{plugin}` (pid {pid}) was killed by "
                                      f"{name}{extra}{said}", plugin=plugin)
        return PluginCrashedError(f"worker of plugin `{plugin}` (pid {pid}) exited with status "
                                  f"{returncode}{said}", plugin=plugin)

    def _on_violation(self, error: ResourceLimitError) -> None:
        """Called by the sampler thread: record the error for the caller, kill the tree."""
        with self._signal_lock:
            if self._violation is None:
                self._violation = error
                log.warning("%s", error)
        self._kill()

    # -- killing ------------------------------------------------------------------------------

    def _signal_tree(self, signum: int) -> None:
        """Send ``signum`` to the worker's process group and every descendant (throttling)."""
        with self._signal_lock:
            proc = self._proc
            if proc is None or proc.returncode is not None or self._stopped is not None:
                return  # frozen between calls: the throttle must not wake it
            _killpg(proc.pid, signum)
            if self._may_fork:
                for pid in reaper.descendants(proc.pid):
                    _kill_pid(pid, signum)

    def _kill(self) -> None:
        """Kill the worker and its whole tree, and reap the worker. Idempotent."""
        with self._signal_lock:
            proc = self._proc
            if proc is None:
                return
            known = self._sampler.known_processes() if self._sampler is not None else []
            if self._cgroup is not None:
                self._cgroup.kill()  # everything in it, even what left the tree
            stopped, self._stopped = self._stopped, None
            if stopped is not None:
                known = [*known, *stopped.values()]
            if proc.returncode is None and proc.poll() is None and not self._may_fork \
                    and stopped is None:
                # Nothing can have forked (seccomp forbids it): a SIGTERM and a short grace.
                _killpg(proc.pid, signal.SIGTERM)
                if not self._wait_exit(_TERM_GRACE):
                    _killpg(proc.pid, signal.SIGKILL)
            elif proc.returncode is None and proc.poll() is None:
                # Freeze first, kill after: between the two nothing can fork away. No grace:
                # resuming the frozen tree would reopen that window.
                _killpg(proc.pid, signal.SIGSTOP)
                frozen = reaper.freeze([proc.pid], known)
                _killpg(proc.pid, signal.SIGKILL)
                self._report_survivors(reaper.kill_frozen(frozen.values()))
            else:
                # The worker is already dead; its orphans went to init. Chase the ones seen.
                frozen = reaper.freeze([], known)
                self._report_survivors(reaper.kill_frozen(frozen.values()))
            proc.wait()
            if self._sandboxed:
                self._kill_sandbox()

    def _kill_sandbox(self) -> None:
        """Kill bwrap's reaper (its PID namespace dies with it) and wait until all are gone."""
        pids, self._sandbox_pids = self._sandbox_pids, []
        for pid in pids:
            _kill_pid(pid, signal.SIGKILL)
        deadline = time.monotonic() + _REAP_TIMEOUT
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if not reaper.gone(pid)]
            if pids:
                time.sleep(0.002)
        self._report_survivors(pids)

    def _report_survivors(self, pids: list[int]) -> None:
        if pids:
            log.error("processes %s of plugin `%s` survived SIGKILL", pids, self._plugin)

    def _wait_exit(self, seconds: float) -> bool:
        proc = self._proc
        assert proc is not None
        if self._pidfd is not None:
            ready, _, _ = select.select([self._pidfd], [], [], seconds)
            return bool(ready) or proc.poll() is not None
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _sweep_leftovers(self) -> None:
        """Kill descendants still running after a call: a daemon must not outlive it."""
        proc = self._proc
        if not self._may_fork or proc is None or proc.poll() is not None:
            return
        root = self._worker_host_pid()
        if root is None or not reaper.descendants(root):
            return
        with self._signal_lock:
            frozen = reaper.freeze([root])
            self._report_survivors(reaper.kill_frozen(frozen.values()))
        # The killed processes are now zombie children of the worker (the subreaper).
        deadline = time.monotonic() + _REAP_TIMEOUT
        try:
            self._send({"op": "reap"}, deadline, "cleanup", _REAP_TIMEOUT)
            self._exchange(deadline, "cleanup", _REAP_TIMEOUT)
        except EnforcementError as error:
            log.warning("cleaning up after plugin `%s` failed: %s", self._plugin, error)

    def _worker_host_pid(self) -> int | None:
        """The worker's pid in the host; under bwrap, the grandchild of bwrap's process."""
        proc = self._proc
        if proc is None:
            return None
        if not self._sandboxed:
            return proc.pid
        pid = proc.pid
        for _level in range(2):  # bwrap -> its reaper (pid 1 inside) -> the worker
            children = reaper.child_pids(pid)
            if not children:
                return None
            pid = children[0]
        return pid

    def _polite_stop(self, timeout: float) -> None:
        """Let the plugin run ``cleanup()``; the worker answers and waits to be killed."""
        if self._sock is None:
            return
        self._thaw()  # cleanup() is plugin code: it runs like a call
        deadline = time.monotonic() + timeout
        try:
            self._send({"op": "stop"}, deadline, "cleanup", timeout)
            self._exchange(deadline, "cleanup", timeout)
        except EnforcementError as error:
            log.info("plugin `%s` did not stop cleanly: %s", self._plugin, error)

    def _shutdown(self) -> None:
        """Release everything of the current worker (which must be dead or about to be)."""
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._broker is not None:
            self._broker.shutdown()
            self._broker = None
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._proc is not None and self._proc.poll() is None:
            self._kill()
        if self._output is not None:
            self._output.close()
            self._output = None
        with self._signal_lock:  # never close what a concurrent _kill may be using
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._poller = None
            self._proc = None
            self._stopped = None
            self._worker_process = None
            if self._worker_pidfd is not None:
                os.close(self._worker_pidfd)
                self._worker_pidfd = None
            if self._cgroup is not None:
                self._cgroup.remove()
                self._cgroup = None
        _LIVE.discard(self)


#: The variables numeric libraries read for their thread pools (OpenBLAS, OpenMP, MKL,
#: numexpr, Accelerate): without them a pool is one thread per core of the host.
_THREAD_POOL_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                          "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def worker_environment(limits: ResourceLimits) -> dict[str, str]:
    """The whole environment of a worker: nothing of the host's, and thread pools sized to
    the plugin's CPU limit (a pool per host core would only run the plugin over its share,
    and into its tasks limit, on a large machine)."""
    threads = str(max(1, math.ceil(limits.cpu_share)))
    return {**_WORKER_ENV, **dict.fromkeys(_THREAD_POOL_VARIABLES, threads)}


#: The most tasks (processes and threads) a sandboxed plugin may hold on a root host.
SANDBOX_TASKS = 256


def tmpfs_cap(memory_bytes: int) -> int:
    """The size cap of each of a sandbox's tmpfs mounts (``/tmp``, ``/dev/shm``): an eighth
    of the memory limit. The sampler counts both caps in the limit, as if they were full."""
    return max(memory_bytes // 8, 1024 * 1024) if memory_bytes else 64 * 1024 * 1024


def view_inputs(init: WorkerInit, spec: LockdownSpec, *, python: str, uid: int,
                gid: int) -> Any:
    """The :class:`~.view.ViewInputs` of a worker for ``init`` with lockdown ``spec``."""
    from .view import ViewInputs

    package_dir = _PACKAGE_DIR
    cap = tmpfs_cap(spec.memory_bytes)
    data_dirs = [spec.scratch_dir, init.data_dir or spec.scratch_dir]
    return ViewInputs(
        plugin=init.plugin, plugin_dir=spec.plugin_dir,
        data_dirs=tuple(d for d in dict.fromkeys(data_dirs) if d not in spec.throwaway_paths),
        read_paths=spec.read_paths, write_paths=spec.write_paths, python=python,
        package_dir=package_dir, import_roots=init.sys_path, uid=uid, gid=gid,
        allow_subprocess=spec.allow_subprocess, allow_network=spec.allow_network,
        tmp_bytes=cap, shm_bytes=cap, masks=spec.mask_paths, throwaway=spec.throwaway_paths,
        throwaway_bytes=cap, bytecode_dir=worker_bytecode_dir(package_dir))


def _sandbox_identity(plugin: str, identities: IdentityMap | None) -> tuple[int, int]:
    """Root: the plugin's own uid and gid. Otherwise the host's (the user namespace maps it)."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    from .identity import IdentityMap

    identity = (identities or IdentityMap()).identity(plugin)
    return identity.uid, identity.gid


def _choose_identity(init: WorkerInit, spec: LockdownSpec) -> LockdownSpec:
    """Ask for the ``nobody`` uid when it can still use everything the worker needs."""
    ids = kernel.unprivileged_ids()
    if ids is None:
        return replace(spec, no_drop_reason=f"no `{kernel.UNPRIVILEGED_NAME}` account")
    uid, gid = ids
    reads = [*kernel.runtime_paths(), spec.plugin_dir, *init.sys_path, *spec.read_paths,
             os.path.dirname(os.path.abspath(spec.scratch_dir))]
    blocker = kernel.privilege_drop_blocker(uid, gid, reads, spec.write_paths)
    if blocker is not None:
        return replace(spec, no_drop_reason=blocker)
    return replace(spec, run_as_uid=uid, run_as_gid=gid)


def _cap_error(error: BaseException) -> dict[str, Any]:
    """The reply that hands an error to the plugin; no traceback: the host's stack is none
    of the plugin's business."""
    return {"op": "cap_error", "error": exception_to_data(error, with_traceback=False)}


def _pidfd_open(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_every_thread(pidfd: int, pid: int) -> bool:
    """SIGSTOP the process until every thread of it is stopped (a SIGCONT one of them sends
    before the group stop completes discards it); False when that takes past the freeze
    timeout. Checked in a tight loop first: a stop usually lands within microseconds."""
    deadline = time.monotonic() + _FREEZE_TIMEOUT
    checks = 0
    while True:
        if checks % 8 == 0:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
            except OSError:
                return True  # gone: the next call reports it
        if reaper.stopped(pid):
            return True
        checks += 1
        if time.monotonic() >= deadline:
            return False
        if checks > 64:
            time.sleep(0.0001)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
