"""The worker's own modules from the host's bytecode cache (worker side).

When this package has no usable ``__pycache__`` (a host running with
``PYTHONDONTWRITEBYTECODE``, a read-only install), every cold start would compile the
worker's modules from source: tens of milliseconds. The host then compiles them once into a
cache directory of its own (:mod:`..host.bytecode`), which the sandbox shows read-only; this
module, loaded by the bootstrap before the package, serves ``policy_engine`` modules from it.

The cache mirrors the package: ``<cache>/<path relative to the package>c`` is a standard
timestamp ``.pyc``, checked against its source exactly as Python checks ``__pycache__``
(magic number, source mtime and size); anything missing, stale or unreadable (after
Landlock, say) falls back to the source. Only the package's own directories use it: plugin
code and the standard library load as they always do.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import marshal
import os
import sys
from types import CodeType
from typing import Any

__all__ = ["CachedSourceLoader", "cache_in_use", "install"]

_HEADER = 16
_installed: list[str] = []


class CachedSourceLoader(importlib.machinery.SourceFileLoader):
    """A source loader that takes a module's code from the host's cache when it is fresh."""

    package_dir = ""
    cache_dir = ""

    def get_code(self, fullname: str) -> CodeType | None:
        code = _cached_code(self.path, self.package_dir, self.cache_dir)
        return code if code is not None else super().get_code(fullname)


def _cached_code(source: str, package_dir: str, cache_dir: str) -> CodeType | None:
    relative = os.path.relpath(source, package_dir)
    if relative.startswith(".."):
        return None
    try:
        with open(os.path.join(cache_dir, relative + "c"), "rb") as handle:
            data = handle.read()
        info = os.stat(source)
    except OSError:
        return None
    if len(data) < _HEADER or data[:4] != importlib.util.MAGIC_NUMBER or \
            int.from_bytes(data[4:8], "little") != 0:
        return None
    if int.from_bytes(data[8:12], "little") != int(info.st_mtime) & 0xFFFFFFFF or \
            int.from_bytes(data[12:16], "little") != info.st_size & 0xFFFFFFFF:
        return None
    try:
        code = marshal.loads(data[_HEADER:])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, CodeType) else None


def install(package_dir: str, cache_dir: str) -> Any:
    """Serve the package under ``package_dir`` from ``cache_dir``; returns the loader class
    (the bootstrap loads the package's ``__init__`` with it)."""
    loader = type("PackageLoader", (CachedSourceLoader,),
                  {"package_dir": package_dir, "cache_dir": cache_dir})
    details = (loader, importlib.machinery.SOURCE_SUFFIXES)
    prefix = package_dir.rstrip(os.sep) + os.sep

    def hook(path: str) -> importlib.machinery.FileFinder:
        if path != package_dir and not path.startswith(prefix):
            raise ImportError("not the worker's package")
        return importlib.machinery.FileFinder(path, details)

    sys.path_hooks.insert(0, hook)
    _installed.append(cache_dir)
    for path in [p for p in sys.path_importer_cache if p == package_dir or p.startswith(prefix)]:
        del sys.path_importer_cache[path]
    return loader


def cache_in_use() -> str:
    """The cache directory :func:`install` serves from, or empty (for Landlock and the
    audit hook's implicit reads: the worker's own lazy imports read it)."""
    return _installed[-1] if _installed else ""
