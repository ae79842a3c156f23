"""Integration: what the kernel refused reaches `run`, `learn` and the decision log, and audit
mode runs in the sandbox. Real workers; the worker's audit hook is switched off where the
test is about the kernel side (``LockdownSpec(audit_hook=False)``)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_engine import Engine, PermissionDeniedError, PluginRaisedError
from policy_engine.decision_log import DecisionLog
from policy_engine.enforcement.host import bwrap, sandbox, syscalls
from policy_engine.enforcement.host.learn import learn
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.run import report_to_dict, run_plugins
from policy_engine.enforcement.host.sandbox import PluginSandbox
from policy_engine.errors import KernelDeniedError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(syscalls.unavailable()), reason="no seccomp user notification"),
]

FIXTURES = Path(__file__).parent / "fixtures_kernel"
POLICY = """
defaults { isolation process allow degraded }
allow plugin * to file:read, file:write on "{data_dir}/{plugin}/**"
"""


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    target = tmp_path / "plugins"
    shutil.copytree(FIXTURES, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def hook_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers start without their audit hook: only the kernel layers and the host hold."""
    real = sandbox.lockdown_spec

    def without_hook(*args: object, **kwargs: object) -> object:
        return dataclasses.replace(real(*args, **kwargs), audit_hook=False)  # type: ignore[arg-type]

    monkeypatch.setattr(sandbox, "lockdown_spec", without_hook)


def _engine(tmp_path: Path, plugins: Path, policy: str = POLICY,
            log: io.StringIO | None = None) -> Engine:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (tmp_path / "site.policy").write_text(policy)
    return Engine.load(tmp_path / "site.policy", plugins=plugins,
                       variables={"data_dir": str(data)},
                       decision_log=DecisionLog(log) if log is not None else None)


@pytest.fixture
def logged(tmp_path: Path, plugins: Path) -> Iterator[tuple[PluginLoader, io.StringIO]]:
    log = io.StringIO()
    engine = _engine(tmp_path, plugins, log=log)
    box = PluginSandbox(engine, data_dir=tmp_path / "data", scratch_root=tmp_path)
    with PluginLoader(engine, box) as loader:
        yield loader, log


def _kernel_lines(log: io.StringIO) -> list[dict[str, object]]:
    return [entry for entry in map(json.loads, log.getvalue().splitlines())
            if entry.get("source") == "kernel"]


def test_a_dir_fd_open_the_hook_misreads_is_a_kernel_denial(
        logged: tuple[PluginLoader, io.StringIO], plugins: Path) -> None:
    loader, log = logged
    plugin = loader.load(plugins / "sneaky")
    with pytest.raises(KernelDeniedError) as refused:  # EACCES from the host's listener
        plugin.dir_fd_read()
    assert isinstance(refused.value, PermissionDeniedError)  # what callers already catch
    secret = str(plugins / "sneaky" / "secret.txt")
    records = [r for r in loader.sandbox.records("sneaky") if r.resource == secret]
    assert [(r.action, r.allowed, r.source) for r in records] == [("file:read", False, "kernel")]
    lines = [e for e in _kernel_lines(log) if e["resource"] == secret]
    assert lines and lines[0]["allowed"] is False and lines[0]["action"] == "file:read"


def test_with_the_hook_off_a_plain_open_is_still_recorded_from_the_kernel(
        hook_off: None, logged: tuple[PluginLoader, io.StringIO], plugins: Path) -> None:
    loader, log = logged
    plugin = loader.load(plugins / "sneaky")
    secret = plugins / "sneaky" / "secret.txt"
    # The kernel refused it (the host's listener answered EACCES): the call fails as the
    # host decided it, a PermissionDeniedError carrying the host's Decision.
    with pytest.raises(KernelDeniedError) as refused:
        plugin.plain_read(str(secret))
    assert refused.value.decision.resource == str(secret)
    assert refused.value.decision.reason.value == "not_declared"
    assert plugin.write_data("kept") == "written"  # an allowed open continues in the kernel
    assert (loader.sandbox.data_dir / "sneaky" / "note.txt").read_text() == "kept"
    denials = [r for r in loader.sandbox.records("sneaky") if not r.allowed]
    assert {(r.action, r.resource, r.source) for r in denials} == {
        ("file:read", str(secret), "kernel")}
    assert any(e["resource"] == str(secret) and e["allowed"] is False
               for e in _kernel_lines(log))


def test_run_json_shows_the_kernel_denial_with_its_source(
        hook_off: None, tmp_path: Path, plugins: Path) -> None:
    (tmp_path / "site.policy").write_text(POLICY)
    report = run_plugins(tmp_path / "site.policy", plugins)
    data = report_to_dict(report)
    (sneaky,) = data["plugins"]
    calls = {c["method"]: c["outcome"] for c in sneaky["calls"]}
    assert calls["execute"] == "ok" and calls["dir_fd_read"] != "ok"
    assert {"action": "file:read", "source": "kernel", "reason": "not_declared"}.items() <= \
        sneaky["denials"][0].items()
    assert sneaky["denials"][0]["resource"].endswith("/sneaky/secret.txt")


def test_a_program_start_without_the_permission_is_refused_and_recorded(
        hook_off: None, logged: tuple[PluginLoader, io.StringIO], plugins: Path) -> None:
    loader, _log = logged
    plugin = loader.load(plugins / "sneaky")
    assert plugin.exec_program("/bin/true") == "refused: EPERM"
    assert any(r.action == "subprocess:execute" and r.resource == "true" and
               r.source == "kernel" and not r.allowed for r in loader.sandbox.records("sneaky"))


def _snapshot(root: Path) -> dict[str, bytes]:
    found = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            found[str(path)] = path.read_bytes()
    return found


@pytest.mark.skipif(bool(bwrap.available()), reason="bubblewrap does not work here")
def test_audit_mode_writes_are_thrown_away_and_connects_recorded(
        tmp_path: Path, plugins: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "existing.txt").write_text("host content")
    outside = tmp_path / "outside"
    outside.mkdir()
    policy = POLICY + f'allow plugin * to file:write on "{granted}/**"\n'
    engine = _engine(tmp_path, plugins, policy)
    box = PluginSandbox(engine, mode="audit", data_dir=tmp_path / "data", scratch_root=tmp_path)
    before = _snapshot(tmp_path)
    with PluginLoader(engine, box) as loader:
        plugin = loader.load(plugins / "sneaky")
        assert plugin.isolation.startswith("process")
        assert plugin.write_data("thrown away") == "written"  # its data dir: a tmpfs
        assert plugin.write(str(granted / "existing.txt"), "changed") == "written"
        with pytest.raises(PluginRaisedError, match="FileNotFoundError"):  # not in the view
            plugin.write(str(outside / "new.txt"), "escaped")
        with pytest.raises(PluginRaisedError, match="OSError|PermissionError"):  # read-only
            plugin.write(str(plugins / "sneaky" / "sneaky.py"), "replaced")
        assert plugin.connect("example.test", 80) == "refused: PermissionDeniedError"
        records = box.records("sneaky")
    after = _snapshot(tmp_path)
    changed = {path for path in before.keys() | after.keys()
               if before.get(path) != after.get(path) and "/policy-engine-sneaky-" not in path}
    assert changed == set()
    assert (granted / "existing.txt").read_text() == "host content"
    assert not (outside / "new.txt").exists()
    connects = [r for r in records if r.action == "network:request"]
    assert [(r.resource, r.allowed, r.source) for r in connects] == [
        ("example.test:80", False, "host")]
    kernel_writes = {r.resource for r in records if r.source == "kernel" and
                     r.action == "file:write"}
    assert str(granted / "existing.txt") in kernel_writes
    assert str(outside / "new.txt") in kernel_writes


@pytest.mark.skipif(bool(bwrap.available()), reason="bubblewrap does not work here")
def test_learn_says_who_saw_each_need() -> None:
    root = Path(__file__).parent.parent.parent
    result = learn(root / "examples" / "plugins" / "rogue", root / "policies")
    assert result.kernel_records
    assert "kernel" in result.sources["file:read /etc/passwd"]
    assert "worker" in result.sources["file:read /etc/passwd"]
    assert "host" in result.sources["network:request collector.evil.test:443"]
    assert "file:write {data_dir}/rogue/**" in result.needed
    assert "marked `worker`" in result.caveat and "cannot forge" in result.caveat
    from policy_engine.cli.learn import render_learn

    text = render_learn(result)
    assert "(kernel, worker)" in text and "who saw it" in text
