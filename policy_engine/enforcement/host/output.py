"""A worker's standard output and error, captured into its plugin's logger, bounded.

A worker never writes onto the host's own stdout or stderr: its descriptors 1 and 2 are the
write ends of two pipes whose read ends only the host holds (:class:`OutputCapture`). A
thread of the host reads them and logs each line to ``policy_engine.plugins.<name>``
(standard output at INFO, standard error at WARNING), marked ``[stdout]`` / ``[stderr]``,
clipped to :data:`LINE_CHARS` characters with control characters escaped, so a plugin can
neither flood the host's log nor write escape sequences into an administrator's terminal.

Bounds (:class:`OutputLimits`): at most ``call_bytes`` are logged per call (what follows is
read, counted and dropped, and one line says how much), and the host reads at most
``rate_bytes`` a second with a burst of ``burst_bytes``: past that it stops reading, the pipe
fills and the plugin's writes block, on the plugin's own time (its call's deadline still
runs). At the end of a call what the worker flushed before answering is read at once, so
its lines are logged before the call returns.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from dataclasses import dataclass

__all__ = ["LINE_CHARS", "OutputCapture", "OutputLimits"]

#: The most characters of one line that are logged.
LINE_CHARS = 1000
_READ_CHUNK = 64 * 1024
_POLL_MS = 200
# What a drain at the end of a call reads at most (a pipe holds 1 MiB at the very most).
_DRAIN_BYTES = 2 * 1024 * 1024
_STREAMS = (("stdout", logging.INFO), ("stderr", logging.WARNING))
# Control characters other than tab, and DEL, are shown escaped: no terminal sequences.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F) if code != 0x09}


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """How much of a worker's output the host reads and logs."""

    call_bytes: int = 64 * 1024
    rate_bytes: int = 4 * 1024 * 1024
    burst_bytes: int = 4 * 1024 * 1024


class _Stream:
    """One pipe's read end and its unfinished line."""

    def __init__(self, name: str, level: int, fd: int) -> None:
        self.name = name
        self.level = level
        self.fd = fd
        self.pending = bytearray()
        self.open = True


class OutputCapture:
    """The pipes of one worker's descriptors 1 and 2 and the thread that logs them.

    Make one before spawning, hand :attr:`stdout` and :attr:`stderr` to the child, then call
    :meth:`started` (closes the host's copies of the write ends and starts reading).
    :meth:`begin_call` and :meth:`end_call` bracket each call; :meth:`close` ends it all.
    """

    def __init__(self, plugin: str, limits: OutputLimits | None = None) -> None:
        self.plugin = plugin
        self.limits = limits or OutputLimits()
        self.logger = logging.getLogger(f"policy_engine.plugins.{plugin}")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._streams: list[_Stream] = []
        self._write_ends: list[int] = []
        for name, level in _STREAMS:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(read_end, False)
            self._streams.append(_Stream(name, level, read_end))
            self._write_ends.append(write_end)
        self._logged = 0  # bytes logged since the call began
        self._dropped = 0  # bytes read and dropped since the call began
        self._tokens = float(self.limits.burst_bytes)
        self._refilled = time.monotonic()
        self._thread: threading.Thread | None = None
        self._last_error = ""  # the latest line on stderr, as logged
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    @property
    def stdout(self) -> int:
        """The write end the worker gets as descriptor 1."""
        return self._write_ends[0]

    @property
    def stderr(self) -> int:
        """The write end the worker gets as descriptor 2."""
        return self._write_ends[1]

    def started(self) -> None:
        """The child holds the write ends now: close the host's and start reading."""
        self._close_write_ends()
        self._thread = threading.Thread(target=self._serve, name=f"output-{self.plugin}",
                                        daemon=True)
        self._thread.start()

    def begin_call(self) -> None:
        """A call starts: its own budget of logged bytes."""
        with self._lock:
            self._logged = 0
            self._dropped = 0

    def end_call(self) -> None:
        """A call ended: log what the worker wrote before answering, and what was dropped."""
        with self._lock:
            for stream in self._streams:
                self._read(stream, _DRAIN_BYTES)
                self._flush_pending(stream)
            if self._dropped:
                self.logger.warning("[output] %s bytes of the plugin's output were dropped "
                                    "(at most %s bytes are logged per call)",
                                    f"{self._dropped:,}", f"{self.limits.call_bytes:,}")
                self._dropped = 0

    def last_error_line(self) -> str:
        """The latest line the worker wrote on stderr (clipped and escaped), after reading
        what is waiting; empty if none. For the message of a worker that died."""
        with self._lock:
            stderr = self._streams[1]
            if stderr.open:
                self._read(stderr, _DRAIN_BYTES)
                self._flush_pending(stderr)
            return self._last_error

    def close(self) -> None:
        """Stop reading and close every descriptor (safe to call repeatedly)."""
        self._close_write_ends()
        self._stop.set()
        if self._wake_write >= 0:
            try:
                os.write(self._wake_write, b"x")  # out of poll at once
            except OSError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        with self._lock:
            for stream in self._streams:
                if stream.open:
                    self._flush_pending(stream)
                    stream.open = False
                    os.close(stream.fd)
            if thread is None or not thread.is_alive():
                for fd in (self._wake_read, self._wake_write):
                    if fd >= 0:
                        os.close(fd)
                self._wake_read = self._wake_write = -1

    # -- the reading thread -----------------------------------------------------------------

    def _serve(self) -> None:
        poller = select.poll()
        for stream in self._streams:
            poller.register(stream.fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                live = [stream for stream in self._streams if stream.open]
            if not live:
                return
            wait = self._wait_for_tokens()
            if wait > 0:
                self._stop.wait(wait)  # over the rate: let the pipe fill, the writer wait
                continue
            events = poller.poll(_POLL_MS)
            if not events:
                continue
            with self._lock:
                for fd, _event in events:
                    if fd == self._wake_read:
                        continue
                    found = next((s for s in self._streams if s.fd == fd and s.open), None)
                    if found is None:
                        poller.unregister(fd)
                        continue
                    if not self._read(found, _READ_CHUNK):  # end of stream
                        self._flush_pending(found)
                        poller.unregister(fd)
                        found.open = False
                        os.close(found.fd)

    def _wait_for_tokens(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._tokens = min(float(self.limits.burst_bytes),
                               self._tokens + (now - self._refilled) * self.limits.rate_bytes)
            self._refilled = now
            if self._tokens > 0:
                return 0.0
            return min(-self._tokens / self.limits.rate_bytes + 0.001, 1.0)

    # -- under the lock ---------------------------------------------------------------------

    def _read(self, stream: _Stream, budget: int) -> bool:
        """Read up to ``budget`` bytes of ``stream``; False at end of stream."""
        while budget > 0 and stream.open:
            try:
                data = os.read(stream.fd, min(_READ_CHUNK, budget))
            except BlockingIOError:
                return True
            except OSError as error:
                if error.errno == errno.EINTR:
                    continue
                return False
            if not data:
                return False
            budget -= len(data)
            self._tokens -= len(data)
            self._take(stream, data)
        return True

    def _take(self, stream: _Stream, data: bytes) -> None:
        room = self.limits.call_bytes - self._logged
        if room <= 0:
            self._dropped += len(data)
            return
        kept, dropped = data[:room], data[room:]
        self._logged += len(kept)
        self._dropped += len(dropped)
        stream.pending += kept
        *lines, rest = bytes(stream.pending).split(b"\n")
        stream.pending = bytearray(rest)
        for line in lines:
            self._log(stream, line)
        if len(stream.pending) > 4 * LINE_CHARS:  # a line without end: log it in pieces
            self._log(stream, bytes(stream.pending))
            stream.pending.clear()

    def _flush_pending(self, stream: _Stream) -> None:
        if stream.pending:
            self._log(stream, bytes(stream.pending))
            stream.pending.clear()

    def _log(self, stream: _Stream, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r").translate(_ESCAPES)
        if len(text) > LINE_CHARS:
            text = f"{text[:LINE_CHARS]}... [{len(text) - LINE_CHARS:,} more characters]"
        self.logger.log(stream.level, "[%s] %s", stream.name, text)
        if stream.name == "stderr" and text.strip():
            self._last_error = text[:200]

    def _close_write_ends(self) -> None:
        ends, self._write_ends = self._write_ends, []
        for fd in ends:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:  # the host must not leak descriptors if close() was missed
        try:
            self._close_write_ends()
        except Exception:
            pass
