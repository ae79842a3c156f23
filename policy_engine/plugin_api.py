"""The plugin-facing API: base classes, the context a plugin gets, and the errors it meets.

A plugin is a class deriving from the base of its type (``agent``, ``workflow`` or
``hook``)::

    from policy_engine import BaseHookPlugin, PluginContext

    class Audit(BaseHookPlugin):
        def hooks(self):
            return {"file.saved": self.on_saved}

        def on_saved(self, path):
            self.ctx.logger.info("saved %s", path)

This module is used on both sides of the process boundary: in the host, and inside sandboxed
worker processes. It depends on nothing but the standard library and the tiny
:mod:`policy_engine.errors`: the capability objects a plugin receives are described by
protocols here, and the host's implementations live elsewhere (in a worker they are proxies
that ask the host).

:class:`PermissionDeniedError` is what a plugin's denied action raises (in the host it
carries the host's own :class:`~policy_engine.decision.Decision`); :class:`PluginRaisedError`
is what the host gets when the plugin's own code raises, with the remote type as a string.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeAlias

from .errors import PermissionDeniedError, PluginRaisedError, UsageError
from .plugin_types import add_plugin_type

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

#: Parameters of one SQL statement: positional or named.
SqlParams: TypeAlias = "Sequence[Any] | Mapping[str, Any]"


class ConfigAccess(Protocol):
    """The configuration a plugin may read and write, key by key, as its grants allow."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (needs ``config:read`` on the key), or ``default``."""
        ...

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` (needs ``config:write`` on the key)."""
        ...

    def keys(self) -> list[str]:
        """The keys the plugin may read."""
        ...


class DatabaseAccess(Protocol):
    """The host's database, checked table by table against the plugin's grants."""

    def execute(self, sql: str, params: SqlParams = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""
        ...

    def executemany(self, sql: str, seq_of_params: Iterable[SqlParams]) -> int:
        """Run one statement once per parameter set, atomically; return the rows changed."""
        ...


class HookAccess(Protocol):
    """Registration of hook functions (needs ``hook:register`` on the hook name)."""

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` whenever the host fires the hook ``name``."""
        ...


_PLUGIN_LOGGER_ROOT = "policy_engine.plugins"


def plugin_logger(plugin_name: str) -> logging.Logger:
    """The logger a plugin writes to: ``policy_engine.plugins.<name>``."""
    return logging.getLogger(f"{_PLUGIN_LOGGER_ROOT}.{plugin_name}")


# Stands for "no logger given"; replaced by the plugin's own logger after construction.
_DEFAULT_LOGGER = logging.getLogger(_PLUGIN_LOGGER_ROOT)


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a plugin is given at :meth:`BasePlugin.initialize`.

    ``data_dir`` is the plugin's writable directory, or None when it has none. When the host
    has no database, ``db`` is an object whose every call raises an error that says so.
    ``logger`` defaults to :func:`plugin_logger`.
    """

    plugin_name: str
    plugin_dir: Path
    data_dir: Path | None
    config: ConfigAccess
    hooks: HookAccess
    db: DatabaseAccess | None = None
    logger: logging.Logger = _DEFAULT_LOGGER

    def __post_init__(self) -> None:
        if self.logger is _DEFAULT_LOGGER:
            object.__setattr__(self, "logger", plugin_logger(self.plugin_name))


class BasePlugin:
    """The base of every plugin: a name and the ``initialize``/``cleanup`` lifecycle.

    ``entry_point`` names the method the host calls to use the plugin (empty when the
    plugin only reacts to hooks).
    """

    plugin_type: ClassVar[str] = ""
    entry_point: ClassVar[str] = ""
    #: The plugin's name; the host sets it from the manifest when the class leaves it empty.
    name: str = ""

    def __init__(self) -> None:
        self._ctx: PluginContext | None = None

    def initialize(self, ctx: PluginContext) -> None:
        """Called once, before any other method; overrides must call ``super().initialize``."""
        self._ctx = ctx
        if not self.name:
            self.name = ctx.plugin_name

    def cleanup(self) -> None:
        """Called once when the plugin is unloaded; release what it holds."""

    @property
    def ctx(self) -> PluginContext:
        """The context given to :meth:`initialize` (``self.ctx = ctx`` there works too)."""
        ctx: PluginContext | None = getattr(self, "_ctx", None)  # __init__ may be overridden
        if ctx is None:
            raise UsageError(f"plugin `{self.name or type(self).__name__}` used before "
                             "`initialize` was called")
        return ctx

    @ctx.setter
    def ctx(self, ctx: PluginContext) -> None:
        # The common idiom of plugins that do not call ``super().initialize(ctx)``.
        self._ctx = ctx


class BaseAgentPlugin(BasePlugin):
    """An agent: the host hands it a task with :meth:`run` and uses what it returns."""

    plugin_type = "agent"
    entry_point = "run"

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Carry out one task; subclasses implement it."""
        raise NotImplementedError(f"agent plugin `{self.name}` does not implement `run`")


class BaseWorkflowPlugin(BasePlugin):
    """A workflow: the host starts it with :meth:`execute`."""

    plugin_type = "workflow"
    entry_point = "execute"

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the workflow once; subclasses implement it."""
        raise NotImplementedError(f"workflow plugin `{self.name}` does not implement `execute`")


class BaseHookPlugin(BasePlugin):
    """A hook plugin: :meth:`hooks` says which functions to run on which host events.

    The default :meth:`initialize` registers them all through ``ctx.hooks``, so each one
    needs ``hook:register`` on its hook name.
    """

    plugin_type = "hook"

    def hooks(self) -> Mapping[str, Callable[..., Any]]:
        """Hook name to function; subclasses override it."""
        return {}

    def initialize(self, ctx: PluginContext) -> None:
        """Store the context and register every function of :meth:`hooks`."""
        super().initialize(ctx)
        for hook_name, fn in self.hooks().items():
            ctx.hooks.register(hook_name, fn)


#: The base class of each plugin type, by the type's name in manifests.
PLUGIN_BASES: dict[str, type[BasePlugin]] = {
    "agent": BaseAgentPlugin,
    "workflow": BaseWorkflowPlugin,
    "hook": BaseHookPlugin,
}

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_-]*\Z")


def register_plugin_type(name: str, base: type[BasePlugin]) -> None:
    """Add a plugin type; registering the same base again under its name is a no-op."""
    if not isinstance(name, str) or not _TYPE_NAME.match(name):
        raise UsageError(f"plugin type `{name}` must be lowercase letters, digits, `_` or `-`")
    if not (isinstance(base, type) and issubclass(base, BasePlugin)):
        raise UsageError(f"the base of plugin type `{name}` must be a subclass of BasePlugin")
    current = PLUGIN_BASES.get(name)
    if current is not None and current is not base:
        raise UsageError(f"plugin type `{name}` is already registered "
                         f"with `{current.__qualname__}`")
    PLUGIN_BASES[name] = base
    add_plugin_type(name)


def base_for(plugin_type: str) -> type[BasePlugin]:
    """The base class of ``plugin_type``; :class:`UsageError` when the type is unknown."""
    base = PLUGIN_BASES.get(plugin_type)
    if base is None:
        known = ", ".join(f"`{t}`" for t in sorted(PLUGIN_BASES))
        raise UsageError(f"unknown plugin type `{plugin_type}`; known types are {known}")
    return base
