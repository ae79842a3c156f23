"""Preflight: the layers this host offers, named levels, and the refusal without namespaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policy_engine.cli.main import main
from policy_engine.enforcement.host import doctor

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
ALL = dict.fromkeys(doctor.LAYERS, True)


def test_full_only_when_every_layer_is_active() -> None:
    assert doctor.isolation_level(ALL) == "full"
    for layer in doctor.LAYERS:
        assert doctor.isolation_level({**ALL, layer: False}) == f"without-{layer}"
    assert doctor.isolation_level({**ALL, "seccomp": False, "bubblewrap": False}) == \
        "without-bubblewrap"


def test_without_namespaces_an_untrusted_plugin_is_refused_unless_the_risk_is_accepted() -> None:
    layers = {**ALL, "bubblewrap": False}
    refusal = doctor.sandbox_refusal(layers, frozenset())
    assert "`missing-bubblewrap`" in refusal and "apt-get install bubblewrap" in refusal
    assert doctor.sandbox_refusal(layers, frozenset({"missing-bubblewrap"})) == ""
    assert doctor.sandbox_refusal(ALL, frozenset()) == ""
    assert doctor.accepted_risks(None) == frozenset()


def test_preflight_reports_every_layer_and_each_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--plugins", str(EXAMPLES), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["layers"]) == set(doctor.LAYERS)
    assert report["level"] == doctor.isolation_level(report["layers"])
    assert {c["name"] for c in report["checks"]} == {"bubblewrap", "user-namespace", "cgroup",
                                                     "landlock", "seccomp"}
    assert {p["plugin"] for p in report["plugins"]} == {"report-builder", "rogue", "summarizer"}


def test_the_text_report_names_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.startswith("isolation level: ")
