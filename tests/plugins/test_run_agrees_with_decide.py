"""`policy-engine run` reports exactly what `policy-engine decide` says for every denial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = "import sys; from policy_engine.cli.main import main; sys.exit(main(sys.argv[1:]))"

pytestmark = pytest.mark.integration


def cli(*args: str) -> tuple[int, Any]:
    done = subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, json.loads(done.stdout)


def test_run_and_decide_agree_on_every_denial_of_the_examples() -> None:
    _code, report = cli("run", "examples/plugins", "--json")
    denials = [(plugin["name"], denial) for plugin in report["plugins"]
               for denial in plugin["denials"]]
    assert {denial["action"] for _name, denial in denials} >= {
        "file:read", "network:request", "subprocess:execute"}
    for name, denial in denials:
        args = ["decide", name, denial["action"]]
        if denial["resource"] is not None:
            args.append(denial["resource"])
        _code, decision = cli(*args, "--plugins", "examples/plugins", "--json")
        assert decision["allowed"] is False
        assert denial["reason"] == decision["reason"], denial
        assert denial["rules"] == [f"{r['file']}:{r['line']}:{r['column']}"
                                   for r in decision["rules"]], denial
