"""``decide``'s fast path answers exactly as its general path and as the reference.

- the fast path (an open plugin and an entry it has) against ``DecisionTable._decide_general``
  and ``tests/reference.py`` on random policies using every pattern feature: ``?``, several
  ``*`` in a segment, ``**`` anywhere, port ranges, CIDR ranges, IPv6, names with inner ``*``;
- nothing is compiled from a policy or a manifest: building and deciding never call
  ``compile``, ``exec`` or ``eval``, with quotes, backslashes, newlines, NUL, braces and
  U+2028 in patterns, resources and names;
- the pieces: the fast ``Decision`` and ``HostPort`` constructors, the host fast paths (URLs,
  bracketed IPv6), the host matchers, the implicit-read test shared by every plugin;
- concurrent reload while the uncached fast path decides.
"""

from __future__ import annotations

import builtins
import dataclasses
import gc
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_engine import Engine
from policy_engine import matchers as matchers_module
from policy_engine import patterns as patterns_module
from policy_engine.decision import Decision, Reason, fast_decision, make_decision
from policy_engine.implicit import implicit_reads
from policy_engine.matchers import matcher
from policy_engine.patterns import HostPort, compile_pattern, normalize_host_text
from policy_engine.permissions import ResourceKind
from policy_engine.table import _ACTION_INDEX, _UNBUILT, _implicit
from tests.reference import reference_decide
from tests.test_fast_paths import _full_host, _manifest, _plugin_manifest, _same

_PLUGINS = ["p", "q", "r-1"]
_ACTIONS = ["file:read", "file:write", "network:request", "database:read", "hook:register"]
_PATTERNS = {
    "file": ['"/srv/**"', '"/srv/*"', '"/srv/a/x.csv"', '"{plugin_dir}/**"', '"/srv/**/b*"', '"/*/a?"',
             '"/srv/*a*b/**"', '"/**/k*"', '"/srv/?/*.csv"', '"/srv/**/x/**/y"', '"/etc/**"', '"/**"'],
    "network": ['"api.example.com:443"', '"*.example.com"', '"*"', '"[2001:db8::1]:443"', '"10.0.0.1"',
                '"*:8000-9000"', '"10.0.0.0/8"', '"fd00::/8"', '"*.example.com:443"', '"api.example.com:80-90"',
                '"[::1]"'],
    "name": ['"db.*"', '"*.secret"', '"a*b*c"', '"plain"', '"*"', '"x*"'],
}
_SCOPES = {
    "file": ["/srv/**", "{plugin_dir}/**", "/etc/**", "/srv/a/*", "/srv/*/x*"],
    "network": ["api.example.com:443", '"*.example.com"', "10.0.0.0/8", "[2001:db8::1]:443", '"*:8000-9000"'],
    "name": ["db.*", "plain", '"*"', "x.secret", '"a*c"'],
}
_RESOURCES = {
    "file": ["/srv/a/x.csv", "/srv/b", "/etc/passwd", "/srv/a/../../etc/x", "rel/x", "", "/srv/q/bb",
             "/srv/z/a/b1", "/x/ab", "/srv/a", "/srv/1/x.csv", "/srv/xayb/q", "/q/k1", "/srv/x/x/y",
             "/srv//a/./x.csv", "/srv/a/", "/srv/a\0b", "/srv/a\u2028b", '/srv/"q\\{x}',
             # long enough (256 characters on) for the long-path searches of the normalisation
             "/srv/" + "d/" * 150 + "../" * 3 + "x.csv", "/srv/" + "a" * 300 + "/x.csv",
             "/srv/a/" + "x." * 200 + "/../../etc/x", "/srv/a/" + "b" * 300 + "//./k1"],
    "network": ["api.example.com:443", "API.example.com.:443", "https://a.example.com/x", "[2001:db8::1]:443",
                "10.0.0.1:80", "0x0a.0.0.1:80", "bad host", "x.evil.test", "http://api.example.com:85/",
                "https://api.example.com:0443/?a@b", "[::ffff:10.1.2.3]:8080", "[FD00::1]:9000", "h:8500",
                "wss://x.example.com", "ftp://10.2.3.4/", "[2001:db8::1%eth0]:443", "https://h:99999/"],
    "name": ["db.x", "plain", "a.secret", "abc", "aXbYc", "", " ", "x\0y", "x\u2028", "db.\\n"],
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


@st.composite
def _manifests(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for name in _PLUGINS:
        permissions = []
        for action in draw(st.lists(st.sampled_from(_ACTIONS), min_size=2, max_size=5, unique=True)):
            scope = draw(st.sampled_from(["", "", *_SCOPES[_family(action)]]))
            permissions.append(f"{action} {scope}".strip())
        out.append({"name": name, "version": "1.0.0", "type": draw(st.sampled_from(["agent", "hook"])),
                    "entry_point": "m:P", "permissions": permissions, "plugin_path": f"/srv/{name}",
                    "enabled": draw(st.sampled_from([True, True, True, False]))})
    return out


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, str | None, dict[str, Any] | None]:
    plugin = draw(st.sampled_from([*_PLUGINS, *_PLUGINS, "ghost"]))
    action = draw(st.sampled_from([*_ACTIONS, *_ACTIONS, "file:raed", "config:write"]))
    resource = draw(st.one_of(st.none(), st.sampled_from(_RESOURCES[_family(action)])))
    context = draw(st.sampled_from([None, {}, {"env": "prod"}, {"env": "dev", "level": 3}, {"level": True},
                                    {"n": 3}]))
    return plugin, action, resource, context


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rules(), min_size=3, max_size=12), _manifests(), st.lists(_requests(), min_size=1, max_size=30))
def test_the_fast_path_agrees_with_the_general_path_and_the_reference(
        rules: list[str], manifests: list[dict[str, Any]], requests: list[Any]) -> None:
    loaded = [_plugin_manifest(m) for m in manifests]
    engine = Engine.from_source("\n".join(rules), loaded, cache_size=0)
    cached = Engine.from_source("\n".join(rules), loaded, cache_size=64)
    table = engine._state.table
    for request in requests + requests:
        want = reference_decide(table, *request)
        got = table.decide(*request)
        _same(got, want)
        _same(table._decide_general(*request), want)
        _same(cached.decide(*request), got)
        assert got.revision == table.revision


def test_odd_argument_types_take_the_general_path_and_still_agree() -> None:
    class Text(str):
        pass

    engine = Engine.from_source('allow plugin * to file:read on "/srv/**"\ndeny plugin * to file:read on "/srv/x/**"',
                                [_plugin_manifest({"name": "p", "version": "1.0.0", "type": "agent",
                                                   "entry_point": "m:P", "permissions": ["file:read"],
                                                   "plugin_path": "/srv/p"})], cache_size=0)
    table = engine._state.table
    for resource in (Text("/srv/a"), 7, ["/srv/a"], b"/srv/a", None):
        for action in ("file:read", Text("file:read"), ["file:read"]):
            got = table.decide("p", action, resource)  # type: ignore[arg-type]
            want = reference_decide(table, "p", action, resource)  # type: ignore[arg-type]
            assert (got.allowed, got.reason, got.errors) == (want.allowed, want.reason, want.errors)
    # A str subclass is matched as the text it holds, by the deny rules too.
    assert table.decide("p", "file:read", Text("/srv/x/y")).reason is Reason.DENIED_BY_RULE
    assert table.decide("p", "file:read", Text("/srv/a")).reason is Reason.ALLOWED


# ----------------------------------------------------------------------------- nothing is compiled

_ODD = ['q"uote', "back\\slash", "new\nline", "nul\0", "{braces}", "line\u2028sep", "'single'", "%s%(x)r"]
#: A host variable whose value holds braces, quotes and a backslash: filled into patterns.
_VARIABLES = {"braces": "}{'\"\\x{plugin}"}


def _policy_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_building_and_deciding_compile_no_source_from_policies_or_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_compile, real_exec, real_eval = builtins.compile, builtins.exec, builtins.eval

    def spy(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(*args, **kwargs)
        return wrapper

    rules = []
    for odd in _ODD:
        if "\0" in odd or "\n" in odd:
            continue  # the policy language refuses them in a pattern; requests still carry them below
        rules.append(f"allow plugin * to config:read on {_policy_string('cfg.' + odd + '*')}")
        rules.append(f"deny plugin * to file:read on {_policy_string('/srv/' + odd + '/**')}")
    source = "\n".join(rules) + '\nallow plugin * to file:read on "/srv/**"'
    manifest = _plugin_manifest({"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "m:P",
                                 "permissions": ["file:read", "config:read"], "plugin_path": "/srv/p"})
    monkeypatch.setattr(builtins, "compile", spy("compile", real_compile))
    monkeypatch.setattr(builtins, "exec", spy("exec", real_exec))
    monkeypatch.setattr(builtins, "eval", spy("eval", real_eval))
    engine = Engine.from_source(source, [manifest], _VARIABLES, cache_size=0)
    table = engine._state.table
    for odd in [*_ODD, _VARIABLES["braces"].replace("{plugin}", "p")]:
        for request in (("p", "config:read", "cfg." + odd + "x"), ("p", "file:read", "/srv/" + odd + "/k"),
                        ("p", "file:read", "/srv/ok/" + odd), (odd, "file:read", "/srv/x"), ("p", odd, "/srv/x")):
            _same(table.decide(*request), reference_decide(table, *request))
    monkeypatch.undo()
    assert calls == []
    assert engine.decide("p", "config:read", "cfg.q\"uotex").allowed
    assert engine.decide("p", "file:read", "/srv/line\u2028sep/k").reason is Reason.DENIED_BY_RULE
    assert engine.decide("p", "file:read", "/srv/}{'\"\\xp/k").reason is Reason.DENIED_BY_RULE
    assert engine.decide("p", "file:read", "/srv/{braces}/k").reason is Reason.ALLOWED


# ----------------------------------------------------------------------------- the pieces


def test_the_fast_constructors_build_ordinary_frozen_objects() -> None:
    got = fast_decision(True, Reason.ALLOWED, "p", "a", "r", (), ("e",), 7)
    want = Decision(True, Reason.ALLOWED, "p", "a", "r", errors=("e",), revision=7)
    assert type(got) is Decision and got == want and repr(got) == repr(want) and got.revision == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.allowed = False  # type: ignore[misc]
    made = make_decision(False, Reason.UNTRUSTED, "p", "a", None, (), (), "detail", ("s",), 3, lambda: ("x",))
    assert made == Decision(False, Reason.UNTRUSTED, "p", "a", None, detail="detail", suggestions=("s",))
    assert made.hints()[:2] == ("s", "x") and made.revision == 3
    host = patterns_module._host_port("h", 1)
    assert type(host) is HostPort and host == HostPort("h", 1) and hash(host) == hash(HostPort("h", 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.port = 2  # type: ignore[misc]


def _outcome(function: Any, *args: Any) -> Any:
    try:
        return ("ok", function(*args))
    except Exception as exc:  # noqa: BLE001 - the outcome is compared, whatever it is
        return ("error", type(exc).__name__, str(exc))


_url = st.builds(
    lambda scheme, host, port, rest: f"{scheme}://{host}{port}{rest}",
    st.sampled_from(["https", "http", "wss", "ws", "ftp", "HTTPS", "gopher", "h"]),
    st.sampled_from(["a.example.com", "A.b", "x_y-1.test", "a..b", "1.2.3.4", "a.1", "h", "u@h", "[::1]",
                     "a.b.", "", "é.de", "0x7f.1", "a.b:1:2"]),
    st.sampled_from(["", ":443", ":0", ":0443", ":65535", ":65536", ":99999", ":", ":x", ":8080"]),
    st.sampled_from(["", "/", "/x?q=1", "?a@b", "#frag", "/a b", "/\x7f", "/é", "/\t", "/[x]", "@evil.com",
                     "/x\0", "x"]),
)
_bracketed = st.builds(
    lambda host, port: f"[{host}]{port}",
    st.sampled_from(["::1", "2001:db8::1", "2001:DB8::1", "::ffff:10.1.2.3", "fe80::1%eth0", "1.2.3.4", "zz::1",
                     "::", "2001:0db8:0000::0001", ""]),
    st.sampled_from(["", ":443", ":0", ":65536", ":x", "x", ":08080"]),
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_url, _bracketed))
def test_the_url_and_ipv6_fast_paths_answer_as_the_full_normalisation(host: str) -> None:
    fast = _outcome(patterns_module.normalize, ResourceKind.HOST, host)
    assert fast == _outcome(_full_host, host)
    text = _outcome(normalize_host_text, host)
    if fast[0] == "ok":
        assert text == ("ok", (fast[1], str(fast[1])))
    else:
        assert text == fast


_host_glob = st.sampled_from(["api.example.com:443", "*.example.com", "*", "*:443", "*:8000-9000", "10.0.0.1",
                              "10.0.0.0/8", "[2001:db8::1]:443", "fd00::/8", "*.example.com:80-90", "h:1-65535"])
_host_resource = st.sampled_from(["api.example.com:443", "api.example.com", "x.example.com:85", "example.com:443",
                                  "10.0.0.1:80", "10.9.9.9", "[2001:db8::1]:443", "[fd00::5]:9000", "h:8500",
                                  "h:80"])


@settings(max_examples=400, deadline=None)
@given(_host_glob, _host_resource)
def test_host_matchers_agree_with_the_pattern(glob: str, resource: str) -> None:
    pattern = compile_pattern(ResourceKind.HOST, glob)
    normal, _ = normalize_host_text(resource)
    assert matcher(pattern)(normal) is pattern.matches(normal)
    assert matcher(pattern)("/a") is False


def test_the_matchers_know_the_modes_of_the_patterns() -> None:
    for name in ("_LITERAL", "_ALL", "_PREFIX", "_CHILD", "_SUFFIX", "_REGEX", "_CIDR"):
        assert getattr(matchers_module, name) == getattr(patterns_module, name), name


_implicit_path = st.lists(st.sampled_from(["srv", "p", "pkg", "m.py", "data.csv", "usr", "lib", "etc",
                                           "ld.so.cache", "dev", "null", "proc", "self", "x.so", "sub"]),
                          max_size=5).map(lambda parts: "/" + "/".join(parts))


def test_the_shared_implicit_reads_answer_as_each_plugin_s_list(tmp_path: Path) -> None:
    plugin_dir = tmp_path / "p"
    (plugin_dir / "pkg" / "sub").mkdir(parents=True)
    (plugin_dir / "pkg" / "m.py").write_text("", encoding="utf-8")
    (plugin_dir / "data.csv").write_text("", encoding="utf-8")
    for base in (str(plugin_dir), str(plugin_dir) + "/", str(tmp_path) + "/./p", "/"):
        listed = implicit_reads(base)
        code_dir = listed.plugin_dir
        paths = [str(plugin_dir), str(plugin_dir / "pkg"), str(plugin_dir / "pkg" / "sub"), str(plugin_dir / "x.so"),
                 str(plugin_dir / "pkg" / "m.py"), str(plugin_dir / "data.csv"), str(plugin_dir) + "x",
                 str(tmp_path), "/usr/lib/x", "/usr/libx", "/etc/ld.so.cache", "/etc/passwd", "/dev/null", "/",
                 "/proc/self/status", "/proc/1"]
        for path in paths:
            assert _implicit(code_dir, path) is listed.covers(path), (base, path)


@settings(max_examples=300, deadline=None)
@given(_implicit_path)
def test_the_shared_implicit_reads_answer_as_the_list_on_random_paths(path: str) -> None:
    listed = implicit_reads("/srv/p")
    assert _implicit(listed.plugin_dir, path) is listed.covers(path)


# ----------------------------------------------------------------------------- concurrency


def test_the_uncached_fast_path_stays_consistent_under_concurrent_reload(tmp_path: Path) -> None:
    policies, plugins = tmp_path / "policies", tmp_path / "plugins"
    policies.mkdir()
    (plugins / "p").mkdir(parents=True)
    (plugins / "p" / "plugin.yaml").write_text(
        "name: p\nversion: 1.0.0\ntype: agent\nentry_point: m:P\npermissions: [hook:register, config:read]\n",
        encoding="utf-8")
    allow = 'allow plugin * to hook:register on "a.*"\nallow plugin * to config:read\n'
    deny = 'deny plugin * to hook:register on "a.*"\nallow plugin * to config:read\n'
    (policies / "a.policy").write_text(allow, encoding="utf-8")
    engine = Engine.load(policies, plugins, cache_size=0)
    stop = threading.Event()
    broken: list[Decision] = []
    revisions: list[tuple[int, bool]] = []

    def ask() -> None:
        while not stop.is_set():
            decision = engine.decide("p", "hook:register", "a.b")
            revisions.append((decision.revision, decision.allowed))
            if decision.reason not in (Reason.ALLOWED, Reason.DENIED_BY_RULE) or \
                    not engine.decide("p", "config:read", "k").allowed:
                broken.append(decision)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    allowed_at: dict[int, bool] = {engine.revision: True}
    try:
        for round_ in range(6):
            (policies / "a.policy").write_text(deny if round_ % 2 == 0 else allow, encoding="utf-8")
            engine.reload()
            allowed_at[engine.revision] = round_ % 2 == 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert broken == []
    # Every answer is the one of the revision it carries.
    assert all(allowed_at[revision] is allowed for revision, allowed in revisions if revision in allowed_at)


_any_path_glob = st.sampled_from(["/srv/**", "/srv", "/srv/a", "/etc/**", "/srv/a/**", "/srv/*", "/**", "/srv/**/b*",
                                  "/s?v/**", "/srv/a?"])
_any_name_glob = st.sampled_from(["db.*", "*.secret", "plain", "db", "*", "a*b", "x*", "*x", "db.x"])
_any_path = st.sampled_from(["/srv", "/srv/a", "/srv/a/b", "/srvx", "/etc", "/etc/x", "/srv/ab", "/", "/s/v"])
_any_name = st.sampled_from(["db.x", "db.", "db", "a.secret", "plain", "plainx", "ab", "x", "xx", "a.x"])


#: A kind, some patterns of it and a resource of it.
_path_or_name_case = st.one_of(
    st.tuples(st.just(ResourceKind.PATH), st.lists(_any_path_glob, min_size=1, max_size=5), _any_path),
    st.tuples(st.just(ResourceKind.NAME), st.lists(_any_name_glob, min_size=1, max_size=5), _any_name))


@settings(max_examples=500, deadline=None)
@given(_path_or_name_case)
def test_a_fused_any_of_agrees_with_the_patterns(case: tuple[ResourceKind, list[str], str]) -> None:
    kind, globs, resource = case
    patterns = [compile_pattern(kind, g) for g in globs]
    combined = matchers_module.any_matcher(patterns)
    assert combined(resource) is any(p.matches(resource) for p in patterns)
    assert combined(HostPort("srv")) is False


@settings(max_examples=500, deadline=None)
@given(_path_or_name_case)
def test_patterns_tested_in_line_agree_with_the_patterns(case: tuple[ResourceKind, list[str], str]) -> None:
    kind, globs, resource = case
    patterns = [compile_pattern(kind, g) for g in globs]
    shape = matchers_module.prefix_shape(patterns)
    if shape is None:
        assert not any(getattr(p, "_mode", None) in (0, 2) for p in patterns if kind is ResourceKind.NAME)
        return  # no pattern is one comparison: the rule keeps its predicate
    starts, exact, rest = shape
    in_line = resource.startswith(starts) or resource in exact or (rest is not None and rest(resource))
    assert in_line is any(p.matches(resource) for p in patterns)


def test_the_commonest_patterns_are_tested_in_line() -> None:
    shapes = {glob: matchers_module.prefix_shape([compile_pattern(kind, glob)]) for kind, glob in (
        (ResourceKind.PATH, "/srv/a/**"), (ResourceKind.PATH, "/srv/a"), (ResourceKind.NAME, "db.*"),
        (ResourceKind.NAME, "plain"), (ResourceKind.PATH, "/srv/*"), (ResourceKind.NAME, "*.x"))}
    assert shapes == {"/srv/a/**": ("/srv/a/", ("/srv/a",), None), "/srv/a": ((), ("/srv/a",), None),
                      "db.*": ("db.", (), None), "plain": ((), ("plain",), None), "/srv/*": None, "*.x": None}
    # The benchmark's first rule: a prefix in line, the glob left to its predicate.
    patterns = [compile_pattern(ResourceKind.PATH, "/srv/p/**"), compile_pattern(ResourceKind.PATH, "/srv/s/*.csv")]
    starts, exact, rest = matchers_module.prefix_shape(patterns) or ((), (), None)
    assert (starts, exact) == ("/srv/p/", ("/srv/p",)) and rest is not None and rest("/srv/s/x.csv")


_any_host_glob = st.sampled_from(["api.example.com", "api.example.com:443", "*.example.com", "*.example.com:443",
                                  "*.example.com:80", "example.com:80", "10.0.0.1", "10.0.0.0/8", "[fd00::1]",
                                  "[fd00::1]:443", "*", "*:443", "api.example.com:1-1024", "*.evil.test"])
_any_host = st.sampled_from(["api.example.com", "api.example.com:443", "api.example.com:80", "x.example.com:443",
                             "example.com:80", "example.com", "10.0.0.1:22", "10.1.2.3", "[fd00::1]:443",
                             "[fd00::1]", "a.evil.test:443", "evil.test", "other.test:8080"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_any_host_glob, min_size=1, max_size=6), _any_host)
def test_a_fused_any_of_hosts_agrees_with_the_patterns(globs: list[str], host: str) -> None:
    patterns = [compile_pattern(ResourceKind.HOST, g) for g in globs]
    combined = matchers_module.any_matcher(patterns)
    resource = normalize_host_text(host)[0]
    assert combined(resource) is any(p.matches(resource) for p in patterns)
    assert combined("/srv") is False


@settings(max_examples=500, deadline=None)
@given(st.lists(_any_host_glob, min_size=1, max_size=6), _any_host)
def test_host_patterns_tested_in_line_agree_with_the_patterns(globs: list[str], host: str) -> None:
    patterns = [compile_pattern(ResourceKind.HOST, g) for g in globs]
    shape = matchers_module.host_shape(patterns)
    resource, text = normalize_host_text(host)
    if shape is None:
        return  # no pattern names one host: the rule keeps its predicate
    starts, exact, rest = shape
    in_line = text.startswith(starts) or text in exact or (rest is not None and rest(resource))
    assert in_line is any(p.matches(resource) for p in patterns)


def test_a_named_host_is_tested_in_line_on_the_request_s_text() -> None:
    shape = matchers_module.host_shape([compile_pattern(ResourceKind.HOST, g) for g in (
        "api.example.com:443", "[2001:db8::1]:443", "h.test", "*.svc.example.com", "10.0.0.0/8")])
    assert shape is not None
    starts, exact, rest = shape
    assert starts == "h.test:" and exact == ("api.example.com:443", "[2001:db8::1]:443", "h.test")
    assert rest is not None and rest(HostPort("a.svc.example.com", 80)) and not rest(HostPort("h.test", 1))


def test_the_directory_test_of_the_implicit_reads_answers_as_isdir(tmp_path: Path) -> None:
    from policy_engine.implicit import is_directory as _is_directory

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "f.txt").write_text("", encoding="utf-8")
    (tmp_path / "to-d").symlink_to(tmp_path / "d")
    (tmp_path / "to-f").symlink_to(tmp_path / "f.txt")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "closed").mkdir(mode=0)
    # Near the kernel's limit of 4,095 bytes: ASCII, and characters of several bytes.
    deep = tmp_path
    while len(str(deep)) < 3800:
        deep = deep / ("x" * 200)
    deep.mkdir(parents=True)
    wide = tmp_path / ("é" * 100)
    wide.mkdir()
    paths = [tmp_path / name for name in ("d", "d/e", "f.txt", "to-d", "to-d/e", "to-f", "dangling", "loop",
                                          "closed", "missing", "f.txt/x", "d/missing")]
    paths += [deep, wide]
    texts = [str(p) for p in paths] + ["/", "/proc/self", "/dev/null"]
    texts += [str(deep) + "/" + "y" * (size - len(str(deep)) - 1) for size in (4093, 4094, 4095, 4096)]
    texts += [str(wide) + "/" + "é" * 600, "/" + "é" * 1100]
    for text in texts:
        assert _is_directory(text) is os.path.isdir(text), text


# ----------------------------------------------------------------------------- the collector

_GC_POLICY = 'allow plugin "p" to file:read on "/srv/**"\n'


def test_a_build_moves_its_objects_out_of_the_collector_s_sight() -> None:
    gc.unfreeze()
    engine = Engine.from_source(_GC_POLICY, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))],
                                freeze_collector=True)
    assert gc.get_freeze_count() > 0
    table = engine.plugin_table("p")
    assert not any(item is table for item in gc.get_objects())  # frozen objects are never scanned
    assert engine.decide("p", "file:read", "/srv/x").allowed
    gc.unfreeze()
    Engine.from_source(_GC_POLICY, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))])
    assert gc.get_freeze_count() == 0  # the default leaves the collector alone


def test_a_build_moves_its_objects_to_the_oldest_generation_unscanned() -> None:
    gc.unfreeze()
    engine = Engine.from_source(_GC_POLICY, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))])
    table = engine.plugin_table("p")
    assert any(item is table for item in gc.get_objects(2))
    assert not any(item is table for item in (*gc.get_objects(0), *gc.get_objects(1)))
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_a_build_leaves_the_host_s_frozen_objects_frozen() -> None:
    gc.unfreeze()
    kept = [[index] for index in range(100)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        Engine.from_source(_GC_POLICY, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))])
        assert gc.get_freeze_count() == frozen  # not released by an unfreeze
        assert not any(item is kept[0] for item in gc.get_objects())
    finally:
        gc.unfreeze()


def test_a_build_collects_the_host_s_young_garbage_before_it_promotes() -> None:
    class Node:
        pass

    gc.unfreeze()
    node = Node()
    node.self = node  # type: ignore[attr-defined]
    gone = weakref.ref(node)
    del node
    Engine.from_source(_GC_POLICY, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))])
    assert gone() is None  # not promoted to wait for a full collection


def test_a_build_frees_the_process_s_cyclic_garbage_before_it_freezes() -> None:
    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]
    gone = weakref.ref(node)
    del node
    Engine.from_source(_GC_POLICY, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))],
                       freeze_collector=True)
    assert gone() is None
    gc.unfreeze()


def test_builds_and_reloads_leave_no_cyclic_garbage_for_a_freeze_to_keep() -> None:
    gc.collect()
    gc.disable()
    try:
        policy = {"a.policy": _GC_POLICY}
        engine = Engine.from_source(policy, [_plugin_manifest(_manifest("p", ["file:read /srv/**"]))],
                                    freeze_collector=False)
        for round_ in range(3):
            policy = {"a.policy": _GC_POLICY + f'allow plugin "p" to config:read on "x{round_}"\n'}
            engine.reload(policy)
            assert engine.decide("p", "file:read", "/srv/x").allowed
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_plain_entry_decided_in_line_names_every_rule_that_matches() -> None:
    manifest = _plugin_manifest({"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "m:P",
                                 "permissions": ["file:read /srv/**", "database:read"], "plugin_path": "/srv/p"})
    source = "\n".join([
        'allow plugin * to file:read on "/srv/**"', 'allow plugin "p" to file:read on "/srv/a/**"',
        'deny plugin * to file:read on "/srv/a/secret/**"', 'deny plugin "p" to file:read on "/srv/*/secret/x"',
        'allow plugin "p" to database:read on "db.*"',
        'deny plugin "p" to database:read on "db.secret*" when context.env == "prod"'])
    table = Engine.from_source(source, [manifest], cache_size=0)._state.table
    records = table._open["p"]
    assert records[_ACTION_INDEX["file:read"]] is _UNBUILT and records[_ACTION_INDEX["config:read"]] is None
    table.decide("p", "file:read", "/srv/x")
    table.decide("p", "database:read", "db.x")
    records = table._open["p"]  # a copy with the two records made, also kept by the plugin's table
    assert table.plugins["p"]._records is records
    read, database = records[_ACTION_INDEX["file:read"]], records[_ACTION_INDEX["database:read"]]
    assert read is not None and read[0] is True  # plain: decided in `decide` itself
    assert database is not None and database[0] is False  # a condition: `_run`
    for request in (("p", "file:read", "/srv/a/secret/x"), ("p", "file:read", "/srv/a/b"), ("p", "file:read", "/srv/b"),
                    ("p", "file:read", "/etc/x"), ("p", "file:read", "/srv/a/secret"),
                    ("p", "database:read", "db.secret_keys"), ("p", "database:read", "db.x")):
        for context in (None, {"env": "prod"}):
            _same(table.decide(*request, context), reference_decide(table, *request, context))
    blocked = table.decide("p", "file:read", "/srv/a/secret/x")
    assert blocked.reason is Reason.DENIED_BY_RULE and sorted(r.line for r in blocked.rules) == [3, 4]
    granted = table.decide("p", "file:read", "/srv/a/b")
    assert granted.allowed and sorted(r.line for r in granted.rules) == [1, 2]
    assert table.decide("p", "database:read", "db.secret_keys", {"env": "prod"}).reason is Reason.DENIED_BY_RULE
