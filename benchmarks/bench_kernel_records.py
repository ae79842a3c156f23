"""Benchmark of the kernel records (the worker's seccomp listener served by the host).

Each sample is one call to a warm worker that opens and closes a file ``OPENS`` times
(half of them a plugin data file the policy grants, half an implicit runtime file), with
the listener on and off, interleaved in one run; the added cost per open is the
difference of the medians divided by ``OPENS``. Also the cold start of a worker (load and
initialise the plugin) with and without the listener.

Run: ``python benchmarks/bench_kernel_records.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from policy_engine import Engine
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox

QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): tiny counts, one round
OPENS = 20 if QUICK else 200
ROUNDS = 2 if QUICK else 30
COLD = 1 if QUICK else 8

PLUGIN = '''
import os
from policy_engine.plugin_api import BaseWorkflowPlugin

class Bench(BaseWorkflowPlugin):
    def execute(self):
        return "ok"

    def opens(self, count):
        data = os.path.join(str(self.ctx.data_dir), "f.txt")
        with open(data, "w") as handle:
            handle.write("x")
        runtime = os.__file__
        for index in range(count):
            with open(data if index % 2 else runtime, "rb"):
                pass
        return count
'''
MANIFEST = """name: bench
version: 0.1.0
type: workflow
entry_point: bench:Bench
permissions:
  - file:read {data_dir}/bench/**
  - file:write {data_dir}/bench/**
timeouts: {execute: 30s, init: 30s}
"""
POLICY = """
defaults { isolation process allow degraded }
allow plugin * to file:read, file:write on "{data_dir}/{plugin}/**"
"""


def _setup(root: Path) -> Engine:
    plugin = root / "plugins" / "bench"
    plugin.mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(MANIFEST)
    (plugin / "bench.py").write_text(PLUGIN)
    (root / "data").mkdir()
    (root / "site.policy").write_text(POLICY)
    return Engine.load(root / "site.policy", plugins=root / "plugins",
                       variables={"data_dir": str(root / "data")})


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = _setup(root)
        loaders = {}
        for on in (True, False):
            box = PluginSandbox(engine, data_dir=root / "data", scratch_root=root,
                                kernel_records=on)
            loaders[on] = PluginLoader(engine, box)
        plugins = {on: loader.load(root / "plugins" / "bench") for on, loader in loaders.items()}
        calls: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(ROUNDS):
            for on in (True, False):
                started = time.perf_counter()
                plugins[on].opens(OPENS)
                calls[on].append(time.perf_counter() - started)
        cold: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(COLD):
            for on, loader in loaders.items():
                loader.unload("bench")
                started = time.perf_counter()
                loader.load(root / "plugins" / "bench")
                cold[on].append(time.perf_counter() - started)
        for loader in loaders.values():
            loader.close()
    print(f"{'measure':<48} {'median':>10} {'p99':>10}")
    for on in (True, False):
        label = f"call with {OPENS} opens, listener {'on' if on else 'off'}"
        print(f"{label:<48} {statistics.median(calls[on]) * 1e3:>8.2f}ms "
              f"{_p99(calls[on]) * 1e3:>8.2f}ms")
    for on in (True, False):
        label = f"cold start, listener {'on' if on else 'off'}"
        print(f"{label:<48} {statistics.median(cold[on]) * 1e3:>8.1f}ms "
              f"{_p99(cold[on]) * 1e3:>8.1f}ms")
    added = (statistics.median(calls[True]) - statistics.median(calls[False])) / OPENS
    ratio = statistics.median(calls[True]) / statistics.median(calls[False])
    print(f"added per open: {added * 1e6:.1f} us (ratio {ratio:.2f}); cold start ratio "
          f"{statistics.median(cold[True]) / statistics.median(cold[False]):.2f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    raise SystemExit(main())
