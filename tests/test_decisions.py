"""Data-driven decision cases, in the public ``*.test.yaml`` format of ``policy-engine test``.

Each directory under ``cases/decisions`` holds a policy set, the plugins it decides for and a
test file; every case runs through the library's own test runner.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_engine.policytest import find_test_files, read_test_file, run_test_file

CASES = Path(__file__).parent / "cases" / "decisions"
ROOT = Path(__file__).parent.parent

FILES = find_test_files([CASES])
ALL = [(path, i) for path in FILES for i in range(len(read_test_file(path).cases))]


@pytest.mark.parametrize(("path", "index"), ALL,
                         ids=[f"{p.parent.name}-{i}" for p, i in ALL])
def test_decision_case(path: Path, index: int) -> None:
    results, _ = run_test_file(read_test_file(path))
    result = results[index]
    decision = result.decision
    assert result.passed, f"{result.problems}\n{decision.explain()}"
    assert bool(decision) is decision.allowed
    assert decision.explain().startswith("allowed" if decision.allowed else "denied")


def test_cases_exist() -> None:
    assert len(FILES) >= 2 and len(ALL) >= 30


def test_site_copy_differs_from_the_shipped_policy_in_its_pin_only() -> None:
    shipped = (ROOT / "policies" / "examples" / "site.policy").read_text().splitlines()
    copy = (CASES / "site" / "site.policy").read_text().splitlines()
    assert len(shipped) == len(copy)
    differ = [(a, b) for a, b in zip(shipped, copy, strict=True) if a != b]
    assert len(differ) == 1 and all(line.startswith('trust plugin "analytics"') for line in differ[0])
