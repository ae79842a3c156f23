"""Landlock through raw system calls (ctypes), for the worker's lockdown.

Landlock is an unprivileged Linux security module: a process builds a ruleset (which access
rights it wants restricted, and which file hierarchies or TCP ports keep which rights) and
then confines itself, irreversibly, for the rest of its life and its children's. There is
no libc wrapper, hence the raw ``syscall`` calls. Only the x86_64/aarch64 generic syscall
numbers are used; both architectures share them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "LandlockError",
    "LandlockPlan",
    "LandlockResult",
    "abi_version",
    "apply_plan",
    "fs_rights",
]

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

# Filesystem access rights, with the ABI version that introduced each.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_ABI1 = (1 << 13) - 1
# The only rights the kernel accepts on a rule whose target is not a directory.
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = READ_FILE | READ_DIR
READ_EXECUTE = READ | EXECUTE
READ_WRITE = (
    READ
    | WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_DIR
    | MAKE_REG
    | REFER
    | TRUNCATE
)

#: Write and create without read: what a ``file:write``/``file:delete`` grant alone gives.
WRITE_ONLY = READ_WRITE & ~(READ_FILE | READ_DIR)


class LandlockError(OSError):
    """A Landlock system call failed for a reason other than the kernel lacking it."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


@functools.cache
def abi_version() -> int:
    """The Landlock ABI version the running kernel offers; 0 when it has none."""
    try:
        result = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                                 ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(result), 0)


def fs_rights(abi: int) -> int:
    """Every filesystem right ABI ``abi`` knows, which is what the ruleset restricts."""
    if abi <= 0:
        return 0
    rights = _FS_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


@dataclass(frozen=True, slots=True)
class LandlockPlan:
    """What the sandboxed process keeps: everything not listed here is denied.

    ``paths`` pairs a path with the rights granted beneath it; missing paths are skipped.
    ``connect_ports`` are the only TCP ports it may connect to (no port: no TCP at all)
    unless ``restrict_connect`` is false, which leaves TCP connect to other layers; binding
    a TCP port is never granted.
    """

    paths: tuple[tuple[str, int], ...]
    connect_ports: tuple[int, ...] = ()
    restrict_connect: bool = True
    scope: bool = True


@dataclass(frozen=True, slots=True)
class LandlockResult:
    """What was actually enforced."""

    abi: int
    filesystem: bool
    network: bool
    scoping: bool
    skipped_paths: tuple[str, ...]


def apply_plan(plan: LandlockPlan) -> LandlockResult:
    """Confine the calling process (and its future children) to ``plan``, for good.

    Needs ``no_new_privs`` set first (or CAP_SYS_ADMIN). On a kernel without Landlock
    returns a result with nothing enforced instead of failing.
    """
    abi = abi_version()
    if abi <= 0:
        return LandlockResult(0, False, False, False, ())
    handled_fs = fs_rights(abi)
    handled_net = 0
    if abi >= 4:
        handled_net = NET_BIND_TCP | (NET_CONNECT_TCP if plan.restrict_connect else 0)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 and plan.scope else 0
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    # Older kernels know a shorter struct; pass only the part they know about.
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    ruleset_fd = _check(_libc().syscall(_SYS_CREATE_RULESET, ctypes.byref(attr),
                                        ctypes.c_size_t(size), ctypes.c_uint32(0)),
                        "landlock_create_ruleset")
    skipped: list[str] = []
    try:
        for path, rights in _merge(plan.paths):
            if not _add_path_rule(ruleset_fd, path, rights & handled_fs):
                skipped.append(path)
        if handled_net & NET_CONNECT_TCP:
            for port in sorted(set(plan.connect_ports)):
                rule = _NetPortAttr(NET_CONNECT_TCP, port)
                _check(_libc().syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset_fd),
                                       ctypes.c_int(_RULE_NET_PORT), ctypes.byref(rule),
                                       ctypes.c_uint32(0)), f"landlock_add_rule(port {port})")
        _check(_libc().syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset_fd)
    return LandlockResult(abi, True, bool(handled_net), bool(scoped), tuple(skipped))


def _merge(paths: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """One entry per path with the union of its rights, in a stable order."""
    merged: dict[str, int] = {}
    for path, rights in paths:
        merged[path] = merged.get(path, 0) | rights
    return list(merged.items())


def _add_path_rule(ruleset_fd: int, path: str, rights: int) -> bool:
    """Grant ``rights`` beneath ``path``; False when the path does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_ONLY  # the kernel rejects directory rights on a file
        if not rights:
            return False
        rule = _PathBeneathAttr(rights, fd)
        _check(_libc().syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset_fd),
                               ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                               ctypes.c_uint32(0)), f"landlock_add_rule({path})")
    finally:
        os.close(fd)
    return True


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise LandlockError(code, f"{what}: {os.strerror(code) if code else 'failed'}")
    return int(result)

