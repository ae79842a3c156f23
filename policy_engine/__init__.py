"""policy_engine: a policy-as-code permission engine for third-party Python plugins.

Administrators write ``.policy`` files; plugins declare what they need in ``plugin.yaml``;
both compile into an immutable decision table that :meth:`Engine.decide` answers from::

    from policy_engine import Engine

    engine = Engine.load("policies/", plugins="plugins/", variables={"data_dir": "/var/lib/app"})
    decision = engine.decide("analytics", "file:read", "/srv/plugins/analytics/x.csv")
    print(decision.allowed, decision.explain())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from .decision import Decision, Reason, RuleRef
    from .decision_log import DecisionLog, DecisionLogger
    from .diagnostics import Diagnostic, Severity, Span
    from .enforcement.host.loader import PluginLoader
    from .enforcement.host.sandbox import PluginSandbox, ValidationResult
    from .engine import CacheInfo, Engine
    from .errors import (
        BundleError,
        ChannelValueError,
        EnforcementError,
        FileSizeError,
        ManifestError,
        PermissionDeniedError,
        PluginCrashedError,
        PluginRaisedError,
        PluginTimeoutError,
        PluginValidationError,
        PolicyCompileError,
        PolicyEngineError,
        PolicyError,
        PolicySyntaxError,
        PolicyTestError,
        ResourceLimitError,
        UsageError,
    )
    from .manifest import PluginMetadata, load_manifest
    from .permissions import Permission, PluginPermission
    from .plugin_api import (
        BaseAgentPlugin,
        BaseHookPlugin,
        BasePlugin,
        BaseWorkflowPlugin,
        PluginContext,
    )
    from .settings import Isolation, Limits, Timeouts, Violation

# Names are imported on first use (PEP 562): a sandboxed worker imports small parts of the
# package (errors, plugin base classes) and must not pay for the parser, YAML or JSON Schema
# at start-up; ``from policy_engine import BasePlugin`` in a worker loads plugin_api only.
_LAZY = {
    "Decision": "decision", "Reason": "decision", "RuleRef": "decision",
    "DecisionLog": "decision_log", "DecisionLogger": "decision_log",
    "Diagnostic": "diagnostics", "Severity": "diagnostics", "Span": "diagnostics",
    "PluginLoader": "enforcement.host.loader",
    "PluginSandbox": "enforcement.host.sandbox", "ValidationResult": "enforcement.host.sandbox",
    "CacheInfo": "engine", "Engine": "engine",
    "BundleError": "errors", "PolicyTestError": "errors", "ChannelValueError": "errors",
    "EnforcementError": "errors", "FileSizeError": "errors", "ManifestError": "errors",
    "PermissionDeniedError": "errors", "PluginCrashedError": "errors",
    "PluginRaisedError": "errors",
    "PluginTimeoutError": "errors", "PluginValidationError": "errors",
    "PolicyCompileError": "errors", "PolicyEngineError": "errors", "PolicyError": "errors",
    "PolicySyntaxError": "errors", "ResourceLimitError": "errors", "UsageError": "errors",
    "PluginMetadata": "manifest", "load_manifest": "manifest",
    "Permission": "permissions", "PluginPermission": "permissions",
    "BaseAgentPlugin": "plugin_api", "BaseHookPlugin": "plugin_api", "BasePlugin": "plugin_api",
    "BaseWorkflowPlugin": "plugin_api", "PluginContext": "plugin_api",
    "Isolation": "settings", "Limits": "settings", "Timeouts": "settings", "Violation": "settings",
}

__all__ = [
    "BaseAgentPlugin",
    "BaseHookPlugin",
    "BasePlugin",
    "BaseWorkflowPlugin",
    "BundleError",
    "CacheInfo",
    "ChannelValueError",
    "Decision",
    "DecisionLog",
    "DecisionLogger",
    "Diagnostic",
    "EnforcementError",
    "Engine",
    "FileSizeError",
    "Isolation",
    "Limits",
    "ManifestError",
    "Permission",
    "PermissionDeniedError",
    "PluginContext",
    "PluginCrashedError",
    "PluginLoader",
    "PluginMetadata",
    "PluginPermission",
    "PluginRaisedError",
    "PluginSandbox",
    "PluginTimeoutError",
    "PluginValidationError",
    "PolicyCompileError",
    "PolicyEngineError",
    "PolicyError",
    "PolicySyntaxError",
    "PolicyTestError",
    "Reason",
    "ResourceLimitError",
    "RuleRef",
    "Severity",
    "Span",
    "Timeouts",
    "UsageError",
    "ValidationResult",
    "Violation",
    "load_manifest",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'policy_engine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"policy_engine.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
