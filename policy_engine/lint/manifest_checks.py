"""Checks of ``plugin.yaml`` manifests, alone and against the policy.

The manifest loader reports every problem of a manifest as one :class:`ManifestError`
whose diagnostics have no lint code; :func:`classify` gives each one (YAML errors, schema
errors, unknown permissions, malformed permission entries). Against the policy, an
:class:`~policy_engine.engine.Engine` built from one policy set and the valid manifests
says which requests are cut to a ceiling (``Effective.notes``) and which declared
permissions no rule can grant.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import codes
from ..bounded import (
    DEFAULT_LIMITS,
    compose_yaml,
    is_limit_diagnostic,
    load_yaml,
    read_bounded_file,
)
from ..compiler import PolicySet
from ..diagnostics import Diagnostic, Span, did_you_mean
from ..engine import Engine
from ..errors import InputLimitError, ManifestError, PolicyEngineError
from ..manifest import MANIFEST_NAME, PluginMetadata, load_manifest
from .findings import finding, recode

__all__ = [
    "LoadedManifest",
    "PolicySetSources",
    "check_against_policies",
    "check_entry_point",
    "check_unknown_plugins",
    "classify",
    "duplicate_names",
    "load",
]


@dataclass(frozen=True, slots=True)
class LoadedManifest:
    """One plugin directory's manifest as the linter read it."""

    plugin_dir: str
    path: str
    text: str | None
    metadata: PluginMetadata | None
    findings: tuple[Diagnostic, ...]
    #: Where the fields are: JSON pointer -> span (empty when the text is not YAML).
    spans: Mapping[str, Span]

    @property
    def name(self) -> str | None:
        """The plugin's name, from the metadata or (for a broken manifest) the raw YAML."""
        if self.metadata is not None:
            return self.metadata.name
        if self.text is None:
            return None
        try:
            data = load_yaml(self.text, name=self.path)
        except (yaml.YAMLError, InputLimitError):
            return None
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) else None

    def span(self, pointer: str) -> Span:
        """The span of the field at ``pointer`` (or its nearest ancestor), else the file."""
        while pointer.startswith("/") and pointer not in self.spans:
            pointer = pointer.rsplit("/", 1)[0]
        return self.spans.get(pointer, Span(self.path, 0, 0))

    def at(self, code: str, message: str, pointer: str, hint: str | None = None) -> Diagnostic:
        """A finding about the field at ``pointer``."""
        return finding(code, message, self.span(pointer), hint=hint, source=self.text, pointer=pointer)


def load(plugin_dir: str) -> LoadedManifest:
    """Read and check the manifest of ``plugin_dir``."""
    path = str(Path(plugin_dir) / MANIFEST_NAME)
    try:
        text: str | None = read_bounded_file(path, DEFAULT_LIMITS.yaml_bytes, cap="yaml_bytes").decode("utf-8")
    except (OSError, UnicodeDecodeError, InputLimitError):
        text = None  # load_manifest says why, with a position for bad UTF-8
    spans = _pointer_spans(text, path) if text is not None else {}
    try:
        metadata = load_manifest(path)
    except ManifestError as exc:
        return LoadedManifest(plugin_dir, path, text, None, tuple(classify(d) for d in exc.diagnostics), spans)
    return LoadedManifest(plugin_dir, path, text, metadata, (), spans)


def classify(diagnostic: Diagnostic) -> Diagnostic:
    """Give a manifest loader diagnostic its lint code."""
    message = diagnostic.message
    pointer = diagnostic.pointer or ""
    if is_limit_diagnostic(diagnostic):
        code = codes.MANIFEST_YAML_ERROR
    elif message.startswith(("cannot read the manifest", "cannot list")):
        code = codes.MANIFEST_UNREADABLE
    elif message.startswith(("invalid YAML", "expected UTF-8", "duplicate field")):
        code = codes.MANIFEST_YAML_ERROR
    elif message.startswith("unknown permission"):
        code = codes.MANIFEST_UNKNOWN_PERMISSION
    elif re.fullmatch(r"/permissions/\d+", pointer):
        code = codes.MANIFEST_INVALID_PERMISSION
    else:
        code = codes.MANIFEST_SCHEMA_ERROR
    return recode(diagnostic, code)


def _pointer_spans(text: str, file: str) -> dict[str, Span]:
    """JSON pointer -> span of every field of a YAML document (empty if it does not parse)."""
    try:
        root = compose_yaml(text.removeprefix("\ufeff"), name=file)
    except (yaml.YAMLError, InputLimitError):
        return {}
    spans: dict[str, Span] = {}
    stack: list[tuple[str, yaml.Node]] = [("", root)] if root is not None else []
    seen: set[int] = set()
    while stack:
        pointer, node = stack.pop()
        start, end = node.start_mark, node.end_mark
        spans.setdefault(pointer, Span(file, start.line + 1, start.column + 1, end.line + 1, end.column + 1))
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    escaped = str(key.value).replace("~", "~0").replace("/", "~1")
                    stack.append((f"{pointer}/{escaped}", value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((f"{pointer}/{index}", item))
    return spans


# Entry points -------------------------------------------------------------------------------


def check_entry_point(manifest: LoadedManifest) -> Iterator[Diagnostic]:
    """``PL209``: the entry point's module must be in the plugin directory and define the class."""
    metadata = manifest.metadata
    if metadata is None:
        return
    module, _, name = metadata.entry_point.partition(":")
    root = Path(manifest.plugin_dir)
    parts = module.split(".")
    candidates = [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    found = next((c for c in candidates if c.is_file()), None)
    shown = metadata.entry_point
    if found is None:
        yield manifest.at(
            codes.MISSING_ENTRY_POINT, f"module `{module}` of entry point `{shown}` is not in the plugin directory",
            "/entry_point",
            f"expected `{_relative(candidates[0], root)}` or `{_relative(candidates[1], root)}` "
            f"in `{manifest.plugin_dir}`",
        )
        return
    if not name:
        return  # the schema requires `module:Class`; nothing more to look for
    try:
        tree = ast.parse(found.read_text(encoding="utf-8"), filename=str(found))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return  # the code scan reports a file that does not parse
    defined = _top_level_names(tree)
    if name not in defined:
        classes = sorted(n for n in defined if n[:1].isupper())
        yield manifest.at(
            codes.MISSING_ENTRY_POINT, f"class `{name}` of entry point `{shown}` is not defined in `{_relative(found, root)}`",
            "/entry_point",
            did_you_mean(name, classes) or f"define `class {name}` at the top level of the module",
        )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # pragma: no cover - candidates are built below root
        return path.as_posix()


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


# Against each other and against the policy ---------------------------------------------------


def duplicate_names(manifests: Sequence[LoadedManifest]) -> Iterator[Diagnostic]:
    """``PL203``: a plugin name declared by two manifests (the first one read wins)."""
    first: dict[str, LoadedManifest] = {}
    for manifest in manifests:
        name = manifest.name
        if name is None or manifest.metadata is None:
            continue
        if name in first:
            yield manifest.at(
                codes.DUPLICATE_PLUGIN, f"plugin `{name}` is already declared by `{first[name].path}`", "/name",
                "the engine keeps the first manifest it reads and ignores this one: rename one plugin",
            )
        else:
            first[name] = manifest


def check_unknown_plugins(policy: PolicySet, known: Iterable[str]) -> Iterator[Diagnostic]:
    """``PL303``: plugin names in rules, blocks and pins that no manifest declares."""
    names = sorted(set(known))
    sources = {f.path: f.source for f in policy.files}
    hint_cache: dict[str, str] = {}

    def hint(name: str) -> str:
        if name not in hint_cache:
            hint_cache[name] = did_you_mean(name, names) or (
                "known plugins: " + ", ".join(f"`{n}`" for n in names[:8]) + (", ..." if len(names) > 8 else "")
                if names else "no manifest was linted"
            )
        return hint_cache[name]

    known_set = set(names)
    for rule in policy.rules:
        if rule.plugins is None:
            continue
        spans = rule.node.plugin_spans
        for index, name in enumerate(rule.node.plugins or ()):
            if name not in known_set:
                span = spans[index] if index < len(spans) else rule.node.span
                yield finding(codes.UNKNOWN_PLUGIN, f"plugin `{name}` is not declared by any manifest", span,
                              hint=hint(name), source=sources.get(span.file))
    for name, overlay in sorted(policy.plugin_settings.items()):
        if name not in known_set and overlay.values:
            span = min((v.span for v in overlay.values.values()), key=lambda s: (s.file, s.line, s.column))
            yield finding(codes.UNKNOWN_PLUGIN, f"settings for plugin `{name}`, which no manifest declares", span,
                          hint=hint(name), source=sources.get(span.file))
    for name, pin in sorted(policy.pins.items()):
        if name not in known_set:
            yield finding(codes.UNKNOWN_PLUGIN, f"trust pin for plugin `{name}`, which no manifest declares", pin.span,
                          hint=hint(name), source=sources.get(pin.span.file))


@dataclass(frozen=True, slots=True)
class PolicySetSources:
    """One policy set to check manifests against: its label and its files' texts."""

    label: str
    sources: Mapping[str, str]
    policy: PolicySet


_NOTE = re.compile(r"manifest asks (timeout|limit) (\w+) (\S+); cut to the ceiling (\S+)")


def check_against_policies(
    manifests: Sequence[LoadedManifest],
    policies: Sequence[PolicySetSources],
    variables: Mapping[str, str],
) -> Iterator[Diagnostic]:
    """``PL210``, ``PL211`` and the engine's scope problems (``PL201``, ``PL202``)."""
    valid: list[LoadedManifest] = []
    seen_names: set[str] = set()
    for manifest in manifests:
        if manifest.metadata is not None and manifest.metadata.name not in seen_names:
            seen_names.add(manifest.metadata.name)
            valid.append(manifest)
    if not valid or not policies:
        return
    granted: dict[tuple[str, str], bool] = {}
    reported: set[tuple[str, str, str]] = set()
    several = len(policies) > 1
    for policy in policies:
        try:
            engine = Engine(policy.sources, [m.metadata for m in valid if m.metadata is not None],
                            variables, cache_size=0)
        except PolicyEngineError:  # pragma: no cover - the set compiled a moment ago
            continue
        for problem in engine.problems:
            located = _locate_problem(problem, valid)
            if located is not None:
                key = (located.code, located.location, located.message)
                if key not in reported:
                    reported.add(key)
                    yield located
        for manifest in valid:
            assert manifest.metadata is not None
            table = engine.plugin_table(manifest.metadata.name)
            if table is None:  # pragma: no cover - every valid manifest gets a table
                continue
            for note in table.effective.notes:
                yield from _ceiling_finding(manifest, note, policy.label if several else None)
            for entry in manifest.metadata.permissions:
                any_allow = any(
                    e is not None and e.allows for e in (table.entries.get(p) for p in entry.permissions)
                )
                entry_key = (manifest.path, entry.pointer)
                granted[entry_key] = granted.get(entry_key, False) or any_allow
    for manifest in valid:
        assert manifest.metadata is not None
        for entry in manifest.metadata.permissions:
            if not granted.get((manifest.path, entry.pointer), True):
                where = "any linted policy" if several else "the policy"
                yield manifest.at(
                    codes.PERMISSION_NEVER_GRANTED, f"`{entry.action}` is declared but no rule of {where} grants it to "
                             f"plugin `{manifest.metadata.name}`",
                    entry.pointer,
                    f"every use will be denied: add `allow plugin \"{manifest.metadata.name}\" to "
                    f"{entry.action} ...` to the policy, or remove the entry",
                )


def _locate_problem(problem: Diagnostic, manifests: Sequence[LoadedManifest]) -> Diagnostic | None:
    if problem.code not in (codes.MANIFEST_UNKNOWN_VARIABLE, codes.MANIFEST_INVALID_SCOPE) or problem.span is None:
        return None  # PL203 duplicates are found by `duplicate_names`, with a position
    for manifest in manifests:
        assert manifest.metadata is not None
        if str(manifest.metadata.manifest_path) == problem.span.file or manifest.path == problem.span.file:
            span = manifest.span(problem.pointer or "")
            return finding(problem.code, problem.message, span, hint=problem.hint,
                           source=manifest.text, pointer=problem.pointer)
    return recode(problem, problem.code)


def _ceiling_finding(manifest: LoadedManifest, note: str, label: str | None) -> Iterator[Diagnostic]:
    match = _NOTE.fullmatch(note)
    if match is None:  # pragma: no cover - the notes' wording is settings.py's
        yield manifest.at(codes.REQUEST_ABOVE_CEILING, note, "")
        return
    kind, name, asked, ceiling = match.groups()
    field = "timeouts" if kind == "timeout" else "limits"
    pointer = f"/{field}/{name}"
    if pointer not in manifest.spans and field == "timeouts" and name == "init":
        pointer = "/timeout_seconds" if "/timeout_seconds" in manifest.spans else pointer
    where = f" of {label}" if label else ""
    yield manifest.at(
        codes.REQUEST_ABOVE_CEILING, f"expected `{field}.{name}` at most the policy's ceiling `{ceiling}`{where}, found `{asked}`",
        pointer,
        f"the plugin gets `{ceiling}`; ask for less, or raise the ceiling with `max` in the policy",
    )


