"""The syntax tree of the policy language: frozen dataclasses, each with its span.

The parser produces these from Lark's parse tree; the compiler reads only these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .diagnostics import Span


class Effect(str, enum.Enum):
    """What a rule does when it matches."""

    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Header:
    """``policy "name" version N``."""

    name: str
    version: int | None
    span: Span


@dataclass(frozen=True, slots=True)
class Quantity:
    """A number with its unit as written (``30s``, ``500MB``, ``80%``), checked by the compiler."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class TimeoutSetting:
    """``timeout <phase> <duration> [max <duration>]``."""

    phase: str
    value: Quantity
    maximum: Quantity | None
    span: Span


@dataclass(frozen=True, slots=True)
class LimitSetting:
    """``limit <resource> <quantity> [warn <percent>] [max <quantity>]``."""

    resource: str
    value: Quantity
    warn: Quantity | None
    maximum: Quantity | None
    span: Span


@dataclass(frozen=True, slots=True)
class ViolationSetting:
    """``on violation terminate|warn``."""

    action: str
    span: Span


@dataclass(frozen=True, slots=True)
class IsolationSetting:
    """``isolation process|inprocess [allow degraded]``."""

    mode: str
    allow_degraded: bool
    span: Span


@dataclass(frozen=True, slots=True)
class AcceptSetting:
    """``accept <risk>, ...``: the refusals (:mod:`policy_engine.risks`) the policy opts out of.

    ``names`` are as written, each with its span (``name_spans``).
    """

    names: tuple[str, ...]
    name_spans: tuple[Span, ...]
    span: Span


Setting = TimeoutSetting | LimitSetting | ViolationSetting | IsolationSetting | AcceptSetting


@dataclass(frozen=True, slots=True)
class SettingsBlock:
    """``defaults { ... }`` (plugin None) or ``plugin "<name>" { ... }``."""

    plugin: str | None
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ActionRef:
    """An action as written in a rule or manifest: ``file:read``, ``file:*`` or ``*``."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class PatternRef:
    """A resource pattern as written (quotes removed, templates not yet expanded)."""

    text: str
    span: Span


# Conditions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attribute:
    """``plugin.<name>`` or ``context.<key>[.<key>...]``."""

    root: str
    path: tuple[str, ...]
    span: Span

    @property
    def text(self) -> str:
        """The attribute as written."""
        return ".".join((self.root, *self.path))


@dataclass(frozen=True, slots=True)
class Literal:
    """A string, number or boolean literal."""

    value: str | float | bool
    span: Span


Operand = Attribute | Literal


@dataclass(frozen=True, slots=True)
class Compare:
    """``left <op> right`` with one of ``== != < <= > >=``."""

    op: str
    left: Operand
    right: Operand
    span: Span


@dataclass(frozen=True, slots=True)
class In:
    """``operand [not] in [ ... ]``."""

    operand: Operand
    values: tuple[Literal, ...]
    negated: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Matches:
    """``operand matches "<glob>"``."""

    operand: Operand
    pattern: str
    span: Span


@dataclass(frozen=True, slots=True)
class Truthy:
    """A bare operand used as a condition (``plugin.trusted``)."""

    operand: Operand
    span: Span


@dataclass(frozen=True, slots=True)
class And:
    """``left and right``."""

    left: Condition
    right: Condition
    span: Span


@dataclass(frozen=True, slots=True)
class Or:
    """``left or right``."""

    left: Condition
    right: Condition
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    """``not operand``."""

    operand: Condition
    span: Span


Condition = Compare | In | Matches | Truthy | And | Or | Not


@dataclass(frozen=True, slots=True)
class Rule:
    """``allow|deny plugin <selector> to <actions> [on <patterns>] [when c] [unless c]``.

    ``plugins`` is None for ``*``; ``patterns`` is None when there is no ``on`` (any resource).
    ``text`` is the rule's source text, kept for explanations.
    """

    effect: Effect
    plugins: tuple[str, ...] | None
    actions: tuple[ActionRef, ...]
    patterns: tuple[PatternRef, ...] | None
    when: Condition | None
    unless: Condition | None
    span: Span
    text: str
    plugin_spans: tuple[Span, ...] = ()


@dataclass(frozen=True, slots=True)
class Trust:
    """``trust plugin "<name>" sha256-v2 "<hex>"``; the compiler checks the algorithm."""

    plugin: str
    algorithm: str
    digest: str
    span: Span
    digest_span: Span


Statement = Header | SettingsBlock | Rule | Trust


@dataclass(frozen=True, slots=True)
class Comment:
    """A ``#`` comment, kept so that the formatter and ``noqa`` can see it."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One parsed ``.policy`` file."""

    path: str
    source: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...]

    @property
    def header(self) -> Header | None:
        """The ``policy`` header, if any."""
        return next((s for s in self.statements if isinstance(s, Header)), None)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, in file order (order carries no meaning)."""
        return tuple(s for s in self.statements if isinstance(s, Rule))


@dataclass(frozen=True, slots=True)
class Grant:
    """A manifest permission entry: an action and its scopes (empty: any resource)."""

    action: ActionRef
    scopes: tuple[PatternRef, ...]
    span: Span
