"""The policy language: parsing, compiling, and every user-facing error (golden files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine import nodes
from policy_engine.compiler import compile_policy
from policy_engine.errors import PolicyCompileError, PolicyError, PolicySyntaxError
from policy_engine.parser import parse_grant, parse_policy
from policy_engine.permissions import Permission
from policy_engine.settings import Isolation, Violation, resolve

from .conftest import GOLDEN, assert_golden

ROOT = Path(__file__).parent.parent
SITE = (ROOT / "policies" / "examples" / "site.policy").read_text()
VARIABLES = {"data_dir": "/var/lib/app", "home": "/home/admin"}


def compile_text(text: str, name: str = "test.policy", variables: dict[str, str] | None = None):
    return compile_policy([parse_policy(text, name)], VARIABLES if variables is None else variables)


def test_the_reference_policy_parses_into_what_its_comments_say() -> None:
    policy = compile_text(SITE, "site.policy")
    assert len(policy.rules) == 10
    by_text = {r.ref.text: r for r in policy.rules}
    hooks = by_text["allow plugin * to hook:register"]
    assert hooks.plugins is None and hooks.patterns is None
    assert hooks.permissions == {Permission.HOOK_REGISTER}
    writes = by_text['allow plugin * to file:write, file:delete on "{data_dir}/{plugin}/**"']
    assert writes.permissions == {Permission.FILE_WRITE, Permission.FILE_DELETE}
    assert writes.patterns is not None
    assert writes.patterns[0].text == "/var/lib/app/{plugin}/**" and writes.patterns[0].per_plugin
    db = next(r for r in policy.rules if r.permissions == {Permission.DATABASE_WRITE})
    assert db.plugins == {"analytics", "reporter"}
    assert isinstance(db.when, nodes.Compare) and db.when.op == ">="
    secrets = next(r for r in policy.rules if r.effect is nodes.Effect.DENY and r.permissions == {
        Permission.FILE_READ, Permission.FILE_WRITE, Permission.FILE_DELETE})
    assert [p.text for p in secrets.patterns or ()] == ["/etc/**", "/home/admin/.ssh/**"]
    subprocess = next(r for r in policy.rules if Permission.SUBPROCESS_EXECUTE in r.permissions)
    assert isinstance(subprocess.unless, nodes.Truthy)
    assert policy.pins["analytics"].digest.startswith("sha256-v2:9f86d081")
    defaults = resolve(policy.defaults, policy.plugin_settings["analytics"])
    assert defaults.timeouts.execute == 600 and defaults.timeouts.init == 30
    assert defaults.limits.memory == 1_000_000_000
    assert defaults.ceilings["limit.memory"] == 2_000_000_000
    assert defaults.limits.memory_warn == 0.8 and defaults.limits.cpu == 0.8
    assert defaults.limits.file_size == 100_000_000
    assert defaults.limits.on_violation is Violation.TERMINATE
    assert defaults.limits.isolation is Isolation.PROCESS


def test_rules_keep_their_position_and_text() -> None:
    policy = compile_text(SITE, "site.policy")
    first = min(policy.rules, key=lambda r: r.ref.line)
    assert (first.ref.file, first.ref.line, first.ref.column) == ("site.policy", 15, 1)


def test_comments_are_kept_for_the_formatter() -> None:
    parsed = parse_policy(SITE, "site.policy")
    assert parsed.comments[0].text == "# Site policy for plugins."
    assert parsed.comments[0].span.line == 1


def test_conditions_parse_with_precedence() -> None:
    rule = parse_policy(
        'allow plugin * to * when not plugin.trusted or plugin.type in ["a", "b"] and context.n < 3',
        "c.policy",
    ).rules[0]
    assert isinstance(rule.when, nodes.Or)
    assert isinstance(rule.when.left, nodes.Not)
    assert isinstance(rule.when.right, nodes.And)
    assert isinstance(rule.when.right.left, nodes.In)


def test_not_in_and_matches() -> None:
    rule = parse_policy(
        'deny plugin * to * when context.env not in ["prod"] unless plugin.name matches "core-*"', "c.policy"
    ).rules[0]
    assert isinstance(rule.when, nodes.In) and rule.when.negated
    assert isinstance(rule.unless, nodes.Matches) and rule.unless.pattern == "core-*"


def test_grant_strings_use_the_same_grammar() -> None:
    grant = parse_grant('network:request api.example.com:443 "*.x.test:8443"')
    assert grant.action.text == "network:request"
    assert [s.text for s in grant.scopes] == ["api.example.com:443", "*.x.test:8443"]
    assert parse_grant("hook:register").scopes == ()
    with pytest.raises(PolicySyntaxError):
        parse_grant("file read")


def test_isolation_and_degraded_opt_in() -> None:
    policy = compile_text('plugin "fast" { isolation inprocess }\ndefaults { isolation process allow degraded }')
    fast = resolve(policy.defaults, policy.plugin_settings["fast"])
    assert fast.limits.isolation is Isolation.INPROCESS and fast.limits.allow_degraded


def test_accepted_risks_come_from_defaults_and_the_plugin_block() -> None:
    policy = compile_text('defaults { accept unpinned-inprocess }\nplugin "a" { isolation inprocess }')
    assert resolve(policy.defaults, policy.plugin_settings["a"]).accepted_risks == {"unpinned-inprocess"}
    policy = compile_text('plugin "a" { accept unpinned-inprocess }')
    assert resolve(policy.defaults, policy.plugin_settings["a"]).accepted_risks == {"unpinned-inprocess"}
    assert resolve(policy.defaults, policy.defaults).accepted_risks == frozenset()


@pytest.mark.parametrize(("text", "hint"), [
    ("accept unpinned-inproces", "did you mean `unpinned-inprocess`?"),
    ("accept all", "there is no blanket opt-out"),
    ("accept everything", "there is no blanket opt-out"),
])
def test_unknown_risks_are_compile_errors(text: str, hint: str) -> None:
    with pytest.raises(PolicyCompileError) as info:
        compile_text(f"defaults {{ {text} }}")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message.startswith("unknown risk") and hint in (diagnostic.hint or "")


def test_there_is_no_accept_star() -> None:
    with pytest.raises(PolicySyntaxError):
        compile_text("defaults { accept * }")


def test_every_risk_is_documented() -> None:
    from policy_engine.risks import RISKS
    readme = (ROOT / "README.md").read_text()
    for name, risk in RISKS.items():
        assert risk.name == name and risk.refusal and risk.gives_up
        assert f"`{name}`" in readme


def test_binary_and_decimal_units() -> None:
    policy = compile_text("defaults { limit memory 512MiB max 1GiB\n limit file_size 10kB\n timeout hook 250ms }")
    effective = resolve(policy.defaults, policy.defaults)
    assert effective.limits.memory == 512 * 1024**2
    assert effective.ceilings["limit.memory"] == 1024**3
    assert effective.limits.file_size == 10_000
    assert effective.timeouts.hook == 0.25


def test_manifest_requests_are_cut_to_the_ceiling() -> None:
    policy = compile_text("defaults { limit memory 500MB max 2GB\n timeout execute 300s }")
    effective = resolve(policy.defaults, policy.defaults, {"execute": 900, "init": 10}, {"memory": 4e9})
    assert effective.timeouts.execute == 300 and effective.timeouts.init == 10
    assert effective.limits.memory == 2_000_000_000
    assert any("cut to the ceiling 2GB" in note for note in effective.notes)


def test_compile_is_independent_of_file_order() -> None:
    a = parse_policy('allow plugin * to hook:register\ndefaults { limit cpu 50% }', "a.policy")
    b = parse_policy('deny plugin "x" to file:* on "/etc/**"', "b.policy")
    one, two = compile_policy([a, b], VARIABLES), compile_policy([b, a], VARIABLES)
    assert one.rules == two.rules and one.content_hash == two.content_hash


def test_the_same_setting_twice_with_the_same_value_is_fine() -> None:
    compile_text("defaults { limit cpu 50% }\ndefaults { limit cpu 50% }")


def test_unknown_variable_lists_what_is_known() -> None:
    with pytest.raises(PolicyCompileError) as info:
        compile_text('allow plugin * to file:read on "{nothing_like_it}/x"')
    assert "{plugin_dir}" in (info.value.diagnostics[0].hint or "")


def test_all_compile_errors_of_a_file_are_collected() -> None:
    with pytest.raises(PolicyCompileError) as info:
        compile_text('allow plugin * to file:raed\nallow plugin * to nope:x\ndefaults { limit cpu 5XB }')
    assert len(info.value.diagnostics) == 3


@pytest.mark.parametrize(
    "case", sorted(p.stem for p in (GOLDEN / "policy_errors").glob("*.policy"))
)
def test_error_messages(case: str) -> None:
    source = (GOLDEN / "policy_errors" / f"{case}.policy").read_text()
    with pytest.raises(PolicyError) as info:
        compile_text(source, f"{case}.policy", {"data_dir": "/var/lib/app"})
    assert_golden(GOLDEN / "policy_errors" / f"{case}.expected", str(info.value) + "\n")


def test_shipped_policies_compile() -> None:
    files = sorted((ROOT / "policies").rglob("*.policy"))
    assert len(files) >= 4
    for file in files:
        compile_text(file.read_text(), str(file.relative_to(ROOT)))


FRAGMENTS = [
    "allow", "deny", "plugin", "*", '"x"', "to", "file:read", "network:request", ",", "on",
    '"/srv/**"', "when", "unless", "plugin.type", "==", '"agent"', "context.n", "<", "3", "and",
    "or", "not", "(", ")", "[", "]", "in", "matches", "defaults", "{", "}", "timeout", "init",
    "30s", "limit", "memory", "500MB", "warn", "80%", "max", "trust", "sha256", "policy",
    "version", "\n", "#c\n", '"', "\\", "\x00", "é", "{data_dir}",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30))
def test_random_sources_raise_only_our_errors(tokens: list[str]) -> None:
    try:
        compile_text(" ".join(tokens))
    except PolicyError as exc:
        assert exc.diagnostics and all(d.span is not None for d in exc.diagnostics)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(SITE) - 1), st.integers(0, 20), st.text(max_size=5))
def test_mutated_sources_raise_only_our_errors(position: int, cut: int, insert: str) -> None:
    mutated = SITE[:position] + insert + SITE[position + cut:]
    try:
        compile_text(mutated)
    except PolicyError as exc:
        assert str(exc)


def test_each_compiler_pass_returns_its_typed_part() -> None:
    from policy_engine import compiler
    from policy_engine.parser import parse_policy

    source = ('allow plugin "a" to file:read on "/srv/**"\n'
              'defaults {\n    timeout init 5s\n}\n'
              'trust plugin "a" sha256-v2 "' + "ab" * 32 + '"\n')
    tree = parse_policy(source, "p.policy")
    ctx = compiler._Context((tree,), {})
    ctx.sources = {"p.policy": source}
    rules = compiler._compile_rules(ctx)
    settings = compiler._compile_settings(ctx)
    pins = compiler._compile_pins(ctx)
    assert not ctx.diagnostics
    assert [r.ref.file for r in rules] == ["p.policy"]
    assert isinstance(settings, compiler.Settings) and not settings.per_plugin
    assert settings.defaults != compiler.EMPTY_OVERLAY
    assert pins["a"].digest == "sha256-v2:" + "ab" * 32
    assert not hasattr(ctx, "result")  # no shared untyped result between passes
