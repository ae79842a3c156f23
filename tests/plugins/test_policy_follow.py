"""Sandboxes follow the policy: a reload that revokes a grant reaches a warm worker.

A worker's kernel sandbox is built from the plugin's table when it starts; the next call
after a reload that changed the table runs in a sandbox rebuilt from the new table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policy_engine import EnforcementError, Engine, PermissionDeniedError
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
GRANTING = """
defaults { isolation process allow degraded }
allow plugin * to file:read, file:write on "{data_dir}/{plugin}/**"
"""
WRITE_ONLY_REVOKED = """
defaults { isolation process allow degraded }
allow plugin * to file:write on "{data_dir}/{plugin}/**"
"""
UNRELATED_CHANGE = GRANTING + "\nallow plugin \"someone-else\" to hook:register\n"


def _publish(tmp_path: Path, text: str) -> None:
    (tmp_path / "site.policy").write_text(text)


def _loader(tmp_path: Path) -> tuple[PluginLoader, Path]:
    plugins = tmp_path / "plugins"
    shutil.copytree(FIXTURES / "example_workflow_plugin", plugins / "example_workflow_plugin")
    data = tmp_path / "data"
    data.mkdir()
    policy = tmp_path / "site.policy"
    policy.write_text(GRANTING)
    engine = Engine.load(policy, plugins=plugins, variables={"data_dir": str(data)})
    box = PluginSandbox(engine, data_dir=data, scratch_root=tmp_path)
    return PluginLoader(engine, box), plugins


def test_a_revoked_grant_is_refused_by_the_warm_worker(tmp_path: Path) -> None:
    loader, plugins = _loader(tmp_path)
    with loader:
        workflow = loader.load(plugins / "example_workflow_plugin")
        assert workflow.execute("out.txt", 10) == 10
        assert workflow.read_back("out.txt") == "xxxxx"
        before = workflow.runner
        _publish(tmp_path, WRITE_ONLY_REVOKED)
        loader.engine.reload()
        with pytest.raises(PermissionDeniedError):
            workflow.read_back("out.txt")
        assert workflow.rebuilds == 1 and workflow.runner is not before


def test_a_change_that_leaves_the_table_alone_keeps_the_worker(tmp_path: Path) -> None:
    loader, plugins = _loader(tmp_path)
    with loader:
        workflow = loader.load(plugins / "example_workflow_plugin")
        workflow.execute("out.txt", 10)
        runner = workflow.runner
        _publish(tmp_path, UNRELATED_CHANGE)
        loader.engine.reload()
        assert workflow.read_back("out.txt") == "xxxxx"
        assert workflow.runner is runner and workflow.rebuilds == 0


def test_a_plugin_the_policy_drops_is_unloaded_on_its_next_call(tmp_path: Path) -> None:
    loader, plugins = _loader(tmp_path)
    with loader:
        workflow = loader.load(plugins / "example_workflow_plugin")
        workflow.execute("out.txt", 10)
        pin = 'trust plugin "example-workflow" sha256-v2 "' + "0" * 64 + '"\n'
        _publish(tmp_path, GRANTING + pin)  # the kill switch: a pin nothing matches
        loader.engine.reload()
        with pytest.raises(EnforcementError, match="policy changed"):
            workflow.execute("out.txt", 10)
        assert loader.get("example-workflow") is None
