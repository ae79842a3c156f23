"""Imports of a plugin's own modules, compiled from the bytes that were digested.

The host reads the plugin directory once (:func:`policy_engine.digest.read_plugin_tree`),
checks that read's digest against the pin, and hands the Python sources of that same read
to the process that runs the plugin (the worker in its ``init`` frame, the in-process
runner directly). :func:`install` puts a path hook first in :data:`sys.path_hooks` that
claims every import path inside the plugin directory, so a module of the plugin comes from
those bytes and from nowhere else:

* a ``.py`` file is compiled from the digested bytes: a file swapped after the check, or
  swapped back and forth, never runs, and neither does a module dropped in later (it was
  not digested, so it does not exist here);
* bytecode is never read from the plugin directory (``__pycache__``, sourceless ``.pyc``)
  and never written there; the runtime's own bytecode caches are untouched;
* an extension module (``.so``, ``.pyd``) or a sourceless ``.pyc`` in the plugin directory
  is refused with :class:`ImportError` naming it: native code is loaded by the dynamic
  linker from the file, never from digested bytes;
* anything else (``.pth`` files, zip archives) is data: the plugin directory is not a site
  directory, so nothing processes a ``.pth`` there, and a path inside it (an archive put on
  ``sys.path``) is served by this hook, which finds no module in it.

Code the plugin compiles itself (``exec`` of a file it reads, ``spec_from_file_location``)
is its own doing: the scanner reports it (``SC501``/``SC502``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import linecache
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Loader as _LoaderBase
else:  # importlib.abc costs a cold start over 10 ms; the import system needs no base class
    _LoaderBase = object

__all__ = ["DigestedSources", "install", "uninstall"]

_SOURCE_SUFFIX = ".py"
_PACKAGE_INIT = "__init__.py"
_lock = threading.Lock()


class DigestedSources:
    """A plugin directory's Python sources from one digested read, by relative path.

    ``root`` is where the plugin directory is seen by the importing process; ``paths`` are
    every file of the read (sources or not), so refusals can name what is there.
    """

    def __init__(self, root: str, digest: str, sources: Mapping[str, bytes], paths: Sequence[str]) -> None:
        self.root = os.path.realpath(root)
        self.digest = digest
        self.sources = dict(sources)
        self.paths = frozenset(paths)
        directories: set[str] = set()
        for path in self.paths:
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directories.add("/".join(parts[:depth]))
        self.directories = frozenset(directories)

    def finder_for(self, path_entry: str) -> _DigestedFinder | None:
        """The finder for an import path inside the plugin directory, or None."""
        try:
            real = os.path.realpath(os.fspath(path_entry))
        except (TypeError, ValueError):
            return None
        if real == self.root:
            return _DigestedFinder(self, "")
        if real.startswith(self.root + os.sep):
            return _DigestedFinder(self, os.path.relpath(real, self.root).replace(os.sep, "/") + "/")
        return None


class _PathHook:
    """One entry of :data:`sys.path_hooks` serving every installed plugin directory."""

    def __init__(self) -> None:
        self.trees: list[DigestedSources] = []

    def __call__(self, path_entry: str) -> _DigestedFinder:
        for tree in tuple(self.trees):
            finder = tree.finder_for(path_entry)
            if finder is not None:
                return finder
        raise ImportError("not a plugin directory")  # the next hook gets it


_HOOK = _PathHook()


def install(sources: DigestedSources) -> None:
    """Serve ``sources.root`` (and every path inside it) from ``sources`` from now on.

    Idempotent per root: installing another read of the same directory replaces the first.
    """
    with _lock:
        _HOOK.trees[:] = [t for t in _HOOK.trees if t.root != sources.root] + [sources]
        if _HOOK not in sys.path_hooks:
            sys.path_hooks.insert(0, _HOOK)
        # A finder cached before now (a FileFinder that reads bytecode) must not be reused.
        for entry in list(sys.path_importer_cache):
            if sources.finder_for(entry) is not None:
                del sys.path_importer_cache[entry]


def uninstall(root: str) -> None:
    """Forget the plugin directory ``root`` (an unloaded in-process plugin)."""
    real = os.path.realpath(root)
    with _lock:
        _HOOK.trees[:] = [t for t in _HOOK.trees if t.root != real]
        for entry, finder in list(sys.path_importer_cache.items()):
            if isinstance(finder, _DigestedFinder) and finder.tree.root == real:
                del sys.path_importer_cache[entry]


class _DigestedFinder:
    """The path-entry finder for one directory of a digested plugin tree."""

    def __init__(self, tree: DigestedSources, prefix: str) -> None:
        self.tree = tree
        self.prefix = prefix

    def find_spec(self, fullname: str, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        """The module ``fullname`` from the digested sources, refused, or None."""
        base = self.prefix + fullname.rpartition(".")[2]
        tree = self.tree
        init = f"{base}/{_PACKAGE_INIT}"
        if init in tree.sources:
            return self._spec(fullname, init, package=base)
        if base + _SOURCE_SUFFIX in tree.sources:
            return self._spec(fullname, base + _SOURCE_SUFFIX, package=None)
        refused = self._runnable_but_not_compiled(base)
        if refused is not None:
            raise ImportError(
                f"`{os.path.join(tree.root, refused)}` is not loaded: only Python sources, "
                "compiled from the bytes the pin's digest covers, load from a plugin directory "
                "(never bytecode or native extension modules)", name=fullname)
        if base in tree.directories:  # a directory without __init__.py: a namespace portion
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = [os.path.join(tree.root, base)]
            return spec
        return None

    def _runnable_but_not_compiled(self, base: str) -> str | None:
        candidates = [base + suffix for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        candidates += [base + ".pyc", f"{base}/__init__.pyc"]
        candidates += [f"{base}/__init__{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
        return next((c for c in candidates if c in self.tree.paths), None)

    def _spec(self, fullname: str, relative: str, *, package: str | None) -> importlib.machinery.ModuleSpec:
        origin = os.path.join(self.tree.root, relative)
        loader = _DigestedLoader(self.tree.sources[relative], origin)
        spec = _Spec(fullname, loader, origin=origin, is_package=package is not None)
        spec.has_location = True  # __file__ is the origin
        if package is not None:
            spec.submodule_search_locations = [os.path.join(self.tree.root, package)]
        return spec

    def invalidate_caches(self) -> None:
        """Nothing to invalidate: the sources never change."""


class _Spec(importlib.machinery.ModuleSpec):
    """A spec with no bytecode path (the stock one derives ``__cached__`` from the origin)."""

    @property
    def cached(self) -> str | None:
        return None

    @cached.setter
    def cached(self, value: str | None) -> None:
        pass  # nothing is cached for a plugin's module, whatever anyone sets


class _DigestedLoader(_LoaderBase):
    """Compiles one module from its digested bytes; writes and reads no bytecode."""

    def __init__(self, source: bytes, origin: str) -> None:
        self.source = source
        self.origin = origin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        code = compile(self.source, self.origin, "exec", dont_inherit=True)
        # Tracebacks show the lines that ran, not what the file on disk says now.
        lines = importlib.util.decode_source(self.source).splitlines(keepends=True)
        linecache.cache[self.origin] = (len(self.source), None, lines, self.origin)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        """The digested source text (``inspect.getsource`` reads this)."""
        return importlib.util.decode_source(self.source)

    def is_package(self, fullname: str) -> bool:
        """Whether the module was found as a package."""
        return self.origin.endswith(os.sep + _PACKAGE_INIT)
