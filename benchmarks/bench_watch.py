"""Benchmark: what watching costs, per poll and per ``decide``.

A policy directory and a plugins directory of ``PLUGINS`` plugins (one of them pinned).
Measures one ``engine.poll()`` with nothing changed, without and with ``plugins=True``
(the change detector reads every manifest and hashes the pinned plugin's files), and
``decide`` with no watch, with ``watch(0.01)`` and with ``watch(0.01, plugins=True)``
running beside it. Run::

    python benchmarks/bench_watch.py

Prints median and p99 in microseconds and the ratio to the baseline.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from policy_engine import Engine
from policy_engine.digest import plugin_digest, trust_line

QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): tiny counts, one round
PLUGINS = 10 if QUICK else 200
ROUNDS = 200 if QUICK else 20_000
POLLS = 5 if QUICK else 200


def _tree(root: Path) -> tuple[Path, Path]:
    plugins = root / "plugins"
    for n in range(PLUGINS):
        directory = plugins / f"p{n}"
        directory.mkdir(parents=True)
        (directory / "plugin.yaml").write_text(
            f"name: p{n}\nversion: 1.0.0\ntype: agent\nentry_point: m:P\npermissions: [file:read /data/**]\n")
        (directory / "m.py").write_text("class P: pass\n" * 50)
    policies = root / "policies"
    policies.mkdir()
    (policies / "site.policy").write_text(
        'allow plugin * to file:read on "/data/**"\n'
        + trust_line("p0", plugin_digest(plugins / "p0")) + "\n")
    return policies, plugins


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99)]


def _time(call: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policies, plugins = _tree(Path(tmp))
        engine = Engine.load(policies, plugins)
        print(f"one poll with nothing changed ({PLUGINS} plugins, 1 pinned), microseconds:")
        base = None
        for label, plugins_too in (("policy directory", False), ("plus plugin directories", True)):
            if plugins_too:
                engine.watch(3600, plugins=True).stop()  # adopt the state to compare with
            median, p99 = _stats(_time(lambda p=plugins_too: engine.poll(plugins=p), POLLS))
            base = base or median
            print(f"  {label:26} median {median:9.1f}  p99 {p99:9.1f}  ratio {median / base:5.2f}")
        print("decide (cached), microseconds:")
        base = None
        for label, options in (("no watch", None), ("watch(0.01)", False), ("watch(0.01, plugins)", True)):
            handle = engine.watch(0.01, plugins=options) if options is not None else None
            median, p99 = _stats(_time(lambda: engine.decide("p1", "file:read", "/data/x"), ROUNDS))
            if handle is not None:
                handle.stop()
            base = base or median
            print(f"  {label:26} median {median:9.2f}  p99 {p99:9.2f}  ratio {median / base:5.2f}")


if __name__ == "__main__":
    main()
