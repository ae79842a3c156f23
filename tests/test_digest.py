"""plugin_digest: the documented definition, and what does and does not change it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from policy_engine.digest import plugin_digest

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


def reference(entries: list[tuple[bytes, bytes, bytes]]) -> str:
    """The docstring's definition, written out independently: (kind, path, data) triples."""
    digest = hashlib.sha256()
    for kind, path, data in sorted(entries, key=lambda e: e[1]):
        digest.update(kind + len(path).to_bytes(8, "big") + path + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def test_matches_the_documented_definition(tmp_path: Path) -> None:
    root = make(tmp_path / "p", TREE)
    expected = reference([(b"f", name.encode(), data) for name, data in TREE.items()])
    assert plugin_digest(root) == expected


def test_known_answer_pins_the_format(tmp_path: Path) -> None:
    # Admins paste digests into policies: the format must never drift silently. The value was
    # checked against printf + sha256sum of the documented byte stream.
    root = make(tmp_path / "p", {"a.py": b"x = 1\n", "pkg/b.txt": b"b"})
    assert plugin_digest(root) == reference([(b"f", b"a.py", b"x = 1\n"), (b"f", b"pkg/b.txt", b"b")])
    assert plugin_digest(root) == "44dcfd36f04d32b5349354d5789a738b637d2aa315634151b8e812e4f88301ec"


def test_empty_directory_is_sha256_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "p" / "empty-subdir").mkdir(parents=True)
    assert plugin_digest(tmp_path / "p") == hashlib.sha256(b"").hexdigest()


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


def test_bytecode_is_ignored(tmp_path: Path) -> None:
    root = make(tmp_path / "p", TREE)
    before = plugin_digest(root)
    make(root, {"demo/__pycache__/plugin.cpython-311.pyc": b"\x00bytecode", "stale.pyc": b"x"})
    assert plugin_digest(root) == before


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_are_hashed_as_links_and_never_followed(tmp_path: Path) -> None:
    root = make(tmp_path / "p", {"target.py": b"x = 1\n", "copy.py": b"x = 1\n"})
    as_file = plugin_digest(root)
    (root / "copy.py").unlink()
    (root / "copy.py").symlink_to("target.py")
    as_link = plugin_digest(root)
    assert as_link != as_file
    assert as_link == reference([(b"f", b"target.py", b"x = 1\n"), (b"l", b"copy.py", b"target.py")])

    outside = make(tmp_path / "outside", {"secret.txt": b"s"})
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    with_dir_link = plugin_digest(root)
    (outside / "secret.txt").write_bytes(b"changed")  # not below the plugin: not read
    assert plugin_digest(root) == with_dir_link


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
