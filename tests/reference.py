"""The decision procedure as it was before the compiled fast paths: the reference.

``reference_decide`` reads only the table's data (entries, rules, patterns, conditions) and
decides the way ``DecisionTable.decide`` did, one plain loop per rule list, with the
"did you mean" computed eagerly. Property tests compare the engine with it on random
policies and requests, and ``benchmarks/bench_decide.py`` measures it in the same run as
the engine, so the figures are also printed as ratios that do not drift with the machine.

The one deliberate difference from the old code: resources longer than
``MAX_RESOURCE_LENGTH`` are denied as ``resource_too_long`` by both, before any matching.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy_engine.conditions import ConditionError, evaluate
from policy_engine.decision import Decision, Reason, RuleRef
from policy_engine.diagnostics import did_you_mean
from policy_engine.patterns import HostPort, InvalidResourceError, normalize
from policy_engine.permissions import Permission
from policy_engine.table import DecisionTable, PinStatus, PluginTable, TableRule

MAX_RESOURCE_LENGTH = 4096
_PERMISSIONS = {p.value: p for p in Permission}


def reference_decide(
    table: DecisionTable,
    plugin: str,
    action: str,
    resource: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> Decision:
    """Decide one request the way the engine did before its fast paths."""
    try:
        return _decide(table, plugin, action, resource, context)
    except Exception as exc:  # fail closed
        return Decision(False, Reason.ERROR, str(plugin), str(action),
                        None if resource is None else str(resource),
                        errors=(f"{type(exc).__name__}: {exc}",))


def _suggest_plugin(table: DecisionTable, name: str) -> str | None:
    candidates = tuple(n for n in table.plugins if n[:1] == name[:1])
    if len(candidates) > 500:
        candidates = tuple(c for c in candidates if abs(len(c) - len(name)) <= 2)[:500]
    return did_you_mean(name, candidates)


def _decide(
    dt: DecisionTable, plugin: str, action: str, resource: str | None, context: Mapping[str, Any] | None
) -> Decision:
    table = dt.plugins.get(plugin)
    if table is None:
        hint = _suggest_plugin(dt, plugin)
        return Decision(False, Reason.UNKNOWN_PLUGIN, plugin, action, resource,
                        suggestions=(hint,) if hint else ())
    permission = _PERMISSIONS.get(action)
    if permission is None:
        hint = did_you_mean(action, _PERMISSIONS)
        return Decision(False, Reason.UNKNOWN_ACTION, plugin, action, resource,
                        suggestions=(hint,) if hint else ())
    if not table.enabled:
        return Decision(False, Reason.PLUGIN_DISABLED, plugin, action, resource)
    if table.pin is PinStatus.MISMATCH:
        return Decision(False, Reason.UNTRUSTED, plugin, action, resource,
                        detail=f"the plugin's content digest `{table.digest}` does not match the policy's pin")
    normalised: str | HostPort | None = None
    if resource is not None:
        if len(resource) > MAX_RESOURCE_LENGTH:
            return Decision(False, Reason.RESOURCE_TOO_LONG, plugin, action, resource)
        try:
            normalised = normalize(permission.kind, resource, base_dir=table.plugin_dir)
        except (InvalidResourceError, TypeError, ValueError) as exc:
            return Decision(False, Reason.INVALID_RESOURCE, plugin, action, str(resource), detail=str(exc))
        resource = normalised if isinstance(normalised, str) else str(normalised)
    entry = table.entries.get(permission)
    if entry is None:
        return Decision(False, Reason.NOT_DECLARED, plugin, action, resource)
    errors: list[str] = []
    blocking: list[RuleRef] = []
    for rule in entry.denies:
        if _matches(rule, normalised) and _deny_applies(rule, table, context, errors):
            blocking.append(rule.ref)
    if blocking:
        return Decision(False, Reason.DENIED_BY_RULE, plugin, action, resource, tuple(blocking), tuple(errors))
    declared = entry.declared and (
        entry.declared_patterns is None
        or (normalised is not None and any(p.matches(normalised) for p in entry.declared_patterns))
    )
    if not declared:
        would = tuple(r.ref for r in entry.allows
                      if r.when is None and r.unless is None and _matches(r, normalised))
        return Decision(False, Reason.NOT_DECLARED, plugin, action, resource, would, tuple(errors))
    granting = [r.ref for r in entry.allows if _matches(r, normalised) and _allow_applies(r, table, context, errors)]
    if granting:
        return Decision(True, Reason.ALLOWED, plugin, action, resource, tuple(granting), tuple(errors))
    return Decision(False, Reason.NO_MATCHING_ALLOW, plugin, action, resource, (), tuple(errors))


def _matches(rule: TableRule, resource: str | HostPort | None) -> bool:
    if rule.patterns is None:
        return True
    if resource is None:
        return False
    return any(p.matches(resource) for p in rule.patterns)


def _holds(rule: TableRule, table: PluginTable, context: Mapping[str, Any] | None) -> bool:
    if rule.when is not None and not evaluate(rule.when, table.attributes, context):
        return False
    return not (rule.unless is not None and evaluate(rule.unless, table.attributes, context))


def _deny_applies(rule: TableRule, table: PluginTable, context: Mapping[str, Any] | None, errors: list[str]) -> bool:
    if rule.error is not None:
        errors.append(f"{rule.ref.location}: {rule.error} (a deny rule that cannot be evaluated applies)")
        return True
    try:
        return _holds(rule, table, context)
    except ConditionError as exc:
        errors.append(f"{rule.ref.location}: {exc} (a deny rule that cannot be evaluated applies)")
        return True


def _allow_applies(rule: TableRule, table: PluginTable, context: Mapping[str, Any] | None, errors: list[str]) -> bool:
    try:
        return _holds(rule, table, context)
    except ConditionError as exc:
        errors.append(f"{rule.ref.location}: {exc} (an allow rule that cannot be evaluated does not apply)")
        return False
