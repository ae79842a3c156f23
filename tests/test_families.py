"""The registry of permission families: complete, and every consumer agrees with it."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from policy_engine import families
from policy_engine.families import (
    FAMILIES,
    Family,
    KernelPlan,
    NotApplicable,
    OverBroad,
    ScanCalls,
    family,
    readme_table,
)
from policy_engine.permissions import FAMILY_KINDS, Permission

from .conftest import REGEN

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- families table: generated -->\n", "<!-- end of families table -->\n"


def test_every_permission_is_in_exactly_one_family() -> None:
    seen = [p for f in FAMILIES for p in f.permissions]
    assert sorted(seen) == sorted(p.value for p in Permission) and len(seen) == len(set(seen))
    for f in FAMILIES:
        assert all(Permission(p).family == f.name for p in f.permissions)


@pytest.mark.parametrize("entry", FAMILIES, ids=lambda f: f.name)
def test_every_facet_is_filled_or_says_why_not(entry: Family) -> None:
    # facets() must name every field but the name: a new facet cannot skip this test.
    assert set(entry.facets()) == {f.name for f in fields(Family)} - {"name"}
    for name, facet in entry.facets().items():
        if isinstance(facet, NotApplicable):
            assert facet.reason.strip(), f"{name} of a family says n/a without a reason"
        else:
            assert facet, f"facet `{name}` is empty"
            if isinstance(facet, ScanCalls):
                assert facet.calls and all(c.functions or c.prefixes or c.path_methods
                                           for c in facet.calls), f"facet `{name}` is empty"
                assert {c.permission for c in facet.calls} <= set(entry.permissions)
    if isinstance(entry.kernel, KernelPlan):
        k = entry.kernel
        assert set(k.read_paths + k.write_paths + k.connect_ports + k.exec) <= set(entry.permissions)
    if isinstance(entry.over_broad, OverBroad):
        assert set(entry.over_broad.permissions) <= set(entry.permissions)


def test_a_family_without_a_facet_fails_completeness() -> None:
    broken = replace(family("network"), scan_modules=())
    assert not broken.facets()["scan_modules"]
    broken = replace(family("file"), scan_calls=ScanCalls("", ()))
    assert not broken.facets()["scan_calls"].calls  # type: ignore[union-attr]
    broken = replace(family("hook"), kernel=NotApplicable(" "))
    assert not broken.kernel.reason.strip()  # type: ignore[union-attr]


def test_resource_kinds_come_from_the_registry() -> None:
    assert FAMILY_KINDS == {f.name: f.kind for f in FAMILIES}


def _guard() -> object:
    from policy_engine.enforcement.worker.audit import AuditGuard
    from policy_engine.implicit import implicit_reads

    return AuditGuard(lambda a, r: None, plugin="p", scratch_dir="/tmp",
                      implicit=implicit_reads(None), allow_subprocess=False,
                      allow_network=False)


def _without(monkeypatch: pytest.MonkeyPatch, name: str, **facets: object) -> None:
    """The registry with one family's facets replaced (as if someone deleted them)."""
    monkeypatch.setattr(families, "FAMILIES", tuple(
        replace(f, **facets) if f.name == name else f for f in families.FAMILIES))  # type: ignore[arg-type]


def test_the_audit_hook_handles_exactly_the_registered_events() -> None:
    handled = set(_guard()._handlers)  # type: ignore[attr-defined]
    assert handled == {e.event for e in families.audit_events()}


def test_the_audit_hook_reads_its_events_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "network", audit_events=NotApplicable("deleted"))
    handled = set(_guard()._handlers)  # type: ignore[attr-defined]
    assert "socket.connect" not in handled and "open" in handled


def test_an_unknown_audit_handler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "file", audit_events=(families.AuditEvent("open", "nonesuch"),))
    with pytest.raises(KeyError):
        _guard()


def test_the_scanner_suggests_families_from_the_registered_modules() -> None:
    from policy_engine.enforcement.host import scan

    assert scan._NETWORK_MODULES == families.scan_modules("network")
    assert scan._SUBPROCESS_MODULES == families.scan_modules("subprocess")
    assert scan._DATABASE_MODULES == families.scan_modules("database")
    assert families.scan_modules("hook") == frozenset()


def test_the_scanner_reads_its_call_signatures_from_the_registry() -> None:
    from policy_engine.enforcement.host import scan

    assert scan._NETWORK_FUNCTIONS == set(families.scan_signature("network:request").functions)
    execute = families.scan_signature("subprocess:execute")
    assert (scan._SUBPROCESS_FUNCTIONS, scan._SUBPROCESS_PREFIXES) == (set(execute.functions),
                                                                       execute.prefixes)
    for permission, functions, methods in (("file:delete", scan._FILE_DELETE, scan._PATH_DELETE_METHODS),
                                           ("file:write", scan._FILE_WRITE, scan._PATH_WRITE_METHODS),
                                           ("file:read", scan._FILE_READ, scan._PATH_READ_METHODS)):
        signature = families.scan_signature(permission)
        assert (functions, methods) == (set(signature.functions), set(signature.path_methods))
    assert scan._FILE_WRITE_PREFIXES == families.scan_signature("file:write").prefixes
    assert scan._OPENERS == families.scan_openers()
    assert families.scan_signature("hook:register").functions == ()
    with pytest.raises(KeyError):
        families.scan_signature("file:execute")


def _call_of(name: str) -> str:
    module, _, function = name.rpartition(".")
    if module == "builtins":
        return f"{function}('x')\n"
    return f"import {module}\n{module}.{function}('x')\n"


def _signature_calls() -> list[tuple[str, str]]:
    cases = []
    for f in FAMILIES:
        if isinstance(f.scan_calls, NotApplicable):
            continue
        for signature in f.scan_calls.calls:
            cases += [(signature.permission, _call_of(name)) for name in signature.functions]
            cases += [(signature.permission, _call_of(prefix + "x")) for prefix in signature.prefixes]
            cases += [(signature.permission, f"import pathlib\npathlib.Path('x').{method}()\n")
                      for method in signature.path_methods]
        for opener in f.scan_calls.openers:
            call = _call_of(opener.function).replace("('x')", "('x', 'w')")
            cases += [("file:write", call), ("file:read", _call_of(opener.function))]
    return cases


@pytest.mark.parametrize(("permission", "code"), _signature_calls())
def test_every_registered_call_is_found_by_the_scanner(permission: str, code: str) -> None:
    # The consumer's test of the facet: remove a call from the registry and its case goes,
    # change the scanner's table without the registry and this fails.
    from policy_engine.enforcement.host.scan import implied_permissions, scan_source

    assert Permission(permission) in implied_permissions(scan_source(code, "m.py")), code


_PLAN_POLICY = """
allow plugin "p" to file:read on "/data/in/**"
allow plugin "p" to file:write on "/data/out/**"
allow plugin "p" to network:request on "api.example.com:443"
allow plugin "p" to subprocess:execute on "git"
"""


def _grants() -> object:
    from policy_engine.enforcement.host.spec import kernel_grants
    from policy_engine.engine import Engine
    from policy_engine.manifest import manifest_from_mapping

    manifest = manifest_from_mapping(
        {"name": "p", "version": "1.0.0", "type": "agent", "entry_point": "m:C",
         "permissions": ["file:read", "file:write", "network:request", "subprocess:execute"]},
        file="p.yaml", plugin_path=Path("/srv/plugins/p"))
    engine = Engine.from_source(_PLAN_POLICY, [manifest])
    table = engine.plugin_table("p")
    assert table is not None
    return kernel_grants(table)


def test_the_kernel_plan_reads_its_parts_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    grants = _grants()
    assert grants.read_paths == ("/data/in",)  # type: ignore[attr-defined]
    assert grants.write_paths == ("/data/out",)  # type: ignore[attr-defined]
    assert grants.connect_ports == (443,) and grants.subprocess  # type: ignore[attr-defined]
    _without(monkeypatch, "file", kernel=NotApplicable("deleted"))
    _without(monkeypatch, "subprocess", kernel=NotApplicable("deleted"))
    grants = _grants()
    assert grants.read_paths == () and grants.write_paths == ()  # type: ignore[attr-defined]
    assert not grants.subprocess and grants.connect_ports == (443,)  # type: ignore[attr-defined]


def test_lint_over_broad_reads_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.lint.policy_checks import analyse_policy_set, compile_files, parse_file

    source = 'allow plugin "p" to network:request on "*"\nallow plugin "q" to file:write\n'

    def over_broad() -> int:
        policy, _ = compile_files([parse_file("p.policy", source)], {})
        assert policy is not None
        return [d.code for d in analyse_policy_set(policy)].count("PL304")

    assert over_broad() == 2
    _without(monkeypatch, "network", over_broad=NotApplicable("deleted"))
    assert over_broad() == 1


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
