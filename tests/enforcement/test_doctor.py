"""Preflight: the layers this host offers, named levels, and the refusal without namespaces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from policy_engine import Engine, ResourceLimitError
from policy_engine.cli.main import main
from policy_engine.enforcement.host import bwrap, cgroup, doctor
from policy_engine.enforcement.host.sampler import Sampler
from policy_engine.enforcement.host.supervisor import tmpfs_cap
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.risks import RISKS

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
    assert "layer `bubblewrap` is missing" in refusal and "apt-get install bubblewrap" in refusal
    assert "`accept missing-bubblewrap`" in refusal
    assert doctor.sandbox_refusal(layers, frozenset({"missing-bubblewrap"})) == ""
    assert doctor.sandbox_refusal(ALL, frozenset()) == ""


def test_every_layer_but_the_network_namespace_has_a_registered_risk() -> None:
    assert set(doctor.RISK_FOR_LAYER) == set(doctor.LAYERS) - {"network-namespace"}
    assert set(doctor.RISK_FOR_LAYER.values()) <= set(RISKS)
    for layer, risk in doctor.RISK_FOR_LAYER.items():
        refusal = doctor.sandbox_refusal({**ALL, layer: False}, frozenset())
        assert f"`{layer}`" in refusal and f"`accept {risk}`" in refusal
        assert doctor.sandbox_refusal({**ALL, layer: False}, frozenset({risk})) == ""
    # Granted network is the policy's choice, not a missing layer.
    assert doctor.sandbox_refusal({**ALL, "network-namespace": False}, frozenset()) == ""


def test_the_cgroup_layer_holds_only_with_the_memory_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    doctor.host_layers.cache_clear()
    monkeypatch.setattr(bwrap, "available", lambda: "no namespaces here")
    # No cgroup either: the fallback alone (a cgroup counting memory holds the layer).
    monkeypatch.setattr(cgroup, "detect", lambda *args, **kw: cgroup.CgroupSupport(None))
    try:
        layers = doctor.host_layers()
        assert not layers["bubblewrap"] and not layers["cgroup"]
        assert doctor.isolation_level(layers) == "without-bubblewrap"
    finally:
        doctor.host_layers.cache_clear()
    check = doctor._cgroup_check(False)
    assert not check.ok and "does not hold" in check.detail
    assert doctor._cgroup_check(True).ok


def test_accepted_risks_are_the_plugins_effective_ones() -> None:
    engine = Engine.from_source('defaults { accept missing-cgroup }\n'
                                'plugin "a" { accept missing-seccomp }')
    assert doctor.accepted_risks(engine, "a") == {"missing-cgroup", "missing-seccomp"}
    assert doctor.accepted_risks(engine, "b") == {"missing-cgroup"}


def test_preflight_reports_every_layer_and_each_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--plugins", str(EXAMPLES), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["layers"]) == set(doctor.LAYERS)
    assert set(report["limits"]) == {"memory", "pids", "cpu", "freeze"}  # each one's mechanism
    assert report["level"] == doctor.isolation_level(report["layers"])
    assert {c["name"] for c in report["checks"]} == {"bubblewrap", "user-namespace", "cgroup",
                                                     "landlock", "seccomp", "kernel-records",
                                                     "landlock-audit", "disk-limit"}
    checks = {c["name"]: c for c in report["checks"]}
    # Landlock's audit records are never claimed as a record source: they are not read.
    assert checks["landlock-audit"]["ok"] is False
    assert "does not read them" in checks["landlock-audit"]["detail"]
    assert {p["plugin"] for p in report["plugins"]} == {"report-builder", "rogue", "summarizer"}


def test_the_text_report_names_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.startswith("isolation level: ")


def test_the_sampler_counts_the_tmpfs_caps_in_the_memory_limit() -> None:
    errors: list[ResourceLimitError] = []
    mib = 1024 * 1024

    def sampler(reserved: int) -> Sampler:
        return Sampler(os.getpid(), plugin="demo", limits=ResourceLimits(memory_bytes=100 * mib),
                       with_descendants=False, on_violation=errors.append,
                       signal_tree=lambda signal: None, reserved_bytes=reserved)

    sampler(0)._check_memory(80 * mib)
    assert errors == []
    sampler(2 * tmpfs_cap(100 * mib))._check_memory(80 * mib)
    assert len(errors) == 1 and "of it the sandbox's tmpfs caps" in str(errors[0])
    assert errors[0].used == 80 * mib + 2 * tmpfs_cap(100 * mib)
