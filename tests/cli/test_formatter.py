"""``fmt``: canonical layout, comments kept, idempotent, and the compiled policy unchanged —
on the shipped policies and on random policies from a small grammar."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine import nodes
from policy_engine.compiler import compile_policy
from policy_engine.errors import PolicySyntaxError
from policy_engine.formatter import FormatError, format_condition, format_policy, quote, tree_shape
from policy_engine.parser import parse_policy

ROOT = Path(__file__).parent.parent.parent
VARIABLES = {"data_dir": "/data", "home": "/home/u"}


def compiled(text: str) -> Any:
    """What a policy means: its compiled rules, settings and pins, without positions."""
    policy = compile_policy([parse_policy(text, "p.policy")], VARIABLES)
    rules = tuple(
        (r.effect, r.plugins, r.permissions,
         None if r.patterns is None else tuple((p.text, p.kinds, p.per_plugin) for p in r.patterns),
         tree_shape(r.when), tree_shape(r.unless))
        for r in policy.rules
    )
    defaults = {k: v.value for k, v in policy.defaults.values.items()}
    blocks = {name: {k: v.value for k, v in overlay.values.items()}
              for name, overlay in policy.plugin_settings.items()}
    pins = {name: pin.digest for name, pin in policy.pins.items()}
    return rules, defaults, blocks, pins


def comments(text: str) -> Counter[str]:
    return Counter(c.text.rstrip() for c in parse_policy(text, "p.policy").comments)


@pytest.mark.parametrize("path", sorted((ROOT / "policies").rglob("*.policy")), ids=lambda p: p.name)
def test_shipped_policies_are_already_canonical(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert format_policy(text, path.name) == text


def test_quote_escapes_only_what_it_must() -> None:
    assert quote('a"b\\c\nd\te') == '"a\\"b\\\\c\\nd\te"'


@pytest.mark.parametrize(("source", "expected"), [
    ("a == 1 or b == 2 and c == 3", 'context.a == 1 or context.b == 2 and context.c == 3'),
    ("(a == 1 or b == 2) and c == 3", "(context.a == 1 or context.b == 2) and context.c == 3"),
    ("a == 1 or (b == 2 or c == 3)", "context.a == 1 or (context.b == 2 or context.c == 3)"),
    ("(a == 1 or b == 2) or c == 3", "context.a == 1 or context.b == 2 or context.c == 3"),
    ("not (a == 1 and b == 2)", "not (context.a == 1 and context.b == 2)"),
    ("not not a", "not not context.a"),
    ("a in [1, 2.50, -3, \"x\"]", 'context.a in [1, 2.5, -3, "x"]'),
    ("a not in []", "context.a not in []"),
    ("a > 0.0001", "context.a > 0.0001"),
])
def test_conditions_keep_only_needed_parentheses(source: str, expected: str) -> None:
    source = source.replace("a ", "context.a ").replace("b ", "context.b ").replace("c ", "context.c ")
    source = source.replace("not a", "not context.a").replace("(a", "(context.a")
    rule = parse_policy(f"allow plugin * to * when {source}").rules[0]
    assert rule.when is not None
    assert format_condition(rule.when) == expected


def test_syntax_errors_are_reported_not_formatted() -> None:
    with pytest.raises(PolicySyntaxError):
        format_policy("allow plugin * to\n")


def test_format_error_is_a_policy_engine_error() -> None:
    from policy_engine.errors import PolicyEngineError

    assert issubclass(FormatError, PolicyEngineError)


def test_empty_and_comment_only_files() -> None:
    assert format_policy("") == ""
    assert format_policy("\n\n") == ""
    assert format_policy("# only\n\n\n# comments   \n") == "# only\n\n# comments\n"


# Random policies ----------------------------------------------------------------------------

SPACE = st.sampled_from([" ", "  ", "\t", "\n", "\n    ", "\n\n", " # inside\n", "  #x\n   "])
GAP = st.sampled_from(["\n", "\n\n", "\n\n\n", " ", "  # trailing\n", "\n# lead\n", "\n\n# group\n\n",
                       "\n#\n", "\n  # é\n"])
ATTRIBUTES = ["plugin.type", "plugin.version", "plugin.trusted", "plugin.name", "context.env",
              "context.n", "context.user.role"]
LITERALS = ['"agent"', '"2.0"', "3", "-2.5", "0.125", "007", "true", "false", '"a\\"b"', '"c\\\\d"',
            '"tab\\there"', '"line\\nbreak"', '"x\\qy"']
FAMILIES = {
    "file": (["file:read", "file:write", "file:delete", "file:*"],
             ['"/srv/**"', '"{data_dir}/{plugin}/**"', '"/a b/c.txt"', '"/q\\"uote/*"', '"/x/?.log"',
              '"{plugin_dir}/**"']),
    "network": (["network:request", "network:*"],
                ['"api.example.com:443"', '"*.example.com"', '"[::1]:8080"', '"10.0.0.1"']),
    "names": (["hook:register", "config:read", "database:*", "subprocess:execute"],
              ['"agents.*"', '"git"', '"a*b*c"', '"x?y"']),
    "any": (["*"], ['"/srv/**"', '"agents.*"']),
}
SETTINGS = {
    "timeout init": ["timeout init 30s", "timeout init 5s max 1m"],
    "timeout hook": ["timeout hook 250ms"],
    "timeout execute": ["timeout execute 5m", "timeout execute 300 max 600"],
    "limit memory": ["limit memory 500MB warn 80% max 2GB", "limit memory 1GiB"],
    "limit cpu": ["limit cpu 80%", "limit cpu 50% max 100%"],
    "limit file_size": ["limit file_size 10MiB"],
    "on violation": ["on violation warn", "on violation terminate"],
    "isolation": ["isolation process", "isolation inprocess allow degraded"],
    "accept": ["accept unpinned-inprocess", "accept unpinned-inprocess, unpinned-inprocess"],
}


def conditions() -> st.SearchStrategy[str]:
    leaf = st.one_of(
        st.builds(lambda a, op, v: f"{a} {op} {v}", st.sampled_from(ATTRIBUTES),
                  st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), st.sampled_from(LITERALS)),
        st.builds(lambda a, neg, vs: f"{a} {'not in' if neg else 'in'} [{', '.join(vs)}]",
                  st.sampled_from(ATTRIBUTES), st.booleans(), st.lists(st.sampled_from(LITERALS), max_size=3)),
        st.builds(lambda a: f'{a} matches "core-*"', st.sampled_from(ATTRIBUTES)),
        st.sampled_from(["plugin.trusted", "context.flag", "true"]),
    )
    return st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda a, b: f"{a} and {b}", inner, inner),
        st.builds(lambda a, b: f"{a} or {b}", inner, inner),
        st.builds(lambda a: f"not {a}", inner),
        st.builds(lambda a: f"({a})", inner),
    ), max_leaves=6)


@st.composite
def rules(draw: st.DrawFn) -> list[str]:
    actions, patterns = FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]
    tokens = [draw(st.sampled_from(["allow", "deny"])), "plugin"]
    names = draw(st.lists(st.sampled_from(['"p1"', '"p2"', '"odd name"', '"q\\"x"']), max_size=2, unique=True))
    tokens += [", ".join(names)] if names else ["*"]
    chosen = draw(st.lists(st.sampled_from(actions), min_size=1, max_size=3, unique=True))
    tokens += ["to", ",".join(chosen)]
    on = draw(st.lists(st.sampled_from(patterns), max_size=3, unique=True))
    if on:
        tokens += ["on", " ,".join(on)]
    if draw(st.booleans()):
        tokens += ["when", draw(conditions())]
    if draw(st.booleans()):
        tokens += ["unless", draw(conditions())]
    return tokens


@st.composite
def blocks(draw: st.DrawFn, opening: str) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(SETTINGS)), max_size=4, unique=True))
    tokens = [opening, "{"]
    for key in keys:
        tokens.append(draw(st.sampled_from(SETTINGS[key])))
    return [*tokens, "}"]


@st.composite
def policies(draw: st.DrawFn) -> str:
    statements: list[list[str]] = [draw(rules()) for _ in range(draw(st.integers(0, 6)))]
    if draw(st.booleans()):
        statements.append(['policy "random"', "version", "3"] if draw(st.booleans()) else ['policy "random"'])
    if draw(st.booleans()):
        statements.append(draw(blocks("defaults")))
    for name in draw(st.lists(st.sampled_from(['"p1"', '"p2"']), max_size=2, unique=True)):
        statements.append(draw(blocks(f"plugin {name}")))
    if draw(st.booleans()):
        statements.append(['trust plugin "p1" sha256-v2', '"' + "ab" * 32 + '"'])
    order = draw(st.permutations(range(len(statements))))
    text = draw(st.sampled_from(["", "# header comment\n", "\n\n"]))
    for index in order:
        for position, token in enumerate(statements[index]):
            text += (draw(SPACE) if position else "") + token
        text += draw(GAP)
    return text


@settings(max_examples=100, deadline=None)
@given(policies())
def test_fmt_is_idempotent_and_keeps_meaning_and_comments(text: str) -> None:
    formatted = format_policy(text, "p.policy")
    assert format_policy(formatted, "p.policy") == formatted
    assert compiled(formatted) == compiled(text)
    assert comments(formatted) == comments(text)
    assert "\n\n\n" not in formatted and not formatted.startswith("\n")
    assert all(line == line.rstrip() for line in formatted.splitlines())


@settings(max_examples=50, deadline=None)
@given(policies())
def test_fmt_puts_the_header_first_and_defaults_next(text: str) -> None:
    statements = parse_policy(format_policy(text, "p.policy"), "p.policy").statements
    kinds = [
        0 if isinstance(s, nodes.Header)
        else 1 if isinstance(s, nodes.SettingsBlock) and s.plugin is None
        else 2
        for s in statements
    ]
    assert kinds == sorted(kinds)
