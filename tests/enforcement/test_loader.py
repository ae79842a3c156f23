"""The plugin loader (``host/loader.py``), as a unit: the runner is a stand-in, so no
plugin code runs and no worker starts; manifests, validation and the engine are real."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.decision import Decision
from policy_engine.enforcement.host.loader import MAX_CALL_RECORDS, LoadedPlugin, PluginLoader
from policy_engine.enforcement.host.runners import Runner
from policy_engine.enforcement.host.sandbox import PluginSandbox
from policy_engine.enforcement.host.usage import ResourceUsage
from policy_engine.errors import (
    EnforcementError,
    FileSizeError,
    ManifestError,
    PermissionDeniedError,
    PluginCrashedError,
    PluginTimeoutError,
    PluginValidationError,
    ResourceLimitError,
)
from policy_engine.manifest import PluginMetadata
from policy_engine.table import PluginTable

CODE = "from policy_engine.plugin_api import BaseAgentPlugin\nclass Plugin(BaseAgentPlugin): pass\n"
POLICY = """\
defaults { isolation inprocess  accept unpinned-inprocess  timeout execute 9s  timeout hook 2s }
allow plugin * to hook:register
"""


def write_plugin(root: Path, directory: str, name: str = "demo", *, enabled: bool = True,
                 code: str = CODE) -> Path:
    plugin = root / directory
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "plugin.yaml").write_text(
        f"name: {name}\nversion: 1.0.0\ntype: agent\nentry_point: mod:Plugin\n"
        f"enabled: {'true' if enabled else 'false'}\npermissions: [hook:register]\n")
    (plugin / "mod.py").write_text(code)
    return plugin


class FakeRunner:
    """A runner that runs nothing: ``behaviour[method]`` is returned or raised."""

    isolation = "fake"

    def __init__(self, table: PluginTable, behaviour: dict[str, Any]) -> None:
        self.table = table
        self.behaviour = behaviour
        self.calls: list[tuple[str, tuple[Any, ...], float, str]] = []
        self.started = 0
        self.stopped = 0

    def start(self) -> Any:
        self.started += 1
        start = self.behaviour.get("start", "initialized")
        if isinstance(start, BaseException):
            raise start
        return start

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             timeout: float, phase: str) -> Any:
        self.calls.append((method, args, timeout, phase))
        outcome = self.behaviour.get(method, ("result", *args))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def usage(self) -> ResourceUsage:
        usage = self.behaviour.get("usage", ResourceUsage(cpu_percent=5.0, memory_bytes=100))
        if isinstance(usage, BaseException):
            raise usage
        return usage  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.stopped += 1
        if "stop" in self.behaviour:
            raise self.behaviour["stop"]


class FakeSandbox(PluginSandbox):
    """A real sandbox (validation, records, hooks) whose runners are :class:`FakeRunner`."""

    def __init__(self, engine: Engine, tmp_path: Path) -> None:
        super().__init__(engine, data_dir=tmp_path / "data", scratch_root=tmp_path)
        self.behaviour: dict[str, Any] = {}
        self.runners: list[FakeRunner] = []

    def runner_for(self, metadata: PluginMetadata, call_hook: Callable[[str], Callable[..., Any]],
                   table: PluginTable | None = None) -> Runner:
        assert table is not None, "the loader hands its table down"
        runner = FakeRunner(table, self.behaviour)
        self.runners.append(runner)
        return runner


def make_loader(tmp_path: Path, policy: str = POLICY) -> tuple[PluginLoader, FakeSandbox]:
    engine = Engine.from_source(policy, [])
    sandbox = FakeSandbox(engine, tmp_path)
    return PluginLoader(engine, sandbox), sandbox


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PluginLoader, FakeSandbox, LoadedPlugin]:
    loader, sandbox = make_loader(tmp_path)
    plugin = loader.load(write_plugin(tmp_path / "plugins", "demo"))
    return loader, sandbox, plugin


def test_load_starts_the_runner_and_calls_run_under_the_execute_timeout(
        setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    loader, sandbox, plugin = setup
    assert plugin.init_result == "initialized" and plugin.name == "demo"
    assert plugin.isolation == "fake" and loader.get("demo") is plugin
    assert loader.plugins == {"demo": plugin}
    assert plugin.run(1, 2) == ("result", 1, 2)  # type: ignore[operator]
    assert plugin.call_hook("on_save", "x") == ("result", "x")
    runner = sandbox.runners[0]
    assert runner.calls == [("run", (1, 2), 9.0, "execute"), ("hook:on_save", ("x",), 2.0, "hook")]
    assert [(c.method, c.outcome, c.detail) for c in plugin.calls] == [
        ("run", "ok", "('result', 1, 2)"), ("hook:on_save", "ok", "('result', 'x')")]
    assert plugin.usage.memory_bytes == 100 and plugin.peak_memory == 100
    with pytest.raises(AttributeError):
        plugin._private  # noqa: B018


def test_long_results_are_summarised(setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    _loader, sandbox, plugin = setup
    sandbox.behaviour["long"] = "x" * 100
    plugin.long()  # type: ignore[operator]
    assert len(plugin.calls[-1].detail) == 60 and plugin.calls[-1].detail.endswith("…")


def test_the_call_ring_is_bounded(setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    _loader, _sandbox, plugin = setup
    for _ in range(MAX_CALL_RECORDS + 5):
        plugin.call("ping")
    assert len(plugin.calls) == MAX_CALL_RECORDS


def denied(engine: Engine) -> PermissionDeniedError:
    decision: Decision = engine.decide("demo", "file:read", "/etc/shadow")
    return PermissionDeniedError(decision)


def test_each_way_a_call_ends_is_recorded(setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    loader, sandbox, plugin = setup
    sandbox.behaviour.update({
        "deny": denied(loader.engine),
        "slow": PluginTimeoutError("demo", "execute", 9.0),
        "big": FileSizeError("too big", plugin="demo"),
        "crash": PluginCrashedError("the worker died", plugin="demo"),
        "oops": ValueError("bad input"),
    })
    for method, error in (("deny", PermissionDeniedError), ("slow", PluginTimeoutError),
                          ("big", FileSizeError), ("crash", PluginCrashedError),
                          ("oops", ValueError)):
        with pytest.raises(error):
            plugin.call(method)
    assert [c.outcome for c in plugin.calls] == ["denied", "timeout", "limit", "crashed", "error"]
    assert plugin.calls[-1].detail == "ValueError: bad input"
    # The denial is in the sandbox's records, as the host decided it.
    (record,) = sandbox.records("demo")
    assert (record.action, record.resource, record.allowed) == ("file:read", "/etc/shadow", False)
    assert record.reason == "not_declared"
    assert loader.get("demo") is plugin  # none of these unloads the plugin


def test_a_limit_with_on_violation_terminate_unloads(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path)
    plugin = loader.load(write_plugin(tmp_path / "plugins", "demo"))
    sandbox.behaviour["hog"] = ResourceLimitError("memory", plugin="demo", resource="memory",
                                                  used=5e8)
    with pytest.raises(ResourceLimitError):
        plugin.hog()  # type: ignore[operator]
    assert plugin.peak_memory == 500_000_000
    assert loader.get("demo") is None and sandbox.runners[0].stopped == 1
    assert plugin.unloaded is not None and "went over a limit" in plugin.unloaded
    with pytest.raises(EnforcementError, match="was unloaded: it went over a limit"):
        plugin.hog()  # type: ignore[operator]


def test_a_limit_with_on_violation_warn_keeps_the_plugin(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path, POLICY + "defaults { on violation warn }\n")
    plugin = loader.load(write_plugin(tmp_path / "plugins", "demo"))
    sandbox.behaviour["spin"] = ResourceLimitError("cpu", plugin="demo", resource="cpu", used=0.9)
    with pytest.raises(ResourceLimitError):
        plugin.spin()  # type: ignore[operator]
    assert plugin.peak_cpu == pytest.approx(90.0)
    assert loader.get("demo") is plugin


def test_a_failing_usage_sample_never_fails_a_call(
        setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    _loader, sandbox, plugin = setup
    sandbox.behaviour["usage"] = OSError("gone")
    assert plugin.ping() == ("result",)  # type: ignore[operator]
    assert plugin.calls[-1].outcome == "ok"


def test_an_invalid_plugin_does_not_load(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path)
    with pytest.raises(PluginValidationError, match="disabled"):
        loader.load(write_plugin(tmp_path / "plugins", "idle", "idle", enabled=False))
    assert loader.plugins == {} and sandbox.runners == []


def test_a_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path)
    sandbox.behaviour["start"] = RuntimeError("initialize raised")
    with pytest.raises(RuntimeError):
        loader.load(write_plugin(tmp_path / "plugins", "demo"))
    assert loader.plugins == {} and sandbox.runners[0].stopped == 1


def test_loading_the_same_directory_again_replaces_the_plugin(
        tmp_path: Path, setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    loader, sandbox, first = setup
    second = loader.load(tmp_path / "plugins" / "demo")
    assert loader.get("demo") is second and first.unloaded == "replaced by a new load"
    assert sandbox.runners[0].stopped == 1


def test_a_second_directory_claiming_the_name_is_refused(
        tmp_path: Path, setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    loader, _sandbox, first = setup
    other = write_plugin(tmp_path / "elsewhere", "demo")
    with pytest.raises(PluginValidationError, match="claimed by two directories"):
        loader.load(other)
    # The first one must not keep grants and data another directory now claims.
    assert loader.get("demo") is None and first.unloaded is not None


def test_load_all_reports_each_failure_by_directory(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path)
    root = tmp_path / "plugins"
    write_plugin(root, "good", "good")
    write_plugin(root, "twin-a", "twin")
    write_plugin(root, "twin-b", "twin")
    write_plugin(root, "idle", "idle", enabled=False)
    (root / "broken").mkdir()
    (root / "broken" / "plugin.yaml").write_text("name: [unclosed\n")
    assert sorted(p.name for p in loader.discover(root)) == ["broken", "good", "idle", "twin-a", "twin-b"]
    loaded, failed = loader.load_all(root)
    assert list(loaded) == ["good"]
    assert sorted(failed) == ["broken", "idle", "twin-a", "twin-b"]
    assert isinstance(failed["broken"], ManifestError)
    assert "claimed by two directories" in str(failed["twin-a"]) and "twin-b" in str(failed["twin-a"])
    assert isinstance(failed["idle"], PluginValidationError)


def test_load_all_reports_a_plugin_whose_start_fails(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path)
    write_plugin(tmp_path / "plugins", "demo")
    sandbox.behaviour["start"] = RuntimeError("initialize raised")
    loaded, failed = loader.load_all(tmp_path / "plugins")
    assert loaded == {} and isinstance(failed["demo"], RuntimeError)


def test_unload_close_and_the_context_manager(tmp_path: Path) -> None:
    loader, sandbox = make_loader(tmp_path)
    loader.unload("nobody")  # nothing to do
    with loader:
        plugin = loader.load(write_plugin(tmp_path / "plugins", "demo"))
        sandbox.behaviour["stop"] = OSError("stopping failed")
    # Stopping failed and was logged: the unload still happened.
    assert plugin.unloaded == "the loader was closed" and loader.plugins == {}


def test_a_policy_change_rebuilds_the_sandbox_at_the_next_call(
        setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    loader, sandbox, plugin = setup
    plugin.ping()  # type: ignore[operator]
    loader.engine.reload(POLICY)  # the same policy: an equal table, nothing to rebuild
    plugin.ping()  # type: ignore[operator]
    assert plugin.rebuilds == 0 and len(sandbox.runners) == 1
    loader.engine.reload(POLICY.replace("9s", "4s"))
    sandbox.behaviour["stop"] = OSError("the old worker would not stop")
    plugin.ping()  # type: ignore[operator]
    assert plugin.rebuilds == 1 and len(sandbox.runners) == 2
    old, new = sandbox.runners
    assert old.stopped == 1 and new.started == 1
    # The call ran in the new sandbox, under the new table's timeout.
    assert new.calls == [("ping", (), 4.0, "execute")] and new.table is plugin.table


def test_a_policy_that_no_longer_validates_unloads_the_plugin(
        setup: tuple[PluginLoader, FakeSandbox, LoadedPlugin]) -> None:
    loader, _sandbox, plugin = setup
    loader.engine.reload(POLICY.replace("accept unpinned-inprocess", ""))
    with pytest.raises(EnforcementError, match="the policy changed: `isolation inprocess` needs"):
        plugin.ping()  # type: ignore[operator]
    assert loader.get("demo") is None
    with pytest.raises(EnforcementError, match="was unloaded"):
        plugin.ping()  # type: ignore[operator]


def test_settings_are_resolved_once_per_load_and_flow_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader reads the plugin's table once; validation, the runner and every call use
    it, and nothing on the way resolves the settings again from the engine."""
    loader, sandbox = make_loader(tmp_path)
    engine = loader.engine
    looked_up: list[str] = []
    resolved: list[str] = []
    real_table = engine.plugin_table
    monkeypatch.setattr(engine, "plugin_table", lambda name: looked_up.append(name) or real_table(name))
    for method in ("effective", "limits", "timeouts"):
        monkeypatch.setattr(engine, method, lambda name, m=method: resolved.append(m))
    plugin = loader.load(write_plugin(tmp_path / "plugins", "demo"))
    assert looked_up == ["demo"]
    plugin.ping()  # type: ignore[operator]
    plugin.call_hook("h")
    assert resolved == []
    assert sandbox.runners[0].table is plugin.table is real_table("demo")
