"""The content digest of a plugin directory, which ``trust plugin "x" sha256-v2 "<hex>"`` pins.

The definition below is a contract: administrators recompute it with their own tools, so it
never changes without a new version in its text (``sha256-v2:``) and a new algorithm name in
the policy language (``sha256-v2``).

:func:`read_plugin_tree` reads every file once and keeps the bytes a caller asks for
(the plugin's Python sources) from that same read, so what runs is what was digested: the
loaders compile those bytes and never open the plugin's files again (see
:mod:`policy_engine.enforcement.modules`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .bounded import DEFAULT_LIMITS, LIMIT_MESSAGE_PREFIX, InputLimits
from .errors import PluginTreeError

__all__ = [
    "ALGORITHM",
    "DIGEST_PREFIX",
    "is_python_source",
    "OLD_ALGORITHM",
    "PluginTree",
    "plugin_digest",
    "read_plugin_tree",
    "trust_line",
]

#: The algorithm name a ``trust`` line writes, and the prefix of a digest's text.
ALGORITHM = "sha256-v2"
DIGEST_PREFIX = ALGORITHM + ":"
#: Version 1's name: its pins no longer match anything (it skipped bytecode and followed
#: no rule about special files), and the compiler says how to re-pin.
OLD_ALGORITHM = "sha256"

_CHUNK = 1 << 20
# Never follow a link, never block on a FIFO swapped in after the listing, never become the
# controlling terminal of a device: every open is checked with fstat before it is read.
_FILE_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
_DIR_FLAGS = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_CLOEXEC", 0))
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


@dataclass(frozen=True, slots=True)
class PluginTree:
    """One read of a plugin directory: its digest, every file's relative path, and the
    bytes of the files the caller chose to keep, from the same read that was digested."""

    root: str
    #: ``sha256-v2:<64 lowercase hex>``
    digest: str
    #: every regular file, relative POSIX paths, sorted as digested
    paths: tuple[str, ...]
    #: the kept files' bytes by relative path
    files: Mapping[str, bytes]
    #: bytes of all files together
    size: int


def plugin_digest(plugin_dir: str | os.PathLike[str], *, limits: InputLimits = DEFAULT_LIMITS) -> str:
    """The digest of the files of ``plugin_dir``: ``sha256-v2:<64 lowercase hex>``.

    Definition (version 2)::

        digest = "sha256-v2:" || hex( sha256( entry(f1) || entry(f2) || ... ) )
        entry  = u64(len(path)) || path || u64(len(data)) || sha256(data)

    * The entries are **every regular file** below ``plugin_dir``, at any depth, including
      ``__pycache__`` and ``*.pyc`` files, sorted by ``path`` compared bytewise
      (``LC_ALL=C sort`` order). Directories themselves are not entries, so empty
      directories do not count.
    * ``path`` is the file's path relative to ``plugin_dir`` with ``/`` separators and no
      leading ``./`` (``pkg/module.py``), as the file system's bytes (UTF-8 on usual systems).
    * ``sha256(data)`` is the 32 raw bytes of the SHA-256 of the file's content (what
      ``sha256sum`` prints, as bytes); ``u64`` is an unsigned 64-bit big-endian integer:
      with fixed-width lengths no two different trees produce the same byte stream.
    * Anything else below ``plugin_dir`` (a symbolic link, FIFO, socket or device) is
      refused, naming it: nothing is followed, so the digest never depends on what lies
      outside the directory. ``plugin_dir`` itself may be given through a link.
    * File modes, owners and times are not part of the digest: ``chmod`` does not change it.

    An empty directory digests to ``sha256-v2:`` + ``sha256("")``. Reproduce it with
    ``find . -type f | LC_ALL=C sort`` and ``sha256sum`` of each file.

    Raises :class:`~policy_engine.errors.PluginTreeError` (an :class:`OSError`) for a
    refused entry, a file that changed while it was read, or a directory over the
    ``plugin_files``, ``plugin_bytes`` or ``plugin_depth`` caps of ``limits``, and
    :class:`OSError` when ``plugin_dir`` is not a readable directory.
    """
    return read_plugin_tree(plugin_dir, limits=limits).digest


def read_plugin_tree(plugin_dir: str | os.PathLike[str], *, keep: Callable[[str], bool] | None = None,
                     limits: InputLimits = DEFAULT_LIMITS) -> PluginTree:
    """Read ``plugin_dir`` once: its :func:`plugin_digest` and the bytes of every file whose
    relative path ``keep`` accepts. Same errors as :func:`plugin_digest`."""
    root = os.fspath(plugin_dir)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"`{root}` is not a directory")
    walk = _Walk(root, keep, limits)
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        walk.directory(fd, b"", 0)
    finally:
        os.close(fd)
    walk.entries.sort(key=lambda entry: entry[0])
    digest = hashlib.sha256()
    for relative, size, content_hash in walk.entries:
        digest.update(_u64(len(relative)) + relative + _u64(size) + content_hash)
    paths = tuple(os.fsdecode(relative) for relative, _, _ in walk.entries)
    return PluginTree(root, DIGEST_PREFIX + digest.hexdigest(), paths,
                      MappingProxyType(dict(sorted(walk.kept.items()))), walk.total)


def is_python_source(relative: str) -> bool:
    """Whether a file of a plugin directory (relative POSIX path) is a module source the
    loaders compile: a ``.py`` outside ``__pycache__``."""
    return relative.endswith(".py") and "/__pycache__/" not in f"/{relative}"


def trust_line(plugin: str, digest: str) -> str:
    """The ``trust`` statement that pins ``plugin`` to ``digest`` (a :func:`plugin_digest`)."""
    hex_digest = digest.removeprefix(DIGEST_PREFIX)
    return f'trust plugin "{_escape(plugin)}" {ALGORITHM} "{hex_digest}"'


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Walk:
    """The state of one walk: entries found, bytes kept, caps counted."""

    def __init__(self, root: str, keep: Callable[[str], bool] | None, limits: InputLimits) -> None:
        self.root = root
        self.keep = keep
        self.limits = limits
        self.entries: list[tuple[bytes, int, bytes]] = []
        self.kept: dict[str, bytes] = {}
        self.total = 0

    def shown(self, relative: bytes) -> str:
        return os.path.join(self.root, os.fsdecode(relative))

    def directory(self, fd: int, prefix: bytes, depth: int) -> None:
        # Entries are opened relative to their directory's descriptor, never by path, and
        # never through a link: a directory swapped for a link mid-walk is refused, not read.
        with os.scandir(fd) as listing:
            names = sorted(os.fsencode(entry.name) for entry in listing)
        for name in names:
            relative = prefix + name
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                if depth + 1 > self.limits.plugin_depth:
                    raise PluginTreeError(
                        f"{LIMIT_MESSAGE_PREFIX}: `{self.shown(relative)}` is nested deeper than "
                        f"{self.limits.plugin_depth} directories (cap `plugin_depth`)", self.shown(relative))
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    self.directory(child, relative + b"/", depth + 1)
                finally:
                    os.close(child)
            elif stat.S_ISREG(info.st_mode):
                self.file(fd, name, relative)
            else:
                self.refuse(relative, info.st_mode)

    def refuse(self, relative: bytes, mode: int) -> None:
        kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
        raise PluginTreeError(
            f"`{self.shown(relative)}` is {kind}: a plugin directory may hold only regular files "
            "and directories\n  hint: replace it with a copy of what it stands for, or remove it",
            self.shown(relative))

    def file(self, dir_fd: int, name: bytes, relative: bytes) -> None:
        if len(self.entries) + 1 > self.limits.plugin_files:
            raise PluginTreeError(
                f"{LIMIT_MESSAGE_PREFIX}: `{self.root}` holds more than {self.limits.plugin_files} "
                "files (cap `plugin_files`)", self.root)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a link after the listing
                self.refuse(relative, stat.S_IFLNK)
            raise
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                self.refuse(relative, info.st_mode)
            size = info.st_size
            if self.total + size > self.limits.plugin_bytes:
                raise PluginTreeError(
                    f"{LIMIT_MESSAGE_PREFIX}: the files of `{self.root}` hold more than "
                    f"{self.limits.plugin_bytes} bytes (cap `plugin_bytes`)", self.root)
            keep = self.keep is not None and self.keep(os.fsdecode(relative))
            content_hash = hashlib.sha256()
            chunks: list[bytes] = []
            remaining = size
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                content_hash.update(chunk)
                if keep:
                    chunks.append(chunk)
                remaining -= len(chunk)
            # The length is part of the entry; a file that grew or shrank would break it.
            if remaining != 0 or handle.read(1):
                raise PluginTreeError(f"`{self.shown(relative)}` changed size while it was read; "
                                      "digest it again once it is stable", self.shown(relative))
        self.total += size
        self.entries.append((relative, size, content_hash.digest()))
        if keep:
            self.kept[os.fsdecode(relative)] = b"".join(chunks)


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")
