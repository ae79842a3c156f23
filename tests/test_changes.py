"""The one change detector: used by ``watch`` (lifecycle.Origin) and the engine's
incremental reload (policy parses, manifests), tested once here and through both users."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_engine import Engine
from policy_engine import engine as engine_module
from policy_engine.changes import ChangeDetector, Changes, content_digest, fingerprint
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
    real = engine_module.load_manifest

    def counting(path: Path) -> object:
        read.append(path.parent.name)
        return real(path)

    monkeypatch.setattr(engine_module, "load_manifest", counting)
    engine.reload()
    assert read == []
    (plugins / "two" / "plugin.yaml").write_text(
        "name: two\nversion: 1.0.1\ntype: agent\nentry_point: m:P\npermissions: [file:read /data/**]\n")
    engine.reload()
    assert read == ["two"] and (m := engine.manifest("two")) is not None and m.version == "1.0.1"
