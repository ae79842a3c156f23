"""The content digest of a plugin directory, which ``trust plugin "x" sha256 "<hex>"`` pins.

The definition below is a contract: administrators recompute it with their own tools, so it
never changes without a new algorithm name in the policy language.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator

__all__ = ["plugin_digest"]

_FILE = b"f"
_LINK = b"l"
_CHUNK = 1 << 20
# Open without following a final symlink: the walk classified the entry as a regular file,
# and a file swapped for a link in the meantime must not be read through the link.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def plugin_digest(plugin_dir: str | os.PathLike[str]) -> str:
    """The lowercase hex SHA-256 digest of the files of ``plugin_dir``.

    Definition (version 1)::

        digest = sha256( entry(e1) || entry(e2) || ... )
        entry  = kind || u64(len(path)) || path || u64(len(data)) || data

    * The entries are every regular file and every symbolic link below ``plugin_dir``, at any
      depth, sorted by ``path`` compared bytewise (``LC_ALL=C sort`` order).
    * ``path`` is the entry's path relative to ``plugin_dir`` with ``/`` separators and no
      leading ``./`` (``pkg/module.py``), as the file system's bytes (UTF-8 on usual systems).
    * ``kind`` is one byte: ``f`` (0x66) for a regular file, ``l`` (0x6C) for a symbolic link.
    * ``data`` is the file's content for a file, and the link's target text exactly as
      stored (what ``readlink`` prints) for a link. Links are never followed, so a link to a
      directory is one entry and nothing below it is read; replacing a file by a link to it
      changes the digest.
    * ``u64`` is an unsigned 64-bit big-endian integer: with fixed-width lengths no two
      different trees produce the same byte stream.
    * Skipped: anything named ``__pycache__`` (with everything below it) and anything whose
      name ends in ``.pyc``; other special files (FIFOs, sockets, devices) and directories
      themselves, so empty directories do not count.
    * File modes, owners and times are not part of the digest: ``chmod`` does not change it.

    An empty directory digests to ``sha256("")``. ``plugin_dir`` itself may be a link to a
    directory. Because compiled bytecode is skipped, whoever loads a pinned plugin must not
    run stale ``__pycache__`` files in place of the sources that were pinned.

    Raises :class:`OSError` when ``plugin_dir`` is not a readable directory or a file cannot
    be read, or when a file changes size while it is hashed.
    """
    root = os.fspath(plugin_dir)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"`{root}` is not a directory")
    digest = hashlib.sha256()
    for relative, entry_path, is_link in sorted(_entries(root), key=lambda e: e[0]):
        digest.update(_LINK if is_link else _FILE)
        digest.update(_u64(len(relative)))
        digest.update(relative)
        if is_link:
            target = os.fsencode(os.readlink(entry_path))
            digest.update(_u64(len(target)))
            digest.update(target)
        else:
            _hash_file(digest.update, entry_path)
    return digest.hexdigest()


def _entries(root: str) -> Iterator[tuple[bytes, str, bool]]:
    """``(relative path bytes, path, is_link)`` for every entry that counts, in any order."""
    pending: list[tuple[str, bytes]] = [(root, b"")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as listing:
            for entry in listing:
                name = os.fsencode(entry.name)
                if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
                    continue
                relative = prefix + name
                if entry.is_symlink():
                    yield relative, entry.path, True
                elif entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, relative + b"/"))
                elif entry.is_file(follow_symlinks=False):
                    yield relative, entry.path, False


def _hash_file(update: Callable[[bytes], None], path: str) -> None:
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"`{path}` stopped being a regular file while it was hashed")
        size = info.st_size
        update(_u64(size))
        remaining = size
        while remaining > 0:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                break
            update(chunk)
            remaining -= len(chunk)
        # The length was hashed up front; a file that grew or shrank would break the framing.
        if remaining != 0 or handle.read(1):
            raise OSError(f"`{path}` changed size while it was hashed")


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")
