"""What a plugin worker may use and what it is using: plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["OnViolation", "ResourceLimits", "ResourceUsage"]

#: What the supervisor does when a worker uses more CPU than its share.
OnViolation = Literal["terminate", "warn"]


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    """One sample of a worker and all its descendants, taken by the supervisor."""

    cpu_percent: float = 0.0  # over the last sampling interval; 100.0 = one full core
    memory_bytes: int = 0  # resident set size of the whole process tree
    peak_memory_bytes: int = 0  # highest memory_bytes seen since the worker started
    io_read_bytes: int = 0  # bytes the tree read from storage since the worker started
    io_write_bytes: int = 0
    threads: int = 0
    open_files: int = 0  # open file descriptors of the tree, sockets and pipes included
    wall_time: float = 0.0  # seconds since the worker started


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Host-side limits the supervisor's sampler enforces while the worker runs.

    The kernel-side limits (rlimits) are in :class:`~.lockdown.LockdownSpec`; these are
    the ones only an outside observer can enforce: memory of the whole tree, CPU share
    over a window, and the wall-clock time of the worker's start-up.
    """

    memory_bytes: int = 512 * 1024 * 1024
    memory_warn_fraction: float = 0.8  # one warning log when the tree passes this fraction
    cpu_share: float = 0.8  # fraction of one core the tree may use over ``cpu_window``
    cpu_window: float = 2.0  # seconds; short bursts above the share are fine
    on_violation: OnViolation = "terminate"
    init_timeout: float = 10.0  # seconds for start-up, lockdown, import and initialize()
    sample_interval: float = 0.1
    #: ``limit disk``: bytes and files of the data directory, held by the kernel (a capped
    #: filesystem image, :mod:`.disk`); 0 is no limit. Host-side only: not in the init frame.
    disk_bytes: int = 0
    disk_files: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict, for the init frame."""
        return {
            "memory_bytes": self.memory_bytes,
            "memory_warn_fraction": self.memory_warn_fraction,
            "cpu_share": self.cpu_share,
            "cpu_window": self.cpu_window,
            "on_violation": self.on_violation,
            "init_timeout": self.init_timeout,
            "sample_interval": self.sample_interval,
        }
