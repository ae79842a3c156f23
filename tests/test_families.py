"""The registry of permission families: complete, and every consumer agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policy_engine.families import FAMILIES, NotApplicable, family, readme_table
from policy_engine.permissions import FAMILY_KINDS, Permission

from .conftest import REGEN

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- families table: generated -->\n", "<!-- end of families table -->\n"


def test_every_permission_is_in_exactly_one_family() -> None:
    seen = [p for f in FAMILIES for p in f.permissions]
    assert sorted(seen) == sorted(Permission) and len(seen) == len(set(seen))
    for f in FAMILIES:
        assert all(p.family == f.name for p in f.permissions)


@pytest.mark.parametrize("entry", FAMILIES, ids=lambda f: f.name)
def test_every_facet_is_filled_or_says_why_not(entry: object) -> None:
    for name, facet in entry.facets().items():  # type: ignore[attr-defined]
        if isinstance(facet, NotApplicable):
            assert facet.reason.strip(), f"{name} of a family says n/a without a reason"
        else:
            assert facet, f"facet `{name}` is empty"


def test_resource_kinds_come_from_the_registry() -> None:
    assert FAMILY_KINDS == {f.name: f.kind for f in FAMILIES}


def test_the_audit_hook_handles_exactly_the_registered_events() -> None:
    from policy_engine.enforcement.worker.audit import AuditGuard

    guard = AuditGuard(lambda a, r: None, plugin="p", scratch_dir="/tmp",
                       implicit=__import__("policy_engine.implicit").implicit.implicit_reads(None),
                       allow_subprocess=False, allow_network=False)
    handled = set(guard._handlers)
    registered = {e for f in FAMILIES if not isinstance(f.audit_events, NotApplicable)
                  for e in f.audit_events}
    assert handled == registered


def test_the_scanner_suggests_families_from_the_registered_modules() -> None:
    from policy_engine.enforcement.host import scan

    assert scan._NETWORK_MODULES <= set(family("network").scan_modules)  # type: ignore[arg-type]
    assert scan._SUBPROCESS_MODULES == set(family("subprocess").scan_modules)  # type: ignore[arg-type]
    assert scan._DATABASE_MODULES == set(family("database").scan_modules)  # type: ignore[arg-type]


def test_readme_table_is_generated_from_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END), text, re.S)
    assert match, "the README has no generated families table"
    if REGEN:
        README.write_text(text.replace(match.group(0), BEGIN + readme_table() + END),
                          encoding="utf-8")
        return
    assert match.group(1) == readme_table(), (
        "README families table is stale; run with POLICY_ENGINE_REGEN_GOLDEN=1")
