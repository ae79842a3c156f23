"""What each plugin will effectively get, in domain terms (``policy-engine matrix``).

A plugin gets, for each permission its manifest declares, the resources that are both
declared and allowed by a rule, minus those a deny rule blocks. This module computes that
from the compiled decision table, exactly and without sampling:

* a **granted scope** is the intersection of a declared pattern and an allow rule's pattern,
  shown as the narrower of the two when one contains the other, else as
  ``declared A ∩ rule B``; a grant whose rule has a ``when``/``unless`` that reads
  ``context.*`` carries that condition (conditions on ``plugin.*`` alone were settled when
  the table was built);
* a **blocked scope** is a deny rule's pattern that overlaps a granted scope;
* a declared scope is **withheld** when no allow rule overlaps it, or every grant overlapping
  it is covered by an unconditional deny.

Two plugins whose :class:`PermissionGrants` have equal granted and blocked scopes (text and
condition) get the same decision for every request: :mod:`policy_engine.impact` diffs
policies by comparing them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .engine import Engine
from .formatter import format_condition
from .patterns import (
    HostPattern,
    PathPattern,
    Pattern,
    Region,
    host_text,
    intersect,
    overlaps,
    region_covered,
    region_overlaps,
)
from .permissions import Permission
from .settings import Limits, Timeouts
from .table import ActionEntry, PinStatus, PluginTable, TableRule

__all__ = [
    "ANY",
    "PermissionGrants",
    "PluginGrants",
    "Scope",
    "Withheld",
    "grant_matrix",
    "overlaps",
    "plugin_grants",
    "rule_condition",
    "show_pattern",
]

#: How a scope that covers every resource (no ``on``, or no scopes declared) is shown.
ANY = "any"


@dataclass(frozen=True, slots=True)
class Scope:
    """A resource scope in domain terms, with the condition under which it applies.

    ``parts`` are the patterns whose intersection it is, in domain terms: ``()`` for any
    resource, one pattern, or a declared and a rule pattern. ``text`` says the same for a
    person: ``/srv/data/**``, ``api.example.com:443``, ``declared A ∩ rule B`` or ``any``.
    ``condition`` is None when the scope applies unconditionally. ``rules`` are the
    ``file:line:col`` of the rules that give it.
    """

    parts: tuple[str, ...]
    condition: str | None
    rules: tuple[str, ...]
    note: str | None = None

    @property
    def text(self) -> str:
        """The scope as a person reads it."""
        if not self.parts:
            return ANY
        if len(self.parts) == 1:
            return self.parts[0]
        return f"declared {self.parts[0]} ∩ rule {self.parts[1]}"

    @property
    def key(self) -> tuple[tuple[str, ...], str | None]:
        """What the scope means (its patterns and condition), without where it came from."""
        return (self.parts, self.condition)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        out: dict[str, Any] = {"scope": self.text, "patterns": list(self.parts),
                               "condition": self.condition, "rules": list(self.rules)}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True, slots=True)
class Withheld:
    """A declared scope the plugin will not get, and why."""

    declared: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"scope": self.declared, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class PermissionGrants:
    """One declared permission of one plugin: what it asked for and what it gets.

    ``declared`` is None when the manifest asks for any resource.
    """

    permission: Permission
    declared: tuple[str, ...] | None
    granted: tuple[Scope, ...]
    blocked: tuple[Scope, ...]
    withheld: tuple[Withheld, ...]
    #: Every deny scope that applies to the plugin and permission (``blocked`` are those
    #: that overlap a grant); kept for comparisons, not shown.
    denies: tuple[Scope, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "permission": self.permission.value,
            "declared": None if self.declared is None else list(self.declared),
            "granted": [s.to_dict() for s in self.granted],
            "blocked": [s.to_dict() for s in self.blocked],
            "withheld": [w.to_dict() for w in self.withheld],
        }


@dataclass(frozen=True, slots=True)
class PluginGrants:
    """Everything one plugin effectively gets: grants per declared permission, settings."""

    name: str
    enabled: bool
    pin: PinStatus
    permissions: tuple[PermissionGrants, ...]
    timeouts: Timeouts
    limits: Limits
    notes: tuple[str, ...]

    @property
    def status(self) -> str:
        """``enabled`` or ``disabled``, with the pin state when there is a pin."""
        state = "enabled" if self.enabled else "disabled"
        if self.pin is PinStatus.MATCH:
            return f"{state}, pinned"
        if self.pin is PinStatus.MISMATCH:
            return f"{state}, pin mismatch"
        return state

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (seconds, bytes, fractions of a core)."""
        limits = self.limits
        return {
            "plugin": self.name,
            "enabled": self.enabled,
            "pin": self.pin.value,
            "permissions": [p.to_dict() for p in self.permissions],
            "timeouts": {"init": self.timeouts.init, "hook": self.timeouts.hook,
                         "execute": self.timeouts.execute},
            "limits": {
                "memory": limits.memory, "memory_warn": limits.memory_warn, "cpu": limits.cpu,
                "file_size": limits.file_size, "on_violation": limits.on_violation.value,
                "isolation": limits.isolation.value, "allow_degraded": limits.allow_degraded,
            },
            "notes": list(self.notes),
        }


# Patterns in domain terms -------------------------------------------------------------------


def show_pattern(pattern: Pattern, plugin_dir: str | None = None) -> str:
    """A pattern as a person reads it: paths with the plugin's directory as
    ``{plugin_dir}``, hosts always with a port (``*`` for any port), names as written."""
    if isinstance(pattern, HostPattern):
        host = host_text(pattern.host_text)
        ports = pattern.port_range
        shown = "*" if ports is None else str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"
        return f"{host}:{shown}"
    text = pattern.canonical
    if isinstance(pattern, PathPattern) and plugin_dir:
        root = plugin_dir.rstrip("/")
        if root and (text == root or text.startswith(root + "/")):
            return "{plugin_dir}" + text[len(root):]
    return text


# Regions: a declared pattern, a rule pattern, or their intersection (patterns.intersect)


def _shown(patterns: Iterable[Pattern | None], plugin_dir: str | None) -> tuple[str, ...]:
    return tuple(show_pattern(p, plugin_dir) for p in patterns if p is not None)


def _covers(deny: TableRule, region: Region) -> bool:
    """Whether an unconditional deny rule covers the whole region."""
    return region_covered(deny.patterns, region)


def rule_condition(rule: TableRule) -> str | None:
    """The ``when``/``unless`` text that still decides per request (None: always applies).

    A deny rule whose condition could not be evaluated always applies, so it has none.
    """
    if rule.error is not None:
        return None
    parts = []
    if rule.when is not None:
        parts.append("when " + format_condition(rule.when))
    if rule.unless is not None:
        parts.append("unless " + format_condition(rule.unless))
    return " ".join(parts) or None


def _is_unconditional(rule: TableRule) -> bool:
    return rule_condition(rule) is None


def _merge(scopes: Iterable[tuple[tuple[str, ...], str | None, str, str | None]]) -> tuple[Scope, ...]:
    """Scopes with equal patterns and condition merged (their rules listed together), sorted."""
    merged: dict[tuple[tuple[str, ...], str | None], tuple[list[str], str | None]] = {}
    for parts, condition, rule, note in scopes:
        rules, _ = merged.setdefault((parts, condition), ([], note))
        if rule not in rules:
            rules.append(rule)
    found = [Scope(parts, condition, tuple(rules), note)
             for (parts, condition), (rules, note) in merged.items()]
    return tuple(sorted(found, key=lambda s: (s.text, s.parts, s.condition or "")))


def _permission_grants(permission: Permission, entry: ActionEntry, table: PluginTable) -> PermissionGrants:
    plugin_dir = table.plugin_dir
    declared_patterns: tuple[Pattern | None, ...] = (
        (None,) if entry.declared_patterns is None else entry.declared_patterns
    )
    declared_texts = None if entry.declared_patterns is None else tuple(
        show_pattern(p, plugin_dir) for p in entry.declared_patterns
    )
    refused = _refusal(table)
    if refused is not None:
        withheld = tuple(Withheld(ANY if d is None else show_pattern(d, plugin_dir), refused)
                         for d in declared_patterns)
        return PermissionGrants(permission, declared_texts, (), (), withheld, ())

    unconditional_denies = [d for d in entry.denies if _is_unconditional(d)]
    granted: list[tuple[Region, TableRule]] = []
    withheld_list: list[Withheld] = []
    for declared in declared_patterns:
        shown = ANY if declared is None else show_pattern(declared, plugin_dir)
        regions: list[tuple[Region, TableRule]] = []
        for allow in entry.allows:
            for rule_pattern in (None,) if allow.patterns is None else allow.patterns:
                region = intersect(declared, rule_pattern)
                if region is not None:
                    regions.append((region, allow))
        if not regions:
            region_of_declared: Region = () if declared is None else (declared,)
            denying = [d.ref.location for d in unconditional_denies if _covers(d, region_of_declared)]
            also = f", and {', '.join(denying)} denies it" if denying else ""
            withheld_list.append(Withheld(shown, "no allow rule grants it" + also))
            continue
        open_regions = []
        shadowing: list[str] = []
        for region, allow in regions:
            blockers = [d.ref.location for d in unconditional_denies if _covers(d, region)]
            if blockers:
                shadowing.extend(b for b in blockers if b not in shadowing)
            else:
                open_regions.append((region, allow))
        if not open_regions:
            withheld_list.append(Withheld(shown, "denied by " + ", ".join(shadowing)))
        granted.extend(open_regions)

    granted_scopes = _merge(
        (_shown(region, plugin_dir), rule_condition(allow), allow.ref.location, None)
        for region, allow in granted
    )
    denies = [
        (pattern, (_shown((pattern,), plugin_dir), rule_condition(deny),
                   deny.ref.location, None if deny.error is None else
                   f"applies because its condition cannot be evaluated: {deny.error}"))
        for deny in entry.denies
        for pattern in ((None,) if deny.patterns is None else deny.patterns)
    ]
    blocked_scopes = _merge(
        shown for pattern, shown in denies
        if any(region_overlaps(region, pattern) for region, _ in granted)
    )
    return PermissionGrants(permission, declared_texts, granted_scopes, blocked_scopes,
                            tuple(withheld_list), _merge(shown for _, shown in denies))


def _refusal(table: PluginTable) -> str | None:
    if not table.enabled:
        return "the plugin is disabled"
    if table.pin is PinStatus.MISMATCH:
        return "the plugin's content does not match its pin"
    return None


def plugin_grants(table: PluginTable) -> PluginGrants:
    """What one plugin effectively gets, from its compiled table."""
    permissions = tuple(
        _permission_grants(permission, entry, table)
        for permission, entry in sorted(table.entries.items(), key=lambda kv: kv[0].value)
        if entry.declared
    )
    effective = table.effective
    return PluginGrants(table.name, table.enabled, table.pin, permissions,
                        effective.timeouts, effective.limits, effective.notes)


def grant_matrix(engine: Engine) -> tuple[PluginGrants, ...]:
    """Every registered plugin's effective grants, sorted by plugin name."""
    tables = (engine.plugin_table(name) for name in engine.plugins)
    return tuple(plugin_grants(table) for table in tables if table is not None)
