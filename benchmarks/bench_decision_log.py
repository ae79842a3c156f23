"""Benchmark: what a decision log adds to ``Engine.decide``.

Cached and uncached decisions of one small policy, with no log, with the flat
``DecisionLog`` to a file, and with ``DecisionLogger`` (decision events through a logging
logger over a bounded queue, written by a ``FileHandler`` on the listener thread). Run::

    python benchmarks/bench_decision_log.py

Prints median and p99 per decision in microseconds and the ratio to no log.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from policy_engine import Engine
from policy_engine.decision_log import DecisionLog, DecisionLogger

POLICY = 'allow plugin * to network:request on "*.example.com"\ndeny plugin * to network:request on "*.evil.test"\n'
MANIFEST = {"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "p:P",
            "permissions": ["network:request *.example.com", "network:request *.evil.test"]}
REQUESTS = [("p", "network:request", f"h{i % 50}.example.com:443") for i in range(200)]
QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): tiny counts, one round
ROUNDS = 200 if QUICK else 20_000


def measure(engine: Engine) -> list[float]:
    samples = []
    for i in range(ROUNDS):
        request = REQUESTS[i % len(REQUESTS)]
        start = time.perf_counter_ns()
        engine.decide(*request)
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def main() -> None:
    directory = tempfile.mkdtemp()
    rows: list[tuple[str, float, float]] = []
    setups: list[tuple[str, Callable[[], tuple[object, Callable[[], None]]]]] = []

    def none() -> tuple[object, Callable[[], None]]:
        return None, lambda: None

    def flat() -> tuple[object, Callable[[], None]]:
        log = DecisionLog(os.path.join(directory, "flat.jsonl"))
        return log, log.close

    def events() -> tuple[object, Callable[[], None]]:
        log = DecisionLogger([logging.FileHandler(os.path.join(directory, "events.jsonl"))],
                             queue_size=100_000)
        return log, log.close

    setups = [("no log", none), ("DecisionLog (file)", flat), ("DecisionLogger (queue + file)", events)]
    for cache in (4096, 0):
        for name, make in setups:
            log, close = make()
            engine = Engine.from_source(POLICY, [MANIFEST], cache_size=cache, decision_log=log)  # type: ignore[arg-type]
            samples = measure(engine)
            close()
            dropped = getattr(log, "dropped", 0)
            label = f"{name}, {'cached' if cache else 'uncached'}" + (f", {dropped} dropped" if dropped else "")
            rows.append((label, statistics.median(samples), statistics.quantiles(samples, n=100)[98]))
    print(f"{'setup':52} {'median µs':>10} {'p99 µs':>10} {'ratio':>7}")
    for index, (label, median, p99) in enumerate(rows):
        base = rows[0 if index < 3 else 3][1]
        print(f"{label:52} {median:10.2f} {p99:10.2f} {median / base:7.1f}")


if __name__ == "__main__":
    main()
