"""Benchmark of the enforcement layer. Prints a table (median, p99, and the target).

1. added cost of a wrapped in-process plugin call over a direct call;
2. what the global audit hook adds to ``open()`` in host code, with no plugin active and
   while an in-process plugin is active;
3. process mode: round trip of a trivial call to a warm worker;
4. cold start of a fully locked-down worker to an initialised plugin;
5. time from a timeout's deadline to the worker being gone;
6. cold start with and without bubblewrap, interleaved in the same run (the ratio and the
   difference of the medians are printed after the table);
7. the network broker: a call that opens and closes one TCP connection through the host's
   broker, a trivial call on the same worker, a direct connect in the host; the broker's
   added cost per connection (printed after the table) is the first minus the other two;
   and the host CPU charged per frame;
8. the freeze between calls, for each mechanism this host has (the SIGSTOP fallback, and a
   cgroup under a parent made for the run where one is writable): the freeze request on the
   call path, the time until frozen and the resume, measured apart, and the warm round trip
   with and without them, interleaved (the difference is what the freeze costs a call); the
   mechanism holding each limit is printed.
9. the worker's check of one audited ``open()``, allowed and denied: the worker's audit
   hook (``worker/audit.py``) and checker (``worker/checker.py``, built from the plugin's
   table as the host sends it), installed with ``sys.addaudithook`` in a child process and
   reached through the interpreter's audit path, single calls timed, without the ``open()``
   itself; with resolutions remembered (a worker under Landlock) and without (no Landlock,
   the in-process guard).

Run: ``python benchmarks/bench_enforcement.py`` (``--open-check``: row 9 only).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from policy_engine import Engine, PluginTimeoutError
from policy_engine.enforcement.host import bwrap, cgroup
from policy_engine.enforcement.host.broker import BrokerLimits, NetworkBroker
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox
from policy_engine.enforcement.host.spec import checker_data
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.inprocess.runner import (
    InprocessRunner,
    install_audit_hook,
    running_as,
)
from policy_engine.enforcement.worker.audit import AuditGuard
from policy_engine.enforcement.worker.checker import make_checker
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import PermissionDeniedError
from policy_engine.implicit import implicit_reads
from policy_engine.manifest import load_manifest, manifest_from_mapping

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "plugins"


QUICK = "--quick" in sys.argv[1:]  # a smoke run (the tests run it): every count cut to a sliver


def n(count: int) -> int:
    """``count``, or a sliver of it in a ``--quick`` run."""
    return max(1, count // 100) if QUICK else count


def per_call(fn: Callable[[], object], *, batch: int, rounds: int) -> list[float]:
    """Microseconds per call, one figure per round of ``batch`` calls."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        out.append((time.perf_counter_ns() - started) / batch / 1000)
    return out


def once(fn: Callable[[], object], rounds: int) -> list[float]:
    """Microseconds of single calls."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


class Plugin:
    def ok(self, x: int) -> int:
        return x + 1


def bench_inprocess(scratch: Path) -> dict[str, list[float]]:
    target = scratch / "file.txt"
    target.write_text("x")
    baseline_open = per_call(lambda: open(target).close(), batch=n(2000), rounds=n(50))
    baseline_event = per_call(lambda: sys.audit("policy_engine.bench", 1), batch=n(20000), rounds=n(50))
    runner = InprocessRunner("bench", scratch, "unused:Plugin", make_checker({"allow": [["file:read", None]]}),
                             allow_subprocess=False, allow_network=False, scratch_dir=scratch)
    install_audit_hook()
    idle_open = per_call(lambda: open(target).close(), batch=n(2000), rounds=n(50))
    idle_event = per_call(lambda: sys.audit("policy_engine.bench", 1), batch=n(20000), rounds=n(50))
    with running_as(runner._active):
        active_open = per_call(lambda: open(target).close(), batch=n(2000), rounds=n(50))
    plugin = Plugin()
    direct = per_call(lambda: plugin.ok(1), batch=n(5000), rounds=n(50))
    wrapped = per_call(lambda: runner.call(plugin.ok, (1,), {}, timeout=5, phase="execute"),
                       batch=n(5000), rounds=n(50))
    med = statistics.median
    return {
        "wrapped in-process call, added": [w - med(direct) for w in wrapped],
        "audited event in host code, no plugin active, added": [e - med(baseline_event) for e in idle_event],
        "host open(), hook installed, no plugin active, added": [o - med(baseline_open) for o in idle_open],
        "host open() while a plugin is active, added": [o - med(baseline_open) for o in active_open],
    }


def bench_process(scratch: Path) -> dict[str, list[float]]:
    data = scratch / "data"
    data.mkdir()
    engine = Engine.load(ROOT / "policies", plugins=EXAMPLES, variables={"data_dir": str(data)})
    sandbox = PluginSandbox(engine, data_dir=data, scratch_root=scratch)
    results: dict[str, list[float]] = {}
    with PluginLoader(engine, sandbox) as loader:
        metadata = load_manifest(EXAMPLES / "summarizer")
        cold: list[float] = []
        for _ in range(n(20)):
            runner = sandbox.runner_for(metadata, lambda hook: lambda *a: None)
            started = time.perf_counter_ns()
            runner.start()
            cold.append((time.perf_counter_ns() - started) / 1000)
            runner.stop()
        results["cold start of a locked-down worker to an initialised plugin"] = cold
        loads: list[float] = []
        for _ in range(n(10)):
            started = time.perf_counter_ns()
            loader.load(EXAMPLES / "summarizer")
            loads.append((time.perf_counter_ns() - started) / 1000)
        results["PluginLoader.load (manifest, validation, scan, start)"] = loads
        plugin = loader.load(EXAMPLES / "summarizer")
        # cleanup() is the no-op every plugin inherits: the call is the round trip alone.
        for _ in range(n(200)):
            plugin.call("cleanup")
        results["warm round trip, trivial call"] = once(lambda: plugin.call("cleanup"), n(3000))
        rogue = loader.load(EXAMPLES / "rogue")
        gone: list[float] = []
        limit = engine.timeouts("rogue").execute
        for _ in range(n(10)):
            rogue.call("execute")  # a warm worker to kill
            pid = rogue.runner.worker.pid  # type: ignore[attr-defined]
            started = time.perf_counter_ns()
            try:
                rogue.call("loop_forever")
            except PluginTimeoutError:
                pass
            after = (time.perf_counter_ns() - started) / 1000 - limit * 1e6
            assert pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
            gone.append(after)
        results["worker gone after the deadline"] = gone
    return results


def _summarizer_runner(data: Path) -> Any:
    """A runner (not started) for the example `summarizer` under the shipped policies, with
    ``data`` as the data directory."""
    data.mkdir()
    engine = Engine.load(ROOT / "policies", plugins=EXAMPLES, variables={"data_dir": str(data)})
    sandbox = PluginSandbox(engine, data_dir=data, scratch_root=data.parent)
    return sandbox.runner_for(load_manifest(EXAMPLES / "summarizer"), lambda hook: lambda *a: None)


def bench_bubblewrap(scratch: Path) -> dict[str, list[float]]:
    """Cold starts of the same plugin, alternating without and with bubblewrap."""
    if bwrap.available():
        return {}
    runner = _summarizer_runner(scratch / "bwrap-data")
    times: dict[str, list[float]] = {"cold start, today's layers only": [],
                                     "cold start under bubblewrap": []}
    for _ in range(n(20)):
        for name, sandboxed in (("cold start, today's layers only", False),
                                ("cold start under bubblewrap", True)):
            worker = WorkerProcess(capability_handler=runner.services.handle, sandbox=sandboxed)
            started = time.perf_counter_ns()
            worker.start(runner.init)
            times[name].append((time.perf_counter_ns() - started) / 1000)
            worker.stop()
    return times


_NET_PLUGIN = """
import socket


class Plugin:
    def connect(self, host, port):
        socket.create_connection((host, port), timeout=5).close()

    def nothing(self):
        return None
"""
_BROKERED = "call opening one TCP connection through the broker"
_TRIVIAL = "trivial call on the same worker"
_DIRECT = "direct TCP connect in the host"
_PER_FRAME = "host CPU charged per frame"


def bench_broker(scratch: Path) -> dict[str, list[float]]:
    """One connection per call through the host's broker, against a loopback listener."""
    import socket

    plugin_dir = scratch / "net-plugin"
    plugin_dir.mkdir()
    (plugin_dir / "net.py").write_text(_NET_PLUGIN)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = listener.getsockname()[1]
    manifest = manifest_from_mapping(
        {"name": "net", "version": "1.0.0", "type": "agent", "entry_point": "net:Plugin",
         "permissions": ["network:request"]}, file="net.yaml", plugin_path=plugin_dir)
    engine = Engine.from_source(f'allow plugin "net" to network:request on "localhost:{port}"',
                                [manifest])

    def broker() -> NetworkBroker:
        # Every iteration looks `localhost` up: lift the lookup budget, not the point here.
        return NetworkBroker("net", engine.decide,
                             limits=BrokerLimits(lookups_per_second=1e6, lookup_burst=10**6))

    spec = LockdownSpec(scratch_dir=str(scratch / "net-scratch"), plugin_dir=str(plugin_dir),
                        allow_network=True, connect_ports=(port,))
    init = WorkerInit(plugin="net", plugin_dir=str(plugin_dir), entry_point="net:Plugin",
                      lockdown=spec, checker={"allow": []}, data_dir=str(scratch / "net-data"),
                      limits=ResourceLimits(memory_bytes=256 * 1024 * 1024))
    results: dict[str, list[float]] = {_BROKERED: [], _TRIVIAL: [], _DIRECT: [], _PER_FRAME: []}
    with WorkerProcess(broker_factory=broker) as worker:
        worker.start(init)

        def drain() -> None:
            listener.setblocking(False)
            try:
                while True:
                    listener.accept()[0].close()
            except BlockingIOError:
                pass

        for _ in range(n(20)):
            worker.call("connect", ["localhost", port], timeout=10)
        drain()
        for _ in range(n(300)):
            started = time.perf_counter_ns()
            worker.call("connect", ["localhost", port], timeout=10)
            results[_BROKERED].append((time.perf_counter_ns() - started) / 1000)
            cpu = worker.host_cpu_seconds
            started = time.perf_counter_ns()
            worker.call("nothing", timeout=10)
            results[_TRIVIAL].append((time.perf_counter_ns() - started) / 1000)
            results[_PER_FRAME].append((worker.host_cpu_seconds - cpu) * 1e6)  # one frame
            started = time.perf_counter_ns()
            socket.create_connection(("127.0.0.1", port)).close()
            results[_DIRECT].append((time.perf_counter_ns() - started) / 1000)
            drain()
    listener.close()
    return results


def bench_freeze(scratch: Path) -> tuple[dict[str, list[float]], list[str]]:
    """Freeze and resume of a warm worker's sandbox, per mechanism."""
    runner = _summarizer_runner(scratch / "freeze-data")
    parent = f"/policy-engine-bench-{os.getpid()}"
    support = cgroup.detect(parent, refresh=True)
    parents = [("signals", "")] + ([(support.mechanisms["freeze"], parent)] if support.active
                                   else [])
    results: dict[str, list[float]] = {}
    notes: list[str] = []
    try:
        for label, where in parents:
            worker = WorkerProcess(capability_handler=runner.services.handle,
                                   cgroup_parent=where)
            worker.start(runner.init)
            held = ", ".join(f"{k} by {v}" for k, v in worker.limit_mechanisms.items())
            notes.append(f"freeze by {label}{' (bubblewrap)' if worker.sandboxed else ''}: {held}")
            for _ in range(n(200)):
                worker.call("cleanup", timeout=10)
            freeze, thaw = worker._freeze, worker._thaw
            with_freeze: list[float] = []
            without: list[float] = []
            for _ in range(n(20)):  # interleaved, so both see the same machine
                worker._freeze, worker._thaw = freeze, thaw  # type: ignore[method-assign]
                with_freeze += once(lambda w=worker: w.call("cleanup", timeout=10), n(100))  # type: ignore[misc]
                worker._thaw()
                worker._freeze = worker._thaw = lambda: None  # type: ignore[method-assign]
                without += once(lambda w=worker: w.call("cleanup", timeout=10), n(100))  # type: ignore[misc]
            worker._freeze, worker._thaw = freeze, thaw  # type: ignore[method-assign]
            results[f"warm round trip with freeze ({label})"] = with_freeze
            results[f"warm round trip without freeze ({label})"] = without
            asked, frozen, resume = [], [], []
            for _ in range(n(1000)):
                started = time.perf_counter_ns()
                worker._thaw()
                middle = time.perf_counter_ns()
                worker._freeze()
                requested = time.perf_counter_ns()
                assert worker.wait_frozen()
                done = time.perf_counter_ns()
                resume.append((middle - started) / 1000)
                asked.append((requested - middle) / 1000)
                frozen.append((done - middle) / 1000)
            results[f"freeze on the call path ({label})"] = asked
            results[f"freeze until frozen ({label})"] = frozen
            results[f"resume ({label})"] = resume
            worker.stop()
    finally:
        for directory in (support.v2_dir, *support.v1_dirs.values()):
            if directory is not None:
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
    return results, notes


_OPEN_ALLOWED = "worker's check of one audited open(), allowed"
_OPEN_DENIED = "worker's check of one audited open(), denied"
_OPEN_ALLOWED_ANEW = "  the same, allowed, every path resolved anew (no Landlock)"
_OPEN_DENIED_ANEW = "  the same, denied, every path resolved anew (no Landlock)"
_OPEN_CALLS = n(20_000)


def bench_open_check(scratch: Path) -> dict[str, list[float]]:
    """The worker's audit hook deciding one ``open()``, installed with ``sys.addaudithook``
    in a child process (a hook cannot be removed) and reached through the interpreter's
    audit path (``sys.audit``, which ``open()`` calls with the same arguments), single calls
    timed: once as a worker under Landlock runs it (resolutions remembered outside the
    plugin's writable trees) and once with every path resolved anew (a worker without
    Landlock, and the in-process guard). Each figure is one call: the hook deciding (and
    raising, for the denial, and the caller catching), less the clock's own cost; not the
    ``open()`` itself, whose cost with and without the hook differs by less than its noise
    from one process to the next (a hook cannot be removed to interleave them)."""
    rows: dict[str, list[float]] = {}
    package_root = str(Path(__file__).resolve().parent.parent)
    import policy_engine

    env = {**os.environ, "PYTHONPATH": str(Path(policy_engine.__file__).parent.parent)}
    for remembering in (True, False):
        child = subprocess.run(
            [sys.executable, __file__, "--open-check-child", str(scratch),
             "remember" if remembering else "anew"],
            capture_output=True, text=True, check=False, env=env, cwd=package_root)
        if child.returncode != 0:
            raise RuntimeError(f"the open-check child failed: {child.stderr[-2000:]}")
        measured: dict[str, list[float]] = json.loads(child.stdout)
        if remembering:
            rows[_OPEN_ALLOWED], rows[_OPEN_DENIED] = measured["allowed"], measured["denied"]
        else:
            rows[_OPEN_ALLOWED_ANEW] = measured["allowed"]
            rows[_OPEN_DENIED_ANEW] = measured["denied"]
    return rows


def _open_check_child(scratch: Path, remembering: bool) -> dict[str, list[float]]:
    plugin_dir, data, other = scratch / "plugin", scratch / "data", scratch / "other"
    for directory in (plugin_dir, data, other, scratch / "scratch"):
        directory.mkdir(exist_ok=True)
    (data / "table.csv").write_text("x")
    (other / "secret.txt").write_text("x")
    policy = (f'allow plugin "reader" to file:read on "{data}/**", "{scratch}/shared/*.csv"\n'
              f'deny plugin * to file:* on "{scratch}/etc/**"\n')
    manifest = manifest_from_mapping({"name": "reader", "version": "1.0.0", "type": "agent", "entry_point": "p:P",
                                      "permissions": [f"file:read {data}/**"]})
    engine = Engine.from_source(policy, [manifest], plugin_paths={"reader": plugin_dir})
    table = engine.plugin_table("reader")
    assert table is not None
    checker = make_checker(checker_data(table), plugin="reader")
    extra = tuple(p for p in sys.path if p and os.path.isabs(p))
    # As the worker computes it: the trees Landlock lets it write (no write grants here).
    changeable = (str(scratch / "scratch"), str(scratch / "data-dir")) if remembering else None
    guard = AuditGuard(checker, plugin="reader", scratch_dir=str(scratch / "scratch"),
                       implicit=implicit_reads(str(plugin_dir), scratch_dir=str(scratch / "scratch"),
                                               extra_paths=extra),
                       allow_subprocess=False, allow_network=False, changeable=changeable)
    allowed_path, denied_path = str(data / "table.csv"), str(other / "secret.txt")
    flags = os.O_RDONLY | os.O_CLOEXEC
    audit, clock = sys.audit, time.perf_counter_ns

    def timer_cost() -> float:
        samples = []
        for _ in range(_OPEN_CALLS):
            started = clock()
            samples.append(clock() - started)
        return statistics.median(samples)

    def allowed_calls() -> list[float]:
        samples = []
        for _ in range(_OPEN_CALLS):
            started = clock()
            audit("open", allowed_path, "r", flags)
            samples.append(clock() - started)
        return samples

    def denied_calls() -> list[float]:
        samples = []
        for _ in range(_OPEN_CALLS):
            started = clock()
            try:
                audit("open", denied_path, "r", flags)
            except PermissionDeniedError:
                pass
            samples.append(clock() - started)
        return samples

    guard.install()  # for good: this process only measures from here on
    try:
        audit("open", denied_path, "r", flags)
        raise AssertionError("the denied open was allowed")
    except PermissionDeniedError:
        pass
    allowed_calls(), denied_calls()  # warm-up: the table's matchers, the caches
    overhead = timer_cost()
    return {"allowed": [(t - overhead) / 1000 for t in allowed_calls()],
            "denied": [(t - overhead) / 1000 for t in denied_calls()]}


TARGETS = {
    _OPEN_ALLOWED: "<= 3 µs",
    _OPEN_DENIED: "<= 3 µs",
    _OPEN_ALLOWED_ANEW: "(no target)",
    _OPEN_DENIED_ANEW: "(no target)",
    "wrapped in-process call, added": "<= 2 µs",
    "audited event in host code, no plugin active, added": "(prototype: 0.13-0.15 µs)",
    "host open(), hook installed, no plugin active, added": "<= 0.5 µs",
    "host open() while a plugin is active, added": "(no target)",
    "warm round trip, trivial call": "<= 150 µs",
    "cold start of a locked-down worker to an initialised plugin": "<= 100 ms",
    "PluginLoader.load (manifest, validation, scan, start)": "(no target)",
    "worker gone after the deadline": "<= 100 ms",
    "cold start, today's layers only": "(baseline)",
    "cold start under bubblewrap": "<= baseline + 15 ms",
    _BROKERED: "(see below)",
    _TRIVIAL: "(baseline)",
    _DIRECT: "(baseline)",
    _PER_FRAME: "(no target)",
}


def _print_rows(rows: dict[str, list[float]]) -> None:
    name_width = max(len(n) for n in rows)
    print(f"{'measure':<{name_width}}  {'median':>12}  {'p99':>12}  target")
    print("-" * (name_width + 40))
    for name, values in rows.items():
        med, high = statistics.median(values), p99(values)
        unit = "ms" if med >= 1000 else "µs"
        scale = 1000 if unit == "ms" else 1
        target = TARGETS.get(name, "<= 150 µs" if name.startswith("warm") else "(no target)")
        print(f"{name:<{name_width}}  {med / scale:>9.2f} {unit}  {high / scale:>9.2f} {unit}  {target}")


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the loader's scan warnings are not the point here
    if sys.argv[1:2] == ["--open-check-child"]:
        print(json.dumps(_open_check_child(Path(sys.argv[2]), sys.argv[3] == "remember")))
        return
    if [a for a in sys.argv[1:] if a != "--quick"] == ["--open-check"]:
        with tempfile.TemporaryDirectory(prefix="bench-enforcement-") as tmp:
            _print_rows(bench_open_check(Path(os.path.realpath(tmp))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-enforcement-") as tmp:
        scratch = Path(tmp)
        freeze_rows, freeze_notes = bench_freeze(scratch)
        rows = {**bench_inprocess(scratch), **bench_process(scratch),
                **bench_bubblewrap(scratch), **bench_broker(scratch), **freeze_rows,
                **bench_open_check(Path(os.path.realpath(tmp)))}
    _print_rows(rows)
    plain = rows.get("cold start, today's layers only")
    boxed = rows.get("cold start under bubblewrap")
    if plain and boxed:
        added = (statistics.median(boxed) - statistics.median(plain)) / 1000
        ratio = statistics.median(boxed) / statistics.median(plain)
        print(f"\nbubblewrap adds {added:.1f} ms to a cold start (ratio {ratio:.2f})")
    else:
        print(f"\nbubblewrap not measured: {bwrap.available()}")
    brokered, trivial, direct = rows[_BROKERED], rows[_TRIVIAL], rows[_DIRECT]
    added = [b - t - d for b, t, d in zip(brokered, trivial, direct, strict=True)]
    print(f"the broker adds {statistics.median(added) / 1000:.2f} ms per connection "
          f"(p99 {p99(added) / 1000:.2f} ms; target <= 2 ms; ratio to a direct connect "
          f"{statistics.median(brokered) / statistics.median([t + d for t, d in zip(trivial, direct, strict=True)]):.2f})")
    for note in freeze_notes:
        print(note)
    for label in dict.fromkeys(n.split(" (")[-1].rstrip(")") for n in freeze_rows):
        with_freeze = freeze_rows.get(f"warm round trip with freeze ({label})")
        without = freeze_rows.get(f"warm round trip without freeze ({label})")
        if with_freeze and without:
            print(f"the freeze by {label} adds {statistics.median(with_freeze) - statistics.median(without):.1f} µs "
                  f"to a warm call (ratio {statistics.median(with_freeze) / statistics.median(without):.2f})")
    print(f"\n(cpu count {os.cpu_count()}; times are wall clock)")


if __name__ == "__main__":
    main()
