"""The one change detector: used by ``watch`` (lifecycle.Origin) and the engine's
incremental reload (policy parses, manifests), tested once here and through both users."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from policy_engine import Engine
from policy_engine import engine as engine_module
from policy_engine.changes import ChangeDetector, Changes, content_digest, fingerprint
from policy_engine.decision import Reason
from policy_engine.digest import plugin_digest, trust_line
from policy_engine.engine import AUDIT_LOGGER_NAME
from policy_engine.lifecycle import Origin

ALLOW = 'allow plugin * to file:read on "/data/**"\n'
DENY = 'deny plugin * to file:read on "/data/secret/**"\n'


def test_changes_by_content_not_by_identity() -> None:
    detector: ChangeDetector[int] = ChangeDetector()
    assert detector.fingerprint is None
    assert detector.changes({"a": "x"}) == Changes(added=("a",))
    detector.adopt({"a": ("x", 1), "b": (b"y", 2)})
    assert not detector.changes({"b": b"y", "a": "x"})
    assert detector.changes({"a": "x2", "c": "z"}) == Changes(added=("c",), changed=("a",), removed=("b",))
    assert detector.kept("a", "x") == 1 and detector.kept("a", "x2") is None and detector.kept("zz", "") is None
    assert detector.fingerprint == fingerprint({"a": "x", "b": b"y"})
    # Names and contents are length-prefixed: moving a byte between them is a change.
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
    assert content_digest("é") == content_digest("é".encode())


def test_the_engine_reparses_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.policy").write_text(ALLOW)
    (tmp_path / "b.policy").write_text(DENY)
    engine = Engine.load(tmp_path)
    parsed: list[str] = []
    real = engine_module.parse_policy

    def counting(text: str, name: str) -> object:
        parsed.append(Path(name).name)
        return real(text, name)

    monkeypatch.setattr(engine_module, "parse_policy", counting)
    engine.reload()
    assert parsed == []
    (tmp_path / "b.policy").write_text(DENY + "# edited\n")
    engine.reload()
    assert parsed == ["b.policy"]
    assert isinstance(engine._parsed, ChangeDetector)  # the same class as the watcher's


def test_the_watcher_uses_the_same_detector(tmp_path: Path) -> None:
    (tmp_path / "a.policy").write_text(ALLOW)
    origin = Origin([tmp_path])
    sources = origin.initial()
    assert origin.fingerprint == fingerprint(sources)
    assert origin.poll() is None
    (tmp_path / "a.policy").write_text(ALLOW + DENY)
    assert origin.poll() is None          # first sight of a change: not yet stable
    assert origin.poll() is not None      # the same content twice: adopted
    origin.commit()
    assert origin.poll() is None
    assert isinstance(origin._files, ChangeDetector)


def test_a_manifest_is_read_again_only_when_its_bytes_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p.policy").write_text(ALLOW)
    plugins = tmp_path / "plugins"
    for name in ("one", "two"):
        (plugins / name).mkdir(parents=True)
        (plugins / name / "plugin.yaml").write_text(
            f"name: {name}\nversion: 1.0.0\ntype: agent\nentry_point: m:P\npermissions: [file:read /data/**]\n")
    engine = Engine.load(tmp_path / "p.policy", plugins)
    read: list[str] = []
    real = engine_module.manifest_from_bytes

    def counting(raw: bytes, path: Path, absolute: Path) -> object:
        read.append(path.parent.name)
        return real(raw, path, absolute)

    monkeypatch.setattr(engine_module, "manifest_from_bytes", counting)
    engine.reload()
    assert read == []
    (plugins / "two" / "plugin.yaml").write_text(
        "name: two\nversion: 1.0.1\ntype: agent\nentry_point: m:P\npermissions: [file:read /data/**]\n")
    engine.reload()
    assert read == ["two"] and (m := engine.manifest("two")) is not None and m.version == "1.0.1"


# Watching plugin directories (opt-in) -------------------------------------------------------------

def _manifest(name: str, version: str = "1.0.0") -> str:
    return f"name: {name}\nversion: {version}\ntype: agent\nentry_point: m:P\npermissions: [file:read /data/**]\n"


def _plugin(plugins: Path, directory: str, name: str, version: str = "1.0.0") -> Path:
    (plugins / directory).mkdir(parents=True, exist_ok=True)
    (plugins / directory / "plugin.yaml").write_text(_manifest(name, version))
    (plugins / directory / "m.py").write_text("class P: pass\n")
    return plugins / directory


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    found = [r.plugin_event for r in caplog.records if r.name == AUDIT_LOGGER_NAME]  # type: ignore[attr-defined]
    caplog.clear()
    return [(e["kind"], Path(e["path"]).parent.name if e["path"].endswith(".yaml") else e["path"]) for e in found]


def _one_plugin(tmp_path: Path) -> tuple[Engine, Path]:
    """An engine over one policy and a plugins directory holding plugin `one`."""
    (tmp_path / "p.policy").write_text(ALLOW)
    plugins = tmp_path / "plugins"
    _plugin(plugins, "one", "one")
    return Engine.load(tmp_path / "p.policy", plugins), plugins


def test_manifests_added_changed_removed_are_audit_events(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, plugins = _one_plugin(tmp_path)
    caplog.set_level(logging.WARNING, logger=AUDIT_LOGGER_NAME)
    handle = engine.watch(3600, plugins=True)  # polled by hand below
    try:
        assert engine.poll(plugins=True) and _events(caplog) == []
        _plugin(plugins, "two", "two")
        assert engine.poll(plugins=True)
        assert _events(caplog) == [("manifest-added", "two")] and "two" in engine.plugins
        (plugins / "one" / "plugin.yaml").write_text(_manifest("one", "2.0.0"))
        assert engine.poll(plugins=True)
        assert _events(caplog) == [("manifest-changed", "one")]
        assert (m := engine.manifest("one")) is not None and m.version == "2.0.0"
        shutil.rmtree(plugins / "two")
        assert engine.poll(plugins=True)
        assert _events(caplog) == [("manifest-removed", "two")] and "two" not in engine.plugins
    finally:
        handle.stop()
    # Without the opt-in, plugin directories are not watched.
    _plugin(plugins, "three", "three")
    assert engine.poll() and "three" not in engine.plugins and _events(caplog) == []


def test_a_changed_pinned_plugin_fails_its_pin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugins = tmp_path / "plugins"
    one = _plugin(plugins, "one", "one")
    (tmp_path / "p.policy").write_text(ALLOW + trust_line("one", plugin_digest(one)) + "\n")
    engine = Engine.load(tmp_path / "p.policy", plugins)
    assert engine.decide("one", "file:read", "/data/x").allowed
    caplog.set_level(logging.WARNING, logger=AUDIT_LOGGER_NAME)
    engine.watch(3600, plugins=True).stop()
    (one / "m.py").write_text("class P:\n    evil = True\n")
    assert engine.poll(plugins=True)
    assert _events(caplog) == [("files-changed", "pinned plugin `one`")]
    decision = engine.decide("one", "file:read", "/data/x")
    assert not decision.allowed and decision.reason == Reason.UNTRUSTED


def test_a_new_directory_claiming_a_loaded_name_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "p.policy").write_text(ALLOW)
    plugins = tmp_path / "plugins"
    _plugin(plugins, "zz-real", "tool", "1.0.0")
    engine = Engine.load(tmp_path / "p.policy", plugins)
    caplog.set_level(logging.WARNING, logger=AUDIT_LOGGER_NAME)
    engine.watch(3600, plugins=True).stop()
    _plugin(plugins, "aa-impostor", "tool", "6.6.6")  # sorts first: it must not take the name over
    assert engine.poll(plugins=True)
    manifest = engine.manifest("tool")
    assert manifest is not None and manifest.version == "1.0.0"
    assert _events(caplog) == [("manifest-added", "aa-impostor"), ("claim-refused", "aa-impostor")]
    assert any("claiming it is refused" in p.message for p in engine.problems)


def test_watching_plugins_reads_each_manifest_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.bounded import DEFAULT_LIMITS

    engine, plugins = _one_plugin(tmp_path)
    read: list[int] = []
    handle = engine.watch(3600, plugins=True)
    try:
        huge = plugins / "huge"
        huge.mkdir()
        (huge / "plugin.yaml").write_bytes(b"#" * (DEFAULT_LIMITS.yaml_bytes * 8))
        monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(1) or b"")
        contents = engine._plugin_contents()
        assert read == []  # never read whole, unbounded
        assert str(contents[str(huge / "plugin.yaml")]).startswith("unreadable: ")
        assert "yaml_bytes" in str(contents[str(huge / "plugin.yaml")])
        assert isinstance(contents[str(plugins / "one" / "plugin.yaml")], bytes)
    finally:
        handle.stop()
