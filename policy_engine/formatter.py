"""The canonical layout of ``.policy`` files (``policy-engine fmt``).

Canonical means: the ``policy`` header first, then the ``defaults`` blocks, then every other
statement in source order; one statement per line, blocks with one setting per line
indented by four spaces; one space around operators, ``, `` between list items; strings
re-quoted with the fewest escapes (only ``\\``, ``"`` and a newline are escaped).

Comments stay with what they describe: a comment on the line of a statement (after it)
trails that statement, any other comment leads the statement that follows it, and comments
after the last statement stay at the end. Blank lines between statements are kept as
groups (at most one blank line); blocks are always set off by a blank line.

Formatting is idempotent and never changes meaning: :func:`format_policy` parses its own
output again and refuses (with :class:`FormatError`) to return text whose syntax tree
differs from the input's in anything but positions.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import nodes
from .errors import PolicyEngineError
from .parser import parse_policy

__all__ = [
    "FormatError",
    "format_condition",
    "format_policy",
    "format_rule",
    "format_setting",
    "format_statement",
    "quote",
    "tree_shape",
]

INDENT = "    "


class FormatError(PolicyEngineError):
    """The formatter would have changed a policy's meaning (a bug); nothing was written."""


# Rendering nodes ----------------------------------------------------------------------------


def quote(text: str) -> str:
    """``text`` as a policy string literal with the fewest escapes."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    # repr is the shortest spelling that reads back as the same float; the grammar wants
    # plain digits, so spell exponents out.
    return format(Decimal(repr(value)), "f")


def _literal(literal: nodes.Literal) -> str:
    value = literal.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    return _number(float(value))


def _operand(operand: nodes.Operand) -> str:
    if isinstance(operand, nodes.Attribute):
        return operand.text
    return _literal(operand)


# Binding strength: or < and < not < a comparison (atomic).
_OR, _AND, _NOT, _ATOM = range(4)


def _strength(condition: nodes.Condition) -> int:
    if isinstance(condition, nodes.Or):
        return _OR
    if isinstance(condition, nodes.And):
        return _AND
    if isinstance(condition, nodes.Not):
        return _NOT
    return _ATOM


def _wrapped(condition: nodes.Condition, at_least: int) -> str:
    text = format_condition(condition)
    return f"({text})" if _strength(condition) < at_least else text


def format_condition(condition: nodes.Condition) -> str:
    """A condition in canonical spelling, with only the parentheses its structure needs."""
    if isinstance(condition, nodes.Or):
        # `or` and `and` associate to the left: a right operand of the same kind needs parentheses.
        return f"{_wrapped(condition.left, _OR)} or {_wrapped(condition.right, _AND)}"
    if isinstance(condition, nodes.And):
        return f"{_wrapped(condition.left, _AND)} and {_wrapped(condition.right, _NOT)}"
    if isinstance(condition, nodes.Not):
        return f"not {_wrapped(condition.operand, _NOT)}"
    if isinstance(condition, nodes.Compare):
        return f"{_operand(condition.left)} {condition.op} {_operand(condition.right)}"
    if isinstance(condition, nodes.In):
        items = ", ".join(_literal(v) for v in condition.values)
        keyword = "not in" if condition.negated else "in"
        return f"{_operand(condition.operand)} {keyword} [{items}]"
    if isinstance(condition, nodes.Matches):
        return f"{_operand(condition.operand)} matches {quote(condition.pattern)}"
    return _operand(condition.operand)


def format_rule(rule: nodes.Rule) -> str:
    """A rule on one line."""
    who = "*" if rule.plugins is None else ", ".join(quote(p) for p in rule.plugins)
    text = f"{rule.effect.value} plugin {who} to {', '.join(a.text for a in rule.actions)}"
    if rule.patterns is not None:
        text += " on " + ", ".join(quote(p.text) for p in rule.patterns)
    if rule.when is not None:
        text += " when " + format_condition(rule.when)
    if rule.unless is not None:
        text += " unless " + format_condition(rule.unless)
    return text


def format_setting(setting: nodes.Setting) -> str:
    """One setting of a ``defaults`` or ``plugin`` block."""
    if isinstance(setting, nodes.TimeoutSetting):
        text = f"timeout {setting.phase} {setting.value.text}"
        return text + (f" max {setting.maximum.text}" if setting.maximum else "")
    if isinstance(setting, nodes.LimitSetting):
        text = f"limit {setting.resource} {setting.value.text}"
        text += f" warn {setting.warn.text}" if setting.warn else ""
        return text + (f" max {setting.maximum.text}" if setting.maximum else "")
    if isinstance(setting, nodes.ViolationSetting):
        return f"on violation {setting.action}"
    if isinstance(setting, nodes.AcceptSetting):
        return "accept " + ", ".join(setting.names)
    return f"isolation {setting.mode}" + (" allow degraded" if setting.allow_degraded else "")


def format_statement(statement: nodes.Statement) -> str:
    """A statement; a block's opening line only (``defaults {``), its settings are separate."""
    if isinstance(statement, nodes.Header):
        version = "" if statement.version is None else f" version {statement.version}"
        return f"policy {quote(statement.name)}{version}"
    if isinstance(statement, nodes.SettingsBlock):
        return "defaults {" if statement.plugin is None else f"plugin {quote(statement.plugin)} {{"
    if isinstance(statement, nodes.Trust):
        return f"trust plugin {quote(statement.plugin)} {statement.algorithm} {quote(statement.digest)}"
    return format_rule(statement)


# Comments and blank lines -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """A comment of the output; ``blank`` asks for a blank line before it, ``line`` is where
    it was in the source."""

    text: str
    blank: bool
    line: int


@dataclass(frozen=True, slots=True)
class _Item:
    """A statement or setting with the comments that travel with it."""

    node: nodes.Statement | nodes.Setting
    leading: tuple[_Line, ...]
    blank: bool  # a blank line between the last leading comment (or what came before) and it
    trailing: str | None
    # Blocks only: a comment on the `{` line, the settings, comments before `}`.
    open_comment: str | None = None
    children: tuple[_Item, ...] = ()
    dangling: tuple[_Line, ...] = ()


def _has_blank(lines: Sequence[str], after: int, before: int) -> bool:
    """Whether a blank line lies strictly between 1-based lines ``after`` and ``before``."""
    return any(not lines[n - 1].strip() for n in range(max(after + 1, 1), min(before, len(lines) + 1)))


def _group(
    members: Sequence[nodes.Statement | nodes.Setting],
    comments: Sequence[nodes.Comment],
    lines: Sequence[str],
    start: int,
) -> tuple[list[_Item], tuple[_Line, ...]]:
    """Attach ``comments`` (sorted) to ``members`` (the statements of a file or the settings
    of a block, in source order).

    ``start`` is the last line before the first member could begin (0 for a file, the
    ``{`` line for a block). Returns the items and the comments after the last member.
    """
    ends = [m.span.end_line or m.span.line for m in members]
    leading: list[list[_Line]] = [[] for _ in members]
    inner: list[list[_Line]] = [[] for _ in members]
    trailing: dict[int, str] = {}
    in_block: list[list[nodes.Comment]] = [[] for _ in members]
    pending: list[nodes.Comment] = []

    def take_pending(previous: int) -> list[_Line]:
        out = []
        for comment in pending:
            out.append(_Line(comment.text.rstrip(), _has_blank(lines, previous, comment.span.line),
                             comment.span.line))
            previous = comment.span.line
        pending.clear()
        return out

    started = 0  # members that start on or before the current comment's line
    for comment in comments:
        line = comment.span.line
        while started < len(members) and members[started].span.line <= line:
            if pending:
                leading[started] = take_pending(ends[started - 1] if started else start)
            started += 1
        # Statements do not nest, so only the last one begun can contain this line.
        last = started - 1
        if last < 0 or not members[last].span.line <= line <= ends[last]:
            pending.append(comment)
        elif line == ends[last]:
            trailing[last] = comment.text.rstrip()
        elif isinstance(members[last], nodes.SettingsBlock):
            in_block[last].append(comment)
        else:  # inside a statement that spans lines: it moves in front of the statement
            inner[last].append(_Line(comment.text.rstrip(), False, line))
    while started < len(members):
        if pending:
            leading[started] = take_pending(ends[started - 1] if started else start)
        started += 1
    dangling = tuple(take_pending(ends[-1] if members else start))

    items: list[_Item] = []
    for index, member in enumerate(members):
        previous = leading[index][-1].line if leading[index] else (ends[index - 1] if index else start)
        blank = _has_blank(lines, previous, member.span.line) and not inner[index]
        open_comment: str | None = None
        children: tuple[_Item, ...] = ()
        block_dangling: tuple[_Line, ...] = ()
        if isinstance(member, nodes.SettingsBlock):
            first = member.settings[0].span.line if member.settings else ends[index]
            own = in_block[index]
            opening = [c for c in own if c.span.line == member.span.line < first]
            if opening:
                open_comment = opening[0].text.rstrip()
            grouped, block_dangling = _group(
                member.settings, [c for c in own if c not in opening], lines, member.span.line
            )
            children = tuple(grouped)
        items.append(_Item(member, (*leading[index], *inner[index]), blank, trailing.get(index),
                           open_comment, children, block_dangling))
    return items, dangling


# Output -------------------------------------------------------------------------------------


class _Writer:
    """Output lines; no blank line at the start of the file or of a block, never two."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fresh = True

    def blank(self) -> None:
        if not self.fresh and self.lines[-1] != "":
            self.lines.append("")

    def line(self, text: str, *, opens: bool = False) -> None:
        self.lines.append(text)
        self.fresh = opens

    def comments(self, comments: Sequence[_Line], indent: str) -> None:
        for comment in comments:
            if comment.blank:
                self.blank()
            self.line(indent + comment.text)


_SETTINGS = (nodes.TimeoutSetting, nodes.LimitSetting, nodes.ViolationSetting, nodes.IsolationSetting,
             nodes.AcceptSetting)


def _emit(out: _Writer, item: _Item, indent: str) -> None:
    out.comments(item.leading, indent)
    if item.blank:
        out.blank()
    node = item.node
    suffix = f"  {item.trailing}" if item.trailing else ""
    if isinstance(node, _SETTINGS):
        out.line(indent + format_setting(node) + suffix)
    elif not isinstance(node, nodes.SettingsBlock):
        out.line(indent + format_statement(node) + suffix)
    elif not item.children and not item.dangling and item.open_comment is None:
        out.line(f"{indent}{format_statement(node)}}}{suffix}")
    else:
        opening = f"  {item.open_comment}" if item.open_comment else ""
        out.line(indent + format_statement(node) + opening, opens=True)
        for child in item.children:
            _emit(out, child, indent + INDENT)
        out.comments(item.dangling, indent + INDENT)
        out.line(f"{indent}}}{suffix}")


def _canonical_order(items: Sequence[_Item]) -> list[_Item]:
    headers = [i for i in items if isinstance(i.node, nodes.Header)]
    defaults = [i for i in items if isinstance(i.node, nodes.SettingsBlock) and i.node.plugin is None]
    moved = {id(i) for i in (*headers, *defaults)}
    rest = [i for i in items if id(i) not in moved]
    return [*headers, *defaults, *rest]


def _render(policy: nodes.PolicyFile) -> str:
    lines = policy.source.split("\n")
    comments = sorted(policy.comments, key=lambda c: (c.span.line, c.span.column))
    items, dangling = _group(policy.statements, comments, lines, 0)
    out = _Writer()
    previous: _Item | None = None
    for item in _canonical_order(items):
        # Blocks are set off by blank lines, and so is the header from what follows it.
        if previous is not None and (
            isinstance(item.node, nodes.SettingsBlock)
            or isinstance(previous.node, nodes.SettingsBlock)
            or (isinstance(previous.node, nodes.Header) and not isinstance(item.node, nodes.Header))
        ):
            out.blank()
        _emit(out, item, "")
        previous = item
    out.comments(dangling, "")
    return "\n".join(out.lines) + "\n" if out.lines else ""


# Meaning ------------------------------------------------------------------------------------

# Fields that record where something was written, or its source text, not what it means.
_POSITION_FIELDS = frozenset({"span", "plugin_spans", "digest_span", "name_spans"})


def tree_shape(node: Any) -> Any:
    """A syntax tree without positions and source texts: equal shapes mean equal meaning."""
    if isinstance(node, (tuple, list)):
        return tuple(tree_shape(x) for x in node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        skip = _POSITION_FIELDS | ({"text"} if isinstance(node, nodes.Rule) else set())
        return (type(node).__name__, *(
            (f.name, tree_shape(getattr(node, f.name)))
            for f in dataclasses.fields(node) if f.name not in skip
        ))
    if isinstance(node, float) and not isinstance(node, bool):
        return ("number", node)
    return node


def _statement_shapes(policy: nodes.PolicyFile) -> tuple[Any, ...]:
    items = [_Item(s, (), False, None) for s in policy.statements]
    return tuple(tree_shape(i.node) for i in _canonical_order(items))


def format_policy(text: str, file: str = "<policy>") -> str:
    """The canonical layout of one ``.policy`` file's text.

    Raises :class:`~policy_engine.errors.PolicySyntaxError` when the text does not parse,
    and :class:`FormatError` if the result would not mean exactly what ``text`` means.
    """
    policy = parse_policy(text, file)
    formatted = _render(policy)
    again = parse_policy(formatted, file)
    same_comments = Counter(c.text.rstrip() for c in policy.comments) == Counter(
        c.text.rstrip() for c in again.comments
    )
    if _statement_shapes(policy) != tuple(tree_shape(s) for s in again.statements) or not same_comments:
        raise FormatError(f"formatting `{file}` would change its meaning; the file was left as it is")
    return formatted
