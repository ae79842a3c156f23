"""Benchmark of ``Engine.decide``: compile time, uncached and cached latency, memory.

Workload (fixed seed): N plugins, each with about six allow rules over path, host and name
patterns (some with context conditions), plus global deny rules; requests mix granted,
denied, near-miss, traversal and unknown-plugin cases. Run::

    python benchmarks/bench_decide.py            # 100 and 2,000 plugins
    python benchmarks/bench_decide.py --plugins 100 500

Prints a table: per scale, rules, compile seconds, decide median and p99 (uncached and
cached) in microseconds, memory of the engine, and the 2,000/100 uncached ratio.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from typing import Any

from policy_engine import Engine
from policy_engine.manifest import manifest_from_mapping

SEED = 20261128
GLOBAL_RULES = """
deny plugin * to file:* on "/etc/**", "{home}/.ssh/**", "/root/**"
deny plugin * to network:request on "*.evil.test", "169.254.169.254"
deny plugin * to subprocess:execute unless plugin.trusted
allow plugin * to hook:register on "core.*"
"""


def workload(plugins: int) -> tuple[str, list[Any], list[tuple[str, str, str | None, dict[str, str] | None]]]:
    """Policy text, manifests and requests for ``plugins`` plugins."""
    rng = random.Random(SEED)
    lines = [GLOBAL_RULES]
    manifests = []
    for i in range(plugins):
        name = f"plugin-{i:05d}"
        lines += [
            f'allow plugin "{name}" to file:read on "/srv/plugins/{name}/**", "/srv/shared/{i % 50}/*.csv"',
            f'allow plugin "{name}" to file:write, file:delete on "{{data_dir}}/{name}/**"',
            f'allow plugin "{name}" to network:request on "api{i}.example.com:443", "*.svc{i % 20}.example.com"',
            f'allow plugin "{name}" to database:read on "db{i}.*"',
            f'allow plugin "{name}" to config:read on "plugins.{name}.*"',
            f'allow plugin "{name}" to hook:register on "events.{i}.*"'
            + (' when context.env == "prod"' if i % 5 == 0 else ""),
        ]
        if i % 3 == 0:
            lines.append(f'deny plugin "{name}" to database:read on "db{i}.secret*"')
        manifests.append(manifest_from_mapping({
            "name": name, "version": f"1.{i % 7}.0", "type": rng.choice(["agent", "workflow", "hook"]),
            "entry_point": "p:P",
            "permissions": [
                "file:read /srv/**", "file:write {data_dir}/" + name + "/**", "file:delete",
                "network:request", f"database:read db{i}.*", "config:read", "hook:register",
            ],
        }, file=f"{name}.yaml", plugin_path=_path(f"/srv/plugins/{name}")))
    requests: list[tuple[str, str, str | None, dict[str, str] | None]] = []
    for _ in range(5000):
        i = rng.randrange(plugins)
        name = f"plugin-{i:05d}"
        requests.append(rng.choice([
            (name, "file:read", f"/srv/plugins/{name}/data/{rng.randrange(99)}.csv", None),
            (name, "file:read", f"/srv/shared/{i % 50}/x.csv", None),
            (name, "file:read", f"/srv/plugins/{name}/../../../etc/passwd", None),
            (name, "file:read", f"/srv/plugins/{name}x/secret", None),
            (name, "file:write", f"/var/lib/app/{name}/out/{rng.randrange(9)}.json", None),
            (name, "network:request", f"api{i}.example.com:443", None),
            (name, "network:request", f"api{i}.example.com:80", None),
            (name, "network:request", f"https://a.svc{i % 20}.example.com/x", None),
            (name, "network:request", "x.evil.test:443", None),
            (name, "database:read", f"db{i}.table{rng.randrange(9)}", None),
            (name, "database:read", f"db{i}.secret_keys", None),
            (name, "config:read", f"plugins.{name}.level", None),
            (name, "hook:register", f"events.{i}.created", {"env": "prod"}),
            (name, "hook:register", "core.started", None),
            (f"ghost-{i}", "file:read", "/srv/x", None),
        ]))
    return "\n".join(lines), manifests, requests


def _path(text: str) -> Any:
    from pathlib import Path

    return Path(text)


def measure(plugins: int) -> dict[str, float]:
    """Build and time one scale."""
    policy, manifests, requests = workload(plugins)
    variables = {"data_dir": "/var/lib/app", "home": "/home/app"}
    gc.collect()
    started = time.perf_counter()
    engine = Engine.from_source(policy, manifests, variables, cache_size=0)
    compile_s = time.perf_counter() - started  # parse + compile + one table per plugin
    # Memory is measured in a second build: tracing allocations slows the build severalfold.
    tracemalloc.start()
    traced = Engine.from_source(policy, manifests, variables, cache_size=0)
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del traced
    cached = Engine.from_source(policy, manifests, variables, cache_size=len(requests) * 2)
    rules = len(engine.policy.rules)
    uncached_us = _latencies(engine, requests)
    for request in requests:  # warm the cache
        cached.decide(*request)
    cached_us = _latencies(cached, requests)
    return {
        "plugins": plugins,
        "rules": rules,
        "compile_s": compile_s,
        "uncached_median": statistics.median(uncached_us),
        "uncached_p99": _p99(uncached_us),
        "cached_median": statistics.median(cached_us),
        "cached_p99": _p99(cached_us),
        "memory_mb": memory / 1e6,
    }


def _latencies(engine: Engine, requests: list[Any], repeat: int = 20) -> list[float]:
    out = []
    decide = engine.decide
    gc.disable()
    try:
        for plugin, action, resource, context in requests:
            started = time.perf_counter_ns()
            for _ in range(repeat):
                decide(plugin, action, resource, context)
            out.append((time.perf_counter_ns() - started) / repeat / 1000)
    finally:
        gc.enable()
    return out


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", type=int, nargs="+", default=[100, 2000])
    args = parser.parse_args()
    results = [measure(n) for n in args.plugins]
    header = (f"{'plugins':>8} {'rules':>7} {'compile s':>10} {'uncached med µs':>16} {'p99 µs':>8} "
              f"{'cached med µs':>14} {'p99 µs':>8} {'memory MB':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['plugins']:>8.0f} {r['rules']:>7.0f} {r['compile_s']:>10.2f} {r['uncached_median']:>16.2f} "
              f"{r['uncached_p99']:>8.2f} {r['cached_median']:>14.2f} {r['cached_p99']:>8.2f} {r['memory_mb']:>10.1f}")
    if len(results) >= 2:
        ratio = results[-1]["uncached_median"] / results[0]["uncached_median"]
        print(f"\nuncached median ratio {results[-1]['plugins']:.0f}/{results[0]['plugins']:.0f} plugins: {ratio:.2f}x")


if __name__ == "__main__":
    main()
