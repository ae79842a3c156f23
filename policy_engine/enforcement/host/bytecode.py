"""A bytecode cache of this package for workers (host side), made once per host process.

A worker imports about twenty of this package's modules before it can answer; without a
usable ``__pycache__`` (the host runs with ``PYTHONDONTWRITEBYTECODE``, or the install is
read-only and was never compiled) it compiles them from source on every cold start, which
costs more than everything else in the start together. So the host compiles the package
once into a directory of its own, which workers read (and the sandbox shows read-only);
the worker side is :mod:`..worker.bytecode`, which checks each file against its source as
Python checks ``__pycache__``. Where the package's own ``__pycache__`` is fresh nothing is
made: the workers use it.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import py_compile
import shutil
import tempfile

__all__ = ["worker_bytecode_dir"]

#: A module every worker imports: when its own ``__pycache__`` entry is fresh, so are the
#: others (they are written together), and no cache is needed.
_PROBE = os.path.join("enforcement", "worker", "main.py")


@functools.cache
def worker_bytecode_dir(package_dir: str) -> str:
    """The cache directory for the package at ``package_dir`` (``<cache>/<relative
    path>c``, timestamp ``.pyc`` files), or empty when the package's own ``__pycache__``
    serves or nothing could be compiled."""
    if _fresh(os.path.join(package_dir, _PROBE)):
        return ""
    try:
        cache = tempfile.mkdtemp(prefix="policy-engine-bytecode-")
    except OSError:
        return ""
    atexit.register(shutil.rmtree, cache, True)
    os.chmod(cache, 0o755)  # readable by every plugin's uid; writable by the host alone
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            source = os.path.join(root, name)
            target = os.path.join(cache, os.path.relpath(source, package_dir) + "c")
            try:
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                py_compile.compile(source, cfile=target, dfile=source, doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
                os.chmod(target, 0o644)
            except (OSError, py_compile.PyCompileError):
                continue  # that module compiles from source in the worker, as before
    return cache


def _fresh(source: str) -> bool:
    try:
        cached = importlib.util.cache_from_source(source)
        with open(cached, "rb") as handle:
            header = handle.read(16)
        info = os.stat(source)
    except (OSError, NotImplementedError, ValueError):
        return False
    return len(header) == 16 and header[:4] == importlib.util.MAGIC_NUMBER and \
        int.from_bytes(header[4:8], "little") == 0 and \
        int.from_bytes(header[8:12], "little") == int(info.st_mtime) & 0xFFFFFFFF and \
        int.from_bytes(header[12:16], "little") == info.st_size & 0xFFFFFFFF
