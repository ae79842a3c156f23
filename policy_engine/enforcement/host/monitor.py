"""ResourceMonitor: the seed's start / get_usage / check_limits API over the samples the
workers' supervisors take (psutil, about 10 Hz, over each worker's whole process tree).

The supervisor is what acts on a limit (a warning log at the warn threshold, then kill or
throttle as the policy says). This monitor is the host's view: the latest sample and peak
per plugin, and a limit check that logs a warning at the threshold.

"Sustained" CPU: the supervisor compares the tree's CPU time over a sliding window of 2 s
with the plugin's share (``limit cpu``, a fraction of one core); a short burst over the
share is fine, a window over it is a violation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ...settings import Limits
from ...units import human_size
from .usage import ResourceUsage

__all__ = ["ResourceMonitor"]

log = logging.getLogger(__name__)


class ResourceMonitor:
    """Tracks the resource usage of running plugins."""

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], ResourceUsage]] = {}
        self._peaks: dict[str, ResourceUsage] = {}
        self._lock = threading.Lock()

    def start_monitoring(self, plugin: str, source: Callable[[], ResourceUsage]) -> None:
        """Follow ``plugin``; ``source()`` returns its latest sample (a runner's ``usage``)."""
        with self._lock:
            self._sources[plugin] = source

    def stop_monitoring(self, plugin: str) -> ResourceUsage:
        """Stop following ``plugin`` and return its last sample (with the peak memory seen)."""
        last = self.get_usage(plugin)
        with self._lock:
            self._sources.pop(plugin, None)
        return last

    def get_usage(self, plugin: str) -> ResourceUsage:
        """The latest sample of ``plugin`` (zeros when it is not followed)."""
        with self._lock:
            source = self._sources.get(plugin)
            peak = self._peaks.get(plugin)
        if source is None:
            return peak or ResourceUsage()
        usage = source()
        if peak is not None and peak.peak_memory_bytes > usage.peak_memory_bytes:
            usage = ResourceUsage(
                cpu_percent=usage.cpu_percent, memory_bytes=usage.memory_bytes,
                peak_memory_bytes=peak.peak_memory_bytes, io_read_bytes=usage.io_read_bytes,
                io_write_bytes=usage.io_write_bytes, threads=usage.threads,
                open_files=usage.open_files, wall_time=usage.wall_time,
            )
        with self._lock:
            self._peaks[plugin] = usage
        return usage

    def check_limits(self, plugin: str, limits: Limits) -> bool:
        """False when the latest sample is over a limit; logs a warning at the memory warn
        threshold and at each violation."""
        usage = self.get_usage(plugin)
        ok = True
        if usage.memory_bytes >= limits.memory:
            log.warning("plugin `%s` uses %s of memory, over its limit of %s",
                        plugin, human_size(usage.memory_bytes), human_size(limits.memory))
            ok = False
        elif usage.memory_bytes >= limits.memory * limits.memory_warn:
            log.warning("plugin `%s` uses %s of memory, past %d%% of its limit",
                        plugin, human_size(usage.memory_bytes), round(limits.memory_warn * 100))
        if usage.cpu_percent > limits.cpu * 100:
            log.warning("plugin `%s` uses %.0f%% CPU, over its share of %.0f%%",
                        plugin, usage.cpu_percent, limits.cpu * 100)
            ok = False
        return ok
