"""Each benchmark script still runs: a smoke run with ``--quick`` (tiny counts, one round).

The figures are not checked (speed is measured by the scripts, never in tests); what is
checked is that a script finishes, exits 0 and prints its table, so a change elsewhere that
breaks one shows up here and not on the day someone wants the figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policy_engine.enforcement.host import bwrap

ROOT = Path(__file__).resolve().parent.parent
NEEDS_BWRAP = pytest.mark.skipif(bool(bwrap.available()), reason="bubblewrap does not work here")

SCRIPTS = [
    pytest.param("bench_decision_log.py", "setup", id="decision_log"),
    pytest.param("bench_enforcement.py", "measure", id="enforcement"),
    pytest.param("bench_fleet.py", "interval s", id="fleet"),
    pytest.param("bench_glob_grants.py", "files", id="glob_grants", marks=NEEDS_BWRAP),
    pytest.param("bench_integrity.py", "measure", id="integrity"),
    pytest.param("bench_kernel_records.py", "measure", id="kernel_records"),
    pytest.param("bench_watch.py", "one poll with nothing changed", id="watch"),
    pytest.param("bench_wire.py", "frame", id="wire"),
]


@pytest.mark.parametrize(("script", "header"), SCRIPTS)
def test_the_benchmark_runs_in_quick_mode(script: str, header: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.lstrip().startswith(header), done.stdout[:500]
    assert len(done.stdout.splitlines()) >= 2  # a header and at least one row
