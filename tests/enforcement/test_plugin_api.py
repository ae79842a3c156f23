"""The plugin-facing API: one place, exported by the package, the old path deprecated."""

from __future__ import annotations

import importlib
import sys

import pytest

import policy_engine
from policy_engine import plugin_api
from policy_engine.enforcement.worker.remote import exception_from_data, exception_to_data
from policy_engine.errors import PluginRaisedError

NAMES = ["BasePlugin", "BaseAgentPlugin", "BaseWorkflowPlugin", "BaseHookPlugin",
         "PluginContext", "PermissionDeniedError", "PluginRaisedError"]


@pytest.mark.parametrize("name", NAMES)
def test_package_exports_the_plugin_api(name: str) -> None:
    assert getattr(policy_engine, name) is getattr(plugin_api, name)
    assert name in policy_engine.__all__


def test_old_module_still_works_with_a_deprecation_warning() -> None:
    sys.modules.pop("policy_engine.enforcement.base", None)
    with pytest.warns(DeprecationWarning, match="policy_engine.plugin_api"):
        old = importlib.import_module("policy_engine.enforcement.base")
    assert old.BaseAgentPlugin is plugin_api.BaseAgentPlugin
    assert old.PluginContext is plugin_api.PluginContext


class _Custom(Exception):
    pass


def test_remote_type_is_module_qualname_and_never_resolved() -> None:
    data = exception_to_data(_Custom("boom"))
    assert data["type"] == f"{__name__}._Custom"
    error = exception_from_data(data, plugin="demo")
    assert isinstance(error, PluginRaisedError)
    assert error.remote_type == f"{__name__}._Custom" and error.remote_message == "boom"
    assert "plugin `demo` raised" in str(error)


def test_builtin_remote_type_is_the_bare_name() -> None:
    assert exception_to_data(ValueError("x"))["type"] == "ValueError"


def test_remote_type_is_clipped() -> None:
    error = exception_from_data({"type": "os." + "A" * 10_000, "message": "m"})
    assert isinstance(error, PluginRaisedError)
    assert len(error.remote_type) < 300
    # A name that happens to be one of ours is still just text: nothing is imported.
    spoof = exception_from_data({"type": "policy_engine.errors.UsageError", "message": "m"})
    assert type(spoof) is PluginRaisedError


def test_self_ctx_assignment_in_initialize_works() -> None:
    class Saves(plugin_api.BaseAgentPlugin):
        def __init__(self) -> None:  # no super().__init__() either
            pass

        def initialize(self, ctx: plugin_api.PluginContext) -> None:
            self.ctx = ctx

    plugin = Saves()
    with pytest.raises(policy_engine.UsageError, match="before `initialize`"):
        _ = plugin.ctx
    context = object()
    plugin.initialize(context)  # type: ignore[arg-type]
    assert plugin.ctx is context
