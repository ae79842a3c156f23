"""Integration: real plugins in real worker processes, through PluginLoader and PluginSandbox.

A security test passes when the attempt fails with our permission or limit error (or the
worker is killed and replaced) and the host stays healthy and keeps serving.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_engine import (
    EnforcementError,
    Engine,
    FileSizeError,
    PermissionDeniedError,
    PluginCrashedError,
    PluginTimeoutError,
    PluginValidationError,
    ResourceLimitError,
    UsageError,
)
from policy_engine.digest import plugin_digest, trust_line
from policy_engine.enforcement.host import doctor, kernel
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.run import run_plugins
from policy_engine.enforcement.host.sandbox import PluginSandbox

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent.parent
POLICY = """
defaults { isolation process allow degraded }
allow plugin * to file:read on "{plugin_dir}/**", "{data_dir}/{plugin}/**"
allow plugin * to file:write, file:delete on "{data_dir}/{plugin}/**"
allow plugin * to hook:register
allow plugin * to config:read on "plugins.{plugin}.*"
deny plugin * to file:* on "/etc/**"
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    target = tmp_path / "plugins"
    shutil.copytree(FIXTURES, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def make_loader(tmp_path: Path, plugins: Path, policy: str = POLICY, **sandbox: object) -> PluginLoader:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (tmp_path / "site.policy").write_text(policy)
    engine = Engine.load(tmp_path / "site.policy", plugins=plugins, variables={"data_dir": str(data)})
    box = PluginSandbox(engine, data_dir=data, config={"plugins.example-agent.mode": "fast"},
                        scratch_root=tmp_path, **sandbox)  # type: ignore[arg-type]
    return PluginLoader(engine, box)


@pytest.fixture
def loader(tmp_path: Path, plugins: Path) -> Iterator[PluginLoader]:
    with make_loader(tmp_path, plugins) as loader:
        yield loader


def test_a_valid_plugin_with_permissions_loads_and_works(loader: PluginLoader, plugins: Path) -> None:
    agent = loader.load(plugins / "example_agent_plugin")
    assert agent.isolation.startswith("process")
    assert agent.run("tests") == "hello, tests"
    assert agent.setting("plugins.example-agent.mode") == "fast"
    results = loader.sandbox.hooks.run("document.saved", "three small words")
    assert [(r.plugin, r.ok, r.value) for r in results] == [("example-agent", True, 3)]


def test_config_outside_the_grant_is_denied_by_the_host(loader: PluginLoader, plugins: Path) -> None:
    agent = loader.load(plugins / "example_agent_plugin")
    with pytest.raises(PermissionDeniedError):
        agent.setting("secrets.token")


def test_a_workflow_writes_only_its_data_directory(loader: PluginLoader, plugins: Path, tmp_path: Path) -> None:
    workflow = loader.load(plugins / "example_workflow_plugin")
    assert workflow.execute("out.txt", 100) == 100
    assert (tmp_path / "data" / "example-workflow" / "out.txt").stat().st_size == 100
    assert workflow.read_back("out.txt") == "xxxxx"


def test_denied_permission_raises_and_the_host_keeps_serving(loader: PluginLoader, plugins: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    with pytest.raises(PermissionDeniedError) as info:
        bad.read("/etc/hostname")
    assert isinstance(info.value, PermissionError)
    assert "denied" in str(info.value)
    assert bad.execute() == "ok"
    assert any(r.action == "file:read" and r.resource == "/etc/hostname" for r in loader.sandbox.records())


@pytest.mark.parametrize("method", ["symlink_escape", "dotdot_escape"])
def test_path_escapes_are_denied(loader: PluginLoader, plugins: Path, method: str, tmp_path: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    (tmp_path / "data" / "malicious" / "escape").symlink_to("/etc")
    with pytest.raises(PermissionDeniedError):
        bad.call(method)


def test_a_plugin_cannot_plant_a_symlink_out_of_its_directory(loader: PluginLoader, plugins: Path,
                                                             tmp_path: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    with pytest.raises(Exception) as info:  # refused by the kernel (Landlock) or the audit hook
        bad.make_symlink()
    assert "ermission denied" in str(info.value)
    assert not (tmp_path / "data" / "malicious" / "escape2").is_symlink()


@pytest.mark.parametrize("method", ["sneaky_system", "shell"])
def test_programs_cannot_be_run_without_subprocess_permission(loader: PluginLoader, plugins: Path,
                                                              method: str) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    with pytest.raises(PermissionDeniedError):
        bad.call(method)


def test_host_environment_secrets_are_not_visible(loader: PluginLoader, plugins: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_SECRET", "s3cr3t")
    bad = loader.load(plugins / "malicious_plugin")
    assert bad.secret() is None


def test_network_without_permission_is_refused(loader: PluginLoader, plugins: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        bad = loader.load(plugins / "malicious_plugin")
        with pytest.raises(PermissionDeniedError):
            bad.connect(server.getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize("method", ["spin", "ignore_term_and_spin"])
def test_a_timeout_stops_the_worker_and_the_next_call_works(loader: PluginLoader, plugins: Path,
                                                            method: str) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    assert bad.execute() == "ok"
    started = time.monotonic()
    with pytest.raises(PluginTimeoutError) as info:
        bad.call(method)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 3
    assert info.value.phase == "execute" and info.value.limit == 1
    assert bad.execute() == "ok"


def test_a_memory_bomb_is_stopped_and_the_plugin_unloaded(loader: PluginLoader, plugins: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    with pytest.raises(ResourceLimitError):
        bad.bomb()
    assert bad.unloaded is not None and "limit" in bad.unloaded
    with pytest.raises(EnforcementError, match="was unloaded"):
        bad.execute()
    assert loader.get("malicious") is None


def test_a_write_past_the_file_size_limit_leaves_no_oversize_file(loader: PluginLoader, plugins: Path,
                                                                   tmp_path: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    with pytest.raises(FileSizeError):
        bad.huge_file()
    huge = tmp_path / "data" / "malicious" / "huge.bin"
    assert not huge.exists() or huge.stat().st_size <= 1_000_000
    assert bad.execute() == "ok"


def test_a_crash_is_reported_and_the_next_call_works(loader: PluginLoader, plugins: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    with pytest.raises(PluginCrashedError):
        bad.crash()
    assert bad.execute() == "ok"


def test_a_crafted_result_is_only_data(loader: PluginLoader, plugins: Path, tmp_path: Path) -> None:
    bad = loader.load(plugins / "malicious_plugin")
    result = bad.crafted_result()
    assert result["py/object"] == "os.system" and isinstance(result, dict)


def test_an_invalid_plugin_never_loads_and_never_stops_the_others(tmp_path: Path, plugins: Path) -> None:
    broken = plugins / "broken"
    broken.mkdir()
    (broken / "plugin.yaml").write_text("name: broken\nversion: 1.0.0\ntype: agent\nentry_point: nope:Nope\n")
    with make_loader(tmp_path, plugins) as loader:
        loaded, failed = loader.load_all(plugins)
        assert set(loaded) == {"example-agent", "example-workflow", "malicious"}
        assert isinstance(failed["broken"], PluginValidationError)
        assert "not in the plugin directory" in str(failed["broken"])


def test_a_pin_mismatch_refuses_to_load(tmp_path: Path, plugins: Path) -> None:
    agent_dir = plugins / "example_agent_plugin"
    pin = plugin_digest(agent_dir)
    with make_loader(tmp_path, plugins, POLICY + trust_line("example-agent", pin)) as loader:
        assert loader.load(agent_dir).run() == "hello, world"
    (agent_dir / "greeting.txt").write_text("tampered")
    with make_loader(tmp_path, plugins, POLICY + trust_line("example-agent", pin)) as loader:
        with pytest.raises(PluginValidationError, match="does not match the policy's pin"):
            loader.load(agent_dir)


def test_missing_kernel_features_refuse_process_isolation_unless_degraded_is_allowed(
    tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = kernel.detect()
    no_landlock = type(real)(landlock_abi=0, seccomp=real.seccomp, no_new_privs=real.no_new_privs,
                             root=real.root, can_switch_uid=real.can_switch_uid)
    monkeypatch.setattr(kernel, "detect", lambda: no_landlock)
    strict = POLICY.replace("defaults { isolation process allow degraded }", "")
    with make_loader(tmp_path, plugins, strict) as loader:
        with pytest.raises(PluginValidationError, match="allow degraded"):
            loader.load(plugins / "example_agent_plugin")


def test_an_unpinned_inprocess_plugin_is_refused(tmp_path: Path, plugins: Path) -> None:
    policy = POLICY + 'plugin "malicious" { isolation inprocess }\n'
    with make_loader(tmp_path, plugins, policy) as loader:
        with pytest.raises(PluginValidationError, match="accept unpinned-inprocess"):
            loader.load(plugins / "malicious_plugin")
        assert loader.sandbox.check_permission("malicious", "file:read", "/etc/hostname") is False
        # The runner refuses it too, for callers that skip validation.
        metadata = loader.engine.manifest("malicious")
        assert metadata is not None
        with pytest.raises(PluginValidationError, match="trust"):
            loader.sandbox.runner_for(metadata, lambda hook: lambda *a, **k: None)


def test_a_pinned_inprocess_plugin_loads_without_accepting_the_risk(tmp_path: Path, plugins: Path) -> None:
    digest = plugin_digest(plugins / "example_agent_plugin")
    policy = (POLICY + 'plugin "example-agent" { isolation inprocess }\n'
              + trust_line("example-agent", digest) + "\n")
    with make_loader(tmp_path, plugins, policy) as loader:
        agent = loader.load(plugins / "example_agent_plugin")
        assert agent.isolation.startswith("inprocess")


def test_inprocess_mode(tmp_path: Path, plugins: Path) -> None:
    policy = POLICY + 'plugin "malicious" { isolation inprocess\n accept unpinned-inprocess }\n'
    with make_loader(tmp_path, plugins, policy) as loader:
        bad = loader.load(plugins / "malicious_plugin")
        assert bad.isolation.startswith("inprocess")
        assert bad.execute() == "ok"
        with pytest.raises(PermissionDeniedError):
            bad.read("/etc/hostname")
        assert Path("/etc/hostname").read_text()  # the host itself is not affected
        with pytest.raises(PluginTimeoutError):
            bad.spin()
        with pytest.raises(EnforcementError, match="quarantined"):
            bad.execute()


def test_audit_mode_denies_nothing_and_records_everything(tmp_path: Path, plugins: Path) -> None:
    with make_loader(tmp_path, plugins, mode="audit", unsandboxed_audit=True) as loader:
        bad = loader.load(plugins / "malicious_plugin")
        assert bad.read(str(plugins / "malicious_plugin" / "plugin.yaml")).startswith("name: malicious")
        assert loader.sandbox.check_permission("malicious", "network:request", "example.com:443")
        records = loader.sandbox.records("malicious")
        assert any(not r.allowed and r.action == "network:request" for r in records)


def test_audit_mode_without_bubblewrap_is_refused_without_its_explicit_option(
        tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.enforcement.host import bwrap
    from policy_engine.enforcement.host.learn import learn

    monkeypatch.setattr(bwrap, "available", lambda: "bubblewrap is not installed")
    with pytest.raises(UsageError, match="audit mode runs plugins in the kernel sandbox") as caught:
        make_loader(tmp_path, plugins, mode="audit")
    assert "unsandboxed_audit=True" in str(caught.value)
    assert "bubblewrap is not installed" in str(caught.value)
    with pytest.raises(UsageError, match="needs bubblewrap"):
        learn(ROOT / "examples" / "plugins" / "rogue", ROOT / "policies")
    with pytest.raises(UsageError, match="needs bubblewrap"):
        run_plugins(ROOT / "policies", ROOT / "examples" / "plugins", mode="audit")


def test_execute_with_timeout_stops_sync_and_async_work(loader: PluginLoader) -> None:
    box = loader.sandbox
    assert box.execute_with_timeout(lambda x: x * 2, 1, 21) == 42
    state = {"loops": 0}

    def spin() -> None:
        while True:
            state["loops"] += 1

    started = time.monotonic()
    with pytest.raises(PluginTimeoutError):
        box.execute_with_timeout(spin, 0.2)
    assert time.monotonic() - started < 1
    time.sleep(0.2)
    loops = state["loops"]
    time.sleep(0.1)
    assert state["loops"] == loops  # the work really stopped

    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    with pytest.raises(PluginTimeoutError):
        box.execute_with_timeout(slow, 0.1)


def test_the_run_job_on_the_examples(tmp_path: Path) -> None:
    report = run_plugins(ROOT / "policies", ROOT / "examples" / "plugins")
    by_name = {p.name: p for p in report.plugins}
    assert by_name["summarizer"].outcome == "ok"
    assert by_name["report-builder"].outcome == "ok"
    rogue = by_name["rogue"]
    outcomes = {c.method: c.outcome for c in rogue.calls}
    assert outcomes["read_passwd"] == "denied"
    assert outcomes["phone_home"] == "denied"
    assert outcomes["spawn_shell"] == "denied"
    assert outcomes["sneaky_system"] == "denied"
    assert outcomes["loop_forever"] == "timeout"
    assert outcomes["fill_disk"] == "limit"
    assert outcomes["eat_memory"] == "limit"
    details = {c.method: c.detail for c in rogue.calls}
    for method in ("eat_memory", "fill_disk"):  # sizes for people, the peak next to the limit
        assert "bytes" not in details[method] and " MB" in details[method], details[method]
    assert "ran out of memory" in details["eat_memory"] and "peak" in details["eat_memory"]
    assert rogue.peak_memory > 0
    assert rogue.outcome.startswith("unloaded")
    assert any(d.rules and d.rules[0].endswith("default.policy:28:1") for d in rogue.denials)
    assert report.seconds < 30


def test_learn_lists_what_a_plugin_needed(tmp_path: Path) -> None:
    from policy_engine.enforcement.host.learn import learn

    result = learn(ROOT / "examples" / "plugins" / "rogue", ROOT / "policies", unsandboxed=True)
    assert "file:read /etc/passwd" in result.needed
    assert "file:write {data_dir}/rogue/**" in result.needed
    assert any(entry.startswith("file:read /etc/passwd — ") and "default.policy" in entry
               for entry in result.blocked)
    assert 'allow plugin "rogue" to network:request on "collector.evil.test:443"' in result.rules
    assert "can leave actions out or make them up" in result.caveat
    from policy_engine.cli.learn import render_learn

    assert "note: needs marked `worker` were reported by the plugin's own worker" in render_learn(result)


def test_a_name_claimed_by_two_directories_is_refused_for_both(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    for copy in ("a_first", "b_second"):
        shutil.copytree(ROOT / "examples" / "plugins" / "summarizer", plugins / copy)
    with make_loader(tmp_path, plugins) as loader:
        loaded, failed = loader.load_all(plugins)
        assert loaded == {}
        assert set(failed) == {"a_first", "b_second"}
        for error in failed.values():
            assert "claimed by two directories" in str(error)
            assert str(plugins / "a_first") in str(error) and str(plugins / "b_second") in str(error)


def test_loading_a_second_directory_with_a_loaded_name_unloads_both(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    for copy in ("a_first", "b_second"):
        shutil.copytree(ROOT / "examples" / "plugins" / "summarizer", plugins / copy)
    with make_loader(tmp_path, plugins) as loader:
        loader.load(plugins / "a_first")
        with pytest.raises(PluginValidationError, match="claimed by two directories"):
            loader.load(plugins / "b_second")
        assert loader.get("summarizer") is None  # the first does not keep running either


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    layers = {**doctor.host_layers(), **dict.fromkeys(missing, False)}
    monkeypatch.setattr(doctor, "host_layers", lambda: layers)


def test_an_untrusted_plugin_without_full_isolation_is_refused_naming_the_layer(
    tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without(monkeypatch, "bubblewrap", "user-namespace", "cgroup")
    with make_loader(tmp_path, plugins) as loader:
        with pytest.raises(PluginValidationError) as caught:
            loader.load(plugins / "example_agent_plugin")
        message = str(caught.value)
        assert "`bubblewrap`, `user-namespace`, `cgroup` are missing" in message
        assert "apt-get install bubblewrap" in message
        assert "`accept missing-bubblewrap`, `accept missing-user-namespace`, " \
               "`accept missing-cgroup`" in message
        # The runner refuses it too, for callers that skip validation.
        metadata = loader.engine.manifest("example-agent")
        assert metadata is not None
        with pytest.raises(PluginValidationError, match="missing-bubblewrap"):
            loader.sandbox.runner_for(metadata, lambda hook: lambda *a, **k: None)


def test_each_missing_layer_must_be_accepted_by_name(
    tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without(monkeypatch, "seccomp", "cgroup")
    partly = POLICY + 'plugin "example-agent" { accept missing-seccomp }\n'
    with make_loader(tmp_path, plugins, partly) as loader:
        with pytest.raises(PluginValidationError, match="layer `cgroup` is missing"):
            loader.load(plugins / "example_agent_plugin")
    monkeypatch.undo()
    _without(monkeypatch, "seccomp", "cgroup")
    both = POLICY.replace("defaults { isolation process allow degraded }",
                          "defaults { isolation process allow degraded\n accept missing-cgroup }")
    both += 'plugin "example-agent" { accept missing-seccomp }\n'
    (tmp_path / "second").mkdir()
    with make_loader(tmp_path / "second", plugins, both) as loader:
        assert doctor.plugin_refusal(loader.engine, "example-agent") == ""
        assert "missing-seccomp" in doctor.plugin_refusal(loader.engine, "malicious")


def test_a_pinned_plugin_is_trusted_whatever_the_level(
    tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without(monkeypatch, "bubblewrap", "user-namespace", "cgroup")
    digest = plugin_digest(plugins / "example_agent_plugin")
    pinned = POLICY + trust_line("example-agent", digest) + "\n"
    with make_loader(tmp_path, plugins, pinned) as loader:
        assert doctor.plugin_refusal(loader.engine, "example-agent") == ""
        assert doctor.plugin_refusal(loader.engine, "malicious") != ""


def test_a_deny_the_kernel_cannot_hold_is_refused_naming_the_rule(
    tmp_path: Path, plugins: Path
) -> None:
    policy = POLICY + 'deny plugin "example-agent" to file:read on "{plugin_dir}/**/*.key"\n'
    with make_loader(tmp_path, plugins, policy) as loader:
        with pytest.raises(PluginValidationError) as caught:
            loader.load(plugins / "example_agent_plugin")
        message = str(caught.value)
        assert "site.policy:8:1" in message and '"{plugin_dir}/**/*.key"' in message
        assert "glob inside granted" in message and "accept inexact-deny" in message
        metadata = loader.engine.manifest("example-agent")
        assert metadata is not None
        with pytest.raises(PluginValidationError, match="inexact-deny"):
            loader.sandbox.runner_for(metadata, lambda hook: lambda *a, **k: None)
    missing = POLICY + f'deny plugin "example-agent" to file:read on "{plugins}/example_agent_plugin/later.txt"\n'
    (tmp_path / "second").mkdir()
    with make_loader(tmp_path / "second", plugins, missing) as loader:
        with pytest.raises(PluginValidationError, match="does not exist yet"):
            loader.load(plugins / "example_agent_plugin")


def test_an_accepted_inexact_deny_loads_and_the_table_still_holds_it(
    tmp_path: Path, plugins: Path
) -> None:
    policy = POLICY + ('deny plugin "example-agent" to file:read on "{plugin_dir}/**/*.key"\n'
                       'plugin "example-agent" { accept inexact-deny }\n')
    with make_loader(tmp_path, plugins, policy) as loader:
        agent = loader.load(plugins / "example_agent_plugin")
        assert agent.run("tests") == "hello, tests"
        key = str(plugins / "example_agent_plugin" / "sub" / "a.key")
        assert loader.sandbox.check_permission("example-agent", "file:read", key) is False


def test_the_level_reported_is_the_workers_own_and_a_shortfall_is_refused(
    tmp_path: Path, plugins: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_loader(tmp_path, plugins) as loader:
        agent = loader.load(plugins / "example_agent_plugin")
        report = agent.runner.report  # type: ignore[attr-defined]
        sandboxed = agent.runner.worker.sandboxed  # type: ignore[attr-defined]
        level = doctor.isolation_level(doctor.plugin_layers(
            loader.engine, "example-agent",
            doctor.worker_layers(report, sandboxed, agent.limits)))
        assert agent.isolation == f"process ({level})"
    # The worker came up without seccomp although the host promised it: stopped, refused.
    real = doctor.worker_layers
    monkeypatch.setattr(doctor, "worker_layers",
                        lambda report, sandboxed, limits=None: {
                            **real(report, sandboxed, limits), "seccomp": False})
    (tmp_path / "second").mkdir()
    with make_loader(tmp_path / "second", plugins) as loader:
        with pytest.raises(PluginValidationError, match="layer `seccomp` is missing"):
            loader.load(plugins / "example_agent_plugin")
        assert loader.get("example-agent") is None
