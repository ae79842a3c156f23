"""``policy-engine``: every subcommand's text and JSON output (golden files), exit codes, and
one-line errors. ``main([...])`` runs in-process in a scratch copy of the shipped policies,
the example plugins and the fixtures, so every path in the output is relative."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from policy_engine.cli.main import main
from policy_engine.digest import plugin_digest

from ..conftest import assert_golden

ROOT = Path(__file__).parent.parent.parent
HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
VARS = ["--var", "data_dir=/data", "--var", "home=/home/u"]
SHIPPED = ["--policy", "policies", "--plugins", "examples/plugins", *VARS]
FIXTURE = ["--policy", "fixtures/policies/base.policy", "--plugins", "fixtures/plugins", *VARS]
FIXTURE_DIFF = ["fixtures/policies/base.policy", "fixtures/policies/edited.policy",
                "--plugins", "fixtures/plugins", *VARS]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch directory holding `policies/`, `examples/plugins/` and `fixtures/`."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    shutil.copytree(ROOT / "examples" / "plugins", tmp_path / "examples" / "plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(HERE / "fixtures", tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CASES = [
    # name, argv, exit code
    ("decide_allowed.txt", ["decide", "report-builder", "file:read", "/data/report-builder/out.csv", *SHIPPED], 0),
    ("decide_allowed.json", ["decide", "report-builder", "file:read", "/data/report-builder/out.csv",
                             "--json", *SHIPPED], 0),
    ("decide_denied.txt", ["decide", "rogue", "file:read", "/etc/passwd", *SHIPPED], 1),
    ("decide_denied.json", ["decide", "rogue", "file:read", "/etc/passwd", "--json", *SHIPPED], 1),
    ("decide_context_allowed.txt", ["decide", "alpha", "database:read", "metrics.cpu",
                                    "--context", "env=prod", *FIXTURE], 0),
    ("decide_context_denied.txt", ["decide", "alpha", "database:read", "metrics.cpu",
                                   "--context", "env=dev", *FIXTURE], 1),
    ("matrix_shipped.txt", ["matrix", *SHIPPED], 0),
    ("matrix_shipped.json", ["matrix", "--json", *SHIPPED], 0),
    ("matrix_shipped.md", ["matrix", "--markdown", *SHIPPED], 0),
    ("matrix_fixture.txt", ["matrix", *FIXTURE], 0),
    ("matrix_fixture.json", ["matrix", "--json", *FIXTURE], 0),
    ("matrix_fixture.md", ["matrix", "--markdown", *FIXTURE], 0),
    ("diff_shipped.txt", ["diff", "policies/default.policy", "policies/examples/strict.policy",
                          "--plugins", "examples/plugins", *VARS], 1),
    ("diff_fixture.txt", ["diff", *FIXTURE_DIFF], 1),
    ("diff_fixture.json", ["diff", "--json", *FIXTURE_DIFF], 1),
    ("diff_replay.txt", ["diff", *FIXTURE_DIFF, "--replay", "fixtures/decisions.jsonl"], 1),
    ("diff_replay.json", ["diff", "--json", *FIXTURE_DIFF, "--replay", "fixtures/decisions.jsonl"], 1),
    ("diff_replay_context.txt", ["diff", *FIXTURE_DIFF, "--replay", "fixtures/decisions_context.jsonl"], 1),
    ("diff_replay_context.json", ["diff", "--json", *FIXTURE_DIFF, "--replay",
                                  "fixtures/decisions_context.jsonl"], 1),
    ("diff_reordered.txt", ["diff", "fixtures/policies/base.policy", "fixtures/policies/reordered.policy",
                            "--plugins", "fixtures/plugins", *VARS, "--replay", "fixtures/decisions.jsonl"], 0),
    ("diff_reordered_context.txt", ["diff", "fixtures/policies/base.policy",
                                    "fixtures/policies/reordered.policy", "--plugins", "fixtures/plugins",
                                    *VARS, "--replay", "fixtures/decisions_context.jsonl"], 0),
    ("diff_same.txt", ["diff", "fixtures/policies/base.policy", "fixtures/policies/base.policy",
                       "--plugins", "fixtures/plugins", *VARS, "--replay", "fixtures/decisions.jsonl"], 0),
    ("fmt_check.txt", ["fmt", "--check", "fixtures/fmt/messy.policy", "policies"], 1),
    ("fmt_check.json", ["fmt", "--check", "--json", "fixtures/fmt/messy.policy", "policies"], 1),
    ("digest.txt", ["digest", "fixtures/plugins/beta"], 0),
    ("digest.json", ["digest", "--json", "fixtures/plugins/beta"], 0),
]


@pytest.mark.parametrize(("name", "argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_output(workspace: Path, capsys: pytest.CaptureFixture[str], name: str, argv: list[str],
                expected: int) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, err) == (expected, "")
    assert_golden(GOLDEN / name, out)
    if name.endswith(".json"):
        json.loads(out)


def test_fmt_rewrites_in_place_then_has_nothing_left_to_do(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy = workspace / "fixtures" / "fmt" / "messy.policy"
    assert run(capsys, "fmt", str(messy.relative_to(workspace))) == (
        0, "reformatted fixtures/fmt/messy.policy\n1 of 1 file reformatted\n", "")
    assert_golden(GOLDEN / "fmt_messy.policy", messy.read_text(encoding="utf-8"))
    assert run(capsys, "fmt", "--check", "fixtures/fmt") == (0, "0 of 1 file would be reformatted\n", "")


def test_fmt_defaults_to_the_policies_directory(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "fmt", "--check") == (0, "0 of 1 file would be reformatted\n", "")


def test_fmt_leaves_every_file_alone_when_one_does_not_parse(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy = workspace / "fixtures" / "fmt" / "messy.policy"
    before = messy.read_text(encoding="utf-8")
    (workspace / "fixtures" / "fmt" / "zz_broken.policy").write_text("allow plugin * to\n", encoding="utf-8")
    code, out, err = run(capsys, "fmt", "fixtures/fmt")
    assert (code, out) == (2, "")
    assert err.startswith("policy-engine: error: fixtures/fmt/zz_broken.policy:1:16: PL001 ")
    assert err.count("\n") == 1
    assert messy.read_text(encoding="utf-8") == before


def test_digest_matches_the_library_and_pins_the_plugin(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "digest", "--json", "examples/plugins/summarizer")
    data = json.loads(out)
    assert code == 0 and data["digest"] == plugin_digest("examples/plugins/summarizer")
    policy = workspace / "pinned.policy"
    policy.write_text(data["trust"] + "\nallow plugin * to subprocess:execute when plugin.trusted\n",
                      encoding="utf-8")
    code, out, _ = run(capsys, "decide", "summarizer", "subprocess:execute", "--policy", str(policy),
                       "--plugins", "examples/plugins", *VARS)
    assert code == 1 and "not_declared" in out  # trusted, but it never declared subprocess:execute
    code, out, _ = run(capsys, "matrix", "--json", "--policy", str(policy), "--plugins", "examples/plugins", *VARS)
    statuses = {p["plugin"]: p["pin"] for p in json.loads(out)["plugins"]}
    assert statuses["summarizer"] == "match" and statuses["rogue"] == "unpinned"


def test_the_fixture_pins_are_current() -> None:
    text = (HERE / "fixtures" / "policies" / "base.policy").read_text(encoding="utf-8")
    assert plugin_digest(HERE / "fixtures" / "plugins" / "beta").removeprefix("sha256-v2:") in text


ERRORS = [
    (["decide", "nobody", "file:read", "--policy", "missing.policy"],
     "policy-engine: error: policy path `missing.policy` does not exist\n"),
    (["matrix", "--policy", "fixtures/fmt/zz.policy"],
     "policy-engine: error: policy path `fixtures/fmt/zz.policy` does not exist\n"),
    (["decide", "alpha", "file:read", "--context", "env", *FIXTURE],
     "policy-engine: error: context `env` is not KEY=VALUE\n"),
    (["matrix", "--policy", "bad.policy"],
     "policy-engine: error: bad.policy:1:19: PL101 unknown permission `file:raed` "
     "(did you mean `file:read`?); 1 more problem\n"),
    (["diff", "policies", "fixtures/policies/edited.policy", *VARS],
     "policy-engine: error: no plugins to compare: pass `--plugins DIR` (diff compares what plugins get)\n"),
    (["diff", *FIXTURE_DIFF, "--replay", "nope.jsonl"],
     "policy-engine: error: cannot read the decision log `nope.jsonl`: No such file or directory\n"),
    (["diff", *FIXTURE_DIFF, "--replay", "bad.jsonl"],
     "policy-engine: error: entry 2 of the decision log `bad.jsonl` needs `allowed` (true or false)\n"),
    (["diff", *FIXTURE_DIFF, "--replay", "bad.policy"],
     "policy-engine: error: bad.policy:1:1: decision log line is not JSON: expecting value "
     "(a decision log has one JSON object per line)\n"),
    (["digest", "fixtures/plugins/nope"],
     "policy-engine: error: plugin directory `fixtures/plugins/nope` does not exist or is not a directory\n"),
    (["matrix", "--json", "--markdown"],
     "policy-engine matrix: error: argument --markdown: not allowed with argument --json "
     "(see `policy-engine matrix --help`)\n"),
    (["decide"],
     "policy-engine decide: error: the following arguments are required: plugin, action "
     "(see `policy-engine decide --help`)\n"),
    (["frobnicate"],
     "policy-engine: error: argument COMMAND: invalid choice: 'frobnicate' (choose from "),
]


@pytest.mark.parametrize(("argv", "expected"), ERRORS, ids=[" ".join(e[0][:2]) for e in ERRORS])
def test_errors_are_one_line_and_exit_2(
    workspace: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    (workspace / "bad.policy").write_text(
        'allow plugin * to file:raed\ndefaults { limit cpu 5XB }\n', encoding="utf-8")
    (workspace / "bad.jsonl").write_text(
        '{"plugin": "alpha", "action": "file:read", "allowed": true}\n{"plugin": "alpha", "action": "x"}\n',
        encoding="utf-8")
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(expected) and err.count("\n") == 1
    if not expected.endswith("(choose from "):
        assert err == expected


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("decide", "matrix", "diff", "fmt", "digest"):
        assert command in out
