"""Effective grants and ``diff``: pattern overlap, a policy diffed with itself, and the diff
agreeing with ``decide`` — every request two policies decide differently is covered by a
reported change for that plugin and permission."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine.decision_log import LogEntryError, LoggedDecision, read_log_entry
from policy_engine.engine import Engine
from policy_engine.grants import grant_matrix, overlaps, show_pattern
from policy_engine.impact import Change, compare_grants, policy_impact, replay
from policy_engine.manifest import manifest_from_mapping
from policy_engine.patterns import compile_pattern
from policy_engine.permissions import Permission, ResourceKind

ROOT = Path(__file__).parent.parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
VARIABLES = {"data_dir": "/data", "home": "/home/u"}


@pytest.mark.parametrize(("kind", "left", "right", "expected"), [
    (ResourceKind.PATH, "/srv/**", "/srv/data/x", True),
    (ResourceKind.PATH, "/data/alpha/**", "/data/*/reports/**", True),
    (ResourceKind.PATH, "/data/alpha/**", "/data/beta/**", False),
    (ResourceKind.PATH, "/a/*.csv", "/a/x.*", True),
    (ResourceKind.PATH, "/a/*.csv", "/a/*.txt", False),
    (ResourceKind.PATH, "/a/?", "/a/bc", False),
    (ResourceKind.PATH, "/**", "/", True),
    (ResourceKind.PATH, "/a/**/z", "/a/b/**", True),
    (ResourceKind.PATH, "/a/*", "/a", False),
    (ResourceKind.HOST, "*.example.com:443", "api.example.com", True),
    (ResourceKind.HOST, "*.example.com:443", "api.example.com:80", False),
    (ResourceKind.HOST, "*.example.com", "*.b.example.com", True),
    (ResourceKind.HOST, "*.example.com", "example.com", False),
    (ResourceKind.HOST, "*", "10.0.0.1:22", True),
    (ResourceKind.NAME, "agents.*", "*.secret", True),
    (ResourceKind.NAME, "agents.*", "tools.*", False),
    (ResourceKind.NAME, "a?", "ab", False),
])
def test_overlap_is_exact(kind: ResourceKind, left: str, right: str, expected: bool) -> None:
    a, b = compile_pattern(kind, left), compile_pattern(kind, right)
    assert overlaps(a, b) is expected and overlaps(b, a) is expected


def test_patterns_read_in_domain_terms() -> None:
    assert show_pattern(compile_pattern(ResourceKind.HOST, "API.example.com")) == "api.example.com:*"
    assert show_pattern(compile_pattern(ResourceKind.HOST, "[::1]:8080")) == "[::1]:8080"
    assert show_pattern(compile_pattern(ResourceKind.PATH, "/srv/p/x/**"), "/srv/p/x") == "{plugin_dir}/**"
    assert show_pattern(compile_pattern(ResourceKind.PATH, "/srv/p/xy/**"), "/srv/p/x") == "/srv/p/xy/**"


def test_the_shipped_policy_diffed_with_itself_is_empty() -> None:
    def load() -> Engine:
        return Engine.load(ROOT / "policies", plugins=ROOT / "examples" / "plugins", variables=VARIABLES)

    impact = policy_impact(load(), load())
    assert not impact.changed and impact.grants == () and impact.settings == ()


def test_fixture_diff_agrees_with_the_replayed_log() -> None:
    def load(name: str) -> Engine:
        return Engine.load(FIXTURES / "policies" / name, plugins=FIXTURES / "plugins", variables=VARIABLES)

    old, new = load("base.policy"), load("edited.policy")
    impact = policy_impact(old, new)
    changed = {(c.plugin, c.permission) for c in impact.grants}
    assert ("alpha", "file:read", Change.NEWLY_DENIED) in {(c.plugin, c.permission, c.change) for c in impact.grants}
    requests = [LoggedDecision(p, a, r, old.decide(p, a, r).allowed, {})
                for p in ("alpha", "beta", "delta", "gamma")
                for a in ("file:read", "file:write", "network:request", "hook:register", "database:read")
                for r in ("/srv/data/x", "/srv/data/public/drafts/a", "/srv/data/public/b",
                          "db.internal.example.com:443", "api.example.com:443", "metrics.cpu", "build.done")]
    flips, unknown = replay(old, new, requests)
    assert flips and unknown == ()
    for flip in flips:
        assert (flip.plugin, flip.action) in changed


# Random policies over fixed plugins ---------------------------------------------------------

RULES = [
    'allow plugin * to file:read on "{plugin_dir}/**"',
    'allow plugin "p1" to file:read, file:write on "/srv/**"',
    'allow plugin "p1" to file:read on "/srv/data/*.csv"',
    'allow plugin * to file:* on "/srv/data/**" when context.env == "prod"',
    'allow plugin "p2" to file:write on "/srv/*/p2/**"',
    'deny plugin * to file:write on "/srv/data/secret/**"',
    'deny plugin "p2" to file:* on "/srv/**" unless context.admin',
    'deny plugin * to file:read on "/srv/data/*.csv" when plugin.type == "agent"',
    'allow plugin * to network:request on "*.example.com:443"',
    'allow plugin "p2" to network:request on "api.example.com"',
    'deny plugin * to network:request on "*.internal.example.com"',
    'deny plugin * to network:request on "api.example.com:80" when context.env != "prod"',
    "allow plugin * to hook:register",
    'allow plugin * to hook:register on "build.*" when plugin.type == "agent"',
    'deny plugin * to hook:register on "build.secret" when context.env != "prod"',
    'allow plugin * to config:read on "agents.*"',
    'allow plugin "p2" to config:read on "agents.p2.*", "shared.*"',
    'deny plugin * to config:read on "*.password"',
    "allow plugin * to subprocess:execute when plugin.trusted",
    'allow plugin "p3" to subprocess:execute',
    'deny plugin * to subprocess:execute on "rm*"',
    'allow plugin * to database:read when context.role in ["admin", "analyst"]',
    'deny plugin "p1" to database:*',
    "deny plugin * to database:read when context.missing.key",
]


def plugins() -> list[Any]:
    declared = {
        "p1": ("agent", ["file:read /srv/**", "file:write /srv/data/**", "network:request api.example.com:443",
                         "hook:register", "database:read", "config:read agents.p1.x"]),
        "p2": ("workflow", ["file:read", "file:write /srv/data/p2/**", "network:request *.example.com",
                            "config:read agents.*", "subprocess:execute git", "hook:register build.*"]),
        "p3": ("hook", ["file:read {plugin_dir}/**", "subprocess:execute", "config:read shared.x",
                        "hook:register build.*", "database:read reports"]),
    }
    return [
        manifest_from_mapping({"name": name, "version": "1.0.0", "type": kind, "entry_point": "m:C",
                               "permissions": permissions},
                              file=f"{name}.yaml", plugin_path=Path(f"/srv/plugins/{name}"))
        for name, (kind, permissions) in declared.items()
    ]


RESOURCES = {
    ResourceKind.PATH: [None, "/srv/a.txt", "/srv/data/x.csv", "/srv/data/secret/k", "/srv/data/p2/out",
                        "/srv/plugins/p3/code.py", "/etc/passwd"],
    ResourceKind.HOST: [None, "api.example.com:443", "api.example.com", "api.example.com:80",
                        "db.internal.example.com:443", "x.example.com:80"],
    ResourceKind.NAME: [None, "git", "rm", "build.x", "build.secret", "agents.p2.a", "agents.p1.x",
                        "shared.x", "db.password", "reports"],
}
CONTEXTS: list[dict[str, Any] | None] = [None, {"env": "prod"}, {"env": "dev", "admin": True},
                                         {"role": "admin", "missing": {"key": False}}]
REQUESTS = [
    (plugin, permission.value, resource, context)
    for plugin in ("p1", "p2", "p3")
    for permission in Permission
    for resource in RESOURCES[permission.kind]
    for context in CONTEXTS
]


def engine(indices: set[int]) -> Engine:
    text = "\n".join(RULES[i] for i in sorted(indices)) or "# nothing\n"
    return Engine.from_source(text, plugins(), VARIABLES, cache_size=0)


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, len(RULES) - 1)))
def test_a_policy_diffed_with_itself_is_empty(indices: set[int]) -> None:
    grants, setting_changes = compare_grants(grant_matrix(engine(indices)), grant_matrix(engine(indices)))
    assert grants == () and setting_changes == ()


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, len(RULES) - 1)), st.sets(st.integers(0, len(RULES) - 1)),
       st.lists(st.sampled_from(REQUESTS), min_size=50, max_size=200))
def test_diff_agrees_with_decide(old_rules: set[int], new_rules: set[int],
                                 requests: list[tuple[str, str, str | None, dict[str, Any] | None]]) -> None:
    old, new = engine(old_rules), engine(new_rules)
    impact = policy_impact(old, new)
    covered = {(c.plugin, c.permission) for c in impact.grants}
    for plugin, action, resource, context in requests:
        before = old.decide(plugin, action, resource, context).allowed
        after = new.decide(plugin, action, resource, context).allowed
        if before != after:
            assert (plugin, action) in covered, (plugin, action, resource, context, before, after)


def test_diff_agrees_with_decide_on_every_request_for_some_edits() -> None:
    # A deterministic, exhaustive pass over a few edits (each rule dropped in turn).
    everything = set(range(len(RULES)))
    full = engine(everything)
    for dropped in itertools.islice(range(len(RULES)), 0, None, 3):
        edited = engine(everything - {dropped})
        covered = {(c.plugin, c.permission) for c in policy_impact(full, edited).grants}
        for plugin, action, resource, context in REQUESTS:
            if full.decide(plugin, action, resource, context).allowed != \
                    edited.decide(plugin, action, resource, context).allowed:
                assert (plugin, action) in covered, (RULES[dropped], plugin, action, resource, context)


# Replaying a decision log -------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, len(RULES) - 1)), st.sets(st.integers(0, len(RULES) - 1)),
       st.lists(st.sampled_from(REQUESTS), min_size=20, max_size=80), st.booleans())
def test_replay_flips_exactly_what_the_two_policies_decide_differently(
        old_rules: set[int], new_rules: set[int],
        requests: list[tuple[str, str, str | None, dict[str, Any] | None]], logged_context: bool) -> None:
    old, new = engine(old_rules), engine(new_rules)
    entries = [LoggedDecision(p, a, r, old.decide(p, a, r, c).allowed, (c or {}) if logged_context else None)
               for p, a, r, c in requests]
    flips, unknown = replay(old, new, entries)
    flipped = {(f.plugin, f.action, f.resource, repr(f.context)) for f in flips}
    unknowns = {(u.plugin, u.action, u.resource) for u in unknown}
    if logged_context:
        assert unknown == ()
    for entry in entries:
        request = (entry.plugin, entry.action, entry.resource)
        if entry.context is None and request in unknowns:
            continue  # not replayable: it is never a flip
        context = dict(entry.context) if entry.context else None
        differs = (old.decide(*request, context).allowed != new.decide(*request, context).allowed)
        assert differs == ((*request, repr(entry.context)) in flipped), (entry, differs)
    for u in unknown:
        assert "the log holds no context" in u.why and "reads `context." in u.why


def test_a_decision_logged_without_context_is_unknown_never_a_flip() -> None:
    old = engine({6})  # deny p2 file:* on /srv/** unless context.admin
    new = engine(set())
    entry = LoggedDecision("p2", "file:read", "/srv/a.txt", False, None)
    flips, unknown = replay(old, new, [entry, entry])
    assert flips == ()
    assert [(u.plugin, u.count) for u in unknown] == [("p2", 2)]
    assert unknown[0].why.startswith("the log holds no context and the changed rule at ")
    assert unknown[0].why.endswith("reads `context.admin`")
    # The same request logged with its context replays.
    assert replay(old, new, [replace(entry, context={"admin": False})])[1] == ()


def test_a_request_no_changed_rule_applies_to_replays_without_context() -> None:
    old, new = engine({6, 8}), engine({6})  # only the network rule changes
    flips, unknown = replay(old, new, [LoggedDecision("p2", "file:read", "/srv/a.txt", False, None)])
    assert (flips, unknown) == ((), ())


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(0, len(RULES) - 1)), st.randoms(use_true_random=False),
       st.lists(st.sampled_from(REQUESTS), min_size=20, max_size=60))
def test_an_edit_of_comments_white_space_and_order_changes_nothing(
        indices: set[int], rnd: Any, requests: list[tuple[str, str, str | None, dict[str, Any] | None]]) -> None:
    text = "\n".join(RULES[i] for i in sorted(indices)) or "# nothing\n"
    lines = [RULES[i] for i in indices]
    rnd.shuffle(lines)
    edited = "# edited\n\n" + "\n\n".join(f"  {line.replace(' on ', '   on ')}  # why" for line in lines)
    old = Engine.from_source(text, plugins(), VARIABLES, cache_size=0)
    new = Engine.from_source(edited + "\n", plugins(), VARIABLES, cache_size=0)
    entries = [LoggedDecision(p, a, r, not old.decide(p, a, r, c).allowed, None) for p, a, r, c in requests]
    impact = policy_impact(old, new, entries)
    assert not impact.changed, impact.to_dict()


@pytest.mark.parametrize(("entry", "problem"), [
    ([], "is not an object"),
    ({"action": "file:read", "allowed": True}, "needs `plugin` and `action` strings"),
    ({"plugin": "p", "action": "file:read", "resource": 3, "allowed": True}, "has a `resource` that is not a string"),
    ({"plugin": "p", "action": "file:read", "allowed": "yes"}, "needs `allowed` (true or false)"),
    ({"plugin": "p", "action": "file:read", "allowed": True, "context": None}, "has a `context` that is not an object"),
])
def test_a_log_entry_that_is_no_decision_says_why(entry: object, problem: str) -> None:
    with pytest.raises(LogEntryError) as caught:
        read_log_entry(entry)
    assert str(caught.value) == problem


def test_a_log_entry_without_context_is_not_one_with_an_empty_context() -> None:
    base = {"plugin": "p", "action": "file:read", "allowed": True}
    assert read_log_entry(base).context is None
    assert read_log_entry({**base, "context": {}}).context == {}
@pytest.mark.parametrize(("old", "new", "changed"), [
    ('allow plugin * to network:request on "10.0.0.0/8"', 'allow plugin * to network:request on "10.0.0.0/16"', True),
    ('allow plugin * to network:request on "10.0.0.0/8"', 'allow plugin * to network:request on "10.0.0.0/8"', False),
    ('allow plugin * to network:request on "*:8000-8999"', 'allow plugin * to network:request on "*:8000-8100"', True),
    ('allow plugin * to network:request on "10.0.0.0/8"\ndeny plugin * to network:request on "192.168.0.0/16"',
     'allow plugin * to network:request on "10.0.0.0/8"', False),  # the deny never met the grant
])
def test_diff_understands_cidr_and_port_ranges(old: str, new: str, changed: bool) -> None:
    net = [manifest_from_mapping({"name": "n", "version": "1.0.0", "type": "agent", "entry_point": "m:C",
                                  "permissions": ["network:request 10.0.0.0/8", "network:request *:8000-8999"]},
                                 file="n.yaml", plugin_path=Path("/srv/plugins/n"))]
    impact = policy_impact(Engine.from_source(old, net), Engine.from_source(new, net))
    assert bool(impact.grants) is changed
    for request in ("10.0.5.1:443", "10.1.0.1:443", "example.com:8500", "example.com:8900"):
        before = Engine.from_source(old, net).decide("n", "network:request", request).allowed
        after = Engine.from_source(new, net).decide("n", "network:request", request).allowed
        if before != after:
            assert changed, request
