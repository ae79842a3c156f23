"""Benchmark of the wire's strict decoder: cost per frame against frame size.

Decodes ``result`` frames carrying lists of strings, from 100 bytes to 4 MB, and frames
built to be expensive (deep nesting refused, many small keys, long strings). Prints a
table: payload bytes, median and p99 microseconds, and nanoseconds per byte; the last
column stays flat when the cost is linear in the frame's bytes. Run::

    python benchmarks/bench_wire.py
"""

from __future__ import annotations

import json
import statistics
import time

from policy_engine.enforcement.wire import WireError, decode_worker_message


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
    runs = max(5, min(200, 2_000_000 // max(len(payload), 1)))
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


if __name__ == "__main__":
    main()
