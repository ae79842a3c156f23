"""The worker's PEP 578 audit hook: every audited action of plugin code meets the policy.

This is the precise layer: it knows host names, program names and file globs, and answers
with a :class:`PermissionDeniedError` that explains itself. It is not the boundary. Code in
the same interpreter can in principle reach around an audit hook, so the kernel layers
(Landlock, seccomp, rlimits, see :mod:`.lockdown`) hold the line on their own; this hook
makes the common case precise and the denials readable.

Paths are resolved as :func:`os.path.realpath` resolves them before they are checked, so
``..`` and symlinks cannot walk out of a granted directory; for deletions and renames only
the parent is resolved, since those act on the link itself and not on what it points to.
The resolution is :class:`~.resolver.PathResolver`'s: the same answers, cheaper, and
remembered for paths nobody but their directories' owners can change.

A plain read of an absolute path (the common ``open()``) is answered in the hook itself:
whether the resolved path needs no grant (an implicit read, the scratch directory) is
remembered per path, except inside the plugin's directory, where the code-file test asks the
file system; a table checker's remembered answers (``denials()``) are consulted directly,
and a denial raises a copy of the error built once for that answer
(:func:`~.checker.fresh_copy`): the same type, message, attributes and decision as an error
built from the decision, with its own traceback, starting at the plugin's call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ...families import audit_events
from ...implicit import ImplicitReads
from .checker import Checker, Denials, DeniedDecision, denial, fresh_copy
from .resolver import PathResolver

__all__ = ["AuditGuard"]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
#: ``open()`` modes that read and never write (with no write flag, they ask file:read only).
_READ_MODES = frozenset({"r", "rb", "rt", "br", "tr"})
_MAX_TRACKED_WRITES = 1024
#: Paths whose "needs no grant to read" answer is remembered (emptied when full), and the
#: longest one.
_MAX_FREE_READS = 4096
_MAX_FREE_READ_CHARS = 512
_INTROSPECTION = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})


class _ThreadState(threading.local):
    """Per thread: whether the worker's own code runs there unchecked (:meth:`AuditGuard.trusted`).

    A default on the class, so that a thread that never set it reads False as a plain
    attribute: ``getattr(local, name, False)`` on an unset name raises and swallows an
    AttributeError on every audited event.
    """

    trusted = False


class AuditGuard:
    """Checks audited events of plugin code against a :data:`Checker`.

    ``implicit`` is the plugin's implicit-read list (:mod:`policy_engine.implicit`: the
    runtime, its code files, read-only system data); the scratch directory is always
    readable and writable. Everything else goes through ``checker``.

    ``changeable`` lists the trees the plugin can write as the kernel holds it (its write
    grants, scratch and data directories); None, the default, says it may write anywhere
    (no kernel layer confines it), and then no resolution is remembered
    (:class:`~.resolver.PathResolver`).
    """

    def __init__(
        self,
        checker: Checker,
        *,
        plugin: str,
        scratch_dir: str,
        implicit: ImplicitReads,
        allow_subprocess: bool,
        allow_network: bool,
        changeable: Iterable[str] | None = None,
    ) -> None:
        self._checker = checker
        # A table checker's remembered answers (checker.denials()), taken once it has them.
        self._denials_of: Callable[[], Denials | None] | None = getattr(checker, "denials", None)
        self._denials: Denials | None = None
        self._plugin = plugin
        self._scratch = os.path.realpath(scratch_dir)
        self._scratch_below = self._scratch.rstrip(os.sep) + os.sep  # as _under tests it
        # The scratch directory is always writable, whatever the caller listed.
        self._resolver = PathResolver(None if changeable is None
                                      else (*changeable, scratch_dir, self._scratch))
        self._realpath = self._resolver.resolve
        remembered = self._resolver.remembered
        self._resolved: Mapping[str, str] = {} if remembered is None else remembered
        # Symlinks resolved once, as the hook resolves each path it sees.
        self._implicit = ImplicitReads(
            tuple(dict.fromkeys(os.path.realpath(p) for p in implicit.trees)),
            None if implicit.plugin_dir is None else os.path.realpath(implicit.plugin_dir))
        plugin_dir = self._implicit.plugin_dir
        # The code-file test of the plugin's directory asks the file system (is it a
        # directory?); every other path's answer is its text alone, and is remembered.
        self._code_zone = None if plugin_dir is None else (plugin_dir, plugin_dir + os.sep)
        self._free_reads: dict[str, bool] = {}
        self._allow_subprocess = allow_subprocess
        self._allow_network = allow_network
        self._local = _ThreadState()
        self._resolved_names: dict[str, set[str]] = {}  # IP address -> host names it serves
        #: Files opened for writing, newest last; the worker removes the ones cut short by
        #: the file-size limit.
        self.written: dict[str, None] = {}
        # The checks by role; which audit events each role handles is the registry's
        # (`families.audit_events`), so an event and its family cannot drift apart. A role
        # the registry names and this hook lacks is a KeyError here: refused at start-up.
        roles: dict[str, Callable[[tuple[Any, ...]], None]] = {
            "open": self._on_open, "read_dir": self._on_read_dir, "delete": self._on_delete,
            "rename": self._on_rename, "link": self._on_link, "symlink": self._on_symlink,
            "modify": self._on_modify, "connect": self._on_connect, "bind": self._on_bind,
            "getaddrinfo": self._on_getaddrinfo, "resolve": self._on_resolve,
            "popen": self._on_popen, "system": self._on_system, "exec": self._on_exec,
            "spawn": self._on_spawn, "fork": self._on_fork, "pty_spawn": self._on_pty_spawn,
            "kill": self._on_kill,
        }
        self._handlers: dict[str, Callable[[tuple[Any, ...]], None]] = {
            e.event: roles[e.handler] for e in audit_events()}
        if self._handlers.get("open") != self._on_open:
            # _hook answers `open` itself (its common case spelled out there).
            raise RuntimeError("the audit event `open` must be the open role's")

    # -- installation ------------------------------------------------------------------------

    def install(self) -> None:
        """Add the hook to this interpreter, for good (audit hooks cannot be removed)."""
        self._wrap_getaddrinfo()
        sys.addaudithook(self._hook)

    @contextlib.contextmanager
    def trusted(self) -> Iterator[None]:
        """Let the worker's own code (this thread only) act without checks, e.g. cleanup."""
        self._local.trusted = True
        try:
            yield
        finally:
            self._local.trusted = False

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            # The most frequent event, and its common case (a plain read of an absolute
            # path), spelled out: each call level costs on every read, and on a denial's
            # unwinding once more (a frame of the traceback).
            if self._local.trusted:
                return
            path, mode, flags = args[0], args[1], args[2]
            if path.__class__ is str and path[:1] == "/" and mode.__class__ is str \
                    and mode in _READ_MODES and not flags & _WRITE_FLAGS:
                real = self._resolved.get(path) or self._realpath(path)
                free = self._free_reads.get(real)
                if free is None:
                    free = self._is_free_read(real)
                if not free:
                    denials = self._denials
                    if denials is None:
                        self._ask_read(real)
                        return
                    denied = denials("file:read", real)  # the checker's answer, as it gives it
                    if denied is not None:
                        raise fresh_copy(denied)
                return
            self._on_open(args)
            return
        handler = self._handlers.get(event)
        if handler is None:
            if event.startswith("ctypes.") and not self._allow_subprocess:
                self._deny_ctypes(event)
            elif event in _INTROSPECTION:
                self._deny_introspection(event)
            return
        if self._local.trusted:
            return
        handler(args)

    # -- decisions -----------------------------------------------------------------------------

    def _check(self, action: str, resource: str | None) -> None:
        self._checker(action, resource)

    def _deny(self, action: str, resource: str | None, reason: str) -> None:
        raise denial(DeniedDecision(self._plugin, action, resource, reason))

    def _deny_ctypes(self, event: str) -> None:
        if self._local.trusted:
            return
        # ctypes reads and writes arbitrary memory and calls any C function: it can unhook
        # this guard or make raw system calls. That is the power of running native code,
        # which a plugin allowed to run subprocesses already has (a child process can be
        # anything); without that permission ctypes would be a way around the policy.
        self._deny("subprocess:execute", event,
                   "ctypes runs native code, which needs subprocess permission")

    def _deny_introspection(self, event: str) -> None:
        if self._local.trusted:
            return
        # The object graph leads to this guard's own state.
        self._deny("inspect", event, "walking the interpreter's object graph is not allowed")

    # -- files -------------------------------------------------------------------------------

    def _on_open(self, args: tuple[Any, ...]) -> None:
        # (_hook answers a plain read of an absolute path itself.)
        path, mode, flags = args[0], args[1], args[2]
        resolved = _resolve(path, realpath=self._realpath)
        if resolved is None:
            return
        writing = bool(flags & _WRITE_FLAGS) or (
            isinstance(mode, str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)
        )
        reading = not writing or bool(flags & os.O_RDWR) or (isinstance(mode, str) and "+" in mode)
        if reading:
            self._check_read(resolved)
        if writing:
            self._check_write(resolved)
            self._remember_write(resolved)

    def _on_read_dir(self, args: tuple[Any, ...]) -> None:
        resolved = _resolve(args[0] if args and args[0] is not None else ".",
                            realpath=self._realpath)
        if resolved is not None:
            self._check_read(resolved)

    def _on_delete(self, args: tuple[Any, ...]) -> None:
        resolved = _resolve(args[0], dir_fd=_arg(args, 1), follow=False,
                            realpath=self._realpath)
        if resolved is not None:
            self._check_path("file:delete", resolved)

    def _on_rename(self, args: tuple[Any, ...]) -> None:
        source = _resolve(args[0], dir_fd=_arg(args, 2), follow=False, realpath=self._realpath)
        target = _resolve(args[1], dir_fd=_arg(args, 3), follow=False, realpath=self._realpath)
        if source is not None:
            self._check_path("file:delete", source)  # the name disappears from its directory
        if target is not None:
            self._check_write(target)

    def _on_link(self, args: tuple[Any, ...]) -> None:
        source = _resolve(args[0], dir_fd=_arg(args, 2), realpath=self._realpath)
        target = _resolve(args[1], dir_fd=_arg(args, 3), follow=False, realpath=self._realpath)
        if source is not None:
            self._check_read(source)
        if target is not None:
            self._check_write(target)

    def _on_symlink(self, args: tuple[Any, ...]) -> None:
        target = _resolve(args[1], dir_fd=_arg(args, 2), follow=False, realpath=self._realpath)
        if target is not None:
            self._check_write(target)

    def _on_modify(self, args: tuple[Any, ...]) -> None:
        resolved = _resolve(args[0], realpath=self._realpath)
        if resolved is not None:
            self._check_write(resolved)

    def _is_free_read(self, path: str) -> bool:
        """Whether reading ``path`` (resolved) needs no grant: an implicit read, or the
        scratch directory. Remembered unless the answer may depend on the file system (the
        code-file test of the plugin's directory asks whether a path is a directory) or the
        path is long."""
        # _under(path, scratch), spelled out: this runs for every file a plugin reads.
        in_tree = self._implicit.covers_tree(path) or path.startswith(self._scratch_below) \
            or path == self._scratch
        free = in_tree or self._implicit.is_code(path)
        zone = self._code_zone
        if len(path) <= _MAX_FREE_READ_CHARS and (
                in_tree or zone is None or not (path == zone[0] or path.startswith(zone[1]))):
            if len(self._free_reads) >= _MAX_FREE_READS:
                self._free_reads.clear()
            self._free_reads[path] = free
        return free

    def _ask_read(self, path: str) -> None:
        """The checker's answer on reading ``path``; once it has remembered answers, the
        hook consults them itself."""
        try:
            self._checker("file:read", path)
        finally:
            if self._denials_of is not None:
                self._denials = self._denials_of()

    def _check_read(self, path: str) -> None:
        free = self._free_reads.get(path)
        if free is None:
            free = self._is_free_read(path)
        if not free:
            self._checker("file:read", path)  # straight on: each frame costs a denial's unwinding

    def _check_write(self, path: str) -> None:
        if path.startswith(self._scratch_below) or path == self._scratch or path == os.devnull:
            return
        self._checker("file:write", path)

    def _check_path(self, action: str, path: str) -> None:
        if action == "file:delete" and _under(path, self._scratch) and path != self._scratch:
            return
        self._check(action, path)

    def _remember_write(self, path: str) -> None:
        self.written.pop(path, None)
        self.written[path] = None
        if len(self.written) > _MAX_TRACKED_WRITES:
            del self.written[next(iter(self.written))]

    # -- network -----------------------------------------------------------------------------

    def _wrap_getaddrinfo(self) -> None:
        """Remember which host names resolved to which addresses.

        A connect() only sees an address, while policies name hosts; the wrapper lets a
        connect to an address that an allowed name resolved to count as that name. Code
        calling ``_socket.getaddrinfo`` directly skips the record and is judged on the bare
        address, which errs on the side of denying.
        """
        original = socket.getaddrinfo
        names = self._resolved_names

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            results = original(host, port, *args, **kwargs)
            if isinstance(host, (str, bytes)):
                name = host.decode() if isinstance(host, bytes) else host
                for *_rest, sockaddr in results:
                    names.setdefault(str(sockaddr[0]), set()).add(name)
            return results

        socket.getaddrinfo = getaddrinfo

    def _on_getaddrinfo(self, args: tuple[Any, ...]) -> None:
        host, port = args[0], args[1]
        if host is None:
            return  # a local address lookup (bind to any): nothing is contacted
        self._check_network(_text(host), port)

    def _on_resolve(self, args: tuple[Any, ...]) -> None:
        self._check_network(_text(args[0]), None)

    def _on_connect(self, args: tuple[Any, ...]) -> None:
        sock, address = args[0], args[1]
        family = getattr(sock, "family", None)
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            host, port = _text(address[0]), address[1]
            names = self._resolved_names.get(host, set())
            denied: BaseException | None = None
            for candidate in (host, *sorted(names)):
                try:
                    self._check_network(candidate, port)
                    return
                except PermissionError as error:
                    denied = denied or error
            if denied is not None:
                raise denied
        elif family == socket.AF_UNIX:
            self._deny("network:request", f"unix:{_text(address)}",
                       "unix sockets lead out of the sandbox")

    def _on_bind(self, args: tuple[Any, ...]) -> None:
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            self._deny("network:request", f"bind {_text(address[0])}:{address[1]}",
                       "plugins may not listen on ports")

    def _check_network(self, host: str, port: Any) -> None:
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address: `::1:443` would be an address, not a port
        resource = host if port in (None, 0, "") else f"{host}:{_text(port)}"
        # The decision table alone answers: no coarse switch may contradict it.
        self._check("network:request", resource)

    # -- processes ---------------------------------------------------------------------------

    def _check_program(self, program: Any) -> None:
        name = os.path.basename(_text(program)) if program is not None else None
        self._check("subprocess:execute", name)

    def _on_popen(self, args: tuple[Any, ...]) -> None:
        executable, argv = args[0], args[1]
        if executable is None:
            if isinstance(argv, (str, bytes)):
                executable = _first_word(_text(argv))
            elif argv:
                executable = list(argv)[0]
        self._check_program(executable)

    def _on_system(self, args: tuple[Any, ...]) -> None:
        self._check_program(_first_word(_text(args[0])))

    def _on_exec(self, args: tuple[Any, ...]) -> None:
        self._check_program(args[0])

    def _on_spawn(self, args: tuple[Any, ...]) -> None:
        self._check_program(args[1])

    def _on_pty_spawn(self, args: tuple[Any, ...]) -> None:
        argv = args[0]
        self._check_program(_first_word(_text(argv)) if isinstance(argv, (str, bytes))
                            else list(argv)[0])

    def _on_fork(self, args: tuple[Any, ...]) -> None:
        self._check_program(None)

    def _on_kill(self, args: tuple[Any, ...]) -> None:
        target = args[0]
        if target in (0, os.getpid()) or (target == -os.getpgrp()):
            return  # itself, or its own process group
        if not self._allow_subprocess:
            self._deny("subprocess:execute", f"kill {target}",
                       "only a plugin allowed to run subprocesses may signal processes")


def _arg(args: tuple[Any, ...], index: int) -> Any:
    return args[index] if len(args) > index else None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value)


def _first_word(command: str) -> str:
    import shlex  # rarely needed: only when a command line is denied or checked

    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return words[0] if words else ""


def _resolve(path: Any, *, dir_fd: Any = None, follow: bool = True,
             realpath: Callable[[str], str] = os.path.realpath) -> str | None:
    """The absolute, symlink-free path an operation will touch; None for a file descriptor.

    ``realpath`` resolves an absolute path (the guard's :class:`~.resolver.PathResolver`).
    """
    if isinstance(path, int) or path is None:
        return None
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if not os.path.isabs(text):
        base = os.getcwd()
        if isinstance(dir_fd, int):
            with contextlib.suppress(OSError):
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
        text = os.path.join(base, text)
    if follow:
        return realpath(text)
    # No normpath here: "link/../x" must go through the link like the kernel does.
    parent, name = os.path.split(text.rstrip(os.sep) or os.sep)
    if name in ("", ".", ".."):
        return realpath(text)
    return os.path.join(realpath(parent), name)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _under_any(path: str, roots: Iterable[str]) -> bool:
    return any(_under(path, root) for root in roots)
