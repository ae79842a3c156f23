"""Tests of the plugin base classes and the plugin context."""

from __future__ import annotations

import ast
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import policy_engine.plugin_api as base_module
from policy_engine.errors import UsageError
from policy_engine.plugin_api import (
    PLUGIN_BASES,
    BaseAgentPlugin,
    BaseHookPlugin,
    BasePlugin,
    BaseWorkflowPlugin,
    PluginContext,
    base_for,
    plugin_logger,
    register_plugin_type,
)


class RecordingHooks:
    def __init__(self) -> None:
        self.registered: list[tuple[str, Callable[..., Any]]] = []

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        self.registered.append((name, fn))


class MemoryConfig:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def keys(self) -> list[str]:
        return list(self.data)


def make_context(name: str = "demo", hooks: RecordingHooks | None = None) -> PluginContext:
    return PluginContext(
        plugin_name=name,
        plugin_dir=Path("plugins") / name,
        data_dir=None,
        config=MemoryConfig(),
        hooks=hooks or RecordingHooks(),
    )


@pytest.fixture
def restore_plugin_bases() -> Iterator[None]:
    saved = dict(PLUGIN_BASES)
    yield
    PLUGIN_BASES.clear()
    PLUGIN_BASES.update(saved)


def test_plugin_bases() -> None:
    assert PLUGIN_BASES["agent"] is BaseAgentPlugin
    assert PLUGIN_BASES["workflow"] is BaseWorkflowPlugin
    assert PLUGIN_BASES["hook"] is BaseHookPlugin
    for plugin_type, base in PLUGIN_BASES.items():
        assert issubclass(base, BasePlugin)
        assert base.plugin_type == plugin_type


def test_context_defaults() -> None:
    ctx = make_context("demo")
    assert ctx.plugin_name == "demo"
    assert ctx.data_dir is None
    assert ctx.db is None
    assert ctx.logger is plugin_logger("demo")
    assert ctx.logger.name == "policy_engine.plugins.demo"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.plugin_name = "other"  # type: ignore[misc]


def test_context_keeps_a_given_logger() -> None:
    custom = logging.getLogger("custom")
    ctx = dataclasses.replace(make_context(), logger=custom)
    assert ctx.logger is custom


def test_lifecycle() -> None:
    class Echo(BaseAgentPlugin):
        def __init__(self) -> None:
            super().__init__()
            self.cleaned = False

        def run(self, *args: Any, **kwargs: Any) -> Any:
            self.ctx.config.set("last", args)
            return args

        def cleanup(self) -> None:
            self.cleaned = True

    plugin = Echo()
    with pytest.raises(UsageError, match="before `initialize`"):
        _ = plugin.ctx
    ctx = make_context("echo")
    plugin.initialize(ctx)
    assert plugin.name == "echo"
    assert plugin.ctx is ctx
    assert plugin.run(1, 2) == (1, 2)
    assert ctx.config.get("last") == (1, 2)
    plugin.cleanup()
    assert plugin.cleaned


def test_a_name_set_by_the_class_is_kept() -> None:
    class Named(BaseWorkflowPlugin):
        name = "given"

    plugin = Named()
    plugin.initialize(make_context("from-manifest"))
    assert plugin.name == "given"


def test_entry_points_must_be_implemented() -> None:
    agent, workflow = BaseAgentPlugin(), BaseWorkflowPlugin()
    with pytest.raises(NotImplementedError):
        agent.run()
    with pytest.raises(NotImplementedError):
        workflow.execute()
    assert getattr(agent, BaseAgentPlugin.entry_point) == agent.run
    assert getattr(workflow, BaseWorkflowPlugin.entry_point) == workflow.execute
    BasePlugin().cleanup()  # the default does nothing


def test_hook_plugin_registers_its_hooks() -> None:
    class Audit(BaseHookPlugin):
        def hooks(self) -> Mapping[str, Callable[..., Any]]:
            return {"file.saved": self.on_saved, "file.deleted": self.on_deleted}

        def on_saved(self, path: str) -> str:
            return f"saved {path}"

        def on_deleted(self, path: str) -> str:
            return f"deleted {path}"

    hooks = RecordingHooks()
    plugin = Audit()
    plugin.initialize(make_context("audit", hooks))
    assert [name for name, _ in hooks.registered] == ["file.saved", "file.deleted"]
    assert hooks.registered[0][1]("/a") == "saved /a"


def test_hook_plugin_with_the_real_registry() -> None:
    from policy_engine.enforcement.host.capabilities import HookCapability, HookRegistry
    from policy_engine.permissions import Permission

    granted: list[tuple[Permission, str]] = []

    class Ping(BaseHookPlugin):
        def hooks(self) -> Mapping[str, Callable[..., Any]]:
            return {"ping": lambda: "pong"}

    registry = HookRegistry(timeout_seconds=1.0)
    capability = HookCapability("ping", lambda p, r: granted.append((p, r)), registry)
    ctx = PluginContext("ping", Path("plugins/ping"), None, MemoryConfig(), capability)
    Ping().initialize(ctx)
    assert granted == [(Permission.HOOK_REGISTER, "ping")]
    assert [r.value for r in registry.run("ping")] == ["pong"]


def test_register_plugin_type(restore_plugin_bases: None) -> None:
    class BaseReporter(BasePlugin):
        plugin_type = "reporter"
        entry_point = "report"

    register_plugin_type("reporter", BaseReporter)
    register_plugin_type("reporter", BaseReporter)  # the same again is fine
    assert base_for("reporter") is BaseReporter
    with pytest.raises(UsageError, match="already registered"):
        register_plugin_type("reporter", BaseAgentPlugin)
    with pytest.raises(UsageError, match="lowercase"):
        register_plugin_type("Bad Name", BaseReporter)
    with pytest.raises(UsageError, match="subclass of BasePlugin"):
        register_plugin_type("thing", dict)  # type: ignore[arg-type]


def test_base_for_unknown_type() -> None:
    with pytest.raises(UsageError, match="unknown plugin type `agnet`"):
        base_for("agnet")


def test_base_module_depends_only_on_the_standard_library() -> None:
    # Imported inside sandboxed workers: nothing heavy, nothing host-only.
    source = Path(base_module.__file__ or "").read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            imported.add("." * node.level + (module if node.level else module.split(".")[0]))
    third_party = {m for m in imported if not m.startswith(".")} - set(sys.stdlib_module_names)
    assert third_party == set()
    assert {m for m in imported if m.startswith(".")} == {".errors", ".plugin_types"}
