"""Syntax trees to a :class:`PolicySet`: names, units, variables and patterns checked, every
problem of every file collected into one :class:`PolicyCompileError`.

The compiler is three small passes over the parsed files (rules, settings blocks, pins),
each adding diagnostics to the shared context and returning its own typed part of the
result (``tuple[CompiledRule, ...]``, :class:`Settings`, the pins). Rule order carries no meaning, so the
result does not depend on the order of files or of rules within them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from . import codes, nodes
from .conditions import PLUGIN_ATTRIBUTES, attributes
from .decision import RuleRef
from .diagnostics import Diagnostic, Span, did_you_mean, source_line
from .digest import ALGORITHM, DIGEST_PREFIX, OLD_ALGORITHM
from .errors import PolicyCompileError
from .nodes import Effect
from .patterns import Pattern, PatternError, compile_pattern, with_stand_ins
from .permissions import ACTION_SPELLINGS, Permission, ResourceKind, expand_action
from .risks import RISKS, risk_names
from .settings import (
    EMPTY_OVERLAY,
    LIMIT_RESOURCES,
    TIMEOUT_PHASES,
    Isolation,
    Overlay,
    SettingValue,
    Violation,
)
from .units import UnitError, parse_duration, parse_percent, parse_size

__all__ = ["CompiledPattern", "CompiledRule", "Pin", "PolicySet", "Settings", "compile_policy",
           "PLUGIN_VARIABLES"]

#: Template variables every pattern may use, filled in per plugin.
PLUGIN_VARIABLES = ("plugin", "plugin_dir")
_T = TypeVar("_T")

TEMPLATE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class CompiledPattern:
    """A rule's resource pattern: host variables filled in, per-plugin ones still open.

    ``kinds`` are the resource kinds the pattern is valid for; it applies only to those.
    """

    text: str
    source: str
    per_plugin: bool
    kinds: frozenset[ResourceKind]
    span: Span
    #: Without per-plugin variables, the pattern compiled for each of ``kinds`` (in their
    #: iteration order) while it was checked: every plugin table shares these instead of
    #: compiling the text again.
    compiled: tuple[Pattern, ...] | None = field(default=None, compare=False, repr=False)

    def instantiate(self, plugin: str, plugin_dir: str) -> str:
        """The pattern text for one plugin."""
        if not self.per_plugin:
            return self.text
        return self.text.replace("{plugin_dir}", plugin_dir).replace("{plugin}", plugin)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A checked rule. ``plugins`` None means every plugin; ``patterns`` None any resource."""

    ref: RuleRef
    effect: Effect
    plugins: frozenset[str] | None
    permissions: frozenset[Permission]
    patterns: tuple[CompiledPattern, ...] | None
    when: nodes.Condition | None
    unless: nodes.Condition | None
    node: nodes.Rule


@dataclass(frozen=True, slots=True)
class Pin:
    """``trust plugin "<name>" sha256-v2 "<hex>"``; ``digest`` is the digest's text,
    ``sha256-v2:<hex>``, as :func:`policy_engine.digest.plugin_digest` returns it."""

    plugin: str
    digest: str
    span: Span


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Everything the policy files say, checked and ready to build a decision table."""

    files: tuple[nodes.PolicyFile, ...]
    rules: tuple[CompiledRule, ...]
    defaults: Overlay
    plugin_settings: Mapping[str, Overlay]
    pins: Mapping[str, Pin]
    variables: Mapping[str, str]
    content_hash: str

    @property
    def names(self) -> frozenset[str]:
        """Every plugin name the policy mentions (rules, blocks, pins)."""
        named: set[str] = set(self.plugin_settings) | set(self.pins)
        for rule in self.rules:
            named |= rule.plugins or set()
        return frozenset(named)


#: A pattern text checked for a set of kinds: the kinds it is valid for (None: for none,
#: with the first error), whether it has per-plugin variables, what each valid kind compiled to.
_Checked = tuple["frozenset[ResourceKind] | None", bool, "tuple[Pattern, ...] | None", "PatternError | None"]


@dataclass
class _Context:
    files: Sequence[nodes.PolicyFile]
    variables: Mapping[str, str]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    # One compiled pattern per (kind, text) across the rules, as the tables share them.
    patterns: dict[tuple[ResourceKind, str], Pattern] = field(default_factory=dict)
    # Equal frozensets (a rule's plugins, its permissions, a pattern's kinds) as one object:
    # each costs at least 216 bytes, and tens of thousands of rules repeat a few dozen.
    frozen: dict[frozenset[Any], frozenset[Any]] = field(default_factory=dict)
    # What a rule's permissions are scoped to, per (shared) set of permissions.
    kinds: dict[frozenset[Permission], frozenset[ResourceKind]] = field(default_factory=dict)
    # The check of each (variable-filled) pattern text for a set of kinds, done once: tens of
    # thousands of rules repeat a shared directory, a host, a wildcard.
    checked: dict[tuple[str, frozenset[ResourceKind]], _Checked] = field(default_factory=dict)

    def shared(self, items: Iterable[_T]) -> frozenset[_T]:
        """``frozenset(items)``, the same object for equal sets within one compile."""
        value = frozenset(items)
        return self.frozen.setdefault(value, value)

    def error(self, message: str, span: Span, hint: str | None = None, *, code: str) -> None:
        self.diagnostics.append(
            Diagnostic(message, span, hint, code=code,
                       source_line=source_line(self.sources.get(span.file, ""), span.line))
        )


#: What :func:`compile_policy` compiled per file: ``id(file) -> (file, variables, rules)``.
RuleMemo = dict[int, tuple[nodes.PolicyFile, dict[str, str], tuple["CompiledRule", ...]]]


def compile_policy(
    files: Iterable[nodes.PolicyFile], variables: Mapping[str, str] | None = None,
    *, memo: RuleMemo | None = None,
) -> PolicySet:
    """Check parsed policy files and build a :class:`PolicySet`.

    ``variables`` are the host's template variables (``{data_dir}``, ``{home}``, ...).
    Raises :class:`PolicyCompileError` carrying every problem found. With ``memo`` (kept by
    the caller between compiles), the rules of a file that is the very object compiled last
    time, with the same variables, are taken from it instead of compiled again (a rule's
    compilation depends on nothing else); after a successful compile the memo holds this
    compile's files only.
    """
    ordered = tuple(sorted(files, key=lambda f: f.path))
    ctx = _Context(ordered, dict(variables or {}))
    ctx.sources = {f.path: f.source for f in ordered}
    fresh: RuleMemo = {}
    rules = _compile_rules(ctx, memo, fresh)
    settings = _compile_settings(ctx)
    pins = _compile_pins(ctx)
    if ctx.diagnostics:
        raise PolicyCompileError(sorted(ctx.diagnostics, key=_position))
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    digest = hashlib.sha256()
    for f in ordered:
        digest.update(f"{len(f.path)}:{f.path}{len(f.source)}:{f.source}".encode())
    for key in sorted(ctx.variables):
        digest.update(f"{key}={ctx.variables[key]}\0".encode())
    return PolicySet(
        files=ordered,
        rules=rules,
        defaults=settings.defaults,
        plugin_settings=settings.per_plugin,
        pins=pins,
        variables=MappingProxyType(dict(ctx.variables)),
        content_hash=digest.hexdigest(),
    )


def _position(d: Diagnostic) -> tuple[str, int, int]:
    span = d.span or Span("", 0, 0)
    return (span.file, span.line, span.column)


# Pass: rules ------------------------------------------------------------------------------


def _compile_rules(ctx: _Context, memo: RuleMemo | None = None,
                   fresh: RuleMemo | None = None) -> tuple[CompiledRule, ...]:
    rules: list[CompiledRule] = []
    for policy_file in ctx.files:
        known = memo.get(id(policy_file)) if memo is not None else None
        if known is not None and known[0] is policy_file and known[1] == ctx.variables:
            rules.extend(known[2])
            if fresh is not None:
                fresh[id(policy_file)] = known
            continue
        before = len(ctx.diagnostics)
        compiled_rules: list[CompiledRule] = []
        for rule in policy_file.rules:
            compiled = _compile_rule(ctx, rule)
            if compiled is not None:
                compiled_rules.append(compiled)
        rules.extend(compiled_rules)
        if fresh is not None and len(ctx.diagnostics) == before:
            fresh[id(policy_file)] = (policy_file, dict(ctx.variables), tuple(compiled_rules))
    return tuple(rules)


def _compile_rule(ctx: _Context, rule: nodes.Rule) -> CompiledRule | None:
    ok = True
    permissions: set[Permission] = set()
    for action in rule.actions:
        expanded = expand_action(action.text)
        if expanded is None:
            ctx.error(f"unknown permission `{action.text}`", action.span,
                      did_you_mean(action.text, ACTION_SPELLINGS), code=codes.UNKNOWN_PERMISSION)
            ok = False
        else:
            permissions |= expanded
    shared_permissions = ctx.shared(permissions)
    kinds = ctx.kinds.get(shared_permissions)
    if kinds is None:
        kinds = ctx.kinds[shared_permissions] = frozenset(p.kind for p in shared_permissions)
    patterns: tuple[CompiledPattern, ...] | None = None
    if rule.patterns is not None:
        compiled_patterns = []
        for pattern in rule.patterns:
            compiled = _compile_pattern(ctx, pattern, kinds)
            if compiled is None:
                ok = False
            else:
                compiled_patterns.append(compiled)
        patterns = tuple(compiled_patterns)
    if rule.when is not None or rule.unless is not None:
        for condition in (rule.when, rule.unless):
            ok = _check_condition(ctx, condition) and ok
    if not ok:
        return None
    span = rule.span
    return CompiledRule(
        RuleRef(rule.effect, span.file, span.line, span.column, rule.text),
        rule.effect,
        None if rule.plugins is None else ctx.shared(rule.plugins),
        shared_permissions,
        patterns,
        rule.when,
        rule.unless,
        rule,
    )


def expand_variables(
    text: str, variables: Mapping[str, str]
) -> tuple[str, list[str]]:
    """Fill host variables into a pattern; return the text and the unknown variable names.

    ``{plugin}`` and ``{plugin_dir}`` stay for per-plugin filling.
    """
    unknown: list[str] = []
    if "{" not in text:
        return text, unknown

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in PLUGIN_VARIABLES:
            return match.group(0)
        if name in variables:
            return variables[name]
        unknown.append(name)
        return match.group(0)

    return TEMPLATE.sub(fill, text), unknown


def check_pattern(text: str, kinds: Iterable[ResourceKind]) -> tuple[frozenset[ResourceKind], PatternError | None]:
    """The kinds a (variable-filled) pattern is valid for, and the first error otherwise."""
    valid, first_error = checked_pattern(text, kinds)
    return frozenset(valid), first_error


def checked_pattern(
    text: str, kinds: Iterable[ResourceKind]
) -> tuple[dict[ResourceKind, Pattern], PatternError | None]:
    """As :func:`check_pattern`, with what the check compiled: each valid kind's pattern of
    ``text``, per-plugin variables filled with their stand-ins (so the text's own pattern exactly
    when it has none)."""
    sample = with_stand_ins(text) if "{" in text else text  # the one treatment of templates
    valid: dict[ResourceKind, Pattern] = {}
    first_error: PatternError | None = None
    for kind in sorted(kinds, key=lambda k: k.value):
        try:
            valid[kind] = compile_pattern(kind, sample)
        except PatternError as exc:
            first_error = first_error or exc
    return valid, first_error


def _compile_pattern(
    ctx: _Context, pattern: nodes.PatternRef, kinds: frozenset[ResourceKind]
) -> CompiledPattern | None:
    text, unknown = expand_variables(pattern.text, ctx.variables)
    if unknown:
        known = (*PLUGIN_VARIABLES, *ctx.variables)
        for name in unknown:
            hint = did_you_mean(name, known)
            hint = f"did you mean `{{{hint.split('`')[1]}}}`?" if hint else (
                f"known variables: {', '.join('{' + k + '}' for k in known)}; the host passes others to the engine"
            )
            ctx.error(f"unknown variable `{{{name}}}` in pattern `{pattern.text}`", pattern.span, hint, code=codes.UNKNOWN_VARIABLE)
        return None
    if not kinds:
        return None
    key = (text, kinds)
    checked = ctx.checked.get(key)
    if checked is None:
        checked = ctx.checked[key] = _check(ctx, text, kinds)
    valid_kinds, per_plugin, compiled, error = checked
    if valid_kinds is None:
        assert error is not None
        ctx.error(f"invalid pattern `{pattern.text}`: {error}", pattern.span, error.hint, code=codes.INVALID_PATTERN)
        return None
    return CompiledPattern(text, pattern.text, per_plugin, valid_kinds, pattern.span, compiled)


def _check(ctx: _Context, text: str, kinds: frozenset[ResourceKind]) -> _Checked:
    valid, error = checked_pattern(text, kinds)
    if not valid:
        return None, False, None, error
    per_plugin = "{" in text and any(f"{{{v}}}" in text for v in PLUGIN_VARIABLES)
    valid_kinds = ctx.shared(valid)
    # In the order of `valid_kinds`, as the tables take them.
    compiled = None if per_plugin else tuple(
        ctx.patterns.setdefault((kind, text), valid[kind]) for kind in valid_kinds)
    return valid_kinds, per_plugin, compiled, None


def _check_condition(ctx: _Context, condition: nodes.Condition | None) -> bool:
    ok = True
    for attribute in attributes(condition):
        if attribute.root == "plugin":
            name = attribute.path[0] if attribute.path else ""
            if name not in PLUGIN_ATTRIBUTES or len(attribute.path) != 1:
                ctx.error(
                    f"unknown plugin attribute `{attribute.text}`",
                    attribute.span,
                    did_you_mean(f"plugin.{name}", [f"plugin.{a}" for a in PLUGIN_ATTRIBUTES]),
                    code=codes.UNKNOWN_PLUGIN_ATTRIBUTE,
                )
                ok = False
    return ok


# Pass: settings blocks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What the settings pass returns: the ``defaults`` overlay and each plugin's own."""

    defaults: Overlay
    per_plugin: Mapping[str, Overlay]


def _compile_settings(ctx: _Context) -> Settings:
    defaults: dict[str, SettingValue] = {}
    per_plugin: dict[str, dict[str, SettingValue]] = {}
    for policy_file in ctx.files:
        for statement in policy_file.statements:
            if not isinstance(statement, nodes.SettingsBlock):
                continue
            target = defaults if statement.plugin is None else per_plugin.setdefault(statement.plugin, {})
            where = "defaults" if statement.plugin is None else f'plugin "{statement.plugin}"'
            for setting in statement.settings:
                for key, value in _setting_values(ctx, setting):
                    previous = target.get(key)
                    if previous is not None and previous.value != value:
                        ctx.error(
                            f"`{key}` is set twice in {where} blocks with different values",
                            setting.span,
                            f"the other value is set at {previous.span}; rule and block order carry no meaning, so keep one",
                            code=codes.CONFLICTING_SETTINGS,
                        )
                    else:
                        target[key] = SettingValue(value, setting.span)
    return Settings(
        Overlay(MappingProxyType(defaults)) if defaults else EMPTY_OVERLAY,
        MappingProxyType({name: Overlay(MappingProxyType(values)) for name, values in per_plugin.items()}),
    )


def _quantity(ctx: _Context, quantity: nodes.Quantity, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(quantity.text)
    except UnitError as exc:
        ctx.error(str(exc), quantity.span, exc.hint, code=codes.INVALID_QUANTITY)
        return None


def _positive_values(ctx: _Context, key: str, value: nodes.Quantity, maximum: nodes.Quantity | None,
                     parse: Callable[[str], Any], what: str) -> list[tuple[str, Any]]:
    """``key`` and ``key.max`` from a setting's value and optional ``max``, each positive."""
    out: list[tuple[str, Any]] = []
    for suffix, quantity in (("", value), (".max", maximum)):
        if quantity is None:
            continue
        parsed = _quantity(ctx, quantity, parse)
        if parsed is None:
            continue
        if parsed <= 0:
            ctx.error(f"{what} `{quantity.text}` must be positive", quantity.span, code=codes.INVALID_QUANTITY)
        else:
            out.append((key + suffix, parsed))
    return out


def _parse_count(text: str) -> int:
    """A bare whole number (``limit disk_files 10000``)."""
    if not text.isdigit():
        raise UnitError(f"`{text}` is not a whole number of files", "write a count such as `10000`")
    return int(text)


_LIMIT_PARSERS: dict[str, Callable[[str], Any]] = {"cpu": parse_percent, "disk_files": _parse_count}


def _setting_values(ctx: _Context, setting: nodes.Setting) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(setting, nodes.TimeoutSetting):
        if setting.phase not in TIMEOUT_PHASES:
            ctx.error(f"unknown timeout `{setting.phase}`", setting.span,
                      did_you_mean(setting.phase, TIMEOUT_PHASES) or "timeouts are init, hook and execute",
                      code=codes.UNKNOWN_SETTING)
            return out
        key = f"timeout.{setting.phase}"
        out += _positive_values(ctx, key, setting.value, setting.maximum, parse_duration, "timeout")
        return out
    if isinstance(setting, nodes.LimitSetting):
        if setting.resource not in LIMIT_RESOURCES:
            ctx.error(f"unknown limit `{setting.resource}`", setting.span,
                      did_you_mean(setting.resource, LIMIT_RESOURCES)
                      or "limits are memory, cpu, file_size, disk and disk_files",
                      code=codes.UNKNOWN_SETTING)
            return out
        key = f"limit.{setting.resource}"
        parse: Callable[[str], Any] = _LIMIT_PARSERS.get(setting.resource, parse_size)
        out += _positive_values(ctx, key, setting.value, setting.maximum, parse, "limit")
        if setting.warn is not None:
            if setting.resource != "memory":
                ctx.error(f"`warn` applies to the memory limit, not `{setting.resource}`", setting.warn.span,
                          "remove the `warn` part", code=codes.UNKNOWN_SETTING)
            else:
                value = _quantity(ctx, setting.warn, parse_percent)
                if value is not None:
                    out.append((key + ".warn", value))
        return out
    if isinstance(setting, nodes.ViolationSetting):
        choices = [v.value for v in Violation]
        if setting.action not in choices:
            ctx.error(f"unknown violation action `{setting.action}`", setting.span,
                      did_you_mean(setting.action, choices) or "write `terminate` or `warn`", code=codes.UNKNOWN_SETTING)
        else:
            out.append(("on_violation", Violation(setting.action)))
        return out
    if isinstance(setting, nodes.AcceptSetting):
        for name, span in zip(setting.names, setting.name_spans, strict=True):
            if name in RISKS:
                out.append((f"accept.{name}", True))
            else:
                known = ", ".join(f"`{r}`" for r in risk_names())
                hint = did_you_mean(name, risk_names()) or f"the risks a policy can accept are {known}"
                if name.lower() in ("all", "any", "everything"):
                    hint = f"there is no blanket opt-out: name each risk ({known})"
                ctx.error(f"unknown risk `{name}`", span, hint, code=codes.UNKNOWN_SETTING)
        return out
    choices = [v.value for v in Isolation]
    if setting.mode not in choices:
        ctx.error(f"unknown isolation mode `{setting.mode}`", setting.span,
                  did_you_mean(setting.mode, choices) or "write `process` or `inprocess`", code=codes.UNKNOWN_SETTING)
    else:
        out.append(("isolation", Isolation(setting.mode)))
        if setting.allow_degraded:
            out.append(("allow_degraded", True))
    return out


# Pass: trust pins -------------------------------------------------------------------------

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def _compile_pins(ctx: _Context) -> Mapping[str, Pin]:
    pins: dict[str, Pin] = {}
    for policy_file in ctx.files:
        for statement in policy_file.statements:
            if not isinstance(statement, nodes.Trust):
                continue
            if statement.algorithm == OLD_ALGORITHM:
                ctx.error(f"pin of plugin `{statement.plugin}` uses digest version 1 (`{OLD_ALGORITHM}`), "
                          "which no longer pins anything", statement.span,
                          f"version 2 covers every file of the plugin directory; re-pin with the "
                          f"line `policy-engine digest DIR` prints (`trust plugin ... {ALGORITHM} ...`)",
                          code=codes.OUTDATED_PIN)
                continue
            if statement.algorithm != ALGORITHM:
                ctx.error(f"unknown digest algorithm `{statement.algorithm}`", statement.span,
                          f"write `{ALGORITHM}`", code=codes.MALFORMED_PIN)
                continue
            if not _HEX64.match(statement.digest):
                ctx.error(f"malformed {ALGORITHM} digest `{statement.digest}`", statement.digest_span,
                          "a digest is 64 hexadecimal characters; `policy-engine digest DIR` prints it",
                          code=codes.MALFORMED_PIN)
                continue
            digest = DIGEST_PREFIX + statement.digest.lower()
            previous = pins.get(statement.plugin)
            if previous is not None and previous.digest != digest:
                ctx.error(f"plugin `{statement.plugin}` is pinned to two different digests", statement.span,
                          f"the other pin is at {previous.span}", code=codes.MALFORMED_PIN)
                continue
            pins[statement.plugin] = Pin(statement.plugin, digest, statement.span)
    return MappingProxyType(pins)
