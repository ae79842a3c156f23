"""The fast paths of ``decide`` and of loading answer exactly as the reference procedure.

- matchers: the linear-time predicates agree with ``Pattern.matches``, and a pathological
  glob on a long path costs a number of steps linear in the path;
- decide: the engine agrees with ``tests/reference.py`` on random policies, manifests and
  requests; cached answers equal uncached ones;
- bounded cost: unknown plugins compute no suggestion until asked; resources over 4 KiB
  are denied as ``resource_too_long`` without matching;
- reload: random edit sequences give the same tables as a full load; unchanged plugins keep
  their table; the swap is atomic under concurrent ``decide``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_engine import Engine
from policy_engine import matchers as matchers_module
from policy_engine.decision import MAX_RESOURCE_LENGTH, Decision, Reason
from policy_engine.matchers import glob_segments_match, matcher, star_match
from policy_engine.patterns import PathPattern, compile_pattern
from policy_engine.permissions import ResourceKind
from policy_engine.table import DecisionTable
from tests.reference import reference_decide

# ----------------------------------------------------------------------------- matchers

_path_segment = st.sampled_from(["a", "b", "ab", "*", "a*", "*b", "?", "a?b", "*a*", "**", "x.y"])
_path_glob = st.lists(_path_segment, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s))
_path = st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab", "x.y", "abb", "c"]), max_size=7).map(
    lambda s: "/" + "/".join(s))
_name_glob = st.text(alphabet="ab.*", min_size=1, max_size=8).filter(lambda t: t.strip())
_name = st.text(alphabet="ab.", max_size=10).filter(lambda t: t and not t.isspace())


@settings(max_examples=400, deadline=None)
@given(_path_glob, _path)
def test_path_matcher_agrees_with_the_pattern(glob: str, path: str) -> None:
    pattern = compile_pattern(ResourceKind.PATH, glob)
    assert matcher(pattern)(path) is pattern.matches(path)


@settings(max_examples=400, deadline=None)
@given(_name_glob, _name)
def test_name_matcher_agrees_with_the_pattern(glob: str, name: str) -> None:
    pattern = compile_pattern(ResourceKind.NAME, glob)
    assert matcher(pattern)(name) is pattern.matches(name)


def test_matchers_refuse_a_resource_of_another_kind() -> None:
    from policy_engine.patterns import HostPort

    for text in ("/srv/x", "/srv/**", "/srv/*", "/**", "/a/**/b*"):
        assert matcher(compile_pattern(ResourceKind.PATH, text))(HostPort("srv")) is False
    host = compile_pattern(ResourceKind.HOST, "example.com")
    assert matcher(host)("/example.com") is False


def test_pathological_path_glob_costs_steps_linear_in_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    glob = "/**/a/**/a/**/a/**/a/**/a/**/b"
    pattern = compile_pattern(ResourceKind.PATH, glob)
    assert isinstance(pattern, PathPattern) and pattern._regex is not None  # the backtracking shape
    calls = 0
    real = matchers_module._segment_match

    def counting(g: str, s: str) -> bool:
        nonlocal calls
        calls += 1
        return real(g, s)

    monkeypatch.setattr(matchers_module, "_segment_match", counting)
    for segments in (500, 1000, 2000):
        calls = 0
        path = "/a" * segments  # almost matches: every `a` fits, the final `b` never comes
        assert glob_segments_match(pattern.segments, path) is False
        assert calls <= 3 * segments + 10


def test_pathological_name_glob_and_long_resources_are_answered() -> None:
    assert star_match(tuple("*a*a*a*a*a*b".split("*")), "a" * 4000) is False
    assert star_match(tuple("x*y*z".split("*")), "x" + "y" * 4000 + "z") is True
    engine = Engine.from_source('allow plugin * to file:read on "/**/a/**/a/**/a/**/a/**/b"',
                                [_plugin_manifest(_manifest("p", ["file:read"]))])
    decision = engine.decide("p", "file:read", ("/a" * 2000)[:MAX_RESOURCE_LENGTH])
    assert decision.reason is Reason.NOT_DECLARED or decision.reason is Reason.NO_MATCHING_ALLOW


# ----------------------------------------------------------------------------- engine vs reference

_PLUGINS = ["p", "q", "r-1"]
_ACTIONS = ["file:read", "file:write", "network:request", "database:read", "config:read", "hook:register"]
_PATTERNS = {
    "file": ['"/srv/**"', '"/srv/*"', '"/srv/a/x.csv"', '"{plugin_dir}/**"', '"/srv/**/b*"', '"/*/a?"',
             '"/etc/**"'],
    "network": ['"api.example.com:443"', '"*.example.com"', '"*"', '"[2001:db8::1]:443"', '"10.0.0.1"'],
    "name": ['"db.*"', '"*.secret"', '"a*b*c"', '"plain"', '"*"'],
}
_CONDITIONS = ["", ' when context.env == "prod"', " unless plugin.trusted", ' when plugin.type == "agent"',
               ' when context.level >= 2', ' when context.n > "text"']


def _family(action: str) -> str:
    return {"file": "file", "network": "network"}.get(action.split(":")[0], "name")


@st.composite
def _rules(draw: st.DrawFn) -> str:
    effect = draw(st.sampled_from(["allow", "allow", "deny"]))
    who = draw(st.sampled_from(["*", '"p"', '"q"', '"p", "r-1"']))
    action = draw(st.sampled_from(_ACTIONS))
    patterns = draw(st.lists(st.sampled_from(_PATTERNS[_family(action)]), max_size=3, unique=True))
    on = f" on {', '.join(patterns)}" if patterns else ""
    return f"{effect} plugin {who} to {action}{on}{draw(st.sampled_from(_CONDITIONS))}"


_SCOPES = {
    "file": ["/srv/**", "{plugin_dir}/**", "/etc/**", "/srv/a/*"],
    "network": ["api.example.com:443", '"*.example.com"', "10.0.0.1", "[2001:db8::1]:443"],
    "name": ["db.*", "plain", '"*"', "x.secret"],
}
_RESOURCES = {
    "file": ["/srv/a/x.csv", "/srv/b", "/etc/passwd", "/srv/a/../../etc/x", "rel/x", "", "/srv/q/bb",
             "/srv/z/a/b1", "/x/ab", "/srv/a"],
    "network": ["api.example.com:443", "API.example.com.:443", "https://a.example.com/x", "[2001:db8::1]:443",
                "10.0.0.1:80", "0x0a.0.0.1:80", "bad host", "x.evil.test"],
    "name": ["db.x", "plain", "a.secret", "abc", "aXbYc", "", " "],
}


def _manifest(name: str, permissions: list[str] | None = None, kind: str = "agent") -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "type": kind, "entry_point": "m:P",
            "permissions": permissions if permissions is not None else ["file:read"],
            "plugin_path": f"/srv/{name}"}


@st.composite
def _manifests(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for name in _PLUGINS:
        permissions = []
        for action in draw(st.lists(st.sampled_from(_ACTIONS), min_size=2, max_size=6, unique=True)):
            scope = draw(st.sampled_from(["", "", *_SCOPES[_family(action)]]))
            permissions.append(f"{action} {scope}".strip())
        data = _manifest(name, permissions, draw(st.sampled_from(["agent", "hook"])))
        data["enabled"] = draw(st.sampled_from([True, True, True, False]))
        out.append(data)
    return out


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, str | None, dict[str, Any] | None]:
    plugin = draw(st.sampled_from([*_PLUGINS, *_PLUGINS, *_PLUGINS, "ghost", "P"]))
    action = draw(st.sampled_from([*_ACTIONS, *_ACTIONS, "file:raed"]))
    resource = draw(st.one_of(st.none(), st.sampled_from(_RESOURCES[_family(action)])))
    context = draw(st.sampled_from([None, {}, {"env": "prod"}, {"env": "dev", "level": 3}, {"level": True},
                                    {"level": 1}, {"n": 3}, {"env": ["prod"]}]))
    return plugin, action, resource, context


def _plugin_manifest(data: dict[str, Any]) -> Any:
    from policy_engine.manifest import manifest_from_mapping

    copy = dict(data)
    return manifest_from_mapping(copy, plugin_path=Path(copy.pop("plugin_path")))


def _same(got: Decision, want: Decision) -> None:
    assert (got.allowed, got.reason, got.plugin, got.action, got.resource, got.rules, got.errors) == (
        want.allowed, want.reason, want.plugin, want.action, want.resource, want.rules, want.errors)
    assert got.describe() == want.describe()
    assert got.hints() == want.hints()
    assert got.explain() == want.explain()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rules(), min_size=3, max_size=10), _manifests(), st.lists(_requests(), min_size=1, max_size=25))
def test_engine_agrees_with_the_reference(rules: list[str], manifests: list[dict[str, Any]],
                                          requests: list[Any]) -> None:
    policy = "\n".join(rules)
    loaded = [_plugin_manifest(m) for m in manifests]
    uncached = Engine.from_source(policy, loaded, {"home": "/home/u"}, cache_size=0)
    cached = Engine.from_source(policy, loaded, {"home": "/home/u"}, cache_size=64)
    ttl = Engine.from_source(policy, loaded, {"home": "/home/u"}, cache_size=64, cache_ttl=3600)
    table = uncached._state.table
    for request in requests + requests:  # twice: the second pass answers from the caches
        want = reference_decide(table, *request)
        _same(uncached.decide(*request), want)
        _same(cached.decide(*request), want)
        _same(ttl.decide(*request), want)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rules(), min_size=3, max_size=10), _manifests())
def test_rules_kept_across_the_plugins_of_a_build_give_the_tables_built_alone(
        rules: list[str], manifests: list[dict[str, Any]]) -> None:
    # A build specialises a rule that is the same for every plugin once (`shared`): each
    # table equals the one built for that plugin alone, with nothing kept.
    engine = Engine.from_source("\n".join(rules), [_plugin_manifest(m) for m in manifests], {"home": "/home/u"})
    state = engine._state
    for name, manifest in state.manifests.items():
        alone, _ = Engine._table_for(state.policy, manifest, state.rules_by_plugin, state.wildcard_rules)
        assert engine.plugin_table(name) == alone


def test_a_worker_table_rebuilt_from_the_wire_agrees_with_the_host() -> None:
    from policy_engine.enforcement.host.spec import wire_table
    from policy_engine.enforcement.wire import WireTable
    from policy_engine.enforcement.worker.checker import _Decider

    engine = Engine.from_source('allow plugin * to file:read on "/srv/**/x*"\ndeny plugin * to file:read on "/srv/s/**"',
                                [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))])
    table = engine.plugin_table("p")
    assert table is not None
    worker = _Decider(WireTable.decode(wire_table(table).encode()))
    for path in ("/srv/a/x1", "/srv/s/x", "/srv/a/b/y", "/etc/x"):
        assert worker.allows("file:read", path) == engine.decide("p", "file:read", path).allowed, path


def test_equal_patterns_share_one_compiled_predicate_across_plugins() -> None:
    from policy_engine.permissions import Permission

    engine = Engine.from_source('deny plugin * to file:read on "/etc/**", "/srv/*/k*"\n'
                                'allow plugin * to file:read on "/srv/**"',
                                [_plugin_manifest(_manifest(n, ["file:read /srv/**"])) for n in ("p", "q")])
    plans = []
    for name in ("p", "q"):
        table = engine.plugin_table(name)
        assert table is not None
        plans.append(table.entries[Permission.FILE_READ].plan)
    first, second = plans
    assert first.denies[0][0] is second.denies[0][0]  # the wildcard rule: compiled once
    assert first.allows[0][0] is second.allows[0][0]
    assert first.declared is second.declared  # the same manifest line in both
    for path in ("/etc/x", "/srv/a/key", "/srv/a/b", "/tmp/x"):
        assert engine.decide("p", "file:read", path).allowed == engine.decide("q", "file:read", path).allowed


# ----------------------------------------------------------------------------- bounded cost


def test_unknown_plugins_compute_no_suggestion_until_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_source("allow plugin * to hook:register",
                                [_plugin_manifest(_manifest("analytics", ["hook:register"]))], cache_size=0)
    asked: list[str] = []
    real = DecisionTable.suggest_plugin

    def spy(self: DecisionTable, name: str) -> str | None:
        asked.append(name)
        return real(self, name)

    monkeypatch.setattr(DecisionTable, "suggest_plugin", spy)
    decision = engine.decide("analytcs", "hook:register")
    assert decision.reason is Reason.UNKNOWN_PLUGIN and asked == []
    assert decision.suggestions == ()
    assert any("analytics" in hint for hint in decision.hints())
    assert asked == ["analytcs"]
    assert "did you mean" in decision.explain()
    assert decision.to_dict()["suggestions"] == list(decision.hints())
    typo = engine.decide("analytics", "hook:registr")
    assert typo.reason is Reason.UNKNOWN_ACTION and "hook:register" in typo.explain()


def test_resources_over_the_limit_are_denied_without_matching(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine.from_source('allow plugin * to file:read on "/srv/**"',
                                [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))], cache_size=0)
    at_limit = "/srv/" + "x" * (MAX_RESOURCE_LENGTH - 5)
    assert len(at_limit) == MAX_RESOURCE_LENGTH
    assert engine.decide("p", "file:read", at_limit).allowed

    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("a resource over the limit was normalised")

    monkeypatch.setattr("policy_engine.table.normalize", never)
    over = at_limit + "x"
    decision = engine.decide("p", "file:read", over)
    assert (decision.allowed, decision.reason, decision.resource) == (False, Reason.RESOURCE_TOO_LONG, over)
    assert f"longer than {MAX_RESOURCE_LENGTH} characters" in decision.explain()
    assert decision.to_dict()["reason"] == "resource_too_long"


def test_cache_keys_keep_the_type_of_context_values() -> None:
    policy = "allow plugin * to hook:register when context.flag == true"
    engine = Engine.from_source(policy, [_plugin_manifest(_manifest("p", ["hook:register"]))])
    uncached = Engine.from_source(policy, [_plugin_manifest(_manifest("p", ["hook:register"]))], cache_size=0)
    for context in ({"flag": True}, {"flag": 1}, {"flag": 1.0}, {"flag": True}, {}, None, {"flag": [1]}):
        _same(engine.decide("p", "hook:register", context=context),
              uncached.decide("p", "hook:register", context=context))


# ----------------------------------------------------------------------------- reload


def _write_tree(root: Path, policy_files: dict[str, str], manifests: dict[str, list[str]]) -> tuple[Path, Path]:
    import json

    policies, plugins = root / "policies", root / "plugins"
    policies.mkdir(exist_ok=True)
    plugins.mkdir(exist_ok=True)
    for old in policies.glob("*.policy"):
        if old.name not in policy_files:
            old.unlink()
    for name, text in policy_files.items():
        (policies / name).write_text(text, encoding="utf-8")
    for old in plugins.iterdir():
        if old.name not in manifests:
            (old / "plugin.yaml").unlink()
            old.rmdir()
    for name, permissions in manifests.items():
        (plugins / name).mkdir(exist_ok=True)
        data = {"name": name, "version": "1.0.0", "type": "agent", "entry_point": "m:P", "permissions": permissions}
        (plugins / name / "plugin.yaml").write_text(json.dumps(data), encoding="utf-8")
    return policies, plugins


_EDITS = st.lists(st.tuples(
    st.sampled_from(["a.policy", "b.policy", "c.policy"]),
    st.lists(_rules(), max_size=3),
    st.sampled_from(_PLUGINS),
    st.lists(st.sampled_from(["file:read /srv/**", "hook:register", "database:read db.*", "config:read",
                              "network:request api.example.com:443"]), max_size=3, unique=True),
    st.sampled_from(["", "defaults { timeout hook 3s }\n", 'trust plugin "q" sha256-v2 "' + "0" * 64 + '"\n']),
), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(_EDITS)
def test_reload_after_random_edits_builds_what_a_full_load_builds(tmp_path_factory: pytest.TempPathFactory,
                                                                   edits: list[Any]) -> None:
    root = tmp_path_factory.mktemp("tree")
    files = {"a.policy": "allow plugin * to hook:register\n"}
    manifests: dict[str, list[str]] = {"p": ["hook:register"]}
    policies, plugins = _write_tree(root, files, manifests)
    engine = Engine.load(policies, plugins, {"home": "/home/u"})
    for file, rules, plugin, permissions, extra in edits:
        files[file] = extra + "\n".join(rules) + "\n"
        manifests[plugin] = permissions
        _write_tree(root, files, manifests)
        try:
            fresh = Engine.load(policies, plugins, {"home": "/home/u"})
        except Exception as exc:  # an edit that does not compile: reload must refuse it too
            with pytest.raises(type(exc)):
                engine.reload()
            continue
        engine.reload()
        assert engine.plugins == fresh.plugins
        for name in fresh.plugins:
            assert engine.plugin_table(name) == fresh.plugin_table(name)
        assert engine.problems == fresh.problems


def test_reload_rebuilds_only_the_tables_a_change_touches(tmp_path: Path) -> None:
    files = {"a.policy": 'allow plugin "p" to hook:register\n', "b.policy": 'allow plugin "q" to hook:register\n'}
    manifests = {"p": ["hook:register"], "q": ["hook:register"]}
    policies, plugins = _write_tree(tmp_path, files, manifests)
    engine = Engine.load(policies, plugins)
    p_before, q_before = engine.plugin_table("p"), engine.plugin_table("q")
    files["b.policy"] = 'allow plugin "q" to hook:register on "x.*"\n'
    _write_tree(tmp_path, files, manifests)
    engine.reload()
    assert engine.plugin_table("p") is p_before
    assert engine.plugin_table("q") is not q_before
    assert not engine.decide("q", "hook:register", "y").allowed
    manifests["p"] = ["hook:register", "config:read"]
    _write_tree(tmp_path, files, manifests)
    q_now = engine.plugin_table("q")
    engine.reload()
    assert engine.plugin_table("q") is q_now
    assert engine.plugin_table("p") is not p_before


def test_reload_is_atomic_under_concurrent_decide(tmp_path: Path) -> None:
    allow = 'allow plugin * to hook:register on "a.*"\nallow plugin * to config:read\n'
    deny = 'deny plugin * to hook:register on "a.*"\nallow plugin * to config:read\n'
    policies, plugins = _write_tree(tmp_path, {"a.policy": allow}, {"p": ["hook:register", "config:read"]})
    engine = Engine.load(policies, plugins)
    stop = threading.Event()
    seen: set[tuple[bool, Reason]] = set()
    broken: list[Decision] = []

    def ask() -> None:
        while not stop.is_set():
            decision = engine.decide("p", "hook:register", "a.b")
            seen.add((decision.allowed, decision.reason))
            if decision.reason not in (Reason.ALLOWED, Reason.DENIED_BY_RULE):
                broken.append(decision)
            if not engine.decide("p", "config:read", "k").allowed:
                broken.append(decision)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(6):
            _write_tree(tmp_path, {"a.policy": deny if round_ % 2 == 0 else allow}, {"p": ["hook:register", "config:read"]})
            engine.reload()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert broken == []
    assert seen <= {(True, Reason.ALLOWED), (False, Reason.DENIED_BY_RULE)}


# ----------------------------------------------------------------------------- the benchmark runs


def test_the_benchmark_runs_in_quick_mode(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_decide.py"
    spec = importlib.util.spec_from_file_location("bench_decide", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for label in ("uncached decide", "cached decide", "unknown plugin", "resource > 4 KiB",
                  "reference decide", "constant work (the floor)", "reload, 1 policy file", "KB per plugin"):
        assert label in out


# ----------------------------------------------------------------------------- manifest fast parse

_grant_text = st.one_of(
    st.text(alphabet='abz_:*/{}.-" #,\\\t\n\u2028é0123456789', max_size=30),
    st.builds(lambda a, scopes: " ".join([a, *scopes]),
              st.sampled_from(["file:read", "file:*", "*", "network:request", "a_b:c_d", "File:read", "file:"]),
              st.lists(st.text(alphabet="ab/*{}.:-_[]\\!$%?~é\"#,", min_size=1, max_size=8), max_size=3)),
)


@settings(max_examples=600, deadline=None)
@given(_grant_text)
def test_the_fast_grant_parse_agrees_with_the_full_parser(text: str) -> None:
    from policy_engine import parser
    from policy_engine.errors import PolicySyntaxError

    fast = parser._simple_grant(text, "m.yaml")
    try:
        full: object = parser._full_grant(text, "m.yaml")
    except PolicySyntaxError:
        full = None
    if fast is not None:
        assert fast == full
    assert parser.parse_grant.__name__ == "parse_grant"


def test_the_fast_grant_parse_takes_the_common_entries() -> None:
    from policy_engine import parser

    for text in ("file:read {plugin_dir}/**", "network:request api.example.com:443", "hook:register",
                 "database:read db1.*", "file:* /a /b"):
        assert parser._simple_grant(text, "m") is not None
    for text in ('network:request "*.x.com"', "file:read /a,/b", "file:read  /a", "file:read /a # c", " file:read"):
        assert parser._simple_grant(text, "m") is None


def test_every_decision_carries_the_revision_it_came_from(tmp_path: Path) -> None:
    policies, plugins = _write_tree(tmp_path, {"a.policy": "allow plugin * to hook:register\n"},
                                    {"p": ["hook:register"]})
    engine = Engine.load(policies, plugins)
    first = engine.decide("p", "hook:register")
    assert engine.revision == first.revision == 1
    assert engine.decide("p", "hook:register").revision == 1  # from the cache, same revision
    assert engine.decide("ghost", "hook:register").revision == 1
    assert engine.decide("p", "hook:register", "x" * (MAX_RESOURCE_LENGTH + 1)).revision == 1
    _write_tree(tmp_path, {"a.policy": "deny plugin * to hook:register\n"}, {"p": ["hook:register"]})
    engine.reload()
    second = engine.decide("p", "hook:register")
    assert (engine.revision, second.revision, second.allowed) == (2, 2, False)
    assert first.revision == 1  # what was decided before keeps saying where it came from
    engine.unregister("p")
    assert engine.decide("p", "hook:register").revision == engine.revision == 3


def test_reload_follows_a_plugin_directory_link_that_moved(tmp_path: Path) -> None:
    import json

    policy = tmp_path / "site.policy"
    policy.write_text('allow plugin * to file:read on "{plugin_dir}/**"\n', encoding="utf-8")
    manifest = {"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "m:P",
                "permissions": ["file:read {plugin_dir}/**"]}
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "plugin.yaml").write_text(json.dumps(manifest), encoding="utf-8")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "p").symlink_to(tmp_path / "one")
    engine = Engine.load(policy, plugins)
    assert engine.decide("p", "file:read", str(tmp_path / "one" / "x")).allowed
    (plugins / "p").unlink()
    (plugins / "p").symlink_to(tmp_path / "two")  # the same bytes, another directory
    engine.reload()
    assert engine.decide("p", "file:read", str(tmp_path / "two" / "x")).allowed
    assert not engine.decide("p", "file:read", str(tmp_path / "one" / "x")).allowed


# ----------------------------------------------------------------------------- normalisation

def _outcome(function: Any, *args: Any) -> tuple[str, Any]:
    from policy_engine import patterns

    try:
        return "ok", function(*args)
    except (patterns._Bad, patterns.InvalidResourceError) as exc:  # the same failure, same words
        return type(exc).__name__, str(exc)


_path_piece = st.sampled_from(["", ".", "..", "a", "b.c", ".x", "..y", "a\0b", "é", " ", "x/"])
_any_path = st.one_of(
    st.lists(_path_piece, max_size=8).map("/".join),
    st.lists(_path_piece, max_size=8).map(lambda s: "/" + "/".join(s)),
    st.text(alphabet="/.ab\0", max_size=16),
)


@settings(max_examples=1500, deadline=None)
@given(_any_path, st.sampled_from([None, "/base", "/b/./c/", "rel", "/with\0nul"]))
def test_the_path_fast_path_answers_as_the_full_normalisation(path: str, base_dir: str | None) -> None:
    from policy_engine import patterns

    assert _outcome(patterns._normalize_path, path, base_dir) == \
        _outcome(patterns._normalize_path_full, path, base_dir)


# Long paths (from `_LONG_PATH` on) take other searches: a plain head of many segments, then
# the same odd pieces, so that `..` climbs out of the tail into the head, or above the root.
_long_path = st.tuples(
    st.integers(0, 400).map(lambda n: "".join(f"/s{i % 7}" for i in range(n))),
    st.lists(st.sampled_from(["", ".", "..", "a", "b.c", ".x", "..y", "...", "a.", "x/", "/"]), max_size=12),
    st.sampled_from(["", "/", "/.", "/..", ".d", "/e"]),
).map(lambda t: t[0] + "/" + "/".join(t[1]) + t[2])


@settings(max_examples=1500, deadline=None)
@given(_long_path, st.sampled_from([None, "/base"]))
def test_the_long_path_fast_path_answers_as_the_full_normalisation(path: str, base_dir: str | None) -> None:
    from policy_engine import patterns

    assert _outcome(patterns._normalize_path, path, base_dir) == \
        _outcome(patterns._normalize_path_full, path, base_dir)


def test_a_long_path_of_dots_is_normalised_as_the_full_normalisation() -> None:
    from policy_engine import patterns

    for path in ("/" + "a." * 1900, "/" + "a." * 1900 + "/.x/..", "/x" * 200 + "/." * 900,
                 "/y" * 200 + "/.." * 300 + "/z", "/" + "..." * 200 + "/.."):
        assert patterns._normalize_path(path, None) == patterns._normalize_path_full(path, None)


_octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "007", "0x7f", "", "a"]))
_port = st.one_of(st.none(), st.integers(0, 70000).map(str), st.sampled_from(["", "00443", "http", "*"]))
_any_host = st.one_of(
    st.tuples(st.lists(_octet, min_size=1, max_size=5).map(".".join), _port).map(
        lambda t: t[0] if t[1] is None else f"{t[0]}:{t[1]}"),
    st.tuples(st.sampled_from(["Api.Example.com", "a.b", "x_y-1.test", "a..b", "-a", "a.1", "1a.b2",
                               "a.", "xn--p.de", "é.de", "a b", "a\0b", "", ":", "a:b:c"]), _port).map(
        lambda t: t[0] if t[1] is None else f"{t[0]}:{t[1]}"),
    st.sampled_from(["[::1]:443", "[::ffff:127.0.0.1]", "::1", "[fe80::1%eth0]:22", "[2001:DB8::0:1]",
                     "https://a.example.com/x", "http://[::1]:8080/", "ftp://h", "https://h:0/",
                     "[1.2.3.4]", "[::1", "[::1]x"]),
)


@settings(max_examples=1500, deadline=None)
@given(_any_host)
def test_the_host_fast_paths_answer_as_the_full_normalisation(host: str) -> None:
    from policy_engine import patterns

    assert _outcome(patterns.normalize, ResourceKind.HOST, host) == _outcome(_full_host, host)


def _full_host(text: str) -> Any:
    """The full host normalisation, its failure worded as ``normalize`` words it."""
    from policy_engine import patterns

    try:
        return patterns._normalize_host_full(text)
    except patterns._Bad as bad:
        raise patterns.InvalidResourceError(patterns._bad_message(bad)) from None


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789abcdefABCDEF:.%x", max_size=50),
                 st.sampled_from(["::1", "::ffff:1.2.3.4", "fe80::1%" + "z" * 80, "127.1", "0x7f.1"])),
       st.booleans())
def test_remembered_addresses_answer_as_parsing_them_again(host: str, bracketed: bool) -> None:
    from policy_engine import patterns

    first = _outcome(patterns._canonical_ip, host, bracketed)
    assert first == _outcome(patterns._canonical_ip, host, bracketed)  # a second time: remembered
    assert first == _outcome(patterns._canonical_ip_full, host, bracketed)


def test_normalize_keeps_its_answers_for_the_common_shapes() -> None:
    from policy_engine.patterns import HostPort, normalize

    assert normalize(ResourceKind.PATH, "/srv/a/b.csv") == "/srv/a/b.csv"
    assert normalize(ResourceKind.PATH, "/srv/a/../b/") == "/srv/b"
    assert normalize(ResourceKind.PATH, "//srv//a/.") == "/srv/a"
    assert normalize(ResourceKind.HOST, "10.0.0.1:443") == HostPort("10.0.0.1", 443)
    assert normalize(ResourceKind.HOST, "010.0.0.1") == HostPort("8.0.0.1")
    assert normalize(ResourceKind.HOST, "127.1:80") == HostPort("127.0.0.1", 80)


# ----------------------------------------------------------------------------- manifest YAML

def _yaml_reading(text: str, fast: bool) -> tuple[str, Any]:
    from policy_engine import manifest
    from policy_engine.errors import ManifestError

    try:
        data, source, early = manifest._read_yaml_with(text, "m.yaml", fast=fast)
    except ManifestError as exc:
        return "error", [str(d) for d in exc.diagnostics]
    except Exception as exc:  # noqa: BLE001 - the fast reader may fail in its own words
        return "failed", type(exc).__name__
    scalars = {pointer: (node.tag, node.value, node.start_mark.line, node.start_mark.column,
                         node.start_mark.index, node.end_mark.line, node.end_mark.column, node.end_mark.index)
               for pointer, node in source.scalars.items()}
    return "ok", (data, dict(source.values), dict(source.keys), scalars, [str(d) for d in early])


_yaml_scalar = st.one_of(
    st.text(alphabet="ab:#-'\" {}[],&*!|>%@`?.01\\\n", max_size=8), st.integers(-10, 10), st.booleans(),
    st.none(), st.sampled_from(["1.0.0", "yes", "~", "2024-01-02", "0x1f", "1e3", "file:read /srv/**"]))
_yaml_data = st.recursive(_yaml_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet="abn: -", min_size=1, max_size=6), inner,
                                                 max_size=4)), max_leaves=12)


def _texts_of(data: Any) -> list[str]:
    import json

    import yaml

    return [json.dumps(data), json.dumps(data, indent=1), yaml.safe_dump(data),
            yaml.safe_dump(data, default_flow_style=True), yaml.safe_dump(data, default_style='"')]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_data, st.integers(0, 4), st.integers(0, 200), st.sampled_from(["", ":", "- ", "\n", "&a ", "*a",
                                                                          "#", "'", '"', "{", "]", " x", "\n  "]))
def test_libyaml_events_read_a_manifest_as_pyyaml_does(data: Any, style: int, at: int, insert: str) -> None:
    from policy_engine.bounded import is_plain_yaml_text

    text = _texts_of(data)[style]
    for candidate in (text, text[:at] + insert + text[at:]):
        if not is_plain_yaml_text(candidate):
            continue
        fast, full = _yaml_reading(candidate, True), _yaml_reading(candidate, False)
        # What the fast reader accepts it reads exactly so; anything else is read again in full.
        assert fast[0] != "ok" or fast == full, candidate


def test_a_manifest_the_fast_reader_refuses_gets_pyyaml_s_own_words() -> None:
    from policy_engine import manifest
    from policy_engine.errors import ManifestError

    for text in ("name: [1, 2\n", "a: &x 1\nb: *y\n", "a: b: c\n", "name: x\nname: y\n", "- 1\n", "[n? ull]\n",
                 "a: !*a!int 0\n", "a: b\x07\n", "a: b\x00\n", "a: " + "b" * 9000 + "\n"):
        try:
            manifest._read_yaml_with(text, "m.yaml", fast=False)
        except ManifestError as exc:
            want = [str(d) for d in exc.diagnostics]
        else:
            want = None
        try:
            manifest._read_yaml(text, "m.yaml")
        except ManifestError as exc:
            assert [str(d) for d in exc.diagnostics] == want
        else:
            assert want is None


_SMALL_CAPS = {"yaml_depth": 3, "yaml_nodes": 12, "scalar_chars": 6, "number_digits": 3, "mapping_keys": 3,
               "sequence_items": 4, "yaml_aliases": 2}


def _tree(node: Any) -> Any:
    import yaml

    # What the constructor and the manifest reader use: the styles they do not (and libyaml
    # spells a plain scalar's style `''`, PyYAML None).
    if node is None:
        return None
    marks = (node.start_mark.index, node.start_mark.line, node.start_mark.column,
             node.end_mark.index, node.end_mark.line, node.end_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, node.value, marks)
    if isinstance(node, yaml.SequenceNode):
        return ("sequence", node.tag, marks, [_tree(item) for item in node.value])
    return ("mapping", node.tag, marks, [(_tree(k), _tree(v)) for k, v in node.value])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_data, st.integers(0, 4), st.integers(0, 200),
       st.sampled_from(["", "&a ", "*a", "&b ", "!!str ", "!x ", "? ", "- ", "[", "{", "\n- ", "1234", "<<: *a\n"]),
       st.booleans())
def test_libyaml_s_composer_within_small_caps_composes_as_the_bounded_composer(
        data: Any, style: int, at: int, insert: str, capped: bool) -> None:
    from policy_engine.bounded import (
        DEFAULT_LIMITS,
        BoundedSafeLoader,
        InputLimits,
        NotPlainError,
        compose_plain_yaml,
        is_plain_yaml_text,
    )

    limits = InputLimits(**_SMALL_CAPS) if capped else DEFAULT_LIMITS
    text = _texts_of(data)[style]
    for candidate in (text, text[:at] + insert + text[at:]):
        if not is_plain_yaml_text(candidate):
            continue
        try:
            fast = _tree(compose_plain_yaml(candidate, limits=limits))
        except Exception:  # noqa: BLE001 - declined or refused: the bounded composer answers
            continue
        loader = BoundedSafeLoader(candidate)
        loader.limits = limits
        try:
            full = _tree(loader.get_single_node())
        finally:
            loader.dispose()
        assert fast == full, candidate
        assert not isinstance(fast, NotPlainError)


def test_libyaml_s_composer_declines_what_the_bounded_composer_counts() -> None:
    from policy_engine.bounded import InputLimits, NotPlainError, compose_plain_yaml, has_libyaml

    if not has_libyaml():
        pytest.skip("PyYAML without libyaml")
    small = InputLimits(**_SMALL_CAPS)
    for text in ("a: &x [1]\nb: *x\n", "a: [[[[1]]]]\n", "a: abcdefgh\n", "a: 12345\n",
                 "{a: 1, b: 2, c: 3, d: 4}\n", "[1, 2, 3, 4, 5]\n", "a:\nb: 1\n",
                 "[" + ", ".join(["[1, 2]"] * 5) + "]\n",
                 # Found by the test above: libyaml reads both, PyYAML refuses them.
                 "[n? ull]\n", "- !*a!int 0\n", "- !\n"):
        with pytest.raises(NotPlainError):
            compose_plain_yaml(text, limits=small)
    assert compose_plain_yaml("a: [1, 2]\nb: {c: d}\n", limits=small) is not None


def _event_depth(text: str) -> int:
    import yaml

    depth = deepest = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            deepest = max(deepest, depth)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
    return deepest


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_data, st.integers(0, 4), st.integers(0, 200),
       st.sampled_from(["", ":", "- ", "-", "? ", "?", "[", "{", "\n- ", "\n  - ", "a:", ": ", "- - ", "[a:b]",
                        '{"a":[', "\n", "#", "- a: - ", "<<: "]))
def test_the_nesting_bound_is_never_below_libyaml_s_depth(data: Any, style: int, at: int, insert: str) -> None:
    import yaml

    from policy_engine.bounded import has_libyaml, is_plain_yaml_text, nesting_bound

    if not has_libyaml():
        pytest.skip("PyYAML without libyaml")
    text = _texts_of(data)[style]
    for candidate in (text, text[:at] + insert + text[at:], text.rstrip("\n"), insert * 3 + "x"):
        if not is_plain_yaml_text(candidate):
            continue
        try:
            depth = _event_depth(candidate)
        except yaml.YAMLError:
            continue  # no tree to compose
        assert nesting_bound(candidate) >= depth, candidate


def test_a_common_manifest_is_composed_without_the_events_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from policy_engine import bounded

    if not bounded.has_libyaml():
        pytest.skip("PyYAML without libyaml")
    calls: list[str] = []
    monkeypatch.setattr(bounded, "_check_events", lambda text, limits: calls.append(text))
    manifest = {"name": "a", "version": "1.0.0", "type": "agent", "entry_point": "p:P",
                "permissions": ["file:read /srv/**", "network:request", "config:read"]}
    for text in (json.dumps(manifest, indent=1), "name: a\npermissions:\n  - file:read /srv/**\n"):
        assert bounded.compose_plain_yaml(text) is not None
    assert calls == []
    for text in ("- " * 40 + "x\n", "a: !!str b\n"):  # deep enough to need it, or a tag
        bounded.compose_plain_yaml(text)  # the stub declines nothing
    assert len(calls) == 2


def test_a_deeply_nested_manifest_cannot_overflow_a_thread_s_stack() -> None:
    import threading

    from policy_engine import manifest
    from policy_engine.errors import ManifestError

    # libyaml's composer recurses in C: a few thousand block levels overflow a small stack.
    texts = ["- " * 4000 + "x\n", "".join(" " * i + "a:\n" for i in range(690)) + " " * 690 + "b\n"]
    outcomes: list[str] = []

    def read() -> None:
        for text in texts:
            try:
                manifest._read_yaml(text, "m.yaml")
            except ManifestError as exc:
                outcomes.append(exc.diagnostics[0].message)

    previous = threading.stack_size(256 * 1024)
    try:
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    assert len(outcomes) == 2 and all("nesting deeper than 32 levels" in m for m in outcomes), outcomes


# ----------------------------------------------------------------------------- manifest schema

_odd_value = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet="aZ0 .-_:/%*{}\n+", max_size=12), st.lists(st.text(alphabet="a: ", max_size=4), max_size=2),
    st.dictionaries(st.sampled_from(["init", "hook", "x", "memory", "cpu"]), st.integers(0, 9), max_size=2),
    st.sampled_from(["1.0.0", "1.0", "01.2.3", "1.2.3-beta.1+b.2", "agent", "Agent", "p.q:C", "p:C\n",
                     "file:read /srv/**", "file:raed", "*", "network:request\n", "10s", "0.5h", "5 m", "50%",
                     "512MiB", "1 GB", ">=3.10", ">=3.10,<4", "https://x.test/a", "http:/x", ""]),
)
_manifest_fields = ["name", "version", "type", "entry_point", "description", "enabled", "permissions",
                    "timeout_seconds", "timeouts", "limits", "author", "homepage", "tags", "requires_python",
                    "unknown"]
_good = {"name": "a-b", "version": "1.2.3", "type": "agent", "entry_point": "p.q:C"}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_manifest_fields), _odd_value, max_size=6),
       st.dictionaries(st.sampled_from(["init", "hook", "execute", "memory", "cpu", "file_size", "other"]),
                       _odd_value, max_size=3),
       st.lists(_odd_value, max_size=3), st.booleans())
def test_the_quick_schema_check_accepts_only_what_the_validator_accepts(
        fields: dict[str, Any], inner: dict[str, Any], items: list[Any], base: bool) -> None:
    from policy_engine import manifest

    data: dict[str, Any] = {**(_good if base else {}), **fields}
    for name in ("timeouts", "limits"):
        if name in data and isinstance(data[name], dict):
            data[name] = {**data[name], **inner}
    for name in ("permissions", "tags"):
        if name in data and isinstance(data[name], list):
            data[name] = data[name] + items
    quick = manifest._quick_validator()(data)
    full = list(manifest._validator().iter_errors(data))
    assert not quick or not full, (data, [e.message for e in full])


def test_the_quick_schema_check_takes_the_common_manifests() -> None:
    from policy_engine import manifest

    quick = manifest._quick_validator()
    assert quick({**_good, "permissions": ["file:read /srv/**", "network:request"], "tags": ["x"],
                  "timeouts": {"init": "10s", "hook": 2}, "limits": {"memory": "512MiB", "cpu": "50%"},
                  "enabled": False, "description": "d", "homepage": "https://x.test", "requires_python": ">=3.10"})
    assert not quick({**_good, "name": "A"}) and not quick({**_good, "extra": 1}) and not quick({"name": "a"})
    # A keyword it does not know declines everything, so a new schema cannot be half-checked.
    with pytest.raises(manifest._Unsupported):
        manifest._quick_check({"type": "string", "format": "uri"}, {})


# ----------------------------------------------------------------------------- manifest permissions

_entry = st.one_of(
    st.text(alphabet="fileread:*/ {}#\"',\\-.x\t", max_size=24),
    st.builds(lambda a, s: a + s, st.sampled_from(["file:read", "file:*", "*", "network:request", "file:raed",
                                                   "hook:register", "config:read", "file:read "]),
              st.text(alphabet=" /abc*{}#\"',.~:x", max_size=16)),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, min_size=1, max_size=3))
def test_the_simple_permission_entry_reads_as_the_full_path(entries: list[str]) -> None:
    import yaml

    from policy_engine import manifest

    text = yaml.safe_dump({"permissions": entries})
    data, source, _ = manifest._read_yaml(text, "m.yaml")
    fast = manifest._permissions(data["permissions"], source)
    real = manifest._simple_entry
    try:
        manifest._simple_entry = lambda entry: None  # type: ignore[assignment]
        full = manifest._permissions(data["permissions"], source)
    finally:
        manifest._simple_entry = real  # type: ignore[assignment]
    assert fast[0] == full[0] and [str(d) for d in fast[1]] == [str(d) for d in full[1]], entries


def test_the_simple_permission_entry_takes_the_common_entries() -> None:
    from policy_engine import manifest

    for entry in ("file:read /srv/**", "network:request", "file:write {data_dir}/x/**", "*", "config:read a.*"):
        assert manifest._simple_entry(entry) is not None, entry
    for entry in ("file:read /a /b", "* /x", "file:raed /x", 'file:read "/a b"', "file:read /a#b", "file:read  /a"):
        assert manifest._simple_entry(entry) is None, entry
