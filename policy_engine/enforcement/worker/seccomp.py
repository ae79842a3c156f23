"""A small ctypes binding of libseccomp: an allow-by-default filter with errno rules.

Only what the worker's lockdown needs: build a filter whose default is "allow", add rules
that make chosen system calls (optionally only for chosen argument values) fail with an
errno, and load it. libseccomp compiles that to BPF and guards the architecture (a 32-bit
system call on x86_64 kills the process), which a hand-written BPF program would have to
redo. No PyPI dependency: the shared library is part of every mainstream distribution.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass

__all__ = [
    "ArgCmp",
    "SeccompError",
    "SeccompFilter",
    "available",
    "masked_eq",
    "notify_unavailable",
]

_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_ACT_NOTIFY = 0x7FC00000  # SECCOMP_RET_USER_NOTIF: the listener's holder answers

# enum scmp_compare
CMP_NE = 1
CMP_LT = 2
CMP_LE = 3
CMP_EQ = 4
CMP_GE = 5
CMP_GT = 6
CMP_MASKED_EQ = 7


class SeccompError(OSError):
    """libseccomp refused a rule or could not load the filter."""


class _ArgCmpStruct(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@dataclass(frozen=True, slots=True)
class ArgCmp:
    """One condition on a system-call argument (all conditions of a rule must hold)."""

    arg: int
    op: int
    datum_a: int
    datum_b: int = 0


def masked_eq(arg: int, mask: int, value: int) -> ArgCmp:
    """``(argument & mask) == value``; also how 32-bit int arguments are compared safely."""
    return ArgCmp(arg, CMP_MASKED_EQ, mask, value)


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        # find_library runs ldconfig in a subprocess: only worth it when the soname failed.
        from ctypes.util import find_library

        name = find_library("seccomp")
        if name is None:
            return None
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
        ctypes.POINTER(_ArgCmpStruct),
    ]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    if hasattr(lib, "seccomp_notify_fd"):  # libseccomp 2.4 and later
        lib.seccomp_notify_fd.restype = ctypes.c_int
        lib.seccomp_notify_fd.argtypes = [ctypes.c_void_p]
    return lib


def notify_unavailable(*, kernel: bool = True) -> str:
    """Empty when a filter can hand its system calls to a listener (seccomp user
    notification with its continue flag, kernel 5.5, and libseccomp 2.4), else why not. ``kernel=False`` skips
    asking the kernel (a locked-down worker cannot read ``/proc/sys``; loading the filter
    answers then)."""
    lib = _library()
    if lib is None:
        return "libseccomp is not available"
    if not hasattr(lib, "seccomp_notify_fd"):
        return "libseccomp is older than 2.4 (no user notification)"
    if not kernel:
        return ""
    release = os.uname().release.split(".")
    try:
        if (int(release[0]), int(release[1].split("-")[0])) < (5, 5):
            return "the kernel is older than 5.5 (no SECCOMP_USER_NOTIF_FLAG_CONTINUE)"
    except (IndexError, ValueError):
        return "the kernel's version cannot be read"
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as actions:
            if "user_notif" not in actions.read().split():
                return "the kernel has no seccomp user notification"
    except OSError:
        return "the kernel has no seccomp filtering"
    return ""


@functools.cache
def available() -> bool:
    """True when libseccomp loads and the kernel has seccomp filtering."""
    if _library() is None:
        return False
    return os.path.exists("/proc/sys/kernel/seccomp/actions_avail")


class SeccompFilter:
    """An allow-by-default filter under construction; :meth:`load` installs it for good."""

    def __init__(self) -> None:
        lib = _library()
        if lib is None:
            raise SeccompError("libseccomp is not available")
        self._lib = lib
        ctx = lib.seccomp_init(_ACT_ALLOW)
        if not ctx:
            raise SeccompError("seccomp_init failed")
        self._ctx: int | None = ctx
        self.unknown: list[str] = []  # system calls this architecture does not have

    def deny(self, syscall: str, code: int, *conditions: ArgCmp) -> None:
        """Make ``syscall`` fail with errno ``code`` when every condition holds."""
        self._add(syscall, _ACT_ERRNO | (code & 0xFFFF), conditions)

    def notify(self, syscall: str, *conditions: ArgCmp) -> None:
        """Hand ``syscall`` to the filter's listener (see :meth:`load`) when every
        condition holds: the calling thread waits until the listener answers."""
        self._add(syscall, _ACT_NOTIFY, conditions)

    def _add(self, syscall: str, action: int, conditions: tuple[ArgCmp, ...]) -> None:
        number = self._lib.seccomp_syscall_resolve_name(syscall.encode())
        if number < 0:
            self.unknown.append(syscall)
            return
        array = (_ArgCmpStruct * max(len(conditions), 1))(
            *(_ArgCmpStruct(c.arg, c.op, c.datum_a, c.datum_b) for c in conditions)
        )
        result = self._lib.seccomp_rule_add_array(self._ctx, action, number, len(conditions),
                                                  array)
        if result < 0:
            raise SeccompError(-result, f"seccomp_rule_add({syscall}): {os.strerror(-result)}")

    def load(self) -> int | None:
        """Install the filter in the calling thread; it cannot be removed afterwards.

        Returns the listener descriptor of a filter with :meth:`notify` rules (whoever
        holds it answers those calls; when every copy is closed they fail with ENOSYS),
        otherwise None."""
        result = self._lib.seccomp_load(self._ctx)
        listener: int | None = None
        if result >= 0 and hasattr(self._lib, "seccomp_notify_fd"):
            fd = int(self._lib.seccomp_notify_fd(self._ctx))
            listener = fd if fd >= 0 else None
        self.release()
        if result < 0:
            raise SeccompError(-result, f"seccomp_load: {os.strerror(-result)}")
        return listener

    def release(self) -> None:
        """Free the libseccomp context (after load, or when giving up)."""
        if self._ctx is not None:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None
