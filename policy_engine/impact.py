"""The change impact of a policy edit (``policy-engine diff OLD NEW``).

Both policy sets are compiled against the same plugins and variables, and each plugin's
effective grants (:mod:`policy_engine.grants`) are compared exactly, as sets: per plugin and
permission, the granted scopes (with their conditions) gained and lost, and the deny scopes
over those grants added or removed. Settings (timeouts, limits) and pin
status are compared too. Nothing is sampled: when two policies give a plugin the same
grants, they give it the same decision for every request (conditions read only ``context``
and the plugin's own attributes, and a pin change is reported on its own).

A decision log can be replayed: each recorded request is decided, with its recorded
context, under the old and the new policy, and a request the two decide differently is a
flip. A request logged without its context, that a changed rule applies to while a rule
applying to it reads ``context.*``, cannot be replayed: it is counted as unknown, with why,
never as a flip. Rules are compared by what they say, not where they are, so an edit of
comments, white space or rule order changes nothing.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .compiler import CompiledRule
from .conditions import attributes
from .decision_log import LogEntryError, LoggedDecision, read_decision_log, read_log_entry
from .engine import Engine
from .errors import UsageError
from .formatter import format_rule
from .grants import PermissionGrants, PluginGrants, grant_matrix
from .settings import describe

__all__ = [
    "Change",
    "Flip",
    "GrantChange",
    "Impact",
    "SettingChange",
    "Unknown",
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
    context: Mapping[str, Any] | None = None  # as recorded; None when the log holds none

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"plugin": self.plugin, "action": self.action, "resource": self.resource,
                "context": dict(self.context) if self.context is not None else None,
                "was_allowed": self.was_allowed, "now_allowed": self.now_allowed,
                "reason": self.reason, "rules": list(self.rules), "count": self.count}


@dataclass(frozen=True, slots=True)
class Unknown:
    """A recorded decision that cannot be replayed (``count`` times in the log): the log
    holds no context and a rule that reads ``context.*`` applies, with a changed rule."""

    plugin: str
    action: str
    resource: str | None
    was_allowed: bool
    why: str
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"plugin": self.plugin, "action": self.action, "resource": self.resource,
                "was_allowed": self.was_allowed, "why": self.why, "count": self.count}


@dataclass(frozen=True, slots=True)
class Impact:
    """What a policy edit changes. ``replayed`` is the number of log entries re-decided
    (None without a log); ``unknown`` the entries that could not be."""

    grants: tuple[GrantChange, ...]
    settings: tuple[SettingChange, ...]
    replayed: int | None = None
    flips: tuple[Flip, ...] = ()
    unknown: tuple[Unknown, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything differs (or may differ: an unknown replay)."""
        return bool(self.grants or self.settings or self.flips or self.unknown)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "changed": self.changed,
            "grants": [c.to_dict() for c in self.grants],
            "settings": [c.to_dict() for c in self.settings],
            "replayed": self.replayed,
            "flips": [f.to_dict() for f in self.flips],
            "unknown": [u.to_dict() for u in self.unknown],
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


def read_replay_log(path: str | Path) -> list[LoggedDecision]:
    """A decision log's entries, each read by :func:`read_log_entry`; raises
    :class:`UsageError` naming the first entry that is no decision."""
    # Caps and bad lines raise their own positioned errors (InputLimitError, DecisionLogError).
    entries = read_decision_log(path)
    decisions: list[LoggedDecision] = []
    for number, entry in enumerate(entries, 1):
        try:
            decisions.append(read_log_entry(entry))
        except LogEntryError as exc:
            raise UsageError(f"entry {number} of the decision log `{path}` {exc}") from None
    return decisions


def _rule_key(rule: CompiledRule) -> str:
    """What a rule says, wherever it is written: its canonical text."""
    return format_rule(rule.node)


def _changed_rules(old: Engine, new: Engine) -> list[CompiledRule]:
    """The rules only one side has (compared by text, as multisets)."""
    changed: list[CompiledRule] = []
    for rules, other in ((old.policy.rules, new.policy.rules), (new.policy.rules, old.policy.rules)):
        remaining = Counter(_rule_key(r) for r in other)
        for rule in rules:
            key = _rule_key(rule)
            if remaining[key] > 0:
                remaining[key] -= 1
            else:
                changed.append(rule)
    return changed


def _applies(rule: CompiledRule, plugin: str, action: str) -> bool:
    return ((rule.plugins is None or plugin in rule.plugins)
            and any(p.value == action for p in rule.permissions))


def _context_read(rule: CompiledRule) -> str | None:
    for condition in (rule.when, rule.unless):
        for attribute in attributes(condition):
            if attribute.root == "context":
                return attribute.text
    return None


def _why_unknown(entry: LoggedDecision, changed: Sequence[CompiledRule],
                 rules: Sequence[CompiledRule]) -> str | None:
    """Why an entry logged without context cannot be replayed, or None if it can: no
    changed rule applies to it, or no rule that applies reads the context."""
    if entry.context is not None or not any(_applies(r, entry.plugin, entry.action) for r in changed):
        return None
    # A changed rule that reads the context is the likeliest cause: name it first.
    changed_ids = {id(r) for r in changed}
    for rule in (*changed, *rules):
        read = _context_read(rule)
        if read is not None and _applies(rule, entry.plugin, entry.action):
            return (f"the log holds no context and the {'changed ' if id(rule) in changed_ids else ''}"
                    f"rule at {rule.ref.location} reads `{read}`")
    return None


def replay(old: Engine, new: Engine, entries: Iterable[LoggedDecision]
           ) -> tuple[tuple[Flip, ...], tuple[Unknown, ...]]:
    """Decide each recorded request, with its recorded context, under ``old`` and ``new``:
    the requests they decide differently (flips) and the ones that cannot be replayed
    (unknown), in log order, repeated requests counted once."""
    changed = _changed_rules(old, new)
    rules = [*old.policy.rules, *new.policy.rules]
    flips: dict[str, Flip] = {}
    unknown: dict[str, Unknown] = {}
    for entry in entries:
        key = json.dumps([entry.plugin, entry.action, entry.resource, entry.context, entry.allowed],
                         sort_keys=True, default=str)
        why = _why_unknown(entry, changed, rules)
        if why is not None:
            seen = unknown.get(key)
            unknown[key] = (Unknown(entry.plugin, entry.action, entry.resource, entry.allowed, why)
                            if seen is None else replace(seen, count=seen.count + 1))
            continue
        context = dict(entry.context) if entry.context else None
        before = old.decide(entry.plugin, entry.action, entry.resource, context)
        after = new.decide(entry.plugin, entry.action, entry.resource, context)
        if before.allowed == after.allowed:
            continue
        found = flips.get(key)
        flips[key] = (Flip(entry.plugin, entry.action, entry.resource, before.allowed, after.allowed,
                           after.reason.value, tuple(rule.location for rule in after.rules),
                           context=entry.context)
                      if found is None else replace(found, count=found.count + 1))
    return tuple(flips.values()), tuple(unknown.values())


def policy_impact(old: Engine, new: Engine, log: Sequence[LoggedDecision] | None = None) -> Impact:
    """What changes from ``old`` to ``new`` (two engines over the same plugins); with a
    decision ``log``, also the recorded decisions that would flip and those that cannot be
    replayed."""
    grants, settings = compare_grants(grant_matrix(old), grant_matrix(new))
    if log is None:
        return Impact(grants, settings)
    flips, unknown = replay(old, new, log)
    return Impact(grants, settings, len(log), flips, unknown)
