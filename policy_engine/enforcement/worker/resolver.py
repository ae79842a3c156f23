"""The audit hook's path resolution: :func:`os.path.realpath`'s answer, for less.

``os.path.realpath`` walks a path in Python, one ``lstat`` per component plus the string
work around it; the audit hook resolves every path it checks. :class:`PathResolver` gives
the same answer two cheaper ways:

- **A walk without the string work.** For a path already in normal form (absolute, no
  ``.``, ``..``, empty components or trailing slash) realpath's answer is the path itself
  exactly when none of its components is a symbolic link, so the walk ``lstat``\\ s each
  prefix and stops at the first that does not exist or is no directory (every longer prefix
  then fails the same way, and realpath keeps them as they are). A link, any other error,
  or a path not in normal form goes to ``os.path.realpath`` itself.
- **A cache of link-free paths that cannot change.** A resolution stays right as long as no
  directory entry on the path is created, removed or replaced. The walk remembers a path
  only when nobody but a directory's owner can do that: no directory on it is writable by
  group or others (unless it is sticky and the entry below it already exists and belongs
  to the directory's owner), it lies in none of the trees the plugin may write
  (``changeable``: what the kernel lets this process write), and not under ``/proc``,
  ``/dev`` or ``/sys``, whose entries follow the process. With ``changeable`` None (no
  kernel layer confines the plugin's writes, as in the in-process mode, where plugin
  threads and host code write unchecked) nothing is remembered.

What stays outside: a process running as a directory's owner (another plugin's worker
under the same uid, an administrator) may replace an entry after it was remembered. Such a
writer could already swap the entry between the hook's check and the ``open`` itself; the
kernel layers, which resolve the path themselves, hold either way.

This module is imported by workers: the standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping

__all__ = ["MAX_CACHED", "MAX_CACHED_CHARS", "PathResolver"]

#: The most paths remembered (the cache is emptied when full) and the longest one.
MAX_CACHED = 4096
MAX_CACHED_CHARS = 512
#: Trees whose entries change with the process (descriptors, the working directory).
_LIVE_TREES = ("/proc", "/dev", "/sys")
_ABSENT = (errno.ENOENT, errno.ENOTDIR)
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH


class PathResolver:
    """``resolve(path)`` is ``os.path.realpath(path)`` for an absolute ``path``.

    ``changeable`` lists the trees the plugin can write (the kernel's write grants, its
    scratch and data directories); None means it may write anywhere, and nothing is cached.
    """

    __slots__ = ("_cache", "_skip")

    def __init__(self, changeable: Iterable[str] | None) -> None:
        self._cache: dict[str, str] | None = None
        self._skip: tuple[str, ...] = ()
        if changeable is None:
            return
        roots: list[str] = list(_LIVE_TREES)
        for root in changeable:
            if not os.path.isabs(root):
                return  # a tree this process cannot place: assume it may write anywhere
            # Both spellings: the kernel's rule follows a link the host's path may be.
            roots += [os.path.normpath(root), os.path.realpath(root)]
        if "/" in roots or "//" in roots:
            return  # the plugin may write everywhere: nothing is stable
        try:
            top = os.lstat("/")
        except OSError:
            return
        if top.st_mode & _SHARED_WRITE:
            return
        self._skip = tuple(dict.fromkeys(roots))
        self._cache = {}

    @property
    def caching(self) -> bool:
        """Whether link-free paths are remembered at all."""
        return self._cache is not None

    @property
    def remembered(self) -> Mapping[str, str] | None:
        """What :meth:`resolve` remembers (path to its resolution), None if nothing is: a
        caller on a hot path may look a path up here before it calls :meth:`resolve`. The
        same object for the resolver's life (emptied in place, never replaced)."""
        return self._cache

    def resolve(self, path: str) -> str:
        """The absolute, symlink-free path ``path`` (absolute) names, as realpath says."""
        cache = self._cache
        if cache is not None:
            found = cache.get(path)
            if found is not None:
                return found
        if path[:1] != "/" or "//" in path or path[-1:] == "/" or (
                "/." in path and path != os.path.normpath(path)):
            # Not in normal form (`//`, a trailing `/`, a `.` or `..` component), or `/`.
            return os.path.realpath(path)
        stable = self._walk(path)
        if stable is None:
            return os.path.realpath(path)
        if stable and cache is not None and len(path) <= MAX_CACHED_CHARS \
                and not path.startswith(self._skip):
            if len(cache) >= MAX_CACHED:
                cache.clear()
            cache[path] = path
        return path

    def _walk(self, path: str) -> bool | None:
        """None when ``path`` meets a link or an unexpected error (realpath must decide);
        otherwise whether every directory on it is safe from other writers."""
        stable = True
        parent_uid = -1  # the owner of the directory holding the next component
        sticky_parent = False
        end = 0
        while end != len(path):
            end = path.find("/", end + 1)
            if end < 0:
                end = len(path)
            try:
                st = os.lstat(path[:end])
            except OSError as error:
                if error.errno in _ABSENT:
                    # Absent: a sticky shared directory lets anyone create the name.
                    return stable and not sticky_parent
                return None
            except ValueError:
                return None  # an embedded NUL: realpath raises the same error
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                return None
            if sticky_parent and st.st_uid != parent_uid:
                stable = False  # its owner may replace it in the shared directory
            if not stat.S_ISDIR(mode):
                return stable  # every longer prefix fails with ENOTDIR
            sticky_parent = False
            if mode & _SHARED_WRITE:
                if mode & stat.S_ISVTX:
                    sticky_parent = True
                else:
                    stable = False
            parent_uid = st.st_uid
        return stable
