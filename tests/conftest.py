"""Shared test helpers: golden files and small builders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("POLICY_ENGINE_REGEN_GOLDEN") == "1"


def assert_golden(expected_file: Path, actual: str) -> None:
    """Compare ``actual`` with a golden file; ``POLICY_ENGINE_REGEN_GOLDEN=1`` rewrites it."""
    if REGEN or not expected_file.exists():
        if not REGEN:
            pytest.fail(f"golden file {expected_file} is missing; run with POLICY_ENGINE_REGEN_GOLDEN=1")
        expected_file.parent.mkdir(parents=True, exist_ok=True)
        expected_file.write_text(actual, encoding="utf-8")
        return
    assert actual == expected_file.read_text(encoding="utf-8")


#: Under CI a skip of a test marked ``must_run`` is a failure: what CI is there to check
#: (numpy and pandas in a real worker, the full sandbox) must not pass by being skipped.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and item.get_closest_marker("must_run") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=1, where it must run: {reason}"
