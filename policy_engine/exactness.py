"""Which file denies the kernel sandbox can hold exactly, and why the others cannot.

The sandbox shows a plugin its granted trees (bind mounts, Landlock rules on directories)
and masks a denied path inside them with an empty mount. A mask covers one path that exists
when the worker starts: a literal path, or a whole ``/dir/**`` tree. Everything else a deny
can say inside a granted tree is held by the decision table and the worker's audit hook
alone: a glob (``/srv/data/**/*.key``), a condition, a path that does not exist yet, a deny
wider than the tree it reaches into. The loader refuses such a deny unless the policy says
``accept inexact-deny`` for the plugin, and ``policy-lint`` reports it (``PL313``); both use
:func:`inexact_reason`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .patterns import PathPattern

__all__ = ["inexact_reason", "is_under", "mask_path"]


def mask_path(pattern: PathPattern) -> str | None:
    """The one path a mount can mask for ``pattern`` (a literal, or the directory of a
    ``/dir/**`` tree), or None for a glob."""
    if pattern.is_literal:
        return pattern.canonical
    segments = pattern.segments
    if len(segments) > 1 and segments[-1] == "**" and \
            pattern.landlock_root == "/" + "/".join(segments[:-1]):
        return pattern.landlock_root
    return None


def is_under(path: str, tree: str) -> bool:
    """Whether ``path`` is ``tree`` or lies below it."""
    return tree == "/" or path == tree or path.startswith(tree.rstrip("/") + "/")


def inexact_reason(pattern: PathPattern, trees: Iterable[str], *, conditional: bool = False,
                   masked: bool = True,
                   exists: Callable[[str], bool] | None = os.path.lexists) -> str | None:
    """Why the kernel cannot hold a deny of ``pattern`` exactly inside the granted ``trees``,
    or None when it can (or when the deny reaches no granted tree).

    ``masked`` is False for a deny the sandbox does not mask (write and delete denies
    without a matching read deny); ``exists`` None skips the existence check (a policy
    read before its plugins are known)."""
    root = pattern.landlock_root
    path = mask_path(pattern)
    for tree in trees:
        inside = is_under(root, tree)
        wider = not inside and is_under(tree, root)
        if not inside and not wider:
            continue
        if wider and path is not None and not conditional:
            # One path above the tree (nothing inside it is denied), or a whole tree around
            # it: the kernel plan leaves such a grant out, so nothing of it is shown.
            continue
        if conditional:
            return f"it has a condition, which the kernel cannot evaluate, inside granted `{tree}`"
        if wider:
            return f"it reaches into granted `{tree}`, which the kernel shows whole"
        if path is None:
            return f"it is a glob inside granted `{tree}`; a mount masks only whole paths"
        if not masked:
            return (f"it is a write or delete deny inside granted `{tree}`; only a "
                    "`file:read` deny of the same path masks it")
        if exists is not None and not exists(path):
            return (f"`{path}` does not exist yet inside granted `{tree}`, so there is nothing "
                    "to mask; a file created there later is not covered")
    return None
