"""``policy-lint FILE`` reports the findings of the files it was given: the other policy files
beside it (its siblings) feed the cross-file checks only, and a broken sibling neither hides
the given file's findings nor turns its valid ``# noqa`` into "suppresses nothing"."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine.cli.lint import main
from policy_engine.lint import lint_paths

# A named file with real findings (PL302 twice) and a noqa that suppresses one of them.
NAMED = (
    'allow plugin * to hook:register on "events.*"\n'
    'allow plugin * to hook:register on "events.*"  # noqa: PL302\n'
    'allow plugin * to file:read on "/srv/data/**"\n'
    'allow plugin "reports" to file:read on "/srv/data/reports/*.csv"\n'
)

#: Siblings that are broken in one way each: their bytes.
BROKEN_SIBLINGS: dict[str, bytes] = {
    "syntax-error": b'allow plugin * to\n',
    "undecodable": b'allow plugin * to file:read on "/srv/\xff\xfe"\n',
    "unknown-permission": b'allow plugin * to file:raed on "/x"\n',
    "unknown-variable": b'allow plugin * to file:read on "{nowhere}/**"\n',
    "bad-quantity": b"defaults {\n  timeout hook 5parsecs\n}\n",
    "bad-setting": b"defaults {\n  timeout hook 5s\n  timeout hook 6s\n}\n",
}
CLASH = "defaults {\n  timeout hook 9s\n}\n"


def findings(paths: list[Path]) -> list[tuple[str, str, int, int]]:
    result = lint_paths(paths)
    return [(Path(f.span.file).name if f.span else "", f.code, f.span.line if f.span else 0,
             f.span.column if f.span else 0) for f in result.findings]


def alone(tmp: Path, text: str) -> list[tuple[str, str, int, int]]:
    """The named file's findings with no sibling at all."""
    (tmp / "alone").mkdir(exist_ok=True)
    (tmp / "alone" / "a.policy").write_text(text)
    return findings([tmp / "alone" / "a.policy"])


def make_set(directory: Path, named: str, siblings: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.policy").write_text(named)
    for index, (_, data) in enumerate(sorted(siblings.items())):
        (directory / f"b{index}.policy").write_bytes(data)
    return directory / "a.policy"


@pytest.mark.parametrize("kind", sorted(BROKEN_SIBLINGS))
def test_a_broken_sibling_hides_nothing_of_the_named_file(kind: str, tmp_path: Path) -> None:
    named = NAMED
    path = make_set(tmp_path / "set", named, {kind: BROKEN_SIBLINGS[kind]})
    got = findings([path])
    assert got == alone(tmp_path, named)
    assert ("a.policy", "PL302", 4, 1) in got  # the named file's own finding is there
    assert not any(code == "PL901" for _, code, _, _ in got)  # its noqa is used
    assert all(name == "a.policy" for name, _, _, _ in got)  # nothing from the sibling


def test_the_cli_reports_only_the_named_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    make_set(tmp_path, NAMED, {"unknown-permission": BROKEN_SIBLINGS["unknown-permission"]})
    monkeypatch.chdir(tmp_path)
    assert main(["a.policy"]) == 0  # a warning only: PL302 on line 4
    out = capsys.readouterr().out
    assert out.startswith("a.policy:4:1: PL302 ")
    assert "b0.policy" not in out and "PL901" not in out
    assert out.endswith("found 0 errors and 1 warning in 1 file\n")


def test_the_files_of_the_result_are_the_named_ones(tmp_path: Path) -> None:
    path = make_set(tmp_path, NAMED, {"ok": b'deny plugin * to file:* on "/etc/**"\n'})
    assert lint_paths([path]).files == (str(path),)


def test_a_sibling_still_feeds_the_cross_file_checks(tmp_path: Path) -> None:
    # The broader rule is in the sibling; the finding is on the named file's narrower rule.
    path = make_set(tmp_path, 'allow plugin "reports" to file:read on "/srv/data/reports/*.csv"\n',
                    {"broad": b'allow plugin * to file:read on "/srv/data/**"\n'})
    assert findings([path]) == [("a.policy", "PL302", 1, 1)]


def test_a_finding_of_the_sibling_alone_is_not_reported(tmp_path: Path) -> None:
    # Both rules are the sibling's: that is the sibling's finding, not a.policy's.
    path = make_set(tmp_path, 'deny plugin * to file:* on "/etc/**"\n', {"own": (
        b'allow plugin * to file:read on "/srv/data/**"\n'
        b'allow plugin "reports" to file:read on "/srv/data/reports/*.csv"\n')})
    assert findings([path]) == []
    assert findings([tmp_path]) == [("b0.policy", "PL302", 2, 1)]


def test_a_clash_with_a_sibling_is_reported_and_the_named_file_still_analysed(tmp_path: Path) -> None:
    path = make_set(tmp_path, NAMED + CLASH, {"clash": b"defaults {\n  timeout hook 5s\n}\n"
                                                       b'allow plugin * to file:read on "/srv/**"\n'})
    got = findings([path])
    assert ("b0.policy", "PL105", 2, 3) in got  # names a.policy in its hint
    assert ("a.policy", "PL302", 4, 1) in got
    assert not any(code == "PL901" for _, code, _, _ in got)


def test_a_sibling_noqa_still_suppresses_its_own_findings(tmp_path: Path) -> None:
    path = make_set(tmp_path, 'allow plugin * to file:read on "/srv/data/**"\n', {
        "narrow": b'allow plugin "reports" to file:read on "/srv/data/reports/*.csv"  # noqa: PL302\n'})
    assert findings([path]) == []
    assert findings([tmp_path]) == []


def test_the_directory_still_reports_every_file(tmp_path: Path) -> None:
    make_set(tmp_path, NAMED, {"unknown-permission": BROKEN_SIBLINGS["unknown-permission"]})
    got = findings([tmp_path])
    assert ("b0.policy", "PL101", 1, 19) in got


def test_both_files_named_report_both(tmp_path: Path) -> None:
    path = make_set(tmp_path, NAMED, {"unknown-permission": BROKEN_SIBLINGS["unknown-permission"]})
    got = findings([path, tmp_path / "b0.policy"])
    assert ("b0.policy", "PL101", 1, 19) in got


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(sorted(BROKEN_SIBLINGS)), max_size=4))
def test_any_mix_of_broken_siblings_leaves_the_named_findings_alone(kinds: list[str]) -> None:
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        named = NAMED
        directory = tmp / "set"
        directory.mkdir()
        (directory / "a.policy").write_text(named)
        for index, kind in enumerate(kinds):
            (directory / f"b{index}.policy").write_bytes(BROKEN_SIBLINGS[kind])
        assert findings([directory / "a.policy"]) == alone(tmp, named)
        assert os.listdir(directory)  # the set was really there


def test_a_clash_reported_on_the_named_file_still_leaves_it_analysed(tmp_path: Path) -> None:
    # `0.policy` sorts before `a.policy`: the clash lands on the named file this time.
    path = make_set(tmp_path, NAMED + CLASH, {})
    (tmp_path / "0.policy").write_bytes(b"defaults {\n  timeout hook 5s\n}\n")
    got = findings([path])
    assert [code for name, code, _, _ in got if name == "a.policy"].count("PL105") == 1
    assert ("a.policy", "PL302", 4, 1) in got
    assert not any(code == "PL901" for _, code, _, _ in got)
