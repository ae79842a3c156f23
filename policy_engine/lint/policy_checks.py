"""Checks of ``.policy`` files: syntax and compile errors, then analysis of the compiled set.

Errors come from the parser and the compiler themselves (their diagnostics already carry
spans, carets and hints); this module only gives them their lint codes. The analysis reads
a :class:`~policy_engine.compiler.PolicySet`:

- rule against rule (``PL301`` an allow a deny always overrides, ``PL302`` a redundant
  rule), compared only within their (plugin, permission) buckets and, inside a bucket,
  only against patterns that can subsume each other (indexed by their literal prefix), so
  that a policy of thousands of rules is analysed in about linear time;
- one rule alone (``PL304`` over-broad grants);
- settings (``PL305`` limits above ceilings, ``PL306`` warn thresholds);
- conditions (``PL307`` constant, ``PL308`` can fail at run time, ``PL312`` a ``matches``
  glob whose meaning changed with the language's glob semantics);
- refusals and opt-outs (``PL310`` an unpinned in-process plugin, ``PL311`` each accepted
  risk, ``PL313`` a file deny the kernel sandbox cannot hold exactly, ``PL314`` a glob
  grant that matches too many existing paths to reach the kernel one by one, ``PL315`` a
  note on each glob write grant: it cannot create a new matching name).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import codes, nodes
from ..compiler import CompiledRule, PolicySet, compile_policy
from ..conditions import ConditionError, evaluate, version_key
from ..diagnostics import Diagnostic, Span, source_lines
from ..errors import PolicyCompileError, PolicySyntaxError
from ..exactness import inexact_reason
from ..families import over_broad_checks
from ..globs import MAX_MATCHES, MAX_VISITS, expand_glob, is_expandable
from ..nodes import Effect
from ..parser import parse_policy
from ..patterns import (
    EVERYTHING,
    HostPattern,
    NamePattern,
    PathPattern,
    Pattern,
    covers_all,
    glob_matches,
    matches_everything,
    symbolic_pattern,
    with_templates,
)
from ..permissions import ALL_PERMISSIONS, Permission, ResourceKind
from ..risks import INEXACT_DENY, INEXACT_GRANT, RISKS, UNPINNED_INPROCESS
from ..settings import Isolation, Overlay
from ..units import UnitError, format_duration, format_percent, format_size, parse_percent
from .findings import finding, first_line_span, recode, snippet

__all__ = ["ParsedFile", "analyse_policy_set", "compile_files", "parse_file"]


# Parsing and compiling ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """A policy file as the linter read it: the tree, or the syntax errors."""

    path: str
    source: str
    tree: nodes.PolicyFile | None
    errors: tuple[Diagnostic, ...]

    @property
    def policy_name(self) -> str | None:
        """The name in the file's ``policy "<name>"`` header, if it has one."""
        if self.tree is not None:
            header = self.tree.header
            return header.name if header is not None else None
        for line in source_lines(self.source):
            words = line.split(None, 1)
            if words and words[0] == "policy" and len(words) > 1 and words[1].startswith('"'):
                return words[1][1:].split('"', 1)[0]
        return None


def parse_file(path: str, source: str) -> ParsedFile:
    """Parse one policy file, keeping its syntax errors as ``PL001`` findings."""
    try:
        return ParsedFile(path, source, parse_policy(source, path), ())
    except PolicySyntaxError as exc:
        return ParsedFile(path, source, None, tuple(recode(d, codes.SYNTAX_ERROR) for d in exc.diagnostics))


def compile_files(
    files: Sequence[ParsedFile], variables: Mapping[str, str]
) -> tuple[PolicySet | None, list[Diagnostic]]:
    """Compile the parsed files as one set; the compiler's diagnostics keep their codes."""
    trees = [f.tree for f in files if f.tree is not None]
    if not trees:
        return None, []
    try:
        return compile_policy(trees, variables), []
    except PolicyCompileError as exc:
        return None, [recode(d, d.code) for d in exc.diagnostics]


# Analysis -------------------------------------------------------------------------------


def analyse_policy_set(policy: PolicySet) -> list[Diagnostic]:
    """Every analysis finding (``PL301``-``PL308``) of a compiled policy set."""
    sources = {f.path: f.source for f in policy.files}
    # A rule whose patterns cannot be read symbolically is left out of the rule analysis
    # rather than half-read: no finding is better than a wrong one.
    rules = [rule for rule in policy.rules if _is_analysable(rule)]
    analysis = _RuleAnalysis(rules, sources)
    found: list[Diagnostic] = []
    found.extend(analysis.always_denied())
    found.extend(analysis.redundant())
    found.extend(_overbroad(rules, sources))
    found.extend(_settings(policy, sources))
    found.extend(_ConditionAnalysis(sources).run(policy.rules))
    found.extend(_changed_globs(policy.rules, sources))
    found.extend(_unpinned_inprocess(policy, sources))
    found.extend(_accepted_risks(policy, sources))
    found.extend(_inexact_denies(policy, sources))
    found.extend(_glob_grants(policy, sources))
    return found


# PL313 ------------------------------------------------------------------------------------

_READ, _WRITE, _DELETE = Permission.FILE_READ, Permission.FILE_WRITE, Permission.FILE_DELETE
#: For each deny, the grants whose trees it must be held inside: a read deny inside every
#: tree the view shows (read and write grants), a write or delete deny inside write grants.
_SHOWN_BY = {_READ: (_READ, _WRITE, _DELETE), _WRITE: (_WRITE, _DELETE), _DELETE: (_WRITE, _DELETE)}


def _path_patterns(rule: CompiledRule) -> list[tuple[Any, PathPattern]]:
    out: list[tuple[Any, PathPattern]] = []
    for compiled in rule.patterns or ():
        if ResourceKind.PATH not in compiled.kinds:
            continue
        pattern = symbolic_pattern(ResourceKind.PATH, compiled.text)
        if isinstance(pattern, PathPattern):
            out.append((compiled, pattern))
    return out


def _same_plugins(a: CompiledRule, b: CompiledRule) -> bool:
    return a.plugins is None or b.plugins is None or bool(a.plugins & b.plugins)


def _accepts(policy: PolicySet, rule: CompiledRule, risk: str = INEXACT_DENY) -> bool:
    key = f"accept.{risk}"
    if policy.defaults.get(key):
        return True
    return rule.plugins is not None and all(
        name in policy.plugin_settings and policy.plugin_settings[name].get(key)
        for name in rule.plugins)


def _inexact_denies(policy: PolicySet, sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    read_masks = {
        (pattern.canonical, rule.plugins) for rule in policy.rules
        if rule.effect is Effect.DENY and _READ in rule.permissions and rule.when is None
        and rule.unless is None for _, pattern in _path_patterns(rule)}
    for rule in policy.rules:
        if rule.effect is Effect.DENY and not _accepts(policy, rule):
            found = _first_inexact(policy, rule, read_masks)
            if found is not None:
                compiled, why = found
                yield finding(codes.INEXACT_DENY, f"the kernel sandbox cannot hold the deny of "
                              f"`{compiled.text}` exactly: {why}", compiled.span,
                              hint="deny whole existing paths (a file or `/dir/**`), narrow "
                              f"the grant, or add `accept {INEXACT_DENY}` to the plugin's block; "
                              "the loader refuses it as it is",
                              source=sources.get(compiled.span.file))


def _first_inexact(policy: PolicySet, rule: CompiledRule,
                   read_masks: set[tuple[str, frozenset[str] | None]]) -> tuple[Any, str] | None:
    """The first pattern of deny ``rule`` the kernel cannot hold exactly, and why."""
    conditional = rule.when is not None or rule.unless is not None
    for permission in (_READ, _WRITE, _DELETE):
        if permission not in rule.permissions:
            continue
        trees: dict[str, None] = {}
        for allow in policy.rules:
            if allow.effect is not Effect.ALLOW or not _same_plugins(rule, allow) or \
                    not allow.permissions & set(_SHOWN_BY[permission]):
                continue
            if allow.patterns is None:
                trees["/"] = None
            # An unconditional deny subtracts from a glob grant's matches at start: exact.
            trees.update(dict.fromkeys(p.landlock_root for _, p in _path_patterns(allow)
                                       if conditional or not is_expandable(p)))
        for compiled, pattern in _path_patterns(rule) if trees else ():
            masked = permission is _READ or (pattern.canonical, rule.plugins) in read_masks
            # A path with plugin variables is only known per plugin: not checked here.
            exists = None if compiled.per_plugin else os.path.lexists
            why = inexact_reason(pattern, trees, conditional=conditional, masked=masked,
                                 exists=exists)
            if why is not None:
                return compiled, with_templates(why)
    return None


# PL314, PL315 ----------------------------------------------------------------------------

_FILE_GRANTS = (_READ, _WRITE, _DELETE)


def _glob_grants(policy: PolicySet, sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    for rule in policy.rules:
        granted = [p for p in _FILE_GRANTS if p in rule.permissions]
        if rule.effect is not Effect.ALLOW or not granted:
            continue
        writes = _WRITE in granted or _DELETE in granted
        for compiled, pattern in _path_patterns(rule):
            if not is_expandable(pattern):
                continue
            text = with_templates(pattern.text)
            source = sources.get(compiled.span.file)
            # A path with plugin variables is only known per plugin: not walked here.
            if not compiled.per_plugin and not _accepts(policy, rule, INEXACT_GRANT) and \
                    not expand_glob(pattern).complete:
                yield finding(codes.INEXACT_GRANT, f"the glob `{text}` matches more than "
                              f"{MAX_MATCHES} existing paths here (or its walk looks at more "
                              f"than {MAX_VISITS} entries), so the kernel cannot be given each "
                              "one", compiled.span,
                              hint="narrow the pattern, grant the whole directory (`/dir/**`), "
                              f"or add `accept {INEXACT_GRANT}` to the plugin's block; the "
                              "loader refuses it as it is", source=source)
            if writes:
                yield finding(codes.GLOB_WRITE_GRANT, f"the kernel is given the paths `{text}` "
                              "matches when the plugin starts: this glob write grant can write "
                              "them but cannot create a new matching name", compiled.span,
                              hint="grant the whole directory (`/dir/**`) if the plugin must "
                              "create files there", source=source)


# PL310, PL311 -----------------------------------------------------------------------------


def _unpinned_inprocess(policy: PolicySet, sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    accept_key = f"accept.{UNPINNED_INPROCESS}"
    fix = (f"pin it with a `trust` line (`policy-engine digest DIR` prints it), or add "
           f"`accept {UNPINNED_INPROCESS}` to the block")
    for name, overlay in sorted(policy.plugin_settings.items()):
        isolation = overlay.values.get("isolation")
        if isolation is None or isolation.value is not Isolation.INPROCESS or name in policy.pins:
            continue
        if overlay.get(accept_key) or policy.defaults.get(accept_key):
            continue
        yield finding(codes.UNPINNED_INPROCESS, f"plugin `{name}` runs in-process but has no `trust` pin",
                      isolation.span, hint=fix + "; the loader refuses it as it is",
                      source=sources.get(isolation.span.file))
    isolation = policy.defaults.values.get("isolation")
    if (isolation is not None and isolation.value is Isolation.INPROCESS
            and not policy.defaults.get(accept_key)):
        yield finding(codes.UNPINNED_INPROCESS, "`defaults` run every plugin without a `trust` pin in-process",
                      isolation.span, hint="set `isolation inprocess` only in the blocks of pinned "
                      f"plugins, or add `accept {UNPINNED_INPROCESS}` to `defaults`",
                      source=sources.get(isolation.span.file))


def _accepted_risks(policy: PolicySet, sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    for policy_file in policy.files:
        for statement in policy_file.statements:
            if not isinstance(statement, nodes.SettingsBlock):
                continue
            who = "every plugin" if statement.plugin is None else f"plugin `{statement.plugin}`"
            for setting in statement.settings:
                if not isinstance(setting, nodes.AcceptSetting):
                    continue
                for risk_name, span in zip(setting.names, setting.name_spans, strict=True):
                    risk = RISKS.get(risk_name)
                    if risk is None:
                        continue  # the compiler reports it
                    yield finding(codes.ACCEPTED_RISK, f"the policy accepts `{risk_name}` for {who}: {risk.gives_up}",
                                  span, hint=f"without it, {risk.refusal}",
                                  source=sources.get(span.file))


# PL312 ------------------------------------------------------------------------------------

# Attributes whose values never hold a `/` (the manifest's formats), so `*` and `?` mean there
# what they meant before.
_NO_SLASH = frozenset({("name",), ("type",), ("version",), ("entry_point",)})


def _glob_change(node: nodes.Matches) -> str | None:
    """How the meaning of ``node``'s glob changed from ``fnmatch``, or None when it did not."""
    glob = node.pattern
    if isinstance(node.operand, nodes.Literal):
        value = node.operand.value
        if not isinstance(value, str) or fnmatch.fnmatchcase(value, glob) == glob_matches(glob, value):
            return None  # PL307 reports the constant; its value did not change
        return f"it was {fnmatch.fnmatchcase(value, glob)} and is now {glob_matches(glob, value)}"
    opening = glob.find("[")
    if opening >= 0 and glob.find("]", opening + 2) >= 0:
        return "`[...]` was a character class and is now literal text"
    operand = node.operand
    can_hold_slash = not (isinstance(operand, nodes.Attribute) and operand.root == "plugin"
                          and operand.path in _NO_SLASH)
    single = glob.replace("**", "")
    if can_hold_slash and ("*" in single or "?" in single):
        return "`*` and `?` no longer match `/` (write `**` to match across `/`)"
    return None


def _changed_globs(rules: Iterable[CompiledRule], sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    seen: set[Span] = set()
    for rule in rules:
        for condition in (rule.when, rule.unless):
            for node in _matches_nodes(condition):
                change = _glob_change(node)
                if change is None or node.span in seen:
                    continue
                seen.add(node.span)
                yield finding(codes.GLOB_MEANING_CHANGED, f"the meaning of `matches \"{node.pattern}\"` changed: {change}",
                              node.span, hint="check that the condition still means what you want; "
                              "`# noqa: PL312` once it does", source=sources.get(node.span.file))


def _matches_nodes(node: object) -> Iterator[nodes.Matches]:
    if isinstance(node, nodes.Matches):
        yield node
    elif isinstance(node, (nodes.And, nodes.Or)):
        yield from _matches_nodes(node.left)
        yield from _matches_nodes(node.right)
    elif isinstance(node, nodes.Not):
        yield from _matches_nodes(node.operand)


def _index_key(pattern: Pattern) -> Hashable:
    """Where a pattern is filed: only patterns filed under one of :func:`_candidate_keys`
    of ``q`` can subsume ``q``."""
    if isinstance(pattern, PathPattern):
        return tuple(_literal_prefix(pattern.segments))
    if isinstance(pattern, NamePattern):
        return pattern.canonical.split("*", 1)[0]
    assert isinstance(pattern, HostPattern)
    if pattern.network is not None and pattern.network.num_addresses > 1:
        return pattern.network.compressed
    return pattern.host_text


def _candidate_keys(pattern: Pattern) -> Iterator[Hashable]:
    if isinstance(pattern, PathPattern):
        prefix = _literal_prefix(pattern.segments)
        for i in range(len(prefix) + 1):
            yield tuple(prefix[:i])
    elif isinstance(pattern, NamePattern):
        # A literal character of the subsuming pattern must meet the same character here,
        # up to its first `*`: its fixed prefix is a prefix of ours.
        fixed = pattern.canonical.split("*", 1)[0]
        for i in range(len(fixed) + 1):
            yield fixed[:i]
    else:
        assert isinstance(pattern, HostPattern)
        yield "*"
        yield pattern.host_text
        if pattern.network is not None:  # every address range that could contain this one
            for length in range(pattern.network.prefixlen + 1):
                yield pattern.network.supernet(new_prefix=length).compressed
            if pattern.network.num_addresses == 1:
                yield pattern.network.compressed.rsplit("/", 1)[0]
            return
        labels = pattern.host_text.removeprefix("*.").split(".")
        for i in range(len(labels)):
            yield "*." + ".".join(labels[i:])


def _literal_prefix(segments: Sequence[str]) -> list[str]:
    prefix: list[str] = []
    for segment in segments:
        if "*" in segment or "?" in segment:
            break
        prefix.append(segment)
    return prefix


def _is_analysable(rule: CompiledRule) -> bool:
    return rule.patterns is None or all(
        symbolic_pattern(kind, pattern.text) is not None for pattern in rule.patterns for kind in pattern.kinds
    )


def _rule_patterns(rule: CompiledRule, kind: ResourceKind) -> tuple[Pattern, ...] | None:
    """The rule's patterns for resources of ``kind`` (None: any resource; empty: the rule
    does not apply to permissions of that kind). Only for analysable rules."""
    if rule.patterns is None:
        return None
    found = []
    for pattern in rule.patterns:
        if kind in pattern.kinds:
            compiled = symbolic_pattern(kind, pattern.text)
            assert compiled is not None, "checked by _is_analysable"
            found.append(compiled)
    return tuple(found)


def _applies_to(rule: CompiledRule, permission: Permission) -> bool:
    patterns = _rule_patterns(rule, permission.kind)
    return patterns is None or bool(patterns)


_ANY = "*"  # the bucket of rules that name every plugin


@dataclass
class _Bucket:
    """The rules of one (effect, plugin, permission), indexed by pattern."""

    any_resource: list[CompiledRule] = field(default_factory=list)
    by_key: dict[Hashable, list[tuple[CompiledRule, Pattern]]] = field(default_factory=dict)

    def add(self, rule: CompiledRule, patterns: tuple[Pattern, ...] | None) -> None:
        if patterns is None:
            self.any_resource.append(rule)
            return
        for pattern in patterns:
            self.by_key.setdefault(_index_key(pattern), []).append((rule, pattern))

    def covering(self, pattern: Pattern | None) -> Iterator[CompiledRule]:
        """Rules of this bucket with a pattern that covers ``pattern`` (None: any resource)."""
        yield from self.any_resource
        if pattern is None:
            for kind, text in EVERYTHING.items():
                everything = symbolic_pattern(kind, text)
                assert everything is not None
                for rule, candidate in self.by_key.get(_index_key(everything), ()):
                    if candidate.kind is kind and matches_everything(candidate):
                        yield rule
            return
        for key in _candidate_keys(pattern):
            for rule, candidate in self.by_key.get(key, ()):
                if candidate.subsumes(pattern):
                    yield rule


def _position(rule: CompiledRule) -> tuple[str, int, int]:
    return (rule.ref.file, rule.ref.line, rule.ref.column)


def _shape(node: object) -> object:
    """A condition without its spans, for comparing two conditions."""
    if isinstance(node, nodes.Attribute):
        return ("attr", node.text)
    if isinstance(node, nodes.Literal):
        return ("lit", type(node.value).__name__, node.value)
    if isinstance(node, (nodes.And, nodes.Or)):
        return (type(node).__name__, _shape(node.left), _shape(node.right))
    if isinstance(node, nodes.Not):
        return ("not", _shape(node.operand))
    if isinstance(node, nodes.Compare):
        return ("cmp", node.op, _shape(node.left), _shape(node.right))
    if isinstance(node, nodes.In):
        return ("in", node.negated, _shape(node.operand), tuple(_shape(v) for v in node.values))
    if isinstance(node, nodes.Matches):
        return ("matches", _shape(node.operand), node.pattern)
    if isinstance(node, nodes.Truthy):
        return ("truthy", _shape(node.operand))
    return None


class _RuleAnalysis:
    """Rule-against-rule checks over bucketed, pattern-indexed rules."""

    def __init__(self, rules: Sequence[CompiledRule], sources: Mapping[str, str]) -> None:
        self.rules = rules
        self.sources = sources
        self.buckets: dict[tuple[Effect, str, Permission], _Bucket] = {}
        self.unconditional_denies: dict[tuple[str, Permission], _Bucket] = {}
        for rule in rules:
            unconditional = rule.when is None and rule.unless is None
            for plugin in rule.plugins if rule.plugins is not None else (_ANY,):
                for permission in rule.permissions:
                    patterns = _rule_patterns(rule, permission.kind)
                    if patterns is not None and not patterns:
                        continue
                    self.buckets.setdefault((rule.effect, plugin, permission), _Bucket()).add(rule, patterns)
                    if rule.effect is Effect.DENY and unconditional:
                        self.unconditional_denies.setdefault((plugin, permission), _Bucket()).add(rule, patterns)

    def _pairs(self, rule: CompiledRule) -> list[tuple[str, Permission]]:
        plugins = sorted(rule.plugins) if rule.plugins is not None else [_ANY]
        permissions = sorted((p for p in rule.permissions if _applies_to(rule, p)), key=lambda p: p.value)
        return [(plugin, permission) for plugin in plugins for permission in permissions]

    @staticmethod
    def _buckets_for(table: Mapping[Any, _Bucket], key: tuple[Any, ...], plugin: str) -> list[_Bucket]:
        found = [table[key]] if key in table else []
        if plugin != _ANY:
            wildcard = (*key[:-2], _ANY, key[-1])
            if wildcard in table:
                found.append(table[wildcard])
        return found

    def _finding_span(self, rule: CompiledRule) -> Span:
        return first_line_span(self.sources.get(rule.ref.file, ""), rule.node.span)

    # PL301 ------------------------------------------------------------------------------

    def always_denied(self) -> Iterator[Diagnostic]:
        for rule in self.rules:
            if rule.effect is not Effect.ALLOW:
                continue
            pairs = self._pairs(rule)
            if not pairs:
                continue
            blockers: list[CompiledRule] = []
            for plugin, permission in pairs:
                buckets = self._buckets_for(self.unconditional_denies, (plugin, permission), plugin)
                patterns = _rule_patterns(rule, permission.kind)
                for pattern in (None,) if patterns is None else patterns:
                    blocker = next((d for b in buckets for d in b.covering(pattern)), None)
                    if blocker is None:
                        break
                    blockers.append(blocker)
                else:
                    continue
                break
            else:
                first = min(blockers, key=_position)
                yield finding(
                    codes.ALLOW_ALWAYS_DENIED,
                    f"this allow never takes effect: the deny at `{first.ref.location}` always overrides it",
                    self._finding_span(rule),
                    hint="deny beats allow whatever the order: remove the allow, or narrow the deny",
                    source=self.sources.get(rule.ref.file),
                )

    # PL302 ------------------------------------------------------------------------------

    def redundant(self) -> Iterator[Diagnostic]:
        for rule in self.rules:
            pairs = self._pairs(rule)
            if not pairs:
                continue
            plugin, permission = pairs[0]
            patterns = _rule_patterns(rule, permission.kind)
            first_pattern = None if patterns is None else patterns[0]
            seen: set[int] = set()
            for bucket in self._buckets_for(self.buckets, (rule.effect, plugin, permission), plugin):
                for other in bucket.covering(first_pattern):
                    if other is rule or id(other) in seen:
                        continue
                    seen.add(id(other))
                    if not _covers(other, rule):
                        continue
                    duplicate = _covers(rule, other)
                    if duplicate and _position(rule) < _position(other):
                        continue  # the later of two equal rules is the one reported
                    yield self._redundant_finding(rule, other, duplicate)
                    break
                else:
                    continue
                break

    def _redundant_finding(self, rule: CompiledRule, other: CompiledRule, duplicate: bool) -> Diagnostic:
        verb = "allows" if rule.effect is Effect.ALLOW else "denies"
        if duplicate:
            message = f"this rule duplicates the rule at `{other.ref.location}`"
        else:
            message = f"this rule is subsumed by the broader rule at `{other.ref.location}`"
        return finding(
            codes.REDUNDANT_RULE, message, self._finding_span(rule),
            hint=f"remove this rule: the other one already {verb} everything it does",
            source=self.sources.get(rule.ref.file),
        )


def _covers(broad: CompiledRule, narrow: CompiledRule) -> bool:
    """Whether ``broad`` applies whenever ``narrow`` does (same effect assumed)."""
    if broad.effect is not narrow.effect:
        return False
    if broad.when is not None or broad.unless is not None:
        if _shape(broad.when) != _shape(narrow.when) or _shape(broad.unless) != _shape(narrow.unless):
            return False
    if broad.plugins is not None and (narrow.plugins is None or not narrow.plugins <= broad.plugins):
        return False
    for permission in narrow.permissions:
        narrow_patterns = _rule_patterns(narrow, permission.kind)
        if narrow_patterns is not None and not narrow_patterns:
            continue  # the narrow rule does not apply to this permission
        if permission not in broad.permissions:
            return False
        if not covers_all(_rule_patterns(broad, permission.kind), narrow_patterns):
            return False
    return True


# PL304 ------------------------------------------------------------------------------------

def _is_wide(pattern: Pattern) -> bool:
    """A pattern that matches everything of its kind (a port alone does not narrow a host)."""
    if isinstance(pattern, HostPattern):
        return pattern.host_text == "*"
    return pattern.is_overbroad


def _overbroad(rules: Iterable[CompiledRule], sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    # What is checked, and for which permissions, is the registry's `over_broad` facet.
    checked = {Permission(a): facet for a, facet in over_broad_checks().items()}
    for rule in rules:
        if rule.effect is not Effect.ALLOW:
            continue
        who = "every plugin" if rule.plugins is None else "plugin " + ", ".join(
            f"`{p}`" for p in sorted(rule.plugins))
        problem: str | None = None
        if rule.permissions == ALL_PERMISSIONS and rule.patterns is None:
            problem = f"grants {who} every permission on every resource"
        else:
            for permission in sorted(rule.permissions, key=lambda p: p.value):
                facet = checked.get(permission)
                if facet is None:
                    continue
                patterns = _rule_patterns(rule, permission.kind)
                wide = None if patterns is None else next(
                    (p for p in patterns if _is_wide(p)), None)
                if patterns is None:
                    problem = f"grants {who} `{permission.value}` on {facet.everything}"
                elif wide is not None:
                    word = "to" if isinstance(wide, HostPattern) else "on"
                    problem = f"grants {who} `{permission.value}` {word} `{wide.text}`"
                if problem:
                    break
        if problem:
            source = sources.get(rule.ref.file, "")
            yield finding(
                codes.OVERBROAD_GRANT, f"over-broad grant: {problem}", first_line_span(source, rule.node.span),
                hint="scope the grant to what the plugin needs, such as `{data_dir}/{plugin}/**` "
                     "or `api.example.com:443`",
                source=source,
            )


# PL305, PL306 -----------------------------------------------------------------------------

_RENDER: dict[str, Callable[[float], str]] = {
    "timeout": format_duration,
    "limit.memory": format_size,
    "limit.file_size": format_size,
    "limit.cpu": format_percent,
    "limit.disk": format_size,
    "limit.disk_files": lambda count: f"{int(count)} files",
}


def _render(key: str, value: float) -> str:
    render = _RENDER.get(key) or _RENDER.get(key.split(".", 1)[0]) or str
    return render(value)


def _settings(policy: PolicySet, sources: Mapping[str, str]) -> Iterator[Diagnostic]:
    for policy_file in policy.files:
        for statement in policy_file.statements:
            if not isinstance(statement, nodes.SettingsBlock):
                continue
            for setting in statement.settings:
                if isinstance(setting, nodes.LimitSetting) and setting.warn is not None:
                    yield from _warn_threshold(setting.warn, policy_file.source)
    yield from _ceilings(policy.defaults, policy.plugin_settings, sources)


def _warn_threshold(warn: nodes.Quantity, source: str) -> Iterator[Diagnostic]:
    try:
        fraction = parse_percent(warn.text)
    except UnitError:
        return  # the compiler reports it
    if fraction >= 1.0:
        yield finding(
            codes.WARN_THRESHOLD_TOO_HIGH, f"expected a warning threshold below 100%, found `warn {warn.text}`", warn.span,
            hint="the limit is enforced at 100%, so this warning never comes first: write `warn 80%`",
            source=source,
        )


def _ceilings(
    defaults: Overlay, plugin_settings: Mapping[str, Overlay], sources: Mapping[str, str]
) -> Iterator[Diagnostic]:
    keys = [k for k in ("timeout.init", "timeout.hook", "timeout.execute", "limit.memory",
                        "limit.cpu", "limit.file_size", "limit.disk", "limit.disk_files")]
    blocks: list[tuple[str, Overlay]] = [("defaults", defaults)]
    blocks += [(f'plugin "{name}"', overlay) for name, overlay in sorted(plugin_settings.items())]
    for where, overlay in blocks:
        for key in keys:
            value, maximum = overlay.values.get(key), overlay.values.get(key + ".max")
            setting = _setting_words(key)
            if value is not None and maximum is not None and value.value > maximum.value:
                yield finding(
                    codes.LIMIT_ABOVE_CEILING,
                    f"expected `{setting}` at most its `max {_render(key, maximum.value)}`, "
                    f"found `{_render(key, value.value)}`",
                    value.span,
                    hint="the value wins and silently raises the ceiling: lower the value or raise the `max`",
                    source=sources.get(value.span.file),
                )
            default_max = defaults.values.get(key + ".max")
            if where != "defaults" and value is not None and default_max is not None \
                    and value.value > default_max.value:
                yield finding(
                    codes.LIMIT_ABOVE_CEILING,
                    f"`{setting} {_render(key, value.value)}` in `{where}` is above the ceiling "
                    f"`max {_render(key, default_max.value)}` of `defaults`",
                    value.span,
                    hint=f"the plugin block raises the ceiling set at `{default_max.span}`: "
                         "stay below it, or raise the `max` in `defaults`",
                    source=sources.get(value.span.file),
                )


def _setting_words(key: str) -> str:
    return key.replace(".", " ")


# PL307, PL308 -----------------------------------------------------------------------------

_PLUGIN_TYPES: dict[str, str] = {
    "name": "string", "version": "string", "type": "string", "description": "string",
    "entry_point": "string", "author": "string", "trusted": "boolean", "enabled": "boolean",
    "tags": "list",
}
_ALWAYS = {"==": True, "<=": True, ">=": True, "!=": False, "<": False, ">": False}
_FAIL_HINT = ("a condition that cannot be evaluated makes an allow not apply and a deny apply; "
              "compare values of one type")


def _kind_of(operand: nodes.Operand) -> str | None:
    """The type of an operand's value, when it is known before any request."""
    if isinstance(operand, nodes.Literal):
        if isinstance(operand.value, bool):
            return "boolean"
        return "string" if isinstance(operand.value, str) else "number"
    if operand.root == "plugin" and len(operand.path) == 1:
        return _PLUGIN_TYPES.get(operand.path[0])
    return None


def _is_version(operand: nodes.Operand) -> bool:
    return isinstance(operand, nodes.Attribute) and operand.root == "plugin" and operand.path == ("version",)


def _equality_fails(left: str, right: str) -> bool:
    # Mirrors conditions._equal: booleans and strings only equal their own kind.
    return left != right and ("boolean" in (left, right) or (left == "string") != (right == "string"))


def _ordering_fails(left: str, right: str) -> bool:
    return "boolean" in (left, right) or "list" in (left, right) or (left == "string") != (right == "string")


class _ConditionAnalysis:
    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = sources
        self.found: list[Diagnostic] = []
        # context attribute -> literal kinds it is compared with, and where
        self.context_uses: dict[str, list[tuple[str, Span]]] = {}

    def run(self, rules: Iterable[CompiledRule]) -> list[Diagnostic]:
        for rule in rules:
            for condition in (rule.when, rule.unless):
                if condition is not None:
                    self._visit(condition)
        self._mixed_context_types()
        return self.found

    def _text(self, span: Span) -> str:
        return snippet(self.sources.get(span.file, ""), span)

    def _report(self, code: str, message: str, span: Span, hint: str) -> None:
        self.found.append(finding(code, message, first_line_span(self.sources.get(span.file, ""), span),
                                  hint=hint, source=self.sources.get(span.file)))

    def _constant(self, node: nodes.Condition) -> None:
        try:
            value = evaluate(node, {}, {})
        except ConditionError as exc:
            self._report(codes.FALLIBLE_CONDITION, f"condition `{self._text(node.span)}` always fails: {exc}", node.span,
                         _FAIL_HINT)
            return
        self._report(codes.CONSTANT_CONDITION, f"condition `{self._text(node.span)}` is always {str(value).lower()}",
                     node.span, "it reads only literals: remove it, or compare an attribute")

    def _fails(self, node: nodes.Condition, why: str, always: bool = True) -> None:
        how = "always fails" if always else "can fail at run time"
        self._report(codes.FALLIBLE_CONDITION, f"condition `{self._text(node.span)}` {how}: {why}", node.span, _FAIL_HINT)

    def _visit(self, node: nodes.Condition) -> None:
        if isinstance(node, (nodes.And, nodes.Or)):
            self._visit(node.left)
            self._visit(node.right)
        elif isinstance(node, nodes.Not):
            self._visit(node.operand)
        elif isinstance(node, nodes.Compare):
            self._compare(node)
        elif isinstance(node, nodes.In):
            self._in(node)
        elif isinstance(node, nodes.Matches):
            self._matches(node)
        elif isinstance(node, nodes.Truthy):
            self._truthy(node)

    def _record_context(self, operand: nodes.Operand, other: nodes.Operand) -> None:
        if isinstance(operand, nodes.Attribute) and operand.root == "context" and isinstance(other, nodes.Literal):
            kind = _kind_of(other)
            assert kind is not None
            self.context_uses.setdefault(operand.text, []).append((kind, other.span))

    def _compare(self, node: nodes.Compare) -> None:
        left, right = node.left, node.right
        if isinstance(left, nodes.Literal) and isinstance(right, nodes.Literal):
            self._constant(node)
            return
        if isinstance(left, nodes.Attribute) and isinstance(right, nodes.Attribute) and left.text == right.text:
            self._report(codes.CONSTANT_CONDITION, f"condition `{self._text(node.span)}` is always "
                                  f"{str(_ALWAYS[node.op]).lower()}: it compares `{left.text}` with itself",
                         node.span, "compare the attribute with a value or another attribute")
            return
        if _is_version(left) or _is_version(right):
            other = right if _is_version(left) else left
            if isinstance(other, nodes.Literal):
                if not isinstance(other.value, str):
                    self._fails(node, "`plugin.version` is compared with quoted versions such as `\"2.0\"`")
                else:
                    try:
                        version_key(other.value)
                    except ConditionError:
                        self._fails(node, f"`{other.value}` is not a version")
            return
        self._record_context(left, right)
        self._record_context(right, left)
        left_kind, right_kind = _kind_of(left), _kind_of(right)
        ordering = node.op not in ("==", "!=")
        if ordering and "boolean" in (left_kind, right_kind):
            self._fails(node, f"`{node.op}` does not order booleans")
        elif left_kind is not None and right_kind is not None:
            fails = _ordering_fails if ordering else _equality_fails
            if fails(left_kind, right_kind):
                self._fails(node, f"it compares a {left_kind} with a {right_kind}")

    def _in(self, node: nodes.In) -> None:
        if not node.values:
            value = "true" if node.negated else "false"
            self._report(codes.CONSTANT_CONDITION, f"condition `{self._text(node.span)}` is always {value}: the list is empty",
                         node.span, "list the values, or remove the condition")
            return
        if isinstance(node.operand, nodes.Literal):
            self._constant(node)
            return
        kinds = {_kind_of(v) for v in node.values}
        if _is_version(node.operand):
            for item in node.values:
                if not isinstance(item.value, str):
                    self._fails(node, "`plugin.version` is compared with quoted versions such as `\"2.0\"`")
                    return
                try:
                    version_key(item.value)
                except ConditionError:
                    self._fails(node, f"`{item.value}` is not a version")
                    return
            return
        if len(kinds) > 1:
            self._fails(node, "the list mixes " + " and ".join(sorted(f"{k}s" for k in kinds if k)),
                        always=False)
            return
        for item in node.values:
            self._record_context(node.operand, item)
        operand_kind = _kind_of(node.operand)
        (item_kind,) = kinds
        if operand_kind is not None and item_kind is not None and _equality_fails(operand_kind, item_kind):
            self._fails(node, f"it compares a {operand_kind} with {item_kind}s")

    def _matches(self, node: nodes.Matches) -> None:
        if isinstance(node.operand, nodes.Literal):
            self._constant(node)
            return
        kind = _kind_of(node.operand)
        if kind is not None and kind != "string":
            self._fails(node, f"`matches` reads strings and `{node.operand.text}` is a {kind}")

    def _truthy(self, node: nodes.Truthy) -> None:
        operand = node.operand
        if isinstance(operand, nodes.Literal):
            self._constant(node)
            return
        kind = _kind_of(operand)
        if operand.root == "context":
            self._report(
                codes.FALLIBLE_CONDITION,
                f"condition `{operand.text}` fails at run time unless `{operand.text}` is a boolean",
                node.span,
                f"write `{operand.text} == true` to say what is meant; errors fail closed",
            )
        elif kind is not None and kind != "boolean":
            self._fails(node, f"a bare condition must be a boolean and `{operand.text}` is a {kind}")

    def _mixed_context_types(self) -> None:
        for attribute, uses in sorted(self.context_uses.items()):
            uses = sorted(uses, key=lambda u: (u[1].file, u[1].line, u[1].column))
            first_kind, first_span = uses[0]
            for kind, span in uses[1:]:
                if kind != first_kind and _equality_fails(kind, first_kind):
                    self._report(
                        codes.FALLIBLE_CONDITION,
                        f"`{attribute}` is compared with a {kind} here and with a {first_kind} at "
                        f"`{first_span}`; one of the two fails at run time",
                        span,
                        f"context values have one type: compare `{attribute}` with {first_kind}s everywhere",
                    )
