"""What ``Engine.decide`` returns: an answer that explains itself."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from .nodes import Effect

#: Resources longer than this (in characters) are denied as ``resource_too_long`` before any
#: matching, so the cost of a decision has a bound whatever the caller sends.
MAX_RESOURCE_LENGTH = 4096


class Reason(str, enum.Enum):
    """Why a decision came out the way it did."""

    ALLOWED = "allowed"
    #: Allowed without a grant: on the implicit-read list (:mod:`policy_engine.implicit`).
    IMPLICIT = "implicit"
    DENIED_BY_RULE = "denied_by_rule"
    NO_MATCHING_ALLOW = "no_matching_allow"
    NOT_DECLARED = "not_declared"
    UNKNOWN_PLUGIN = "unknown_plugin"
    UNKNOWN_ACTION = "unknown_action"
    PLUGIN_DISABLED = "plugin_disabled"
    UNTRUSTED = "untrusted"
    INVALID_RESOURCE = "invalid_resource"
    RESOURCE_TOO_LONG = "resource_too_long"
    #: Refused because the plugin spent a budget the host sets (e.g. its DNS lookups); the
    #: policy would allow the request itself.
    OVER_BUDGET = "over_budget"
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
    that would grant it once declared. ``suggestions`` says what would change a denial, as
    far as it was known when deciding; a "did you mean" that needs a search (an unknown
    plugin's name) is only computed when :meth:`hints`, :meth:`explain` or :meth:`to_dict`
    asks, so that deciding costs the same whoever asks. ``bool(decision)`` is
    ``decision.allowed``.
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
    #: Computes further suggestions on demand (not part of equality).
    lazy_suggestions: Callable[[], tuple[str, ...]] | None = field(default=None, compare=False, repr=False)
    #: The revision of the engine's policy and plugins that decided (see ``Engine.revision``).
    revision: int = field(default=0, compare=False)

    def __bool__(self) -> bool:
        return self.allowed

    def hints(self) -> tuple[str, ...]:
        """What would change a denial: the manifest line to add, the rule that would grant
        it, or the deny rule that blocks it (empty for an allow)."""
        if self.allowed:
            return ()
        reason, plugin, action, resource = self.reason, self.plugin, self.action, self.resource
        entry = action if resource is None else f"{action} {resource}"
        on = "" if resource is None else f' on "{resource}"'
        declare = f"add `{entry}` to the `permissions` of the manifest of `{plugin}`"
        grant = f'a policy rule such as `allow plugin "{plugin}" to {action}{on}` would grant it'
        standard: tuple[str, ...] = {
            Reason.NOT_DECLARED: (declare,) if self.rules else (declare, grant),
            Reason.NO_MATCHING_ALLOW: (grant,),
            Reason.DENIED_BY_RULE: ("a deny rule wins over every allow: narrow or remove the rule above",),
            Reason.PLUGIN_DISABLED: ("set `enabled: true` in its manifest",),
            Reason.UNTRUSTED: ("review the plugin's changes, then update its `trust` line",),
            Reason.UNKNOWN_PLUGIN: ("register the plugin's manifest with the engine",),
            Reason.OVER_BUDGET: ("the budget refills over time: retry later, or raise the "
                                 "host's limit for this plugin",),
        }.get(reason, ())
        lazy = self.lazy_suggestions() if self.lazy_suggestions is not None else ()
        return (*self.suggestions, *lazy, *standard)

    def describe(self) -> str:
        """One line saying what the reason means for this request."""
        if self.detail:
            return self.detail
        scope = "" if self.resource is None else f" for `{self.resource}`"
        return {
            Reason.ALLOWED: "",
            Reason.IMPLICIT: "every plugin may read it (the Python runtime, the plugin's code "
                             "or read-only system data)",
            Reason.NOT_DECLARED: f"the manifest of `{self.plugin}` does not declare `{self.action}`{scope}",
            Reason.NO_MATCHING_ALLOW: "no allow rule grants it",
            Reason.DENIED_BY_RULE: "a deny rule matches",
            Reason.PLUGIN_DISABLED: "the plugin is disabled",
            Reason.UNTRUSTED: "the plugin's content does not match the policy's pin",
            Reason.UNKNOWN_PLUGIN: f"no manifest for plugin `{self.plugin}` is registered",
            Reason.UNKNOWN_ACTION: f"`{self.action}` is not a permission",
            Reason.INVALID_RESOURCE: "the resource is not valid",
            Reason.RESOURCE_TOO_LONG: f"the resource is longer than {MAX_RESOURCE_LENGTH} characters,"
                                      " so it is denied without being matched",
            Reason.OVER_BUDGET: "the plugin is over a budget the host sets for it",
            Reason.ERROR: "deciding failed, so the answer is deny",
        }[self.reason]

    def explain(self) -> str:
        """A short text saying why, and for a denial what would change the answer."""
        target = f"`{self.action}`" + (f" on `{self.resource}`" if self.resource is not None else "")
        if self.allowed:
            lines = [f"allowed: plugin `{self.plugin}` may {target}"]
            lines += [f"  granted by {rule}" for rule in self.rules]
            if self.reason is Reason.IMPLICIT:
                lines.append(f"  implicit: {self.describe()}")
        else:
            lines = [f"denied ({self.reason.value}): plugin `{self.plugin}` may not {target}"]
            lines.append(f"  {self.describe()}")
            verb = "blocked by" if self.reason is Reason.DENIED_BY_RULE else "would be granted by"
            lines += [f"  {verb} {rule}" for rule in self.rules]
        lines += [f"  error: {error}" for error in self.errors]
        lines += [f"  to change this: {s}" for s in self.hints()]
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
            "detail": self.describe(),
            "suggestions": list(self.hints()),
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
    revision: int = 0,
) -> Decision:
    """Build a denial."""
    return Decision(False, reason, plugin, action, resource, rules, errors, detail, suggestions,
                    revision=revision)


# A frozen dataclass's __init__ goes through object.__setattr__ once per field, which was a
# third of an uncached decision's cost. `_Unfrozen` has the same slots in the same order and
# no behaviour: a decision is built as one of those with plain (fast) slot stores, then
# becomes a `Decision` by assigning its class, which CPython allows only between classes of
# identical layout (checked below, at import). From then on it is an ordinary, frozen
# `Decision`: nothing else ever holds the `_Unfrozen` view of it.
_FIELDS = ("allowed", "reason", "plugin", "action", "resource", "rules", "errors", "detail", "suggestions",
           "lazy_suggestions", "revision")
if tuple(f.name for f in fields(Decision)) != _FIELDS or Decision.__slots__ != _FIELDS:  # pragma: no cover
    raise ImportError("Decision's fields and the fast constructor's slots differ")


class _Unfrozen:
    __slots__ = _FIELDS
    allowed: bool
    reason: Reason
    plugin: str
    action: str
    resource: str | None
    rules: tuple[RuleRef, ...]
    errors: tuple[str, ...]
    detail: str
    suggestions: tuple[str, ...]
    lazy_suggestions: Callable[[], tuple[str, ...]] | None
    revision: int


_new = object.__new__


def fast_decision(
    allowed: bool,
    reason: Reason,
    plugin: str,
    action: str,
    resource: str | None,
    rules: tuple[RuleRef, ...],
    errors: tuple[str, ...],
    revision: int,
) -> Decision:
    """``Decision(allowed, reason, plugin, action, resource, rules, errors, revision=revision)``,
    several times faster: the constructor of ``decide``'s hot path (all arguments positional)."""
    decision = _new(_Unfrozen)
    decision.allowed = allowed
    decision.reason = reason
    decision.plugin = plugin
    decision.action = action
    decision.resource = resource
    decision.rules = rules
    decision.errors = errors
    decision.detail = ""
    decision.suggestions = ()
    decision.lazy_suggestions = None
    decision.revision = revision
    decision.__class__ = Decision  # type: ignore[assignment]
    return decision  # type: ignore[return-value]


def make_decision(
    allowed: bool,
    reason: Reason,
    plugin: str,
    action: str,
    resource: str | None,
    rules: tuple[RuleRef, ...] = (),
    errors: tuple[str, ...] = (),
    detail: str = "",
    suggestions: tuple[str, ...] = (),
    revision: int = 0,
    lazy_suggestions: Callable[[], tuple[str, ...]] | None = None,
) -> Decision:
    """Build a :class:`Decision` equal to ``Decision(...)`` with the same arguments, faster."""
    decision = _new(_Unfrozen)
    decision.allowed = allowed
    decision.reason = reason
    decision.plugin = plugin
    decision.action = action
    decision.resource = resource
    decision.rules = rules
    decision.errors = errors
    decision.detail = detail
    decision.suggestions = suggestions
    decision.lazy_suggestions = lazy_suggestions
    decision.revision = revision
    decision.__class__ = Decision  # type: ignore[assignment]
    return decision  # type: ignore[return-value]


# The layout check, once: a Python whose objects could not change class this way fails here,
# at import, never on a request.
_probe = make_decision(True, Reason.ALLOWED, "p", "a", "r", revision=1)
if type(_probe) is not Decision or _probe != Decision(True, Reason.ALLOWED, "p", "a", "r"):  # pragma: no cover
    raise ImportError("the fast Decision constructor does not build a Decision")
del _probe
