"""Find, freeze and kill every process a worker left behind.

``killpg`` misses a daemon: a double fork plus ``setsid`` leaves the process group and the
session. The worker is therefore a child subreaper: orphans of its tree are re-parented to
it instead of to init, so walking the worker's children finds them all. The walk and the
kill are separated by a freeze (SIGSTOP, repeated until no new process appears and every
one is stopped), so nothing can fork its way out between being seen and being killed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import psutil

__all__ = ["child_pids", "descendants", "freeze", "gone", "kill_frozen", "signal_all", "stopped"]

_MAX_ROUNDS = 200  # a fork bomb gets frozen within a few rounds; this only bounds the loop
_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's), without scanning all of /proc."""
    if not _PROC_CHILDREN:
        try:
            return [child.pid for child in psutil.Process(pid).children()]
        except psutil.Error:
            return []
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as children:
                pids.extend(int(word) for word in children.read().split())
        except (OSError, ValueError):
            continue
    return pids


_DEAD = frozenset({b"Z", b"X"})
_HALTED = frozenset({b"T", b"t"}) | _DEAD


def _state(stat_path: str) -> bytes | None:
    """The state letter in a ``/proc`` ``stat`` file, or None when it cannot be read (the
    process or thread is gone). Raw reads, no text wrapper: the freeze runs on a call's
    path."""
    try:
        fd = os.open(stat_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 1024)
        finally:
            os.close(fd)
        return data.rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return None


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie, dead, or not there at all)."""
    state = _state(f"/proc/{pid}/stat")
    return state is None or state in _DEAD


def stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (or the process is gone). A process is
    only frozen once each of its threads is: a thread still running can send the process
    SIGCONT and end a group stop that is not complete yet."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        state = _state(f"/proc/{pid}/task/{tid}/stat")
        if state is not None and state not in _HALTED:  # None: the thread ended
            return False
    return True


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    found: list[int] = []
    seen = {pid}
    queue = [pid]
    while queue:
        for child in child_pids(queue.pop(0)):
            if child not in seen:
                seen.add(child)
                found.append(child)
                queue.append(child)
    return found


def freeze(roots: Iterable[int], known: Iterable[psutil.Process] = ()) -> dict[int, psutil.Process]:
    """SIGSTOP every descendant of ``roots`` (and every ``known`` process) until stable.

    The roots themselves are not signalled (the caller owns them). Returns the frozen
    processes; psutil checks each one's start time before signalling, so a recycled pid
    is never hit.
    """
    root_list = list(roots)
    frozen: dict[int, psutil.Process] = {}
    for process in known:
        try:
            _stop(process, frozen)
        except psutil.Error:  # gone since it was seen
            continue
    for _ in range(_MAX_ROUNDS):
        grew = False
        for pid in _walk([*root_list, *frozen]):
            if pid not in frozen:
                try:
                    _stop(psutil.Process(pid), frozen)
                    grew = True
                except psutil.Error:
                    continue
        running = _running_ones(frozen.values())
        if not grew and not running:
            break
        # One not yet frozen may have sent SIGCONT to one already frozen: stop it again.
        # The loop ends once no process runs, and a stopped process cannot wake another.
        for process in running:
            try:
                process.send_signal(signal.SIGSTOP)
            except psutil.Error:
                continue
        if not grew:
            time.sleep(0.0005)  # SIGSTOP is delivered asynchronously; give it a moment
    return frozen


def kill_frozen(processes: Iterable[psutil.Process], *, wait: float = 1.0) -> list[int]:
    """SIGKILL each process and wait up to ``wait`` seconds until all are dead.

    Stopped processes die of SIGKILL without being resumed. A zombie counts as dead: it
    runs nothing, and its parent (or init) reaps it. Returns the pids still alive.
    """
    victims = list(processes)
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    deadline = time.monotonic() + wait
    while True:
        alive = [process for process in victims if _running(process)]
        if not alive or time.monotonic() >= deadline:
            return [process.pid for process in alive]
        time.sleep(0.001)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def signal_all(processes: Iterable[psutil.Process], signum: int) -> None:
    """Send ``signum`` to each process that still exists."""
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            continue


def _stop(process: psutil.Process, frozen: dict[int, psutil.Process]) -> None:
    process.send_signal(signal.SIGSTOP)
    frozen[process.pid] = process


def _walk(roots: Iterable[int]) -> list[int]:
    pids: list[int] = []
    seen: set[int] = set()
    for root in roots:
        for pid in descendants(root):
            if pid not in seen:
                seen.add(pid)
                pids.append(pid)
    return pids


def _running_ones(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes not (yet) stopped."""
    return [process for process in processes if not stopped(process.pid)]
