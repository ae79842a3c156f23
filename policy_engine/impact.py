"""The change impact of a policy edit (``policy-engine diff OLD NEW``).

Both policy sets are compiled against the same plugins and variables, and each plugin's
effective grants (:mod:`policy_engine.grants`) are compared exactly, as sets: per plugin and
permission, the granted scopes (with their conditions) gained and lost, and the deny scopes
over those grants added or removed. Settings (timeouts, limits) and pin
status are compared too. Nothing is sampled: when two policies give a plugin the same
grants, they give it the same decision for every request (conditions read only ``context``
and the plugin's own attributes, and a pin change is reported on its own).

A decision log can be replayed under the new policy to list the recorded decisions that
would come out the other way.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .decision_log import read_decision_log
from .engine import Engine
from .errors import UsageError
from .grants import PermissionGrants, PluginGrants, grant_matrix
from .settings import describe

__all__ = [
    "Change",
    "Flip",
    "GrantChange",
    "Impact",
    "SettingChange",
    "compare_grants",
    "policy_impact",
    "read_replay_log",
    "replay",
]


class Change(str, enum.Enum):
    """How a scope changed between the old and the new policy."""

    GAINED = "gained"  # a granted scope only the new policy gives
    LOST = "lost"  # a granted scope only the old policy gives
    NEWLY_DENIED = "newly denied"  # a deny scope over the new grants the old policy lacks
    NO_LONGER_DENIED = "no longer denied"  # a deny scope over the old grants the new policy lacks


@dataclass(frozen=True, slots=True)
class GrantChange:
    """One scope of one plugin's permission that differs; ``rules`` are where it comes from
    (in the new policy for gained and blocked, in the old one otherwise)."""

    plugin: str
    permission: str
    change: Change
    scope: str
    condition: str | None
    rules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"plugin": self.plugin, "permission": self.permission, "change": self.change.value,
                "scope": self.scope, "condition": self.condition, "rules": list(self.rules)}


@dataclass(frozen=True, slots=True)
class SettingChange:
    """A timeout, limit or status of one plugin that differs."""

    plugin: str
    setting: str
    old: str
    new: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"plugin": self.plugin, "setting": self.setting, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class Flip:
    """A recorded decision that the new policy decides the other way (``count`` times in
    the log)."""

    plugin: str
    action: str
    resource: str | None
    was_allowed: bool
    now_allowed: bool
    reason: str
    rules: tuple[str, ...]
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"plugin": self.plugin, "action": self.action, "resource": self.resource,
                "was_allowed": self.was_allowed, "now_allowed": self.now_allowed,
                "reason": self.reason, "rules": list(self.rules), "count": self.count}


@dataclass(frozen=True, slots=True)
class Impact:
    """What a policy edit changes. ``replayed`` is the number of log entries re-decided
    (None without a log)."""

    grants: tuple[GrantChange, ...]
    settings: tuple[SettingChange, ...]
    replayed: int | None = None
    flips: tuple[Flip, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything differs."""
        return bool(self.grants or self.settings or self.flips)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "changed": self.changed,
            "grants": [c.to_dict() for c in self.grants],
            "settings": [c.to_dict() for c in self.settings],
            "replayed": self.replayed,
            "flips": [f.to_dict() for f in self.flips],
        }


def _permission_changes(plugin: str, old: PermissionGrants | None,
                        new: PermissionGrants | None) -> list[GrantChange]:
    """Granted scopes gained and lost; deny scopes over the grants added and removed.

    A deny scope counts as added only when the old policy had no deny scope like it at all
    (not merely one that stopped overlapping a grant that changed): when the grants are the
    same on both sides, that still catches every deny that changes a decision.
    """
    either = new or old
    assert either is not None
    name = either.permission.value
    old_granted, new_granted = (old.granted if old else ()), (new.granted if new else ())
    old_keys, new_keys = {s.key for s in old_granted}, {s.key for s in new_granted}
    changes = [GrantChange(plugin, name, Change.GAINED, s.text, s.condition, s.rules)
               for s in new_granted if s.key not in old_keys]
    changes += [GrantChange(plugin, name, Change.LOST, s.text, s.condition, s.rules)
                for s in old_granted if s.key not in new_keys]
    old_denies = {s.key for s in old.denies} if old else set()
    new_denies = {s.key for s in new.denies} if new else set()
    changes += [GrantChange(plugin, name, Change.NEWLY_DENIED, s.text, s.condition, s.rules)
                for s in (new.blocked if new else ()) if s.key not in old_denies]
    changes += [GrantChange(plugin, name, Change.NO_LONGER_DENIED, s.text, s.condition, s.rules)
                for s in (old.blocked if old else ()) if s.key not in new_denies]
    return changes


def _settings(grants: PluginGrants) -> dict[str, str]:
    return {"status": grants.status, **describe(grants.limits, grants.timeouts)}


def compare_grants(
    old: Iterable[PluginGrants], new: Iterable[PluginGrants]
) -> tuple[tuple[GrantChange, ...], tuple[SettingChange, ...]]:
    """The exact differences between two grant matrices of the same plugins."""
    before = {g.name: g for g in old}
    after = {g.name: g for g in new}
    grant_changes: list[GrantChange] = []
    setting_changes: list[SettingChange] = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            setting_changes.append(SettingChange(name, "plugin", "loaded" if a else "not loaded",
                                                 "loaded" if b else "not loaded"))
            continue
        old_permissions = {p.permission: p for p in a.permissions}
        new_permissions = {p.permission: p for p in b.permissions}
        for permission in sorted(set(old_permissions) | set(new_permissions), key=lambda p: p.value):
            grant_changes += _permission_changes(name, old_permissions.get(permission),
                                                 new_permissions.get(permission))
        old_settings, new_settings = _settings(a), _settings(b)
        for key, value in old_settings.items():
            if new_settings[key] != value:
                setting_changes.append(SettingChange(name, key, value, new_settings[key]))
    return tuple(grant_changes), tuple(setting_changes)


def read_replay_log(path: str | Path) -> list[dict[str, Any]]:
    """A decision log's entries, checked for what replaying needs; raises :class:`UsageError`."""
    try:
        entries = read_decision_log(path)
    except OSError as exc:
        raise UsageError(f"cannot read the decision log `{path}`: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"decision log `{path}` is not JSON lines: {exc}") from None
    for number, entry in enumerate(entries, 1):
        problem = None
        if not isinstance(entry, dict):
            problem = "is not an object"
        elif not isinstance(entry.get("plugin"), str) or not isinstance(entry.get("action"), str):
            problem = "needs `plugin` and `action` strings"
        elif entry.get("resource") is not None and not isinstance(entry.get("resource"), str):
            problem = "has a `resource` that is not a string"
        elif not isinstance(entry.get("allowed"), bool):
            problem = "needs `allowed` (true or false)"
        elif entry.get("context") is not None and not isinstance(entry.get("context"), dict):
            problem = "has a `context` that is not an object"
        if problem:
            raise UsageError(f"entry {number} of the decision log `{path}` {problem}")
    return entries


def replay(engine: Engine, entries: Iterable[Mapping[str, Any]]) -> tuple[Flip, ...]:
    """The recorded decisions that ``engine`` decides the other way, in log order, with
    repeated requests counted once."""
    flips: dict[str, Flip] = {}
    for entry in entries:
        context = entry.get("context") or None
        decision = engine.decide(entry["plugin"], entry["action"], entry.get("resource"), context)
        if decision.allowed == entry["allowed"]:
            continue
        key = json.dumps([entry["plugin"], entry["action"], entry.get("resource"), context,
                          entry["allowed"]], sort_keys=True, default=str)
        found = flips.get(key)
        if found is None:
            flips[key] = Flip(entry["plugin"], entry["action"], entry.get("resource"), entry["allowed"],
                              decision.allowed, decision.reason.value,
                              tuple(rule.location for rule in decision.rules))
        else:
            flips[key] = Flip(found.plugin, found.action, found.resource, found.was_allowed,
                              found.now_allowed, found.reason, found.rules, found.count + 1)
    return tuple(flips.values())


def policy_impact(old: Engine, new: Engine, log: Sequence[Mapping[str, Any]] | None = None) -> Impact:
    """What changes from ``old`` to ``new`` (two engines over the same plugins); with a
    decision ``log``, also the recorded decisions ``new`` would flip."""
    grants, settings = compare_grants(grant_matrix(old), grant_matrix(new))
    if log is None:
        return Impact(grants, settings)
    return Impact(grants, settings, len(log), replay(new, log))
