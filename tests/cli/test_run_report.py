"""The `run` report: human sizes, the peak CPU and memory next to the limit that stopped a
plugin, nothing cut with `-v` or `--json`, and audit mode said so (golden files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy_engine.cli.run import render_report
from policy_engine.enforcement.host.loader import CallRecord
from policy_engine.enforcement.host.run import PluginReport, RunReport, report_to_dict
from policy_engine.enforcement.host.sandbox import AuditRecord
from policy_engine.units import human_size

from ..conftest import assert_golden

GOLDEN = Path(__file__).parent / "golden"
LONG = ("plugin `rogue` may not network:request on `collector.evil.test:443`: denied "
        "(denied_by_rule) by policies/default.policy:30:1: deny plugin * to network:request "
        "on \"*.evil.test\"; a deny rule wins over every allow")


def _report(mode: str) -> RunReport:
    rogue = PluginReport(
        name="rogue", validation="ok", isolation="process (full)",
        calls=(CallRecord("phone_home", "denied", LONG),
               CallRecord("burn_cpu", "limit", "plugin `rogue` was stopped for CPU: it used "
                          "97% of a core for 2.1s, over its share of 80%"),
               CallRecord("eat_memory", "limit", "plugin `rogue` ran out of memory: it used "
                          "94.5 MB (peak), over its limit of 64 MB, and was stopped")),
        denials=(AuditRecord("rogue", "network:request", "collector.evil.test:443", False,
                             "denied_by_rule", ("policies/default.policy:30:1",)),),
        peak_memory=94_453_760, cpu_percent=97.0,
        outcome="unloaded: it went over a limit: plugin `rogue` ran out of memory: it used "
                "94.5 MB (peak), over its limit of 64 MB, and was stopped",
    )
    quiet = PluginReport(name="summarizer", validation="ok", isolation="process (full)",
                         calls=(CallRecord("run", "ok", "['a', 'b']"),), denials=(),
                         peak_memory=22_800_000, cpu_percent=3.0, outcome="ok")
    return RunReport((rogue, quiet), 1.7, "sha256:0", mode=mode)


@pytest.mark.parametrize(("name", "mode", "verbose"),
                         [("run_report.txt", "enforce", False), ("run_report_verbose.txt", "enforce", True),
                          ("run_report_audit.txt", "audit", False)])
def test_report_text(name: str, mode: str, verbose: bool) -> None:
    text = render_report(_report(mode), verbose=verbose)
    assert_golden(GOLDEN / name, text)
    assert "bytes" not in text
    if verbose:
        assert LONG in text
    assert ("audit" in text.splitlines()[0]) == (mode == "audit")


def test_report_json_keeps_everything() -> None:
    data = report_to_dict(_report("audit"))
    assert_golden(GOLDEN / "run_report.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    assert data["mode"] == "audit"
    assert data["plugins"][0]["calls"][0]["detail"] == LONG


@pytest.mark.parametrize(("size", "text"), [
    (64_000_000, "64 MB"), (94_453_760, "94.5 MB"), (1_000_000, "1 MB"), (512, "512 B"),
    (1_234_567_890, "1.23 GB"), (0, "0 B"), (999_999, "1 MB"), (1_500, "1.5 kB"),
])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_the_demo_data_lives_in_the_cli_not_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from policy_engine.cli import run as cli_run
    from policy_engine.enforcement.host import run as host_run

    library = inspect.getsource(host_run)
    assert "HOST_SECRET" not in library and "summarizer" not in library
    assert "os.environ" not in library  # the library leaves the host's environment alone
    monkeypatch.delenv("HOST_SECRET", raising=False)
    with cli_run.demo_secret():
        assert cli_run.DEMO_SECRET == ("HOST_SECRET", "host-secret-value")
        import os
        assert os.environ["HOST_SECRET"] == "host-secret-value"
    assert "HOST_SECRET" not in os.environ
    monkeypatch.setenv("HOST_SECRET", "mine")
    with cli_run.demo_secret():
        pass
    assert os.environ["HOST_SECRET"] == "mine"


def test_run_passes_the_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from policy_engine.cli import run as cli_run

    seen: dict[str, object] = {}

    def fake_run(policy: object, plugins_dir: object, variables: object, *, mode: str,
                 config: object, unsandboxed: bool = False) -> RunReport:
        import os
        seen.update(config=config, mode=mode, secret=os.environ.get("HOST_SECRET"))
        return RunReport((), 0.0, "sha256:0", mode=mode)

    monkeypatch.setattr(cli_run, "run_plugins", fake_run)
    args = argparse.Namespace(verbose=False, var=None, policy=["p"], plugins_dir="d",
                              audit=False, unsandboxed=False, json=True)
    assert cli_run.cmd_run(args) == 0
    assert seen == {"config": cli_run.DEMO_CONFIG, "mode": "enforce",
                    "secret": "host-secret-value"}
