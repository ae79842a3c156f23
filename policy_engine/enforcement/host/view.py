"""The filesystem a sandboxed worker sees, computed from its grants: a printable plan.

Nothing exists inside the sandbox unless an entry here puts it there: the Python runtime
(prefixes, the worker's ``sys.path`` and the system libraries it loads), the read-only system
data a Python program needs (timezone data, CA bundle, locale archive), a synthetic
``/etc/passwd`` and ``/etc/group`` for the plugin's uid, the plugin's code read-only, its data
directory read-write, and each granted path bound as granted. The plan is data: the launcher
(:mod:`.bwrap`) turns it into arguments, :meth:`ViewPlan.render` prints it. The part that
depends only on the host (the runtime and system data) is computed once per host process.

Bind sources are resolved component by component without following symlinks: a symlink on
the way becomes a symlink entry in the view (so ``/lib64/ld-linux-x86-64.so.2`` works on a
merged-``/usr`` system) and the real target is bound at its own path, never at the link's.
"""

from __future__ import annotations

import functools
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["Mount", "MountKind", "ViewInputs", "ViewPlan", "plan_view", "worker_sys_path"]

_SYSTEM_FILES = ("/etc/ld.so.cache",)
_ELF_INTERPRETERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")
_LOCALE = ("/usr/lib/locale/locale-archive", "/usr/lib/locale/C.utf8",
           "/usr/lib/locale/C.UTF-8")
_ZONEINFO = ("/usr/share/zoneinfo", "/etc/localtime", "/etc/timezone")
_PROGRAM_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")  # only with subprocess permission
_PROGRAM_FILES = ("/etc/nsswitch.conf",)
_NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
                  "/etc/host.conf", "/etc/ssl", "/etc/ca-certificates",
                  "/usr/share/ca-certificates", "/usr/lib/ssl")
_NAME_UNSAFE = re.compile(r"[^a-z0-9_-]+")


class MountKind(str, Enum):
    """What one entry of the view puts at its destination."""

    RO_BIND = "ro-bind"  # a host path, read-only
    BIND = "bind"  # a host path, read-write
    SYMLINK = "symlink"  # a symbolic link (``source`` is its target)
    DATA = "data"  # a read-only file with the given content (synthetic)
    TMPFS = "tmpfs"  # an empty, size-capped tmpfs
    PROC = "proc"  # a procfs of the sandbox's own PID namespace
    DEV = "dev"  # a minimal /dev (null, zero, full, random, urandom, tty, pts, shm)
    REMOUNT_RO = "remount-ro"  # make the mount at ``dest`` read-only after set-up


@dataclass(frozen=True, slots=True)
class Mount:
    """One entry of the view: ``kind`` at ``dest``, and why it is there."""

    kind: MountKind
    dest: str
    source: str = ""
    reason: str = ""
    size: int = 0  # bytes, for TMPFS
    data: str = ""  # content, for DATA
    mode: str = ""  # permissions of a TMPFS or DATA entry, when not the default

    def render(self) -> str:
        """``kind dest <- source  (reason)`` on one line."""
        text = f"{self.kind.value:<10} {self.dest}"
        if self.kind is MountKind.SYMLINK:
            text += f" -> {self.source}"
        elif self.source and self.source != self.dest:
            text += f" <- {self.source}"
        if self.size:
            text += f" size={self.size}"
        return f"{text}  ({self.reason})" if self.reason else text

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict (``data`` left out: it is shown by its reason)."""
        return {"kind": self.kind.value, "dest": self.dest, "source": self.source,
                "reason": self.reason, "size": self.size}


@dataclass(frozen=True, slots=True)
class ViewInputs:
    """Everything the view is computed from (no policy logic: grants come decided)."""

    plugin: str
    plugin_dir: str
    data_dirs: tuple[str, ...]
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    python: str = sys.executable
    package_dir: str = ""
    import_roots: tuple[str, ...] = ()  # the plugin's own dependency roots (WorkerInit.sys_path)
    uid: int = 65534
    gid: int = 65534
    allow_subprocess: bool = False
    allow_network: bool = False
    tmp_bytes: int = 16 * 1024 * 1024
    shm_bytes: int = 16 * 1024 * 1024
    masks: tuple[str, ...] = ()  # denied paths inside the view: covered by an empty mount
    #: Audit mode: writable places covered by an empty tmpfs (``throwaway_bytes`` each), so
    #: nothing the plugin writes reaches the host.
    throwaway: tuple[str, ...] = ()
    throwaway_bytes: int = 16 * 1024 * 1024
    bytecode_dir: str = ""  # the host's bytecode cache of this package (host/bytecode.py)


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """The complete filesystem view of one plugin's sandbox, in mount order."""

    plugin: str
    mounts: tuple[Mount, ...]
    notes: tuple[str, ...] = field(default=())  # paths left out, and why

    def render(self) -> str:
        """The plan as text, one mount a line, then the notes."""
        lines = [f"sandbox view of plugin `{self.plugin}`:"]
        lines += [f"  {mount.render()}" for mount in self.mounts]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict."""
        return {"plugin": self.plugin, "mounts": [m.to_json() for m in self.mounts],
                "notes": list(self.notes)}

    def visible_paths(self) -> tuple[str, ...]:
        """Destinations of every entry that shows host content or a synthetic file."""
        return tuple(m.dest for m in self.mounts if m.kind not in (MountKind.REMOUNT_RO,))


@functools.cache
def worker_sys_path(python: str) -> tuple[str, ...]:
    """The import path of ``python -I`` (what a worker starts with), asked once per host."""
    try:
        out = subprocess.run([python, "-I", "-c", "import sys,json;print(json.dumps(sys.path))"],
                             capture_output=True, text=True, timeout=30, check=True,
                             env={"PATH": "/usr/bin:/bin"}).stdout
        entries = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()
    return tuple(str(p) for p in entries if isinstance(p, str) and os.path.isabs(p))


def _loaded_libraries() -> list[str]:
    """Shared objects mapped into this process outside the Python prefixes."""
    found: dict[str, None] = {}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and ".so" in parts[5]:
                    found.setdefault(parts[5].strip(), None)
    except OSError:
        return []
    return list(found)


def _library_dirs() -> list[str]:
    """The system library directories the worker's interpreter loads from."""
    prefixes = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix})
    dirs: dict[str, None] = {}
    for library in _loaded_libraries():
        real = os.path.realpath(library)
        if real.startswith(prefixes) or not os.path.isfile(real):
            continue
        dirs.setdefault(os.path.dirname(real), None)
    return list(dirs)


def _ca_paths() -> list[str]:
    paths = ssl.get_default_verify_paths()
    return [p for p in (paths.cafile, paths.capath, paths.openssl_cafile, paths.openssl_capath)
            if p]


def _account_name(plugin: str) -> str:
    return "plugin-" + (_NAME_UNSAFE.sub("-", plugin.lower()).strip("-") or "unnamed")[:24]


class _Builder:
    """Collects mounts, resolving sources and dropping what an earlier mount already shows."""

    def __init__(self) -> None:
        self.mounts: list[Mount] = []
        self.notes: list[str] = []
        self._dests: dict[str, Mount] = {}
        #: Trees the plugin can write: a symlink inside one may have been planted by it.
        self.writable: tuple[str, ...] = ()

    def _covered(self, dest: str, kind: MountKind) -> bool:
        """True when an identical host tree at least as permissive already shows ``dest``."""
        path = dest
        while True:
            mount = self._dests.get(path)
            if mount is not None and mount.source == mount.dest and (
                    mount.kind is MountKind.BIND or kind is not MountKind.BIND):
                return True
            if mount is not None and path == dest:
                return True  # the same destination twice: the first one stands
            if path == "/":
                return False
            path = os.path.dirname(path)

    def add(self, mount: Mount) -> None:
        if mount.kind in (MountKind.RO_BIND, MountKind.BIND, MountKind.SYMLINK) and \
                self._covered(mount.dest, mount.kind):
            return
        self._dests[mount.dest] = mount
        self.mounts.append(mount)

    def expose(self, path: str, reason: str, *, writable: bool = False) -> bool:
        """Bind ``path`` at its own location, with symlinks on the way reproduced as links;
        False when it does not exist."""
        if not path or not os.path.isabs(path):
            return False
        resolved = self._resolve(os.path.normpath(path), reason)
        if resolved is None:
            return False
        kind = MountKind.BIND if writable else MountKind.RO_BIND
        self.add(Mount(kind, resolved, resolved, reason))
        return True

    def _resolve(self, path: str, reason: str, depth: int = 0) -> str | None:
        """``path`` with every symlinked component replaced, links recorded on the way."""
        if depth > 16:
            self.notes.append(f"`{path}` left out: too many symbolic links")
            return None
        current = "/"
        parts = [p for p in path.split("/") if p]
        for index, part in enumerate(parts):
            candidate = os.path.join(current, part)
            try:
                info = os.lstat(candidate)
            except OSError:
                return None  # does not exist (yet): nothing to show
            if os.path.islink(candidate) or (info.st_mode & 0o170000) == 0o120000:
                if any(candidate.startswith(root.rstrip("/") + "/") for root in self.writable):
                    self.notes.append(f"`{path}` left out: `{candidate}` is a symbolic link "
                                      "inside a tree the plugin can write")
                    return None
                target = os.readlink(candidate)
                self.add(Mount(MountKind.SYMLINK, candidate, target, reason))
                rest = "/".join(parts[index + 1:])
                absolute = os.path.normpath(os.path.join(os.path.dirname(candidate), target))
                return self._resolve(os.path.join(absolute, rest) if rest else absolute,
                                     reason, depth + 1)
            current = candidate
        return current


def plan_view(inputs: ViewInputs) -> ViewPlan:
    """The view of one plugin's sandbox; see the module doc for what goes in it."""
    builder = _Builder()
    builder.add(Mount(MountKind.TMPFS, "/", reason="empty root", size=1024 * 1024))
    builder.add(Mount(MountKind.PROC, "/proc", reason="the sandbox's own processes"))
    builder.add(Mount(MountKind.DEV, "/dev", reason="minimal devices"))
    builder.add(Mount(MountKind.TMPFS, "/dev/shm", reason="shared memory, size-capped",
                      size=inputs.shm_bytes))
    builder.add(Mount(MountKind.REMOUNT_RO, "/dev", reason="devices read-only after set-up"))
    builder.add(Mount(MountKind.TMPFS, "/tmp", reason="temporary files, size-capped",
                      size=inputs.tmp_bytes))
    name = _account_name(inputs.plugin)
    builder.add(Mount(MountKind.DATA, "/etc/passwd", reason="synthetic account",
                      data=f"{name}:x:{inputs.uid}:{inputs.gid}::/nonexistent:"
                           "/usr/sbin/nologin\n"))
    builder.add(Mount(MountKind.DATA, "/etc/group", reason="synthetic group",
                      data=f"{name}:x:{inputs.gid}:\n"))
    runtime, runtime_notes = _runtime_mounts(inputs.python, inputs.package_dir,
                                             inputs.bytecode_dir)
    for mount in runtime:
        builder.add(mount)
    builder.notes += runtime_notes
    for path in inputs.import_roots:
        builder.expose(path, "plugin import root")
    if inputs.allow_subprocess:
        for path in (*_PROGRAM_DIRS, *_PROGRAM_FILES):
            builder.expose(path, "programs (subprocess granted)")
    if inputs.allow_network:
        for path in _NETWORK_FILES:
            builder.expose(path, "network configuration (network granted)")
    builder.writable = tuple(os.path.realpath(p) for p in (*inputs.data_dirs,
                                                           *inputs.write_paths))
    builder.expose(inputs.plugin_dir, "plugin code")
    for path in inputs.data_dirs:
        if not builder.expose(path, "plugin data", writable=True):
            builder.add(Mount(MountKind.BIND, path, path, "plugin data, created at start"))
    # Writes first: a path granted both ways is bound writable (the first bind of a
    # destination stands), and Landlock gives it read and write.
    for path in _sorted(inputs.write_paths):
        if not builder.expose(path, "granted file:write", writable=True):
            builder.notes.append(f"granted `{path}` does not exist: left out")
    for path in _sorted(inputs.read_paths):
        if not builder.expose(path, "granted file:read"):
            builder.notes.append(f"granted `{path}` does not exist: left out")
    for path in _sorted(inputs.throwaway):
        # Over the host's directory when it exists (its content is hidden, never changed).
        builder.add(Mount(MountKind.TMPFS, path, reason="audit: writes are thrown away",
                          size=inputs.throwaway_bytes))
    for path in inputs.masks:
        _mask(builder, path)
    return ViewPlan(inputs.plugin, _in_mount_order(builder.mounts), tuple(builder.notes))


@functools.cache
def _runtime_mounts(python: str, package_dir: str,
                    bytecode_dir: str = "") -> tuple[tuple[Mount, ...], tuple[str, ...]]:
    """The part of every view that depends only on the host: the interpreter, what it
    imports and loads, and the system data a Python program needs.

    Computed once per host process and interpreter (resolving each path component by
    component and reading this process's loaded libraries costs milliseconds on every cold
    start otherwise); a runtime changed under a running host needs a host restart anyway.
    """
    builder = _Builder()
    runtime = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
               python, os.path.realpath(python), package_dir, *worker_sys_path(python)]
    for path in runtime:
        builder.expose(path, "python runtime")
    if bytecode_dir:
        builder.expose(bytecode_dir, "bytecode of the worker's own modules")
    for path in (*_ELF_INTERPRETERS, *_library_dirs()):
        builder.expose(path, "system libraries")
    for path in _SYSTEM_FILES:
        builder.expose(path, "system libraries")
    for path in _ZONEINFO:
        builder.expose(path, "timezone data")
    for path in _ca_paths():
        builder.expose(path, "CA certificates")
    for path in _LOCALE:
        builder.expose(path, "locale data")
    return tuple(builder.mounts), tuple(builder.notes)


def _mask(builder: _Builder, path: str) -> None:
    """Cover a denied path that the view would show with an empty, unreadable mount."""
    shown = any(path == m.dest or path.startswith(m.dest.rstrip("/") + "/")
                for m in builder.mounts if m.kind in (MountKind.RO_BIND, MountKind.BIND))
    if not shown or not os.path.lexists(path):
        return  # outside the view (it does not exist there) or not there yet
    if os.path.isdir(path) and not os.path.islink(path):
        builder.mounts.append(Mount(MountKind.TMPFS, path, reason="denied: masked", size=4096,
                                    mode="0000"))
        builder.mounts.append(Mount(MountKind.REMOUNT_RO, path, reason="denied: masked"))
    else:
        builder.mounts.append(Mount(MountKind.DATA, path, reason="denied: masked", mode="0000"))


def _sorted(paths: Iterable[str]) -> list[str]:
    return sorted(dict.fromkeys(paths), key=lambda p: (p.count("/"), p))


def _in_mount_order(mounts: Sequence[Mount]) -> tuple[Mount, ...]:
    """Parents before children (a later mount over an ancestor would hide it), stable."""
    fixed = [m for m in mounts if m.kind in (MountKind.TMPFS, MountKind.PROC, MountKind.DEV,
                                               MountKind.REMOUNT_RO) and m.dest in
             ("/", "/proc", "/dev", "/dev/shm")]
    # Identity binds by destination: whether one is writable. (A set, not a scan of every
    # mount per mount: a glob grant can put a thousand binds in one view.)
    identity: dict[str, bool] = {}
    for m in mounts:
        if m.kind in (MountKind.RO_BIND, MountKind.BIND) and m.source == m.dest:
            identity[m.dest] = identity.get(m.dest, False) or m.kind is MountKind.BIND
    rest = [m for m in mounts if m not in fixed and not _shown_by_ancestor(m, identity)]
    rest.sort(key=lambda m: len([p for p in m.dest.split("/") if p]))
    return (*fixed, *rest)


def _shown_by_ancestor(mount: Mount, identity: dict[str, bool]) -> bool:
    """A bind or link inside an identical host tree bound at least as permissively is
    redundant (and a link there would collide with the one the tree already shows)."""
    if mount.kind not in (MountKind.RO_BIND, MountKind.BIND, MountKind.SYMLINK):
        return False
    path = mount.dest
    while path not in ("/", ""):
        path = os.path.dirname(path)
        writable = identity.get(path)
        if writable is not None and (writable or mount.kind is not MountKind.BIND):
            return True
    return False
