"""Under CI=1 a skip of a ``must_run`` test fails (tests/conftest.py), elsewhere it skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SKIPPING = '''
import pytest

pytestmark = pytest.mark.must_run


def test_needs_a_module():
    pytest.importorskip("no_such_module_anywhere")


@pytest.mark.skip(reason="skipped at set-up")
def test_skipped_by_a_mark():
    pass
'''


@pytest.mark.parametrize(("ci", "expected"), [("1", "1 failed, 1 error"), ("", "2 skipped")])
def test_a_must_run_skip_fails_under_ci(tmp_path: Path, ci: str, expected: str) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {**os.environ, "CI": ci}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-o", "markers=must_run", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert expected in done.stdout, done.stdout + done.stderr
    assert (done.returncode != 0) == bool(ci)
    if ci:
        assert "skipped under CI=1, where it must run: Skipped: skipped at set-up" in done.stdout
