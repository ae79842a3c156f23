"""``policy-engine sandbox-plan``: the view a plugin's sandbox gets, printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy_engine.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


def test_the_plan_shows_the_plugin_code_and_its_data(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sandbox-plan", "summarizer", "--plugins", str(EXAMPLES), "--data-dir",
                 str(tmp_path), "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    mounts = {m["dest"]: m for m in plan["mounts"]}
    assert mounts[str(EXAMPLES / "summarizer")]["kind"] == "ro-bind"
    assert mounts[str(tmp_path / "summarizer")]["kind"] == "bind"
    assert mounts["/"]["kind"] == "tmpfs"
    assert mounts["/etc/passwd"]["kind"] == "data"
    for dest in mounts:
        assert not dest.startswith(("/home", "/var", "/etc/shadow", "/srv"))


def test_the_text_plan_is_one_mount_a_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox-plan", "summarizer", "--plugins", str(EXAMPLES), "--data-dir",
                 str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sandbox view of plugin `summarizer`:"
    assert any(line.split()[:2] == ["ro-bind", str(EXAMPLES / "summarizer")] for line in lines)


def test_an_unknown_plugin_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox-plan", "nope", "--plugins", str(EXAMPLES)]) == 2
    assert "no plugin `nope`" in capsys.readouterr().err
