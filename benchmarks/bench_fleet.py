"""Benchmark: time from publishing a revision to three watching hosts deciding by it.

Runs the fleet of ``tests/test_fleet.py`` (a loopback HTTP server, three host processes
watching a signed bundle) and publishes ROUNDS new revisions. Run from the repository root::

    python benchmarks/bench_fleet.py [--interval 0.2] [--rounds 10]

Prints median, p99 and max seconds until all three hosts decide by the new revision, and the
ratio of the median to the watch interval.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy_engine import bundle as B  # noqa: E402
from tests import test_fleet  # noqa: E402
from tests.test_lifecycle import V1, V2, Server, publish  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="a smoke run: two rounds")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 2
    test_fleet.INTERVAL = args.interval
    tmp = Path(tempfile.mkdtemp())
    keys = tmp / "keys"
    keys.mkdir()
    B.generate_key_pair(keys / "site")
    server = Server()
    fleet = test_fleet.Fleet(server, keys, tmp)
    try:
        publish(server, keys, V1, 1)
        for index in range(3):
            fleet.start(index)
        fleet.wait_all(lambda r: r["serial"] == 1)
        samples = []
        for round_ in range(args.rounds):
            serial = round_ + 2
            text = V2 if serial % 2 == 0 else V1
            publish(server, keys, text, serial)
            samples.append(fleet.wait_all(lambda r, s=serial: r["serial"] == s))
    finally:
        for index in list(fleet.hosts):
            fleet.stop(index)
        server.stop()
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(samples)
    print(f"{'interval s':>10} {'rounds':>6} {'median s':>9} {'p99 s':>7} {'max s':>7} {'median/interval':>16}")
    print(f"{args.interval:10.2f} {args.rounds:6d} {median:9.3f} {p99:7.3f} {max(samples):7.3f} "
          f"{median / args.interval:16.2f}")


if __name__ == "__main__":
    main()
