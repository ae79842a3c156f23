"""policy-lint: one fixture per rule, golden output in every format, noqa, exit codes,
the README's rule table, the shipped policies and a 13,000-rule policy set."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from policy_engine.cli.lint import main
from policy_engine.diagnostics import Diagnostic, Severity
from policy_engine.errors import ManifestError, UsageError
from policy_engine.lint import RULES, explain, lint_paths, render_rule_table
from policy_engine.lint.formatters import tool_version
from policy_engine.lint.manifest_checks import classify
from policy_engine.lint.rules import DOCS_URL
from policy_engine.manifest import load_manifest

from ..conftest import assert_golden

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
FIXTURES = HERE / "fixtures"
GOLDEN = HERE / "golden"
VARIABLES = {"home": "/home/user", "data_dir": "/var/lib/pe", "tmp": "/tmp"}
VAR_ARGS = [arg for key, value in VARIABLES.items() for arg in ("--variables", f"{key}={value}")]
# Rules whose trigger cannot be a committed file; each has its own test below.
NOT_FIXTURES = {"PL204": "test_unreadable_manifest_is_pl204",
                "PL003": "test_policy_files_others_can_write_are_pl003",
                "PL314": "test_a_glob_grant_past_the_bound_is_pl314"}


@pytest.fixture(autouse=True)
def in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in findings are relative to the fixtures, so goldens hold no machine paths."""
    monkeypatch.chdir(FIXTURES)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, *VAR_ARGS])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def transcript(args: list[str], code: int, out: str) -> str:
    return f"$ policy-lint {shlex.join(args)}\nexit {code}\n{out}"


def codes(paths: list[str], select: Sequence[str] = (), ignore: Sequence[str] = ()) -> list[str]:
    return [f.code for f in lint_paths(paths, variables=VARIABLES, select=select, ignore=ignore).findings]


# One fixture per rule ------------------------------------------------------------------


@pytest.mark.parametrize("rule", [r.code for r in RULES])
def test_every_rule_has_a_fixture_that_triggers_it_and_one_that_does_not(
    rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if rule in NOT_FIXTURES:
        pytest.skip(f"covered by {NOT_FIXTURES[rule]}")
    base = Path("rules") / rule
    assert (base / "bad").is_dir() and (base / "good").is_dir(), f"add fixtures under {base}"
    assert rule in codes([str(base / "bad")])
    assert rule not in codes([str(base / "good")])
    args = [str(base / "bad")]
    code, out, err = run(capsys, *args)
    assert err == ""
    assert_golden(GOLDEN / "rules" / f"{rule}.txt", transcript(args, code, out))


def test_unreadable_manifest_is_pl204(tmp_path: Path) -> None:
    # Running as root reads anything, so the unreadable case is a manifest that is missing.
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    found = classify(info.value.diagnostics[0])
    assert (found.code, found.severity) == ("PL204", Severity.ERROR)
    assert found.message.startswith("cannot read the manifest")


VALID = 'allow plugin * to file:read on "/srv/**"\n'


def test_policy_files_others_can_write_are_pl003(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "policies" / "site.policy").write_text(VALID)
    (tmp_path / "elsewhere" / "team.policy").write_text(VALID.replace("/srv", "/opt"))
    (tmp_path / "policies" / "team.policy").symlink_to("../elsewhere/team.policy")
    (tmp_path / "policies" / "site.policy").chmod(0o664)
    (tmp_path / "elsewhere").chmod(0o777)
    args = ["policies"]
    code, out, err = run(capsys, *args)
    assert (code, err) == (1, "")
    assert_golden(GOLDEN / "rules" / "PL003.txt", transcript(args, code, out))
    (tmp_path / "policies" / "site.policy").chmod(0o644)
    (tmp_path / "elsewhere").chmod(0o755)
    assert codes(["policies"]) == []


def test_every_bad_entry_is_one_pl002_finding_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "good.policy").write_text(VALID)
    (policies / "bom.policy").write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    (policies / "dangling.policy").symlink_to("moved.policy")
    (policies / "loop.policy").symlink_to("loop.policy")
    (policies / "dir.policy").mkdir()
    os.mkfifo(policies / "fifo.policy")
    (policies / "latin1.policy").write_bytes(b"# caf\xe9\n" + VALID.encode())
    (policies / "utf16.policy").write_bytes(VALID.encode("utf-16"))
    (policies / "bad.policy").write_text("allow plugin * to file:raed on \"/x\"\n")
    result = lint_paths(["policies"], variables=VARIABLES)
    found = {(f.span.file if f.span else "", f.code) for f in result.findings}
    for name in ("dangling", "loop", "dir", "fifo", "latin1", "utf16"):
        assert (f"policies/{name}.policy", "PL002") in found, name
    assert ("policies/bad.policy", "PL101") in found  # the others are still linted
    assert not any(f.span and f.span.file == "policies/bom.policy" for f in result.findings)
    latin1 = next(f for f in result.findings if f.span and f.span.file == "policies/latin1.policy")
    assert "byte 0xe9 at offset 5 (line 1, column 6)" in latin1.message
    assert (latin1.span.line, latin1.span.column) == (1, 6) if latin1.span else False


def test_an_empty_directory_is_pl002_as_it_is_an_error_for_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no policies here\n")
    result = lint_paths(["empty"], variables=VARIABLES)
    assert [(f.code, f.message) for f in result.findings] == [
        ("PL002", "no `.policy` files in `empty`")]
    assert result.has_failures()


def test_a_dangling_policy_named_by_itself_is_pl002(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("deny.policy").symlink_to("gone/deny.policy")
    assert codes(["deny.policy"]) == ["PL002"]


def test_rule_findings_carry_the_rule_severity() -> None:
    result = lint_paths(["rules"], variables=VARIABLES)
    by_code = {r.code: r.severity for r in RULES}
    assert result.findings
    for item in result.findings:
        assert item.severity is by_code[item.code], item.render()
        assert item.span is not None and item.message == item.message.strip()
        assert not item.message[:1].isupper(), item.message


# Output formats ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json", "sarif"])
def test_output_formats_are_golden(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["project", "--format", fmt]
    code, out, err = run(capsys, *args)
    assert (code, err) == (1, "")
    suffix = {"text": "txt", "json": "json", "sarif": "sarif"}[fmt]
    if fmt == "sarif":  # the golden file outlives a version bump
        out = out.replace(f'"version": "{tool_version()}"', '"version": "<version>"')
    assert_golden(GOLDEN / f"project.{suffix}", out)


def test_json_findings_have_positions_and_doc_anchors(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "project", "--format", "json")
    items = json.loads(out)
    assert {i["code"] for i in items} >= {"PL207", "PL301", "PL401"}
    for item in items:
        assert set(item) == {"code", "name", "severity", "message", "file", "start", "end", "hint",
                             "pointer", "doc"}
        assert item["doc"] == f"README.md#{item['code'].lower()}"
        assert item["start"]["line"] >= 1 and item["end"]["line"] >= item["start"]["line"]


# The official SARIF 2.1.0 schema (with errata 01), vendored unchanged from
# https://github.com/oasis-tcs/sarif-spec, file sarif-2.1/schema/sarif-schema-2.1.0.json at
# commit e0583813964ec43cea53b6b531b402866095ed1f; (c) OASIS Open, licensed under the OASIS
# IPR Policy (https://www.oasis-open.org/policies-guidelines/ipr), see that repository's LICENSE.md.
SARIF_SCHEMA_FILE = HERE / "sarif-schema-2.1.0.json"


def sarif_validator() -> jsonschema.Draft4Validator:
    """The official schema, with formats checked (``uri`` rejects a relative URL)."""
    schema = json.loads(SARIF_SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    checker = jsonschema.FormatChecker()
    # Without the format packages jsonschema skips `uri` silently: make that a failure.
    assert {"uri", "uri-reference", "date-time"} <= set(checker.checkers)
    return jsonschema.Draft4Validator(schema, format_checker=checker)


def test_sarif_matches_the_official_sarif_2_1_0_schema(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "project", "rules", "--format", "sarif")
    log = json.loads(out)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in sarif_validator().iter_errors(log)]
    assert errors == []
    run_ = log["runs"][0]
    driver = run_["tool"]["driver"]
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [r.code for r in RULES]
    assert rules[0]["helpUri"] == f"{DOCS_URL}#pl001"
    assert driver["version"] == tool_version() != "0+unknown"
    for result in run_["results"]:
        # What GitHub code scanning needs beyond the schema: a rule, a relative file, a line.
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        location = result["locations"][0]["physicalLocation"]
        assert not location["artifactLocation"]["uri"].startswith("/")
        assert location["region"]["startLine"] >= 1


def test_sarif_version_and_doc_url_come_from_pyproject() -> None:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    assert project["urls"]["Documentation"] == DOCS_URL
    assert project["dynamic"] == ["version"]
    from policy_engine import __version__
    assert tool_version() == __version__


def test_sarif_with_the_default_doc_url_before_was_relative_and_is_rejected_by_the_schema() -> None:
    log = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x", "rules": [
        {"id": "PL101", "helpUri": "README.md#pl101"}]}}}]}
    assert not sarif_validator().is_valid(log)  # the format check is what catches it


@pytest.mark.parametrize("url", ["README.md", "docs/README.md", "//host/README.md", "https://h/a b"])
def test_sarif_refuses_a_relative_doc_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "project", "--format", "sarif", "--doc-url", url)
    assert (code, out) == (2, "")
    assert err == (f"policy-lint: error: `{url}` is not an absolute URL, which SARIF needs for "
                   "`helpUri` (such as `https://host/path/README.md`)\n")


def test_sarif_file_names_are_percent_encoded(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my policies").mkdir()
    (tmp_path / "my policies" / "a #1.policy").write_text('allow plugin "x" to file:read "/srv/**"\n'
                                                         'allow plugin "x" to file:read "/srv/**"\n')
    _, out, _ = run(capsys, "my policies", "--format", "sarif")
    log = json.loads(out)
    assert list(sarif_validator().iter_errors(log)) == []
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"]}
    assert uris == {"my%20policies/a%20%231.policy"}


def test_the_official_sarif_schema_rejects_what_github_would() -> None:
    validator = sarif_validator()
    good = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
        {"ruleId": "PL101", "level": "error", "message": {"text": "m"}, "locations": [
            {"physicalLocation": {"artifactLocation": {"uri": "a.policy"}, "region": {"startLine": 1}}}]}]}]}
    assert validator.is_valid(good)
    for broken in (
        {**good, "version": "2.0.0"},
        {"version": "2.1.0"},
        {**good, "runs": [{"tool": {"driver": {}}}]},
        {**good, "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"message": {}}]}]},
        {**good, "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
            {"level": "fatal", "message": {"text": "m"}}]}]},
        {**good, "runs": [{"tool": {"driver": {"name": "x"}}, "results": [{"message": {"text": "m"}, "locations": [
            {"physicalLocation": {"artifactLocation": {"uri": "a"}, "region": {"startLine": 0}}}]}]}]},
        {**good, "runs": [{"tool": {"driver": {"name": "x", "informationUri": "README.md"}}}]},
        {**good, "$schema": "not a uri"},
        {**good, "extra": 1},
    ):
        assert not validator.is_valid(broken), broken


def test_text_output_has_no_colour_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "project")
    assert "\x1b[" not in out


def test_explain_prints_every_rule_doc(capsys: pytest.CaptureFixture[str]) -> None:
    pages = []
    for rule in RULES:
        code, out, err = run(capsys, "--explain", rule.code.lower())
        assert (code, err) == (0, "")
        assert out == explain(rule.code)
        for part in ("What it does:", "Why it matters:", "Example:"):
            assert part in out
        pages.append(out)
    assert_golden(GOLDEN / "explain.txt", "\n".join(pages))


# Exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["rules/PL001/good"], 0),                      # clean
        (["rules/PL101/bad"], 1),                       # an error
        (["rules/PL304/bad"], 0),                       # warnings only
        (["rules/PL304/bad", "--strict"], 1),           # warnings fail with --strict
        (["rules/PL101/bad", "--exit-zero"], 0),        # findings never fail
        (["rules/PL101/bad", "--ignore", "PL1"], 0),    # the error is not selected
        (["rules/PL101/bad", "--select", "PL3"], 0),
        (["rules/PL101/bad", "--select", "PL101,PL3"], 1),
        (["does-not-exist"], 2),                        # usage errors
        (["does-not-exist", "--exit-zero"], 2),         # --exit-zero never hides a 2
        (["rules/PL101/bad", "--select", "XX1"], 2),
        (["rules/PL101/bad", "--ignore", "PL99"], 2),
        (["--format", "xml"], 2),
        (["--explain", "PL999"], 2),
        (["rules/PL101/bad", "--variables", "novalue"], 2),
        (["rules/PL101/bad/nothing.txt"], 2),
    ],
)
def test_exit_codes(args: list[str], expected: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *args)
    assert code == expected, out + err
    if expected == 2:
        assert out == "" and err.startswith(("policy-lint: error:", "usage: policy-lint"))
        assert "Traceback" not in err


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "nope") == (2, "", "policy-lint: error: path `nope` does not exist\n")
    assert run(capsys, "--explain", "PL999") == (2, "", "policy-lint: error: unknown rule code `PL999`\n")


def test_internal_errors_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("policy_engine.cli.lint.lint_paths", broken)
    assert run(capsys, "rules/PL101/bad", "--exit-zero") == (2, "", "policy-lint: internal error: RuntimeError: boom\n")


def test_default_path_is_policies(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES / "rules" / "PL101" / "bad")
    assert run(capsys, "--select", "PL1") == (2, "", "policy-lint: error: path `policies` does not exist\n")
    monkeypatch.chdir(ROOT)
    code, _, err = run(capsys, "--select", "PL0,PL1")
    assert (code, err) == (0, "")


def test_select_and_ignore_are_code_prefixes() -> None:
    assert set(codes(["rules/PL304/bad"])) == {"PL304"}
    assert codes(["rules/PL304/bad"], ignore=["PL3"]) == []
    assert codes(["rules/PL304/bad"], select=["pl30"]) == ["PL304"] * 3
    with pytest.raises(UsageError, match="unknown code `Q1` in `--select`"):
        lint_paths(["rules/PL304/bad"], select=["Q1"])


# Suppression ---------------------------------------------------------------------------


def test_noqa(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["noqa"]
    code, out, err = run(capsys, *args)
    assert err == ""
    assert_golden(GOLDEN / "noqa.txt", transcript(args, code, out))
    result = lint_paths(["noqa"], variables=VARIABLES)
    found = {(f.span.file, f.span.line, f.code) for f in result.findings if f.span}
    policy = "noqa/policies/noqa.policy"
    # suppressed: a listed code, a bare noqa, the file-level PL307
    assert not {(policy, 4, "PL304"), (policy, 5, "PL304"), (policy, 6, "PL307")} & found
    # unused: one of two codes, a bare noqa, an unknown code, a file-level prefix
    assert {(policy, 7, "PL901"), (policy, 8, "PL901"), (policy, 9, "PL901"),
            ("noqa/policies/other.policy", 1, "PL901")} <= found
    # a noqa inside a string is no comment; manifest lines take noqa; PL405 used once
    assert (policy, 10, "PL901") not in found
    assert ("noqa/plugins/p/plugin.yaml", 6, "PL901") not in found
    assert ("noqa/plugins/p/plugin.yaml", 7, "PL901") in found
    # python: our code suppresses, another tool's codes are not ours, bare is never unused
    code_file = "noqa/plugins/p/plugin.py"
    assert (code_file, 3, "PL404") in found
    assert not {(code_file, 4, "PL401"), (code_file, 12, "PL401")} & found
    assert not any(f.code == "PL901" and f.span and f.span.file == code_file for f in result.findings)


def test_unused_noqa_is_not_reported_for_codes_that_did_not_run() -> None:
    found = lint_paths(["noqa/policies"], variables=VARIABLES, ignore=["PL304"]).findings
    unused = {f.span.line: f.message for f in found if f.code == "PL901" and f.span}
    assert 4 not in unused  # it names PL304 only, and PL304 did not run
    assert unused[7] == "`PL302` in `# noqa: PL304, PL302` suppresses nothing"
    assert lint_paths(["noqa/policies"], variables=VARIABLES, ignore=["PL9"]).findings == ()


def test_file_level_noqa_must_be_near_the_top(tmp_path: Path) -> None:
    policy = tmp_path / "late.policy"
    policy.write_text("\n" * 12 + "# policy-lint: noqa\nallow plugin * to file:write on \"/**\"\n")
    assert codes([str(policy)]) == ["PL304"]
    policy.write_text("# policy-lint: noqa\nallow plugin * to file:write on \"/**\"\n")
    assert codes([str(policy)]) == []


# Inputs --------------------------------------------------------------------------------


def test_a_plugin_yaml_path_means_its_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert codes(["rules/PL207/bad/plugin.yaml"]) == ["PL207"]
    assert codes(["rules/PL404/bad/plugin.py"]) == ["PL404"]
    code, out, _ = run(capsys, "rules/PL207/bad/plugin.yaml", "rules/PL101/bad/policy.policy")
    assert code == 1 and "PL207" in out and "PL101" in out
    # pre-commit puts the changed files after the hook's args, options included
    code, out, _ = run(capsys, "rules/PL101/bad", "--select", "PL1,PL2", "rules/PL207/bad/plugin.yaml")
    assert code == 1 and "PL207" in out and "PL101" in out


def test_a_policy_file_is_linted_with_the_files_of_its_policy(tmp_path: Path) -> None:
    (tmp_path / "a.policy").write_text("defaults {\n    timeout hook 5s\n}\n")
    (tmp_path / "b.policy").write_text("defaults {\n    timeout hook 9s\n}\n")
    (tmp_path / "c.policy").write_text('policy "other"\n\ndefaults {\n    timeout hook 1s\n}\n')
    assert codes([str(tmp_path / "a.policy")]) == ["PL105"]
    assert codes([str(tmp_path / "c.policy")]) == []


def test_compile_errors_of_all_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.policy").write_text("allow plugin * to file:raed\n")
    (tmp_path / "b.policy").write_text("allow plugin * to nope:x on \"{nope}\"\n")
    (tmp_path / "c.policy").write_text("allow plugin * to\n")
    assert sorted(codes([str(tmp_path)])) == ["PL001", "PL101", "PL101", "PL102"]


def test_pre_commit_hook_is_declared() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    (hook,) = hooks
    assert hook["id"] == "policy-lint" and hook["entry"].split()[0] == "policy-lint"
    assert hook["language"] == "python" and hook["pass_filenames"] is True
    assert re.search(hook["files"], "policies/site.policy")
    assert re.search(hook["files"], "plugins/x/plugin.yaml")
    assert re.search(hook["files"], "plugins/x/plugin.py")  # tests/lint/test_pre_commit_hook.py


# The README, the shipped policies, scale ------------------------------------------------


def test_readme_rule_table_is_generated_from_the_rule_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- lint-rules -->\n(.*?)<!-- /lint-rules -->", readme, re.S)
    assert match is not None, "README.md lacks the lint-rules markers"
    assert match.group(1) == render_rule_table()
    for rule in RULES:
        assert f'<a id="{rule.code.lower()}"></a>' in match.group(1)


def test_shipped_policies_lint_without_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = lint_paths(["policies"], variables=VARIABLES)
    errors = [f.render() for f in result.findings if f.severity is Severity.ERROR]
    assert errors == []


def test_rules_are_documented_in_three_parts() -> None:
    assert len({r.code for r in RULES}) == len({r.name for r in RULES}) == len(RULES)
    for rule in RULES:
        assert re.fullmatch(r"PL\d{3}", rule.code) and re.fullmatch(r"[a-z]+(-[a-z0-9]+)*", rule.name)
        assert rule.summary and rule.what and rule.why and rule.example
        assert not rule.summary[0].isupper()


def _big_policy(plugins: int) -> tuple[str, list[tuple[int, str]]]:
    """About six rules per plugin, as in benchmarks/bench_decide.py, plus planted problems;
    returns the text and the (line, code) findings expected."""
    lines = [
        'deny plugin * to file:* on "/etc/**", "{home}/.ssh/**", "/root/**"',
        'deny plugin * to network:request on "*.evil.test", "169.254.169.254"',
        "deny plugin * to subprocess:execute unless plugin.trusted",
        'allow plugin * to hook:register on "core.*"',
    ]
    expected: list[tuple[int, str]] = []
    for i in range(plugins):
        name = f"plugin-{i:05d}"
        lines += [
            f'allow plugin "{name}" to file:read on "/srv/plugins/{name}/**", "/srv/shared/{i % 50}/*.csv"',
            f'allow plugin "{name}" to file:write, file:delete on "{{data_dir}}/{name}/**"',
            f'allow plugin "{name}" to network:request on "api{i}.example.com:443", "*.svc{i % 20}.example.com"',
            f'allow plugin "{name}" to database:read on "db{i}.*"',
            f'allow plugin "{name}" to config:read on "plugins.{name}.*"',
            f'allow plugin "{name}" to hook:register on "events.{i}.*"'
            + (' when context.env == "prod"' if i % 5 == 0 else ""),
        ]
        if i % 3 == 0:
            lines.append(f'deny plugin "{name}" to database:read on "db{i}.secret*"')
        if i % 500 == 1:
            lines.append(f'allow plugin "{name}" to database:read on "db{i}.reports"')
            expected.append((len(lines), "PL302"))
            lines.append(f'allow plugin "{name}" to file:read on "/etc/{name}.conf"')
            expected.append((len(lines), "PL301"))
    return "\n".join(lines) + "\n", expected


def test_a_13000_rule_policy_lints_quickly_and_correctly(tmp_path: Path) -> None:
    text, expected = _big_policy(2060)
    assert text.count("\n") > 13000
    # A policy file holds at most `policy_file_bytes` (512 KiB): a set this size is several
    # files, cut at plugin boundaries (a line starting a plugin's first rule).
    lines = text.splitlines(keepends=True)
    files: list[tuple[str, int]] = []  # (name, first line of the whole text)
    start = 0
    while start < len(lines):
        end = min(start + 4000, len(lines))
        while end < len(lines) and "to file:read on \"/srv/plugins/" not in lines[end]:
            end += 1
        name = f"big{len(files):02d}.policy"
        (tmp_path / name).write_text("".join(lines[start:end]))
        files.append((name, start))
        start = end
    assert len(files) >= 3

    def where(line: int) -> tuple[str, int]:
        name, first = [f for f in files if f[1] < line][-1]
        return name, line - first

    started = time.perf_counter()
    result = lint_paths([str(tmp_path)], variables=VARIABLES)
    elapsed = time.perf_counter() - started
    got = sorted((Path(f.span.file).name, f.span.line, f.code) for f in result.findings if f.span)
    assert got == sorted((*where(line), code) for line, code in expected)
    print(f"13k-rule lint: {elapsed:.2f}s")  # shown with -s; the bound is the suite's time


def test_diagnostic_type_is_the_finding_type() -> None:
    result = lint_paths(["rules/PL101/bad"], variables=VARIABLES)
    assert all(isinstance(f, Diagnostic) for f in result.findings)
    assert result.has_failures() and result.count(Severity.ERROR) == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # PL301 needs an unconditional deny over every plugin, permission and resource
        ('deny plugin * to file:* on "/etc/**" when context.env == "prod"\n'
         'allow plugin "a" to file:read on "/etc/x"\n', []),
        ('deny plugin "b" to file:* on "/etc/**"\nallow plugin "a" to file:read on "/etc/x"\n', []),
        ('deny plugin * to file:read on "/etc/**"\nallow plugin "a" to file:read\n', []),
        ('deny plugin * to file:read on "/etc/**"\nallow plugin "a" to file:read, file:write on "/etc/x"\n', []),
        ('deny plugin * to file:read on "/etc/**"\ndeny plugin "a" to file:write on "/etc/x"\n'
         'allow plugin "a" to file:read, file:write on "/etc/x"\n', [(3, "PL301")]),
        ('deny plugin * to network:request\nallow plugin "a" to network:request on "api.example.com:443"\n',
         [(2, "PL301")]),
        # PL302 needs a rule that applies at least as often
        ('allow plugin * to file:read on "/srv/**" when context.env == "prod"\n'
         'allow plugin "a" to file:read on "/srv/x"\n', []),
        ('allow plugin * to file:read on "{plugin_dir}/**"\nallow plugin * to file:read on "{plugin_dir}/data/**"\n',
         [(2, "PL302")]),
        ('allow plugin * to file:read on "/srv/{plugin}/**"\nallow plugin "x" to file:read on "/srv/x/**"\n', []),
        ('allow plugin "a", "b" to config:read on "cfg.*"\nallow plugin "a" to config:read on "cfg.a"\n',
         [(2, "PL302")]),
        ('allow plugin "a" to config:read on "cfg.*"\nallow plugin "a", "b" to config:read on "cfg.a"\n', []),
        ('deny plugin * to file:*\ndeny plugin * to file:read on "/x"\n', [(2, "PL302")]),
        ('allow plugin * to network:request on "*.example.com:443"\n'
         'allow plugin * to network:request on "api.example.com:443", "x.y.example.com:443"\n', [(2, "PL302")]),
        ('allow plugin * to network:request on "*.example.com:443"\n'
         'allow plugin * to network:request on "example.com:443"\n', []),
    ],
)
def test_rule_analysis_is_precise(tmp_path: Path, policy: str, expected: list[tuple[int, str]]) -> None:
    (tmp_path / "p.policy").write_text(policy)
    found = lint_paths([str(tmp_path / "p.policy")], variables=VARIABLES, select=["PL301", "PL302"]).findings
    assert [(f.span.line, f.code) for f in found if f.span] == expected


def test_text_output_can_be_coloured_for_a_terminal() -> None:
    from policy_engine.lint import format_text

    out = format_text(lint_paths(["rules/PL101/bad"], variables=VARIABLES), colour=True)
    assert "\x1b[31m\x1b[1mPL101\x1b[0m" in out and "\x1b[36mhint:\x1b[0m" in out
    assert format_text(lint_paths(["rules/PL101/good"], variables=VARIABLES)) == ""


@pytest.mark.parametrize(("deny", "allow", "code"), [
    ("10.0.0.0/8", "10.1.2.3:443", "PL301"),
    ("[fe80::/10]:22", "[fe80::1]:22", "PL301"),
    ("*:8000-8999", "api.example.com:8080", "PL301"),
    ("10.0.0.0/8", "192.168.1.1:443", None),
    ("*:8000-8999", "api.example.com:9000", None),
])
def test_rule_analysis_understands_cidr_and_port_ranges(
    tmp_path: Path, deny: str, allow: str, code: str | None
) -> None:
    (tmp_path / "net.policy").write_text(
        f'allow plugin "p" to network:request on "{allow}"\n'
        f'deny plugin * to network:request on "{deny}"\n')
    found = [f.code for f in lint_paths([str(tmp_path)]).findings if f.code.startswith("PL30")]
    assert found == ([code] if code else [])


def test_a_wider_cidr_allow_makes_a_narrower_one_redundant(tmp_path: Path) -> None:
    (tmp_path / "net.policy").write_text(
        'allow plugin * to network:request on "10.0.0.0/8"\n'
        'allow plugin * to network:request on "10.1.0.0/16:443"\n')
    assert "PL302" in [f.code for f in lint_paths([str(tmp_path)]).findings]


def test_every_code_is_defined_once_and_documented() -> None:
    import re
    from pathlib import Path

    from policy_engine import codes
    from policy_engine.lint.rules import RULES

    defined = {getattr(codes, name): name for name in codes.__all__}
    assert len(defined) == len(codes.__all__)  # no code under two names
    assert sorted(defined) == sorted(r.code for r in RULES)
    for rule in RULES:
        assert defined[rule.code] == rule.name.upper().replace("-", "_")
    package = Path(codes.__file__).parent
    for path in package.rglob("*.py"):
        if path.name != "codes.py":
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"[\"']PL\d{3}[\"']", text), f"{path.name} spells a code"


def test_pl313_names_the_template_not_a_stand_in(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('allow plugin * to file:read on "{plugin_dir}/**"\n'
                      'deny plugin * to file:read on "{plugin_dir}/*.key"\n')
    (found,) = [f for f in lint_paths([str(policy)]).findings if f.code == "PL313"]
    assert "it is a glob inside granted `{plugin_dir}`" in found.message


def test_a_glob_grant_past_the_bound_is_pl314(tmp_path: Path) -> None:
    from policy_engine.globs import MAX_MATCHES

    many = tmp_path / "many"
    many.mkdir()
    for index in range(MAX_MATCHES + 1):
        (many / f"f{index}.csv").touch()
    policy = tmp_path / "p.policy"
    policy.write_text(f'allow plugin "x" to file:read on "{many}/*.csv"\n')
    (found,) = [f for f in lint_paths([str(policy)]).findings if f.code == "PL314"]
    assert f"`{many}/*.csv` matches more than {MAX_MATCHES}" in found.message
    assert found.span is not None and found.span.line == 1
    policy.write_text(f'allow plugin "x" to file:read on "{many}/*.csv"\n'
                      'plugin "x" { accept inexact-grant }\n')
    assert "PL314" not in [f.code for f in lint_paths([str(policy)]).findings]
    policy.write_text(f'allow plugin "x" to file:read on "{many}/f1*.csv"\n')
    assert "PL314" not in [f.code for f in lint_paths([str(policy)]).findings]


def test_a_glob_deny_inside_a_glob_grant_is_exact(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text('allow plugin * to file:read on "/srv/data/*.csv"\n'
                      'deny plugin * to file:read on "/srv/data/secret*.csv"\n')
    assert "PL313" not in [f.code for f in lint_paths([str(policy)]).findings]
