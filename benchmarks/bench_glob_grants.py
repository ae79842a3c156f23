"""Benchmark of glob grants: the cold start of a sandboxed worker whose grant expands into
``N`` files (each a bind of its own and a Landlock rule), against the same directory granted
whole (``/dir/**``, one bind). Each sample starts a worker and reads one granted file.

Run: ``python benchmarks/bench_glob_grants.py [COUNT ...]`` (where bubblewrap works).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from policy_engine import Engine
from policy_engine.enforcement.host import bwrap
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.spec import lockdown_spec
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.globs import MAX_MATCHES

QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): tiny counts, one round
COUNTS = tuple(int(n) for n in sys.argv[1:] if n != "--quick") or (  # or the counts given
    (4,) if QUICK else (16, 256, MAX_MATCHES))
ROUNDS = 1 if QUICK else 5
PLUGIN = '''
class Plugin:
    def read(self, path):
        with open(path) as handle:
            return handle.read()
'''
ROOT = Path(__file__).resolve().parents[1]


def _start_times(base: Path, count: int, pattern: str) -> list[float]:
    files = base / f"srv{count}"
    files.mkdir()
    for index in range(count):
        (files / f"f{index:05d}.csv").write_text("x")
    plugin = base / "plugins" / "bench"
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "bench.py").write_text(PLUGIN)
    (plugin / "plugin.yaml").write_text(
        "name: bench\nversion: 1.0.0\ntype: agent\nentry_point: bench:Plugin\n"
        f"permissions:\n  - file:read {files}/**\n")
    policy = base / f"site{count}{len(pattern)}.policy"
    policy.write_text(f'allow plugin "bench" to file:read on "{files}/{pattern}"\n')
    engine = Engine.load([str(ROOT / "policies"), str(policy)], plugins=base / "plugins",
                         variables={"data_dir": str(base / "data")})
    table = engine.plugin_table("bench")
    assert table is not None
    times = []
    for round_ in range(ROUNDS):
        scratch = base / f"scratch-{count}-{len(pattern)}-{round_}"
        scratch.mkdir()
        (base / "data").mkdir(exist_ok=True)
        started = time.perf_counter()
        spec = lockdown_spec(table, scratch, data_dir=str(base / "data"))
        init = WorkerInit(plugin="bench", plugin_dir=str(plugin), entry_point="bench:Plugin",
                          lockdown=replace(spec, audit_hook=False), checker={"allow": []},
                          data_dir=str(base / "data"),
                          limits=ResourceLimits(memory_bytes=256 * 1024 * 1024))
        worker = WorkerProcess(sandbox=True, identities=IdentityMap(
            base / "ids.json", first=0x5E400000, count=1024))
        try:
            worker.start(init)
            worker.call("read", [str(files / "f00000.csv")], timeout=60)
            times.append(time.perf_counter() - started)
        finally:
            worker.stop()
    return times


def main() -> int:
    problem = bwrap.available()
    if problem:
        print(f"bubblewrap does not work here: {problem}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        print(f"{'files':>6} {'grant':>8} {'median s':>9} {'p99 s':>7} {'ratio':>6}")
        for count in COUNTS:
            (base / f"w{count}").mkdir()
            (base / f"g{count}").mkdir()
            whole = _start_times(base / f"w{count}", count, "**")
            globbed = _start_times(base / f"g{count}", count, "*.csv")
            ratio = statistics.median(globbed) / statistics.median(whole)
            for name, times in (("/**", whole), ("*.csv", globbed)):
                p99 = sorted(times)[min(len(times) - 1, int(len(times) * 0.99))]
                print(f"{count:>6} {name:>8} {statistics.median(times):>9.3f} {p99:>7.3f} "
                      f"{ratio if name != '/**' else 1.0:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
