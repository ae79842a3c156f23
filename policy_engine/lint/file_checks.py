"""``PL003``: policy files that someone other than the engine's user (or root) can change.

As sshd's ``StrictModes`` does for its key files, every policy file that was read is
checked: the file (through its symlinks), the directory that holds the entry, and the
directory that holds the link's target. Each must be owned by the user running the check
or by root, and must not be writable by group or others.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from .. import codes
from ..diagnostics import Diagnostic, Span
from .findings import finding

__all__ = ["check_permissions", "writable_by_others"]


def writable_by_others(info: os.stat_result, uid: int) -> str | None:
    """Why someone other than ``uid`` or root can change what ``info`` describes, or None."""
    if info.st_uid not in (uid, 0):
        return f"it is owned by uid {info.st_uid}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH:
        return f"anyone can write it (mode {mode:04o})"
    if mode & stat.S_IWGRP:
        return f"its group can write it (mode {mode:04o})"
    return None


def check_permissions(paths: Iterable[str], *, uid: int | None = None) -> list[Diagnostic]:
    """One ``PL003`` finding per policy file, link target or directory in ``paths``'s
    reach that others can write (``uid`` defaults to the effective user)."""
    uid = os.geteuid() if uid is None else uid
    found: list[Diagnostic] = []
    for path in paths:
        target = os.path.realpath(path)
        checks = [("policy file", path, target)]
        if target != os.path.abspath(path):
            checks.append(("directory of the link target", path, os.path.dirname(target)))
        checks.append(("directory", path, os.path.dirname(os.path.abspath(path))))
        seen: set[str] = set()
        for what, entry, checked in checks:
            if checked in seen:
                continue
            seen.add(checked)
            try:
                info = os.stat(checked)
            except OSError:
                continue  # the reader reports what cannot be read
            reason = writable_by_others(info, uid)
            if reason is None:
                continue
            shown = entry if what == "policy file" else _shown(checked)
            found.append(finding(
                codes.WRITABLE_POLICY_FILE,
                f"the {what} `{shown}` can be changed by others: {reason}",
                Span(entry, 0, 0),
                hint="whoever can write a policy decides what plugins may do: "
                     "`chmod go-w` it and keep it owned by the engine's user or root",
            ))
    return found


def _shown(path: str) -> str:
    # As the user would type it: relative below the working directory, else absolute.
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
