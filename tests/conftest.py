"""Shared test helpers: golden files and small builders."""

from __future__ import annotations

import os
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
