"""The main job: load a directory of plugins under the sandbox, call them, and report.

Each plugin that loads gets its entry point called (``run`` for agents, ``execute`` for
workflows), then every other public method its entry class defines that takes no required
arguments (found by parsing the module, never by importing it in the host), in source order.
The report says, per plugin: validation, isolation reached, calls and how each ended,
denials with the rule that denied them, timeouts, peak memory and CPU, and the outcome.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine import Engine
from ...errors import PolicyEngineError
from ...manifest import PluginMetadata, load_manifest
from .capabilities import HookRegistry
from .loader import CallRecord, PluginLoader
from .sandbox import AuditRecord, PluginSandbox

__all__ = ["PluginReport", "RunReport", "probe_methods", "run_plugins", "throwaway_root"]

_ENTRY = {"agent": "run", "workflow": "execute"}


@dataclass(frozen=True, slots=True)
class PluginReport:
    """What happened to one plugin during a run."""

    name: str
    validation: str
    isolation: str
    calls: tuple[CallRecord, ...]
    denials: tuple[AuditRecord, ...]
    peak_memory: int
    cpu_percent: float
    outcome: str
    warnings: tuple[str, ...] = ()
    #: which mechanism held each limit (``memory``, ``pids``, ``cpu``, ``freeze``)
    limits: Mapping[str, str] = field(default_factory=dict)

    @property
    def timeouts(self) -> int:
        """How many calls ran out of time."""
        return sum(1 for call in self.calls if call.outcome == "timeout")


@dataclass(frozen=True, slots=True)
class RunReport:
    """The whole run."""

    plugins: tuple[PluginReport, ...]
    seconds: float
    policy_hash: str
    notes: tuple[str, ...] = field(default=())
    mode: str = "enforce"  # or "audit": decisions recorded, nothing denied


def probe_methods(metadata: PluginMetadata) -> list[str]:
    """The entry point method, then the entry class's other public no-argument methods."""
    module, _, class_name = metadata.entry_point.partition(":")
    first = _ENTRY.get(metadata.type)
    methods = [first] if first else []
    if metadata.plugin_path is None:
        return methods
    path = metadata.plugin_path.joinpath(*module.split(".")).with_suffix(".py")
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return methods
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    required = len(item.args.args) - 1 - len(item.args.defaults)
                    if required <= 0 and not item.args.kwonlyargs and item.name not in methods and \
                            item.name not in ("initialize", "cleanup", "hooks"):
                        methods.append(item.name)
    return methods


@contextmanager
def throwaway_root() -> Iterator[Path]:
    """A temporary directory for a run's data and scratch space, removed afterwards: a run
    leaves nothing behind."""
    root = Path(tempfile.mkdtemp(prefix="policy-engine-run-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_plugins(policy: str | Path | list[str | Path], plugins_dir: str | Path,
                variables: dict[str, str] | None = None, *, mode: str = "enforce",
                unsandboxed: bool = False,
                config: Mapping[str, object] | None = None) -> RunReport:
    """Load every plugin under ``plugins_dir`` with ``policy`` and exercise it.

    ``config`` is the host configuration the plugins see through ``ctx.config`` (empty by
    default; the CLI passes the examples' demo configuration). Audit mode runs in the
    kernel sandbox; ``unsandboxed`` asks for the old audit mode, which is not a sandbox.
    """
    started = time.monotonic()
    with throwaway_root() as root:
        data_dir = root / "data"
        data_dir.mkdir()
        variables = {"data_dir": str(data_dir), **(variables or {})}
        engine = Engine.load(policy, plugins=plugins_dir, variables=variables)
        sandbox = PluginSandbox(engine, mode=mode, data_dir=data_dir, config=dict(config or {}),  # type: ignore[arg-type]
                                unsandboxed_audit=unsandboxed,
                                hooks=HookRegistry(), scratch_root=root)
        reports: list[PluginReport] = []
        with PluginLoader(engine, sandbox) as loader:
            loaded, failed = loader.load_all(plugins_dir)
            for name, plugin in sorted(loaded.items()):
                for method in probe_methods(plugin.metadata):
                    if plugin.unloaded is not None:
                        break
                    try:
                        plugin.call(method)
                    except (PolicyEngineError, Exception):
                        pass  # recorded on the plugin's call list
                sample = sandbox.monitor.get_usage(name)
                peak_memory = max(plugin.peak_memory, sample.peak_memory_bytes)
                peak_cpu = max(plugin.peak_cpu, sample.cpu_percent)
                outcome = "ok" if all(c.outcome == "ok" for c in plugin.calls) else "contained"
                if plugin.unloaded is not None:
                    outcome = f"unloaded: {plugin.unloaded}"
                reports.append(PluginReport(
                    name=name, validation="ok", isolation=plugin.isolation, calls=tuple(plugin.calls),
                    denials=tuple(r for r in sandbox.records(name) if not r.allowed),
                    peak_memory=peak_memory, cpu_percent=peak_cpu,
                    outcome=outcome, warnings=plugin.validation.warnings,
                    limits=dict(plugin.limits),
                ))
            for directory, error in sorted(failed.items()):
                name = _name_of(Path(plugins_dir) / directory) or directory
                reports.append(PluginReport(
                    name=name, validation="invalid", isolation="-", calls=(), denials=(),
                    peak_memory=0, cpu_percent=0.0, outcome=f"not loaded: {_first_line(error)}",
                ))
        return RunReport(tuple(sorted(reports, key=lambda r: r.name)), time.monotonic() - started,
                         engine.content_hash, mode=mode)


def _name_of(path: Path) -> str | None:
    try:
        return load_manifest(path).name
    except PolicyEngineError:
        return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def report_to_dict(report: RunReport) -> dict[str, Any]:
    """A JSON-friendly form of the report."""
    return {
        "seconds": round(report.seconds, 3),
        "mode": report.mode,
        "policy": report.policy_hash,
        "plugins": [
            {
                "name": p.name, "validation": p.validation, "isolation": p.isolation,
                "calls": [{"method": c.method, "outcome": c.outcome, "detail": c.detail} for c in p.calls],
                "denials": [{"action": d.action, "resource": d.resource, "reason": d.reason,
                             "rules": list(d.rules), "source": d.source} for d in p.denials],
                "timeouts": p.timeouts, "peak_memory": p.peak_memory, "cpu_percent": p.cpu_percent,
                "outcome": p.outcome, "limits": dict(p.limits),
            }
            for p in report.plugins
        ],
    }
