"""A glob grant as the kernel receives it: the existing paths it matches, one by one.

Bubblewrap binds and Landlock rules name whole paths, so a grant such as
``/srv/data/*.csv`` is expanded when the worker starts: its literal root is walked (never
following a symbolic link), each entry is matched with the language's own matcher
(:mod:`policy_engine.patterns`), and every match that no unconditional deny of the same
permission covers becomes its own bind and Landlock rule. A matched directory is a tree only
when the pattern covers everything below it (it ends in ``**``); a directory the pattern
matches but not whole is not granted itself, only the matches inside it.

The walks of one plugin's glob grants are bounded together (:data:`MAX_MATCHES` matches,
:data:`MAX_VISITS` entries looked at): past either bound the expansion is incomplete and the loader refuses the plugin, naming the
rule, unless the policy says ``accept inexact-grant`` for it (then the grant reaches the
kernel as its literal root, as before). What appears after the start is not matched: a file
created later is not visible until the plugin is restarted (or the policy reloaded), and a
write grant of a glob cannot create a new matching name.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .patterns import PathPattern, may_match_below

__all__ = ["MAX_MATCHES", "MAX_VISITS", "GlobExpansion", "denied_by", "expand_glob",
           "is_expandable"]

#: The most paths a plugin's glob grants may expand into, together: each is a bind of its
#: own (three of bubblewrap's at most 9,000 arguments), and bubblewrap's start grows faster
#: than its binds (``benchmarks/bench_glob_grants.py``: about 1 s at 512, 4 s at 1,024).
MAX_MATCHES = 512
#: The most directory entries the walks of a plugin's glob grants may look at, together.
MAX_VISITS = 65536


@dataclass(frozen=True, slots=True)
class GlobExpansion:
    """The paths one glob grant reaches at start, and whether the walk was complete."""

    paths: tuple[str, ...]
    complete: bool
    #: Matched entries left out because they are symbolic links (never followed).
    links: tuple[str, ...] = ()
    #: Directory entries looked at.
    visits: int = 0


def is_expandable(pattern: PathPattern) -> bool:
    """Whether ``pattern`` has glob parts the kernel cannot take as its literal root: not a
    literal, and not the whole tree ``/root/**``."""
    if pattern.is_literal:
        return False
    literal = len([p for p in pattern.landlock_root.split("/") if p])
    return pattern.segments[literal:] != ("**",)


def expand_glob(pattern: PathPattern, denied: Callable[[str], bool] = lambda _: False, *,
                max_matches: int = MAX_MATCHES, max_visits: int = MAX_VISITS) -> GlobExpansion:
    """The existing paths ``pattern`` matches below its literal root, less those
    ``denied`` says an unconditional deny covers; see the module doc."""
    tree_like = pattern.segments[-1:] == ("**",)
    found: list[str] = []
    links: list[str] = []
    visits = 0
    pending = [pattern.landlock_root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue  # gone, or not a directory: nothing there to grant
        below: list[str] = []
        for entry in listed:
            visits += 1
            if visits > max_visits:
                return GlobExpansion(tuple(found), False, tuple(links), visits)
            path = os.path.join(directory, entry.name)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            matched = pattern.matches(path)
            if stat.S_ISLNK(mode):
                if matched or may_match_below(pattern, path):
                    links.append(path)  # a link may point anywhere: never followed
                continue
            is_dir = stat.S_ISDIR(mode)
            if matched and not denied(path) and (tree_like or not is_dir):
                found.append(path)
                if len(found) > max_matches:
                    return GlobExpansion(tuple(found[:max_matches]), False, tuple(links),
                                         visits)
                if is_dir:
                    continue  # the whole tree is granted: nothing below to look for
            if is_dir and may_match_below(pattern, path):
                below.append(path)
        pending.extend(reversed(below))
    return GlobExpansion(tuple(found), True, tuple(links), visits)


def denied_by(patterns: Sequence[PathPattern]) -> Callable[[str], bool]:
    """A test of whether any of ``patterns`` (unconditional denies) matches a path."""
    return lambda path: any(p.matches(path) for p in patterns)
