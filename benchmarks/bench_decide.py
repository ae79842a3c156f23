"""Benchmark of ``Engine.decide`` and ``Engine.load`` against the reference procedure.

Workload (fixed seed): N plugins, each with about six allow rules over path, host and name
patterns (every fifth with a context condition), one deny in three, plus global deny rules;
the requests mix granted, denied, near-miss, ``..`` traversal, unknown-plugin, long-path
(up to 4 KiB), IPv6, URL and context-condition cases. Resources longer than 4 KiB, which are
denied as ``resource_too_long`` without matching, are timed as a class of their own.

Every latency is one ``decide`` call timed alone, with the garbage collector on, after a
warm-up pass; five runs; the median and p99 are the medians of the runs' medians and p99s,
and the max is the median of the five runs' maxima. Each call is timed by two reads of
``time.perf_counter_ns`` around it; the median of an empty interval timed the same way (the
clock's own cost, about 0.05 µs) is measured once and subtracted from every figure, and
printed. ``--classes`` adds the uncached figures of each class of request. The slowest of
the first 5,000 calls after a build is timed for an engine with its default cache, built
with ``freeze_collector`` on and off (one run each: it is a few events, not a distribution),
with the collections that ran in those calls (``gc.callbacks``): the records made on each
plugin's first requests and the decisions the cache keeps are new objects, which the young
generations' collections scan. ``reference`` is the decision procedure kept in
``tests/reference.py`` (the engine before its fast paths), timed in the same run on the same
table, so the ratios hold when the machine's speed drifts. ``constant work (the floor)`` is
a call that does the same work every time, as long as the engine's median, timed the same
way on the same requests: its p99 and max are what the machine adds to a call of that length
(interruptions of the process), the floor under the engine's. Memory per plugin is the
resident-memory growth of a fresh process divided by the plugin count. Load is
``Engine.load`` of a directory of policy files and ``plugin.yaml`` files; reload is
``Engine.reload`` after one policy file or one manifest changed, as a share of a full load.
Run::

    python benchmarks/bench_decide.py                    # 100, 2,000 and 10,000 plugins
    python benchmarks/bench_decide.py --plugins 100 2000
    python benchmarks/bench_decide.py --quick            # a smoke test: tiny, one run
    python benchmarks/bench_decide.py --plugins 2000 --classes   # and each class of request
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policy_engine import Engine  # noqa: E402
from policy_engine.manifest import manifest_from_mapping  # noqa: E402
from tests.reference import reference_decide  # noqa: E402

SEED = 20261128
VARIABLES = {"data_dir": "/var/lib/app", "home": "/home/app"}
GLOBAL_RULES = """
deny plugin * to file:* on "/etc/**", "{home}/.ssh/**", "/root/**"
deny plugin * to network:request on "*.evil.test", "169.254.169.254", "[fd00::1]"
deny plugin * to subprocess:execute unless plugin.trusted
allow plugin * to hook:register on "core.*"
"""
Request = tuple[str, str, "str | None", "dict[str, str] | None"]


def policy_lines(i: int) -> list[str]:
    """The rules of plugin number ``i``."""
    name = f"plugin-{i:05d}"
    lines = [
        f'allow plugin "{name}" to file:read on "/srv/plugins/{name}/**", "/srv/shared/{i % 50}/*.csv"',
        f'allow plugin "{name}" to file:write, file:delete on "{{data_dir}}/{name}/**"',
        f'allow plugin "{name}" to network:request on "api{i}.example.com:443", "*.svc{i % 20}.example.com",'
        f' "[2001:db8::{i:x}]:443"',
        f'allow plugin "{name}" to database:read on "db{i}.*"',
        f'allow plugin "{name}" to config:read on "plugins.{name}.*"',
        f'allow plugin "{name}" to hook:register on "events.{i}.*"'
        + (' when context.env == "prod"' if i % 5 == 0 else ""),
    ]
    if i % 3 == 0:
        lines.append(f'deny plugin "{name}" to database:read on "db{i}.secret*"')
    return lines


def manifest_data(i: int, rng: random.Random) -> dict[str, Any]:
    """The manifest of plugin number ``i``."""
    name = f"plugin-{i:05d}"
    return {
        "name": name, "version": f"1.{i % 7}.0", "type": rng.choice(["agent", "workflow", "hook"]),
        "entry_point": "p:P",
        "permissions": [
            "file:read /srv/**", "file:write {data_dir}/" + name + "/**", "file:delete",
            "network:request", f"database:read db{i}.*", "config:read", "hook:register",
        ],
    }


def requests_for(plugins: int, count: int, rng: random.Random) -> list[Request]:
    """The mixed workload: every resource at most 4 KiB."""
    return [request for _, request in labelled_requests(plugins, count, rng)]


def labelled_requests(plugins: int, count: int, rng: random.Random) -> list[tuple[str, Request]]:
    """The mixed workload, each request with the name of its class (``--classes``)."""
    out: list[tuple[str, Request]] = []
    for _ in range(count):
        i = rng.randrange(plugins)
        name = f"plugin-{i:05d}"
        deep = "/".join(f"d{rng.randrange(99)}" for _ in range(rng.randrange(50, 900)))[:3900]
        out.append(rng.choice([
            ("read, granted", (name, "file:read", f"/srv/plugins/{name}/data/{rng.randrange(99)}.csv", None)),
            ("read, shared glob", (name, "file:read", f"/srv/shared/{i % 50}/x.csv", None)),
            ("read, .. traversal", (name, "file:read", f"/srv/plugins/{name}/../../../etc/passwd", None)),
            ("read, near miss", (name, "file:read", f"/srv/plugins/{name}x/secret", None)),
            ("read, long path", (name, "file:read", f"/srv/plugins/{name}/{deep}", None)),
            ("read, long path and ..", (name, "file:read", f"/srv/plugins/{name}/{deep}/../../../../../../../etc/shadow",
                                        None)),
            ("write, granted", (name, "file:write", f"/var/lib/app/{name}/out/{rng.randrange(9)}.json", None)),
            ("network, granted", (name, "network:request", f"api{i}.example.com:443", None)),
            ("network, wrong port", (name, "network:request", f"api{i}.example.com:80", None)),
            ("network, URL", (name, "network:request", f"https://a.svc{i % 20}.example.com/x?q={rng.randrange(99)}",
                              None)),
            ("network, IPv6", (name, "network:request", f"[2001:db8::{i:x}]:443", None)),
            ("network, IPv6 denied", (name, "network:request", "[fd00::1]:443", None)),
            ("network, denied", (name, "network:request", "x.evil.test:443", None)),
            ("database, granted", (name, "database:read", f"db{i}.table{rng.randrange(9)}", None)),
            ("database, denied", (name, "database:read", f"db{i}.secret_keys", None)),
            ("config, granted", (name, "config:read", f"plugins.{name}.level", None)),
            ("hook, context holds", (name, "hook:register", f"events.{i}.created", {"env": "prod"})),
            ("hook, context fails", (name, "hook:register", f"events.{i}.created", {"env": "dev"})),
            ("hook, wildcard rule", (name, "hook:register", "core.started", None)),
            ("unknown plugin", (f"ghost-{i}", "file:read", "/srv/x", None)),
            ("unknown, near name", (f"plugin-{i:05d}x", "file:read", f"/srv/plugins/{name}/a", None)),
        ]))
    return out


def workload(plugins: int, count: int = 20000, files: int = 20,
             labels: list[str] | None = None) -> tuple[dict[str, str], list[Any], list[Request]]:
    """Policy files (``{name: text}``, each under the policy file size cap), manifests and
    requests for ``plugins`` plugins; ``labels``, when given, receives each request's class."""
    rng = random.Random(SEED)
    chunks: list[list[str]] = [[] for _ in range(files)]
    chunks[0].append(GLOBAL_RULES)
    manifests = []
    for i in range(plugins):
        chunks[i % files].extend(policy_lines(i))
        manifests.append(manifest_from_mapping(
            manifest_data(i, rng), file=f"plugin-{i:05d}.yaml", plugin_path=Path(f"/srv/plugins/plugin-{i:05d}")))
    policy = {f"part{index:02d}.policy": "\n".join(chunk) + "\n" for index, chunk in enumerate(chunks)}
    labelled = labelled_requests(plugins, count, rng)
    if labels is not None:
        labels.extend(label for label, _ in labelled)
    return policy, manifests, [request for _, request in labelled]


def special_requests(plugins: int, count: int) -> dict[str, list[Request]]:
    """Classes timed on their own: unknown plugins and resources over 4 KiB."""
    rng = random.Random(SEED + 1)
    long_tail = "/".join("x" * 60 for _ in range(80))  # about 4.9 KiB
    unknown = [(f"plugin-{rng.randrange(plugins):05d}{rng.choice('xyz')}", "file:read", "/srv/x", None)
               for _ in range(count)]
    unknown += [(f"q{rng.randrange(10**6)}", "file:read", "/srv/x", None) for _ in range(count)]
    too_long = [(f"plugin-{rng.randrange(plugins):05d}", "file:read", f"/srv/plugins/{long_tail}", None)
                for _ in range(count)]
    too_long += [(f"plugin-{rng.randrange(plugins):05d}", "database:read", "db." + "*a" * 40000, None)
                 for _ in range(count // 10)]
    return {"unknown plugin": unknown, "resource > 4 KiB": too_long}


# ----------------------------------------------------------------------------- timing


def one_run(decide: Callable[..., Any], requests: Sequence[Request]) -> list[float]:
    """Microseconds per request, each call timed alone (GC on)."""
    clock = time.perf_counter_ns
    out = []
    for plugin, action, resource, context in requests:
        started = clock()
        decide(plugin, action, resource, context)
        out.append((clock() - started) / 1000)
    return out


def timer_overhead(samples: int = 20000) -> float:
    """The median of an empty interval timed as ``one_run`` times a call (µs): the cost of
    reading the clock, which every figure then has subtracted."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(samples):
        started = clock()
        out.append((clock() - started) / 1000)
    return statistics.median(out)


#: Set by ``main``: the timer overhead subtracted from every figure.
OVERHEAD = 0.0


def summarise(runs: list[list[float]]) -> dict[str, float]:
    """Median of medians, of p99s, and of maxima, less the timer overhead."""
    return {
        "median": max(0.0, statistics.median(statistics.median(r) for r in runs) - OVERHEAD),
        "p99": max(0.0, statistics.median(_p99(r) for r in runs) - OVERHEAD),
        "max": max(0.0, statistics.median(max(r) for r in runs) - OVERHEAD),
    }


def timed(decide: Callable[..., Any], requests: Sequence[Request], runs: int,
          labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Warm up, then ``runs`` timed runs; with ``labels``, also the figures of each class."""
    one_run(decide, requests)
    all_runs = [one_run(decide, requests) for _ in range(runs)]
    result: dict[str, Any] = summarise(all_runs)
    if labels is not None:
        classes: dict[str, list[list[float]]] = {}
        for run in all_runs:
            per: dict[str, list[float]] = {}
            for label, value in zip(labels, run, strict=True):
                per.setdefault(label, []).append(value)
            for label, values in per.items():
                classes.setdefault(label, []).append(values)
        result["classes"] = {label: summarise(values) for label, values in classes.items()}
    return result


@contextlib.contextmanager
def collections_seen() -> Iterator[dict[int, list[float]]]:
    """The collector's runs while the block runs: each generation's durations (µs)."""
    seen: dict[int, list[float]] = {}
    started: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter_ns())
        elif started:
            seen.setdefault(info["generation"], []).append((time.perf_counter_ns() - started.pop()) / 1000)

    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)


def _shown(seen: dict[int, list[float]]) -> str:
    """``collections_seen``'s findings in a few words."""
    if not seen:
        return "none"
    names = {0: "youngest", 1: "middle", 2: "full"}
    return ", ".join(f"{len(runs)} of the {names.get(generation, generation)} generation (longest {max(runs):.0f} µs)"
                     for generation, runs in sorted(seen.items()))


def constant_work(median_us: float, requests: Sequence[Request]) -> Callable[..., None]:
    """A call that does the same work every time, as long as a call of median ``median_us``
    (µs): timed as ``decide`` is, on the same requests, its p99 and max are what the machine
    adds to a call of that length (the process interrupted, descheduled, its caches
    flushed), the floor under the engine's."""
    def spinning(turns: int) -> Callable[..., None]:
        def call(plugin: str, action: str, resource: str | None, context: Any) -> None:
            for _ in range(turns):
                pass
        return call

    turns = 100
    for _ in range(3):  # scaled until its median is the engine's (the loop's cost is linear)
        # The quietest of three medians, timed as `timed` times it: one taken while the
        # machine stalls would make the call short.
        took = min(statistics.median(one_run(spinning(turns), requests[:2000])) for _ in range(3)) - OVERHEAD
        turns = max(1, round(turns * median_us / max(took, 1e-3)))
    return spinning(turns)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def measure(plugins: int, count: int, runs: int, classes: bool = False) -> dict[str, Any]:
    """Decide latencies at one scale, engine and reference side by side."""
    labels: list[str] = []
    policy, manifests, requests = workload(plugins, count, labels=labels)
    gc.collect()
    started = time.perf_counter()
    engine = Engine.from_source(policy, manifests, VARIABLES, cache_size=0)
    from_source_s = time.perf_counter() - started
    cached = Engine.from_source(policy, manifests, VARIABLES, cache_size=len(requests) * 2)
    table = engine._state.table  # the reference decides from the same table

    def reference(plugin: str, action: str, resource: str | None, context: Any) -> Any:
        return reference_decide(table, plugin, action, resource, context)

    for request in requests:  # the reference is the judge: the benchmark checks its answers
        got, want = engine.decide(*request), reference(*request)
        if (got.allowed, got.reason, got.rules) != (want.allowed, want.reason, want.rules):
            raise SystemExit(f"engine and reference disagree on {request}: {got} != {want}")
    result: dict[str, Any] = {
        "plugins": plugins,
        "rules": len(engine.policy.rules),
        "from_source_s": from_source_s,
        "engine": timed(engine.decide, requests, runs, labels if classes else None),
        "reference": timed(reference, requests, runs),
        "cached": timed(cached.decide, requests, runs),
    }
    result["constant work"] = timed(constant_work(result["engine"]["median"], requests), requests, runs)
    for label, special in special_requests(plugins, max(20, count // 20)).items():
        result[label] = timed(engine.decide, special, runs)
        result[label + " (reference)"] = timed(reference, special, runs)
    # The first calls after a build, with and without the collector frozen by it: a build's
    # objects are otherwise scanned by the next collections, in whichever call comes next.
    # The engine has its default cache, as in use: the decisions it keeps are what makes
    # the collector run (an uncached call frees what it allocates).
    for freeze in (False, True):
        del engine
        gc.collect()
        engine = Engine.from_source(policy, manifests, VARIABLES, freeze_collector=freeze)
        with collections_seen() as seen:
            result[f"after build, frozen={freeze}"] = max(0.0, max(one_run(engine.decide, requests[:5000])) - OVERHEAD)
        result[f"after build, collections, frozen={freeze}"] = seen
    # What the frozen build froze would stay frozen for every later measure of this process
    # (the load rows among them: a build leaves the collector alone where the host has
    # frozen objects of its own).
    gc.unfreeze()
    return result


# ----------------------------------------------------------------------------- loading


def write_tree(root: Path, plugins: int, files: int = 20) -> tuple[Path, Path]:
    """A policy directory (``files`` files) and a plugins directory on disk."""
    rng = random.Random(SEED)
    policy_dir, plugin_dir = root / "policies", root / "plugins"
    policy_dir.mkdir()
    plugin_dir.mkdir()
    chunks: list[list[str]] = [[] for _ in range(files)]
    chunks[0].append(GLOBAL_RULES)
    for i in range(plugins):
        chunks[i % files].extend(policy_lines(i))
        directory = plugin_dir / f"plugin-{i:05d}"
        directory.mkdir()
        (directory / "plugin.yaml").write_text(json.dumps(manifest_data(i, rng), indent=1), encoding="utf-8")
    for index, chunk in enumerate(chunks):
        (policy_dir / f"part{index:02d}.policy").write_text("\n".join(chunk) + "\n", encoding="utf-8")
    return policy_dir, plugin_dir


def measure_load(plugins: int, runs: int) -> dict[str, float]:
    """Full load, and reload after one policy file and after one manifest changed."""
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir, plugin_dir = write_tree(Path(tmp), plugins)
        loads = []
        for _ in range(runs):
            started = time.perf_counter()
            engine = Engine.load(policy_dir, plugin_dir, VARIABLES)
            loads.append(time.perf_counter() - started)
        policy_file = policy_dir / "part03.policy"
        manifest = plugin_dir / f"plugin-{3 % plugins:05d}" / "plugin.yaml"
        policy_reloads, manifest_reloads = [], []
        for run in range(runs):
            with policy_file.open("a", encoding="utf-8") as out:
                out.write(f'allow plugin "plugin-{3 % plugins:05d}" to config:read on "extra.{run}"\n')
            started = time.perf_counter()
            engine.reload()
            policy_reloads.append(time.perf_counter() - started)
            data = json.loads(manifest.read_text(encoding="utf-8"))
            data["permissions"].append(f"config:read extra{run}.*")
            manifest.write_text(json.dumps(data), encoding="utf-8")
            started = time.perf_counter()
            engine.reload()
            manifest_reloads.append(time.perf_counter() - started)
    load = statistics.median(loads)
    return {
        "load_s": load,
        "policy_reload": statistics.median(policy_reloads) / load,
        "manifest_reload": statistics.median(manifest_reloads) / load,
    }


def measure_memory(plugins: int) -> float:
    """Resident-memory growth per plugin (KB) of building an engine in a fresh process."""
    code = (
        "import sys, psutil\n"
        f"sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import bench_decide as b\n"
        f"policy, manifests, _ = b.workload({plugins}, 0)\n"
        "import gc; gc.collect(); before = psutil.Process().memory_info().rss\n"
        "engine = b.Engine.from_source(policy, manifests, b.VARIABLES, cache_size=0)\n"
        "del policy, manifests; gc.collect()\n"
        "print(psutil.Process().memory_info().rss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / plugins / 1000


# ----------------------------------------------------------------------------- report


def report(decides: list[dict[str, Any]], loads: dict[int, dict[str, float]], memory: dict[int, float]) -> str:
    """The tables, as text."""
    lines = []
    header = (f"{'plugins':>8} {'rules':>7} {'measure':<28} {'median µs':>10} {'p99 µs':>9} {'max µs':>9}"
              f"   {'ratio to reference (median / p99 / max)':<30}")
    lines += [header, "-" * len(header)]
    for r in decides:
        for label in ("engine", "cached", "unknown plugin", "resource > 4 KiB"):
            figures = r[label]
            base = r["reference"] if label in ("engine", "cached") else r[label + " (reference)"]
            shown = {"engine": "uncached decide", "cached": "cached decide"}.get(label, label)
            ratios = " / ".join(f"{figures[k] / base[k]:.2f}" for k in ("median", "p99", "max"))
            lines.append(f"{r['plugins']:>8} {r['rules']:>7} {shown:<28} {figures['median']:>10.2f} "
                         f"{figures['p99']:>9.2f} {figures['max']:>9.1f}   {ratios}")
        for label, shown in (("reference", "reference decide"), ("constant work", "constant work (the floor)")):
            ref = r[label]
            lines.append(f"{r['plugins']:>8} {r['rules']:>7} {shown:<28} {ref['median']:>10.2f} "
                         f"{ref['p99']:>9.2f} {ref['max']:>9.1f}")
    if len(decides) >= 2:
        first, last = decides[0], decides[-1]
        lines.append("")
        lines.append(
            f"median at {last['plugins']} plugins / median at {first['plugins']}: "
            f"{last['engine']['median'] / first['engine']['median']:.2f}x "
            f"(reference {last['reference']['median'] / first['reference']['median']:.2f}x)")
    lines.append("")
    for r in decides:
        top = r["engine"]["max"] / r["engine"]["median"]
        lines.append(f"{r['plugins']} plugins: slowest request / median {top:.1f}x, "
                     f"from_source {r['from_source_s']:.2f} s; slowest of the first 5,000 calls after a "
                     f"build {r['after build, frozen=False']:.0f} µs "
                     f"({r['after build, frozen=True']:.0f} µs with freeze_collector=True); "
                     f"collections in them {_shown(r['after build, collections, frozen=False'])} "
                     f"({_shown(r['after build, collections, frozen=True'])} with freeze_collector=True)")
    lines.append(f"timer overhead subtracted from every figure: {OVERHEAD:.3f} µs")
    for r in decides:
        if "classes" not in r["engine"]:
            continue
        lines.append("")
        header = f"{r['plugins']:>8} plugins, uncached, by class   {'median µs':>10} {'p99 µs':>9} {'max µs':>9}"
        lines += [header, "-" * len(header)]
        for label, figures in sorted(r["engine"]["classes"].items(), key=lambda item: -item[1]["median"]):
            lines.append(f"  {label:<35} {figures['median']:>10.2f} {figures['p99']:>9.2f} {figures['max']:>9.1f}")
    lines.append("")
    header = f"{'plugins':>8} {'load s':>8} {'reload, 1 policy file':>22} {'reload, 1 manifest':>19} {'KB per plugin':>14}"
    lines += [header, "-" * len(header)]
    for plugins in sorted(set(loads) | set(memory)):
        load = loads.get(plugins)
        cells = (f"{load['load_s']:>8.2f} {load['policy_reload']:>21.0%} {load['manifest_reload']:>19.0%}"
                 if load else f"{'':>8} {'':>22} {'':>19}")
        kb = f"{memory[plugins]:>14.1f}" if plugins in memory else ""
        lines.append(f"{plugins:>8} {cells} {kb}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--plugins", type=int, nargs="+", default=[100, 2000, 10000])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load", type=int, nargs="*", default=None,
                        help="plugin counts to time loading at (default: the --plugins)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny workload, one run")
    parser.add_argument("--classes", action="store_true",
                        help="also print the uncached figures of each class of request")
    args = parser.parse_args(argv)
    if args.quick:
        args.plugins, args.requests, args.runs = [5, 20], 200, 1
    load_counts = args.plugins if args.load is None else args.load
    global OVERHEAD
    OVERHEAD = timer_overhead()
    decides = [measure(n, args.requests, args.runs, args.classes) for n in args.plugins]
    loads = {n: measure_load(n, 1 if args.quick else 3) for n in load_counts}
    memory = {n: measure_memory(n) for n in args.plugins[-1:]}
    print(report(decides, loads, memory))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
