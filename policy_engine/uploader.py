"""The optional decision-log uploader: batches of decision events POSTed to a collector.

:class:`DecisionUploader` is a :mod:`logging` handler for
:class:`~policy_engine.decision_log.DecisionLogger`: each event goes into a bounded queue
(a full queue drops the event and counts it in :attr:`DecisionUploader.dropped`, which
``engine.status()`` reports with the logger's own drops), and one background thread POSTs
batches as a gzip-compressed JSON array (``Content-Type: application/json``,
``Content-Encoding: gzip``), as OPA's decision-log plugin does. A failed POST (a network
error or a status other than 2xx) is retried with exponential backoff up to
``max_backoff`` seconds; while it waits, new events queue up, and those that find the
queue full are dropped. ``urllib`` from the standard library sends; redirects are not
followed (a collector answers where it is asked).
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DecisionUploader"]

log = logging.getLogger("policy_engine")

_STOP = object()


def _post(url: str, body: bytes, timeout: float) -> None:
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"})
    opener = urllib.request.build_opener(NoRedirect())
    try:
        with opener.open(request, timeout=timeout) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} {exc.reason}") from None


class DecisionUploader(logging.Handler):
    """Batches decision events and POSTs them (gzip JSON array) to ``url``.

    ``batch_size`` events at most per POST; a partial batch is sent after ``flush_interval``
    seconds. ``queue_size`` bounds the events waiting; :attr:`dropped` counts those refused.
    ``sleep`` is injectable so that backoff is testable without waiting.
    """

    def __init__(self, url: str, *, batch_size: int = 500, flush_interval: float = 1.0,
                 queue_size: int = 10_000, timeout: float = 10.0, max_backoff: float = 60.0,
                 post: Callable[[str, bytes, float], None] = _post,
                 sleep: Callable[[float], Any] | None = None) -> None:
        super().__init__(logging.INFO)
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"collector url `{url}` is not http(s)")
        self.url = url
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.dropped = 0
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self._post = post
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._count_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="policy_engine-uploader", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the event of ``record`` (its ``msg``, a dict); never blocks."""
        try:
            self._queue.put_nowait(record.msg)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1

    def _next_batch(self) -> tuple[list[Any], bool]:
        batch: list[Any] = []
        stop = False
        deadline = time.monotonic() + self.flush_interval
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(0.0, remaining)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _send(self, batch: list[Any], *, final: bool) -> None:
        body = gzip.compress(json.dumps(batch, sort_keys=True, ensure_ascii=True, default=str).encode("ascii"),
                             mtime=0)
        delay = min(1.0, self.max_backoff)
        while True:
            try:
                self._post(self.url, body, self.timeout)
            except Exception as exc:  # noqa: BLE001 - a collector's failure never reaches decide
                self.failures += 1
                self.last_error = str(exc)
                if final or self._stopping.is_set():
                    with self._count_lock:
                        self.dropped += len(batch)
                    log.warning("decision uploader: %d events not delivered to %s: %s", len(batch), self.url, exc)
                    return
                self._sleep(delay)  # backoff; new events wait in the bounded queue
                delay = min(self.max_backoff, delay * 2)
                continue
            self.sent += len(batch)
            self.failures = 0
            return

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._send(batch, final=stop or self._stopping.is_set())
            if stop:
                return

    def close(self) -> None:
        """Send what is queued (one attempt) and stop the thread."""
        if self._thread.is_alive():
            self._stopping.set()
            self._queue.put(_STOP)
            self._thread.join(self.timeout + 5)
        super().close()
