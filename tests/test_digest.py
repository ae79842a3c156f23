"""plugin_digest: the documented definition, and what does and does not change it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from policy_engine.bounded import DEFAULT_LIMITS
from policy_engine.digest import plugin_digest, read_plugin_tree, trust_line
from policy_engine.errors import PluginTreeError

KNOWN = "sha256-v2:e523a15de14a98a66be58a9b61411c849e241d25718e9bb5e2610c823f96cd25"
TREE = {
    "plugin.yaml": b"name: demo\n",
    "demo/__init__.py": b"",
    "demo/plugin.py": b"class Demo:\n    pass\n",
    "data/readme.txt": b"hello",
}


def make(root: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in order or list(files):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])
    return root


def reference(entries: list[tuple[bytes, bytes]]) -> str:
    """The docstring's definition (version 2), written out independently: (path, data) pairs."""
    digest = hashlib.sha256()
    for path, data in sorted(entries):
        digest.update(len(path).to_bytes(8, "big") + path + len(data).to_bytes(8, "big")
                      + hashlib.sha256(data).digest())
    return "sha256-v2:" + digest.hexdigest()


def test_matches_the_documented_definition(tmp_path: Path) -> None:
    root = make(tmp_path / "p", TREE)
    assert plugin_digest(root) == reference([(name.encode(), data) for name, data in TREE.items()])


def test_known_answer_pins_the_format(tmp_path: Path) -> None:
    # Admins paste digests into policies: the format must never drift silently. The value was
    # checked against printf + sha256sum of the documented byte stream.
    root = make(tmp_path / "p", {"a.py": b"x = 1\n", "pkg/b.txt": b"b"})
    assert plugin_digest(root) == reference([(b"a.py", b"x = 1\n"), (b"pkg/b.txt", b"b")])
    assert plugin_digest(root) == KNOWN


def test_empty_directory_is_sha256_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "p" / "empty-subdir").mkdir(parents=True)
    assert plugin_digest(tmp_path / "p") == "sha256-v2:" + hashlib.sha256(b"").hexdigest()


def test_the_tree_read_keeps_the_bytes_it_digested(tmp_path: Path) -> None:
    root = make(tmp_path / "p", TREE)
    tree = read_plugin_tree(root, keep=lambda path: path.endswith(".py"))
    assert tree.digest == plugin_digest(root)
    assert tree.paths == tuple(sorted(TREE))
    assert dict(tree.files) == {k: v for k, v in TREE.items() if k.endswith(".py")}
    assert tree.size == sum(len(v) for v in TREE.values())


def test_the_trust_line_pins_the_hex_under_the_versioned_algorithm() -> None:
    assert trust_line('a"b', "sha256-v2:" + "ab" * 32) == 'trust plugin "a\\"b" sha256-v2 "' + "ab" * 32 + '"'


def test_stable_across_runs_and_creation_order(tmp_path: Path) -> None:
    first = make(tmp_path / "a", TREE)
    second = make(tmp_path / "b", TREE, order=list(reversed(TREE)))
    assert plugin_digest(first) == plugin_digest(first) == plugin_digest(second)
    assert plugin_digest(str(first)) == plugin_digest(first)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root: (root / "demo/plugin.py").write_bytes(b"class Demo: ...\n"), id="content"),
        pytest.param(lambda root: (root / "demo/plugin.py").rename(root / "demo/main.py"), id="rename"),
        pytest.param(lambda root: (root / "demo/extra.py").write_bytes(b""), id="added-empty-file"),
        pytest.param(lambda root: (root / "data/readme.txt").unlink(), id="removed"),
        pytest.param(lambda root: (root / "data").rename(root / "dat"), id="renamed-directory"),
    ],
)
def test_changes_when_the_tree_changes(tmp_path: Path, change: object) -> None:
    root = make(tmp_path / "p", TREE)
    before = plugin_digest(root)
    change(root)  # type: ignore[operator]
    assert plugin_digest(root) != before


def test_framing_prevents_concatenation_collisions(tmp_path: Path) -> None:
    one = make(tmp_path / "one", {"ab": b"c"})
    two = make(tmp_path / "two", {"a": b"bc"})
    three = make(tmp_path / "three", {"a": b"", "b": b"c"})
    assert len({plugin_digest(one), plugin_digest(two), plugin_digest(three)}) == 3


def test_mode_insensitive(tmp_path: Path) -> None:
    # File modes are deliberately not part of the digest (documented): chmod keeps it.
    root = make(tmp_path / "p", TREE)
    before = plugin_digest(root)
    os.chmod(root / "demo/plugin.py", 0o755)
    os.chmod(root / "data/readme.txt", 0o600)
    assert plugin_digest(root) == before


def test_bytecode_counts_like_any_file(tmp_path: Path) -> None:
    # Version 1 skipped it, and a planted `__pycache__` ran in place of the pinned source.
    root = make(tmp_path / "p", TREE)
    before = plugin_digest(root)
    make(root, {"demo/__pycache__/plugin.cpython-311.pyc": b"\x00bytecode"})
    with_cache = plugin_digest(root)
    assert with_cache != before
    make(root, {"stale.pyc": b"x"})
    assert plugin_digest(root) != with_cache


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
@pytest.mark.parametrize("where", ["copy.py", "pkg/copy.py", "linked-dir"])
def test_a_symlink_anywhere_below_is_refused_naming_it(tmp_path: Path, where: str) -> None:
    root = make(tmp_path / "p", {"target.py": b"x = 1\n", "pkg/a.py": b""})
    outside = make(tmp_path / "outside", {"secret.txt": b"s"})
    (root / where).symlink_to(outside if where == "linked-dir" else root / "target.py")
    with pytest.raises(PluginTreeError, match="is a symbolic link") as caught:
        plugin_digest(root)
    assert caught.value.path == str(root / where) and str(root / where) in str(caught.value)
    assert isinstance(caught.value, OSError)  # callers that catch OSError keep working


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = make(tmp_path / "p", TREE)
    os.mkfifo(root / "data" / "pipe")
    with pytest.raises(PluginTreeError, match="`.*pipe` is a FIFO"):
        plugin_digest(root)


def test_a_socket_is_refused(tmp_path: Path) -> None:
    import socket

    root = make(tmp_path / "p", TREE)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "s"))
        with pytest.raises(PluginTreeError, match="is a socket"):
            plugin_digest(root)
    finally:
        sock.close()


@pytest.mark.parametrize(("cap", "value", "tree"), [
    ("plugin_files", 2, {"a": b"", "b": b"", "c": b""}),
    ("plugin_bytes", 10, {"a": b"123456", "b": b"123456"}),
    ("plugin_depth", 2, {"a/b/c/d.py": b""}),
])
def test_the_caps_bound_the_walk(tmp_path: Path, cap: str, value: int, tree: dict[str, bytes]) -> None:
    root = make(tmp_path / "p", tree)
    limits = dataclasses.replace(DEFAULT_LIMITS, **{cap: value})
    with pytest.raises(PluginTreeError, match=f"input limit exceeded: .*cap `{cap}`"):
        plugin_digest(root, limits=limits)
    assert plugin_digest(root).startswith("sha256-v2:")  # the defaults let it through


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_the_plugin_directory_itself_may_be_a_link(tmp_path: Path) -> None:
    root = make(tmp_path / "p", TREE)
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert plugin_digest(tmp_path / "alias") == plugin_digest(root)


def test_not_a_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        plugin_digest(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        plugin_digest(tmp_path / "file")
