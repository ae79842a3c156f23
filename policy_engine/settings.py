"""Timeouts and resource limits: the built-in defaults, the policy's overrides, the ceilings,
and how a manifest's requests are cut to them.

Resolution for one plugin, each step overriding the one before:
built-in defaults (the seed's: init 30 s, hook 5 s, execute 300 s, memory 500 MB warning at
80 %, cpu 80 % of one core, file size 100 MB, terminate on violation, process isolation)
→ the policy's ``defaults`` block → the policy's ``plugin "<name>"`` block. That gives the
administrator's value for each setting. Each value is also the ceiling a manifest may ask
up to, unless a ``max`` raises the ceiling. A manifest asking for less gets what it asked;
asking for more gets the ceiling (and a note the linter reports).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from .diagnostics import Span
from .units import format_duration, format_percent, format_size


class Violation(str, enum.Enum):
    """What happens when a plugin goes over a limit."""

    TERMINATE = "terminate"
    WARN = "warn"


class Isolation(str, enum.Enum):
    """How plugin code is run: in its own locked-down worker process, or in the host."""

    PROCESS = "process"
    INPROCESS = "inprocess"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each phase of a plugin may take."""

    init: float = 30.0
    hook: float = 5.0
    execute: float = 300.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one plugin. ``cpu`` is a fraction of one core (0.8 = 80 %)."""

    memory: int = 500_000_000
    memory_warn: float = 0.8
    cpu: float = 0.8
    file_size: int = 100_000_000
    #: Bytes and files of the plugin's data directory (0: no limit); see
    #: :mod:`policy_engine.enforcement.host.disk` for the mechanism.
    disk: int = 0
    disk_files: int = 0
    on_violation: Violation = Violation.TERMINATE
    isolation: Isolation = Isolation.PROCESS
    allow_degraded: bool = False


#: Setting keys a policy block can set, with how to render their values.
TIMEOUT_PHASES = ("init", "hook", "execute")
LIMIT_RESOURCES = ("memory", "cpu", "file_size", "disk", "disk_files")


@dataclass(frozen=True, slots=True)
class SettingValue:
    """One value set by a policy block, with where it was set."""

    value: Any
    span: Span


@dataclass(frozen=True, slots=True)
class Overlay:
    """The settings one kind of block (all ``defaults`` or one plugin's blocks) sets.

    Keys: ``timeout.<phase>``, ``timeout.<phase>.max``, ``limit.<resource>``,
    ``limit.<resource>.max``, ``limit.memory.warn``, ``limit.cpu.warn``, ``on_violation``,
    ``isolation``, ``allow_degraded`` and ``accept.<risk>`` (True) per accepted risk.
    """

    values: Mapping[str, SettingValue]

    def get(self, key: str) -> Any:
        """The value set for ``key`` or None."""
        found = self.values.get(key)
        return None if found is None else found.value


EMPTY_OVERLAY = Overlay(MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Effective:
    """A plugin's resolved timeouts and limits, the ceilings, and notes about cut requests."""

    timeouts: Timeouts
    limits: Limits
    ceilings: Mapping[str, float]
    notes: tuple[str, ...] = ()
    #: The risks (:mod:`policy_engine.risks`) the policy accepts for this plugin: those of
    #: its ``defaults`` blocks and of its own ``plugin`` blocks together.
    accepted_risks: frozenset[str] = frozenset()


_RENDER = {
    "memory": format_size,
    "file_size": format_size,
    "cpu": format_percent,
    "disk": format_size,
    "disk_files": lambda count: f"{int(count)} files",
}


def resolve(
    defaults: Overlay,
    plugin: Overlay,
    requested_timeouts: Mapping[str, float] | None = None,
    requested_limits: Mapping[str, float] | None = None,
) -> Effective:
    """Resolve one plugin's settings (see the module docstring for the order)."""
    admin: dict[str, Any] = {}
    ceilings: dict[str, float] = {}
    base_timeouts, base_limits = Timeouts(), Limits()
    for phase in TIMEOUT_PHASES:
        key = f"timeout.{phase}"
        admin[key] = _pick(plugin, defaults, key, getattr(base_timeouts, phase))
        ceilings[key] = max(admin[key], _pick(plugin, defaults, key + ".max", admin[key]))
    for resource in LIMIT_RESOURCES:
        key = f"limit.{resource}"
        admin[key] = _pick(plugin, defaults, key, getattr(base_limits, resource))
        ceilings[key] = max(admin[key], _pick(plugin, defaults, key + ".max", admin[key]))
    notes: list[str] = []
    timeouts = {}
    for phase in TIMEOUT_PHASES:
        timeouts[phase] = _cut(
            f"timeout.{phase}", admin, ceilings, (requested_timeouts or {}).get(phase), notes, format_duration
        )
    limits: dict[str, Any] = {}
    for resource in LIMIT_RESOURCES:
        limits[resource] = _cut(
            f"limit.{resource}", admin, ceilings, (requested_limits or {}).get(resource), notes, _RENDER[resource]
        )
    limits["memory"] = int(limits["memory"])
    limits["file_size"] = int(limits["file_size"])
    limits["disk"] = int(limits["disk"])
    limits["disk_files"] = int(limits["disk_files"])
    limits["memory_warn"] = _pick(plugin, defaults, "limit.memory.warn", base_limits.memory_warn)
    limits["on_violation"] = Violation(_pick(plugin, defaults, "on_violation", base_limits.on_violation))
    limits["isolation"] = Isolation(_pick(plugin, defaults, "isolation", base_limits.isolation))
    limits["allow_degraded"] = bool(_pick(plugin, defaults, "allow_degraded", False))
    return Effective(
        timeouts=Timeouts(**timeouts),
        limits=replace(Limits(), **limits),
        ceilings=MappingProxyType(ceilings),
        notes=tuple(notes),
        accepted_risks=frozenset(
            key.split(".", 1)[1] for overlay in (defaults, plugin) for key in overlay.values
            if key.startswith("accept.")
        ),
    )


def _pick(plugin: Overlay, defaults: Overlay, key: str, fallback: Any) -> Any:
    for overlay in (plugin, defaults):
        value = overlay.get(key)
        if value is not None:
            return value
    return fallback


def _cut(key: str, admin: Mapping[str, Any], ceilings: Mapping[str, float], requested: float | None,
         notes: list[str], render: Any) -> float:
    if requested is None:
        return float(admin[key])
    ceiling = ceilings[key]
    if requested > ceiling:
        name = key.split(".", 1)[1]
        notes.append(f"manifest asks {key.split('.')[0]} {name} {render(requested)}; cut to the ceiling {render(ceiling)}")
        return float(ceiling)
    return float(requested)


def describe(limits: Limits, timeouts: Timeouts) -> dict[str, str]:
    """Human-readable settings, for tables and explanations."""
    out = {f"timeout {f.name}": format_duration(getattr(timeouts, f.name)) for f in fields(timeouts)}
    out["memory"] = f"{format_size(limits.memory)} (warn {format_percent(limits.memory_warn)})"
    out["cpu"] = format_percent(limits.cpu)
    out["file_size"] = format_size(limits.file_size)
    if limits.disk:
        out["disk"] = format_size(limits.disk) + (f", {limits.disk_files} files"
                                                  if limits.disk_files else "")
    out["on violation"] = limits.on_violation.value
    out["isolation"] = limits.isolation.value + (" (degraded allowed)" if limits.allow_degraded else "")
    return out


def describe_risks(effective: Effective) -> str:
    """The accepted risks as one line (``-`` when none), for tables."""
    return ", ".join(sorted(effective.accepted_risks)) or "-"
