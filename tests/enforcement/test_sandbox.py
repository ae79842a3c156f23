"""The sandbox front door (``host/sandbox.py``), as a unit: runners are built, never
started, so no worker process runs and no plugin code is imported."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.digest import plugin_digest, trust_line
from policy_engine.enforcement.host import doctor
from policy_engine.enforcement.host import sandbox as sandbox_module
from policy_engine.enforcement.host.runners import InprocessPluginRunner, ProcessRunner
from policy_engine.enforcement.host.sandbox import AuditRecord, PluginSandbox
from policy_engine.enforcement.inprocess.runner import DeadlineExceeded
from policy_engine.errors import (
    PermissionDeniedError,
    PluginTimeoutError,
    PluginValidationError,
    UsageError,
)
from policy_engine.manifest import PluginMetadata, load_manifest

CODE = "from policy_engine.plugin_api import BaseAgentPlugin\nclass Plugin(BaseAgentPlugin): pass\n"


def write_plugin(tmp_path: Path, permissions: tuple[str, ...] = ("file:read /srv/**",)) -> Path:
    plugin = tmp_path / "plugins" / "demo"
    plugin.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"  - {p}\n" for p in permissions)
    (plugin / "plugin.yaml").write_text(
        f"name: demo\nversion: 1.0.0\ntype: agent\nentry_point: mod:Plugin\npermissions:\n{lines}")
    (plugin / "mod.py").write_text(CODE)
    return plugin


def pinned(tmp_path: Path, policy: str, permissions: tuple[str, ...] = ("file:read /srv/**",)
           ) -> tuple[Engine, PluginMetadata]:
    """A pinned plugin: its trust pin matches, so no host-dependent refusal applies."""
    directory = write_plugin(tmp_path, permissions)
    metadata = load_manifest(directory)
    pin = trust_line("demo", plugin_digest(directory)) + "\n"
    return Engine.from_source(pin + policy, [metadata]), metadata


def make(engine: Engine, tmp_path: Path, **kwargs: Any) -> PluginSandbox:
    return PluginSandbox(engine, data_dir=tmp_path / "data", scratch_root=tmp_path, **kwargs)


# `/srv/secret` does not exist here, so the kernel cannot mask it: accepted (the refusal
# itself is tested with STRICT).
STRICT = 'allow plugin * to file:read on "/srv/**"\ndeny plugin * to file:read on "/srv/secret/**"\n'
POLICY = STRICT + "defaults { accept inexact-deny }\n"


def test_modes_and_the_audit_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_source(POLICY, [], variables={"data_dir": str(tmp_path / "d")})
    with pytest.raises(ValueError, match="mode must be"):
        PluginSandbox(engine, mode="learn")  # type: ignore[arg-type]
    # Audit mode runs in the kernel sandbox; without bubblewrap it is refused unless the
    # caller asks for the old, unsandboxed mode.
    monkeypatch.setattr("policy_engine.enforcement.host.bwrap.available",
                        lambda: "bubblewrap is not installed")
    with pytest.raises(UsageError, match="not a sandbox"):
        PluginSandbox(engine, mode="audit")
    default = PluginSandbox(engine)
    assert default.data_dir == tmp_path / "d" and default.config == {}
    assert default.db_path is None
    assert PluginSandbox(engine, mode="audit", unsandboxed_audit=True, db_path="x.db").db_path == Path("x.db")
    default.close()


def test_check_permission_require_and_records_in_enforce_mode(tmp_path: Path) -> None:
    engine, _metadata = pinned(tmp_path, POLICY)
    box = make(engine, tmp_path)
    assert box.check_permission("demo", "file:read", "/srv/a")
    assert not box.check_permissions("demo", "file:read", "/srv/secret/k")
    box.require("demo", "file:read", "/srv/b")
    with pytest.raises(PermissionDeniedError) as caught:
        box.require("demo", "file:read", "/etc/passwd")
    assert caught.value.decision.reason.value == "not_declared"
    # Enforce mode keeps the denials only, with the host's reason and rules.
    records = box.records("demo")
    assert [(r.resource, r.allowed, r.reason) for r in records] == [
        ("/srv/secret/k", False, "denied_by_rule"), ("/etc/passwd", False, "not_declared")]
    assert records[0].rules == ("<policy>:3:1",) and not records[0].reported_by_worker
    assert box.records("other") == []
    assert box.monitor_resources("demo").memory_bytes == 0


def test_audit_mode_records_everything_and_denies_nothing(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    engine, _metadata = pinned(tmp_path, POLICY)
    box = make(engine, tmp_path, mode="audit", unsandboxed_audit=True)
    caplog.set_level("INFO", logger="policy_engine.enforcement.host.sandbox")
    assert box.check_permission("demo", "file:read", "/etc/passwd")
    box.require("demo", "file:read", "/srv/a")
    assert [r.allowed for r in box.records()] == [False, True]
    assert "audit:" in caplog.text


def test_worker_denials_and_reports_are_kept_as_the_host_decided(tmp_path: Path) -> None:
    engine, _metadata = pinned(tmp_path, POLICY)
    box = make(engine, tmp_path)
    box.record_denial(PermissionDeniedError(engine.decide("demo", "file:read", "/srv/secret/x")))
    box.record_reported("demo", "file:read", "/srv/ok")
    box.add_record(AuditRecord("demo", "file:write", "/x", False, "not_declared", ()))
    denial, reported, added = box.records()
    assert (denial.reason, denial.rules) == ("denied_by_rule", ("<policy>:3:1",))
    assert reported.reported_by_worker and reported.allowed and reported.reason == "allowed"
    assert added.action == "file:write"


def test_the_record_ring_counts_what_it_drops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "MAX_RECORDS", 3)
    engine, _metadata = pinned(tmp_path, POLICY)
    box = make(engine, tmp_path)
    for i in range(5):
        box.require("demo", "file:read", f"/srv/a{i}")  # allowed: not recorded
        box.check_permission("demo", "file:read", f"/etc/{i}")
    assert [r.resource for r in box.records()] == ["/etc/2", "/etc/3", "/etc/4"]
    assert box.dropped_records == 2


def test_the_capability_check_of_a_plugin_raises_on_a_denial(tmp_path: Path) -> None:
    engine, _metadata = pinned(tmp_path, POLICY)
    check = make(engine, tmp_path)._check_for("demo")
    assert check("file:read", "/srv/a") is None
    with pytest.raises(PermissionDeniedError):
        check("file:read", "/srv/secret/a")


# execute_with_timeout ---------------------------------------------------------------------


def test_execute_with_timeout_returns_and_raises(tmp_path: Path) -> None:
    box = make(Engine.from_source(POLICY, []), tmp_path)
    assert box.execute_with_timeout(lambda a, b=0: a + b, 5, 1, b=2) == 3

    def fails() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        box.execute_with_timeout(fails, 5)


def test_execute_with_timeout_stops_a_blocked_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Blocked:
        """A helper thread that is still running when the timeout ends (it never starts:
        no real overrun is raised into this test process, whose threads it could hit)."""

        def __init__(self, target: Any, name: str, daemon: bool) -> None:
            self.name = name

        def start(self) -> None: ...

        def join(self, timeout: float) -> None: ...

        def is_alive(self) -> bool:
            return True

    monkeypatch.setattr(sandbox_module.threading, "Thread", Blocked)
    box = make(Engine.from_source(POLICY, []), tmp_path)
    with pytest.raises(PluginTimeoutError, match="next Python instruction"):
        box.execute_with_timeout(time.sleep, 0.05, 30, plugin="demo")


def test_execute_with_timeout_reports_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def at_deadline(*args: Any, **kwargs: Any) -> Any:
        raise DeadlineExceeded()

    monkeypatch.setattr(sandbox_module, "call_with_deadline", at_deadline)
    box = make(Engine.from_source(POLICY, []), tmp_path)
    with pytest.raises(PluginTimeoutError) as caught:
        box.execute_with_timeout(lambda: None, 5, plugin="demo", phase="hook")
    assert "hook timeout" in str(caught.value)


def test_execute_with_timeout_runs_and_cancels_coroutines(tmp_path: Path) -> None:
    box = make(Engine.from_source(POLICY, []), tmp_path)

    async def answer(x: int) -> int:
        return x * 2

    async def forever() -> None:
        await asyncio.sleep(3600)

    assert box.execute_with_timeout(answer, 5, 21) == 42
    assert box.execute_with_timeout(answer(4), 5) == 8  # an awaitable, not a function
    with pytest.raises(PluginTimeoutError, match="coroutine cancelled"):
        box.execute_with_timeout(forever, 0.01)


# validate_plugin ------------------------------------------------------------------------


def test_validate_registers_an_unknown_plugin(tmp_path: Path) -> None:
    engine = Engine.from_source('defaults { isolation inprocess  accept unpinned-inprocess }\n'
                                + POLICY, [])
    box = make(engine, tmp_path)
    result = box.validate_plugin(load_manifest(write_plugin(tmp_path)))
    assert result.valid, result.errors
    assert engine.plugin_table("demo") is not None


def test_validate_refuses_missing_kernel_layers_unless_degraded_is_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = SimpleNamespace(missing=("seccomp: not available",), level="filesystem-only")
    monkeypatch.setattr(sandbox_module.kernel, "detect", lambda: report)
    engine, metadata = pinned(tmp_path, POLICY)
    result = make(engine, tmp_path).validate_plugin(metadata)
    assert not result.valid
    assert "cannot give full process isolation (filesystem-only; missing: seccomp" in result.errors[0]
    engine, metadata = pinned(tmp_path, "defaults { isolation process allow degraded }\n" + POLICY)
    assert make(engine, tmp_path).validate_plugin(metadata).valid


def test_validate_adds_the_host_refusal_and_inexact_denies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module.kernel, "detect", lambda: SimpleNamespace(missing=(), level="full"))
    monkeypatch.setattr(doctor, "table_refusal", lambda table, layers=None: "no bubblewrap here")
    data = tmp_path / "data" / "demo"
    data.mkdir(parents=True)
    engine, metadata = pinned(tmp_path, STRICT + f'deny plugin * to file:write on "{data}/*.log"\n')
    result = make(engine, tmp_path).validate_plugin(metadata)
    # Validation's own errors first, then the host's refusal, then what the data directory adds.
    assert result.errors[1] == "no bubblewrap here"
    inexact = [result.errors[0], *result.errors[2:]]
    assert all("the kernel cannot hold this deny exactly" in e for e in inexact)
    # The data directory is shown writable, so a glob deny inside it cannot be held exactly.
    assert [("/srv/secret" in e, "*.log" in e) for e in inexact] == [(True, False), (False, True)]


# runner_for -------------------------------------------------------------------------------


def no_hooks(hook: str) -> Any:
    return lambda *args, **kwargs: None


def test_runner_for_refuses_what_validation_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = write_plugin(tmp_path)
    metadata = load_manifest(directory)
    unknown = make(Engine.from_source(POLICY, []), tmp_path)
    with pytest.raises(PluginValidationError, match="register its manifest first"):
        unknown.runner_for(metadata, no_hooks)
    inprocess = Engine.from_source('defaults { isolation inprocess }\n' + POLICY, [metadata])
    with pytest.raises(PluginValidationError, match="needs a matching `trust` pin"):
        make(inprocess, tmp_path).runner_for(metadata, no_hooks)
    engine, metadata = pinned(tmp_path, POLICY)
    monkeypatch.setattr(doctor, "table_refusal", lambda table, layers=None: "no bubblewrap here")
    with pytest.raises(PluginValidationError, match="no bubblewrap here"):
        make(engine, tmp_path).runner_for(metadata, no_hooks)
    monkeypatch.undo()
    inexact, metadata = pinned(tmp_path, STRICT)
    with pytest.raises(PluginValidationError, match="cannot hold this deny exactly"):
        make(inexact, tmp_path).runner_for(metadata, no_hooks)


def test_runner_for_refuses_a_manifest_without_a_directory(tmp_path: Path) -> None:
    text = "name: bare\nversion: 1.0.0\ntype: agent\nentry_point: m:P\n"
    engine = Engine.from_source("allow plugin * to file:read", [text])
    metadata = engine.manifest("bare")
    assert metadata is not None
    with pytest.raises(PluginValidationError, match="without a plugin directory"):
        make(engine, tmp_path).runner_for(metadata, no_hooks)


def test_an_inprocess_runner_may_spawn_exactly_when_the_table_grants_it(tmp_path: Path) -> None:
    policy = 'defaults { isolation inprocess }\nallow plugin * to subprocess:execute on "git"\n'
    for extra, may_spawn in (("", False), ("subprocess:execute git", True)):
        permissions = ("file:read /srv/**", *((extra,) if extra else ()))
        engine, metadata = pinned(tmp_path, policy, permissions)
        runner = make(engine, tmp_path).runner_for(metadata, no_hooks)
        assert isinstance(runner, InprocessPluginRunner)
        assert runner.runner._active.guard._allow_subprocess is may_spawn
        assert runner.init_timeout == engine.timeouts("demo").init
        assert runner.data_dir is not None and runner.data_dir.is_dir()  # created for the kernel
        runner.stop()  # never started: only the scratch directory goes
        assert runner.scratch_dir is not None and not runner.scratch_dir.exists()


def test_a_process_runner_is_built_from_the_table_it_is_given(tmp_path: Path) -> None:
    engine, metadata = pinned(tmp_path, POLICY + "defaults { limit memory 300MB  timeout init 7s }\n")
    table = engine.plugin_table("demo")
    assert table is not None
    box = make(engine, tmp_path)
    engine.reload('allow plugin * to file:read on "/elsewhere/**"')  # a reload meanwhile
    runner = box.runner_for(metadata, no_hooks, table)
    try:
        assert isinstance(runner, ProcessRunner)
        init = runner.init
        assert init.lockdown.read_paths == ("/srv",)  # the table given, not the reloaded one
        assert init.lockdown.memory_bytes == 300_000_000 and init.limits.init_timeout == 7.0
        assert init.checker["audit"] is False
        assert init.data_dir == str(tmp_path / "data" / "demo")
        levels = runner._levels
        assert levels is not None
        report = SimpleNamespace(seccomp=True, missing=(), landlock_abi=6, scoping=True)
        assert levels(report, True, {}) == ("full", "")
        level, refusal = levels(SimpleNamespace(seccomp=False, missing=(), landlock_abi=0,
                                                scoping=False), False, {})
        assert level == "without-bubblewrap" and refusal == ""  # pinned: never refused
    finally:
        assert runner.scratch_dir is not None
        shutil.rmtree(runner.scratch_dir, ignore_errors=True)


def test_an_audit_mode_process_runner_opens_the_lockdown(tmp_path: Path) -> None:
    engine, metadata = pinned(tmp_path, POLICY)
    runner = make(engine, tmp_path, mode="audit", unsandboxed_audit=True).runner_for(metadata, no_hooks)
    try:
        assert isinstance(runner, ProcessRunner)
        assert runner.init.lockdown.read_paths == ("/",) and runner.init.checker["audit"] is True
    finally:
        assert runner.scratch_dir is not None
        shutil.rmtree(runner.scratch_dir, ignore_errors=True)
