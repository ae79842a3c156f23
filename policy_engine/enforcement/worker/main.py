"""The plugin worker: one process per plugin, locked down, serving calls from the host.

Started by :class:`~policy_engine.enforcement.host.supervisor.WorkerProcess` as
``python -I -B -c <bootstrap>`` with the IPC socket as its only extra file descriptor (see
:data:`BOOTSTRAP`). Protocol, one JSON frame per message; the host decodes what a worker
sends strictly, in :mod:`policy_engine.enforcement.wire`:

host -> worker
    ``init``  {version, plugin, plugin_dir, entry_point "module:Class", sys_path, lockdown,
    checker, limits, plugin_type, data_dir, code {digest, paths, sources {path: base64}}} -
    first frame, exactly once (another protocol version is refused); the plugin's modules
    are compiled from ``code.sources``, never read from its directory;
    ``call``  {method, args, kwargs} - ``method`` ``"hook:<name>"`` runs the function the
    plugin registered for hook ``name``;
    ``cap_result`` {value} / ``cap_error`` {error} - answers to the worker's ``cap``;
    ``reap`` - collect exited children (after the host killed leftovers); ``stop`` - run
    the plugin's ``cleanup()``, answer, and wait to be killed with the whole tree.

worker -> host
    ``fds`` {purpose "seccomp", count 1} with the seccomp listener (SCM_RIGHTS) - first,
    when the lockdown asks for kernel records, right after the listener filter loads;
    ``ready`` {version, report, init_result, pid}; ``result`` {value}; ``error`` {error};
    ``cap`` {capability, method, args} - a capability call made by the plugin mid-call;
    ``log`` {level, logger, message}; ``audit`` {action, resource, allowed} - audit mode
    only; ``connect`` {host, port, family} - answered by an ``fds`` frame carrying the
    connected socket (SCM_RIGHTS) or ``cap_error``; ``resolve`` {host, port, family} -
    answered by ``cap_result`` [[family, address], ...] or ``cap_error`` (the network
    broker, when the init frame says ``network_broker``); ``reaped`` {pids}; ``stopped``.
    Only while the host waits on a call.

The worker applies the lockdown and installs the audit hook before it imports any plugin
code, so from the first line the plugin runs boxed in.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ...errors import (
    ChannelValueError,
    EnforcementError,
    FileSizeError,
    PluginValidationError,
    ResourceLimitError,
)
from ...implicit import ImplicitReads, implicit_reads
from ...units import human_size
from ..wire import (
    INIT_FRAME_BYTES,
    LIMITS,
    PROTOCOL_VERSION,
    AuditRecord,
    CapabilityCall,
    ConnectRequest,
    FrameError,
    PassFds,
    Ready,
    ResolveRequest,
    Result,
    decode_value,
    encode_frame,
    recv_frame,
    recv_frame_and_fds,
    send_frame,
    send_frame_with_fds,
)
from .audit import AuditGuard
from .bytecode import cache_in_use
from .checker import make_checker
from .lockdown import LockdownSpec, ParentGoneError, apply_lockdown
from .remote import exception_from_data, exception_to_data

if TYPE_CHECKING:
    import logging
    from pathlib import Path

# Start-up time is part of every cold start, so modules only some plugins need (asyncio
# alone costs more than everything else together) are imported where they are used.

__all__ = ["BOOTSTRAP", "WorkerContext", "main"]

#: The ``-c`` program the host runs. It loads ``policy_engine`` from its directory without
#: putting that directory's parent on ``sys.path`` (which may hold anything). The package's
#: ``__init__`` is lazy (PEP 562), so ``from policy_engine import BasePlugin`` in plugin code
#: loads the plugin API alone, never the parser or schemas.
#: With a bytecode cache directory (the host's, see :mod:`.bytecode`; empty for none) the
#: package's modules load from it, the bytecode loader itself from source.
#: argv: package directory, bytecode cache directory, host pid, IPC file descriptor.
BOOTSTRAP = (
    "import sys,importlib.util as u\n"
    "d,c=sys.argv[1:3];L=None\n"
    "if c:\n"
    " n='policy_engine.enforcement.worker.bytecode'\n"
    " s=u.spec_from_file_location(n,d+'/enforcement/worker/bytecode.py')\n"
    " b=u.module_from_spec(s);sys.modules[n]=b;s.loader.exec_module(b)\n"
    " L=b.install(d,c)('policy_engine',d+'/__init__.py')\n"
    "s=u.spec_from_file_location('policy_engine',d+'/__init__.py',loader=L,"
    "submodule_search_locations=[d])\n"
    "p=u.module_from_spec(s);sys.modules['policy_engine']=p;s.loader.exec_module(p)\n"
    "from policy_engine.enforcement.worker.main import main\n"
    "raise SystemExit(main(sys.argv[3:]))\n"
)

_MAX_LOG_MESSAGE = 8 * 1024
_HOOK_PREFIX = "hook:"


class _Channel:
    """The worker's end of the IPC socket, shared by the main loop and capability calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.RLock()
        self.in_call = False

    def send(self, obj: Any) -> None:
        with self.lock:
            send_frame(self.sock, obj)

    def call_host(self, capability: str, method: str, args: list[Any]) -> Any:
        with self.lock:
            if not self.in_call:
                raise EnforcementError("capability calls are only possible while the host "
                                       "waits on a call to the plugin")
            # Encoded first: a value that cannot cross fails here, with nothing sent.
            frame = CapabilityCall(capability, method, tuple(args)).encode()
            send_frame(self.sock, frame)
            reply = recv_frame(self.sock)
        if reply.get("op") == "cap_result":
            return decode_value(reply.get("value"), f"{capability}.{method}()")
        if reply.get("op") == "cap_error":
            raise exception_from_data(reply.get("error") or {})
        raise FrameError(f"unexpected reply to a capability call: {reply.get('op')!r}")


    def broker_connect(self, host: str, port: int, family: int) -> int:
        """A descriptor of a socket the host's broker connected to ``host:port``."""
        with self.lock:
            self._require_call()
            send_frame(self.sock, ConnectRequest(host, port, family).encode())
            reply, fds = recv_frame_and_fds(self.sock, max_fds=1)
        op = reply.get("op") if isinstance(reply, dict) else None
        if op == "fds" and len(fds) == 1 and reply.get("count") == 1:
            return fds[0]
        for fd in fds:
            os.close(fd)
        raise _network_error(reply, host, port)

    def broker_resolve(self, host: str, port: int, family: int) -> list[tuple[int, str]]:
        """``getaddrinfo`` by the host's broker: ``[(family, address), ...]``."""
        with self.lock:
            self._require_call()
            send_frame(self.sock, ResolveRequest(host, port, family).encode())
            reply = recv_frame(self.sock)
        if isinstance(reply, dict) and reply.get("op") == "cap_result":
            value = reply.get("value")
            if isinstance(value, list):
                return [(int(fam), str(address)) for fam, address in value]
        raise _network_error(reply, host, port)

    def _require_call(self) -> None:
        if not self.in_call:
            # Nobody serves the channel between calls: a frame now would end the worker.
            raise PermissionError("the network is only reachable while the host waits on a "
                                  "call to the plugin")


def _network_error(reply: Any, host: str, port: int) -> OSError:
    """The OSError a socket call raises for the host's refusal or failure."""
    data = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(data, dict) or reply.get("op") != "cap_error":
        return ConnectionError(f"the host gave no answer for `{host}:{port}`")
    error = exception_from_data(data)
    if isinstance(error, OSError):
        return error  # PermissionDeniedError is a PermissionError, a timeout a TimeoutError
    kind = str(data.get("type", ""))
    message = str(data.get("message", ""))
    if kind.endswith("PluginTimeoutError"):
        return TimeoutError(message)
    if kind.endswith("gaierror"):
        return socket.gaierror(socket.EAI_NONAME, message)
    return ConnectionError(message or f"cannot reach `{host}:{port}`")


class _CapabilityProxy:
    """Forwards ``proxy.method(*args)`` to the host's ``capability`` object."""

    def __init__(self, context: WorkerContext, capability: str) -> None:
        self._context = context
        self._capability = capability

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def forward(*args: Any) -> Any:
            return self._context.call_host(self._capability, method, *args)

        forward.__name__ = method
        return forward


class _HookProxy(_CapabilityProxy):
    """Hook registration: the function stays in the worker, the host learns the name."""

    def __init__(self, context: WorkerContext, registry: dict[str, Callable[..., Any]]) -> None:
        super().__init__(context, "hooks")
        self._registry = registry

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` when the host calls ``hook:<name>``; the host checks the permission."""
        self._context.call_host("hooks", "register", name)
        self._registry[name] = fn


class WorkerContext:
    """What a plugin's ``initialize(ctx)`` receives inside a worker.

    The attribute names match :class:`policy_engine.plugin_api.PluginContext`;
    ``config``, ``db`` and ``hooks`` are proxies whose calls go to the host, which checks
    each against the policy. :meth:`call_host` is the generic form.
    """

    def __init__(self, channel: _Channel, *, plugin: str, plugin_dir: str, data_dir: str,
                 hooks: dict[str, Callable[..., Any]]) -> None:
        from pathlib import Path

        self._channel = channel
        self.plugin_name = plugin
        self.plugin_dir = Path(plugin_dir)
        self.data_dir: Path | None = Path(data_dir)
        self.config: Any = _CapabilityProxy(self, "config")
        self.db: Any = _CapabilityProxy(self, "db")
        self.hooks: Any = _HookProxy(self, hooks)

    @property
    def logger(self) -> logging.Logger:
        """``policy_engine.plugins.<name>``; records reach the host's logging during calls."""
        import logging

        return logging.getLogger(f"policy_engine.plugins.{self.plugin_name}")

    def call_host(self, capability: str, method: str, *args: Any) -> Any:
        """Call ``method(*args)`` on the host's ``capability``; arguments and the answer
        cross in the value encoding (:func:`~policy_engine.enforcement.wire.encode_value`)."""
        return self._channel.call_host(capability, method, list(args))


#: Log records one call may send; past it they are counted, and one record says how many
#: were dropped (the host allows 100,000 frames of any kind per call).
_MAX_LOG_RECORDS = 10_000


class _LogBudget:
    """How many records this call sent and dropped."""

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0


def _install_log_forwarder(channel: _Channel, budget: _LogBudget) -> None:
    """Send the plugin's log records to the host while a call is running."""
    import logging

    class LogForwarder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not channel.in_call:
                return  # outside a call nobody reads the channel; dropping beats deadlocking
            if budget.sent >= _MAX_LOG_RECORDS:
                budget.dropped += 1
                return
            budget.sent += 1
            try:
                message = record.getMessage()[:_MAX_LOG_MESSAGE]
                level = min(max(int(record.levelno), 0), 50)
                channel.send({"op": "log", "level": level,
                              "logger": record.name[:LIMITS.name_chars], "message": message})
            except Exception:  # logging must never break the plugin
                self.handleError(record)

    logging.getLogger("policy_engine.plugins").addHandler(LogForwarder(logging.DEBUG))


def _set_log_level(frame: Mapping[str, Any]) -> None:
    """The host's level for the plugin's logger: records below it never cross."""
    level = frame.get("log_level")
    if type(level) is int and "logging" in sys.modules:
        import logging

        logging.getLogger("policy_engine.plugins").setLevel(min(max(level, 1), 50))


class _Worker:
    """State of one worker process after init."""

    def __init__(self, channel: _Channel, init: Mapping[str, Any], parent_pid: int) -> None:
        self.channel = channel
        self.init = init
        self.parent_pid = parent_pid
        self.plugin = str(init["plugin"])
        self.spec = LockdownSpec.from_json(init["lockdown"])
        self.hooks: dict[str, Callable[..., Any]] = {}
        self.instance: Any = None
        self.checker: Callable[[str, str | None], None] | None = None
        self.guard: AuditGuard | None = None
        self.file_size_tripped = False
        self.forwarding_logs = False
        self.log_budget = _LogBudget()
        self._frame: Mapping[str, Any] | None = None  # the call in progress

    # -- start-up --------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Lock down, install the audit hook, load and initialise the plugin.

        Returns the ``ready`` frame, or an ``error`` frame after which the worker exits.
        """
        for entry in reversed([str(p) for p in self.init.get("sys_path", ())]):
            if entry not in sys.path:
                sys.path.insert(0, entry)  # before lockdown, so Landlock grants read on it
        def hand_off(listener: int) -> None:
            # Right after the listener filter loads: the host serves it from now on.
            send_frame_with_fds(self.channel.sock, PassFds("seccomp", 1), [listener])

        try:
            applied = apply_lockdown(self.spec, parent_pid=self.parent_pid, hand_off=hand_off)
        except ParentGoneError:
            raise
        except Exception as error:  # a bug or an unexpected kernel answer: never run unboxed
            return {"op": "error", "error": exception_to_data(error)}
        report = applied.report().to_json()
        sys.dont_write_bytecode = True  # the plugin's directory is read-only from here on
        # Past the lockdown the kernel would refuse what follows; the hook makes it precise.
        checker_data = self.init.get("checker") or {}
        self.checker = make_checker(checker_data, plugin=self.plugin, on_audit=self._report_audit)
        self.guard = AuditGuard(
            self.checker,
            plugin=self.plugin,
            scratch_dir=self.spec.scratch_dir,
            implicit=self._implicit_read(),
            allow_subprocess=self.spec.allow_subprocess,
            allow_network=self.spec.allow_network,
            changeable=self._changeable(applied.landlock),
        )
        signal.signal(signal.SIGXFSZ, self._on_file_size)
        _line_buffered_output()
        # tempfile would probe /tmp first (denied); in-process only, the host's env stays clean.
        os.environ["TMPDIR"] = self.spec.scratch_dir
        if self.spec.audit_hook:
            self.guard.install()
        if self.init.get("network_broker") and self.spec.allow_network:
            # Before any plugin code: its sockets connect through the host from the start.
            from .netshim import BrokerClient, install

            install(BrokerClient(self.channel.broker_connect, self.channel.broker_resolve))
        try:
            init_result = self._load()
        except BaseException as error:  # reported to the host, which decides what to do
            return {"op": "error", "error": exception_to_data(self._translate(error)),
                    "report": report}
        return _encoded_reply(Ready(PROTOCOL_VERSION, os.getpid(), applied.report(),
                                    init_result), report=report)

    def _report_audit(self, action: str, resource: str | None, allowed: bool) -> None:
        """Audit mode: tell the host what the plugin did (only while it waits on a call)."""
        if not self.channel.in_call:
            return  # outside a call nobody reads the channel; a frame then would be refused
        clipped = None if resource is None else resource[:LIMITS.resource_chars]
        self.channel.send(AuditRecord(action[:LIMITS.name_chars], clipped, allowed).encode())

    def _changeable(self, confined: bool) -> tuple[str, ...] | None:
        """The trees where this process can change a directory entry, as Landlock holds it
        (the plan's writable trees; the data directory too, should the host not list it);
        None when Landlock does not confine it (then the hook remembers no resolution)."""
        if not confined:
            return None
        spec = self.spec
        data_dir = self.init.get("data_dir")
        return (spec.scratch_dir, *spec.write_paths, *spec.throwaway_paths,
                *((str(data_dir),) if data_dir else ()))

    def _implicit_read(self) -> ImplicitReads:
        extra = tuple(p for p in sys.path if p and os.path.isabs(p))  # the worker's own path
        if cache_in_use():
            extra += (cache_in_use(),)  # its own modules' bytecode (lazy imports read it)
        return implicit_reads(self.spec.plugin_dir, scratch_dir=self.spec.scratch_dir,
                              extra_paths=extra)

    def _load(self) -> Any:
        module_name, _, class_name = str(self.init["entry_point"]).partition(":")
        if not module_name or not class_name:
            raise EnforcementError(f"entry point `{self.init['entry_point']}` is not "
                                   "`module:Class`", plugin=self.plugin)
        self._install_sources()
        sys.path.insert(0, self.spec.plugin_dir)
        self.channel.in_call = True  # initialize() may use capabilities
        try:
            module = importlib.import_module(module_name)
            self._forward_logs()
            target: Any = module
            for part in class_name.split("."):
                target = getattr(target, part)
            self._check_type(target)
            self.instance = target()
            initialize = getattr(self.instance, "initialize", None)
            if initialize is None:
                return None
            context = WorkerContext(self.channel, plugin=self.plugin,
                                    plugin_dir=self.spec.plugin_dir,
                                    data_dir=str(self.init.get("data_dir")
                                                 or self.spec.scratch_dir),
                                    hooks=self.hooks)
            return _run(initialize, [context], {})
        finally:
            _flush_output()
            self._end_log_budget()
            self.channel.in_call = False

    def _install_sources(self) -> None:
        """Serve the plugin's modules from the sources the host digested (never from disk)."""
        code = self.init.get("code")
        if not isinstance(code, dict):
            # A host of this version always sends the code; without it nothing is loaded.
            raise EnforcementError("the host sent no digested sources for the plugin",
                                   plugin=self.plugin)
        import base64

        from .modules import DigestedSources, install

        sources = {str(path): base64.b64decode(data, validate=True)
                   for path, data in dict(code.get("sources") or {}).items()}
        install(DigestedSources(self.spec.plugin_dir, str(code.get("digest", "")), sources,
                                [str(p) for p in code.get("paths") or ()]))

    def _check_type(self, cls: Any) -> None:
        plugin_type = str(self.init.get("plugin_type") or "")
        if not plugin_type:
            return
        from ...plugin_api import base_for  # only when asked: it is not needed otherwise

        base = base_for(plugin_type)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginValidationError(self.plugin, [
                f"entry point `{self.init['entry_point']}` does not derive from "
                f"`{base.__name__}`"])

    def preload(self) -> None:
        """Work that can wait until the host has its ready answer (the decision table)."""
        preload = getattr(self.checker, "preload", None)
        if callable(preload):
            preload()

    # -- serving ---------------------------------------------------------------------------

    def serve(self) -> int:
        """Answer frames until the host says stop or goes away."""
        while True:
            try:
                frame = recv_frame(self.channel.sock)
            except FrameError:
                return 0  # the host closed the channel: nothing left to do
            op = frame.get("op") if isinstance(frame, dict) else None
            if op == "call":
                self.channel.send(self._call(frame))
            elif op == "reap":
                self.channel.send({"op": "reaped", "pids": _reap_children()})
            elif op == "stop":
                self._cleanup()
                self.channel.send({"op": "stopped"})
                # Do not exit: as the subreaper, this process keeps any descendant the
                # plugin left visible until the host has killed the whole tree.
                _wait_for_end(self.channel.sock)
                return 0
            else:
                self.channel.send({"op": "error", "error": exception_to_data(
                    EnforcementError(f"unknown operation {op!r}"), with_traceback=False)})

    def _call(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        method = str(frame.get("method", ""))
        self.file_size_tripped = False
        self._frame = frame
        self._forward_logs()
        self.channel.in_call = True
        try:
            args = decode_value(frame.get("args") or [], "args")
            kwargs = decode_value(frame.get("kwargs") or {}, "kwargs")
            value = _run(self._target(method), list(args), dict(kwargs))
            error: BaseException | None = None
        except BaseException as raised:  # SystemExit too: the worker outlives a sys.exit()
            error = raised
            value = None
        finally:
            _flush_output()  # the host reads what was written before it gets the answer
            self._end_log_budget()
            self.channel.in_call = False
        if self.file_size_tripped or (error is not None and _is_efbig(error)):
            error = self._file_size_error(error)
        if error is not None:
            return {"op": "error", "error": exception_to_data(self._translate(error))}
        return _encoded_reply(Result(value))

    def _forward_logs(self, *, force: bool = False) -> None:
        # logging is imported only when the plugin uses it; forward from then on.
        if not self.forwarding_logs and (force or "logging" in sys.modules):
            self.forwarding_logs = True
            _install_log_forwarder(self.channel, self.log_budget)
        if self.forwarding_logs:
            _set_log_level(self.init if self._frame is None else self._frame)

    def _end_log_budget(self) -> None:
        """One record for what was dropped (sent while the call is still in progress)."""
        budget = self.log_budget
        if budget.dropped:
            self.channel.send({"op": "log", "level": 30,
                               "logger": f"policy_engine.plugins.{self.plugin}"[:LIMITS.name_chars],
                               "message": f"{budget.dropped:,} log records were dropped (at "
                                          f"most {_MAX_LOG_RECORDS:,} cross per call)"})
        budget.sent = budget.dropped = 0

    def _target(self, method: str) -> Callable[..., Any]:
        if method.startswith(_HOOK_PREFIX):
            hook = self.hooks.get(method[len(_HOOK_PREFIX):])
            if hook is None:
                raise EnforcementError(f"no function is registered for `{method}`",
                                       plugin=self.plugin)
            return hook
        if method.startswith("_"):
            raise EnforcementError(f"`{method}` is private and cannot be called",
                                   plugin=self.plugin)
        function = getattr(self.instance, method, None)
        if not callable(function):
            raise EnforcementError(f"plugin `{self.plugin}` has no method `{method}`",
                                   plugin=self.plugin)
        return function  # type: ignore[no-any-return]

    def _on_file_size(self, signum: int, frame: Any) -> None:
        # The kernel cut a write at RLIMIT_FSIZE. Remember it even if the plugin swallows
        # the EFBIG error: the file it left behind is truncated and must not stay.
        self.file_size_tripped = True

    def _file_size_error(self, cause: BaseException | None) -> FileSizeError:
        limit = self.spec.file_size_bytes
        removed = self._remove_oversize(limit)
        where = f" ({', '.join(removed)} removed)" if removed else ""
        error = FileSizeError(
            f"plugin `{self.plugin}` tried to write a file larger than its limit of "
            f"{human_size(limit)}{where}", plugin=self.plugin, resource="file_size",
            limit=float(limit), used=float(limit))
        error.__cause__ = cause
        return error

    def _remove_oversize(self, limit: int) -> list[str]:
        removed: list[str] = []
        if self.guard is None:
            return removed
        with self.guard.trusted():
            for path in reversed(list(self.guard.written)):
                try:
                    if os.path.isfile(path) and os.path.getsize(path) >= limit:
                        os.remove(path)
                        removed.append(path)
                except OSError:
                    continue
        return removed

    def _translate(self, error: BaseException) -> BaseException:
        """Our own errors for what the kernel backstops raise inside plugin code."""
        if isinstance(error, MemoryError):
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            return ResourceLimitError(
                f"plugin `{self.plugin}` ran out of memory: peak {human_size(peak)}, limit "
                f"{human_size(self.spec.memory_bytes)}", plugin=self.plugin, resource="memory",
                limit=float(self.spec.memory_bytes), used=float(peak))
        return error

    def _cleanup(self) -> None:
        cleanup = getattr(self.instance, "cleanup", None)
        if callable(cleanup):
            try:
                _run(cleanup, [], {})
            except BaseException:  # the worker is going away regardless
                pass


def _encoded_reply(reply: Result | Ready, *,
                   report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reply's frame, or an ``error`` frame naming what in the value cannot cross.

    A value the channel cannot carry, or one whose frame would be over the host's limit, is
    the plugin's error: the host gets :class:`ChannelValueError`, never a broken channel.
    """
    try:
        frame = reply.encode()
        size = len(encode_frame(frame))
        if size > LIMITS.frame_bytes:
            what = "the result" if isinstance(reply, Result) else "what initialize() returned"
            raise ChannelValueError(f"{what} is {size:,} bytes encoded, over the channel's "
                                    f"limit of {LIMITS.frame_bytes:,} bytes per frame",
                                    where="result" if isinstance(reply, Result)
                                    else "initialize()")
    except ChannelValueError as error:
        out: dict[str, Any] = {"op": "error", "error": exception_to_data(
            error, with_traceback=False)}
        if report is not None:
            out["report"] = report
        return out
    return frame


def _run(function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call ``function``; a coroutine or awaitable result runs to completion on a new loop."""
    result = function(*args, **kwargs)
    if not hasattr(result, "__await__"):
        return result
    import asyncio

    async def wait() -> Any:
        return await result

    return asyncio.run(wait())


def _line_buffered_output() -> None:
    """print() reaches the host line by line (descriptors 1 and 2 are the host's pipes)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            try:
                reconfigure(line_buffering=True)
            except (OSError, ValueError):
                pass


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # the plugin may have replaced or closed them: its business
            pass


def _is_efbig(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.EFBIG:
            return True
        current = current.__cause__ or current.__context__
    return False


def _wait_for_end(sock: socket.socket) -> None:
    """Block until the host closes the channel (or kills this process)."""
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def _reap_children() -> list[int]:
    """Collect every exited child (orphans re-parented to us as the subreaper included)."""
    reaped: list[int] = []
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append(pid)
    return reaped


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``argv`` is ``[host_pid, ipc_fd]``."""
    args = sys.argv[1:] if argv is None else argv
    parent_pid, fd = int(args[0]), int(args[1])
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    channel = _Channel(sock)
    try:
        init = recv_frame(sock, max_bytes=INIT_FRAME_BYTES)  # it carries the plugin's sources
        if not isinstance(init, dict) or init.get("version") != PROTOCOL_VERSION:
            channel.send({"op": "error", "error": exception_to_data(EnforcementError(
                f"protocol version `{init.get('version') if isinstance(init, dict) else None}`"
                f" is not {PROTOCOL_VERSION}"), with_traceback=False)})
            return 1
        worker = _Worker(channel, init, parent_pid)
        try:
            first = worker.start()
        except ParentGoneError:
            return 1
        channel.send(first)
        if first["op"] != "ready":
            return 1
        worker.preload()
        return worker.serve()
    except FrameError:
        return 1
    finally:
        sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
