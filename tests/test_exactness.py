"""Which file denies the kernel sandbox holds exactly (policy_engine.exactness)."""

from __future__ import annotations

from pathlib import Path

from policy_engine.exactness import inexact_reason, mask_path
from policy_engine.patterns import compile_pattern
from policy_engine.permissions import ResourceKind


def _path(text: str):  # type: ignore[no-untyped-def]
    return compile_pattern(ResourceKind.PATH, text)


def test_a_mount_masks_a_literal_or_a_whole_tree_only() -> None:
    assert mask_path(_path("/srv/data/secret.txt")) == "/srv/data/secret.txt"
    assert mask_path(_path("/srv/data/keys/**")) == "/srv/data/keys"
    assert mask_path(_path("/srv/data/**/*.key")) is None
    assert mask_path(_path("/srv/*/secret")) is None


def test_what_the_kernel_cannot_hold_is_named(tmp_path: Path) -> None:
    tree = str(tmp_path)
    (tmp_path / "there.txt").write_text("x")
    assert inexact_reason(_path(f"{tree}/there.txt"), [tree]) is None
    assert "does not exist yet" in (inexact_reason(_path(f"{tree}/later.txt"), [tree]) or "")
    assert "glob inside granted" in (inexact_reason(_path(f"{tree}/**/*.key"), [tree]) or "")
    assert "condition" in (inexact_reason(_path(f"{tree}/there.txt"), [tree],
                                          conditional=True) or "")
    assert "write or delete" in (inexact_reason(_path(f"{tree}/there.txt"), [tree],
                                                masked=False) or "")
    # Outside every granted tree the path does not exist in the view: exact.
    assert inexact_reason(_path("/elsewhere/**/*.key"), [tree]) is None
    # A glob around the tree reaches into it; a whole tree around it drops the grant.
    assert "reaches into" in (inexact_reason(_path(f"{tree[:tree.rindex('/')]}/**/*.key"),
                                             [tree]) or "")
    assert inexact_reason(_path(f"{tree[:tree.rindex('/')]}/**"), [tree]) is None
    # A policy read before its plugins exist: no existence check.
    assert inexact_reason(_path(f"{tree}/later.txt"), [tree], exists=None) is None
