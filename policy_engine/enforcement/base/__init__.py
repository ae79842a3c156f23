"""Deprecated: the plugin-facing API moved to :mod:`policy_engine.plugin_api`.

Import from ``policy_engine`` (``from policy_engine import BasePlugin, PluginContext``) or
from :mod:`policy_engine.plugin_api`. This module keeps working, with a
:class:`DeprecationWarning`, for one release.
"""

from __future__ import annotations

import warnings

from ...plugin_api import (
    PLUGIN_BASES,
    BaseAgentPlugin,
    BaseHookPlugin,
    BasePlugin,
    BaseWorkflowPlugin,
    ConfigAccess,
    DatabaseAccess,
    HookAccess,
    PermissionDeniedError,
    PluginContext,
    PluginRaisedError,
    SqlParams,
    base_for,
    plugin_logger,
    register_plugin_type,
)

__all__ = [
    "PLUGIN_BASES",
    "BaseAgentPlugin",
    "BaseHookPlugin",
    "BasePlugin",
    "BaseWorkflowPlugin",
    "ConfigAccess",
    "DatabaseAccess",
    "HookAccess",
    "PermissionDeniedError",
    "PluginContext",
    "PluginRaisedError",
    "SqlParams",
    "base_for",
    "plugin_logger",
    "register_plugin_type",
]

warnings.warn(
    "`policy_engine.enforcement.base` is deprecated and will be removed in the next release; "
    "import from `policy_engine` or `policy_engine.plugin_api` instead",
    DeprecationWarning,
    stacklevel=2,
)
