"""PluginLoader: discovers, validates, loads and unloads plugins under a sandbox.

Loading one plugin: parse and validate its manifest, register it with the engine, refuse it
when disabled, untrusted (pin mismatch) or invalid, scan its code, start its runner (a
locked-down worker process unless the policy says ``isolation inprocess``), import the entry
point and run ``initialize`` under the init timeout, check the base class, register its
hooks. The result is a :class:`LoadedPlugin` proxy whose method calls run under the execute
timeout with resource monitoring. An invalid plugin never loads and never stops the others.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine import Engine
from ...errors import (
    EnforcementError,
    FileSizeError,
    KernelDeniedError,
    ManifestError,
    PermissionDeniedError,
    PluginCrashedError,
    PluginTimeoutError,
    PluginValidationError,
    ResourceLimitError,
)
from ...manifest import PluginMetadata, discover_manifests, load_manifest
from ...settings import Violation
from ...table import PluginTable
from .runners import Runner
from .sandbox import PluginSandbox
from .spec import one_expansion
from .usage import ResourceUsage
from .validation import ValidationResult, plugin_dir_of

__all__ = ["CallRecord", "LoadedPlugin", "PluginLoader"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call into a plugin and how it ended."""

    method: str
    outcome: str  # "ok", "denied", "timeout", "limit", "crashed", "error"
    detail: str = ""


#: How many call records one loaded plugin keeps for the run report.
MAX_CALL_RECORDS = 1_000


@dataclass
class LoadedPlugin:
    """A loaded plugin: call its methods as attributes (``plugin.run(...)``) or with
    :meth:`call`. Each call runs under the execute timeout; a violation with ``on violation
    terminate`` unloads the plugin and later calls raise, naming why."""

    metadata: PluginMetadata
    validation: ValidationResult
    runner: Runner
    loader: PluginLoader
    init_result: Any = None
    unloaded: str | None = None
    #: the latest calls, a ring of :data:`MAX_CALL_RECORDS`
    calls: collections.deque[CallRecord] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_CALL_RECORDS))
    peak_memory: int = 0
    peak_cpu: float = 0.0
    #: the decision table the running sandbox was built from, and how to rebuild it
    table: PluginTable | None = None
    rebuilds: int = 0
    _hook_factory: Callable[[str], Callable[..., Any]] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rebuild_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        """The plugin's name."""
        return self.metadata.name

    @property
    def isolation(self) -> str:
        """The isolation level reached (``process (full)``, ``inprocess ...``)."""
        return self.runner.isolation

    @property
    def usage(self) -> ResourceUsage:
        """The latest resource sample."""
        return self.runner.usage()

    @property
    def limits(self) -> Mapping[str, str]:
        """Which mechanism holds each limit (``memory``, ``pids``, ``cpu``, ``freeze`` ->
        ``cgroup v2``, ``cgroup v1`` or a fallback); empty in process (inprocess mode)."""
        held: Mapping[str, str] = getattr(self.runner, "limits", {})
        return held

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on the plugin under its execute timeout."""
        return self._invoke(method, args, kwargs, phase="execute")

    def call_hook(self, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Run the function the plugin registered for ``hook`` under the hook timeout."""
        return self._invoke(f"hook:{hook}", args, kwargs, phase="hook")

    def _invoke(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, phase: str) -> Any:
        if self.unloaded is not None:
            raise EnforcementError(f"plugin `{self.name}` was unloaded: {self.unloaded}", plugin=self.name)
        self._follow_policy()
        # The settings of the table the running sandbox was built from, never re-resolved.
        effective = self.table.effective if self.table is not None else \
            self.loader.engine.effective(self.name)
        timeouts = effective.timeouts
        timeout = timeouts.hook if phase == "hook" else timeouts.execute
        try:
            result = self.runner.call(method, args, kwargs, timeout=timeout, phase=phase)
        except PermissionDeniedError as exc:
            self._note(method, "denied", str(exc).splitlines()[0])
            if not isinstance(exc, KernelDeniedError):  # the listener recorded that one
                self.loader.sandbox.record_denial(
                    exc, from_worker=self.runner.isolation.startswith("process"))
            raise
        except PluginTimeoutError as exc:
            self._note(method, "timeout", str(exc))
            raise
        except FileSizeError as exc:
            # The kernel refused the write and the partial file is gone: like a denial,
            # nothing ran away, so the plugin stays loaded.
            self._note(method, "limit", str(exc))
            raise
        except ResourceLimitError as exc:
            self._note(method, "limit", str(exc))
            if exc.resource == "memory":
                self.peak_memory = max(self.peak_memory, int(exc.used))
            elif exc.resource == "cpu":  # `used` is in cores; the report shows % of one core
                self.peak_cpu = max(self.peak_cpu, exc.used * 100.0)
            if effective.limits.on_violation is Violation.TERMINATE:
                self.loader.unload(self.name, reason=f"it went over a limit: {exc}")
            raise
        except PluginCrashedError as exc:
            self._note(method, "crashed", str(exc))
            raise
        except Exception as exc:
            self._note(method, "error", f"{type(exc).__name__}: {exc}")
            raise
        self._note(method, "ok", _summary(result))
        return result

    def _follow_policy(self) -> None:
        """Rebuild the sandbox when the policy in force gave this plugin a new table.

        A worker's kernel sandbox is built from the table when the worker starts, so a
        reload that revoked a grant must not leave it live in a warm worker: the next call
        after a change stops the old worker and starts one from the new table (its
        ``initialize`` runs again). A call already in flight finishes in the sandbox it
        started in. A plugin that no longer validates (revoked, disabled, pin broken) is
        unloaded, naming why.
        """
        current = self.loader.engine.plugin_table(self.name)
        if current is self.table or self._hook_factory is None:
            return
        with self._rebuild_lock:
            current = self.loader.engine.plugin_table(self.name)
            if current is self.table or current == self.table:
                self.table = current
                return
            if self.unloaded is not None:
                raise EnforcementError(f"plugin `{self.name}` was unloaded: {self.unloaded}",
                                       plugin=self.name)
            log.info("policy changed for plugin `%s`: rebuilding its sandbox", self.name)
            with one_expansion():  # the new table's glob grants walked once
                validation = self.loader.sandbox.validate_plugin(self.metadata, current) \
                    if current is not None else None
                if validation is None or not validation.valid:
                    why = "; ".join(validation.errors) if validation is not None else \
                        "the policy in force no longer knows it"
                    self.loader.unload(self.name, reason=f"the policy changed: {why}")
                    raise EnforcementError(f"plugin `{self.name}` was unloaded: the policy "
                                           f"changed: {why}", plugin=self.name)
                old = self.runner
                try:
                    old.stop()
                except Exception as exc:  # stopping must never take the host down
                    log.warning("stopping plugin `%s` failed: %s", self.name, exc)
                self.loader.sandbox.hooks.unregister_plugin(self.name)
                runner = self.loader.sandbox.runner_for(self.metadata, self._hook_factory, current)
            self.runner = runner
            self.table = current
            self.rebuilds += 1
            self.init_result = runner.start()

    def _note(self, method: str, outcome: str, detail: str = "") -> None:
        try:
            sample = self.runner.usage()
        except Exception:  # a sample is nice to have, never worth failing a call
            sample = ResourceUsage()
        with self._lock:
            self.peak_memory = max(self.peak_memory, sample.peak_memory_bytes, sample.memory_bytes)
            self.peak_cpu = max(self.peak_cpu, sample.cpu_percent)
            self.calls.append(CallRecord(method, outcome, detail))

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)


def _summary(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PluginLoader:
    """Loads plugins from directories into a :class:`PluginSandbox`."""

    def __init__(self, engine: Engine, sandbox: PluginSandbox | None = None) -> None:
        self.engine = engine
        self.sandbox = sandbox or PluginSandbox(engine)
        self._plugins: dict[str, LoadedPlugin] = {}
        self._lock = threading.RLock()

    def discover(self, directory: str | Path) -> list[Path]:
        """Plugin directories under ``directory`` (or ``directory`` itself)."""
        return [path.parent for path in discover_manifests(directory)]

    def load(self, path: str | Path) -> LoadedPlugin:
        """Load one plugin; raises :class:`PluginValidationError` (or :class:`ManifestError`)
        when it must not load."""
        metadata = load_manifest(plugin_dir_of(path))
        with self._lock:
            existing = self._plugins.get(metadata.name)
            if existing is not None and _same_dir(existing.metadata.plugin_path,
                                                  metadata.plugin_path):
                self.unload(metadata.name, reason="replaced by a new load")
            elif existing is not None:
                # A second directory must not inherit the first one's grants and data.
                error = _claimed_twice(metadata.name, existing.metadata.plugin_path,
                                       metadata.plugin_path)
                self.unload(metadata.name, reason=str(error))
                raise error
            self.engine.register(metadata)
            # The plugin's table is read once here; validation, the runner, its kernel plan
            # and its settings all come from it (a reload meanwhile is seen at the first call).
            table = self.engine.plugin_table(metadata.name)
            loaded_ref: list[LoadedPlugin] = []

            def call_hook(hook: str) -> Callable[..., Any]:
                return lambda *args, **kwargs: loaded_ref[0].call_hook(hook, *args, **kwargs)

            with one_expansion():  # the table's glob grants walked once for this load
                validation = self.sandbox.validate_plugin(metadata, table)
                for warning in validation.warnings:
                    log.warning("plugin `%s`: %s", metadata.name, warning)
                if not validation.valid:
                    raise PluginValidationError(metadata.name, validation.errors)
                runner = self.sandbox.runner_for(metadata, call_hook, table)
            loaded = LoadedPlugin(metadata, validation, runner, self, table=table,
                                  _hook_factory=call_hook)
            loaded_ref.append(loaded)
            self._plugins[metadata.name] = loaded
            try:
                loaded.init_result = runner.start()
            except BaseException:
                self._plugins.pop(metadata.name, None)
                self.sandbox.hooks.unregister_plugin(metadata.name)
                runner.stop()
                raise
            self.sandbox.monitor.start_monitoring(metadata.name, runner.usage)
            log.info("loaded plugin `%s` (%s)", metadata.name, runner.isolation)
            return loaded

    def load_all(self, directory: str | Path) -> tuple[dict[str, LoadedPlugin], dict[str, Exception]]:
        """Load every plugin under ``directory``; returns the loaded ones and, by plugin
        directory name, why the others did not load."""
        loaded: dict[str, LoadedPlugin] = {}
        failed: dict[str, Exception] = {}
        claims: dict[str, list[Path]] = {}
        for plugin_dir in self.discover(directory):
            try:
                claims.setdefault(load_manifest(plugin_dir).name, []).append(plugin_dir)
            except ManifestError:
                continue  # reported by load() below
        for plugin_dir in self.discover(directory):
            name = next((n for n, dirs in claims.items() if plugin_dir in dirs), None)
            if name is not None and len(claims[name]) > 1:
                # Refused for both, whatever the listing order.
                error = _claimed_twice(name, *sorted(claims[name]))
                log.warning("plugin in `%s` not loaded: %s", plugin_dir, error)
                failed[plugin_dir.name] = error
                continue
            try:
                plugin = self.load(plugin_dir)
            except (PluginValidationError, ManifestError, EnforcementError) as exc:
                log.warning("plugin in `%s` not loaded: %s", plugin_dir, exc)
                failed[plugin_dir.name] = exc
            except Exception as exc:  # the plugin's own initialize() raised
                log.warning("plugin in `%s` failed to start: %s", plugin_dir, exc)
                failed[plugin_dir.name] = exc
            else:
                loaded[plugin.name] = plugin
        return loaded, failed

    def get(self, name: str) -> LoadedPlugin | None:
        """The loaded plugin called ``name``."""
        return self._plugins.get(name)

    @property
    def plugins(self) -> dict[str, LoadedPlugin]:
        """The loaded plugins by name."""
        return dict(self._plugins)

    def unload(self, name: str, reason: str = "unloaded by the host") -> None:
        """Stop a plugin: its runner, hooks and permissions go; the proxy keeps the reason."""
        with self._lock:
            plugin = self._plugins.pop(name, None)
        if plugin is None:
            return
        plugin.unloaded = reason
        self.sandbox.hooks.unregister_plugin(name)
        self.sandbox.monitor.stop_monitoring(name)
        try:
            plugin.runner.stop()
        except Exception as exc:  # stopping must never take the host down
            log.warning("stopping plugin `%s` failed: %s", name, exc)
        log.info("unloaded plugin `%s`: %s", name, reason)

    def close(self) -> None:
        """Unload every plugin."""
        for name in list(self._plugins):
            self.unload(name, reason="the loader was closed")

    def __enter__(self) -> PluginLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_dir(first: str | Path | None, second: str | Path | None) -> bool:
    if first is None or second is None:
        return first is second
    return Path(first).resolve() == Path(second).resolve()


def _claimed_twice(name: str, *paths: str | Path | None) -> PluginValidationError:
    where = " and ".join(f"`{path}`" for path in paths)
    return PluginValidationError(name, [f"plugin name `{name}` is claimed by two directories: "
                                        f"{where}; rename one"])
