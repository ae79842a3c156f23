"""The policy-set reader: no file is ever lost silently, in the engine, reload, the CLI.

The security case: a deny file that became a dangling symlink used to be skipped, so its
deny turned into an allow. Every kind of bad entry is now an error that names it.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from policy_engine import Engine
from policy_engine.bundle import build_bundle
from policy_engine.cli.main import main
from policy_engine.errors import PolicyError, PolicySetError, UsageError
from policy_engine.formatter import format_rule
from policy_engine.policyset import (
    SOURCE_READERS,
    PolicyFile,
    ProblemKind,
    read_policy_set,
    scan_policy_set,
)

PACKAGE = Path(__file__).resolve().parent.parent / "policy_engine"
ALLOW = 'allow plugin * to file:read on "/srv/**"\n'
DENY = 'deny plugin * to file:read on "/srv/secret/**"\n'
MANIFEST = """\
name: reader
version: 1.0.0
type: agent
entry_point: reader:Reader
permissions:
  - file:read /srv/**
"""


def policy_dir(tmp_path: Path) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "allow.policy").write_text(ALLOW)
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "deny.policy").write_text(DENY)
    (policies / "deny.policy").symlink_to(tmp_path / "targets" / "deny.policy")
    plugin = tmp_path / "plugins" / "reader"
    plugin.mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(MANIFEST)
    (plugin / "reader.py").write_text("class Reader: ...\n")
    return policies


def _dangling(entry: Path, tmp: Path) -> None:
    entry.symlink_to(tmp / "moved-away.policy")


def _loop(entry: Path, tmp: Path) -> None:
    entry.symlink_to(entry.name)


def _directory(entry: Path, tmp: Path) -> None:
    entry.mkdir()


def _fifo(entry: Path, tmp: Path) -> None:
    os.mkfifo(entry)


def _socket(entry: Path, tmp: Path) -> None:
    import socket

    # A relative name: a socket path is limited to about 100 bytes.
    here = os.getcwd()
    os.chdir(entry.parent)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(entry.name)
        sock.close()
    finally:
        os.chdir(here)


def _device(entry: Path, tmp: Path) -> None:
    entry.symlink_to("/dev/null")


def _undecodable(entry: Path, tmp: Path) -> None:
    entry.write_bytes(b"# \xff\xfe not UTF-8\n" + DENY.encode())


def _utf16(entry: Path, tmp: Path) -> None:
    entry.write_bytes(DENY.encode("utf-16"))


BAD_ENTRIES: dict[str, tuple[Callable[[Path, Path], None], ProblemKind, str]] = {
    "dangling-link": (_dangling, ProblemKind.DANGLING_LINK, "which does not exist"),
    "link-loop": (_loop, ProblemKind.LINK_LOOP, "is a symlink loop"),
    "directory": (_directory, ProblemKind.NOT_REGULAR, "is a directory"),
    "fifo": (_fifo, ProblemKind.NOT_REGULAR, "is a named pipe (FIFO)"),
    "socket": (_socket, ProblemKind.NOT_REGULAR, "is a socket"),
    "device": (_device, ProblemKind.NOT_REGULAR, "is a character device"),
    "undecodable": (_undecodable, ProblemKind.ENCODING, "is not UTF-8 text: byte 0xff at offset 2"),
    "utf-16": (_utf16, ProblemKind.ENCODING, "is UTF-16 text"),
}


@pytest.fixture(params=sorted(BAD_ENTRIES))
def broken(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str, ProblemKind, str]:
    make, kind, words = BAD_ENTRIES[request.param]
    policies = policy_dir(tmp_path)
    (policies / "deny.policy").unlink()
    make(policies / "deny.policy", tmp_path)
    return policies, str(policies / "deny.policy"), kind, words


def test_every_bad_entry_is_named_by_the_reader(broken: tuple[Path, str, ProblemKind, str]) -> None:
    policies, entry, kind, words = broken
    scan = scan_policy_set(policies)
    assert [f.name for f in scan.files] == [str(policies / "allow.policy")]
    assert [(p.path, p.kind) for p in scan.problems] == [(entry, kind)]
    assert words in scan.problems[0].message
    with pytest.raises(PolicySetError) as info:
        read_policy_set(policies)
    assert entry in str(info.value)
    assert isinstance(info.value, PolicyError) and isinstance(info.value, UsageError)


def test_engine_load_refuses_a_bad_entry(broken: tuple[Path, str, ProblemKind, str]) -> None:
    policies, entry, _, words = broken
    with pytest.raises(PolicySetError, match=re.escape(words)) as info:
        Engine.load(policies, plugins=policies.parent / "plugins")
    assert entry in str(info.value)


def test_decide_exits_2_naming_the_entry_instead_of_allowing(
    broken: tuple[Path, str, ProblemKind, str], capsys: pytest.CaptureFixture[str]
) -> None:
    policies, entry, _, _ = broken
    code = main(["decide", "reader", "file:read", "/srv/secret/key", "--policy", str(policies),
                 "--plugins", str(policies.parent / "plugins")])
    captured = capsys.readouterr()
    assert code == 2
    assert entry in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("bad", sorted(BAD_ENTRIES))
def test_reload_keeps_the_old_policy_and_raises(bad: str, tmp_path: Path) -> None:
    policies = policy_dir(tmp_path)
    engine = Engine.load(policies, plugins=tmp_path / "plugins")
    assert not engine.decide("reader", "file:read", "/srv/secret/key").allowed
    (policies / "deny.policy").unlink()
    BAD_ENTRIES[bad][0](policies / "deny.policy", tmp_path)
    with pytest.raises(PolicySetError, match="deny.policy"):
        engine.reload()
    assert not engine.decide("reader", "file:read", "/srv/secret/key").allowed
    assert engine.decide("reader", "file:read", "/srv/data").allowed


def test_a_symlink_that_resolves_is_followed(tmp_path: Path) -> None:
    policies = policy_dir(tmp_path)
    engine = Engine.load(policies, plugins=tmp_path / "plugins")
    assert not engine.decide("reader", "file:read", "/srv/secret/key").allowed
    assert engine.decide("reader", "file:read", "/srv/data").allowed


def test_the_deny_file_moved_away_denies_nothing_silently(tmp_path: Path) -> None:
    policies = policy_dir(tmp_path)
    (tmp_path / "targets" / "deny.policy").rename(tmp_path / "targets" / "moved.policy")
    with pytest.raises(PolicySetError, match="does not exist"):
        Engine.load(policies, plugins=tmp_path / "plugins")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "bom.policy").write_bytes(b"\xef\xbb\xbf" + DENY.encode())
    policy_set = read_policy_set(tmp_path)
    assert policy_set.files == (PolicyFile(str(tmp_path / "bom.policy"), DENY),)
    engine = Engine.load(tmp_path)
    assert len(engine.policy.rules) == 1


def test_undecodable_bytes_name_the_offset_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.policy").write_bytes(b"deny plugin *\n# caf\xe9\n")
    (problem,) = scan_policy_set(tmp_path).problems
    assert "byte 0xe9 at offset 19 (line 2, column 6)" in problem.message
    assert (problem.line, problem.column) == (2, 6)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.policy").write_text(ALLOW)  # subdirectories are not read
    with pytest.raises(PolicySetError, match="no `.policy` files in"):
        read_policy_set(tmp_path)


def test_files_are_sorted_by_name_and_hidden_names_skipped(tmp_path: Path) -> None:
    for name in ("b.policy", "a.policy", "c.txt"):
        (tmp_path / name).write_text(ALLOW)
    (tmp_path / ".#a.policy").symlink_to("user@host.1234")  # an editor's lock file
    assert [Path(f.name).name for f in read_policy_set(tmp_path).files] == ["a.policy", "b.policy"]


def test_a_missing_path_and_an_unsupported_source(tmp_path: Path) -> None:
    with pytest.raises(PolicySetError, match="does not exist"):
        read_policy_set(tmp_path / "nope")
    (problem,) = scan_policy_set("bundle://x").problems
    assert problem.kind is ProblemKind.UNSUPPORTED
    assert "unsupported policy source" in problem.message
    # A URL is a known kind, but read here without a key it is refused: remote needs a key.
    (problem,) = scan_policy_set("https://example.org/site.tar.gz").problems
    assert problem.kind is ProblemKind.UNSUPPORTED and "needs a public key" in problem.message


def test_size_caps_apply_per_file(tmp_path: Path) -> None:
    from policy_engine.bounded import InputLimits

    (tmp_path / "big.policy").write_text("# " + "x" * 200 + "\n")
    (problem,) = scan_policy_set(tmp_path, limits=InputLimits(policy_file_bytes=100)).problems
    assert problem.kind is ProblemKind.TOO_LARGE
    assert "`policy_file_bytes` is 100" in problem.message


def test_fmt_reads_through_the_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.policy").write_text(ALLOW)
    (tmp_path / "b.policy").symlink_to("gone.policy")
    assert main(["fmt", "--check", str(tmp_path)]) == 2
    assert "b.policy" in capsys.readouterr().err


# Only policyset.py opens policy paths ----------------------------------------------------------

_READ_CALLS = frozenset({"open", "read_text", "read_bytes", "glob", "rglob", "iterdir", "scandir",
                         "listdir", "read_bounded_file", "fdopen"})
_READERS = {"policyset.py", "bounded.py"}
#: Calls that read a bundle's bytes or a URL: only policyset.py makes them.
_BUNDLE_READ_CALLS = frozenset({"urlopen", "build_opener", "_read_capped", "fetch"})


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of ``scope`` outside its nested functions."""
    found: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _policy_readers(source: str) -> list[int]:
    """Lines of functions (or module code) that both name `.policy` and read files."""
    tree = ast.parse(source)
    scopes: list[ast.AST] = [tree, *(n for n in ast.walk(tree)
                                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))]
    docstrings = {
        id(n.body[0].value) for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body and isinstance(n.body[0], ast.Expr)
    }
    found: list[int] = []
    for scope in scopes:
        nodes = _own_nodes(scope)
        names_policy = any(
            isinstance(n, ast.Constant) and isinstance(n.value, str) and ".policy" in n.value
            and id(n) not in docstrings for n in nodes)
        reads = any(
            isinstance(n, ast.Call) and (
                (isinstance(n.func, ast.Name) and n.func.id in _READ_CALLS)
                or (isinstance(n.func, ast.Attribute) and n.func.attr in _READ_CALLS))
            for n in nodes)
        if names_policy and reads:
            found.append(getattr(scope, "lineno", 1))
    return found


def test_no_other_module_opens_or_globs_a_policy_path() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in _READERS and path.parent == PACKAGE:
            continue
        for line in _policy_readers(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert offenders == [], "read policy files through policy_engine.policyset"


def _bundle_readers(source: str) -> list[int]:
    """Lines of functions that read a file or URL and decode a bundle from it, or that
    fetch a URL at all."""
    tree = ast.parse(source)
    found: list[int] = []
    scopes: list[ast.AST] = [tree, *(n for n in ast.walk(tree)
                                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))]
    for scope in scopes:
        calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
                 for n in _own_nodes(scope) if isinstance(n, ast.Call)
                 and isinstance(n.func, (ast.Name, ast.Attribute))}
        if calls & _BUNDLE_READ_CALLS or (calls & _READ_CALLS and "read_bundle" in calls):
            found.append(getattr(scope, "lineno", 1))
    return found


def test_no_other_module_reads_a_bundle_or_a_url() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        # uploader.py sends decision events (a POST), it never reads a policy.
        if path.name in ("policyset.py", "uploader.py") and path.parent == PACKAGE:
            continue
        for line in _bundle_readers(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert offenders == [], "read bundles and URLs through policy_engine.policyset.read_bundle_bytes"


def test_the_bundle_scan_catches_what_the_old_readers_did() -> None:
    old_cli = "def verify(p, k):\n    data = Path(p).read_bytes()\n    return read_bundle(data, k)\n"
    old_origin = "def initial(self):\n    return self._verify(_read_capped(self.path))\n"
    old_fetch = "def get(url):\n    return urllib.request.build_opener().open(url).read()\n"
    assert _bundle_readers(old_cli) == [1] and _bundle_readers(old_origin) == [1]
    assert _bundle_readers(old_fetch) == [1]
    assert _bundle_readers("def f(p):\n    data, _ = read_bundle_bytes(p)\n    return read_bundle(data)\n") == []


def test_bundles_and_urls_are_source_kinds_of_the_reader() -> None:
    assert {"path", "path:bundle", "http", "https"} <= set(SOURCE_READERS)


def test_load_of_a_directory_and_of_its_bundle_give_the_same_set(tmp_path: Path) -> None:
    tree = tmp_path / "policies"
    tree.mkdir()
    (tree / "a.policy").write_text(ALLOW)
    (tree / "b.policy").write_text('deny plugin * to file:read on "/data/secret/**"\n')
    (tree / "c.policy").symlink_to("a.policy")  # stored as its resolved contents
    bundle = tmp_path / "site.tar.gz"
    bundle.write_bytes(build_bundle({Path(f.name).name: f.text for f in read_policy_set(tree).files},
                                    revision="r1", serial=1))
    from_dir = {Path(f.name).name: f.text for f in read_policy_set(tree).files}
    from_bundle = {Path(f.name).name: f.text for f in read_policy_set(bundle).files}
    assert from_dir == from_bundle and len(from_dir) == 3
    a, b = Engine.load(tree), Engine.load(bundle)
    assert [format_rule(r.node) for r in a.policy.rules] == [format_rule(r.node) for r in b.policy.rules]
    # A bundle that is not one (corrupt gzip) is a problem naming it, never a silent skip.
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b" + b"junk")
    (problem,) = scan_policy_set(broken).problems
    assert problem.kind is ProblemKind.UNREADABLE and "broken.tar.gz" in problem.message


def test_the_scan_catches_what_the_old_readers_did() -> None:
    old = 'def read(path):\n    return sorted(p.read_text() for p in path.glob("*.policy"))\n'
    assert _policy_readers(old) == [1]
    assert _policy_readers('def f(p):\n    """Read a `.policy` file."""\n    return scan(p)\n') == []
