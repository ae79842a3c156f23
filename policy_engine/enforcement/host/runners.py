"""The two ways a loaded plugin's code runs, behind one small interface.

:class:`ProcessRunner` drives a locked-down worker process (:mod:`.supervisor`);
:class:`InprocessPluginRunner` runs the plugin in the host (:mod:`.inprocess`). Both take
their timeouts, limits and grants from the engine, so no policy logic lives here.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import psutil

from ...decision import Decision, Reason, deny
from ...errors import KernelDeniedError, PermissionDeniedError, PluginValidationError
from ...plugin_api import PluginContext, base_for
from ..inprocess.runner import InprocessRunner
from ..wire import AuditRecord
from .broker import NetworkBroker, Resolver
from .capabilities import ConfigCapability, DatabaseCapability, HookCapability, NoDatabase
from .supervisor import WorkerInit, WorkerProcess
from .usage import ResourceUsage

__all__ = ["HostServices", "InprocessPluginRunner", "ProcessRunner", "Runner"]

log = logging.getLogger(__name__)


class Runner(Protocol):
    """The extension point for isolation modes: what the loader needs to run plugin code.

    A runner owns one plugin's code for the plugin's lifetime. ``isolation`` names the
    mode for reports (``process (full)``, ``inprocess (not a security boundary)``).
    ``start()`` loads the plugin and runs its ``initialize(ctx)`` (returning what that
    returned, under the init timeout); ``call(method, args, kwargs, timeout=, phase=)`` runs
    one method and raises :class:`~policy_engine.errors.PluginTimeoutError` past
    ``timeout``, :class:`~policy_engine.errors.PermissionDeniedError` carrying the host's
    own decision for a denial, and :class:`~policy_engine.errors.PluginRaisedError` (or
    another :class:`~policy_engine.errors.EnforcementError`) for anything else the plugin
    did; ``usage()`` is the latest resource sample; ``stop()`` runs ``cleanup()`` when it
    can and releases everything, and is safe to call twice. A new mode is a class with
    these members, chosen in :meth:`~.sandbox.PluginSandbox.runner_for`.
    """

    isolation: str

    def start(self) -> Any: ...
    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             timeout: float, phase: str) -> Any: ...
    def usage(self) -> ResourceUsage: ...
    def stop(self) -> None: ...


class HostServices:
    """The host's side of the non-OS permissions, one set per plugin.

    ``check(permission, resource)`` raises PermissionDeniedError when the engine (through the
    sandbox's permission manager) denies; the capability objects call it on every use.
    """

    def __init__(self, plugin: str, check: Callable[[Any, str], object], *,
                 config: dict[str, Any], db_path: Path | None, hooks: Any,
                 hook_caller: Callable[[str], Callable[..., Any]] | None = None,
                 decide: Callable[[str, str | None], Decision] | None = None,
                 on_reported: Callable[[str, str | None], None] | None = None,
                 peek: Callable[[Any, str], bool] | None = None,
                 on_decision: Callable[[Decision], None] | None = None,
                 resolver: Resolver | None = None) -> None:
        """``decide(action, resource)`` is the host's own decision for the plugin, used for
        every denial a worker reports; ``on_reported(action, resource)`` receives what an
        audit-mode worker says its plugin did; ``peek(permission, resource)`` answers
        without recording (for listing config keys). ``on_decision`` receives every
        network decision the broker makes (the decision log); ``resolver`` replaces
        ``socket.getaddrinfo`` for the broker (tests)."""
        self.plugin = plugin
        self.decide = decide
        self.on_reported = on_reported
        self.config = ConfigCapability(plugin, check, config, peek=peek)
        self.db: DatabaseCapability | NoDatabase = (
            DatabaseCapability(plugin, check, db_path) if db_path is not None else NoDatabase(plugin))
        self.hooks = HookCapability(plugin, check, hooks)
        self._hook_caller = hook_caller
        self.on_decision = on_decision
        self.resolver = resolver

    def network_broker(self) -> NetworkBroker:
        """A fresh broker for one worker of this plugin, deciding with the host's engine."""
        decide = self.decide

        def decide_for(plugin: str, action: str, resource: str) -> Decision:
            if decide is None:
                return deny(Reason.ERROR, plugin, action, resource,
                            "the host has no decision function for the network")
            return decide(action, resource)

        if self.resolver is None:
            return NetworkBroker(self.plugin, decide_for, on_decision=self.on_decision)
        return NetworkBroker(self.plugin, decide_for, on_decision=self.on_decision,
                             resolver=self.resolver)

    def handle(self, capability: str, method: str, args: list[Any]) -> Any:
        """Run a capability call a worker made (``config.get``, ``db.execute``, ...)."""
        if capability == "config" and method in ("get", "set", "keys"):
            return getattr(self.config, method)(*args)
        if capability == "db" and method in ("execute", "executemany"):
            rows = getattr(self.db, method)(*args)
            return [list(row) for row in rows] if isinstance(rows, list) else rows
        if capability == "hooks" and method == "register" and self._hook_caller is not None:
            name = str(args[0])
            self.hooks.register_worker_hook(name, self._hook_caller(name))
            return None
        raise PluginValidationError(self.plugin, [f"unknown capability call `{capability}.{method}`"])

    def close(self) -> None:
        """Release the database connection."""
        self.db.close()


class ProcessRunner:
    """Runs a plugin in its own locked-down worker process."""

    def __init__(self, init: WorkerInit, services: HostServices, *,
                 scratch_dir: Path | None = None,
                 levels: Callable[[Any, bool, Mapping[str, str]], tuple[str, str]] | None = None,
                 sandbox: bool | None = None,
                 on_syscall: Callable[[str, str], Decision] | None = None,
                 audit: bool = False) -> None:
        """``levels(report, sandboxed, limits)`` names the level of the started worker from
        its own report and the mechanisms holding its limits, and why it must not run at
        that level (empty when it may). ``sandbox``
        True never starts the worker without bubblewrap (None: whenever it works here);
        ``on_syscall(action, resource)`` decides and records what the worker's seccomp
        listener shows the host; ``audit`` lets those calls through."""
        self.scratch_dir = scratch_dir
        self._levels = levels
        self.init = init
        self.services = services
        self.worker = WorkerProcess(capability_handler=services.handle,
                                    audit_handler=self._reported,
                                    broker_factory=services.network_broker,
                                    sandbox=sandbox, syscall_decide=on_syscall, audit=audit)
        self.isolation = "process"

    def _reported(self, record: AuditRecord) -> None:
        if self.services.on_reported is not None:
            self.services.on_reported(record.action, record.resource)

    def _decided_by_host(self, error: PermissionDeniedError) -> PermissionDeniedError:
        """The host's own decision for what the worker was denied: the worker's bytes say
        only what the plugin asked (action and resource), never why."""
        decide = self.services.decide
        asked = error.decision
        if decide is None or isinstance(error, KernelDeniedError):
            # The host's listener decided that one itself (``decide_syscall``).
            return error
        action, resource = str(asked.action), asked.resource
        decision = decide(action, None if resource is None else str(resource))
        if decision.allowed:
            # The worker's own layer refused what the policy allows (a bound port, a
            # signal): still a denial, in the host's words.
            decision = deny(Reason.ERROR, self.init.plugin, action, decision.resource,
                            errors=("the worker refused it although the policy allows it",))
        return PermissionDeniedError(decision)

    def start(self) -> Any:
        try:
            result = self.worker.start(self.init)
        except PermissionDeniedError as error:
            raise self._decided_by_host(error) from None
        level = result.report.level
        if self._levels is not None:
            level, refusal = self._levels(result.report, self.worker.sandboxed,
                                          self.worker.limit_mechanisms)
            if refusal:  # the worker got less than this host promised: it does not run
                self.stop()
                raise PluginValidationError(self.init.plugin, [refusal])
        self.isolation = f"process ({level})"
        return result.init_result

    @property
    def report(self) -> Any:
        """The kernel isolation report of the worker."""
        return self.worker.report

    @property
    def limits(self) -> Mapping[str, str]:
        """Which mechanism holds each limit of the worker (see :mod:`.cgroup`)."""
        return self.worker.limit_mechanisms

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             timeout: float, phase: str) -> Any:
        try:
            return self.worker.call(method, args, kwargs, timeout=timeout, phase=phase)
        except PermissionDeniedError as error:
            raise self._decided_by_host(error) from None

    def usage(self) -> ResourceUsage:
        return self.worker.usage

    def stop(self) -> None:
        self.worker.stop()
        self.services.close()
        _remove_scratch(self.scratch_dir)


class InprocessPluginRunner:
    """Runs a plugin in the host process. Not a security boundary (see :mod:`.inprocess`)."""

    isolation = "inprocess (not a security boundary)"

    def __init__(self, runner: InprocessRunner, services: HostServices, *, plugin_type: str,
                 data_dir: Path | None, init_timeout: float,
                 scratch_dir: Path | None = None) -> None:
        self.scratch_dir = scratch_dir
        self.runner = runner
        self.services = services
        self.plugin_type = plugin_type
        self.data_dir = data_dir
        self.init_timeout = init_timeout
        self.instance: Any = None

    def start(self) -> Any:
        cls = self.runner.load()
        base = base_for(self.plugin_type)
        if not issubclass(cls, base):
            raise PluginValidationError(self.runner.name, [
                f"entry point class `{cls.__name__}` does not derive from `{base.__name__}`"])
        self.instance = self.runner.call(cls, (), {}, timeout=self.init_timeout, phase="init")
        ctx = PluginContext(
            plugin_name=self.runner.name,
            plugin_dir=self.runner.plugin_dir,
            data_dir=self.data_dir,
            config=self.services.config,
            hooks=self.services.hooks,
            db=self.services.db,
        )
        return self.runner.call(self.instance.initialize, (ctx,), {}, timeout=self.init_timeout, phase="init")

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *,
             timeout: float, phase: str) -> Any:
        fn = getattr(self.instance, method, None)
        if method.startswith("_") or not callable(fn):
            raise AttributeError(f"plugin `{self.runner.name}` has no method `{method}`")
        return self.runner.call(fn, args, kwargs, timeout=timeout, phase=phase)

    def usage(self) -> ResourceUsage:
        # One process: these numbers are the host's, not the plugin's alone.
        proc = psutil.Process(os.getpid())
        with proc.oneshot():
            memory = proc.memory_info().rss
            return ResourceUsage(cpu_percent=proc.cpu_percent(None), memory_bytes=memory,
                                 peak_memory_bytes=memory, threads=proc.num_threads())

    def stop(self) -> None:
        if self.instance is not None and self.runner.quarantined is None:
            try:
                self.runner.call(self.instance.cleanup, (), {}, timeout=self.init_timeout, phase="cleanup")
            except Exception as exc:  # cleanup failing must not stop the unload
                log.warning("plugin `%s` cleanup failed: %s", self.runner.name, exc)
        self.runner.forget_sources()
        self.services.close()
        _remove_scratch(self.scratch_dir)


def _remove_scratch(path: Path | None) -> None:
    """Nothing a load made on the host outlives the unload but the data directory."""
    if path is not None:
        # shutil.rmtree does not follow symlinks a plugin left there (fd-based on Linux).
        shutil.rmtree(path, ignore_errors=True)
