"""Plugin manifests: every field, every error, the rendered messages and robustness."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_engine.diagnostics import Diagnostic
from policy_engine.errors import ManifestError
from policy_engine.manifest import (
    MANIFEST_NAME,
    SCHEMA_PATH,
    DeclaredPermission,
    PluginMetadata,
    discover_manifests,
    load_manifest,
    load_manifests,
    manifest_from_mapping,
    parse_manifest,
    plugin_schema,
)
from policy_engine.permissions import ACTION_SPELLINGS, ALL_PERMISSIONS, Permission

from .conftest import GOLDEN, assert_golden

VALID = """\
name: analytics                 # lowercase: letters, digits, '-' and '_', a letter first
version: 2.1.0                  # semantic version
type: agent                     # agent | workflow | hook (extendable)
entry_point: analytics.plugin:AnalyticsPlugin
description: Aggregates metrics
enabled: true
permissions:
  - hook:register
  - file:read {plugin_dir}/**
  - network:request api.example.com:443
  - database:write reports.daily
timeouts: {init: 10s, execute: 600s}
limits: {memory: 1GB}
"""

MINIMAL = {
    "name": "analytics",
    "version": "1.0.0",
    "type": "agent",
    "entry_point": "analytics.plugin:AnalyticsPlugin",
}

ROOT = Path(__file__).resolve().parents[1]


def errors_of(text: str, file: str = MANIFEST_NAME) -> tuple[Diagnostic, ...]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, file=file)
    return info.value.diagnostics


def only_error(text: str) -> Diagnostic:
    found = errors_of(text)
    assert len(found) == 1, [d.render() for d in found]
    return found[0]


def with_fields(**fields: str) -> str:
    """MINIMAL as YAML, plus ``fields`` given as YAML text."""
    lines = [f"{k}: {v}" for k, v in MINIMAL.items() if k not in fields]
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# The valid manifest, field by field --------------------------------------------------------


def test_valid_manifest_fields(tmp_path: Path) -> None:
    meta = parse_manifest(VALID, file="plugin.yaml", plugin_path=tmp_path)
    assert (meta.name, meta.version, meta.type) == ("analytics", "2.1.0", "agent")
    assert meta.entry_point == "analytics.plugin:AnalyticsPlugin"
    assert meta.description == "Aggregates metrics"
    assert meta.enabled is True
    assert meta.plugin_path == tmp_path.resolve()
    assert meta.manifest_path is None
    assert dict(meta.timeouts) == {"init": 10.0, "execute": 600.0}
    assert meta.timeout_seconds == 10.0
    assert dict(meta.limits) == {"memory": 1_000_000_000.0}
    assert dict(meta.extra) == {}


def test_declared_permissions() -> None:
    meta = parse_manifest(VALID)
    first, second, third, fourth = meta.permissions
    assert first == DeclaredPermission(
        action="hook:register",
        permissions=frozenset({Permission.HOOK_REGISTER}),
        scopes=(),
        text="hook:register",
        pointer="/permissions/0",
        line=8,
        column=5,
    )
    assert second.action == "file:read"
    assert second.scopes == ("{plugin_dir}/**",)  # templates are not expanded here
    assert (second.pointer, second.line, second.column) == ("/permissions/1", 9, 5)
    assert third.permissions == frozenset({Permission.NETWORK_REQUEST})
    assert third.scopes == ("api.example.com:443",)
    assert fourth.text == "database:write reports.daily"


def test_quoted_and_several_scopes() -> None:
    meta = parse_manifest(with_fields(permissions='[\'file:read "/srv/my data/**" /tmp/x\']'))
    (entry,) = meta.permissions
    assert entry.scopes == ("/srv/my data/**", "/tmp/x")


def test_wildcards_expand() -> None:
    meta = parse_manifest(with_fields(permissions='["file:*", "*"]'))
    family, everything = meta.permissions
    assert family.action == "file:*"
    assert family.permissions == {Permission.FILE_READ, Permission.FILE_WRITE, Permission.FILE_DELETE}
    assert everything.permissions == ALL_PERMISSIONS


def test_duplicate_permission_entries_are_fine() -> None:
    meta = parse_manifest(with_fields(permissions="[hook:register, hook:register]"))
    assert [p.pointer for p in meta.permissions] == ["/permissions/0", "/permissions/1"]


def test_minimal_manifest_defaults() -> None:
    meta = manifest_from_mapping(MINIMAL)
    assert meta.description == ""
    assert meta.enabled is True
    assert meta.permissions == ()
    assert dict(meta.timeouts) == {} and dict(meta.limits) == {} and dict(meta.extra) == {}
    assert meta.timeout_seconds is None
    assert meta.plugin_path == Path.cwd().resolve()


@pytest.mark.parametrize(
    ("yaml_value", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("10", 10.0), ("1.5", 1.5), ('"2.5s"', 2.5)],
)
def test_durations(yaml_value: str, seconds: float) -> None:
    meta = parse_manifest(with_fields(timeouts=f"{{hook: {yaml_value}}}"))
    assert meta.timeouts["hook"] == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("field", "yaml_value", "amount"),
    [
        ("memory", "1GB", 1e9),
        ("memory", "512MiB", 512 * 1024**2),
        ("memory", "1048576", 1048576),
        ("file_size", "100MB", 1e8),
        ("cpu", "50%", 0.5),
        ("cpu", "150%", 1.5),
    ],
)
def test_limits(field: str, yaml_value: str, amount: float) -> None:
    meta = parse_manifest(with_fields(limits=f"{{{field}: {yaml_value}}}"))
    assert meta.limits[field] == pytest.approx(amount)


def test_legacy_timeout_seconds_is_the_init_timeout() -> None:
    assert parse_manifest(with_fields(timeout_seconds="30")).timeouts == {"init": 30.0}
    agreeing = with_fields(timeout_seconds="30", timeouts="{init: 30s, hook: 5s}")
    assert parse_manifest(agreeing).timeout_seconds == 30.0


def test_legacy_timeout_seconds_conflict() -> None:
    error = only_error(with_fields(timeout_seconds="30", timeouts="{init: 10s}"))
    assert error.pointer == "/timeout_seconds"
    assert "timeouts.init" in error.message and "`10s`" in error.message and "`30`" in error.message
    assert error.hint == "remove `timeout_seconds`: `timeouts.init` replaces it"


def test_optional_extra_fields_and_attributes() -> None:
    meta = parse_manifest(with_fields(
        author="Ada", homepage="https://example.com/analytics", tags="[metrics, reports]",
        requires_python='">=3.10"', enabled="false", description="Counts things",
    ))
    assert dict(meta.extra) == {
        "author": "Ada",
        "homepage": "https://example.com/analytics",
        "tags": ("metrics", "reports"),
        "requires_python": ">=3.10",
    }
    assert meta.attributes == {
        "name": "analytics",
        "version": "1.0.0",
        "type": "agent",
        "entry_point": "analytics.plugin:AnalyticsPlugin",
        "description": "Counts things",
        "enabled": False,
        "author": "Ada",
        "tags": ("metrics", "reports"),
    }
    assert manifest_from_mapping(MINIMAL).attributes["author"] == ""
    assert manifest_from_mapping(MINIMAL).attributes["tags"] == ()


@pytest.mark.parametrize("type_name", ["agent", "workflow", "hook"])
def test_known_types(type_name: str) -> None:
    assert manifest_from_mapping({**MINIMAL, "type": type_name}).type == type_name


def test_type_is_extendable_by_registering_it() -> None:
    from policy_engine.plugin_api import PLUGIN_BASES, BasePlugin, register_plugin_type
    from policy_engine.plugin_types import KNOWN_PLUGIN_TYPES

    with pytest.raises(ManifestError, match="unknown plugin type `exporter_v2`"):
        manifest_from_mapping({**MINIMAL, "type": "exporter_v2"})
    register_plugin_type("exporter_v2", BasePlugin)
    try:
        assert manifest_from_mapping({**MINIMAL, "type": "exporter_v2"}).type == "exporter_v2"
    finally:
        PLUGIN_BASES.pop("exporter_v2")
        KNOWN_PLUGIN_TYPES.discard("exporter_v2")


@pytest.mark.parametrize(("type_name", "hint"), [("agnet", "did you mean `agent`?"),
                                                 ("qqqqqqqq", "plugin types are `agent`, ")])
def test_unknown_types_are_errors_with_a_hint(type_name: str, hint: str) -> None:
    # Other tests may register types (`reporter`, say), so the list is checked by its start.
    with pytest.raises(ManifestError) as info:
        manifest_from_mapping({**MINIMAL, "type": type_name})
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.pointer == "/type" and (diagnostic.hint or "").startswith(hint)


@pytest.mark.parametrize("entry", ["file:read /srv/my data/**", "file:* /srv/a b c/** /tmp/x",
                                   "file:write {plugin_dir}/my notes.txt"])
def test_an_unquoted_space_in_a_path_scope_is_an_error(entry: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(with_fields(permissions=f"['{entry}']"))
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.message.startswith("unquoted space in scope")
    assert '"' in (diagnostic.hint or "")


def test_several_path_scopes_still_parse() -> None:
    meta = parse_manifest(with_fields(permissions="['file:read /srv/a {plugin_dir}/b /srv/c']"))
    assert meta.permissions[0].scopes == ("/srv/a", "{plugin_dir}/b", "/srv/c")


@pytest.mark.parametrize("version", ["0.0.1", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "2.0.0-rc.1+x"])
def test_semantic_versions(version: str) -> None:
    assert manifest_from_mapping({**MINIMAL, "version": version}).version == version


def test_metadata_is_immutable_and_hashable() -> None:
    meta = parse_manifest(VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        meta.timeouts["init"] = 1.0  # type: ignore[index]
    assert isinstance(meta.extra, MappingProxyType)
    assert hash(meta) == hash(parse_manifest(VALID))
    assert meta == parse_manifest(VALID)


def test_metadata_built_by_hand_is_frozen_too() -> None:
    limits = {"memory": 1.0}
    meta = PluginMetadata("x", "1.0.0", "agent", "x:X", Path("/x"), permissions=[], limits=limits)  # type: ignore[arg-type]
    limits["memory"] = 2.0
    assert meta.limits == {"memory": 1.0} and meta.permissions == ()
    assert meta.timeout_seconds is None


# Errors, one kind at a time ----------------------------------------------------------------


def test_unknown_permission_suggests_the_spelling() -> None:
    text = with_fields(permissions="\n  - hook:register\n  - file:raed {plugin_dir}/**")
    error = only_error(text)
    assert error.message == "unknown permission `file:raed`"
    assert error.hint == "did you mean `file:read`?"
    assert error.pointer == "/permissions/1"
    assert error.span is not None
    assert (error.span.file, error.span.line, error.span.column) == ("plugin.yaml", line_of(text, "raed"), 5)
    assert error.span.end_column == 5 + len("file:raed")


def test_unknown_permission_without_a_close_match_lists_them() -> None:
    error = only_error(with_fields(permissions="[zzz:qqq]"))
    assert error.hint is not None and "`file:read`" in error.hint and "`database:write`" in error.hint


def test_grammar_errors_point_inside_the_entry() -> None:
    text = with_fields(permissions='\n  - file:read "{plugin_dir}/data')
    error = only_error(text)
    assert error.message == "unterminated string"
    assert error.hint == 'close the string with `"` on the same line'
    assert error.span is not None
    assert (error.span.line, error.span.column) == (line_of(text, "{plugin_dir}"), 15)


def test_grammar_error_in_a_quoted_entry_is_shifted_by_the_quote() -> None:
    text = with_fields(permissions="\n  - 'file:write /srv/a, /srv/b'")
    error = only_error(text)
    assert error.message.startswith("expected a scope")
    assert error.span is not None and error.span.column == len("  - 'file:write /srv/a") + 1


def test_bare_family_gets_the_grammar_hint() -> None:
    error = only_error(with_fields(permissions="[file]"))
    assert error.message == "expected a permission such as `file:read` or `*`, found `file`"
    assert error.hint == "permissions are written `family:action`, such as `file:read`"


def test_wildcard_with_scopes_is_refused() -> None:
    error = only_error(with_fields(permissions="['* /srv/**']"))
    assert error.message == "expected no scopes after `*`, found `/srv/**`"


def test_hash_inside_an_entry_is_refused_not_silently_dropped() -> None:
    error = only_error(with_fields(permissions="[file:read /srv/issue#12]"))
    assert "`#`" in error.message
    assert error.hint == 'quote a scope that contains `#`: `"/srv/issue#12"`'
    quoted = parse_manifest(with_fields(permissions="['file:read \"/srv/issue#12\"']"))
    assert quoted.permissions[0].scopes == ("/srv/issue#12",)


@pytest.mark.parametrize(
    ("field", "value", "message", "hint"),
    [
        ("timeouts", "{init: 10 secs}", "unknown duration unit `secs` in `10 secs`", "durations take ms, s, m or h"),
        ("timeouts", "{init: 2hr}", "unknown duration unit `hr` in `2hr`", "did you mean `h`?"),
        ("timeouts", "{hook: 0s}", "expected a positive duration, found `0s`", "leave `hook` out to use the policy's default"),
        ("timeouts", "{hook: -3}", "duration `-3` is negative", None),
        ("timeouts", "{hook: .inf}", "expected a positive duration, found the number `.inf`", "leave `hook` out to use the policy's default"),
        ("limits", "{memory: 1gb}", "unknown size unit `gb` in `1gb`", "sizes take B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"),
        ("limits", "{cpu: 50}", "expected a percentage like `80%`, found `50`", "write `50%`"),
        ("limits", "{file_size: 0}", "expected a positive size, found the number `0`", "leave `file_size` out to use the policy's default"),
    ],
)
def test_bad_quantities_carry_the_unit_hint(field: str, value: str, message: str, hint: str | None) -> None:
    error = only_error(with_fields(**{field: value}))
    assert (error.message, error.hint) == (message, hint)
    assert error.pointer is not None and error.pointer.startswith(f"/{field}/")


def test_missing_required_fields() -> None:
    found = errors_of("name: analytics\ndescription: x\n")
    assert [d.pointer for d in found] == ["/version", "/type", "/entry_point"]
    assert found[0].message == "missing required field `version`"
    assert found[0].hint == "add `version: 1.0.0`"
    assert all(d.span is not None and (d.span.line, d.span.column) == (1, 1) for d in found)


def test_name_pattern_and_lowercase_hint() -> None:
    error = only_error(with_fields(name="Analytics"))
    assert error.message == "expected a name matching `^[a-z][a-z0-9_-]*$`, found `Analytics`"
    assert error.hint == "did you mean `analytics`?"
    assert error.pointer == "/name"
    assert error.span is not None and (error.span.line, error.span.column) == (4, 7)


def test_name_with_a_trailing_newline_is_refused() -> None:
    # Python's `$` would accept it; JSON Schema's does not, and neither do we.
    error = only_error(with_fields(name='"analytics\\n"'))
    assert error.pointer == "/name" and "`analytics\\n`" in error.message


def test_type_must_be_a_lowercase_identifier() -> None:
    error = only_error(with_fields(type="Agent"))
    assert error.hint == "did you mean `agent`?"


@pytest.mark.parametrize(
    ("yaml_value", "hint"),
    [
        ("1.0", 'write `version: "1.0.0"`: quoted, so that YAML does not read a number'),
        ("1.10", 'write `version: "1.10.0"`: quoted, so that YAML does not read a number'),
        ('"1.2"', "did you mean `1.2.0`?"),
        ("v1", "versions are `MAJOR.MINOR.PATCH`, such as `1.0.0`"),
    ],
)
def test_version_errors(yaml_value: str, hint: str) -> None:
    error = only_error(with_fields(version=yaml_value))
    assert error.pointer == "/version" and error.hint == hint


def test_entry_point_hint() -> None:
    error = only_error(with_fields(entry_point="analytics.plugin.AnalyticsPlugin"))
    assert error.hint == "separate the module from the class with `:`: `analytics.plugin:AnalyticsPlugin`"


@pytest.mark.parametrize(
    ("field", "yaml_value", "found"),
    [
        ("enabled", '"yes"', "the string `yes`"),
        ("description", "[a]", "a list"),
        ("permissions", "hook:register", "the string `hook:register`"),
        ("permissions", "", "no value"),
        ("tags", "[a, '']", "an empty string"),
        ("author", "42", "the number `42`"),
        ("timeouts", "10s", "the string `10s`"),
        ("limits", "[1GB]", "a list"),
        ("homepage", "example.com", "`example.com`"),
        ("requires_python", "3.10", "the number `3.10`"),
        ("name", "no", "`no`, which YAML reads as `false`"),
    ],
)
def test_wrong_types_say_found_and_expected(field: str, yaml_value: str, found: str) -> None:
    error = only_error(with_fields(**{field: yaml_value}))
    assert error.message.startswith("expected ")
    assert error.message.endswith(f", found {found}")
    assert error.pointer is not None and error.pointer.startswith(f"/{field}")


def test_unknown_fields_suggest_the_known_ones() -> None:
    text = with_fields(permisions="[]", timeouts="{init: 1s, startup: 5s}")
    first, second = errors_of(text)
    assert (first.message, first.hint, first.pointer) == (
        "unknown field `permisions`", "did you mean `permissions`?", "/permisions",
    )
    assert second.message == "unknown field `startup` in `timeouts`"
    assert second.hint == "known fields: `init`, `hook`, `execute`"
    assert second.span is not None and second.span.column == len("timeouts: {init: 1s, ") + 1


def test_duplicate_keys_are_reported() -> None:
    text = with_fields(permissions="[hook:register]") + "permissions: ['*']\n"
    error = only_error(text)
    assert error.message == "duplicate field `permissions`"
    assert error.span is not None and error.span.line == 6


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("name: a\nversion: [1, 2\ntype: x\n", 3, 5, "invalid YAML: expected `,` or `]`, but got `:`"),
        ("name: a\n  version: 1\n", 2, 10, "invalid YAML: mapping values are not allowed here"),
        ("name: a\n\tversion: 1\n", 2, 1, "invalid YAML: found character `\\t` that cannot start any token"),
        ("a: 1\n---\nb: 2\n", 2, 1, "invalid YAML: expected a single document in the stream, but found another document"),
        ("name: !!python/object:os.system x\n", 1, 7, "invalid YAML: could not determine a constructor for the tag `tag:yaml.org,2002:python/object:os.system`"),
        ("name: 2024-13-45\n", 1, 7, "invalid YAML: cannot read `2024-13-45` as a timestamp: month must be in 1..12"),
        ("name: a\x01\n", 1, 8, "invalid YAML: unacceptable character `#x0001`: special characters are not allowed"),
    ],
)
def test_yaml_errors_have_line_and_column(text: str, line: int, column: int, message: str) -> None:
    error = only_error(text)
    assert error.message == message
    assert error.span is not None and (error.span.line, error.span.column) == (line, column)
    assert error.pointer is None


def test_not_a_mapping() -> None:
    error = only_error("- name: analytics\n")
    assert error.message == "expected a mapping of manifest fields, found a list"
    assert error.pointer == ""


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_empty_file(text: str) -> None:
    error = only_error(text)
    assert error.message == "expected a mapping of manifest fields, found an empty document"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    path.write_bytes(b"name: analytics\ndescription: caf\xe9\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (error,) = info.value.diagnostics
    assert error.message == "expected UTF-8 text, found the byte `0xe9`"
    assert error.span is not None and (error.span.line, error.span.column) == (2, 17)


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(MINIMAL).encode())
    assert load_manifest(tmp_path).name == "analytics"


def test_all_problems_are_collected_in_file_order() -> None:
    text = "name: Bad\nversion: 1\ntype: agent\nentry_point: x\npermissions: [file:raed]\nlimits: {cpu: 2}\n"
    pointers = [d.pointer for d in errors_of(text)]
    assert pointers == ["/name", "/version", "/entry_point", "/permissions/0", "/limits/cpu"]


def test_nested_aliases_do_not_explode() -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ManifestError):
        parse_manifest("\n".join(lines) + "\n")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(ManifestError, match="input limit exceeded: line 1"):
        parse_manifest("[" * 50_000)
    with pytest.raises(ManifestError, match="nesting deeper than 32 levels"):
        parse_manifest("\n".join("  " * i + "- " for i in range(200)) + "\n")


@pytest.mark.parametrize(
    "data",
    [
        {"version": "1.\u00b2"},
        {"version": "1." + "9" * 5000},
        {"timeouts": {"\u00b2": 1, "10": 2}},
        {"limits": {"memory": 10**400, "file_size": 1e308 * 10}},
        {"timeouts": {"init": float("nan")}},
        {"name": b"bytes", "tags": [None, {"a": 1}], "permissions": [1, "file:read \x00"]},
        {1: "int key", None: "none key", ("t",): "tuple key"},
    ],
)
def test_odd_values_are_reported_not_crashed(data: dict[Any, Any]) -> None:
    with pytest.raises(ManifestError) as info:
        manifest_from_mapping({**MINIMAL, **data})
    assert str(info.value)


# In-memory data ------------------------------------------------------------------------------


def test_manifest_from_mapping_accepts_any_mapping_and_tuples() -> None:
    data = MappingProxyType({**MINIMAL, "permissions": ("hook:register",), "tags": ("a",)})
    meta = manifest_from_mapping(data, plugin_path=Path("plugins/analytics"))
    assert meta.permissions[0].line == 0 and meta.permissions[0].column == 0
    assert meta.plugin_path == Path("plugins/analytics").resolve()
    assert meta.extra["tags"] == ("a",)


def test_manifest_from_mapping_errors_have_pointers_but_no_lines() -> None:
    with pytest.raises(ManifestError) as info:
        manifest_from_mapping({**MINIMAL, "name": "Bad", "limits": {"cpu": "lots"}}, file="<api>")
    first, second = info.value.diagnostics
    assert first.pointer == "/name" and first.span is not None and first.span.line == 0
    assert first.render().startswith("<api>#/name: expected a name")
    assert second.pointer == "/limits/cpu"


def test_manifest_from_mapping_rejects_a_non_mapping() -> None:
    with pytest.raises(ManifestError, match="found a list"):
        manifest_from_mapping(["not", "a", "mapping"])  # type: ignore[arg-type]


# Files and directories -------------------------------------------------------------------------


def write_plugin(directory: Path, text: str = VALID) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return directory


def test_load_manifest_from_file_or_directory(tmp_path: Path) -> None:
    directory = write_plugin(tmp_path / "analytics")
    for path in (directory, directory / MANIFEST_NAME, str(directory)):
        meta = load_manifest(path)
        assert meta.plugin_path == directory.resolve()
        assert meta.manifest_path == (directory / MANIFEST_NAME).resolve()
        assert meta.plugin_path.is_absolute()


def test_load_manifest_names_the_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path / "bad", "name: Bad\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError) as info:
        load_manifest("bad")
    assert all(d.span is not None and d.span.file == os.path.join("bad", MANIFEST_NAME) for d in info.value.diagnostics)


def test_load_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "nothing-here")
    (error,) = info.value.diagnostics
    assert error.message == "cannot read the manifest: no such file or directory"
    assert error.hint == "a plugin directory keeps its manifest in `plugin.yaml`"


def test_discover_manifests(tmp_path: Path) -> None:
    write_plugin(tmp_path / "zeta")
    write_plugin(tmp_path / "alpha")
    (tmp_path / "not-a-plugin").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    assert discover_manifests(tmp_path) == (
        tmp_path / "alpha" / MANIFEST_NAME,
        tmp_path / "zeta" / MANIFEST_NAME,
    )
    assert discover_manifests(tmp_path / "alpha") == (tmp_path / "alpha" / MANIFEST_NAME,)
    with pytest.raises(ManifestError, match="cannot list the plugins directory"):
        discover_manifests(tmp_path / "missing")


def test_load_manifests_one_bad_never_stops_the_others(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a")
    write_plugin(tmp_path / "b", "name: [\n")
    write_plugin(tmp_path / "c", VALID.replace("analytics", "reports"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / MANIFEST_NAME).write_bytes(b"\xff")
    loaded, errors = load_manifests(tmp_path)
    assert [m.name for m in loaded] == ["analytics", "reports"]
    assert len(errors) == 2
    assert {e.diagnostics[0].span.file for e in errors if e.diagnostics[0].span} == {
        str(tmp_path / "b" / MANIFEST_NAME), str(tmp_path / "d" / MANIFEST_NAME),
    }


# The schema ------------------------------------------------------------------------------------


def test_schema_is_a_valid_2020_12_schema() -> None:
    schema = plugin_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://policy-engine.example/schemas/plugin.schema.json"
    assert schema["title"] and schema["description"]
    assert schema["required"] == ["name", "version", "type", "entry_point"]
    assert schema["properties"]["name"]["pattern"] == "^[a-z][a-z0-9_-]*$"
    assert schema["properties"]["type"]["examples"] == ["agent", "workflow", "hook"]
    assert "enum" not in schema["properties"]["type"]


def walk_objects(schema: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        if "properties" in schema:
            found.append(schema)
        for value in schema.values():
            found.extend(walk_objects(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(walk_objects(value))
    return found


def test_every_property_is_described_and_objects_are_closed() -> None:
    objects = walk_objects(plugin_schema())
    assert len(objects) == 3  # the manifest, timeouts, limits
    for obj in objects:
        assert obj["additionalProperties"] is False
        for name, prop in obj["properties"].items():
            assert prop.get("description"), name


def test_published_copy_is_byte_identical() -> None:
    assert (ROOT / "schemas" / "plugin.schema.json").read_bytes() == SCHEMA_PATH.read_bytes()
    json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def test_plugin_schema_returns_a_copy() -> None:
    plugin_schema()["properties"].clear()
    assert "name" in plugin_schema()["properties"]


def test_permission_pattern_agrees_with_the_permission_list() -> None:
    pattern = re.compile(plugin_schema()["properties"]["permissions"]["items"]["pattern"])
    for spelling in ACTION_SPELLINGS:
        assert pattern.search(spelling) and pattern.search(f"{spelling} /srv/**"), spelling
    for wrong in ("file:raed", "file", "file:read/x", "files:read", " file:read"):
        assert not pattern.search(wrong), wrong


def test_every_schema_field_has_a_readable_expectation() -> None:
    # A wrong type anywhere must say what was expected in words, not "a valid value".
    for name in plugin_schema()["properties"]:
        with pytest.raises(ManifestError) as info:
            manifest_from_mapping({**MINIMAL, name: {"wrong": ["type"]}})
        for d in info.value.diagnostics:
            assert "a valid value" not in d.message, d.message
    for obj, fields in (("timeouts", ("init", "hook", "execute")), ("limits", ("memory", "cpu", "file_size"))):
        for name in fields:
            with pytest.raises(ManifestError) as info:
                manifest_from_mapping({**MINIMAL, obj: {name: [1]}})
            assert "a valid value" not in info.value.diagnostics[0].message


def test_schema_accepts_the_example_manifest() -> None:
    jsonschema.Draft202012Validator(plugin_schema()).validate(yaml.safe_load(VALID))


# Golden files: the rendered text of each kind of error -----------------------------------------

GOLDEN_DIR = GOLDEN / "manifest"
GOLDEN_CASES = sorted(p.stem for p in GOLDEN_DIR.glob("*.yaml"))


def test_there_are_enough_golden_cases() -> None:
    assert len(GOLDEN_CASES) >= 8


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_error_text(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN_DIR)  # diagnostics then name the file as `case.yaml`
    with pytest.raises(ManifestError) as info:
        load_manifest(f"{case}.yaml")
    for d in info.value.diagnostics:
        assert "\n" not in d.message and (d.message[0].islower() or d.message[0] == "`"), d.message
        assert d.hint is None or "\n" not in d.hint
    assert_golden(GOLDEN_DIR / f"{case}.expected", str(info.value) + "\n")


# Properties: the only exception a caller ever sees is ManifestError -----------------------------

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def check_contract(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        meta = call(*args, **kwargs)
    except ManifestError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.message and "\n" not in d.message
            assert d.span is not None and (d.span.line == 0 or d.span.column >= 1)
        str(exc)  # renders
    else:
        assert isinstance(meta, PluginMetadata)


@PROPERTY_SETTINGS
@given(st.text())
def test_random_text_only_raises_manifest_error(text: str) -> None:
    check_contract(parse_manifest, text)


YAML_TEXT = st.text(alphabet=st.sampled_from(list(":-[]{}#&*!|>'\"%@`,? \n\t\\/.0123456789abcfs~")), max_size=20)


@st.composite
def mutated_manifest(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "swap-lines", "duplicate-line"]))
        at = draw(st.integers(0, len(text)))
        if kind == "insert":
            text = text[:at] + draw(st.one_of(YAML_TEXT, st.text(max_size=10))) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 30)):]
        elif kind == "replace":
            end = at + draw(st.integers(1, 10))
            text = text[:at] + draw(YAML_TEXT) + text[end:]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if kind == "swap-lines":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(j, lines[i])
            text = "\n".join(lines)
    return text


@PROPERTY_SETTINGS
@given(mutated_manifest())
def test_mutated_manifests_only_raise_manifest_error(text: str) -> None:
    check_contract(parse_manifest, text)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["10s", "1GB", "50%", "file:read /x", "*", "agent", "1.0.0", "a:B"]),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(["init", "memory", "cpu"]), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from([*plugin_schema()["properties"], "bogus"])


@PROPERTY_SETTINGS
@given(st.dictionaries(FIELD_NAMES, JSONISH, max_size=8), st.booleans(), JSONISH)
def test_random_data_only_raises_manifest_error(fields: dict[str, Any], base: bool, other: Any) -> None:
    data = {**MINIMAL, **fields} if base else fields
    check_contract(manifest_from_mapping, data)
    check_contract(manifest_from_mapping, other)  # mostly not even a mapping


@PROPERTY_SETTINGS
@given(st.dictionaries(FIELD_NAMES, JSONISH, max_size=6))
def test_random_data_as_yaml_only_raises_manifest_error(fields: dict[str, Any]) -> None:
    text = yaml.safe_dump({**MINIMAL, **fields}, allow_unicode=True)
    check_contract(parse_manifest, text)


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_manifest_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / MANIFEST_NAME
        path.write_bytes(data)
        check_contract(load_manifest, path)


def test_discovery_lists_and_sorts_as_paths_do(tmp_path: Path) -> None:
    from policy_engine.manifest import MANIFEST_NAME, discover_manifests

    for name in ("a", "a-b", "a.b", "a b", "A", "ä", "a0", "_x", "b", "no-manifest", "manifest-dir"):
        (tmp_path / name).mkdir()
    for name in ("a", "a-b", "a.b", "a b", "A", "ä", "a0", "_x", "b"):
        (tmp_path / name / MANIFEST_NAME).write_text("name: x\n")
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "manifest-dir" / MANIFEST_NAME).mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    want = tuple(sorted(child / MANIFEST_NAME for child in tmp_path.iterdir() if (child / MANIFEST_NAME).is_file()))
    assert discover_manifests(tmp_path) == want
    assert [p.parent.name for p in want] == ["A", "_x", "a", "a b", "a-b", "a.b", "a0", "b", "link", "ä"]
    assert discover_manifests(tmp_path / "a") == (tmp_path / "a" / MANIFEST_NAME,)
