"""The policy parser's fast path (:mod:`policy_engine.simple_parser`) against the full parser.

For generated files of statements, valid and mutated, the fast path either declines or
returns exactly the full parser's :class:`PolicyFile` (statements, spans, rule texts and
comments); whenever the full parser reports an error, the fast path declines, so every
error message is the full parser's.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_engine import parser
from policy_engine.bounded import DEFAULT_LIMITS, InputLimits
from policy_engine.errors import PolicySyntaxError
from policy_engine.simple_parser import GRAMMAR_SHA256, Declined, recognise

_SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", " \n  ", "\r\n", "", " # note\n", "\f", "\v", "\u00a0",
               "#\n", "\n# a } comment { allow\n"]
_NAMES = ['"a"', '"plugin-1"', '"x y"', '"q\\"uote"', '"caf\u00e9"', '"to"', '"on"', '""', '"a\\\\b"',
          '"a\\nb"', '"{x}"', '"allow"', '"ca\u2028t"']
_ACTIONS = ["file:read", "file:*", "*", "network:request", "a_b:c_d", "File:read", "file:", "file:read2",
            "hook:register", "to", "on"]
_PATTERNS = ['"/srv/**"', '"{plugin_dir}/*"', '"*.example.com:443"', '"[2001:db8::1]"', '"a,b"',
             '"#x"', '"\\t\\\\"', '"\u2028"', '"x\x00y"', '"unterminated', '"on"', '"a" "b"']
_CONDITIONS = ["plugin.trusted", 'context.env == "prod"', "context.n >= 2", '"a" != context.x',
               "plugin.version < 1.5", "context.x == true", "-1 < context.y", "context.a.b == plugin.c",
               '"x"', "false", "not plugin.x", "plugin.a and plugin.b", 'context.n in ["a", 1]',
               '(plugin.a or plugin.b)', 'context.x matches "a*"',
               "plugin.", "context.x ==", "context.x == 1.", "context.x =< 2", "plugin.x-y == 1",
               "context.x == 1 == 2", "contexts.x"]
_SETTING_NAMES = ["memory", "cpu", "call", "disk", "max", "warn", "allow", "a-b", "x.y", "9x"]
_QUANTITIES = ["30s", "500MB", "80%", "1.5s", "2", "30 s", "1.2.3", "\u0661\u0662s", "x"]


_CLEAN_SEPARATORS = [" "] * 12 + ["\n  ", "  ", "\t", " # note\n", ""]
# A file is drawn "clean" (mostly valid tokens and spacing, so that the recogniser's shapes
# are exercised) or "noisy" (every odd token and separator).
_clean = False


def _pick(draw: st.DrawFn, pool: list[str], valid: int | None = None) -> str:
    """One of ``pool``; in a clean file one of its first ``valid`` entries, mostly."""
    if _clean and valid is not None and draw(st.integers(0, 9)) > 0:
        return draw(st.sampled_from(pool[:valid]))
    return draw(st.sampled_from(pool))


def _join(draw: st.DrawFn, tokens: list[str]) -> str:
    out = [tokens[0]]
    for token in tokens[1:]:
        out.append(_pick(draw, _CLEAN_SEPARATORS if _clean else _SEPARATORS))
        out.append(token)
    return "".join(out)


_VALID = {id(_NAMES): 12, id(_ACTIONS): 6, id(_PATTERNS): 10, id(_QUANTITIES): 5}


def _listed(draw: st.DrawFn, pool: list[str]) -> list[str]:
    items = [_pick(draw, pool, _VALID.get(id(pool))) for _ in range(draw(st.integers(1, 3)))]
    tokens = [items[0]]
    for item in items[1:]:
        tokens.extend([",", item])
    return tokens


@st.composite
def _rule(draw: st.DrawFn) -> str:
    tokens = [_pick(draw, ["allow", "deny", "alow"], 2), "plugin"]
    tokens += ["*"] if draw(st.booleans()) else _listed(draw, _NAMES)
    tokens += ["to", *_listed(draw, _ACTIONS)]
    if draw(st.booleans()):
        tokens += ["on", *_listed(draw, _PATTERNS)]
    for clause in ("when", "unless"):
        if draw(st.integers(0, 3)) == 0:
            tokens += [clause, _pick(draw, _CONDITIONS, 15)]
    return _join(draw, tokens)


@st.composite
def _setting(draw: st.DrawFn) -> list[str]:
    kind = _pick(draw, ["timeout", "limit", "on", "isolation", "accept", "bogus"], 5)
    if kind in ("timeout", "limit"):
        tokens = [kind, draw(st.sampled_from(_SETTING_NAMES)), _pick(draw, _QUANTITIES, 5)]
        for extra in ("warn", "max"):
            if draw(st.booleans()):
                tokens += [extra, _pick(draw, _QUANTITIES, 5)]
        if not _clean and draw(st.integers(0, 5)) == 0:
            tokens += ["on", '"/tmp"']  # a shape the grammar may grow (`limit disk ... on`)
        return tokens
    if kind == "on":
        return ["on", _pick(draw, ["violation", "violations"], 1),
                draw(st.sampled_from(["terminate", "warn", "x-y"]))]
    if kind == "isolation":
        tokens = ["isolation", draw(st.sampled_from(["process", "inprocess", "allow"]))]
        if draw(st.booleans()):
            tokens += ["allow", _pick(draw, ["degraded", "degrade"], 1)]
        return tokens
    if kind == "accept":
        return ["accept", *[_pick(draw, ["no-network", "a_b", "max", "x.y", '"q"'], 2)]]
    return ["bogus"]


@st.composite
def _block(draw: st.DrawFn) -> str:
    tokens = ["defaults"] if draw(st.booleans()) else ["plugin", draw(st.sampled_from(_NAMES))]
    tokens.append("{")
    for _ in range(draw(st.integers(0, 3))):
        tokens += draw(_setting())
    tokens.append(_pick(draw, ["}", ""], 1))
    return _join(draw, tokens)


@st.composite
def _other(draw: st.DrawFn) -> str:
    kind = _pick(draw, ["header", "trust", "comment", "junk"], 3)
    if kind == "header":
        tokens = ["policy", draw(st.sampled_from(_NAMES))]
        if draw(st.booleans()):
            tokens += ["version", _pick(draw, ["1", "12", "x", "\u0661"], 2)]
        return _join(draw, tokens)
    if kind == "trust":
        return _join(draw, ["trust", "plugin", draw(st.sampled_from(_NAMES)),
                            _pick(draw, ["sha256", "sha-2", "allow", "to"], 2),
                            _pick(draw, ['"ab12"', '"x"', "ab"], 2)])
    if kind == "comment":
        return draw(st.sampled_from(["# a comment", "#", "# allow plugin * to *"]))
    return draw(st.sampled_from(["}", "{", "plugin", "allow", ",", "when plugin.x", "\u200b"]))


_statement = st.one_of(_rule(), _rule(), _rule(), _block(), _other())
_MUTATION_CHARS = ['"', ",", "#", "{", "}", "\n", " ", "x", "*", ":", ".", "\\", "\u00e9"]


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    global _clean
    _clean = draw(st.booleans())
    statements = draw(st.lists(_statement, max_size=6))
    text = "".join(s + draw(st.sampled_from(["\n", "\n", " ", "\n\n", "", "  # c\n"])) for s in statements)
    for _ in range(0 if _clean else draw(st.sampled_from([0, 0, 1, 2]))):
        if not text:
            break
        at = draw(st.integers(0, len(text) - 1))
        how = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        char = draw(st.sampled_from(_MUTATION_CHARS))
        if how == "delete":
            text = text[:at] + text[at + 1:]
        elif how == "insert":
            text = text[:at] + char + text[at:]
        elif how == "replace":
            text = text[:at] + char + text[at + 1:]
        else:
            text = text[:at] + text[at] + text[at:]
    return text


def _full(text: str, limits: InputLimits = DEFAULT_LIMITS) -> object:
    try:
        return parser._full_policy(text, "p.policy", limits)
    except PolicySyntaxError as exc:
        return exc


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_texts())
def test_fast_path_declines_or_equals_the_full_parser(text: str) -> None:
    fast = parser._fast_policy(text, "p.policy", DEFAULT_LIMITS)
    full = _full(text)
    if fast is not None:
        assert not isinstance(full, PolicySyntaxError), text
        assert fast == full, text


@settings(max_examples=300, deadline=None)
@given(policy_texts())
def test_parse_policy_answers_as_the_full_parser(text: str) -> None:
    try:
        got: object = parser.parse_policy(text, "p.policy")
    except PolicySyntaxError as exc:
        got = exc
    full = _full(text)
    if isinstance(full, PolicySyntaxError):
        assert isinstance(got, PolicySyntaxError)
        assert [d.render() for d in got.diagnostics] == [d.render() for d in full.diagnostics]
    else:
        assert got == full


def test_the_simple_shapes_are_recognised_without_lark() -> None:
    text = (
        '# head\npolicy "site" version 2\n'
        'defaults {\n  timeout call 30s max 1m # slow\n  limit memory 500MB warn 80% max 1GB\n'
        '  isolation process allow degraded\n  on violation warn\n  accept a, b\n}\n'
        'plugin "x" { limit cpu 50% }\n'
        'allow plugin "a", "b" to file:read, file:* on "/srv/**",\n    "{home}/x"  # two lines\n'
        'deny plugin * to *\n'
        'trust plugin "a" sha256 "ab12"\n'
        'allow plugin "c" to hook:register on "e.*" when context.env == "prod" unless plugin.trusted\n'
        'deny plugin "c" to x:y when\n  context.n >= -1.5\n'
    )
    pieces, comments = recognise(text, "p.policy")
    assert not any(isinstance(p, Declined) for p in pieces)
    assert len(pieces) == 8 and len(comments) == 3
    assert parser._fast_policy(text, "p.policy", DEFAULT_LIMITS) == parser._full_policy(text, "p.policy", DEFAULT_LIMITS)


def test_a_condition_goes_to_lark_at_its_own_position() -> None:
    text = 'allow plugin "a" to x:y\n\n  allow plugin "a" to x:y when not plugin.t # c\ndeny plugin * to *\n'
    pieces, _ = recognise(text, "p.policy")
    assert [type(p).__name__ for p in pieces] == ["Rule", "Declined", "Rule"]
    declined = pieces[1]
    assert isinstance(declined, Declined) and (declined.line, declined.column) == (3, 3)
    fast = parser._fast_policy(text, "p.policy", DEFAULT_LIMITS)
    assert fast is not None and fast == parser._full_policy(text, "p.policy", DEFAULT_LIMITS)
    assert fast.comments[0].span.line == 3


@pytest.mark.parametrize("text", [
    'allow plugin "a" to x:y on "p" when',           # a syntax error in a declined piece
    'allow plugin "a" to x:y\nallow plugin "\u0430" to x:y',  # a non-ASCII plugin name
    'allow plugin "a" to x:y on "p\u200b"',           # an invisible character
])
def test_any_error_is_the_full_parsers(text: str) -> None:
    assert parser._fast_policy(text, "p.policy", DEFAULT_LIMITS) is None
    with pytest.raises(PolicySyntaxError) as caught:
        parser.parse_policy(text, "p.policy")
    full = _full(text)
    assert isinstance(full, PolicySyntaxError)
    assert [d.render() for d in caught.value.diagnostics] == [d.render() for d in full.diagnostics]


def test_the_statement_limit_still_applies() -> None:
    limits = InputLimits(policy_statements=2)
    text = 'allow plugin "a" to x:y\n' * 3
    assert parser._fast_policy(text, "p.policy", limits) is None
    with pytest.raises(PolicySyntaxError, match="input limit exceeded"):
        parser.parse_policy(text, "p.policy", limits=limits)


def test_the_recogniser_knows_the_shipped_grammar() -> None:
    # Changing grammar/policy.lark turns the fast path off: review simple_parser.py's shapes
    # against the new grammar, then update GRAMMAR_SHA256.
    digest = hashlib.sha256(parser.grammar_text().encode("utf-8")).hexdigest()
    assert digest == GRAMMAR_SHA256
