"""The resource sampler: watches one worker's process tree about ten times a second.

Only an outside observer can enforce limits on a whole tree (resident memory summed over
all processes, CPU share over a window), so this runs in the host, in a thread per worker,
with psutil. Memory over the limit and CPU over the share (with ``on_violation=
"terminate"``) are reported to the supervisor through ``on_violation``, which kills the
worker; with ``"warn"`` the tree is throttled by a SIGSTOP/SIGCONT duty cycle instead.

Where the worker's cgroup holds a limit (:mod:`.cgroup`) the kernel enforces it and the
sampler only observes: memory is the cgroup's own count (``memory_probe``), and CPU is
throttled by the kernel's quota; with ``"terminate"`` a tree the kernel throttled in at
least half of the quota periods across the window is stopped (``cpu_periods``).
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable

import psutil

from ...errors import ResourceLimitError
from ...units import human_size
from .reaper import descendants
from .usage import ResourceLimits, ResourceUsage

__all__ = ["Sampler"]

log = logging.getLogger(__name__)

_MIN_DUTY = 0.05  # a throttled tree still runs 5% of the time, so it can finish eventually


class Sampler:
    """Samples the tree of ``pid``; see the module docstring."""

    def __init__(
        self,
        pid: int,
        *,
        plugin: str,
        limits: ResourceLimits,
        with_descendants: bool,
        on_violation: Callable[[ResourceLimitError], None],
        signal_tree: Callable[[int], None],
        reserved_bytes: int = 0,
        memory_probe: Callable[[], int | None] | None = None,
        cpu_periods: Callable[[], tuple[int, int] | None] | None = None,
        on_sample: Callable[[], None] | None = None,
    ) -> None:
        """``reserved_bytes`` is memory the sandbox can hold outside its processes' resident
        set (its size-capped tmpfs mounts): it counts toward the limit as if always full.
        ``memory_probe`` returns the memory a cgroup counts for the sandbox (then used
        instead of the resident set); ``cpu_periods`` the ``(periods, throttled)`` counters
        of a cgroup's CPU quota (then the kernel throttles, never the sampler); ``on_sample``
        runs after each sample while the worker lives (the supervisor's freeze check)."""
        self._pid = pid
        self._reserved = max(0, reserved_bytes)
        self._plugin = plugin
        self._limits = limits
        self._with_descendants = with_descendants
        self._on_violation = on_violation
        self._signal_tree = signal_tree
        self._memory_probe = memory_probe
        self._cpu_periods = cpu_periods
        self._on_sample = on_sample
        self._periods: collections.deque[tuple[float, int, int]] = collections.deque()
        self._quota_warned = False
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{plugin}-{pid}",
                                        daemon=True)
        self._processes: dict[int, psutil.Process] = {}
        self._window: collections.deque[tuple[float, float]] = collections.deque()
        self._usage = ResourceUsage()
        self._warned = False
        self._throttle = False
        self._duty = 1.0
        self._lock = threading.Lock()

    @property
    def usage(self) -> ResourceUsage:
        """The latest sample."""
        return self._usage

    def known_processes(self) -> list[psutil.Process]:
        """Descendants seen in the latest sample (used to chase them if the worker dies)."""
        with self._lock:
            return [p for pid, p in self._processes.items() if pid != self._pid]

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and resume a throttled tree."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.release_throttle()

    def release_throttle(self) -> None:
        """End throttling (at the end of each call) and make sure the tree runs."""
        if not self._throttle:
            return  # the common case, once per call: keep it cheap
        with self._lock:
            was = self._throttle
            self._throttle = False
            self._duty = 1.0
            self._window.clear()  # judge the next call afresh
        if was:
            self._signal_tree(signal.SIGCONT)

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self._limits.sample_interval
        try:
            while not self._stop.is_set():
                if self._throttle:
                    self._throttle_cycle(interval)
                elif self._stop.wait(interval):
                    break
                if not self._sample():
                    break
                if self._on_sample is not None:
                    self._on_sample()
        except Exception:  # never let a sampling bug take the host down; log it instead
            log.exception("resource sampler of plugin `%s` failed", self._plugin)

    def _throttle_cycle(self, interval: float) -> None:
        off = interval * (1.0 - self._duty)
        if off > 0:
            self._signal_tree(signal.SIGSTOP)
            self._stop.wait(off)
            self._signal_tree(signal.SIGCONT)
        self._stop.wait(interval * self._duty)

    def _sample(self) -> bool:
        """Take one sample and act on it; False once the worker is gone."""
        now = time.monotonic()
        pids = [self._pid, *(descendants(self._pid) if self._with_descendants else ())]
        rss = cpu = 0.0
        threads = fds = io_read = io_write = 0
        alive: dict[int, psutil.Process] = {}
        for pid in pids:
            process = self._processes.get(pid)
            try:
                if process is None:
                    process = psutil.Process(pid)
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                    cpu += times.user + times.system + times.children_user + times.children_system
                    threads += process.num_threads()
                    fds += process.num_fds()
                    try:
                        io = process.io_counters()
                        io_read += io.read_bytes
                        io_write += io.write_bytes
                    except (psutil.AccessDenied, AttributeError):
                        pass
            except psutil.NoSuchProcess:
                if pid == self._pid:
                    return False
                continue
            except psutil.Error:
                continue
            alive[pid] = process
        with self._lock:
            self._processes = alive
        counted = self._memory_probe() if self._memory_probe is not None else None
        if counted is not None:
            rss = float(counted)
        previous = self._usage
        cpu_percent = 0.0
        if self._window:
            last_time, last_cpu = self._window[-1]
            if now > last_time:
                cpu_percent = max(0.0, (cpu - last_cpu) / (now - last_time) * 100.0)
        self._window.append((now, cpu))
        self._usage = ResourceUsage(
            cpu_percent=cpu_percent,
            memory_bytes=int(rss),
            peak_memory_bytes=max(previous.peak_memory_bytes, int(rss)),
            io_read_bytes=io_read,
            io_write_bytes=io_write,
            threads=threads,
            open_files=fds,
            wall_time=now - self._started,
        )
        self._check_memory(int(rss))
        self._check_cpu(now, cpu)
        return True

    def _check_memory(self, resident: int) -> None:
        limit = self._limits.memory_bytes
        if limit <= 0:
            return
        rss = resident + (self._reserved if self._memory_probe is None else 0)
        if rss > limit:
            self._on_violation(ResourceLimitError(
                f"plugin `{self._plugin}` ran out of memory: it used {human_size(rss)} (peak), "
                f"over its limit of {human_size(limit)}, and was stopped"
                + (f" ({human_size(self._reserved)} of it the sandbox's tmpfs caps)"
                   if self._reserved else ""),
                plugin=self._plugin, resource="memory",
                limit=float(limit), used=float(rss)))
        elif rss > limit * self._limits.memory_warn_fraction and not self._warned:
            self._warned = True
            log.warning("plugin `%s` uses %s of memory, %.0f%% of its limit of %s",
                        self._plugin, human_size(rss), rss * 100.0 / limit, human_size(limit))

    def _check_cpu(self, now: float, cpu: float) -> None:
        if self._cpu_periods is not None:
            self._check_quota(now)
            return
        window = self._limits.cpu_window
        share = self._limits.cpu_share
        while len(self._window) > 2 and now - self._window[1][0] >= window:
            self._window.popleft()
        first_time, first_cpu = self._window[0]
        span = now - first_time
        if share <= 0 or span < window:
            return
        rate = (cpu - first_cpu) / span  # cores used on average over the window
        if rate <= share:
            return
        if self._limits.on_violation == "terminate":
            self._on_violation(ResourceLimitError(
                f"plugin `{self._plugin}` was stopped for CPU: it used {rate * 100:.0f}% of a "
                f"core for {span:.1f}s, over its share of {share * 100:g}%",
                plugin=self._plugin, resource="cpu",
                limit=share, used=rate))
            return
        with self._lock:
            if not self._throttle:
                log.warning("plugin `%s` used %.2f cores for %.1fs, over its share of %g; "
                            "throttling it", self._plugin, rate, span, share)
            self._throttle = True
            # The rate measured while throttled understates demand; scale from the current duty.
            demand = rate / self._duty if self._duty > 0 else rate
            self._duty = max(_MIN_DUTY, min(1.0, share / demand)) if demand > 0 else 1.0

    def _check_quota(self, now: float) -> None:
        """The kernel throttles at the share; with ``terminate``, a tree throttled in at least
        half of the periods over the window wanted more than its share all along."""
        assert self._cpu_periods is not None
        if self._limits.cpu_share <= 0:
            return
        counters = self._cpu_periods()
        if counters is None:
            return
        window = self._limits.cpu_window
        self._periods.append((now, *counters))
        while len(self._periods) > 2 and now - self._periods[1][0] >= window:
            self._periods.popleft()
        first_time, first_periods, first_throttled = self._periods[0]
        span = now - first_time
        periods, throttled = counters[0] - first_periods, counters[1] - first_throttled
        if span < window or periods <= 0 or throttled * 2 < periods:
            return
        share = self._limits.cpu_share
        if self._limits.on_violation != "terminate":
            if not self._quota_warned:
                self._quota_warned = True  # once: the kernel does the throttling
                log.warning("plugin `%s` wanted more than its share of %g of a core for "
                            "%.1fs; throttling it (the kernel's CPU quota)", self._plugin,
                            share, span)
            return
        self._on_violation(ResourceLimitError(
            f"plugin `{self._plugin}` was stopped for CPU: it wanted more than its share of "
            f"{share * 100:g}% of a core for {span:.1f}s (the kernel throttled it in "
            f"{throttled} of {periods} quota periods)",
            plugin=self._plugin, resource="cpu", limit=share, used=share))
