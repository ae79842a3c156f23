"""Data-driven decision cases: policy + manifests + requests -> decision, reason, rules.

Each file in ``cases/decisions`` holds a policy (inline or a shipped file), manifests and
requests ``[plugin, action, resource, expected reason, [rule lines], context?]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import policy_engine.engine as engine_module
from policy_engine import Engine, Reason
from policy_engine.manifest import manifest_from_mapping

CASES = Path(__file__).parent / "cases" / "decisions"
ROOT = Path(__file__).parent.parent


def load_case(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, list[Any]]:
    case = yaml.safe_load(path.read_text())
    if "policy_file" in case:
        name = case["policy_file"]
        policy = {name: (ROOT / name).read_text()}
    else:
        policy = {f"{path.stem}.policy": case["policy"]}
    digests = case.get("digests", {})
    monkeypatch.setattr(engine_module, "plugin_digest", lambda d: digests.get(Path(d).name, "0" * 64))
    manifests = []
    for raw in case["manifests"]:
        data = dict(raw)
        plugin_path = Path(data.pop("plugin_path"))
        manifests.append(manifest_from_mapping(data, file=f"{data['name']}.yaml", plugin_path=plugin_path))
    return Engine.from_source(policy, manifests, case.get("variables", {})), case["requests"]


def ids(path: Path) -> list[str]:
    return [f"{path.stem}-{i}" for i in range(len(yaml.safe_load(path.read_text())["requests"]))]


ALL = [(path, i) for path in sorted(CASES.glob("*.yaml"))
       for i in range(len(yaml.safe_load(path.read_text())["requests"]))]


@pytest.mark.parametrize(("path", "index"), ALL, ids=[f"{p.stem}-{i}" for p, i in ALL])
def test_decision_case(path: Path, index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, requests = load_case(path, monkeypatch)
    plugin, action, resource, reason, lines, *rest = requests[index]
    context = rest[0] if rest else None
    decision = engine.decide(plugin, action, resource, context)
    assert decision.reason is Reason(reason), decision.explain()
    assert decision.allowed is (reason == "allowed")
    assert [rule.line for rule in decision.rules] == lines, decision.explain()
    assert bool(decision) is decision.allowed
    assert decision.explain().startswith("allowed" if decision.allowed else "denied")
