"""`.ci/run` and the README's quickstart say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICKSTART = README.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]


def test_ci_runs_the_quickstart_test_command() -> None:
    command = next(line for line in QUICKSTART.splitlines() if "'.[test]'" in line)
    for step in command.split(" && "):
        words = [w for w in step.split() if not w.startswith("-") or w == "-m"]
        assert all(word in CI for word in words), step


def test_the_quickstart_says_what_else_ci_does() -> None:
    for thing in ("bubblewrap", "policy-engine test policies/", "ruff", "mypy", "CI=1",
                  ".ci/unprivileged", "nobody", "tests/enforcement", "tests/plugins"):
        assert thing in CI and thing in QUICKSTART, thing
    run_as = re.search(r"setpriv\s+--reuid=(\d+)\s+--regid=(\d+)\s+--clear-groups", QUICKSTART)
    script = (ROOT / ".ci" / "unprivileged").read_text(encoding="utf-8")
    assert run_as is not None and f"PE_CI_UID:-{run_as[1]}" in script
    assert "--clear-groups" in script
