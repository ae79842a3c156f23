"""Lint a tree: find the inputs, run every check, apply ``--select``/``--ignore`` and noqa.

What is linted under each path:

- a ``.policy`` file, or every ``.policy`` file below a directory;
- a plugin: a directory holding ``plugin.yaml`` (a ``plugin.yaml`` path, or a ``.py`` file
  inside a plugin, means that plugin's directory); a directory of plugins is searched for
  them (hidden directories and ``__pycache__`` are skipped, and so is everything below a
  plugin directory).

Policy sets: the files naming the same policy (``policy "<name>"``, or no header) below
one path argument are compiled together as one set, so a directory of alternative policies
(``policies/examples/``) is linted policy by policy; ``PL309`` reports when the policies
below one directory would not compile as the single set ``Engine.load(dir)`` makes of
them. A ``.policy`` file given by itself is compiled with the files of the same policy
beside it (its siblings), but only the findings of the files given are reported: siblings
feed the cross-file checks and nothing else. A sibling that is unreadable, does not parse or
does not compile is left out of the set, so it neither hides the given file's findings nor
makes a valid ``# noqa`` there suppress nothing. Manifests are checked against every policy
set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import codes
from ..compiler import PolicySet
from ..diagnostics import Diagnostic, Severity
from ..engine import default_variables
from ..errors import UsageError
from ..manifest import MANIFEST_NAME
from ..policyset import POLICY_SUFFIX, PolicySetScan, ProblemKind, scan_policy_set
from .code_checks import check_code
from .file_checks import check_permissions
from .findings import finding, position
from .manifest_checks import (
    LoadedManifest,
    PolicySetSources,
    check_against_policies,
    check_entry_point,
    check_unknown_plugins,
    duplicate_names,
    load,
)
from .noqa import Suppression, apply_suppressions, find_suppressions
from .policy_checks import ParsedFile, analyse_policy_set, compile_files, parse_file
from .rules import RULES, Rule, rules_matching

__all__ = ["DEFAULT_PATHS", "LintResult", "lint_paths"]

#: What ``policy-lint`` lints when it is given no path.
DEFAULT_PATHS = ("policies",)


@dataclass(frozen=True, slots=True)
class LintResult:
    """The findings of one lint run, sorted by file and position, and what was linted."""

    findings: tuple[Diagnostic, ...]
    files: tuple[str, ...]
    rules: tuple[Rule, ...]

    def count(self, severity: Severity) -> int:
        """How many findings have ``severity``."""
        return sum(1 for f in self.findings if f.severity is severity)

    def has_failures(self, *, strict: bool = False) -> bool:
        """Whether any finding is an error (or, with ``strict``, a warning)."""
        failing = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
        return any(f.severity in failing for f in self.findings)


def lint_paths(
    paths: Sequence[str | os.PathLike[str]] = DEFAULT_PATHS,
    *,
    variables: Mapping[str, str] | None = None,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    skip_code_outside_plugins: bool = False,
) -> LintResult:
    """Lint the policies, manifests and plugin code under ``paths``.

    ``variables`` add to (or override) the engine's :func:`default_variables`; ``select``
    and ``ignore`` are code prefixes. A ``.py`` path means the plugin it belongs to (the
    nearest directory upward holding ``plugin.yaml``); with ``skip_code_outside_plugins`` a
    ``.py`` file of no plugin is skipped (the pre-commit hook passes every changed ``.py``
    file). Raises :class:`UsageError` for a path that does not exist or is not lintable,
    and for a code prefix that names no rule.
    """
    is_selected = _selector(select, ignore)
    merged = {**default_variables(), **dict(variables or {})}
    inputs = _discover([os.fspath(p) for p in paths], skip_code_outside_plugins)
    findings: list[Diagnostic] = []
    texts: dict[str, tuple[str, str]] = {}  # path -> (text, language), for noqa

    parsed = {path: parse_file(path, text) for path, text in inputs.policy_texts.items()}
    groups = _group(inputs, parsed)  # may add the files of a policy beside a given file
    for item in parsed.values():
        texts[item.path] = (item.source, "policy")
        findings.extend(item.errors)
    policy_sets: list[PolicySetSources] = []
    compiled_ok: dict[tuple[str, str | None], bool] = {}
    for key, grouped in groups.items():
        root, name = key
        policy, errors, members = _compile_group(grouped, inputs.siblings, merged)
        groups[key] = members
        findings.extend(errors)
        compiled_ok[(root, name)] = policy is not None and not any(m.errors for m in members)
        if policy is not None:
            findings.extend(analyse_policy_set(policy))
            label = f"policy `{name}`" if name is not None else f"the unnamed policy in `{root}`"
            policy_sets.append(PolicySetSources(label, {m.path: m.source for m in members}, policy))
    findings.extend(_conflicting_sets(inputs, parsed, groups, compiled_ok, merged))
    findings.extend(inputs.problems)
    findings.extend(check_permissions(sorted(inputs.policy_texts)))

    manifests = [load(directory) for directory in inputs.plugin_dirs]
    for manifest in manifests:
        if manifest.text is not None:
            texts[manifest.path] = (manifest.text, "yaml")
        findings.extend(manifest.findings)
        findings.extend(check_entry_point(manifest))
        if any(is_selected(r.code) for r in rules_matching(["PL4"])):
            findings.extend(check_code(manifest))
            texts.update(_python_files(manifest))
    findings.extend(duplicate_names(manifests))
    if manifests:
        known = [m.name for m in manifests if m.name is not None]
        for policy_set in policy_sets:
            findings.extend(check_unknown_plugins(policy_set.policy, known))
        findings.extend(check_against_policies(manifests, policy_sets, merged))

    # A finding located in a sibling is reported only when it names a given file (a clash
    # or a redundancy across the two); the sibling's own findings were not asked for. Its
    # noqa comments are still read, so what they suppress stays suppressed.
    is_wanted = _wanted(inputs)
    selected = [f for f in findings if is_selected(f.code) and is_wanted(f)]
    suppressions: list[Suppression] = []
    for path, (text, language) in texts.items():
        suppressions.extend(find_suppressions(path, text, language))
    kept, unused = apply_suppressions(selected, suppressions, is_selected)
    if is_selected(codes.UNUSED_NOQA):
        kept.extend(u for u in unused if is_wanted(u))
    unique = {(f.code, f.span, f.message, f.pointer): f for f in kept}
    ordered = tuple(sorted(unique.values(), key=position))
    files = sorted({*(p for p in inputs.policy_texts if p not in inputs.siblings),
                    *(m.path for m in manifests)})
    return LintResult(ordered, tuple(files), tuple(r for r in RULES if is_selected(r.code)))


def _selector(select: Sequence[str], ignore: Sequence[str]) -> Callable[[str], bool]:
    for option, prefixes in (("--select", select), ("--ignore", ignore)):
        for prefix in prefixes:
            if not rules_matching([prefix]):
                raise UsageError(f"unknown code `{prefix}` in `{option}`: no rule code starts with it")
    chosen = tuple(p.upper() for p in select)
    dropped = tuple(p.upper() for p in ignore)

    def is_selected(code: str) -> bool:
        return (not chosen or code.startswith(chosen)) and not (dropped and code.startswith(dropped))

    return is_selected


def _wanted(inputs: _Inputs) -> Callable[[Diagnostic], bool]:
    given = [p for p in inputs.policy_texts if p not in inputs.siblings]

    def is_wanted(item: Diagnostic) -> bool:
        if item.span is None or item.span.file not in inputs.siblings:
            return True
        text = f"{item.message}\n{item.hint or ''}"
        return any(f"{path}:" in text for path in given)

    return is_wanted


# Finding the inputs -------------------------------------------------------------------------


@dataclass
class _Inputs:
    policy_texts: dict[str, str]
    # policy file -> the root its set is grouped under ("" for a file named by itself)
    policy_roots: dict[str, str]
    directory_roots: list[str]
    plugin_dirs: list[str]
    # policy files read only because they share a policy with a file given by itself
    siblings: set[str] = field(default_factory=set)
    # PL002: entries that cannot be read (every read goes through policy_engine.policyset)
    problems: list[Diagnostic] = field(default_factory=list)


def _reader_findings(scan: PolicySetScan, *, empty_ok: bool) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for problem in scan.problems:
        if empty_ok and problem.kind is ProblemKind.EMPTY:
            continue
        diagnostic = problem.to_diagnostic()
        found.append(finding(codes.UNREADABLE_POLICY_FILE, diagnostic.message, diagnostic.span, hint=diagnostic.hint))
    return found


def _discover(paths: Sequence[str], skip_code_outside_plugins: bool = False) -> _Inputs:
    inputs = _Inputs({}, {}, [], [])
    seen: set[str] = set()
    plugins_seen: set[str] = set()

    def add_scan(scan: PolicySetScan, root: str, *, empty_ok: bool) -> None:
        inputs.problems.extend(_reader_findings(scan, empty_ok=empty_ok))
        for file in scan.files:
            key = os.path.realpath(file.name)
            if key in seen:
                continue
            seen.add(key)
            inputs.policy_texts[file.name] = file.text
            inputs.policy_roots[file.name] = root

    def add_plugin(directory: Path) -> None:
        key = os.path.realpath(directory)
        if key not in plugins_seen:
            plugins_seen.add(key)
            inputs.plugin_dirs.append(str(directory))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / MANIFEST_NAME).is_file():
                add_plugin(path)
                continue
            inputs.directory_roots.append(str(path))
            before = (len(inputs.policy_texts), len(inputs.problems), len(inputs.plugin_dirs))
            for directory, names in _walk(path):
                if MANIFEST_NAME in names and directory != path:
                    add_plugin(directory)
                    continue
                if any(name.endswith(POLICY_SUFFIX) for name in names):
                    add_scan(scan_policy_set(str(directory)), str(path), empty_ok=True)
            if (len(inputs.policy_texts), len(inputs.problems), len(inputs.plugin_dirs)) == before:
                # As for the engine: a directory with nothing to lint is not a clean policy set.
                add_scan(scan_policy_set(str(path)), str(path), empty_ok=False)
        elif path.suffix == POLICY_SUFFIX and os.path.lexists(path):
            add_scan(scan_policy_set(str(path)), "", empty_ok=False)
        elif path.is_file():
            if path.name == MANIFEST_NAME:
                add_plugin(path.parent)
            elif path.suffix == ".py" and (plugin := _enclosing_plugin(path)) is not None:
                add_plugin(plugin)
            elif path.suffix == ".py" and skip_code_outside_plugins:
                continue
            else:
                raise UsageError(
                    f"`{path}` is not a `.policy` file, a `{MANIFEST_NAME}` or a file of a plugin directory"
                )
        else:
            raise UsageError(f"path `{path}` does not exist")
    return inputs


def _walk(root: Path) -> list[tuple[Path, list[str]]]:
    found: list[tuple[Path, list[str]]] = []
    for directory, dirnames, filenames in os.walk(root):
        here = Path(directory)
        if MANIFEST_NAME in filenames and here != root:
            dirnames[:] = []  # a plugin's own files are its code, not more inputs
        else:
            # A directory named `*.policy` is a bad entry of its parent's set, not more input.
            policy_named = [d for d in dirnames if d.endswith(POLICY_SUFFIX)]
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__"
                                 and not d.endswith(POLICY_SUFFIX))
            filenames = [*filenames, *policy_named]
        found.append((here, sorted(filenames)))
    return found


def _enclosing_plugin(path: Path) -> Path | None:
    """The nearest directory upward holding a manifest, above the current directory too
    (a file named from inside a plugin's subdirectory)."""
    above = () if path.is_absolute() else Path.cwd().parents
    for parent in (*path.parents, *above):
        if (parent / MANIFEST_NAME).is_file():
            return parent
    return None


def _python_files(manifest: LoadedManifest) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for file in sorted(Path(manifest.plugin_dir).rglob("*.py")):
        relative = file.relative_to(manifest.plugin_dir).parts
        if any(p.startswith(".") or p == "__pycache__" for p in relative):
            continue
        try:
            found[str(file)] = (file.read_text(encoding="utf-8"), "python")
        except (OSError, UnicodeDecodeError):
            continue  # the code scan reports it
    return found


# Policy sets --------------------------------------------------------------------------------


def _group(inputs: _Inputs, parsed: dict[str, ParsedFile]) -> dict[tuple[str, str | None], list[ParsedFile]]:
    """Files by (root, policy name). A file given by itself brings in the files of the same
    policy beside it."""
    groups: dict[tuple[str, str | None], list[ParsedFile]] = {}
    known = {os.path.realpath(p) for p in parsed}
    for path, item in list(parsed.items()):
        root = inputs.policy_roots[path]
        if root:
            groups.setdefault((root, item.policy_name), []).append(item)
            continue
        parent = str(Path(path).parent)
        members = groups.setdefault((parent, item.policy_name), [])
        if item not in members:
            members.append(item)
        # Siblings feed cross-file checks only: one that cannot be read is left out here,
        # and reported when it is itself named (or its directory is).
        siblings = scan_policy_set(parent)
        for sibling in siblings.files:
            name = sibling.name
            if name in parsed or os.path.realpath(name) in known:
                continue
            other = parse_file(name, sibling.text)
            if other.tree is not None and other.policy_name == item.policy_name:
                known.add(os.path.realpath(name))
                parsed[name] = other
                inputs.policy_texts[name] = other.source
                inputs.policy_roots[name] = parent
                inputs.siblings.add(name)
                members.append(other)
    return {key: sorted(members, key=lambda m: m.path) for key, members in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))}


def _compile_group(
    members: list[ParsedFile], siblings: set[str], variables: Mapping[str, str]
) -> tuple[PolicySet | None, list[Diagnostic], list[ParsedFile]]:
    """Compile a group as one set. A sibling broken on its own (it does not parse or does not
    compile alone) is left out; a sibling that clashes with the given files is reported
    through the clash and then left out too, so the given files are still analysed."""
    members = [m for m in members if m.path not in siblings
               or (not m.errors and not compile_files([m], variables)[1])]
    errors: list[Diagnostic] = []
    while True:
        policy, found = compile_files(members, variables)
        errors.extend(found)
        # A clash is reported on either side, naming the other side's position.
        clashing = {m.path for m in members if m.path in siblings and any(
            (e.span is not None and e.span.file == m.path) or f"{m.path}:" in f"{e.message}\n{e.hint or ''}"
            for e in found)}
        if not clashing:
            return policy, errors, members
        members = [m for m in members if m.path not in clashing]


def _conflicting_sets(
    inputs: _Inputs,
    parsed: Mapping[str, ParsedFile],
    groups: Mapping[tuple[str, str | None], list[ParsedFile]],
    compiled_ok: Mapping[tuple[str, str | None], bool],
    variables: Mapping[str, str],
) -> list[Diagnostic]:
    """``PL309``: a directory whose policies compile alone but not as one set.

    ``Engine.load(dir)`` compiles the ``.policy`` files directly in ``dir`` (not below it)
    as one set, so the check is per directory.
    """
    found: list[Diagnostic] = []
    by_directory: dict[str, list[tuple[str, str | None]]] = {}
    for key, members in groups.items():
        for directory in sorted({str(Path(m.path).parent) for m in members}):
            by_directory.setdefault(directory, []).append(key)
    for root, keys in sorted(by_directory.items()):
        if len(keys) < 2 or not all(compiled_ok.get(k, False) for k in keys):
            continue
        members = [m for k in keys for m in groups[k] if str(Path(m.path).parent) == root]
        _, errors = compile_files(members, variables)
        if not errors:
            continue
        first = errors[0]
        names = ", ".join(f"`{k[1]}`" if k[1] is not None else "an unnamed policy" for k in keys)
        found.append(finding(
            codes.CONFLICTING_POLICY_SETS,
            f"policies {names} under `{root}` conflict when loaded as one set: {first.message}",
            first.span,
            hint=f"`Engine.load(\"{root}\")` compiles them together and fails with {len(errors)} "
                 f"error{'s' if len(errors) != 1 else ''}; load one policy at a time, or keep one "
                 "policy per directory",
            source=parsed[first.span.file].source if first.span and first.span.file in parsed else None,
        ))
    return found
