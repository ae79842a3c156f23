"""Evaluating ``when`` / ``unless`` conditions.

A condition that cannot be evaluated (a missing attribute, comparing a string with a
number, ordering booleans) raises :class:`ConditionError`; the table turns that into "does
not match" for an allow rule and "matches" for a deny rule, so errors fail closed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from . import nodes
from .patterns import glob_matches

#: Plugin attributes a condition may read (``plugin.<name>``).
PLUGIN_ATTRIBUTES: tuple[str, ...] = (
    "name",
    "version",
    "type",
    "trusted",
    "enabled",
    "description",
    "entry_point",
    "author",
    "tags",
)


class ConditionError(Exception):
    """A condition could not be evaluated."""


def references_context(condition: nodes.Condition | None) -> bool:
    """True when the condition reads ``context.*`` (so it must be evaluated per request)."""
    return any(a.root == "context" for a in attributes(condition))


def attributes(condition: nodes.Condition | None) -> list[nodes.Attribute]:
    """Every attribute a condition reads, left to right."""
    found: list[nodes.Attribute] = []
    if condition is None:
        return found
    # A stack, not a recursive closure: a closure that calls itself is a reference cycle
    # per call, garbage for the cycle collector (which loading pauses).
    stack: list[object] = [condition]
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.Attribute):
            found.append(node)
        elif isinstance(node, (nodes.And, nodes.Or, nodes.Compare)):
            stack.append(node.right)
            stack.append(node.left)
        elif isinstance(node, (nodes.Not, nodes.In, nodes.Matches, nodes.Truthy)):
            stack.append(node.operand)
    return found


def evaluate(
    condition: nodes.Condition,
    plugin: Mapping[str, Any],
    context: Mapping[str, Any] | None,
) -> bool:
    """Evaluate ``condition``; raises :class:`ConditionError` when it cannot be evaluated."""
    if isinstance(condition, nodes.And):
        return evaluate(condition.left, plugin, context) and evaluate(condition.right, plugin, context)
    if isinstance(condition, nodes.Or):
        # An error on the left must not be hidden by a true right side: evaluate both.
        left_error: ConditionError | None = None
        try:
            left = evaluate(condition.left, plugin, context)
        except ConditionError as exc:
            left_error, left = exc, False
        right = evaluate(condition.right, plugin, context)
        if left_error is not None:
            raise left_error
        return left or right
    if isinstance(condition, nodes.Not):
        return not evaluate(condition.operand, plugin, context)
    if isinstance(condition, nodes.Truthy):
        value = _value(condition.operand, plugin, context)
        if not isinstance(value, bool):
            raise ConditionError(f"`{_text(condition.operand)}` is not a boolean")
        return value
    if isinstance(condition, nodes.Matches):
        value = _value(condition.operand, plugin, context)
        if not isinstance(value, str):
            raise ConditionError(f"`{_text(condition.operand)}` is not a string")
        return glob_matches(condition.pattern, value)
    if isinstance(condition, nodes.In):
        value = _value(condition.operand, plugin, context)
        found = any(_equal(value, item.value, condition.operand) for item in condition.values)
        return found != condition.negated
    if isinstance(condition, nodes.Compare):
        return _compare(condition, plugin, context)
    raise ConditionError(f"unknown condition {condition!r}")  # pragma: no cover


def _text(operand: nodes.Operand) -> str:
    return operand.text if isinstance(operand, nodes.Attribute) else repr(operand.value)


def _value(operand: nodes.Operand, plugin: Mapping[str, Any], context: Mapping[str, Any] | None) -> Any:
    if isinstance(operand, nodes.Literal):
        return operand.value
    source: Any = plugin if operand.root == "plugin" else (context or {})
    for key in operand.path:
        if not isinstance(source, Mapping) or key not in source:
            raise ConditionError(f"`{operand.text}` is not set")
        source = source[key]
    if source is None:
        raise ConditionError(f"`{operand.text}` is not set")
    if isinstance(source, int) and not isinstance(source, bool):
        return float(source)
    return source


def _is_version_operand(operand: nodes.Operand) -> bool:
    return isinstance(operand, nodes.Attribute) and operand.root == "plugin" and operand.path == ("version",)


def _equal(left: Any, right: Any, operand: nodes.Operand) -> bool:
    if _is_version_operand(operand) and isinstance(left, str) and isinstance(right, str):
        return version_key(left) == version_key(right)
    if type(left) is not type(right):
        if isinstance(left, bool) or isinstance(right, bool) or isinstance(left, str) != isinstance(right, str):
            raise ConditionError(f"cannot compare `{left!r}` with `{right!r}`")
    return bool(left == right)


def _compare(condition: nodes.Compare, plugin: Mapping[str, Any], context: Mapping[str, Any] | None) -> bool:
    left = _value(condition.left, plugin, context)
    right = _value(condition.right, plugin, context)
    op = condition.op
    if _is_version_operand(condition.left) or _is_version_operand(condition.right):
        if not (isinstance(left, str) and isinstance(right, str)):
            raise ConditionError("versions are compared with quoted versions such as `\"2.0\"`")
        left, right = version_key(left), version_key(right)
    elif op in ("==", "!="):
        equal = _equal(left, right, condition.left)
        return equal if op == "==" else not equal
    elif isinstance(left, bool) or isinstance(right, bool):
        raise ConditionError(f"`{op}` does not order booleans")
    elif isinstance(left, str) != isinstance(right, str):
        raise ConditionError(f"cannot compare `{left!r}` with `{right!r}`")
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def version_key(text: str) -> tuple[Any, ...]:
    """A sort key for semantic versions: ``2.0`` == ``2.0.0`` < ``2.1.0-rc1`` < ``2.1.0``."""
    match = _VERSION.match(text.strip())
    if match is None:
        raise ConditionError(f"`{text}` is not a version")
    numbers = [int(x) for x in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    pre = match.group(2)
    # A release sorts after all of its pre-releases.
    pre_key: tuple[Any, ...] = (1,) if pre is None else (0, *(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")
    ))
    return (tuple(numbers), pre_key)
