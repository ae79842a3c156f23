"""Messages that point the right way: every machine-applicable fix, applied literally,
yields text that parses (over a bad-input corpus and over mutations of the shipped
policies); misspelt keywords get "did you mean"; look-alike and invisible characters are
errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_engine.diagnostics import Diagnostic, closest_keyword, edit_distance
from policy_engine.errors import ManifestError, PolicySyntaxError
from policy_engine.manifest import load_manifest
from policy_engine.parser import parse_grant, parse_policy

from .conftest import GOLDEN, assert_golden

ROOT = Path(__file__).parent.parent
SHIPPED = sorted((ROOT / "policies").rglob("*.policy"))

# name, text, a piece of the expected hint
CORPUS: list[tuple[str, str, str]] = [
    ("to_is_not_a_plugin", 'allow plugin to file:read on "/srv/**"\n', "name the plugins before `to`"),
    ("deny_to_is_not_a_plugin", "deny plugin to file:*\n", "name the plugins before `to`"),
    ("smart_quotes", 'allow plugin * to file:read on \u201c/srv/**\u201d\n', 'write `"/srv/**"`'),
    ("smart_single_quotes", "allow plugin \u2018x\u2019 to file:read\n", 'write `"x"`'),
    ("smart_quotes_plugin", 'allow plugin \u201canalytics\u201d to file:read\n', 'write `"analytics"`'),
    ("space_before_size_unit", "defaults { limit memory 500 MB }\n",
     "the unit follows the number without a space: write `500MB`"),
    ("space_before_duration_unit", "defaults { timeout init 30 s }\n", "write `30s`"),
    ("space_before_percent", "defaults { limit cpu 80 % }\n", "write `80%`"),
    ("space_before_warn_unit", "defaults { limit memory 1GB warn 80 % }\n", "write `80%`"),
    ("keyword_typo_allow", "alow plugin * to file:read\n", "did you mean `allow`?"),
    ("keyword_case_allow", "Allow plugin * to file:read\n", "did you mean `allow`?"),
    ("keyword_case_deny", "DENY plugin * to file:read\n", "did you mean `deny`?"),
    ("keyword_typo_plugin", "allow plugn * to file:read\n", "did you mean `plugin`?"),
    ("keyword_typo_on", 'allow plugin * to file:read onn "/x"\n', "did you mean `on`?"),
    ("keyword_typo_when", 'allow plugin * to file:read on "/x" whn plugin.trusted\n',
     "did you mean `when`?"),
    ("keyword_typo_unless", 'deny plugin * to file:read unles plugin.trusted\n',
     "did you mean `unless`?"),
    ("keyword_typo_defaults", "defualts { limit cpu 50% }\n", "did you mean `defaults`?"),
    ("keyword_typo_limit", "defaults { limt cpu 50% }\n", "did you mean `limit`?"),
    ("keyword_typo_timeout", "defaults { timeot init 5s }\n", "did you mean `timeout`?"),
    ("keyword_typo_trust", 'trsut plugin "a" sha256 "00"\n', "did you mean `trust`?"),
    ("keyword_typo_policy", 'polcy "site"\n', "did you mean `policy`?"),
    ("keyword_typo_isolation", "defaults { isolaton process }\n", "did you mean `isolation`?"),
    ("cyrillic_keyword", "\u0430llow plugin * to file:read\n", "U+0430 CYRILLIC SMALL LETTER A"),
    ("greek_keyword", "deny plugin * t\u03bf file:read\n", "U+03BF GREEK SMALL LETTER OMICRON"),
    ("cyrillic_plugin_name", 'deny plugin "r\u043egue" to file:read\n', 'write `"rogue"`'),
    ("cyrillic_block_name", 'plugin "\u0430nalytics" { limit cpu 5% }\n', 'write `"analytics"`'),
    ("non_ascii_plugin_name", 'allow plugin "\u65e5\u672c" to file:read\n',
     "plugin names are lowercase ASCII"),
    ("bidi_in_pattern", 'deny plugin * to file:read on "/etc/\u202e**"\n', "remove it"),
    ("bidi_in_comment", "# note \u2067 here\nallow plugin * to file:read\n", "remove it"),
    ("zero_width_in_name", 'deny plugin "rogue\u200b" to file:read\n', "remove it"),
    ("lrm_in_keyword", "al\u200elow plugin * to file:read\n", "remove it"),
    ("unquoted_pattern", "allow plugin * to file:read on /srv/**\n", 'write `"/srv/**"`'),
    ("unquoted_plugin", "allow plugin analytics to file:read\n", 'write `"analytics"`'),
]


def syntax_errors(text: str) -> tuple[Diagnostic, ...]:
    try:
        parse_policy(text, "t.policy")
    except PolicySyntaxError as error:
        return error.diagnostics
    return ()


def parses(text: str) -> bool:
    return not syntax_errors(text)


@pytest.mark.parametrize(("name", "text", "hint"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_hint_and_fix(name: str, text: str, hint: str) -> None:
    errors = syntax_errors(text)
    assert errors, name
    assert any(hint in (d.hint or "") for d in errors), [d.render() for d in errors]
    for diagnostic in errors:
        if diagnostic.fix is not None:
            assert diagnostic.hint, "a fix always comes with a hint a person reads"
            assert parses(diagnostic.fix.apply(text)), diagnostic.render()


def test_corpus_golden() -> None:
    rendered = []
    for name, text, _ in CORPUS:
        for diagnostic in syntax_errors(text):
            fix = diagnostic.fix
            edit = f"  fix: {fix.span} -> {fix.replacement!r}" if fix else "  fix: none"
            rendered.append(f"[{name}]\n{diagnostic.render()}\n{edit}")
    assert_golden(GOLDEN / "messages" / "corpus.expected", "\n".join(rendered) + "\n")


def test_issue_examples_do_not_point_the_wrong_way() -> None:
    (to_error,) = syntax_errors('allow plugin to file:read on "/srv/**"\n')
    assert '"to"' not in (to_error.hint or "") and to_error.fix is None  # no guess at who
    (quote_error,) = syntax_errors('allow plugin * to file:read on \u201c/srv/**\u201d\n')
    assert "\u201c" not in (quote_error.hint or "")
    (unit_error,) = syntax_errors("defaults { limit memory 500 MB }\n")
    assert "expected" not in (unit_error.hint or "") and "without a space" in (unit_error.hint or "")


def test_invisible_characters_in_manifest_entries() -> None:
    with pytest.raises(PolicySyntaxError, match="U\\+202E"):
        parse_grant("file:read /srv/\u202e**")


def test_look_alike_manifest_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plugin.yaml").write_text(
        "name: r\u043egue\nversion: 1.0.0\ntype: agent\nentry_point: r:R\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="/name"):
        load_manifest(tmp_path)


def test_edit_distance() -> None:
    assert edit_distance("defualts", "defaults") == 1  # a transposition
    assert edit_distance("alw", "allow") == 2
    assert closest_keyword("ALLOW", ["allow", "deny"]) == "allow"
    assert closest_keyword("allow", ["allow"]) is None
    assert closest_keyword("xyz", ["allow", "deny"]) is None
    assert closest_keyword("t", ["to", "on"]) == "to"


# Mutations of the shipped policies -----------------------------------------------------

_KEYWORDS = re.compile(r"\b(allow|deny|plugin|to|on|when|unless|defaults|limit|timeout|trust|"
                       r"policy|warn|max|isolation)\b")
_QUANTITY = re.compile(r"\b(\d+)(ms|s|m|h|MB|GB|kB|KiB|MiB|GiB|%)")
_STRING = re.compile(r'"[^"\n]*"')
_LOOKALIKE = {"a": "\u0430", "o": "\u043e", "e": "\u0435", "p": "\u0440", "c": "\u0441"}


def _mutate(text: str, kind: str, index: int, choice: int) -> str:
    if kind == "keyword":
        matches = list(_KEYWORDS.finditer(text))
        m = matches[index % len(matches)]
        word = m.group()
        edits = [word[1:], word[:-1], word[0] + word[0] + word[1:], word.upper(), word.capitalize(),
                 word[1] + word[0] + word[2:] if len(word) > 2 else word + word[-1]]
        replacement = edits[choice % len(edits)]
        if (ch := next((c for c in word if c in _LOOKALIKE), None)) is not None and choice % 7 == 6:
            replacement = word.replace(ch, _LOOKALIKE[ch], 1)
        return text[: m.start()] + replacement + text[m.end():]
    if kind == "quantity":
        matches = list(_QUANTITY.finditer(text))
        if not matches:
            return text
        m = matches[index % len(matches)]
        return text[: m.start()] + m.group(1) + " " + m.group(2) + text[m.end():]
    if kind == "quotes":
        matches = list(_STRING.finditer(text))
        m = matches[index % len(matches)]
        open_, close = ("\u201c", "\u201d") if choice % 2 else ("\u2018", "\u2019")
        return text[: m.start()] + open_ + m.group()[1:-1] + close + text[m.end():]
    assert kind == "invisible"
    char = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u200b"[choice % 12]
    position = index % (len(text) + 1)
    return text[:position] + char + text[position:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(SHIPPED),
    kind=st.sampled_from(["keyword", "quantity", "quotes", "invisible"]),
    index=st.integers(0, 10_000),
    choice=st.integers(0, 100),
)
def test_every_fix_of_a_mutated_policy_parses(path: Path, kind: str, index: int, choice: int) -> None:
    text = _mutate(path.read_text(encoding="utf-8"), kind, index, choice)
    for diagnostic in syntax_errors(text):
        if diagnostic.fix is None:
            continue
        fixed = diagnostic.fix.apply(text)
        remaining = syntax_errors(fixed)
        assert not remaining, (diagnostic.render(), [d.render() for d in remaining])



def test_invisible_and_look_alike_errors_are_reported_together() -> None:
    text = 'deny plugin "r\u043egue" to file:read\nallow plugin * to file:read on "/srv/\u202e**"\n'
    errors = syntax_errors(text)
    assert sorted(d.span.line for d in errors if d.span) == [1, 2]
    fixed = text
    for diagnostic in sorted(errors, key=lambda d: (d.span.line, d.span.column) if d.span else (0, 0),
                             reverse=True):
        assert diagnostic.fix is not None
        fixed = diagnostic.fix.apply(fixed)
    assert parses(fixed) and "rogue" in fixed


def test_lint_json_carries_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from policy_engine.cli.lint import main as lint_main

    policy = tmp_path / "p.policy"
    policy.write_text("defaults { limit memory 500 MB }\n", encoding="utf-8")
    assert lint_main([str(policy), "--json"]) == 1
    (finding,) = json.loads(capsys.readouterr().out)
    assert finding["fix"] == {"start": {"line": 1, "column": 25}, "end": {"line": 1, "column": 31},
                              "replacement": "500MB"}


# -- lines are numbered as each source's reader numbers them ------------------------------------


def test_source_lines_split_as_each_reader_counts_lines() -> None:
    from policy_engine.diagnostics import language_of, source_line, source_lines

    text = "a\u2028b\x0cc\rd\r\ne\x85f\n"
    assert source_lines(text) == ["a\u2028b\x0cc\rd", "e\x85f"]  # Lark: "\n" alone
    assert source_lines(text, "python") == ["a\u2028b\x0cc", "d", "e\x85f"]
    assert source_lines(text, "yaml") == ["a", "b\x0cc", "d", "e", "f"]
    assert source_lines(text, keepends=True) == ["a\u2028b\x0cc\rd\r\n", "e\x85f\n"]
    assert source_lines("") == [] and source_lines("x") == ["x"]
    assert source_line(text, 2) == "e\x85f" and source_line(text, 3) is None
    assert [language_of(p) for p in ("a/plugin.yaml", "m.py", "x.policy")] == \
        ["yaml", "python", "policy"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0c", "\x85"])
def test_an_error_after_a_line_separator_in_a_string_shows_its_own_line(separator: str) -> None:
    text = f'allow plugin "a" to file:read on "/a{separator}b"\nallow plugin b to file:read on "/y"\n'
    with pytest.raises(PolicySyntaxError) as caught:
        parse_policy(text, "p.policy")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.span is not None and diagnostic.span.line == 2
    assert diagnostic.source_line == 'allow plugin b to file:read on "/y"'
