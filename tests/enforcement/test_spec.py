"""The host's plan for one plugin (``host/spec.py``), as a unit: no worker is started.

Each test builds a real engine from a policy and a manifest on disk and checks what the
kernel, the sampler and the worker's checker would receive.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_engine import Engine
from policy_engine.digest import plugin_digest
from policy_engine.enforcement.host.spec import (
    checker_data,
    inexact_denies,
    kernel_grants,
    kernel_masks,
    lockdown_spec,
    resource_limits,
    wire_table,
)
from policy_engine.enforcement.wire import WireTable
from policy_engine.errors import UsageError
from policy_engine.manifest import load_manifest
from policy_engine.table import PluginTable


def plugin_dir(tmp_path: Path, permissions: list[str]) -> Path:
    directory = tmp_path / "plugins" / "demo"
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"  - {p}\n" for p in permissions)
    (directory / "plugin.yaml").write_text(
        "name: demo\nversion: 1.0.0\ntype: agent\nentry_point: mod:Plugin\n"
        f"permissions:\n{lines}")
    (directory / "mod.py").write_text("x = 1\n")
    return directory


def engine_for(tmp_path: Path, policy: str, permissions: list[str]) -> Engine:
    directory = plugin_dir(tmp_path, permissions)
    return Engine.from_source(policy, [load_manifest(directory)])


def table_of(engine: Engine) -> PluginTable:
    table = engine.plugin_table("demo")
    assert table is not None
    return table


def test_file_grants_become_read_and_write_trees(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/data/**", "/etc/app/*.conf"
        allow plugin * to file:write on "/var/out/**"
        allow plugin * to file:delete on "/var/tmp/x/**"
    """, ["file:read /srv/**", "file:read /etc/app/**", "file:write /var/out/**",
          "file:delete /var/tmp/**"])
    grants = kernel_grants(table_of(engine))
    # Each pattern's literal root is the tree; a glob's tree is the directory it sits in.
    assert grants.read_paths == ("/srv/data", "/etc/app")
    assert grants.write_paths == ("/var/out", "/var/tmp/x")
    assert (grants.network, grants.subprocess, grants.connect_ports) == (False, False, ())
    assert grants.any_port is False


def test_an_allow_without_on_is_narrowed_by_the_declaration(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "allow plugin * to file:read",
                        ["file:read /srv/**", "file:read /opt/x/y.txt"])
    assert kernel_grants(table_of(engine)).read_paths == ("/srv", "/opt/x/y.txt")


def test_an_allow_without_on_and_no_declared_scope_is_the_whole_tree(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "allow plugin * to file:read", ["file:read"])
    assert kernel_grants(table_of(engine)).read_paths == ("/",)


def test_undeclared_or_unallowed_permissions_give_nothing(tmp_path: Path) -> None:
    # file:write is allowed but not declared; file:read is declared but not allowed.
    engine = engine_for(tmp_path, 'allow plugin * to file:write on "/x/**"',
                        ["file:read /srv/**"])
    grants = kernel_grants(table_of(engine))
    assert grants.read_paths == () and grants.write_paths == ()


def test_an_unconditional_deny_of_everything_gives_nothing(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/**"
        deny plugin * to file:read
    """, ["file:read /srv/**"])
    assert kernel_grants(table_of(engine)).read_paths == ()


def test_a_conditional_deny_of_everything_leaves_the_grant_to_the_table(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/**"
        deny plugin * to file:read when context.night == true
    """, ["file:read /srv/**"])
    assert kernel_grants(table_of(engine)).read_paths == ("/srv",)


def test_a_grant_inside_a_wholly_denied_tree_is_left_out(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/**", "/srv/secret/keys/**", "/srv/secret/a.txt"
        deny plugin * to file:read on "/srv/secret/**"
        deny plugin * to file:read on "/srv/other/*.key"
    """, ["file:read /srv/**"])
    # `/srv/**` stays (the deny lies inside it, a mask holds it); the two grants inside
    # the denied tree are never shown. A glob deny (`*.key`) removes no grant.
    assert kernel_grants(table_of(engine)).read_paths == ("/srv",)


def test_ports_single_range_wide_and_any(tmp_path: Path) -> None:
    cases = {
        '"api.example.com:443"': ((443,), False),
        '"api.example.com:8000-8002", "b.example.com:443"': ((443, 8000, 8001, 8002), False),
        '"api.example.com:1000-5000"': ((), True),  # wider than the kernel's port list
        '"api.example.com"': ((), True),  # no port: any port
    }
    for on, (ports, any_port) in cases.items():
        engine = engine_for(tmp_path, f"allow plugin * to network:request on {on}",
                            ["network:request"])
        grants = kernel_grants(table_of(engine))
        assert (grants.connect_ports, grants.any_port, grants.network) == (ports, any_port, True), on


def test_a_network_allow_on_any_resource_is_any_port(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "allow plugin * to network:request", ["network:request"])
    grants = kernel_grants(table_of(engine))
    assert grants.network and grants.any_port and grants.connect_ports == ()


def test_no_network_grant_is_no_port_at_all(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "allow plugin * to file:read", ["network:request"])
    grants = kernel_grants(table_of(engine))
    assert (grants.network, grants.any_port, grants.connect_ports) == (False, False, ())


def test_the_exec_switch_follows_a_subprocess_grant(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, 'allow plugin * to subprocess:execute on "git"',
                        ["subprocess:execute git"])
    assert kernel_grants(table_of(engine)).subprocess is True
    engine = engine_for(tmp_path, """
        allow plugin * to subprocess:execute on "git"
        deny plugin * to subprocess:execute
    """, ["subprocess:execute git"])
    assert kernel_grants(table_of(engine)).subprocess is False


def test_masks_are_literals_and_whole_trees_of_unconditional_read_denies(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/**"
        deny plugin * to file:read on "/srv/a.key", "/srv/private/**", "/srv/*.pem"
        deny plugin * to file:read on "/srv/night/**" when context.night == true
        deny plugin * to file:write on "/srv/w/**"
        deny plugin * to file:read
    """, ["file:read /srv/**"])
    assert kernel_masks(table_of(engine)) == ("/srv/a.key", "/srv/private")


def test_masks_of_a_plugin_without_read_entries(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "allow plugin * to hook:register", ["hook:register"])
    assert kernel_masks(table_of(engine)) == ()


def test_inexact_denies_name_each_rule_and_why(tmp_path: Path) -> None:
    existing = tmp_path / "srv"
    (existing / "private").mkdir(parents=True)
    (existing / "a.key").write_text("k")
    engine = engine_for(tmp_path, f"""
        allow plugin * to file:read on "{existing}/**"
        allow plugin * to file:write on "{existing}/out/**"
        deny plugin * to file:read on "{existing}/a.key", "{existing}/private/**"
        deny plugin * to file:read on "{existing}/*.pem"
        deny plugin * to file:read on "{existing}/missing.txt"
        deny plugin * to file:write on "{existing}/out/x.txt"
        deny plugin * to file:read when context.night == true
        deny plugin * to file:read on "{existing}/n/**" when context.night == true
    """, [f"file:read {existing}/**", f"file:write {existing}/out/**"])
    found = inexact_denies(table_of(engine))
    text = "\n".join(found)
    assert len(found) == 5, text
    # Read denies first (in policy order), then write denies.
    assert "a glob inside granted" in found[0] and "*.pem" in found[0]
    assert "does not exist yet" in found[1]
    assert found[2].endswith("it has a condition, which the kernel cannot evaluate")
    assert "it has a condition, which the kernel cannot evaluate, inside granted" in found[3]
    assert "/n/**" in found[3]
    assert "write or delete deny" in found[4] and "out/x.txt" in found[4]
    # The exact ones (a literal that exists, a whole tree) are not reported.
    assert "a.key" not in text and "private" not in text


def test_inexact_denies_count_the_data_directory_as_writable(tmp_path: Path) -> None:
    data = tmp_path / "data" / "demo"
    data.mkdir(parents=True)
    engine = engine_for(tmp_path, f'deny plugin * to file:write on "{data}/*.log"',
                        ["file:read"])
    assert inexact_denies(table_of(engine)) == ()
    (found,) = inexact_denies(table_of(engine), data_dir=str(data))
    assert "a glob inside granted" in found


def test_lockdown_spec_carries_the_grants_masks_and_limits(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        plugin "demo" { limit memory 300MB  limit file_size 2MB }
        allow plugin * to file:read on "/srv/**"
        deny plugin * to file:read on "/srv/a.key"
        allow plugin * to network:request on "api.example.com:443"
    """, ["file:read /srv/**", "network:request api.example.com:443"])
    spec = lockdown_spec(table_of(engine), tmp_path / "scratch")
    assert spec.scratch_dir == str(tmp_path / "scratch")
    assert spec.plugin_dir == str(tmp_path / "plugins" / "demo")
    assert (spec.memory_bytes, spec.file_size_bytes) == (300_000_000, 2_000_000)
    assert spec.read_paths == ("/srv",) and spec.write_paths == ()
    assert spec.connect_ports == (443,) and not spec.connect_any_port
    assert spec.allow_network and not spec.allow_subprocess
    assert spec.mask_paths == ("/srv/a.key",)


def test_lockdown_spec_in_audit_mode_keeps_the_view_read_only_and_the_limits(
        tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/**"
        deny plugin * to file:read on "/srv/a.key"
    """, ["file:read /srv/**"])
    spec = lockdown_spec(table_of(engine), tmp_path, audit=True, data_dir=str(tmp_path / "d"))
    # The sandbox holds in audit mode: the grants' view, read-only, default denies masked,
    # the data directory a throwaway tmpfs.
    assert spec.read_paths == ("/srv",) and spec.write_paths == ()
    assert spec.throwaway_paths == (str(tmp_path / "d"),)
    assert spec.allow_network and spec.allow_subprocess and spec.connect_any_port
    assert spec.mask_paths == ("/srv/a.key",)
    assert spec.memory_bytes == engine.limits("demo").memory
    # The old audit mode, asked for by name, is the open filesystem.
    open_spec = lockdown_spec(table_of(engine), tmp_path, audit=True, unsandboxed=True)
    assert open_spec.read_paths == ("/",) and open_spec.write_paths == ("/",)
    assert open_spec.mask_paths == () and open_spec.throwaway_paths == ()


def test_lockdown_spec_refuses_a_plugin_without_a_directory(tmp_path: Path) -> None:
    bare = Engine.from_source("allow plugin * to file:read",
                              ["name: bare\nversion: 1.0.0\ntype: agent\nentry_point: m:P\n"])
    table = bare.plugin_table("bare")
    assert table is not None
    with pytest.raises(UsageError, match="has no directory"):
        lockdown_spec(table, tmp_path)


def test_resource_limits_are_the_plugins_settings(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        plugin "demo" {
            limit memory 200MB warn 50%
            limit cpu 25%
            timeout init 7s
            on violation warn
        }
        allow plugin * to file:read
    """, ["file:read"])
    limits = resource_limits(table_of(engine).effective)
    assert limits.memory_bytes == 200_000_000
    assert limits.memory_warn_fraction == pytest.approx(0.5)
    assert limits.cpu_share == pytest.approx(0.25)
    assert limits.on_violation == "warn"
    assert limits.init_timeout == pytest.approx(7.0)


def test_checker_data_is_the_encoded_table_and_the_audit_switch(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, 'allow plugin * to file:read on "/srv/**"', ["file:read /srv/**"])
    data = checker_data(table_of(engine), audit=True)
    assert data["audit"] is True
    assert WireTable.decode(data["table"]) == wire_table(table_of(engine))  # type: ignore[arg-type]
    assert checker_data(table_of(engine))["audit"] is False


def test_wire_table_evaluates_conditions_for_no_context(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, """
        allow plugin * to file:read on "/srv/**"
        allow plugin * to file:read on "/night/**" when context.night == true
        allow plugin * to file:read on "/day/**" unless context.night == true
        deny plugin * to file:read on "/srv/a/**" when context.night == true
        deny plugin * to file:read on "/srv/b/**" unless context.missing == 1
        allow plugin * to file:read, network:request on "/srv/both/**", "api.example.com"
    """, ["file:read /srv/**", "network:request"])
    table = wire_table(table_of(engine))
    assert (table.plugin, table.enabled, table.trusted) == ("demo", True, True)
    assert table.plugin_dir == str(tmp_path / "plugins" / "demo")
    entries = {e.permission: e for e in table.entries}
    read = entries["file:read"]
    assert read.declared and read.declared_patterns == ("/srv/**",)
    # Without a context an allow that needs one does not apply, a deny that cannot be
    # evaluated applies: both as the engine decides a request without context.
    assert [r.patterns for r in read.allows] == [("/srv/**",), ("/srv/both/**",)]
    assert [r.patterns for r in read.denies] == [("/srv/a/**",), ("/srv/b/**",)]
    assert read.allows[0].location.endswith(":2:9")
    network = entries["network:request"]
    assert network.declared_patterns is None
    # A rule naming patterns of two kinds sends each permission only its own kind.
    assert [r.patterns for r in network.allows] == [("api.example.com",)]


def test_wire_table_of_a_plugin_whose_pin_does_not_match(tmp_path: Path) -> None:
    directory = plugin_dir(tmp_path, ["file:read"])
    wrong = "0" * 64 if plugin_digest(directory) != "0" * 64 else "1" * 64
    engine = Engine.from_source(f'trust plugin "demo" sha256-v2 "{wrong}"\nallow plugin * to file:read',
                                [load_manifest(directory)])
    assert wire_table(table_of(engine)).trusted is False


def test_wire_table_refuses_a_plugin_without_a_directory() -> None:
    engine = Engine.from_source("allow plugin * to file:read",
                                ["name: bare\nversion: 1.0.0\ntype: agent\nentry_point: m:P\n"])
    table = engine.plugin_table("bare")
    assert table is not None
    with pytest.raises(UsageError, match="has no directory"):
        wire_table(table)
