"""The branch-coverage floor of the enforcement modules that once had end-to-end coverage only.

Their unit tests (no worker process) run again under coverage.py in a child process, and
each module must reach :data:`FLOOR` percent of branch coverage from them alone. A change
that adds untested branches to one of them fails here, naming the module and the lines.
coverage.py comes with the test extras (through ``pytest-cov``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FLOOR = 80.0

#: Module (as a path in the package) -> the unit tests that must cover it.
UNITS = {
    "policy_engine/enforcement/host/spec.py": "tests/enforcement/test_spec.py",
    "policy_engine/enforcement/worker/audit.py": "tests/enforcement/test_audit_hook.py",
    "policy_engine/enforcement/worker/checker.py": "tests/enforcement/test_checker.py",
    "policy_engine/enforcement/host/sandbox.py": "tests/enforcement/test_sandbox.py",
    "policy_engine/enforcement/host/loader.py": "tests/enforcement/test_loader.py",
}


def test_unit_tests_alone_cover_each_enforcement_module(tmp_path: Path) -> None:
    data, report = tmp_path / "coverage.data", tmp_path / "coverage.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE", "COVERAGE"))}
    include = ",".join(str(ROOT / module) for module in UNITS)
    run = subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--branch", f"--data-file={data}",
         f"--include={include}", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
         # Its own temporary directory: the child neither prunes nor shares the parent's.
         f"--basetemp={tmp_path / 'base'}", "-o", "faulthandler_timeout=60",
         "-m", "not integration", *sorted(set(UNITS.values()))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    subprocess.run([sys.executable, "-m", "coverage", "json", f"--data-file={data}", "-o",
                    str(report)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    files = json.loads(report.read_text())["files"]
    below = []
    for module in UNITS:
        found = next((v for k, v in files.items() if Path(k).resolve() == ROOT / module), None)
        assert found is not None, f"{module} was not measured at all"
        percent = found["summary"]["percent_covered"]
        if percent < FLOOR:
            below.append(f"{module}: {percent:.1f} % (missing lines {found['missing_lines']})")
    assert not below, f"below the {FLOOR:g} % branch-coverage floor: " + "; ".join(below)
