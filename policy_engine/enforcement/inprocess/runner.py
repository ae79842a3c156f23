"""In-process isolation: plugin code runs in the host's interpreter, for trusted, pinned
plugins that need speed. **This is not a security boundary.**

What it does: one global audit hook (PEP 578) checks file, network, subprocess and ctypes
events against the engine while a context variable names the active plugin (with no plugin
active the hook returns at once); the plugin's context carries capability objects for
config, database and hooks; a watchdog thread stops a call that overruns its timeout by
raising an exception in the calling thread at the next bytecode boundary, and the plugin is
quarantined (later calls are refused). Coroutines are cancelled at their timeout.

What it does not stop, in those words in the README: code that blocks in C (``time.sleep``,
a socket read) until it returns to Python; threads the plugin starts (they do not carry the
context variable, so the audit hook does not see them as the plugin); ctypes-level tricks
that defeat audit hooks; memory and CPU use, which cannot be told apart from the host's in
one process; writes past the file-size limit. Use process isolation for untrusted code.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import importlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...digest import PluginTree, is_python_source, read_plugin_tree
from ...errors import EnforcementError, PluginTimeoutError, PluginValidationError
from ...implicit import implicit_reads
from ..worker.audit import AuditGuard
from ..worker.modules import DigestedSources, install, uninstall

__all__ = ["ActivePlugin", "InprocessRunner", "active_plugin", "install_audit_hook", "running_as"]


@dataclass(frozen=True, slots=True)
class ActivePlugin:
    """The plugin whose code the current context is running, and its audit guard."""

    name: str
    guard: AuditGuard


_ACTIVE: contextvars.ContextVar[ActivePlugin | None] = contextvars.ContextVar(
    "policy_engine_active_plugin", default=None
)
_installed = False
_install_lock = threading.Lock()


def active_plugin() -> str | None:
    """The name of the plugin running in this context, or None for host code."""
    active = _ACTIVE.get()
    return None if active is None else active.name


def _dispatch(event: str, args: tuple[Any, ...]) -> None:
    # Runs for every audited event of the whole interpreter: host code pays one context
    # variable lookup and returns.
    active = _ACTIVE.get()
    if active is None:
        return
    active.guard._hook(event, args)


def install_audit_hook() -> None:
    """Install the global hook once (audit hooks cannot be removed)."""
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_dispatch)
            _installed = True


@contextmanager
def running_as(plugin: ActivePlugin) -> Iterator[None]:
    """Mark the current context as running ``plugin``'s code."""
    token = _ACTIVE.set(plugin)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class _Overrun(BaseException):
    """Raised into a thread whose plugin call passed its deadline (a BaseException, so a
    plugin's ``except Exception`` does not swallow it)."""


@dataclass(slots=True)
class _Deadline:
    at: float
    fired: bool = False
    #: The thread the deadline is for: a deadline whose thread is gone is dropped, so an
    #: overrun never lands in a later thread that got the same identifier.
    thread: threading.Thread | None = None


# Two function pointers to one C function, typed for raising and for clearing (NULL).
_set_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_clear_async_exc_ptr = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_clear_async_exc_ptr.argtypes = (ctypes.c_ulong, ctypes.c_void_p)


class _Watchdog:
    """One daemon thread that raises :class:`_Overrun` into threads past their deadline.

    Registering a deadline is a dictionary store (no thread wake-up on the call path); the
    thread polls every ``interval`` while any deadline is registered and sleeps otherwise.
    An overrun is raised again every ``refire`` seconds until the call returns, so a plugin
    that catches BaseException cannot simply carry on. Firing and unwatching hold one lock,
    and unwatching clears a pending overrun, so none can land in host code after the call.
    """

    def __init__(self, interval: float = 0.005, refire: float = 0.05) -> None:
        self.interval = interval
        self.refire = refire
        self._deadlines: dict[int, _Deadline] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, thread_id: int, deadline: _Deadline) -> None:
        self._deadlines[thread_id] = deadline
        if not self._wake.is_set():
            self._wake.set()
            if self._thread is None:
                self._start()

    def unwatch(self, thread_id: int, deadline: _Deadline) -> None:
        if not deadline.fired:
            self._deadlines.pop(thread_id, None)
            if not deadline.fired:
                return
        with self._lock:
            self._deadlines.pop(thread_id, None)
            _clear_async_exc(thread_id)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="policy-engine-watchdog",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._deadlines:
                self._wake.clear()
                if not self._deadlines:
                    continue
            self._fire(time.monotonic())
            time.sleep(self.interval)

    def _fire(self, now: float) -> None:
        """Raise into every thread past its deadline; forget the deadlines of dead threads."""
        with self._lock:
            for thread_id, deadline in list(self._deadlines.items()):
                if deadline.thread is not None and not deadline.thread.is_alive():
                    if self._deadlines.get(thread_id) is deadline:
                        del self._deadlines[thread_id]
                    continue
                if now >= deadline.at:
                    deadline.fired = True
                    deadline.at = now + self.refire
                    _set_async_exc(thread_id, _Overrun)


def _clear_async_exc(thread_id: int) -> None:
    # PyThreadState_SetAsyncExc with NULL clears an exception not yet raised.
    _clear_async_exc_ptr(thread_id, None)


_watchdog = _Watchdog()


class DeadlineExceeded(Exception):
    """:func:`call_with_deadline` stopped the function at its deadline."""


def call_with_deadline(func: Callable[..., Any], seconds: float, *args: Any,
                       **kwargs: Any) -> Any:
    """Call ``func`` in this thread and stop it ``seconds`` from now.

    The watchdog raises into the thread at its next Python instruction (a call blocked in
    C stops when it returns); the caller then gets :class:`DeadlineExceeded`. Whatever
    ``func`` raises itself passes through unchanged.
    """
    deadline = _Deadline(time.monotonic() + seconds, thread=threading.current_thread())
    thread_id = threading.get_ident()
    _watchdog.watch(thread_id, deadline)
    try:
        try:
            return func(*args, **kwargs)
        finally:
            # A refire can land inside unwatch before it takes the watchdog's lock: try
            # again, or the deadline stays and the overruns go on.
            while True:
                try:
                    _watchdog.unwatch(thread_id, deadline)
                    break
                except _Overrun:
                    continue
    except _Overrun:
        raise DeadlineExceeded(f"stopped after {seconds:g}s") from None


class InprocessRunner:
    """Runs one plugin's code in the host process under the engine's decisions.

    ``make_context(plugin_instance)`` builds the :class:`PluginContext` (with capability
    objects) that ``initialize`` receives; ``checker`` raises PermissionDeniedError for a
    denied ``(action, resource)``.
    """

    isolation_level = "inprocess (not a security boundary)"

    def __init__(
        self,
        name: str,
        plugin_dir: Path,
        entry_point: str,
        checker: Callable[[str, str | None], None],
        *,
        allow_subprocess: bool,
        allow_network: bool,
        scratch_dir: Path,
        code: PluginTree | None = None,
    ) -> None:
        self.name = name
        self.plugin_dir = Path(plugin_dir)
        # The one read of the plugin's files its modules compile from (read here if not given).
        self.code = code if code is not None else read_plugin_tree(self.plugin_dir, keep=is_python_source)
        self.entry_point = entry_point
        self.quarantined: str | None = None
        self.instance: Any = None
        self._async_cache: dict[Callable[..., Any], bool] = {}
        guard = AuditGuard(
            checker,
            plugin=name,
            scratch_dir=str(scratch_dir),
            implicit=implicit_reads(str(self.plugin_dir), scratch_dir=str(scratch_dir)),
            allow_subprocess=allow_subprocess,
            allow_network=allow_network,
            # Nothing confines what this process writes (host code, the plugin's threads),
            # so the guard resolves every path anew and remembers none.
            changeable=None,
        )
        self._active = ActivePlugin(name, guard)
        install_audit_hook()

    def load(self) -> type[Any]:
        """Import the entry point's module from the plugin directory and return the class."""
        module_name, _, class_name = self.entry_point.partition(":")
        root = module_name.split(".")[0]
        existing = sys.modules.get(root)
        if existing is not None and not _is_under(getattr(existing, "__file__", None), self.plugin_dir):
            raise PluginValidationError(self.name, [
                f"module `{root}` is already imported from elsewhere; in-process plugins need unique module names"
            ])
        # Modules of an earlier load of this directory are an earlier read's code: import anew.
        self._forget_modules()
        install(DigestedSources(str(self.plugin_dir), self.code.digest, self.code.files,
                                self.code.paths))
        sys.path.insert(0, str(self.plugin_dir))
        try:
            with running_as(self._active):
                module = importlib.import_module(module_name)
        finally:
            sys.path.remove(str(self.plugin_dir))
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            raise PluginValidationError(self.name, [f"entry point `{self.entry_point}` names no class"])
        return cls

    def forget_sources(self) -> None:
        """Stop serving the plugin directory's imports and drop its modules (unloaded)."""
        uninstall(str(self.plugin_dir))
        self._forget_modules()

    def _forget_modules(self) -> None:
        for name, module in list(sys.modules.items()):
            locations = [getattr(module, "__file__", None),
                         *list(getattr(module, "__path__", None) or ())]
            if any(_is_under(str(location), self.plugin_dir) for location in locations if location):
                sys.modules.pop(name, None)

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
             timeout: float, phase: str) -> Any:
        """Call plugin code as the plugin, stopping it at ``timeout`` seconds."""
        if self.quarantined is not None:
            raise EnforcementError(
                f"plugin `{self.name}` is quarantined: {self.quarantined}; reload it to use it again",
                plugin=self.name,
            )
        is_async = self._async_cache.get(fn)
        if is_async is None:
            is_async = self._async_cache[fn] = inspect.iscoroutinefunction(fn)
        if is_async:
            return self._call_async(fn, args, kwargs, timeout, phase)
        thread_id = threading.get_ident()
        deadline = _Deadline(time.monotonic() + timeout)
        _watchdog.watch(thread_id, deadline)
        token = _ACTIVE.set(self._active)
        try:
            try:
                result = fn(*args, **kwargs)
            finally:
                _ACTIVE.reset(token)
                _watchdog.unwatch(thread_id, deadline)
        except _Overrun:
            _watchdog.unwatch(thread_id, deadline)
            self._quarantine(phase, timeout)
            raise PluginTimeoutError(self.name, phase, timeout, "stopped in process") from None
        if deadline.fired:
            self._quarantine(phase, timeout)
            raise PluginTimeoutError(self.name, phase, timeout, "stopped in process")
        if hasattr(result, "__await__"):
            return self._await(result, timeout, phase)
        return result

    def _call_async(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    timeout: float, phase: str) -> Any:
        with running_as(self._active):
            awaitable = fn(*args, **kwargs)
        return self._await(awaitable, timeout, phase)

    def _await(self, awaitable: Any, timeout: float, phase: str) -> Any:
        async def bounded() -> Any:
            with running_as(self._active):
                return await asyncio.wait_for(awaitable, timeout)

        try:
            return asyncio.run(bounded())
        except asyncio.TimeoutError:
            raise PluginTimeoutError(self.name, phase, timeout, "coroutine cancelled") from None

    def _quarantine(self, phase: str, timeout: float) -> None:
        self.quarantined = f"its {phase} call overran {timeout:g}s"


def _is_under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)


