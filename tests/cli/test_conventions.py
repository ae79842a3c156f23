"""What both tools do as Python command-line tools: ``--version`` (one version, single-sourced),
``python -m policy_engine``, one spelling for shared options, ``--help`` with a description and
exit codes for every subcommand, and a quiet exit when the reader of the output goes away."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import policy_engine
from policy_engine._version import __version__
from policy_engine.cli import lint as lint_cli
from policy_engine.cli import main as engine_cli
from policy_engine.cli.conventions import EXIT_BROKEN_PIPE

ROOT = Path(__file__).parent.parent.parent
ENGINE = [sys.executable, "-m", "policy_engine"]
LINT = [sys.executable, "-m", "policy_engine.cli.lint"]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = engine_cli.make_parser()
    for action in parser._actions:  # argparse keeps its subparsers here, nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_one_version_everywhere() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "policy_engine._version.__version__"
    assert policy_engine.__version__ == __version__


@pytest.mark.parametrize("command", [ENGINE, LINT], ids=["policy-engine", "policy-lint"])
def test_version_option(command: list[str]) -> None:
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)
    name = "policy-engine" if command is ENGINE else "policy-lint"
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{name} {__version__}\n", "")


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([*ENGINE, "decide", "rogue", "file:read", "/etc/passwd",
                           "--plugins", "examples/plugins"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("denied (denied_by_rule)")


def test_every_subcommand_help_has_a_description_and_exit_codes() -> None:
    commands = _subcommands()
    assert {"decide", "matrix", "diff", "fmt", "digest", "run", "learn"} <= set(commands)
    for name, parser in commands.items():
        help_text = " ".join(parser.format_help().split())
        assert parser.description, name
        assert parser.epilog and parser.epilog.startswith("exit codes: 0 "), name
        assert "2 usage or input error" in help_text, name
    lint_help = " ".join(lint_cli.make_parser().format_help().split())
    assert "exit codes: 0 clean, 1 findings" in lint_help


def test_shared_options_have_one_spelling() -> None:
    """``--var`` on both tools, ``--variables`` kept as an alias on both."""
    lint = lint_cli.make_parser()
    assert lint.parse_args(["--var", "a=1"]).var == ["a=1"]
    assert lint.parse_args(["--variables", "a=1"]).var == ["a=1"]
    assert lint.parse_args(["--json"]).format == "json"
    for name, parser in _subcommands().items():
        options = {o for action in parser._actions for o in action.option_strings}
        if "--var" in options:
            assert "--variables" in options, name


def test_lint_accepts_var(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('allow plugin * to file:read on "{site}/**"\n', encoding="utf-8")
    assert lint_cli.main([str(policy), "--ignore", "PL3"]) == 1
    assert "PL102" in capsys.readouterr().out
    assert lint_cli.main([str(policy), "--ignore", "PL3", "--var", "site=/srv"]) == 0


@pytest.mark.parametrize(
    "argv",
    [[*ENGINE, "matrix", "--plugins", "examples/plugins"], [*ENGINE, "--help"],
     [*LINT, "--explain", "PL101"], [*LINT, "--help"]],
    ids=["engine-matrix", "engine-help", "lint-explain", "lint-help"],
)
def test_a_closed_pipe_exits_quietly(argv: list[str]) -> None:
    """The reader is gone before anything is written: every write fails with EPIPE."""
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read().decode()
    process.stderr.close()
    # argparse drops its own help text silently (exit 0); everything else exits 141.
    assert process.wait(timeout=60) in ((0, EXIT_BROKEN_PIPE) if "--help" in argv
                                        else (EXIT_BROKEN_PIPE,))
    assert err == ""


@pytest.mark.parametrize("tool", ["policy_engine", "policy_engine.cli.lint"])
def test_piped_into_head_exits_quietly(tmp_path: Path, tool: str) -> None:
    """A real `| head -n 1`, with more output than the pipe holds after `head` has gone."""
    # 600 files (a set holds at most 1,000) with long names: more than a pipe's 64 KiB.
    for i in range(600):
        (tmp_path / f"{'f' * 150}{i:04}.policy").write_text("allow   plugin * to  file:raed\n",
                                                  encoding="utf-8")
    command = "fmt --check ." if tool == "policy_engine" else ". --ignore PL3"
    shell = f"{sys.executable} -m {tool} {command} | head -n 1"
    done = subprocess.run(["sh", "-c", shell], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False, env={"PATH": "/usr/bin:/bin",
                                                         "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stdout.count("\n"), done.stderr) == (0, 1, "")


def test_one_command_table_lists_every_subcommand() -> None:
    assert [name for name, _ in engine_cli.COMMANDS] == list(_subcommands())
    source = Path(engine_cli.__file__).read_text(encoding="utf-8")
    assert "find_spec" not in source and "import_module" not in source


@pytest.mark.parametrize("module", ["run", "learn", "policytest", "bundle", "sandbox", "doctor",
                                    "lint"])
def test_a_subcommand_module_does_not_import_main(module: str) -> None:
    # main imports the subcommand modules for its table; the other way would be a cycle.
    code = (f"import sys; import policy_engine.cli.{module}; "
            "sys.exit('policy_engine.cli.main' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_both_tools_parse_var_with_the_same_option() -> None:
    lint_var = next(a for a in lint_cli.make_parser()._actions if "--var" in a.option_strings)
    run_var = next(a for a in _subcommands()["run"]._actions if "--var" in a.option_strings)
    assert lint_var.option_strings == run_var.option_strings == ["--var", "--variables"]
    assert lint_var.dest == run_var.dest == "var"


def test_a_bad_var_is_the_same_error_in_both_tools(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "a.policy"
    policy.write_text('allow plugin * to file:read on "/srv/**"\n', encoding="utf-8")
    assert lint_cli.main([str(policy), "--var", "novalue"]) == 2
    assert "variable `novalue` is not KEY=VALUE" in capsys.readouterr().err
