"""``limit disk``: the plugin's data directory on a filesystem of its own, capped by the kernel.

The data directory is the mount point of an ext4 image file made for the plugin (bytes: the
image's size; files: its inode count), loop-mounted ``nosuid,nodev,noexec`` in the host's
mount namespace before the worker starts and kept mounted while the host runs. A write past
either cap fails in the kernel with ``ENOSPC``, inside the sandbox and without it, whatever
route the plugin takes (no counting in the worker). The image persists next to the data
directory (``<data_dir>.disk``, root's, mode 0600), so the data survives worker restarts and
host restarts; it is checked with ``e2fsck -p`` before each mount.

Why this and not the others: a tmpfs with ``size=``/``nr_inodes=`` loses the data with the
mount; project quotas need a filesystem mounted with them (and ext4's ``quota`` feature or
XFS), which the host does not choose; ``RLIMIT_FSIZE`` limits one file, not the total. A
loop device needs root, so a non-root host has no disk limit (the loader refuses a plugin
with one unless its policy says ``accept missing-disk-limit``).

What the caps mean exactly: the filesystem's own metadata is inside the image, so a little
less than the size is usable; the file count is rounded to whole inode-table blocks (a few
more or fewer) and counts directories too.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass

from ...errors import EnforcementError
from ...risks import MISSING_DISK_LIMIT
from ...settings import Effective, Isolation

__all__ = ["DEFAULT_FILES", "DiskLimit", "available", "disk_limit_refusal", "image_path",
           "mount_data_dir", "unmount_data_dir"]

#: The file count of an image when the policy sets bytes only: ext4's default is one inode
#: per 16 KiB (at least 16), enough for any honest use of the size.
DEFAULT_FILES = 0
#: Inodes ext4 keeps for itself (1-10; lost+found is removed after the first mount).
_RESERVED_INODES = 10
_MIN_BYTES = 1024 * 1024
_TOOL_TIMEOUT = 60.0
_DETACH_WAIT = 5.0  # seconds a detached image may take to be released by the kernel
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class DiskLimit:
    """The caps of one plugin's data directory: bytes, and files (0: ext4's default)."""

    bytes: int
    files: int = DEFAULT_FILES


def image_path(data_dir: str) -> str:
    """Where the image of ``data_dir`` is kept: beside it, never inside the plugin's view."""
    return os.path.normpath(data_dir) + ".disk"


@functools.cache
def available() -> str:
    """Empty when this host can hold a disk limit, else why not (naming what is missing)."""
    if os.geteuid() != 0:
        return "a disk limit needs a root host (it loop-mounts an image as the data directory)"
    missing = [tool for tool in ("mkfs.ext4", "e2fsck", "mount", "umount")
               if _tool(tool) is None]
    if missing:
        return ("a disk limit needs " + ", ".join(f"`{t}`" for t in missing) +
                " (Debian/Ubuntu: `apt-get install e2fsprogs mount`)")
    if not os.path.exists("/dev/loop-control"):
        return "a disk limit needs loop devices (`/dev/loop-control` is missing: `modprobe loop`)"
    try:
        with open("/proc/filesystems") as known:
            if "ext4" not in known.read().split():
                return "a disk limit needs the kernel's ext4 filesystem"
    except OSError as error:
        return f"cannot read the kernel's filesystems: {error}"
    return ""


def disk_limit_refusal(effective: Effective, plugin: str) -> str | None:
    """Why ``plugin``'s ``limit disk`` (in its resolved settings ``effective``) cannot be
    held here (and the policy does not accept that), or None."""
    limits = effective.limits
    if not limits.disk and not limits.disk_files:
        return None
    if MISSING_DISK_LIMIT in effective.accepted_risks:
        return None
    accept = (f"or add `accept {MISSING_DISK_LIMIT}` to its `plugin \"{plugin}\"` block "
              "(the data directory is then not limited)")
    if not limits.disk:
        return f"`limit disk_files` needs a `limit disk` for plugin `{plugin}`; add one, {accept}"
    if limits.isolation is not Isolation.PROCESS:
        return (f"`limit disk` holds only in `isolation process`, and plugin `{plugin}` runs "
                f"in `{limits.isolation.value}`; {accept}")
    if limits.disk < _MIN_BYTES:
        return f"`limit disk` must be at least 1MiB for plugin `{plugin}`"
    why = available()
    if why:
        return f"the kernel cannot hold `limit disk` of plugin `{plugin}` here: {why}; {accept}"
    return None


def mount_data_dir(data_dir: str, limit: DiskLimit, uid: int, gid: int) -> str:
    """Make ``data_dir`` the mount point of its capped image (creating the image on first
    use), owned by ``uid``/``gid`` with mode 0700; returns the image's path.

    Idempotent: a directory already mounted from its own image is left as it is. Refuses
    (:class:`EnforcementError`) a directory that holds files before its image exists (they
    would be hidden under the mount), an image of another size than the policy's, and
    anything else mounted there. (A changed file count is not checked: it is fixed when the
    image is made.)
    """
    why = available()
    if why:
        raise EnforcementError(why)
    data_dir = os.path.realpath(data_dir)
    image = image_path(data_dir)
    with _lock:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        mounted = _mounted_from(data_dir)
        if mounted is None:
            if not os.path.exists(image):
                _create(image, data_dir, limit)
            _check_size(image, limit)
            # Still alive elsewhere (a sandbox's mount namespace is torn down after its
            # processes): a second loop device on the same image would corrupt it.
            _wait_detached(image)
            _run("e2fsck", "-p", image)
            _run("mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noexec", image, data_dir)
            mounted = _mounted_from(data_dir)
        if mounted is None or not _same_file(mounted, image):
            raise EnforcementError(f"`{data_dir}` is a mount point of `{mounted}`, not of its "
                                   f"disk image `{image}`; unmount it")
        lost = os.path.join(data_dir, "lost+found")
        if os.path.isdir(lost) and not os.path.islink(lost) and not os.listdir(lost):
            os.rmdir(lost)  # one more file for the plugin; e2fsck makes it again when needed
        os.chown(data_dir, uid, gid)
        os.chmod(data_dir, 0o700)
    return image


def unmount_data_dir(data_dir: str) -> None:
    """Detach ``data_dir``'s image, when it is mounted there (the data stays in the image)."""
    data_dir = os.path.realpath(data_dir)
    with _lock:
        if _mounted_from(data_dir) is not None:
            _run("umount", "--lazy", data_dir)


def _create(image: str, data_dir: str, limit: DiskLimit) -> None:
    if os.listdir(data_dir):
        raise EnforcementError(f"the data directory `{data_dir}` already holds files and has no "
                               f"disk image yet; move them out (the image `{image}` would hide "
                               "them), then start the plugin again")
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # Reserved up front: a full host disk must not turn the plugin's writes into I/O errors.
        os.posix_fallocate(fd, 0, limit.bytes)
    except OSError as error:
        os.close(fd)
        os.unlink(image)
        raise EnforcementError(f"cannot reserve {limit.bytes} bytes for `{image}`: {error}") \
            from error
    os.close(fd)
    options = ["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "nodiscard"]
    if limit.files:
        options += ["-N", str(limit.files + _RESERVED_INODES)]
    try:
        _run("mkfs.ext4", *options, image)
    except EnforcementError:
        os.unlink(image)
        raise


def _check_size(image: str, limit: DiskLimit) -> None:
    size = os.stat(image).st_size
    if size != limit.bytes:
        raise EnforcementError(f"the disk image `{image}` holds {size} bytes and the policy says "
                               f"{limit.bytes}; resize it (`e2fsck -f`, `resize2fs`) or move its "
                               "data out and remove it")


def _wait_detached(image: str, seconds: float = _DETACH_WAIT) -> None:
    deadline = time.monotonic() + seconds
    while _attached(image):
        if time.monotonic() > deadline:
            raise EnforcementError(f"the disk image `{image}` is still in use by a loop device "
                                   "(mounted elsewhere?); unmount it")
        time.sleep(0.01)


def _attached(image: str) -> bool:
    """Whether a loop device is backed by ``image``."""
    try:
        devices = os.listdir("/sys/block")
    except OSError:
        return False
    for device in devices:
        if not device.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{device}/loop/backing_file") as backing:
                if _same_file(backing.read().strip(), image):
                    return True
        except OSError:
            continue
    return False


def _mounted_from(mount_point: str) -> str | None:
    """The source of the mount at ``mount_point`` (its loop device's backing file), or None."""
    try:
        with open("/proc/self/mountinfo") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    source = None
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == mount_point:
            dash = fields.index("-")
            source = _unescape(fields[dash + 2])  # the last mount on the point is the one seen
    if source is None:
        return None
    device = os.path.basename(source)
    backing = f"/sys/block/{device}/loop/backing_file"
    if device.startswith("loop") and os.path.exists(backing):
        with open(backing) as handle:
            return handle.read().strip()
    return source


def _same_file(a: str, b: str) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return stat.S_ISREG(second.st_mode) and (first.st_dev, first.st_ino) == \
        (second.st_dev, second.st_ino)


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


@functools.cache
def _tool(name: str) -> str | None:
    return shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _run(name: str, *args: str) -> None:
    tool = _tool(name)
    if tool is None:
        raise EnforcementError(f"`{name}` is not installed")
    try:
        result = subprocess.run([tool, *args], capture_output=True, text=True,
                                timeout=_TOOL_TIMEOUT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except (OSError, subprocess.SubprocessError) as error:
        raise EnforcementError(f"`{name}` failed: {error}") from error
    # e2fsck -p: 1 means errors were corrected, which is fine to mount.
    if result.returncode != 0 and not (name == "e2fsck" and result.returncode == 1):
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or \
            [f"status {result.returncode}"]
        raise EnforcementError(f"`{name} {' '.join(args)}` failed: {detail[0]}")
