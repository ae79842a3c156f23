"""What the running kernel offers for isolation, and how to report what was applied.

Detection runs once per process (cached): it is a handful of cheap probes, but the answer
cannot change while we run. The host uses it to predict the isolation level and to decide
whether a worker can switch to an unprivileged uid; the worker reports what it actually
applied as an :class:`IsolationReport`, which is the authoritative answer.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pwd
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from ...implicit import runtime_roots
from ..wire import IsolationReport, isolation_level
from ..worker import landlock, seccomp

__all__ = [
    "IsolationReport",
    "KernelFeatures",
    "UNPRIVILEGED_NAME",
    "detect",
    "isolation_level",
    "privilege_drop_blocker",
    "runtime_paths",
    "unprivileged_ids",
]

UNPRIVILEGED_NAME = "nobody"
_FALLBACK_ID = 65534
_PR_GET_NO_NEW_PRIVS = 39


@dataclass(frozen=True, slots=True)
class KernelFeatures:
    """The isolation features of this kernel and process, as detected."""

    landlock_abi: int
    seccomp: bool
    no_new_privs: bool
    root: bool
    can_switch_uid: bool  # root, and an unprivileged account to switch to exists

    @property
    def scoping(self) -> bool:
        """Landlock can confine signals and abstract unix sockets (ABI 6 and later)."""
        return self.landlock_abi >= 6

    @property
    def level(self) -> str:
        """The isolation level a worker started now can reach (see IsolationReport)."""
        return isolation_level(self.landlock_abi, self.landlock_abi > 0, self.seccomp,
                               self.scoping)

    @property
    def missing(self) -> tuple[str, ...]:
        """Kernel features whose absence lowers the level; empty on a fully capable kernel.

        Whether a worker can also switch to an unprivileged uid depends on where the
        interpreter and the plugin live, so that is in each worker's report, not here.
        """
        gaps: list[str] = []
        if self.landlock_abi <= 0:
            gaps.append("landlock: not available in this kernel")
        else:
            if self.landlock_abi < 4:
                gaps.append(f"landlock-network: needs ABI 4, kernel has {self.landlock_abi}")
            if self.landlock_abi < 6:
                gaps.append(f"landlock-scoping: needs ABI 6, kernel has {self.landlock_abi}")
        if not self.seccomp:
            gaps.append("seccomp: libseccomp or kernel support not available")
        if not self.no_new_privs:
            gaps.append("no_new_privs: not supported by the kernel")
        return tuple(gaps)


@functools.cache
def detect() -> KernelFeatures:
    """Probe the kernel once; later calls return the cached answer."""
    root = os.geteuid() == 0
    return KernelFeatures(
        landlock_abi=landlock.abi_version(),
        seccomp=seccomp.available(),
        no_new_privs=_has_no_new_privs(),
        root=root,
        can_switch_uid=root and unprivileged_ids() is not None,
    )


def _has_no_new_privs() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)) >= 0
    except (OSError, AttributeError):
        return False


@functools.cache
def unprivileged_ids() -> tuple[int, int] | None:
    """The (uid, gid) a root worker switches to: the ``nobody`` account, or None."""
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_NAME)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        return None
    return entry.pw_uid, entry.pw_gid


def runtime_paths() -> tuple[str, ...]:
    """Where the interpreter and this package live: a worker must be able to read them."""
    # The host's own sys.path is not the worker's (``-I`` drops cwd and PYTHONPATH); the
    # worker's default path lies under these prefixes (policy_engine.implicit).
    candidates = [*runtime_roots(), os.path.realpath(sys.executable)]
    seen: dict[str, None] = {}
    for path in candidates:
        if os.path.exists(path):
            seen.setdefault(os.path.realpath(path), None)
    return tuple(seen)


def privilege_drop_blocker(uid: int, gid: int, read_paths: Iterable[str],
                           write_paths: Iterable[str] = ()) -> str | None:
    """Why a process running as ``uid``/``gid`` could not use these paths, or None.

    Looks at permission bits only (no ACLs): each ancestor directory must be searchable,
    each read path readable and each write path writable. A worker that switched uid but
    cannot read its own interpreter would fail on its first lazy import, so the host
    checks this before asking for the switch.
    """
    for path in read_paths:
        problem = _access_problem(path, uid, gid, write=False)
        if problem:
            return problem
    for path in write_paths:
        problem = _access_problem(path, uid, gid, write=True)
        if problem:
            return problem
    return None


def _access_problem(path: str, uid: int, gid: int, *, write: bool) -> str | None:
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return None
    parts = real.split(os.sep)
    for index in range(1, len(parts)):
        ancestor = os.sep.join(parts[:index]) or os.sep
        if not _allowed(ancestor, uid, gid, 0o1):
            return f"{ancestor} is not searchable by uid {uid}"
    want = 0o4 | (0o2 if write else 0)
    if os.path.isdir(real):
        want |= 0o1
    if not _allowed(real, uid, gid, want):
        kind = "writable" if write else "readable"
        return f"{real} is not {kind} by uid {uid}"
    return None


def _allowed(path: str, uid: int, gid: int, want: int) -> bool:
    """Would ``uid``/``gid`` (no supplementary groups) get the ``want`` rwx bits on path?"""
    try:
        info = os.stat(path)
    except OSError:
        return False
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == uid:
        bits = mode >> 6
    elif info.st_gid == gid:
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want
