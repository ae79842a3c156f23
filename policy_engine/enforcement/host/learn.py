"""``learn``: run one plugin in audit mode and derive the least privilege it needs.

Every decision the plugin's actions caused is recorded (nothing is denied). From those:
the manifest permissions it needs (paths inside its own directories written with
``{plugin_dir}`` and ``{data_dir}``), compared with what it declares; the policy rules that
would grant what no rule grants now; and what a deny rule blocks (no allow can fix those).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine import Engine
from ...errors import PolicyEngineError
from ...manifest import load_manifest
from ...patterns import normalize
from ...permissions import Permission
from .loader import PluginLoader
from .run import probe_methods, throwaway_root
from .sandbox import AuditRecord, PluginSandbox

__all__ = ["NO_KERNEL_RECORDS", "WORKER_REPORTED_CAVEAT", "LearnResult", "learn"]


#: Said with every result: what a worker reports, its plugin controls.
WORKER_REPORTED_CAVEAT = (
    "needs marked `worker` were reported by the plugin's own worker process, which the "
    "plugin controls: it can leave actions out or make them up, so review the list before "
    "granting it; `kernel` needs were seen by the host through the worker's seccomp "
    "listener (opens and program starts) and `host` needs are requests the host served "
    "(network, capabilities), which the plugin cannot forge"
)
#: Said when the worker could not hand the host its seccomp listener.
NO_KERNEL_RECORDS = (
    "no kernel records: this host or worker has no seccomp user notification, so every "
    "file and program need below was reported by the worker alone"
)


@dataclass(frozen=True, slots=True)
class LearnResult:
    """What one audit-mode run of a plugin showed."""

    plugin: str
    calls: tuple[str, ...]
    needed: tuple[str, ...]  # manifest entries it needs, least privilege
    missing: tuple[str, ...]  # needed but not declared
    unused: tuple[str, ...]  # declared but never used
    rules: tuple[str, ...]  # policy rules that would grant what no rule grants now
    blocked: tuple[str, ...]  # needed but denied by a deny rule ("entry — rule")
    #: What the list rests on: who saw each need.
    caveat: str = WORKER_REPORTED_CAVEAT
    #: Who saw each needed entry: ``kernel``, ``host`` and/or ``worker`` (sorted).
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Needed entries only the plugin's own worker reported (forgeable).
    worker_only: tuple[str, ...] = ()
    #: Whether the host saw the plugin's opens and program starts from the kernel's side.
    kernel_records: bool = False


def _scope(record: AuditRecord, plugin_dir: str, data_dir: str, name: str) -> str | None:
    if record.resource is None:
        return None
    kind = Permission(record.action).kind.value
    if kind == "path":
        own_data = os.path.join(data_dir, name)
        for root, template in ((plugin_dir, "{plugin_dir}"), (own_data, "{data_dir}/" + name)):
            if record.resource == root or record.resource.startswith(root + "/"):
                return template + "/**"
    return record.resource


def learn(plugin_dir: str | Path, policy: Any, variables: dict[str, str] | None = None,
          calls: list[tuple[str, list[Any]]] | None = None, *,
          unsandboxed: bool = False) -> LearnResult:
    """Run the plugin in ``plugin_dir`` once in audit mode and report what it needed.

    ``calls`` are ``(method, args)`` pairs; by default its entry point and other public
    no-argument methods are called (as ``run`` does). Audit mode runs in the kernel
    sandbox (writes are thrown away, the network goes through the host's broker and is
    allowed only as the policy says); without bubblewrap this refuses (UsageError) unless
    ``unsandboxed`` asks for the old audit mode, which is not a sandbox.
    """
    plugin_dir = Path(plugin_dir).resolve()
    metadata = load_manifest(plugin_dir)
    with throwaway_root() as root:
        data_dir = root / "data"
        data_dir.mkdir()
        engine = Engine.load(policy, plugins=plugin_dir,
                             variables={"data_dir": str(data_dir), **(variables or {})})
        sandbox = PluginSandbox(engine, mode="audit", data_dir=data_dir, scratch_root=root,
                               unsandboxed_audit=unsandboxed)
        made: list[str] = []
        try:
            with PluginLoader(engine, sandbox) as loader:
                plugin = loader.load(plugin_dir)
                for method, args in calls or [(m, []) for m in probe_methods(metadata)]:
                    made.append(method)
                    try:
                        plugin.call(method, *args)
                    except (PolicyEngineError, Exception):
                        pass  # audit mode reports, it does not judge
                records = sandbox.records(metadata.name)
            kernel_records = sandbox.kernel_records and any(
                r.source == "kernel" for r in records)
        finally:
            sandbox.close()
        needed: dict[str, None] = {}
        missing: dict[str, None] = {}
        rules: dict[str, None] = {}
        blocked: dict[str, None] = {}
        used: set[Permission] = set()
        seen_by: dict[str, set[str]] = {}
        for record in records:
            try:
                permission = Permission(record.action)
            except ValueError:
                continue
            scope = _scope(record, str(plugin_dir), str(data_dir), metadata.name)
            entry = permission.value if scope is None else f"{permission.value} {scope}"
            entry = entry.replace(str(data_dir), "{data_dir}")
            needed[entry] = None
            seen_by.setdefault(entry, set()).add(record.source)
            used.add(permission)
            if record.reason == "not_declared":
                missing[entry] = None
            resource = (record.resource or "").replace(str(data_dir), "{data_dir}")
            if record.reason == "denied_by_rule":
                blocked[f"{entry} — {', '.join(record.rules)}"] = None
            elif record.reason in ("no_matching_allow", "not_declared") and not _granted(record, engine):
                on = f' on "{resource}"' if record.resource is not None else ""
                rules[f'allow plugin "{metadata.name}" to {permission.value}{on}'] = None
        unused = tuple(entry.text for entry in metadata.permissions if not (entry.permissions & used))
    sources = {entry: tuple(sorted(seen_by[entry])) for entry in sorted(needed)}
    return LearnResult(metadata.name, tuple(made), tuple(sorted(needed)), tuple(sorted(missing)),
                       unused, tuple(sorted(rules)), tuple(sorted(blocked)),
                       caveat=WORKER_REPORTED_CAVEAT if kernel_records else
                       f"{NO_KERNEL_RECORDS}; {WORKER_REPORTED_CAVEAT}",
                       sources=sources,
                       worker_only=tuple(e for e, who in sources.items() if who == ("worker",)),
                       kernel_records=kernel_records)


def _granted(record: AuditRecord, engine: Engine) -> bool:
    """Whether some allow rule covers the request (ignoring the manifest)."""
    table = engine.plugin_table(record.plugin)
    if table is None:
        return False
    entry = table.entries.get(Permission(record.action))
    if entry is None:
        return False
    try:
        resource = None if record.resource is None else normalize(
            Permission(record.action).kind, record.resource, base_dir=table.plugin_dir)
    except ValueError:
        return False
    return any(rule.matches_resource(resource) for rule in entry.allows)
