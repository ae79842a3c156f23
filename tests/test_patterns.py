"""Tests of resource normalisation and resource patterns."""

from __future__ import annotations

import fnmatch
import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine.patterns import (
    HostPattern,
    HostPort,
    InvalidResourceError,
    NamePattern,
    PathPattern,
    PatternError,
    compile_pattern,
    normalize,
)
from policy_engine.permissions import ResourceKind

PATH, HOST, NAME = ResourceKind.PATH, ResourceKind.HOST, ResourceKind.NAME


def path_matches(pattern: str, resource: str, *, base_dir: str | None = None) -> bool:
    return compile_pattern(PATH, pattern).matches(normalize(PATH, resource, base_dir=base_dir))


def host_matches(pattern: str, resource: str) -> bool:
    return compile_pattern(HOST, pattern).matches(normalize(HOST, resource))


def name_matches(pattern: str, resource: str) -> bool:
    return compile_pattern(NAME, pattern).matches(normalize(NAME, resource))


# --------------------------------------------------------------------------- path normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/srv/data/x.txt", "/srv/data/x.txt"),
        ("/srv/data/x/../../etc/passwd", "/srv/etc/passwd"),
        ("/srv/data/x/../../../etc/passwd", "/etc/passwd"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/..", "/"),
        ("/", "/"),
        ("//", "/"),
        ("//srv//data/", "/srv/data"),
        ("///srv", "/srv"),
        ("/srv/./data/.", "/srv/data"),
        ("/srv/data/", "/srv/data"),
        ("/srv/data/..", "/srv"),
        ("/srv/...", "/srv/..."),
        ("/srv/.hidden", "/srv/.hidden"),
        ("/srv/a b/new\nline", "/srv/a b/new\nline"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize(PATH, raw) == expected


@pytest.mark.parametrize(
    ("raw", "base_dir", "expected"),
    [
        ("data/x.txt", "/plugins/p", "/plugins/p/data/x.txt"),
        ("./x", "/plugins/p", "/plugins/p/x"),
        ("../../../../etc", "/plugins/p", "/etc"),
        ("x", "/plugins/p/", "/plugins/p/x"),
        ("x", "//plugins", "/plugins/x"),
        (".", "/plugins/p", "/plugins/p"),
        ("/abs", "/plugins/p", "/abs"),
    ],
)
def test_normalize_relative_path(raw: str, base_dir: str, expected: str) -> None:
    assert normalize(PATH, raw, base_dir=base_dir) == expected


@pytest.mark.parametrize(
    ("raw", "base_dir"),
    [
        ("", None),
        ("", "/plugins"),
        ("relative", None),
        ("relative", "also/relative"),
        ("relative", "/bad\0base"),
        ("/srv/\0x", None),
        ("x\0", "/plugins"),
    ],
)
def test_normalize_path_rejects(raw: str, base_dir: str | None) -> None:
    with pytest.raises(InvalidResourceError):
        normalize(PATH, raw, base_dir=base_dir)


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(InvalidResourceError):
        normalize(PATH, b"/srv")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- path patterns


@pytest.mark.parametrize(
    ("pattern", "resource", "expected"),
    [
        # `**` matches zero or more whole segments
        ("/srv/data/**", "/srv/data", True),
        ("/srv/data/**", "/srv/data/x", True),
        ("/srv/data/**", "/srv/data/x/y/z", True),
        ("/srv/data/**", "/srv/database", False),
        ("/srv/data/**", "/srv", False),
        ("/srv/data/**", "/srv/dat", False),
        ("/srv/**/x.txt", "/srv/x.txt", True),
        ("/srv/**/x.txt", "/srv/a/b/x.txt", True),
        ("/srv/**/x.txt", "/srv/a/b/y.txt", False),
        ("/srv/**/x.txt", "/srvx.txt", False),
        ("/**/x.txt", "/x.txt", True),
        ("/**/x.txt", "/a/x.txt", True),
        ("/**/*.py", "/a/b/c.py", True),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/srv/**/**", "/srv", True),
        ("/srv/**/data/**", "/srv/data", True),
        ("/srv/**/data/**", "/srv/a/data/b", True),
        ("/srv/**/data/**", "/srv/a/datum/b", False),
        # `*` stays within a segment
        ("/srv/data/*", "/srv/data/x", True),
        ("/srv/data/*", "/srv/data", False),
        ("/srv/data/*", "/srv/data/x/y", False),
        ("/srv/data/*", "/srv/datax", False),
        ("/srv/*.csv", "/srv/a.csv", True),
        ("/srv/*.csv", "/srv/.csv", True),
        ("/srv/*.csv", "/srv/a/b.csv", False),
        ("/srv/*/x", "/srv/a/x", True),
        ("/srv/*/x", "/srv/x", False),
        ("/*", "/srv", True),
        ("/*", "/", False),
        ("/*", "/srv/x", False),
        ("/*/**", "/", False),
        ("/*/**", "/srv", True),
        ("/**/*", "/", False),
        ("/**/*", "/srv/x", True),
        ("/srv/*/**", "/srv", False),
        ("/srv/**/*", "/srv", False),
        ("/srv/**/*", "/srv/x", True),
        ("/srv/a*b", "/srv/ab", True),
        ("/srv/a*b", "/srv/aXYb", True),
        ("/srv/a*b", "/srv/a/b", False),
        # `?` is one non-slash character
        ("/srv/?.txt", "/srv/a.txt", True),
        ("/srv/?.txt", "/srv/ab.txt", False),
        ("/srv/?.txt", "/srv/.txt", False),
        ("/srv/a?b", "/srv/a/b", False),
        # no character classes, no escaping: brackets and regex syntax are literal
        ("/srv/[ab].txt", "/srv/[ab].txt", True),
        ("/srv/[ab].txt", "/srv/a.txt", False),
        ("/srv/[ab]*", "/srv/[ab]x", True),
        ("/srv/a.c", "/srv/abc", False),
        ("/srv/(x)+*", "/srv/(x)+y", True),
        ("/srv/\\*", "/srv/\\x", True),
        # dot files are not special, newlines are ordinary characters
        ("/srv/*", "/srv/.env", True),
        ("/srv/**", "/srv/.git/config", True),
        ("/srv/*/x", "/srv/a\nb/x", True),
        ("/srv/**/x", "/srv/a\nb/c/x", True),
        # literals
        ("/srv/data/x.txt", "/srv/data/x.txt", True),
        ("/srv/data/x.txt", "/srv/data/x.txt2", False),
        ("/", "/", True),
        ("/", "/srv", False),
        # requests are normalised before matching
        ("/srv/data/**", "/srv/data/x/../../etc/passwd", False),
        ("/etc/passwd", "/srv/data/x/../../../etc/passwd", True),
        ("/srv/data/**", "/srv/data/../data/./x", True),
        ("/srv/data/**", "//srv//data/", True),
        # patterns are normalised too
        ("/srv//data/./**/", "/srv/data/x", True),
        ("//srv/x", "/srv/x", True),
        ("/srv/data/", "/srv/data", True),
        ("/srv/./*", "/srv/x", True),
        # matching is case-sensitive
        ("/srv/Data/**", "/srv/data/x", False),
    ],
)
def test_path_matching(pattern: str, resource: str, expected: bool) -> None:
    assert path_matches(pattern, resource) is expected


def test_relative_request_matches_against_plugin_directory() -> None:
    assert path_matches("/plugins/p/**", "data/x", base_dir="/plugins/p")
    assert not path_matches("/plugins/p/**", "../q/x", base_dir="/plugins/p")


@pytest.mark.parametrize(
    ("text", "canonical", "root", "literal", "overbroad"),
    [
        ("/srv/data/**", "/srv/data/**", "/srv/data", False, False),
        ("/srv/data/*", "/srv/data/*", "/srv/data", False, False),
        ("/srv/*.csv", "/srv/*.csv", "/srv", False, False),
        ("/srv/data/x.txt", "/srv/data/x.txt", "/srv/data/x.txt", True, False),
        ("/srv/a?c/x", "/srv/a?c/x", "/srv", False, False),
        ("/srv/**/x", "/srv/**/x", "/srv", False, False),
        ("//srv//data/./", "/srv/data", "/srv/data", True, False),
        ("/srv/**/**/x", "/srv/**/x", "/srv", False, False),
        ("/", "/", "/", True, False),
        ("/**", "/**", "/", False, True),
        ("/*", "/*", "/", False, True),
        ("/*/**", "/*/**", "/", False, True),
        ("/**/*", "/**/*", "/", False, True),
        ("/**/*.py", "/**/*.py", "/", False, False),
        ("/*/x", "/*/x", "/", False, False),
    ],
)
def test_path_pattern_properties(
    text: str, canonical: str, root: str, literal: bool, overbroad: bool
) -> None:
    pattern = compile_pattern(PATH, text)
    assert isinstance(pattern, PathPattern)
    assert pattern.kind is PATH
    assert pattern.text == text
    assert str(pattern) == text
    assert pattern.canonical == canonical
    assert pattern.landlock_root == root
    assert pattern.is_literal is literal
    assert pattern.is_overbroad is overbroad


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("", "empty", None),
        ("srv/data/**", "not absolute", "did you mean `/srv/data/**`?"),
        ("./srv", "not absolute", "did you mean `/srv`?"),
        ("~/data", "not absolute", "`~` is not expanded"),
        ("/srv/a**", "`**` must be a whole path segment", "`/srv/a*/**`"),
        ("/srv/**.csv", "`**` must be a whole path segment", "`/srv/**/*.csv`"),
        ("/srv/a**b/x", "`**` must be a whole path segment", "`/srv/a*/**/*b/x`"),
        ("/srv/***", "`**` must be a whole path segment", "`/srv/**`"),
        ("/srv/../etc", "`..`", "without `..`"),
        ("/..", "`..`", None),
        ("/srv/\0", "NUL", None),
    ],
)
def test_path_pattern_errors(text: str, message: str, hint: str | None) -> None:
    with pytest.raises(PatternError, match=message.replace("*", r"\*")) as info:
        compile_pattern(PATH, text)
    if hint is not None:
        assert info.value.hint is not None
        assert hint in info.value.hint
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- host normalisation


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        ("example.com", "example.com", None),
        ("example.com:443", "example.com", 443),
        ("Example.COM.", "example.com", None),
        ("EXAMPLE.com.:8080", "example.com", 8080),
        ("localhost:1", "localhost", 1),
        ("my_db:5432", "my_db", 5432),
        ("example.com:00080", "example.com", 80),
        ("x:65535", "x", 65535),
        # URLs: the scheme gives the default port, an explicit port wins
        ("https://api.example.com/x", "api.example.com", 443),
        ("http://api.example.com/x?y=1#z", "api.example.com", 80),
        ("https://api.example.com:8443/x", "api.example.com", 8443),
        ("HTTPS://API.Example.com", "api.example.com", 443),
        ("wss://stream.example.com", "stream.example.com", 443),
        ("https://user:secret@api.example.com/", "api.example.com", 443),
        ("gopher://old.example.com/", "old.example.com", None),
        ("https://[::1]:8443/x", "::1", 8443),
        ("http://[2001:DB8::1]/", "2001:db8::1", 80),
        # IPv6: brackets for a port, bare without one; spelled canonically
        ("[::1]:8443", "::1", 8443),
        ("[::1]", "::1", None),
        ("::1", "::1", None),
        ("2001:0DB8:0000::0001", "2001:db8::1", None),
        ("[0:0:0:0:0:0:0:1]:80", "::1", 80),
        # IPv4, including the spellings the C resolver accepts and IPv4-mapped IPv6
        ("127.0.0.1:80", "127.0.0.1", 80),
        ("127.1", "127.0.0.1", None),
        ("0x7f.0.0.1:80", "127.0.0.1", 80),
        ("2130706433", "127.0.0.1", None),
        ("127.0.0.1.", "127.0.0.1", None),
        ("[::ffff:127.0.0.1]:80", "127.0.0.1", 80),
        ("::ffff:7f00:1", "127.0.0.1", None),
        ("0xa.example.com", "0xa.example.com", None),
    ],
)
def test_normalize_host(raw: str, host: str, port: int | None) -> None:
    assert normalize(HOST, raw) == HostPort(host, port)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "exa mple.com",
        " example.com",
        "example.com\t",
        "example.com/path",
        "example.com:443/path",
        "exa\0mple.com",
        "exämple.com",
        "example..com",
        ".example.com",
        "example.com..",
        ".",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:99999999",
        "example.com:-1",
        "example.com:https",
        "example.com:*",
        "*.example.com",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[example.com]:80",
        "[::1]:0",
        "::g",
        ":80",
        "https://",
        "https:///path",
        "https://[::1/",
        "https://example.com:0/",
        "https://example.com:70000/",
        "https://exa$mple.com/",
        "ex@mple.com",
    ],
)
def test_normalize_host_rejects(raw: str) -> None:
    with pytest.raises(InvalidResourceError):
        normalize(HOST, raw)


def test_hostport_str() -> None:
    assert str(HostPort("example.com")) == "example.com"
    assert str(HostPort("example.com", 443)) == "example.com:443"
    assert str(HostPort("::1", 8443)) == "[::1]:8443"
    assert str(HostPort("::1")) == "[::1]"


# --------------------------------------------------------------------------- host patterns


@pytest.mark.parametrize(
    ("pattern", "resource", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com", "example.com:443", True),
        ("example.com", "https://example.com/x", True),
        ("example.com", "www.example.com", False),
        ("example.com:443", "example.com:443", True),
        ("example.com:443", "example.com:80", False),
        ("example.com:443", "example.com", False),
        ("example.com:443", "https://example.com/", True),
        ("example.com:443", "http://example.com/", False),
        ("example.com:*", "example.com:1234", True),
        ("example.com:*", "example.com", True),
        # case and the trailing dot are ignored on both sides
        ("EXAMPLE.com.", "example.COM:443", True),
        ("example.com", "Example.Com.", True),
        # `*.` matches subdomains at any depth but not the apex or look-alikes
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com:8443", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "a.badexample.com", False),
        ("*.example.com", "example.com.evil.org", False),
        ("*.example.com:443", "a.example.com:443", True),
        ("*.example.com:443", "a.example.com:80", False),
        ("*.example.com:443", "a.example.com", False),
        ("*.Example.COM.", "A.example.com", True),
        # `*` is any host
        ("*", "example.com", True),
        ("*", "[::1]:80", True),
        ("*", "10.0.0.1", True),
        ("*:*", "example.com:22", True),
        ("*:443", "anything.example:443", True),
        ("*:443", "anything.example:80", False),
        ("*:443", "anything.example", False),
        # addresses compare in canonical form
        ("127.0.0.1", "127.1", True),
        ("127.0.0.1", "[::ffff:127.0.0.1]:80", True),
        ("127.1:80", "127.0.0.1:80", True),
        ("::1", "[0::1]:80", True),
        ("[::1]:8443", "[::1]:8443", True),
        ("[::1]:8443", "[::2]:8443", False),
        ("::1", "localhost", False),
    ],
)
def test_host_matching(pattern: str, resource: str, expected: bool) -> None:
    assert host_matches(pattern, resource) is expected


@pytest.mark.parametrize(
    ("text", "canonical", "host_text", "port", "literal", "overbroad"),
    [
        ("example.com", "example.com", "example.com", None, False, False),
        ("example.com:443", "example.com:443", "example.com", 443, True, False),
        ("Example.COM.:*", "example.com", "example.com", None, False, False),
        ("*.example.com", "*.example.com", "*.example.com", None, False, False),
        ("*.example.com:443", "*.example.com:443", "*.example.com", 443, False, False),
        ("*", "*", "*", None, False, True),
        ("*:*", "*", "*", None, False, True),
        ("*:443", "*:443", "*", 443, False, False),
        ("[::1]:8443", "[::1]:8443", "::1", 8443, True, False),
        ("::1", "[::1]", "::1", None, False, False),
        ("127.1:80", "127.0.0.1:80", "127.0.0.1", 80, True, False),
    ],
)
def test_host_pattern_properties(
    text: str,
    canonical: str,
    host_text: str,
    port: int | None,
    literal: bool,
    overbroad: bool,
) -> None:
    pattern = compile_pattern(HOST, text)
    assert isinstance(pattern, HostPattern)
    assert pattern.kind is HOST
    assert pattern.text == text
    assert pattern.canonical == canonical
    assert pattern.host_text == host_text
    assert pattern.port == port
    assert pattern.is_literal is literal
    assert pattern.is_overbroad is overbroad


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", None),
        ("*example.com", "did you mean `*.example.com`?"),
        ("api.*.com", "first label"),
        ("api.example.*", "first label"),
        ("*.*.example.com", "did you mean `*.example.com`?"),
        ("a*.example.com", "first label"),
        ("**.example.com", "did you mean `*.example.com`?"),
        ("*.", None),
        ("*.127.0.0.1", "DNS names only"),
        ("*.0.1", "DNS names only"),
        ("[*]:80", None),
        ("example.com:0", "1-65535"),
        ("example.com:65536", "1-65535"),
        ("example.com:https", "`:443`"),
        ("example.com:", None),
        ("example com", None),
        ("example.com/x", None),
        ("https://example.com/", "`host:port`"),
        ("exa\0mple.com", None),
        ("..", None),
    ],
)
def test_host_pattern_errors(text: str, hint: str | None) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(HOST, text)
    if hint is not None:
        assert info.value.hint is not None
        assert hint in info.value.hint


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("pattern", "resource", "expected"),
    [
        ("agents.x", "agents.x", True),
        ("agents.x", "agents.X", False),
        ("agents.x", "agents.xy", False),
        ("agents.*", "agents.x", True),
        ("agents.*", "agents.x.y", True),
        ("agents.*", "agents.", True),
        ("agents.*", "agents", False),
        ("agents.*", "agentsx", False),
        ("*", "anything at all", True),
        ("*.read", "db.users.read", True),
        ("*.read", "db.users.write", False),
        ("db.*.read", "db.users.read", True),
        ("db.*.read", "db.a.b.read", True),
        ("db.*.read", "db.read", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("git?", "git?", True),
        ("git?", "gitx", False),
        ("[abc]", "[abc]", True),
        ("[abc]", "a", False),
        ("a.c", "abc", False),
        ("x*", "x\ny", True),
        ("agents.**", "agents.x.y", True),
    ],
)
def test_name_matching(pattern: str, resource: str, expected: bool) -> None:
    assert name_matches(pattern, resource) is expected


@pytest.mark.parametrize(
    ("text", "canonical", "literal", "overbroad"),
    [
        ("agents.x", "agents.x", True, False),
        ("agents.*", "agents.*", False, False),
        ("agents.**", "agents.*", False, False),
        ("*", "*", False, True),
        ("***", "*", False, True),
        ("*.x", "*.x", False, False),
    ],
)
def test_name_pattern_properties(text: str, canonical: str, literal: bool, overbroad: bool) -> None:
    pattern = compile_pattern(NAME, text)
    assert isinstance(pattern, NamePattern)
    assert pattern.kind is NAME
    assert pattern.canonical == canonical
    assert pattern.is_literal is literal
    assert pattern.is_overbroad is overbroad


@pytest.mark.parametrize("text", ["", " ", "\t\n", "a\0b"])
def test_name_errors(text: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(NAME, text)
    with pytest.raises(InvalidResourceError):
        normalize(NAME, text)


def test_names_are_not_altered() -> None:
    assert normalize(NAME, " spaced name ") == " spaced name "


# --------------------------------------------------------------------------- subsumption


@pytest.mark.parametrize(
    ("kind", "general", "specific", "expected"),
    [
        (PATH, "/srv/**", "/srv/data/*", True),
        (PATH, "/srv/**", "/srv/x.txt", True),
        (PATH, "/srv/**", "/srv", True),
        (PATH, "/srv/**", "/srv/**", True),
        (PATH, "/srv/**", "/srv/**/x", True),
        (PATH, "/srv/**", "/srv/a*/**", True),
        (PATH, "/srv/**", "/srvx/**", False),
        (PATH, "/srv/**", "/**", False),
        (PATH, "/srv/*", "/srv/x.txt", True),
        (PATH, "/srv/*", "/srv/*.csv", True),
        (PATH, "/srv/*", "/srv/a?", True),
        (PATH, "/srv/*", "/srv/**", False),
        (PATH, "/srv/*", "/srv", False),
        (PATH, "/srv/*", "/srv/a/b", False),
        (PATH, "/srv/*.csv", "/srv/a*.csv", True),
        (PATH, "/srv/*.csv", "/srv/a.csv", True),
        (PATH, "/srv/*.csv", "/srv/*", False),
        (PATH, "/srv/a?", "/srv/ab", True),
        (PATH, "/srv/a?", "/srv/a*", False),
        (PATH, "/srv/??", "/srv/a?", True),
        (PATH, "/**/*.py", "/srv/**/x.py", True),
        (PATH, "/**", "/", True),
        (PATH, "/**", "/srv/**/x", True),
        (PATH, "/*", "/srv", True),
        (PATH, "/*", "/srv/x", False),
        (PATH, "/srv/x.txt", "/srv/x.txt", True),
        (PATH, "/srv/x.txt", "/srv//x.txt/", True),
        (PATH, "/srv/x.txt", "/srv/y.txt", False),
        (PATH, "/srv/data/*", "/srv/**", False),
        (HOST, "*.example.com", "a.example.com:443", True),
        (HOST, "*.example.com", "*.b.example.com", True),
        (HOST, "*.example.com", "*.example.com:443", True),
        (HOST, "*.example.com", "*.example.com", True),
        (HOST, "*.example.com", "example.com", False),
        (HOST, "*.example.com", "*.badexample.com", False),
        (HOST, "*.b.example.com", "*.example.com", False),
        (HOST, "*.example.com:443", "*.example.com", False),
        (HOST, "*.example.com:443", "a.example.com:443", True),
        (HOST, "*.example.com:443", "a.example.com:80", False),
        (HOST, "host", "host:443", True),
        (HOST, "host", "host", True),
        (HOST, "host:443", "host", False),
        (HOST, "host:443", "host:443", True),
        (HOST, "host", "other:443", False),
        (HOST, "host", "*", False),
        (HOST, "*", "anything:1", True),
        (HOST, "*", "*.example.com", True),
        (HOST, "*", "*:443", True),
        (HOST, "*:443", "*", False),
        (HOST, "*:443", "a.example.com:443", True),
        (HOST, "127.0.0.1", "127.1:80", True),
        (NAME, "agents.*", "agents.x", True),
        (NAME, "agents.*", "agents.x.*", True),
        (NAME, "agents.*", "agents.*.y", True),
        (NAME, "agents.*", "agents*", False),
        (NAME, "agents.*", "agents", False),
        (NAME, "*", "agents.*", True),
        (NAME, "*", "x", True),
        (NAME, "*.read", "db.*.read", True),
        (NAME, "db.*", "*.read", False),
        (NAME, "a*b*c", "ab*c", True),
        (NAME, "x", "x", True),
        (NAME, "x", "x*", False),
    ],
)
def test_subsumes(kind: ResourceKind, general: str, specific: str, expected: bool) -> None:
    assert compile_pattern(kind, general).subsumes(compile_pattern(kind, specific)) is expected


def test_subsumes_and_matches_never_cross_kinds() -> None:
    path = compile_pattern(PATH, "/**")
    name = compile_pattern(NAME, "*")
    host = compile_pattern(HOST, "*")
    assert not name.subsumes(path)
    assert not path.subsumes(name)
    assert not host.subsumes(name)
    assert not host.matches("example.com")
    assert not path.matches(HostPort("example.com"))
    assert not name.matches(HostPort("example.com"))


def test_equality_is_by_canonical_form() -> None:
    assert compile_pattern(PATH, "/srv//data/") == compile_pattern(PATH, "/srv/data")
    assert compile_pattern(HOST, "Example.com.:*") == compile_pattern(HOST, "example.com")
    assert compile_pattern(NAME, "a**") == compile_pattern(NAME, "a*")
    assert compile_pattern(PATH, "/srv/x") != compile_pattern(PATH, "/srv/y")
    # the same text scopes different kinds of resources
    assert compile_pattern(PATH, "/x") != compile_pattern(NAME, "/x")
    assert len({compile_pattern(PATH, "/a/"), compile_pattern(PATH, "/a")}) == 1


@pytest.mark.parametrize(
    ("kind", "text"),
    [(PATH, "/srv/**/x*.csv"), (PATH, "/srv/data/**"), (HOST, "*.example.com:443"), (NAME, "a*b")],
)
def test_patterns_pickle(kind: ResourceKind, text: str) -> None:
    pattern = compile_pattern(kind, text)
    clone = pickle.loads(pickle.dumps(pattern))
    assert clone == pattern
    assert clone.text == text


def test_kind_may_be_given_by_value() -> None:
    assert normalize("host", "a:1") == HostPort("a", 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

_PATH_PIECES = st.sampled_from(["a", "b", ".", "..", "", "ab", "a.b", "..."])


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(_PATH_PIECES, max_size=8))
    lead = draw(st.sampled_from(["/", "//", "///", ""]))
    trail = draw(st.sampled_from(["", "/", "/.", "/.."]))
    return lead + "/".join(pieces) + trail


def _assert_normal(path: str) -> None:
    assert path.startswith("/")
    assert "//" not in path
    if path != "/":
        assert all(segment not in ("", ".", "..") for segment in path.split("/")[1:])


@given(raw_paths())
def test_path_normalisation_is_idempotent_and_clean(raw: str) -> None:
    try:
        path = normalize(PATH, raw, base_dir="/base/dir")
    except InvalidResourceError:
        assert raw == ""
        return
    assert isinstance(path, str)
    _assert_normal(path)
    assert normalize(PATH, path) == path


@given(st.text(max_size=30), st.sampled_from([None, "/", "/base", "//base/./x/"]))
def test_any_path_is_normalised_or_rejected(raw: str, base_dir: str | None) -> None:
    try:
        path = normalize(PATH, raw, base_dir=base_dir)
    except InvalidResourceError:
        return
    assert isinstance(path, str)
    _assert_normal(path)
    assert normalize(PATH, path) == path


@given(st.text(alphabet="ab.:[]/*-_9x0Aé% \t", max_size=24))
def test_any_host_is_normalised_or_rejected(raw: str) -> None:
    try:
        endpoint = normalize(HOST, raw)
    except InvalidResourceError:
        return
    assert isinstance(endpoint, HostPort)
    assert normalize(HOST, str(endpoint)) == endpoint


@given(st.text(max_size=24))
def test_arbitrary_patterns_compile_or_raise_pattern_error(text: str) -> None:
    for kind in ResourceKind:
        try:
            pattern = compile_pattern(kind, text)
        except PatternError:
            continue
        assert pattern.subsumes(pattern)
        assert compile_pattern(kind, pattern.canonical) == pattern


# Small worlds: every resource over a small alphabet, and patterns built from the same parts,
# so that "q matches r" happens often enough for the implications below to be exercised.

_SEGMENTS = ["a", "b", "ab"]
_ALL_PATHS = ["/"] + [
    "/" + "/".join(parts)
    for depth in (1, 2, 3)
    for parts in itertools.product(_SEGMENTS, repeat=depth)
]
_PATH_PATTERN_SEGMENTS = st.sampled_from(["a", "b", "ab", "*", "**", "?", "a*", "*b", "?b", "."])
path_patterns = st.lists(_PATH_PATTERN_SEGMENTS, max_size=4).map(
    lambda segments: compile_pattern(PATH, "/" + "/".join(segments))
)


def _reference_path_match(segments: list[str], parts: list[str]) -> bool:
    """Straightforward recursive glob matching, to check the compiled fast paths against."""
    if not segments:
        return not parts
    head, rest = segments[0], segments[1:]
    if head == "**":
        return any(_reference_path_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], head)
        and _reference_path_match(rest, parts[1:])
    )


@settings(max_examples=500)
@given(path_patterns)
def test_path_matches_agrees_with_reference(pattern: PathPattern) -> None:
    for resource in _ALL_PATHS:
        parts = [] if resource == "/" else resource[1:].split("/")
        expected = _reference_path_match(list(pattern.segments), parts)
        assert pattern.matches(resource) is expected, resource


@settings(max_examples=300)
@given(path_patterns, path_patterns)
def test_path_subsumes_is_sound(p: PathPattern, q: PathPattern) -> None:
    if p.subsumes(q):
        for resource in _ALL_PATHS:
            if q.matches(resource):
                assert p.matches(resource), resource


_HOSTS = ["a", "b.a", "c.b.a", "d.c.b.a", "ba", "x", "c.ba"]
_PORTS = [None, 80, 443, 8080]
_ALL_ENDPOINTS = [HostPort(host, port) for host in _HOSTS for port in _PORTS]
host_patterns = st.builds(
    lambda host, port: compile_pattern(HOST, host + port),
    st.sampled_from(["*", "*.a", "*.b.a", "*.ba", "a", "b.a", "c.b.a", "ba", "B.A."]),
    st.sampled_from(["", ":*", ":80", ":443"]),
)


@settings(max_examples=300)
@given(host_patterns, host_patterns)
def test_host_subsumes_is_sound(p: HostPattern, q: HostPattern) -> None:
    if p.subsumes(q):
        for endpoint in _ALL_ENDPOINTS:
            if q.matches(endpoint):
                assert p.matches(endpoint), endpoint


_ALL_NAMES = ["".join(chars) for n in (1, 2, 3, 4) for chars in itertools.product("a.b", repeat=n)]
name_patterns = st.text(alphabet="a.b*", min_size=1, max_size=5).map(
    lambda text: compile_pattern(NAME, text)
)


@given(name_patterns)
def test_name_matches_agrees_with_reference(pattern: NamePattern) -> None:
    for name in _ALL_NAMES:
        assert pattern.matches(name) is fnmatch.fnmatchcase(name, pattern.canonical), name


@settings(max_examples=300)
@given(name_patterns, name_patterns)
def test_name_subsumes_is_sound(p: NamePattern, q: NamePattern) -> None:
    if p.subsumes(q):
        for name in _ALL_NAMES:
            if q.matches(name):
                assert p.matches(name), name


@given(st.one_of(path_patterns, host_patterns, name_patterns))
def test_every_pattern_subsumes_itself(pattern: PathPattern | HostPattern | NamePattern) -> None:
    assert pattern.subsumes(pattern)


@given(
    st.one_of(
        st.sampled_from(_ALL_PATHS).map(lambda r: compile_pattern(PATH, r)),
        st.sampled_from(_ALL_ENDPOINTS)
        .filter(lambda e: e.port is not None)
        .map(lambda e: compile_pattern(HOST, str(e))),
        st.sampled_from(_ALL_NAMES).map(lambda r: compile_pattern(NAME, r)),
    )
)
def test_literal_patterns_subsume_themselves_and_match_their_text(
    pattern: PathPattern | HostPattern | NamePattern,
) -> None:
    assert pattern.is_literal
    assert pattern.subsumes(pattern)
    resource = normalize(pattern.kind, pattern.text)
    assert pattern.matches(resource)


# Every spelling of one destination gets one decision ----------------------------------------

import ipaddress  # noqa: E402

_HOST = ResourceKind.HOST


def _ipv4_spellings(address: ipaddress.IPv4Address, port: int) -> list[str]:
    """Spellings the C resolver (``inet_aton``) and the kernel read as ``address``."""
    a, b, c, d = address.packed
    value = int(address)
    forms = [
        str(address), f"{address}.", f"{a}.{b}.{(c << 8) | d}", f"{a}.{(b << 16) | (c << 8) | d}",
        str(value), hex(value), f"0x{a:02x}.{b}.{c}.{d}", f"0{a:o}.{b}.{c}.{d}" if a else f"0.{b}.{c}.{d}",
        f"::ffff:{address}", f"::ffff:{(a << 8) | b:x}:{(c << 8) | d:x}", f"::FFFF:{address}",
        f"0:0:0:0:0:ffff:{address}",
    ]
    out = []
    for form in forms:
        if ":" in form:
            out += [f"[{form}]:{port}", f"http://[{form}]:{port}/"]
        else:
            out += [f"{form}:{port}", f"http://{form}:{port}/"]
    return out


def _ipv6_spellings(address: ipaddress.IPv6Address, port: int) -> list[str]:
    forms = {address.compressed, address.exploded, address.exploded.upper(), address.compressed.upper()}
    out = []
    for form in forms:
        for zone in ("", "%eth0", "%1"):
            out.append(f"[{form}{zone}]:{port}")
        out.append(f"http://[{form}%25eth0]:{port}/")
    return out


@settings(max_examples=150, deadline=None)
@given(st.ip_addresses(v=4), st.integers(1, 65535), st.sampled_from(["{a}", "{a}:{p}", "{net}", "{net}:{lo}-{hi}"]),
       st.integers(0, 32))
def test_every_spelling_of_an_ipv4_destination_gets_the_same_decision(
    address: ipaddress.IPv4Address, port: int, shape: str, length: int
) -> None:
    net = ipaddress.ip_network(f"{address}/{length}", strict=False)
    pattern = compile_pattern(_HOST, shape.format(a=address, p=port, net=net, lo=max(1, port - 5), hi=port))
    spellings = _ipv4_spellings(address, port)
    answers = {s: pattern.matches(normalize(_HOST, s)) for s in spellings}
    assert set(answers.values()) == {True}, answers


@settings(max_examples=150, deadline=None)
@given(st.ip_addresses(v=6), st.integers(1, 65535), st.sampled_from(["[{a}]", "[{a}]:{p}", "[{net}]", "{net}"]),
       st.integers(0, 128))
def test_every_spelling_of_an_ipv6_destination_gets_the_same_decision(
    address: ipaddress.IPv6Address, port: int, shape: str, length: int
) -> None:
    net = ipaddress.ip_network(f"{address}/{length}", strict=False)
    pattern = compile_pattern(_HOST, shape.format(a=address, p=port, net=net))
    answers = {s: pattern.matches(normalize(_HOST, s)) for s in _ipv6_spellings(address, port)}
    if address.ipv4_mapped is not None:
        assert len(set(answers.values())) == 1, answers  # the IPv4 form decides for all
    else:
        assert set(answers.values()) == {True}, answers


@pytest.mark.parametrize("spelling", [
    "127.0.0.1:5432", "127.1:5432", "0x7f.0.0.1:5432", "2130706433:5432", "0177.0.0.1:5432",
    "[::ffff:127.0.0.1]:5432", "[::ffff:7f00:1]:5432", "http://[::ffff:127.0.0.1]:5432/", "127.0.0.1.:5432",
])
def test_a_deny_on_loopback_holds_for_every_spelling(spelling: str) -> None:
    from policy_engine import Engine

    engine = Engine.from_source(
        'allow plugin * to network:request on "*"\ndeny plugin * to network:request on "127.0.0.0/8"\n',
        [{"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "m:C",
          "permissions": ["network:request"]}])
    assert not engine.decide("p", "network:request", spelling).allowed
    assert engine.decide("p", "network:request", "10.0.0.1:5432").allowed


@pytest.mark.parametrize("spelling", ["[fe80::1%eth0]:22", "[fe80::1%25eth0]:22", "[FE80::1]:22",
                                      "[fe80:0:0:0:0:0:0:1%2]:22"])
def test_a_deny_on_an_ipv6_address_holds_with_a_zone(spelling: str) -> None:
    pattern = compile_pattern(_HOST, "[fe80::1]:22")
    assert pattern.matches(normalize(_HOST, spelling))
    assert compile_pattern(_HOST, "fe80::/10").matches(normalize(_HOST, spelling))


@pytest.mark.parametrize(("outer", "inner", "subsumes"), [
    ("10.0.0.0/8", "10.1.0.0/16", True), ("10.0.0.0/8", "10.1.2.3:443", True),
    ("10.1.0.0/16", "10.0.0.0/8", False), ("10.0.0.0/8:443", "10.1.0.0/16", False),
    ("*:8000-8999", "example.com:8080", True), ("*:8000-8999", "*:8000-9000", False),
    ("fe80::/10", "[fe80::1]:22", True), ("fe80::/10", "10.0.0.0/8", False),
    ("*.example.com", "10.0.0.0/8", False), ("::ffff:10.0.0.0/104", "10.2.0.0/16", True),
])
def test_cidr_and_port_range_subsumption(outer: str, inner: str, subsumes: bool) -> None:
    assert compile_pattern(_HOST, outer).subsumes(compile_pattern(_HOST, inner)) is subsumes


@pytest.mark.parametrize(("left", "right", "overlap"), [
    ("10.0.0.0/8", "10.1.0.0/16:443", True), ("10.0.0.0/8", "192.168.0.0/16", False),
    ("*:8000-8999", "*:8500-9500", True), ("*:8000-8999", "*:9000-9100", False),
    ("10.0.0.0/8", "example.com", False), ("*", "10.0.0.0/8", True),
])
def test_cidr_and_port_range_overlap(left: str, right: str, overlap: bool) -> None:
    from policy_engine.patterns import overlaps

    assert overlaps(compile_pattern(_HOST, left), compile_pattern(_HOST, right)) is overlap


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.1/8", "has host bits set"), ("10.0.0.0/33", "invalid CIDR range"),
    ("*:9000-8000", "runs backwards"), ("*:0-80", "out of range"),
])
def test_bad_ranges_are_errors(text: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        compile_pattern(_HOST, text)


# The algebra beyond one match: intersection, regions, coverage, templates ------------------


def test_intersection_is_the_narrower_pattern_or_both() -> None:
    from policy_engine.patterns import intersect

    srv, data, etc = (compile_pattern(PATH, t) for t in ("/srv/**", "/srv/data/**", "/etc/*"))
    txt = compile_pattern(PATH, "/srv/*.txt")
    assert intersect(None, None) == () and intersect(None, srv) == (srv,)
    assert intersect(data, None) == (data,)
    assert intersect(data, srv) == (data,) and intersect(srv, data) == (data,)
    assert intersect(srv, etc) is None
    both = compile_pattern(PATH, "/*/a.txt")
    assert intersect(txt, both) == (txt, both)  # they overlap, neither contains the other


def test_regions_overlap_and_are_covered() -> None:
    from policy_engine.patterns import region_covered, region_overlaps

    srv, data = compile_pattern(PATH, "/srv/**"), compile_pattern(PATH, "/srv/data/**")
    etc = compile_pattern(PATH, "/etc/**")
    assert region_overlaps((), etc) and region_overlaps((srv,), None)
    assert region_overlaps((srv, data), data) and not region_overlaps((srv,), etc)
    assert region_covered(None, ()) and not region_covered((srv,), ())
    assert region_covered((srv,), (data,)) and not region_covered((data,), (srv,))


def test_covers_all_and_matches_everything() -> None:
    from policy_engine.patterns import covers_all, matches_everything

    every, srv = compile_pattern(PATH, "/**"), compile_pattern(PATH, "/srv/**")
    assert matches_everything(every) and matches_everything(compile_pattern(HOST, "*"))
    assert not matches_everything(compile_pattern(HOST, "*:443")) and not matches_everything(srv)
    assert covers_all(None, None) and covers_all(None, (srv,))
    assert covers_all((every,), None) and not covers_all((srv,), None)
    assert covers_all((srv, every), (srv,)) and not covers_all((srv,), (every,))


def test_templates_have_one_treatment() -> None:
    from policy_engine.compiler import PLUGIN_VARIABLES, check_pattern
    from policy_engine.patterns import (
        TEMPLATE_STAND_INS,
        symbolic_pattern,
        with_stand_ins,
        with_templates,
    )

    assert set(TEMPLATE_STAND_INS) == set(PLUGIN_VARIABLES)
    own = symbolic_pattern(PATH, "{plugin_dir}/**")
    data = symbolic_pattern(PATH, "{plugin_dir}/data/{plugin}.db")
    assert own is not None and data is not None
    # Opaque literals: the plugin's own tree contains its data, and only `/**` contains it.
    assert own.subsumes(data) and not data.subsumes(own)
    assert not compile_pattern(PATH, "/srv/**").subsumes(own)
    assert compile_pattern(PATH, "/**").subsumes(own)
    text = "{plugin_dir}/cache/{plugin}-*"
    assert with_templates(with_stand_ins(text)) == text
    # The compiler asks the same question: valid for a kind exactly when the stand-ins are.
    for kind in (PATH, HOST, NAME):
        for pattern in ("{plugin_dir}/**", "{plugin}.example.com:443", "jobs.{plugin}.*"):
            valid, _error = check_pattern(pattern, (kind,))
            assert (kind in valid) is (symbolic_pattern(kind, pattern) is not None), (kind, pattern)
    assert symbolic_pattern(HOST, "{plugin_dir}") is None


# `matches` in conditions: the language's glob semantics ------------------------------------

@pytest.mark.parametrize(("glob", "value", "expected"), [
    ("/srv/*", "/srv/a", True), ("/srv/*", "/srv/a/b", False), ("/srv/**", "/srv/a/b", True),
    ("core-*", "core-a.b", True), ("core-[ab]", "core-a", False), ("core-[ab]", "core-[ab]", True),
    ("a?c", "abc", True), ("a?c", "a/c", False), ("*", "", True), ("**", "x/y", True),
])
def test_glob_matches(glob: str, value: str, expected: bool) -> None:
    from policy_engine.patterns import glob_matches

    assert glob_matches(glob, value) is expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab/.*?[]", max_size=8), st.text(alphabet="ab/.[]", max_size=8))
def test_glob_matches_agrees_with_path_patterns(glob: str, value: str) -> None:
    from policy_engine.patterns import glob_matches

    path_glob, path = "/" + glob.strip("/"), "/" + value.strip("/")
    try:
        pattern = compile_pattern(ResourceKind.PATH, path_glob)
    except PatternError:
        return
    if "//" in path_glob or "//" in path or "/./" in f"{path}/" or "/./" in f"{path_glob}/" or ".." in path \
            or path_glob.endswith("/.") or "**" in path_glob or "/*/" in f"{path_glob}/":
        return  # normal forms differ (empty and dot segments, `**`, a lone `*` segment is non-empty)
    assert glob_matches(path_glob, path) == pattern.matches(path)


@pytest.mark.parametrize("spelling", ["API.Example.COM:443", "api.example.com.:443", "https://API.example.com./x",
                                      "https://api.example.com:443/"])
def test_host_names_in_every_case_and_with_a_trailing_dot_get_one_decision(spelling: str) -> None:
    assert compile_pattern(_HOST, "api.example.com:443").matches(normalize(_HOST, spelling))
    assert compile_pattern(_HOST, "*.Example.com.:443-443").matches(normalize(_HOST, spelling))
