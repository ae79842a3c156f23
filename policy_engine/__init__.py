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

from .decision import Decision, Reason, RuleRef
from .decision_log import DecisionLog
from .diagnostics import Diagnostic, Severity, Span
from .engine import CacheInfo, Engine
from .errors import (
    EnforcementError,
    ManifestError,
    PermissionDeniedError,
    PluginCrashedError,
    PluginTimeoutError,
    PluginValidationError,
    PolicyCompileError,
    PolicyEngineError,
    PolicyError,
    PolicySyntaxError,
    ResourceLimitError,
    FileSizeError,
    UsageError,
)
from .manifest import PluginMetadata, load_manifest
from .permissions import Permission, PluginPermission
from .settings import Isolation, Limits, Timeouts, Violation

if TYPE_CHECKING:  # the enforcement layer is imported on first use: deciding does not need it
    from .enforcement.loader import PluginLoader
    from .enforcement.sandbox import PluginSandbox, ValidationResult

__all__ = [
    "CacheInfo",
    "Decision",
    "DecisionLog",
    "Diagnostic",
    "EnforcementError",
    "Engine",
    "FileSizeError",
    "Isolation",
    "Limits",
    "ManifestError",
    "Permission",
    "PermissionDeniedError",
    "PluginCrashedError",
    "PluginLoader",
    "PluginMetadata",
    "PluginPermission",
    "PluginSandbox",
    "PluginTimeoutError",
    "PluginValidationError",
    "PolicyCompileError",
    "PolicyEngineError",
    "PolicyError",
    "PolicySyntaxError",
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

_LAZY = {
    "PluginLoader": "policy_engine.enforcement.loader",
    "PluginSandbox": "policy_engine.enforcement.sandbox",
    "ValidationResult": "policy_engine.enforcement.sandbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'policy_engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
