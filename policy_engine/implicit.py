"""What a plugin may read without a grant: one named list, used by every layer.

A Python program cannot run without reading its interpreter and libraries, its own code,
and a little read-only system data. Those reads are *implicit*: the worker's audit hook,
the kernel plan (Landlock) and the in-process guard allow them without asking the decision
table, and :meth:`policy_engine.engine.Engine.decide` reports such a read as allowed with
reason ``implicit``. Everything else, including every other file in the plugin's own
directory, is governed by the policy like any other path.

The list (:func:`implicit_reads`):

- the Python runtime: ``sys.prefix``, ``sys.base_prefix``, the exec prefixes, this
  package's directory, and the system library directories (:data:`SYSTEM_LIBRARIES`);
- the plugin's code files: files under its directory whose name ends in one of
  :data:`CODE_SUFFIXES`, and the directories leading to them (to list them for imports);
- read-only system data a Python program needs (:data:`SYSTEM_DATA`: the dynamic loader's
  cache, timezone data, the CA certificates, the locale archive) and the harmless devices
  (:data:`DEVICES`);
- the plugin's scratch directory, when it has one (a worker's, not known to ``decide``).

This module is imported by workers: the standard library only.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

__all__ = ["CODE_SUFFIXES", "DEVICES", "SYSTEM_DATA", "SYSTEM_LIBRARIES", "ImplicitReads",
           "implicit_reads", "is_code_below", "is_directory", "runtime_roots"]

#: Shared libraries the interpreter and extension modules load.
SYSTEM_LIBRARIES: tuple[str, ...] = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib")
#: Read-only system data: loader cache, timezone data, CA certificates, locales.
SYSTEM_DATA: tuple[str, ...] = (
    "/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/etc/ssl/certs",
    "/etc/ssl/cert.pem", "/etc/pki/tls/certs", "/usr/share/ca-certificates",
    "/usr/lib/locale",
)
#: Devices any program may read, and the process's own information.
DEVICES: tuple[str, ...] = ("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero",
                            "/proc/self")
#: A file under the plugin's directory with one of these endings is plugin code.
CODE_SUFFIXES: tuple[str, ...] = (".py", ".pyc", ".so")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def runtime_roots(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Python runtime's trees (prefixes, this package) plus ``extra`` import paths."""
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, _PACKAGE_DIR,
             *extra]
    return tuple(dict.fromkeys(os.path.normpath(p) for p in roots if p and os.path.isabs(p)))


@dataclass(frozen=True, slots=True)
class ImplicitReads:
    """The implicit-read list of one plugin; :meth:`covers` answers for one path.

    ``trees`` are read whole (runtime, system libraries and data, devices, scratch);
    ``plugin_dir`` contributes its code files only.
    """

    trees: tuple[str, ...]
    plugin_dir: str | None = None
    # The same data shaped for one C-level test per request (`str.startswith` takes a tuple).
    _below: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _code_base: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_below", tuple(root + "/" for root in self.trees))
        object.__setattr__(self, "_exact", frozenset(self.trees))
        base = self.plugin_dir
        object.__setattr__(self, "_code_base", None if base is None else base + "/")

    def covers(self, path: str) -> bool:
        """Whether reading ``path`` (absolute, normalised) needs no grant."""
        if path.startswith(self._below) or path in self._exact:
            return True
        return self.is_code(path)

    def is_code(self, path: str) -> bool:
        """Whether ``path`` is one of the plugin's code files or leads to one (a directory)."""
        base = self._code_base
        if base is None or not (path.startswith(base) or path == self.plugin_dir):
            return False
        return is_code_below(path)

    def covers_tree(self, path: str) -> bool:
        """Whether ``path`` is in one of the trees read whole (the list without the plugin's code)."""
        return path.startswith(self._below) or path in self._exact


def is_code_below(path: str) -> bool:
    """For a ``path`` inside a plugin's directory: whether it is code, or a directory (which may
    lead to code)."""
    if path.endswith(CODE_SUFFIXES):
        return True
    return is_directory(path)  # listing a directory reveals names, never contents


_F_OK, _access = os.F_OK, os.access
_ACCESS_BY_EFFECTIVE_IDS = os.access in os.supports_effective_ids  # Linux: faccessat(AT_EACCESS)


def is_directory(path: str) -> bool:
    """``os.path.isdir(path)`` for a normalised absolute path, a quarter of its cost:
    ``access("path/")`` with the effective ids asks the kernel the same question (the
    trailing slash resolves only to a directory, through symbolic links as ``stat`` does)
    without building a ``stat_result``. A path that could reach the kernel's 4,095-byte
    limit once the slash is added asks ``isdir`` itself."""
    if _ACCESS_BY_EFFECTIVE_IDS and (len(path) < 1023 or (len(path) < 4094 and path.isascii())):
        return _access(path + "/", _F_OK, effective_ids=True)
    return os.path.isdir(path)


def implicit_reads(plugin_dir: str | None, *, scratch_dir: str | None = None,
                   extra_paths: tuple[str, ...] = ()) -> ImplicitReads:
    """The implicit-read list for a plugin in ``plugin_dir`` (see the module docstring)."""
    trees = [*runtime_roots(extra_paths), *SYSTEM_LIBRARIES, *SYSTEM_DATA, *DEVICES]
    if scratch_dir:
        trees.append(os.path.normpath(scratch_dir))
    return ImplicitReads(tuple(dict.fromkeys(trees)),
                         None if plugin_dir is None else os.path.normpath(plugin_dir))
