"""Deprecated: the plugin-facing API moved to :mod:`policy_engine.plugin_api`.

Import from ``policy_engine`` (``from policy_engine import BasePlugin, PluginContext``) or
from :mod:`policy_engine.plugin_api`. This module keeps working, with a
:class:`DeprecationWarning`, for one release.
"""

from __future__ import annotations

import warnings

from ... import plugin_api
from ...plugin_api import *  # noqa: F403 - the shim is the whole plugin API, re-exported

__all__ = list(plugin_api.__all__)

warnings.warn(
    "`policy_engine.enforcement.base` is deprecated and will be removed in the next release; "
    "import from `policy_engine` or `policy_engine.plugin_api` instead",
    DeprecationWarning,
    stacklevel=2,
)
