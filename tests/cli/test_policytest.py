"""``policy-engine test``: text, JSON and JUnit output (golden files), ``--coverage``, exit
codes, and a bad test file named with line and column."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from policy_engine.cli.main import main
from policy_engine.decision import Reason
from policy_engine.errors import PolicyTestError
from policy_engine.nodes import Effect
from policy_engine.policytest import (
    SCHEMA_PATH,
    find_test_files,
    load_test_yaml,
    policytest_schema,
    read_test_file,
    run_tests,
)

from ..conftest import assert_golden

ROOT = Path(__file__).parent.parent.parent
HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "policytest"
MIXED = "tests/cli/fixtures/policytest/mixed"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch copy of the shipped policies, example plugins and these fixtures."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    shutil.copytree(ROOT / "examples" / "plugins", tmp_path / "examples" / "plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples" / "test-plugins", tmp_path / "examples" / "test-plugins")
    shutil.copytree(HERE / "fixtures" / "policytest", tmp_path / "tests" / "cli" / "fixtures" / "policytest")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.replace(str(root), "<root>"), captured.err.replace(str(root), "<root>")


OUTPUTS = [
    ("mixed.txt", [MIXED]),
    ("mixed_coverage.txt", [MIXED, "--coverage"]),
    ("mixed.json", [MIXED, "--format", "json"]),
    ("mixed.xml", [MIXED, "--format", "junit", "--coverage"]),
]


@pytest.mark.parametrize(("golden", "argv"), OUTPUTS, ids=[g for g, _ in OUTPUTS])
def test_output(golden: str, argv: list[str], workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, workspace, "test", *argv)
    assert (code, err) == (1, "")
    assert_golden(GOLDEN / golden, out)


def test_junit_is_surefire_shaped(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, workspace, "test", MIXED, "--format", "junit")
    suite = ET.fromstring(out)
    assert suite.tag == "testsuite" and suite.get("tests") == "4" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [c.find("failure") is not None for c in cases] == [False, False, True, True]
    assert all(c.get("classname", "").endswith("mixed.test.yaml") for c in cases)


def test_json_reports_every_case(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, workspace, "test", MIXED, "--format", "json")
    data = json.loads(out)
    assert (data["passed"], data["failed"]) == (2, 2)
    assert [c["passed"] for c in data["cases"]] == [True, True, False, False]
    assert data["cases"][2]["decision"]["reason"] == "not_declared"


BAD = ["unknown_field", "bad_expect", "bad_yaml", "alias", "no_cases"]


@pytest.mark.parametrize("name", BAD)
def test_bad_test_file_exits_2_naming_line_and_column(
    name: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, workspace, "test", f"tests/cli/fixtures/policytest/bad/{name}.test.yaml")
    assert (code, out) == (2, "")
    assert_golden(GOLDEN / f"bad_{name}.txt", err)
    assert f"{name}.test.yaml:" in err and "Traceback" not in err


def test_bad_file_renders_with_a_caret(workspace: Path) -> None:
    with pytest.raises(PolicyTestError) as info:
        read_test_file("tests/cli/fixtures/policytest/bad/unknown_field.test.yaml")
    assert_golden(GOLDEN / "bad_unknown_field_full.txt", str(info.value) + "\n")


def test_all_pass_exits_0(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, workspace, "test", "policies")
    assert code == 0 and out.endswith(" passed, 0 failed\n")


def test_default_path_is_policies(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, workspace, "test")[0] == 0


def test_missing_path_and_empty_directory_exit_2(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, workspace, "test", "nowhere")[0] == 2
    (workspace / "empty").mkdir()
    code, _, err = run(capsys, workspace, "test", "empty")
    assert code == 2 and "no `*.test.yaml` files" in err


def test_a_policy_that_does_not_compile_exits_2(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "t").mkdir()
    (workspace / "t" / "broken.policy").write_text("allow plugin * to file:raed\n")
    (workspace / "t" / "x.test.yaml").write_text("cases: [{plugin: a, action: file:read, expect: deny}]\n")
    code, _, err = run(capsys, workspace, "test", "t")
    assert code == 2 and "broken.policy:1:" in err


def test_resource_templates(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text('allow plugin * to file:read on "{plugin_dir}/**", "{data_dir}/x"\n')
    plugin = tmp_path / "plugins" / "a"
    plugin.mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(
        "name: a\nversion: 1.0.0\ntype: agent\nentry_point: a:A\n"
        "permissions: ['file:read {plugin_dir}/**', 'file:read {data_dir}/x']\n")
    (tmp_path / "a.test.yaml").write_text(
        "plugins: plugins\nvariables: {data_dir: /d}\ncases:\n"
        "  - {plugin: a, action: file:read, resource: '{plugin_dir}/f', expect: allow, rule: p.policy:1}\n"
        "  - {plugin: a, action: file:read, resource: '{data_dir}/x', expect: allow}\n"
        "  - {plugin: a, action: file:read, resource: '{unknown}/x', expect: allow}\n")
    report = run_tests([tmp_path])
    assert report.ok, [r.problems for r in report.results]
    resources = [r.decision.resource or "" for r in report.results]
    assert resources[0] == str(tmp_path / "plugins" / "a" / "f") and resources[1] == "/d/x"
    assert resources[2].endswith("/{unknown}/x")  # not a known name: left as written


def test_anchors_and_duplicate_keys_are_refused() -> None:
    with pytest.raises(PolicyTestError, match="anchors and aliases"):
        load_test_yaml("a: &x [1]\nb: *x\n", "t.test.yaml")
    with pytest.raises(PolicyTestError, match="duplicate field `a`") as info:
        load_test_yaml("a: 1\na: 2\n", "t.test.yaml")
    assert info.value.diagnostics[0].span is not None and info.value.diagnostics[0].span.line == 2


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(PolicyTestError, match="nesting deeper.*yaml_depth"):
        load_test_yaml("a: " + "[" * 100 + "]" * 100 + "\n", "t.test.yaml")


def test_schema_is_published_and_packaged() -> None:
    assert (ROOT / "schemas" / "policytest.schema.json").read_bytes() == SCHEMA_PATH.read_bytes()
    schema = policytest_schema()
    reasons = schema["$defs"]["case"]["properties"]["reason"]["enum"]
    assert sorted(reasons) == sorted(r.value for r in Reason)


# The shipped policies' own tests ---------------------------------------------------------


def test_shipped_policy_tests_pass_with_full_coverage() -> None:
    report = run_tests([ROOT / "policies"])
    assert report.ok, [(r.file, r.case.name, r.problems) for r in report.results if not r.passed]
    uncovered = {(Path(u.file).name, u.line) for u in report.uncovered}
    # site.policy pins `analytics` to a placeholder digest: its two analytics-only grants
    # cannot be exercised by any directory.
    assert uncovered == {("site.policy", 22), ("site.policy", 23)}


def test_every_shipped_deny_rule_has_a_deny_case() -> None:
    report = run_tests([ROOT / "policies"])
    denied = {(Path(r.file).resolve(), r.line) for res in report.results if not res.case.allowed
              for r in res.decision.rules if r.effect is Effect.DENY}
    files = [p for p in find_test_files([ROOT / "policies"])]
    for test in files:
        for policy in read_test_file(test).policy:
            paths = [policy] if policy.is_file() else sorted(policy.glob("*.policy"))
            for path in paths:
                for number, line in enumerate(path.read_text().splitlines(), 1):
                    if line.startswith("deny "):
                        assert (path.resolve(), number) in denied, f"{path}:{number}"


def test_test_files_are_read_by_the_bounded_loader(tmp_path: Path) -> None:
    # A line over `line_chars` and a mapping over `mapping_keys`: the caps of bounded.py,
    # named with their position, never parsed whole.
    with pytest.raises(PolicyTestError, match="input limit exceeded.*line_chars") as info:
        load_test_yaml("cases: []\nx: " + "a" * 10_000 + "\n", "t.test.yaml")
    span = info.value.diagnostics[0].span
    assert span is not None and span.line == 2
    keys = "".join(f"k{i}: 1\n" for i in range(2000))
    with pytest.raises(PolicyTestError, match="input limit exceeded.*mapping_keys"):
        load_test_yaml(keys, "t.test.yaml")
    fifo = tmp_path / "f.test.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PolicyTestError, match="not a regular file"):
        read_test_file(fifo)
