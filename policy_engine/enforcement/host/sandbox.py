"""PluginSandbox: the enforcement layer's front door.

It composes the pieces (the engine's decisions through a :class:`PermissionManager`,
validation, worker processes or in-process runners, resource monitoring, host
capabilities) and holds no policy logic of its own: every check asks the engine.

``mode="enforce"`` (the default) denies what the policy denies. ``mode="audit"`` makes and
logs every decision but the worker's hook denies nothing, so an administrator can run a
plugin once and see what it needs. Audit mode still runs in the kernel sandbox: the view its
grants give, read-only, writes to throwaway tmpfs mounts, the network through the host's
broker (allowed only as the policy says); limits and timeouts apply. The old audit mode,
with the filesystem open, needs ``unsandboxed_audit=True``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...decision import Decision
from ...engine import Engine
from ...errors import PermissionDeniedError, PluginTimeoutError, PluginValidationError, UsageError
from ...manifest import PluginMetadata
from ...permissions import Permission
from ...settings import Isolation
from ...table import PluginTable
from ..inprocess.runner import DeadlineExceeded, InprocessRunner, call_with_deadline
from . import doctor, kernel
from .capabilities import HookRegistry
from .disk import disk_limit_refusal
from .monitor import ResourceMonitor
from .permission_manager import PermissionManager
from .runners import HostServices, InprocessPluginRunner, ProcessRunner, Runner
from .spec import checker_data, kernel_grants, lockdown_spec, resource_limits
from .supervisor import WorkerInit
from .usage import ResourceUsage
from .validation import (
    ValidationResult,
    inexact_deny_refusal,
    inexact_grant_refusal,
    inprocess_refusal,
    read_plugin_code,
    validate_plugin,
)

#: The most decision records the sandbox keeps; older ones are dropped (and counted).
MAX_RECORDS = 10_000
#: Why audit mode cannot run here without its explicit option (library
#: ``unsandboxed_audit``, CLI ``--unsandboxed``): its sandbox needs bubblewrap.
AUDIT_REFUSAL = (
    "audit mode runs plugins in the kernel sandbox, which needs bubblewrap: {why}\n"
    "  hint: install bubblewrap; or pass `unsandboxed_audit=True` (on the command line "
    "`--unsandboxed`), which is not a sandbox, only for code you would run unsandboxed anyway")
#: Record sources (:attr:`AuditRecord.source`).
SOURCES = ("host", "kernel", "worker")

__all__ = ["AUDIT_REFUSAL", "AuditRecord", "PluginSandbox", "ValidationResult"]

log = logging.getLogger(__name__)
Mode = Literal["enforce", "audit"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision made while a plugin ran (audit mode records them all, enforce mode
    records the denials)."""

    plugin: str
    action: str
    resource: str | None
    allowed: bool
    reason: str
    rules: tuple[str, ...]
    #: True when the plugin's own worker reported the action (audit mode): the plugin
    #: controls that process, so it can leave things out or make them up. The reason and
    #: rules are still the host's decision for what was reported.
    reported_by_worker: bool = False
    #: Who saw the action: ``host`` (a request the host served: capabilities, the network
    #: broker, an in-process plugin), ``kernel`` (a system call the host saw through the
    #: worker's seccomp listener, from outside the plugin's reach) or ``worker`` (reported
    #: by the plugin's own worker, its audit-mode reports and the denials its hook raised:
    #: forgeable, though the reason and rules are always the host's decision).
    source: str = "host"


class PluginSandbox:
    """Enforces the engine's decisions, timeouts and limits on plugin code."""

    def __init__(
        self,
        engine: Engine,
        *,
        mode: Mode = "enforce",
        data_dir: str | Path | None = None,
        config: dict[str, Any] | None = None,
        db_path: str | Path | None = None,
        hooks: HookRegistry | None = None,
        scratch_root: str | Path | None = None,
        unsandboxed_audit: bool = False,
        kernel_records: bool | None = None,
    ) -> None:
        """``mode="audit"`` runs in the kernel sandbox (see the module doc), so it needs
        bubblewrap; without it, it is refused unless ``unsandboxed_audit=True`` asks for
        the old audit mode, which is not a sandbox. ``kernel_records`` (default: whenever
        this host has seccomp user notification) makes each worker hand the host a seccomp
        listener, so opens and program starts the worker's hook did not see are still
        decided and recorded by the host."""
        if mode not in ("enforce", "audit"):
            raise ValueError(f"mode must be `enforce` or `audit`, not `{mode}`")
        if mode == "audit" and not unsandboxed_audit:
            from . import bwrap

            why = bwrap.available()
            if why:
                raise UsageError(AUDIT_REFUSAL.format(why=why))
        self.engine = engine
        self.mode: Mode = mode
        self.unsandboxed_audit = mode == "audit" and unsandboxed_audit
        if kernel_records is None:
            from . import syscalls

            kernel_records = not syscalls.unavailable()
        self.kernel_records = kernel_records
        self.permissions = PermissionManager(engine)
        self.monitor = ResourceMonitor()
        self.hooks = hooks or HookRegistry()
        self.config = config if config is not None else {}
        self.db_path = Path(db_path) if db_path is not None else None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(engine.variables["data_dir"])
        self._scratch_root = Path(scratch_root) if scratch_root else Path(tempfile.gettempdir())
        # A ring: a plugin that is denied in a loop cannot grow the host.
        self._records: collections.deque[AuditRecord] = collections.deque(maxlen=MAX_RECORDS)
        self.dropped_records = 0
        self._records_lock = threading.Lock()

    def close(self) -> None:
        """Release what the sandbox holds (nothing today; kept for callers that close it)."""

    # -- the seed's API ----------------------------------------------------------------------

    def validate_plugin(self, metadata: PluginMetadata, table: PluginTable | None = None
                        ) -> ValidationResult:
        """Manifest, entry point, base class, pin, isolation guarantees; scan warnings.

        ``table`` is the plugin's table as the caller read it (the loader reads it once per
        load and passes it on); without it the plugin is registered when the engine does
        not know it, and the engine's current table is used."""
        if table is None:
            if self.engine.plugin_table(metadata.name) is None:
                self.engine.register(metadata)
            table = self.engine.plugin_table(metadata.name)
        result = validate_plugin(metadata, self.engine, table=table)
        errors = list(result.errors)
        if table is not None and table.effective.limits.isolation is Isolation.PROCESS:
            report = kernel.detect()
            if report.missing and not table.effective.limits.allow_degraded:
                errors.append(
                    f"this machine cannot give full process isolation ({report.level}; missing: "
                    f"{', '.join(report.missing)}); add `isolation process allow degraded` to the "
                    f"plugin's policy block to run it anyway"
                )
            refusal = doctor.table_refusal(table)
            if refusal:
                errors.append(refusal)
            # The data directory is shown writable: a deny inside it counts too.
            errors.extend(e for e in inexact_deny_refusal(
                table, str(self.data_dir / metadata.name))
                if e not in result.errors)
            # Glob grants past the bound are already in `result` (`validate_plugin` checks them
            # with this table): walking the filesystem again would only repeat them.
        return ValidationResult(not errors, tuple(errors), result.warnings, result.findings)

    def check_permission(self, plugin: str, operation: str | Permission, resource: str | None = None) -> bool:
        """True when ``plugin`` may do ``operation`` on ``resource`` (audit mode: always,
        after recording the real decision)."""
        decision = self.permissions.decide(plugin, operation, resource)
        self.record(decision)
        return decision.allowed or self.mode == "audit"

    #: The seed's spelling.
    check_permissions = check_permission

    def require(self, plugin: str, operation: str | Permission, resource: str | None = None) -> None:
        """Raise :class:`PermissionDeniedError` unless the plugin may do it."""
        decision = self.permissions.decide(plugin, operation, resource)
        self.record(decision)
        if not decision.allowed and self.mode != "audit":
            raise PermissionDeniedError(decision)

    def execute_with_timeout(self, func: Callable[..., Any], timeout_seconds: float, *args: Any,
                             plugin: str = "host", phase: str = "execute", **kwargs: Any) -> Any:
        """Run ``func`` (sync or async) and stop it at ``timeout_seconds``.

        Coroutines are cancelled. A sync function runs in a helper thread so the caller gets
        :class:`PluginTimeoutError` on time; the function itself is stopped at its next
        Python instruction (a call blocked in C stops when it returns). Plugin methods run
        through :class:`~.loader.PluginLoader` instead, where process isolation kills them.
        """
        if inspect.iscoroutinefunction(func) or inspect.isawaitable(func):
            awaitable = func(*args, **kwargs) if callable(func) else func

            async def bounded() -> Any:
                return await asyncio.wait_for(awaitable, timeout_seconds)

            try:
                return asyncio.run(bounded())
            except asyncio.TimeoutError:
                raise PluginTimeoutError(plugin, phase, timeout_seconds, "coroutine cancelled") from None
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = call_with_deadline(func, timeout_seconds, *args, **kwargs)
            except BaseException as exc:  # handed to the caller below, or dropped after a timeout
                outcome["error"] = exc

        thread = threading.Thread(target=target, name=f"policy-engine-{plugin}", daemon=True)
        thread.start()
        thread.join(timeout_seconds)
        if thread.is_alive():
            raise PluginTimeoutError(plugin, phase, timeout_seconds, "stopped at its next Python instruction")
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, DeadlineExceeded):
                raise PluginTimeoutError(plugin, phase, timeout_seconds) from None
            raise error
        return outcome.get("value")

    def monitor_resources(self, plugin: str) -> ResourceUsage:
        """The latest resource sample of a loaded plugin (zeros when not loaded)."""
        return self.monitor.get_usage(plugin)

    # -- running plugins (used by the loader) -------------------------------------------------

    def record(self, decision: Decision) -> None:
        """Keep a decision for the run report and ``learn`` (audit mode: all of them)."""
        if decision.allowed and self.mode != "audit":
            return
        record = AuditRecord(decision.plugin, decision.action, decision.resource, decision.allowed,
                             decision.reason.value, tuple(r.location for r in decision.rules))
        with self._records_lock:
            self._keep(record)
        if self.mode == "audit":
            log.info("audit: %s", decision.explain().splitlines()[0])

    def add_record(self, record: AuditRecord) -> None:
        """Keep one decision record."""
        with self._records_lock:
            self._keep(record)

    def record_denial(self, error: PermissionDeniedError, *, from_worker: bool = False) -> None:
        """Keep a denial that happened inside a worker (it arrives as an error carrying the
        host's own decision). A worker's denial is seen by the worker's hook, so it is
        marked as reported by the worker: the plugin can make one up (``source`` ``worker``);
        an in-process denial is the host's own."""
        decision = error.decision
        rules = tuple(getattr(rule, "location", str(rule)) for rule in decision.rules)
        record = AuditRecord(str(decision.plugin), str(decision.action), decision.resource, False,
                             str(getattr(decision.reason, "value", decision.reason)), rules,
                             reported_by_worker=from_worker,
                             source="worker" if from_worker else "host")
        with self._records_lock:
            self._keep(record)

    def _keep(self, record: AuditRecord) -> None:
        if len(self._records) == self._records.maxlen:
            self.dropped_records += 1
        self._records.append(record)

    def record_reported(self, plugin: str, action: str, resource: str | None) -> None:
        """Keep what an audit-mode worker reports, decided by the host, marked as reported."""
        decision = self.permissions.decide(plugin, action, resource)
        record = AuditRecord(decision.plugin, decision.action, decision.resource,
                             decision.allowed, decision.reason.value,
                             tuple(r.location for r in decision.rules), reported_by_worker=True,
                             source="worker")
        with self._records_lock:
            self._keep(record)

    def decide_syscall(self, plugin: str, action: str, resource: str) -> Decision:
        """The host's decision for a system call its seccomp listener saw, recorded with
        source ``kernel`` (every one in audit mode, the denials otherwise) and logged in
        the engine's decision log with that source."""
        decision = self.permissions.decide(plugin, action, resource, source="kernel")
        if decision.allowed and self.mode != "audit":
            return decision
        record = AuditRecord(decision.plugin, decision.action, decision.resource,
                             decision.allowed, decision.reason.value,
                             tuple(r.location for r in decision.rules), source="kernel")
        with self._records_lock:
            self._keep(record)
        return decision

    def records(self, plugin: str | None = None) -> list[AuditRecord]:
        """Recorded decisions, optionally of one plugin."""
        with self._records_lock:
            return [r for r in self._records if plugin is None or r.plugin == plugin]

    def _check_for(self, plugin: str) -> Callable[[Any, str], object]:
        def check(permission: Any, resource: str) -> object:
            self.require(plugin, permission, resource)
            return None

        return check

    def runner_for(self, metadata: PluginMetadata, call_hook: Callable[[str], Callable[..., Any]],
                   table: PluginTable | None = None) -> Runner:
        """A runner for ``metadata`` in the isolation mode the policy chose.

        Everything the runner is built from (isolation mode, timeouts, limits, kernel plan,
        the worker's table) comes from one ``table``: the one the caller read (the loader
        passes the table it validated), else the engine's current one. A reload meanwhile
        cannot give a worker the limits of one policy and the grants of another."""
        name = metadata.name
        table = table if table is not None else self.engine.plugin_table(name)
        if table is None:
            raise PluginValidationError(name, [
                "the engine has no table for this plugin; register its manifest first"])
        effective = table.effective
        limits, timeouts = effective.limits, effective.timeouts
        refusal = inprocess_refusal(table)
        if refusal is not None:  # also checked by validate_plugin; a runner never skips it
            raise PluginValidationError(name, [refusal])
        # An untrusted plugin without full process isolation, unless each gap is accepted.
        refusal = doctor.table_refusal(table) or None
        if refusal is not None:
            raise PluginValidationError(name, [refusal])
        inexact = [*inexact_deny_refusal(table, str(self.data_dir / name)),
                   *inexact_grant_refusal(table)]
        if inexact:
            raise PluginValidationError(name, inexact)
        refusal = disk_limit_refusal(table.effective, name)
        if refusal is not None:
            raise PluginValidationError(name, [refusal])
        plugin_path = metadata.plugin_path
        if plugin_path is None:
            raise PluginValidationError(name, ["the manifest came without a plugin directory"])
        # One read of the plugin's files: its digest is checked against the pin, and its
        # sources are the only code of the plugin that runs.
        code = read_plugin_code(metadata, self.engine)
        data_dir = self.data_dir / name
        # The kernel can only fence a directory that exists: create the plugin's own.
        data_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"policy-engine-{name}-", dir=self._scratch_root))
        def decide(action: str, resource: str | None) -> Decision:
            return self.permissions.decide(name, action, resource)

        def reported(action: str, resource: str | None) -> None:
            self.record_reported(name, action, resource)

        def peek(permission: Any, resource: str) -> bool:
            # Listing config keys is not an attempt to read them: nothing is recorded.
            return self.permissions.decide(name, permission, resource).allowed

        services = HostServices(name, self._check_for(name), config=self.config, db_path=self.db_path,
                                hooks=self.hooks, hook_caller=call_hook, decide=decide,
                                on_reported=reported, peek=peek, on_decision=self.record)
        audit = self.mode == "audit"
        sandboxed_audit = audit and not self.unsandboxed_audit
        if limits.isolation is Isolation.INPROCESS and sandboxed_audit:
            raise PluginValidationError(name, [
                "audit mode runs plugins in the kernel sandbox, and this plugin runs "
                "`isolation inprocess`, which is not one; hint: audit it with "
                "`unsandboxed_audit=True` (`--unsandboxed`) only if you would run it "
                "unsandboxed anyway"])
        if limits.isolation is Isolation.INPROCESS:
            def checker(action: str, resource: str | None) -> None:
                self.require(name, action, resource)

            # The coarse switch only governs what the table cannot be asked about (ctypes);
            # it follows the table, so a granted subprocess runs in-process too.
            may_spawn = audit or kernel_grants(table).subprocess
            runner = InprocessRunner(name, plugin_path, metadata.entry_point, checker,
                                     allow_subprocess=may_spawn, allow_network=True,
                                     scratch_dir=scratch, code=code)
            return InprocessPluginRunner(runner, services, plugin_type=metadata.type,
                                         data_dir=data_dir, init_timeout=timeouts.init,
                                         scratch_dir=scratch)
        init = WorkerInit(
            plugin=name,
            plugin_dir=str(plugin_path),
            entry_point=metadata.entry_point,
            plugin_type=metadata.type,
            data_dir=str(data_dir),
            lockdown=lockdown_spec(table, scratch, audit=audit,
                                   unsandboxed=self.unsandboxed_audit, data_dir=str(data_dir),
                                   kernel_records=self.kernel_records),
            checker=checker_data(table, audit=audit),
            limits=resource_limits(effective),
            code=code,
        )
        if limits.isolation is not Isolation.PROCESS:
            raise PluginValidationError(name, [f"unknown isolation `{limits.isolation}`"])
        def levels(report: Any, sandboxed: bool, held: Mapping[str, str]) -> tuple[str, str]:
            layers = doctor.table_layers(table, doctor.worker_layers(report, sandboxed, held))
            return (doctor.isolation_level(layers), doctor.table_refusal(table, layers))

        def syscall(action: str, resource: str) -> Decision:
            return self.decide_syscall(name, action, resource)

        # A sandboxed audit never falls back to an unsandboxed worker: it fails instead.
        return ProcessRunner(init, services, scratch_dir=scratch, levels=levels,
                             sandbox=True if sandboxed_audit else None,
                             on_syscall=syscall if self.kernel_records else None,
                             audit=audit)
