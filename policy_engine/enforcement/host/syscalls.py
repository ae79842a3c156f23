"""What the kernel saw: the host's end of a worker's seccomp listener.

A worker asked for kernel records (``LockdownSpec.kernel_records``) loads a second seccomp
filter that hands ``open``, ``openat``, ``creat``, ``execve`` and ``execveat`` to a listener
(seccomp user notification), gives the listener's descriptor to the host before any plugin
code runs, and closes its own copy. From then on the calling thread waits in the kernel
until the host answers, so the host sees every open and program start of the plugin,
whatever route it took (``os.open`` with ``dir_fd``, ctypes, a C extension, a child
process), from outside the plugin's reach.

For each call :class:`SyscallListener` reads the path from the caller's memory, makes it
absolute (the caller's working directory or ``dir_fd``, as the kernel shows them in
``/proc``), and asks the host's decision function; a denied call is answered with the errno
the kernel layers give (``EACCES``, or ``ENOENT`` for a path the sandbox does not show;
``EPERM`` for a program start without the permission) and recorded with source
``kernel``. An allowed call continues in the kernel, where Landlock and the view still
apply (``SECCOMP_USER_NOTIF_FLAG_CONTINUE`` is never the only check: a plugin thread that
rewrites the path after the host read it reaches the kernel layers, which refuse it without
a record). Reads the runtime needs (:mod:`policy_engine.implicit`), the scratch directory
and the devices are let through without asking.

Not listened to: ``stat`` and other metadata calls, ``mkdir``, ``unlink``, ``rename`` and
links (Landlock refuses those without a record), and anything Landlock refuses on its own
(it has audit records only through the audit subsystem, see ``doctor``).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Sequence

from ...decision import Decision
from ...implicit import implicit_reads

__all__ = ["SyscallListener", "is_listener", "unavailable"]

log = logging.getLogger(__name__)

# struct seccomp_notif: id, pid, flags, then struct seccomp_data (nr, arch, ip, args[6]).
_NOTIF = struct.Struct("=QIIiIQ6Q")
# struct seccomp_notif_resp: id, val, error, flags.
_RESP = struct.Struct("=QqiI")
_IOC_READ_WRITE, _IOC_WRITE = 3, 1


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | number


_NOTIF_RECV = _ioc(_IOC_READ_WRITE, 0, _NOTIF.size)
_NOTIF_SEND = _ioc(_IOC_READ_WRITE, 1, _RESP.size)
_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
_FLAG_CONTINUE = 1

_AT_FDCWD = -100
_O_ACCMODE, _O_WRONLY, _O_RDWR = 0o3, 0o1, 0o2
_O_CREAT, _O_TRUNC, _O_PATH = 0o100, 0o1000, 0o10000000
_CREAT_FLAGS = _O_CREAT | _O_WRONLY | _O_TRUNC
_PATH_MAX = 4096
_POLL_MS = 100
_MAX_MEMORY_FDS = 64
_LISTENER_LINK = "anon_inode:seccomp notify"

#: ``decide(action, resource)``: the host's decision for one call the listener saw (it
#: records the call); the listener answers from it.
Decide = Callable[[str, str], Decision]


def unavailable() -> str:
    """Empty when workers here can hand the host a seccomp listener, else why not."""
    from ..worker import seccomp

    return seccomp.notify_unavailable()


@functools.cache
def _numbers() -> dict[int, str]:
    """The native numbers of the listened system calls (libseccomp knows them)."""
    from ..worker import seccomp
    from ..worker.lockdown import LISTENED

    lib = seccomp._library()  # noqa: SLF001 - the one binding of libseccomp
    if lib is None:
        return {}
    found: dict[int, str] = {}
    for name in LISTENED:
        number = int(lib.seccomp_syscall_resolve_name(name.encode()))
        if number >= 0:
            found[number] = name
    return found


def is_listener(fd: int) -> bool:
    """Whether ``fd`` is a seccomp listener (what a worker says it sent is checked)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == _LISTENER_LINK
    except OSError:
        return False


class SyscallListener:
    """Serves one worker's seccomp listener from a thread of the host until stopped."""

    def __init__(self, fd: int, *, plugin: str, decide: Decide, plugin_dir: str,
                 scratch_dir: str, passthrough: Sequence[str] = (),
                 import_roots: Sequence[str] = (), audit: bool = False,
                 may_exec: bool = False,
                 on_cpu: Callable[[float], None] | None = None) -> None:
        """``passthrough`` are trees the kernel plan grants outside the policy (devices,
        program and network files), let through without asking; ``may_exec`` says whether
        the worker may start programs at all (without it every program start is refused
        with EPERM, the errno of the filter it replaces); ``on_cpu(seconds)`` is charged
        the host CPU spent per call."""
        self.fd = fd
        self.plugin = plugin
        self._decide = decide
        self._audit = audit
        self._may_exec = may_exec
        self._on_cpu = on_cpu
        self._scratch = os.path.normpath(scratch_dir)
        self._passthrough = tuple(os.path.normpath(p) for p in (scratch_dir, *passthrough))
        self._implicit = implicit_reads(plugin_dir, scratch_dir=scratch_dir,
                                        extra_paths=tuple(import_roots))
        self._numbers = _numbers()
        self._memory: dict[int, int] = {}  # pid -> open /proc/<pid>/mem (bounded)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"policy-engine-syscalls-{plugin}")
        #: calls answered, for tests and benchmarks
        self.answered = 0

    def start(self) -> None:
        """Serve the listener from a daemon thread."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving and close the listener (waiting calls then fail with ENOSYS)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive() or not self._thread.ident:
            self._close()

    def _close(self) -> None:
        for memory in self._memory.values():
            os.close(memory)
        self._memory.clear()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    # -- serving ------------------------------------------------------------------------------

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                events = poller.poll(_POLL_MS)
                if not events:
                    continue
                if any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
                       for _fd, event in events):
                    return  # every task of the filter is gone
                before = time.thread_time()
                self._answer_one()
                if self._on_cpu is not None:
                    self._on_cpu(time.thread_time() - before)
        except Exception:  # the thread must never take the host down
            log.exception("the seccomp listener of plugin `%s` failed", self.plugin)
        finally:
            self._close()

    def _answer_one(self) -> None:
        buffer = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.fd, _NOTIF_RECV, buffer, True)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.EINTR):
                return  # the caller was killed before we read it
            raise
        ident, pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buffer)
        error_code = self._verdict(ident, pid, self._numbers.get(nr, ""), args)
        response = _RESP.pack(ident, 0, -error_code if error_code else 0,
                              0 if error_code else _FLAG_CONTINUE)
        try:
            fcntl.ioctl(self.fd, _NOTIF_SEND, bytearray(response), True)
        except OSError as error:
            if error.errno != errno.ENOENT:  # ENOENT: the caller is gone
                raise
        self.answered += 1

    def _path(self, pid: int, address: int) -> str | None:
        """The string at ``address`` in ``pid``'s memory, through a kept descriptor (a
        reused pid is caught by the ID_VALID check that follows every read)."""
        memory = self._memory.get(pid)
        if memory is None:
            if len(self._memory) >= _MAX_MEMORY_FDS:
                for old in self._memory.values():
                    os.close(old)
                self._memory.clear()
            try:
                memory = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            self._memory[pid] = memory
        text = _read_string(pid, address, memory)
        if text is None:  # the process may be gone: reopen next time
            os.close(self._memory.pop(pid))
        return text

    def _valid(self, ident: int) -> bool:
        """The call is still waiting (its pid was not reused while we read its memory)."""
        try:
            fcntl.ioctl(self.fd, _NOTIF_ID_VALID, bytearray(struct.pack("=Q", ident)), True)
        except OSError:
            return False
        return True

    def _verdict(self, ident: int, pid: int, name: str, args: list[int]) -> int:
        """The errno to answer with, or 0 to let the kernel carry on."""
        if name in ("execve", "execveat"):
            return self._on_exec(ident, pid, name, args)
        if name in ("open", "openat", "creat"):
            return self._on_open(ident, pid, name, args)
        return 0

    def _on_open(self, ident: int, pid: int, name: str, args: list[int]) -> int:
        if name == "openat":
            dirfd, address, flags = _int32(args[0]), args[1], args[2]
        else:
            dirfd, address = _AT_FDCWD, args[0]
            flags = _CREAT_FLAGS if name == "creat" else args[1]
        if flags & _O_PATH:
            return 0  # a handle without access to the content; the kernel decides
        path = _absolute(pid, dirfd, self._path(pid, address))
        if path is None or not self._valid(ident):
            return 0  # unreadable: the kernel layers answer, nothing is recorded
        writes = (flags & _O_ACCMODE) in (_O_WRONLY, _O_RDWR) or bool(flags & (_O_CREAT | _O_TRUNC))
        reads = (flags & _O_ACCMODE) != _O_WRONLY
        if _under(path, self._passthrough):
            return 0
        actions = (["file:write"] if writes else []) + (
            ["file:read"] if reads and not self._implicit.covers(path) else [])
        for action in actions:
            if not self._decide(action, path).allowed and not self._audit:
                return errno.EACCES if os.path.lexists(f"/proc/{pid}/root{path}") else errno.ENOENT
        return 0

    def _on_exec(self, ident: int, pid: int, name: str, args: list[int]) -> int:
        if name == "execveat":
            dirfd, address = _int32(args[0]), args[1]
        else:
            dirfd, address = _AT_FDCWD, args[0]
        text = self._path(pid, address)
        path = _absolute(pid, dirfd, text) if text else None
        if path is not None and self._valid(ident):
            allowed = self._decide("subprocess:execute", os.path.basename(path)).allowed
        else:
            allowed = False
        if self._audit or (allowed and self._may_exec):
            return 0
        return errno.EPERM


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_string(pid: int, address: int, memory: int | None = None) -> str | None:
    """A NUL-terminated path from the caller's memory (page by page, at most PATH_MAX);
    ``memory`` is an open ``/proc/<pid>/mem`` of the caller (else one is opened)."""
    if not address:
        return None
    if memory is not None:
        return _read_from(memory, address)
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_from(fd, address)
    finally:
        os.close(fd)


def _read_from(fd: int, address: int) -> str | None:
    data = b""
    while len(data) < _PATH_MAX:
        want = min(_PAGE - (address + len(data)) % _PAGE, _PATH_MAX - len(data))
        try:
            chunk = os.pread(fd, want, address + len(data))
        except OSError:
            return None
        if not chunk:
            return None
        end = chunk.find(b"\0")
        if end >= 0:
            return os.fsdecode(data + chunk[:end])
        data += chunk
    return None


def _absolute(pid: int, dirfd: int, path: str | None) -> str | None:
    """``path`` made absolute as the caller sees it (its cwd or ``dirfd``), normalised."""
    if path is None or not path:
        return None
    if not path.startswith("/"):
        link = f"/proc/{pid}/cwd" if dirfd == _AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
        try:
            base = os.readlink(link)
        except OSError:
            return None
        if not base.startswith("/"):
            return None  # a pipe, a socket, a deleted directory
        path = os.path.join(base, path)
    return os.path.normpath(path).replace("//", "/")

