"""What ``Engine.decide`` returns: an answer that explains itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .nodes import Effect


class Reason(str, enum.Enum):
    """Why a decision came out the way it did."""

    ALLOWED = "allowed"
    DENIED_BY_RULE = "denied_by_rule"
    NO_MATCHING_ALLOW = "no_matching_allow"
    NOT_DECLARED = "not_declared"
    UNKNOWN_PLUGIN = "unknown_plugin"
    UNKNOWN_ACTION = "unknown_action"
    PLUGIN_DISABLED = "plugin_disabled"
    UNTRUSTED = "untrusted"
    INVALID_RESOURCE = "invalid_resource"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A policy rule as a decision cites it: where it is and what it says."""

    effect: Effect
    file: str
    line: int
    column: int
    text: str

    @property
    def location(self) -> str:
        """``file:line:col``."""
        return f"{self.file}:{self.line}:{self.column}"

    def __str__(self) -> str:
        return f"{self.location}: {self.text}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "effect": self.effect.value,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleRef:
        """The inverse of :meth:`to_dict`."""
        return cls(Effect(data["effect"]), str(data["file"]), int(data["line"]),
                   int(data["column"]), str(data["text"]))


@dataclass(frozen=True, slots=True)
class Decision:
    """An allow or a deny, with the reason, the rules that determined it and any errors.

    ``rules`` holds the determining rules: for an allow, the allow rules that granted it; for
    ``denied_by_rule``, the deny rules that blocked it; for ``not_declared``, the allow rules
    that would grant it once declared. ``suggestions`` says what would change a denial.
    ``bool(decision)`` is ``decision.allowed``.
    """

    allowed: bool
    reason: Reason
    plugin: str
    action: str
    resource: str | None = None
    rules: tuple[RuleRef, ...] = ()
    errors: tuple[str, ...] = ()
    detail: str = ""
    suggestions: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.allowed

    def explain(self) -> str:
        """A short text saying why, and for a denial what would change the answer."""
        target = f"`{self.action}`" + (f" on `{self.resource}`" if self.resource is not None else "")
        if self.allowed:
            lines = [f"allowed: plugin `{self.plugin}` may {target}"]
            lines += [f"  granted by {rule}" for rule in self.rules]
        else:
            lines = [f"denied ({self.reason.value}): plugin `{self.plugin}` may not {target}"]
            if self.detail:
                lines.append(f"  {self.detail}")
            verb = "blocked by" if self.reason is Reason.DENIED_BY_RULE else "would be granted by"
            lines += [f"  {verb} {rule}" for rule in self.rules]
        lines += [f"  error: {error}" for error in self.errors]
        lines += [f"  to change this: {s}" for s in self.suggestions]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (used by the decision log and ``--json`` output)."""
        return {
            "allowed": self.allowed,
            "reason": self.reason.value,
            "plugin": self.plugin,
            "action": self.action,
            "resource": self.resource,
            "rules": [r.to_dict() for r in self.rules],
            "errors": list(self.errors),
            "detail": self.detail,
            "suggestions": list(self.suggestions),
        }


def deny(
    reason: Reason,
    plugin: str,
    action: str,
    resource: str | None,
    detail: str = "",
    *,
    rules: tuple[RuleRef, ...] = (),
    errors: tuple[str, ...] = (),
    suggestions: tuple[str, ...] = (),
) -> Decision:
    """Build a denial."""
    return Decision(False, reason, plugin, action, resource, rules, errors, detail, suggestions)
