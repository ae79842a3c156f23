"""Benchmark of the wire's strict decoder: cost per frame against frame size.

Decodes ``result`` frames carrying lists of strings, from 100 bytes to 4 MB, and frames
built to be expensive (deep nesting refused, many small keys, long strings). Prints a
table: payload bytes, median and p99 microseconds, and nanoseconds per byte; the last
column stays flat when the cost is linear in the frame's bytes. A second table times the
value encoding of a result (``encode_value`` on the sending side, the whole strict decode
on the receiving side) against plain JSON for the same value, with the ratio. Run::

    python benchmarks/bench_wire.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from policy_engine.enforcement.wire import (
    Result,
    WireError,
    decode_worker_message,
    encode_frame,
)

QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): few rounds


def frames() -> list[tuple[str, bytes]]:
    """Named payloads of growing size and shape."""
    out = []
    for items in (4, 40, 400, 4_000, 40_000):
        out.append((f"list of {items} strings",
                    json.dumps({"op": "result", "value": ["abcdefgh"] * items}).encode()))
    out.append(("1 MB string", json.dumps({"op": "result", "value": "x" * 1_000_000}).encode()))
    out.append(("10,000 keys", json.dumps(
        {"op": "result", "value": {f"k{i}": i for i in range(9_999)}}).encode()))
    out.append(("deep nesting (refused)", b'{"op":"result","value":' + b"[" * 500_000 + b"]" * 500_000 + b"}"))
    out.append(("4 MB of numbers", json.dumps(
        {"op": "result", "value": list(range(600_000))}).encode()))
    return out


def measure(payload: bytes) -> list[float]:
    runs = 2 if QUICK else max(5, min(200, 2_000_000 // max(len(payload), 1)))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        try:
            decode_worker_message(payload)
        except WireError:
            pass
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    print(f"{'frame':<26} {'bytes':>10} {'median µs':>11} {'p99 µs':>10} {'ns/byte':>8}")
    for name, payload in frames():
        times = sorted(measure(payload))
        median = statistics.median(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{name:<26} {len(payload):>10} {median * 1e6:>11.1f} {p99 * 1e6:>10.1f} "
              f"{median * 1e9 / len(payload):>8.2f}")
    print()
    print(f"{'value (encode + decode)':<26} {'median µs':>11} {'p99 µs':>10} "
          f"{'json µs':>9} {'ratio':>6}")
    for name, value, plain in values():
        encoded = sorted(_round_trips(lambda v=value: decode_worker_message(  # type: ignore[misc]
            encode_frame(Result(v).encode())[4:])))
        baseline = sorted(_round_trips(lambda p=plain: json.loads(json.dumps(p))))
        median, base = statistics.median(encoded), statistics.median(baseline)
        p99 = encoded[min(len(encoded) - 1, int(len(encoded) * 0.99))]
        print(f"{name:<26} {median * 1e6:>11.1f} {p99 * 1e6:>10.1f} {base * 1e6:>9.1f} "
              f"{median / base:>6.2f}")


def values() -> list[tuple[str, object, object]]:
    """Named results, each with the nearest plain-JSON value as the baseline."""
    rows = [{"id": i, "name": f"row {i}", "score": i / 7} for i in range(200)]
    return [
        ("a short string", "hello", "hello"),
        ("200 rows of 3 fields", rows, rows),
        ("1,000 integers", list(range(1000)), list(range(1000))),
        ("1,000 tuples of 2", [(i, i) for i in range(1000)], [[i, i] for i in range(1000)]),
        ("500 KB of bytes", b"x" * 500_000, "x" * 666_668),
    ]


def _round_trips(run: object, count: int = 300) -> list[float]:
    count = 3 if QUICK else count
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main()
