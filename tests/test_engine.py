"""The engine: loading, caching, reloading, pins, the decision log, and the semantics
properties (order independence, deny-overrides, cached == uncached, concurrency)."""

from __future__ import annotations

import io
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine import (
    DecisionLog,
    Engine,
    ManifestError,
    PermissionDeniedError,
    PolicyCompileError,
    PolicySyntaxError,
    Reason,
    UsageError,
)
from policy_engine.digest import plugin_digest, trust_line
from policy_engine.manifest import manifest_from_mapping
from policy_engine.settings import Isolation, Violation

ROOT = Path(__file__).parent.parent


def manifest(name: str = "p", permissions: list[str] | None = None, *,
             plugin_path: str | None = None, **extra: Any) -> Any:
    data = {"name": name, "version": "1.0.0", "type": "agent", "entry_point": "m:C",
            "permissions": permissions if permissions is not None else ["file:read", "hook:register"], **extra}
    return manifest_from_mapping(data, file=f"{name}.yaml",
                                 plugin_path=Path(plugin_path or f"/srv/plugins/{name}"))


def test_load_reads_policy_directories_and_plugin_directories(tmp_path: Path) -> None:
    engine = Engine.load(ROOT / "policies" / "default.policy", plugins=ROOT / "examples" / "plugins",
                         variables={"data_dir": str(tmp_path)})
    assert set(engine.plugins) >= {"summarizer", "report-builder", "rogue"}
    words = ROOT / "examples" / "plugins" / "summarizer" / "words.txt"
    assert engine.decide("summarizer", "file:read", str(words)).allowed
    denied = engine.decide("rogue", "file:read", "/etc/passwd")
    assert denied.reason is Reason.DENIED_BY_RULE
    assert denied.rules[0].file.endswith("default.policy")


def test_missing_policy_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        Engine.load(tmp_path / "nope")
    with pytest.raises(UsageError, match="no `.policy` files"):
        Engine.load(tmp_path)


def test_syntax_errors_of_all_files_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "a.policy").write_text("allow plugin *\n")
    (tmp_path / "b.policy").write_text("deny plugin x to *\n")
    with pytest.raises(PolicySyntaxError) as info:
        Engine.load(tmp_path)
    assert {d.span.file for d in info.value.diagnostics if d.span} == {
        str(tmp_path / "a.policy"), str(tmp_path / "b.policy")}


def test_an_invalid_manifest_does_not_stop_the_others(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "plugin.yaml").write_text("name: good\nversion: 1.0.0\ntype: agent\nentry_point: m:C\n"
                                      "permissions: [hook:register]\n")
    (bad / "plugin.yaml").write_text("name: Bad\nversion: x\n")
    engine = Engine.load(_write(tmp_path, "allow plugin * to hook:register"), plugins=tmp_path)
    assert engine.plugins == ("good",)
    assert engine.problems and all(p.span and "bad" in p.span.file for p in engine.problems)
    with pytest.raises(ManifestError):
        Engine.load(_write(tmp_path, "allow plugin * to hook:register"), plugins=tmp_path, strict=True)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.policy"
    path.write_text(text)
    return path


def test_manifest_scope_with_unknown_variable_is_reported_with_its_pointer() -> None:
    with pytest.raises(ManifestError) as info:
        Engine.from_source("allow plugin * to file:read", [manifest(permissions=["file:read {nope}/x"])],
                           strict=True)
    assert info.value.diagnostics[0].pointer == "/permissions/0"


def test_check_raises_permission_denied_with_the_decision() -> None:
    engine = Engine.from_source("allow plugin * to hook:register", [manifest()])
    assert engine.check("p", "hook:register").allowed
    with pytest.raises(PermissionDeniedError) as info:
        engine.check("p", "file:read", "/x")
    assert isinstance(info.value, PermissionError)
    assert info.value.decision.reason is Reason.NO_MATCHING_ALLOW
    assert "allow plugin \"p\" to file:read on \"/x\"" in str(info.value)


def test_decide_never_raises_for_bad_input() -> None:
    engine = Engine.from_source("allow plugin * to *", [manifest()])
    for args in [(None, "file:read"), ("p", None), ("p", "file:read", 3), ("p", "file:read", "\x00"),
                 ("p", "network:request", "http://[::1"), ("p", "file:read", "/x", {"a": [1]})]:
        decision = engine.decide(*args)  # type: ignore[arg-type]
        assert not decision.allowed or args[2:] == ("/x", {"a": [1]})


def test_disabled_plugins_are_denied() -> None:
    engine = Engine.from_source("allow plugin * to *", [manifest(enabled=False)])
    assert engine.decide("p", "hook:register").reason is Reason.PLUGIN_DISABLED


def test_pins(tmp_path: Path) -> None:
    plugin = tmp_path / "p"
    plugin.mkdir()
    (plugin / "m.py").write_text("class C: pass\n")
    digest = plugin_digest(plugin)
    policy = (trust_line("p", digest) + '\nallow plugin * to *\n'
              'deny plugin * to subprocess:execute unless plugin.trusted')
    engine = Engine.from_source(policy, [manifest(permissions=["subprocess:execute"], plugin_path=str(plugin))])
    assert engine.decide("p", "subprocess:execute", "ls").allowed
    (plugin / "m.py").write_text("class C: evil = 1\n")
    engine.reload()
    decision = engine.decide("p", "subprocess:execute", "ls")
    assert decision.reason is Reason.UNTRUSTED and "does not match" in decision.explain()


def test_unpinned_plugins_are_not_trusted() -> None:
    engine = Engine.from_source("allow plugin * to *\ndeny plugin * to subprocess:execute unless plugin.trusted",
                                [manifest(permissions=["subprocess:execute"])])
    assert engine.decide("p", "subprocess:execute", "ls").reason is Reason.DENIED_BY_RULE


def test_limits_and_timeouts_resolve_policy_blocks_and_manifest_requests() -> None:
    policy = ('defaults { limit memory 500MB max 2GB\n timeout execute 300s\n on violation warn }\n'
              'plugin "p" { timeout execute 600s\n isolation inprocess }\nallow plugin * to *')
    engine = Engine.from_source(policy, [manifest(timeouts={"execute": "900s", "init": "10s"},
                                                  limits={"memory": "1GB"})])
    assert engine.timeouts("p").execute == 600 and engine.timeouts("p").init == 10
    assert engine.limits("p").memory == 1_000_000_000
    assert engine.limits("p").on_violation is Violation.WARN
    assert engine.limits("p").isolation is Isolation.INPROCESS
    assert engine.timeouts("unknown").execute == 300


def test_defaults_without_policy_settings_are_the_seed_defaults() -> None:
    engine = Engine.from_source("allow plugin * to hook:register", [manifest()])
    timeouts, limits = engine.timeouts("p"), engine.limits("p")
    assert (timeouts.init, timeouts.hook, timeouts.execute) == (30, 5, 300)
    assert (limits.memory, limits.memory_warn, limits.cpu, limits.file_size) == (
        500_000_000, 0.8, 0.8, 100_000_000)


def test_cache_hits_and_context_keys() -> None:
    engine = Engine.from_source('allow plugin * to hook:register when context.env == "prod"', [manifest()])
    assert engine.decide("p", "hook:register", context={"env": "prod"}).allowed
    assert engine.decide("p", "hook:register", context={"env": "prod"}).allowed
    assert not engine.decide("p", "hook:register", context={"env": "dev"}).allowed
    info = engine.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 2, 2)
    engine.clear_cache()
    assert engine.cache_info().size == 0


def test_ttl_cache_with_a_zero_size_disables_caching() -> None:
    engine = Engine.from_source("allow plugin * to hook:register", [manifest()], cache_size=0)
    engine.decide("p", "hook:register")
    assert engine.cache_info().size == 0
    ttl = Engine.from_source("allow plugin * to hook:register", [manifest()], cache_ttl=60)
    ttl.decide("p", "hook:register")
    assert ttl.cache_info().size == 1


def test_reload_swaps_and_keeps_the_old_policy_on_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "allow plugin * to hook:register")
    engine = Engine.load(path)
    engine.register(manifest())
    assert engine.decide("p", "hook:register").allowed
    path.write_text("deny plugin * to hook:register\nallow plugin * to hook:register")
    engine.reload()
    assert engine.decide("p", "hook:register").reason is Reason.DENIED_BY_RULE
    path.write_text("allow plugin * to file:raed")
    with pytest.raises(PolicyCompileError):
        engine.reload()
    assert engine.decide("p", "hook:register").reason is Reason.DENIED_BY_RULE
    assert engine.plugins == ("p",)


def test_register_and_unregister() -> None:
    engine = Engine.from_source("allow plugin * to hook:register")
    assert engine.decide("p", "hook:register").reason is Reason.UNKNOWN_PLUGIN
    engine.register(manifest())
    assert engine.decide("p", "hook:register").allowed
    engine.unregister("p")
    assert engine.decide("p", "hook:register").reason is Reason.UNKNOWN_PLUGIN


def test_decision_log_writes_json_lines_without_context_by_default() -> None:
    stream = io.StringIO()
    engine = Engine.from_source("allow plugin * to hook:register", [manifest()],
                                decision_log=DecisionLog(stream))
    engine.decide("p", "hook:register", context={"token": "secret"})
    engine.decide("p", "file:read", "/x")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["allowed"] for line in lines] == [True, False]
    assert lines[0]["policy"] == engine.content_hash and lines[0]["rules"] == ["<policy>:1:1"]
    assert "secret" not in stream.getvalue()
    denials = io.StringIO()
    engine.decision_log = DecisionLog(denials, only_denials=True, include_context=True)
    engine.decide("p", "hook:register")
    engine.decide("p", "file:read", "/x", context={"user": "ann"})
    (entry,) = [json.loads(line) for line in denials.getvalue().splitlines()]
    assert entry["reason"] == "no_matching_allow" and entry["context"] == {"user": "ann"}


def test_explain_names_the_rule_and_the_fix() -> None:
    engine = Engine.from_source('allow plugin * to file:read on "/srv/**"\ndeny plugin * to file:* on "/srv/secret/**"',
                                [manifest(permissions=["file:read /srv/**"])])
    text = engine.decide("p", "file:read", "/srv/secret/key").explain()
    assert "blocked by <policy>:2:1: deny plugin * to file:* on \"/srv/secret/**\"" in text
    text = engine.decide("p", "file:read", "/etc/x").explain()
    assert "add `file:read /etc/x` to the `permissions`" in text


# Properties ---------------------------------------------------------------------------

RULE_PARTS = st.tuples(
    st.sampled_from(["allow", "deny"]),
    st.sampled_from(['*', '"p"', '"q"', '"p", "q"']),
    st.sampled_from([
        ("file:read", ""), ("file:read", ' on "/srv/**"'), ("file:*", ' on "/srv/a/*"'),
        ("file:write", ' on "/etc/**"'), ("*", ""), ("*", ' on "/srv/**"'), ("network:request", ""),
        ("network:request", ' on "api.example.com:443"'), ("network:request", ' on "*.example.com"'),
        ("hook:register", ""), ("hook:register", ' on "ev.*"'),
    ]),
    st.sampled_from(['', ' when plugin.type == "agent"', ' when context.env == "prod"',
                     ' unless context.n > 2', ' when plugin.version >= "1.5"']),
)
REQUESTS = [
    ("p", "file:read", "/srv/a/b"), ("p", "file:read", "/etc/passwd"), ("q", "file:write", "/srv/a/x"),
    ("p", "network:request", "api.example.com:443"), ("q", "network:request", "x.example.com:80"),
    ("p", "hook:register", "ev.start"), ("q", "hook:register", None), ("p", "file:read", "/srv/../etc/x"),
]
CONTEXTS: list[dict[str, Any] | None] = [None, {"env": "prod", "n": 1}, {"env": "dev", "n": 5}]
MANIFESTS = [manifest("p", ["file:read", "file:write", "network:request", "hook:register"]),
             manifest("q", ["file:*", "network:request api.example.com", "network:request *.example.com",
                            "hook:register"], version="2.0.0", type="workflow")]


def rule_text(parts: tuple[Any, ...]) -> str:
    effect, who, (action, on), cond = parts
    return f"{effect} plugin {who} to {action}{on}{cond}"


def answers(engine: Engine) -> list[tuple[bool, Reason]]:
    return [(d.allowed, d.reason) for d in (engine.decide(*r, context=c) for r in REQUESTS for c in CONTEXTS)]


@settings(max_examples=60, deadline=None)
@given(st.lists(RULE_PARTS, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_rule_order_never_changes_a_decision(rules: list[tuple[Any, ...]], rng: random.Random) -> None:
    texts = [rule_text(r) for r in rules]
    shuffled = texts[:]
    rng.shuffle(shuffled)
    one = Engine.from_source("\n".join(texts), MANIFESTS, cache_size=0)
    two = Engine.from_source({"a.policy": "\n".join(shuffled[::2]), "b.policy": "\n".join(shuffled[1::2])},
                             MANIFESTS, cache_size=0)
    assert answers(one) == answers(two)


@settings(max_examples=60, deadline=None)
@given(st.lists(RULE_PARTS, min_size=1, max_size=8), RULE_PARTS)
def test_adding_a_deny_never_turns_a_deny_into_an_allow(rules: list[tuple[Any, ...]], extra: tuple[Any, ...]) -> None:
    base = "\n".join(rule_text(r) for r in rules)
    deny = rule_text(("deny", *extra[1:]))
    before = answers(Engine.from_source(base, MANIFESTS, cache_size=0))
    after = answers(Engine.from_source(base + "\n" + deny, MANIFESTS, cache_size=0))
    for (was_allowed, _), (now_allowed, _) in zip(before, after, strict=True):
        assert was_allowed or not now_allowed


@settings(max_examples=60, deadline=None)
@given(st.lists(RULE_PARTS, min_size=1, max_size=8), st.lists(st.integers(0, len(REQUESTS) * 3 - 1), max_size=40))
def test_cached_equals_uncached(rules: list[tuple[Any, ...]], order: list[int]) -> None:
    text = "\n".join(rule_text(r) for r in rules)
    cached = Engine.from_source(text, MANIFESTS, cache_size=8)
    uncached = Engine.from_source(text, MANIFESTS, cache_size=0)
    for index in order + order:
        request, context = REQUESTS[index // 3], CONTEXTS[index % 3]
        assert cached.decide(*request, context=context) == uncached.decide(*request, context=context)


def test_concurrent_decisions_during_reloads_never_mix_versions() -> None:
    v1 = 'allow plugin * to file:read on "/srv/**"\nallow plugin * to hook:register'
    v2 = 'allow plugin * to file:read on "/srv/**"\ndeny plugin * to file:read on "/srv/a/**"'
    requests = [("p", "file:read", "/srv/a/x"), ("p", "file:read", "/srv/b/x"), ("p", "hook:register", None)]
    expected = {text: [Engine.from_source(text, MANIFESTS).decide(*r) for r in requests] for text in (v1, v2)}
    engine = Engine.from_source(v1, MANIFESTS, cache_size=64)
    stop = threading.Event()
    failures: list[str] = []
    after_reload: list[tuple[str, list[Any]]] = []

    def worker() -> None:
        while not stop.is_set():
            for i, request in enumerate(requests):
                got = engine.decide(*request)
                if got not in (expected[v1][i], expected[v2][i]):
                    failures.append(repr(got))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for i in range(60):
            text = v2 if i % 2 == 0 else v1
            engine.reload(text)
            after_reload.append((text, [engine.decide(*r) for r in requests]))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    for text, got in after_reload:
        assert got == expected[text]


# A manifest without a directory ------------------------------------------------------------

_SHADOW_MANIFEST = """\
name: reader
version: 1.0.0
type: agent
entry_point: m:C
permissions:
  - file:read {plugin_dir}/**
"""
_SHADOW_POLICY = 'allow plugin * to file:read on "{plugin_dir}/**"\n'


def test_from_source_never_uses_the_current_directory_as_plugin_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir("/")
    engine = Engine.from_source(_SHADOW_POLICY, [_SHADOW_MANIFEST])
    assert engine.manifest("reader") is not None and engine.manifest("reader").plugin_path is None  # type: ignore[union-attr]
    for resource in ("/etc/shadow", "etc/shadow", "/", "/reader"):
        assert not engine.decide("reader", "file:read", resource).allowed
    assert any("no directory" in p.message for p in engine.problems)
    mapped = Engine.from_source(_SHADOW_POLICY, [{"name": "reader", "version": "1.0.0", "type": "agent",
                                                  "entry_point": "m:C", "permissions": ["file:read"]}])
    assert not mapped.decide("reader", "file:read", "/etc/shadow").allowed


def test_from_source_takes_plugin_directories_explicitly(tmp_path: Path) -> None:
    engine = Engine.from_source(_SHADOW_POLICY, [_SHADOW_MANIFEST], plugin_paths={"reader": tmp_path})
    assert engine.decide("reader", "file:read", str(tmp_path / "data.txt")).allowed
    assert engine.decide("reader", "file:read", "data.txt").allowed  # relative to its directory
    assert not engine.decide("reader", "file:read", "/etc/shadow").allowed


def test_a_pinned_plugin_without_a_directory_does_not_match_its_pin() -> None:
    policy = _SHADOW_POLICY + f'trust plugin "reader" sha256-v2 "{"0" * 64}"\n'
    engine = Engine.from_source(policy + 'allow plugin * to hook:register when plugin.trusted\n',
                                [_SHADOW_MANIFEST])
    assert not engine.decide("reader", "hook:register").allowed


def test_matches_uses_the_languages_globs_not_fnmatch() -> None:
    engine = Engine.from_source(
        'allow plugin * to config:read when context.path matches "/srv/*"\n'
        'allow plugin * to config:write when plugin.name matches "core-[ab]"\n',
        [manifest("core-a", ["config:read", "config:write"])])
    assert engine.decide("core-a", "config:read", "x", {"path": "/srv/a"}).allowed
    assert not engine.decide("core-a", "config:read", "x", {"path": "/srv/a/b"}).allowed  # fnmatch: allowed
    assert not engine.decide("core-a", "config:write", "x").allowed  # fnmatch: `[ab]` matched `a`


def test_network_ranges_in_manifests_and_rules() -> None:
    engine = Engine.from_source(
        'allow plugin * to network:request on "10.0.0.0/8:8000-8999"\n',
        [manifest("p", ["network:request 10.1.0.0/16:8000-8100"])])
    assert engine.decide("p", "network:request", "10.1.2.3:8080").allowed
    assert not engine.decide("p", "network:request", "10.1.2.3:8200").allowed  # not declared
    assert not engine.decide("p", "network:request", "10.2.0.1:8080").allowed
