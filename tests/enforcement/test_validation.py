"""Plugin validation and the permission manager."""

from __future__ import annotations

from pathlib import Path

from policy_engine import Engine
from policy_engine.digest import plugin_digest, trust_line
from policy_engine.enforcement.host.permission_manager import PermissionManager
from policy_engine.enforcement.host.validation import validate_plugin
from policy_engine.manifest import load_manifest

ROOT = Path(__file__).parent.parent.parent
EXAMPLES = ROOT / "examples" / "plugins"


def make_plugin(tmp_path: Path, code: str, entry: str = "mod:Plugin", kind: str = "agent") -> Path:
    plugin = tmp_path / "demo"
    plugin.mkdir(exist_ok=True)
    (plugin / "plugin.yaml").write_text(
        f"name: demo\nversion: 1.0.0\ntype: {kind}\nentry_point: {entry}\npermissions: [hook:register]\n")
    (plugin / "mod.py").write_text(code)
    return plugin


def test_the_example_plugins_validate() -> None:
    engine = Engine.load(ROOT / "policies", plugins=EXAMPLES)
    for name in ("summarizer", "report-builder"):
        result = validate_plugin(load_manifest(EXAMPLES / name), engine)
        assert result.valid, result.errors
    rogue = validate_plugin(load_manifest(EXAMPLES / "rogue"), engine)
    assert rogue.valid  # scan findings are warnings, never blockers
    assert any("SC302" in w or "SC301" in w for w in [str(f) for f in rogue.findings])


def test_missing_module_class_and_wrong_base(tmp_path: Path) -> None:
    plugin = make_plugin(tmp_path, "class Plugin:\n    pass\n")
    result = validate_plugin(load_manifest(plugin))
    assert not result.valid and "does not derive from `BaseAgentPlugin`" in result.errors[0]
    plugin = make_plugin(tmp_path, "class Other: pass\n")
    assert "is not defined" in validate_plugin(load_manifest(plugin)).errors[0]
    plugin = make_plugin(tmp_path, "x = 1\n", entry="missing:Plugin")
    assert "is not in the plugin directory" in validate_plugin(load_manifest(plugin)).errors[0]
    plugin = make_plugin(tmp_path, "class Plugin(:\n")
    assert "does not parse" in validate_plugin(load_manifest(plugin)).errors[0]


def test_base_class_through_a_local_subclass(tmp_path: Path) -> None:
    code = ("from policy_engine.plugin_api import BaseAgentPlugin\n"
            "class Mid(BaseAgentPlugin): pass\nclass Plugin(Mid): pass\n")
    assert validate_plugin(load_manifest(make_plugin(tmp_path, code))).valid


def test_pin_mismatch_fails_validation(tmp_path: Path) -> None:
    code = "from policy_engine.plugin_api import BaseAgentPlugin\nclass Plugin(BaseAgentPlugin): pass\n"
    plugin = make_plugin(tmp_path, code)
    good = plugin_digest(plugin)
    engine = Engine.from_source(trust_line("demo", good) + "\nallow plugin * to *",
                                [load_manifest(plugin)])
    assert validate_plugin(load_manifest(plugin), engine).valid
    (plugin / "mod.py").write_text(code + "# changed\n")
    engine.reload()
    result = validate_plugin(load_manifest(plugin), engine)
    assert not result.valid and "does not match the policy's pin" in result.errors[0]


def test_permission_manager_is_backed_by_the_engine(tmp_path: Path) -> None:
    code = "from policy_engine.plugin_api import BaseAgentPlugin\nclass Plugin(BaseAgentPlugin): pass\n"
    engine = Engine.from_source("allow plugin * to hook:register", [load_manifest(make_plugin(tmp_path, code))])
    manager = PermissionManager(engine)
    assert manager.has_permission("demo", "hook:register")
    assert not manager.has_permission("demo", "file:read", "/x")
    manager.revoke_all_permissions("demo")
    assert manager.is_revoked("demo")
    assert not manager.has_permission("demo", "hook:register")
    manager.grant_permissions("demo", ["file:read"])
    assert not manager.has_permission("demo", "hook:register")
    manager.grant_permissions("demo")
    assert manager.has_permission("demo", "hook:register")
