"""The decision-log uploader: batches POSTed as gzip JSON arrays to a loopback collector,
a bounded queue whose drops reach ``engine.status()``, backoff after a failed POST."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.decision_log import DecisionLogger
from policy_engine.uploader import DecisionUploader

POLICY = 'allow plugin * to network:request on "*.example.com"\n'
MANIFEST = {"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "p:P",
            "permissions": ["network:request *.example.com"]}


class Collector(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.batches: list[list[dict[str, Any]]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.fail_next = 0
        self.got = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/logs"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.fail_next:
            self.server.fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        self.server.headers_seen.append(dict(self.headers))
        self.server.batches.append(json.loads(gzip.decompress(body)))
        self.send_response(204)
        self.end_headers()
        self.server.got.set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_events_are_batched_and_posted_as_gzip_json(collector: Collector) -> None:
    uploader = DecisionUploader(collector.url, batch_size=2, flush_interval=0.05)
    log = DecisionLogger([uploader])
    engine = Engine.from_source(POLICY, [MANIFEST], decision_log=log)
    for host in ("a", "b", "c"):
        engine.decide("p", "network:request", f"{host}.example.com:443")
    log.close()
    uploader.close()
    events = [e for batch in collector.batches for e in batch]
    assert [e["input"]["resource"] for e in events] == ["a.example.com:443", "b.example.com:443",
                                                        "c.example.com:443"]
    assert all(len(batch) <= 2 for batch in collector.batches) and len(collector.batches) >= 2
    assert all("decision_id" in e and e["result"]["allowed"] for e in events)
    assert collector.headers_seen[0]["Content-Encoding"] == "gzip"
    assert uploader.sent == 3 and uploader.dropped == 0 and engine.status().dropped_log_events == 0


def test_a_failed_post_backs_off_and_is_retried(collector: Collector) -> None:
    collector.fail_next = 2
    delays: list[float] = []
    uploader = DecisionUploader(collector.url, batch_size=10, flush_interval=0.01, max_backoff=8,
                                sleep=delays.append)
    log = DecisionLogger([uploader])
    Engine.from_source(POLICY, [MANIFEST], decision_log=log).decide("p", "network:request", "a.example.com:1")
    assert collector.got.wait(10)
    log.close()
    uploader.close()
    assert delays == [1.0, 2.0] and uploader.sent == 1 and "503" in (uploader.last_error or "")


def test_a_full_queue_drops_and_status_counts_it(collector: Collector) -> None:
    release = threading.Event()

    def stuck(url: str, body: bytes, timeout: float) -> None:
        release.wait(10)

    uploader = DecisionUploader(collector.url, batch_size=1, flush_interval=0.01, queue_size=2, post=stuck)
    log = DecisionLogger([uploader])
    engine = Engine.from_source(POLICY, [MANIFEST], decision_log=log)
    for n in range(20):
        engine.decide("p", "network:request", f"h{n}.example.com:1")
    log.close()  # every event has reached the uploader's queue (or been dropped there)
    dropped = engine.status().dropped_log_events
    release.set()
    uploader.close()
    assert dropped >= 20 - 2 - 1  # queue of 2, one batch in flight
    assert uploader.sent + uploader.dropped == 20


def test_the_collector_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="not http"):
        DecisionUploader("file:///etc/passwd")
