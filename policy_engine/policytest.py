"""Policy tests: ``*.test.yaml`` files of requests and the decisions they must get.

A test file names the policy set under test, the plugins directory and the variables it
needs (paths relative to the file), and a list of cases. :func:`run_tests` reads every test
file under the given paths, decides each case with an :class:`~policy_engine.Engine` and
returns a :class:`PolicyTestReport`: what passed, what failed and why, and which rules no case
exercised (a rule is exercised when it is among a decision's determining rules).

The format is described by ``schemas/policytest.schema.json`` (package data). A file that
cannot be read, is not valid YAML or does not match the schema raises
:class:`~policy_engine.errors.PolicyTestError` naming the file, line and column.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .bounded import DEFAULT_LIMITS, bounded_loader, read_bounded_file
from .decision import Decision, Reason
from .diagnostics import Diagnostic, Span, did_you_mean, source_line
from .engine import Engine
from .errors import InputLimitError, PolicyTestError

__all__ = [
    "CaseResult",
    "PolicyCase",
    "PolicyTestFile",
    "PolicyTestReport",
    "TEST_FILE_SUFFIX",
    "UncoveredRule",
    "find_test_files",
    "policytest_schema",
    "read_test_file",
    "run_test_file",
    "run_tests",
]

TEST_FILE_SUFFIX = ".test.yaml"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "policytest.schema.json"

#: Bounds of a test file: it is read before anything else checks it.
MAX_TEST_FILE_BYTES = 4 << 20
MAX_NESTING = 64
#: The caps of :mod:`policy_engine.bounded` for test files: a test file may be larger and
#: hold more nodes than a manifest (anchors and aliases are refused, so nodes do not fan out).
TEST_FILE_LIMITS = dataclasses.replace(DEFAULT_LIMITS, yaml_bytes=MAX_TEST_FILE_BYTES, yaml_nodes=1_000_000)


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """One request and the decision it must get.

    ``rules`` is None when the case does not say which rules decide; otherwise each entry is
    ``(file, line or None)`` with ``file`` as written in the test file.
    """

    name: str
    plugin: str
    action: str
    resource: str | None
    context: Mapping[str, Any] | None
    allowed: bool
    reason: Reason | None
    rules: tuple[tuple[str, int | None], ...] | None
    span: Span


@dataclass(frozen=True, slots=True)
class PolicyTestFile:
    """A parsed ``*.test.yaml`` file with its paths resolved against its directory."""

    path: Path
    policy: tuple[Path, ...]
    plugins: tuple[Path, ...]
    variables: Mapping[str, str]
    cases: tuple[PolicyCase, ...]


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one case: the decision and, for a failure, what differed."""

    file: str
    case: PolicyCase
    decision: Decision
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when the decision is what the case expects."""
        return not self.problems

    @property
    def expected(self) -> str:
        """What the case expects, in words: ``deny (denied_by_rule) by site.policy:27``."""
        text = "allow" if self.case.allowed else "deny"
        if self.case.reason is not None:
            text += f" ({self.case.reason.value})"
        if self.case.rules is not None:
            rules = ", ".join(f"{f}:{n}" if n else f for f, n in self.case.rules) or "no rule"
            text += f" by {rules}"
        return text

    @property
    def decided(self) -> str:
        """What the engine decided, in the same words as :attr:`expected`."""
        d = self.decision
        rules = ", ".join(f"{Path(r.file).name}:{r.line}" for r in d.rules) or "no rule"
        return f"{'allow' if d.allowed else 'deny'} ({d.reason.value}) by {rules}"


@dataclass(frozen=True, slots=True)
class UncoveredRule:
    """A policy rule that no case exercised."""

    file: str
    line: int
    column: int
    text: str


@dataclass(frozen=True, slots=True)
class PolicyTestReport:
    """Every case's result, in file order, and the rules no case exercised."""

    results: tuple[CaseResult, ...]
    uncovered: tuple[UncoveredRule, ...]
    files: tuple[str, ...]
    rule_count: int = 0

    @property
    def passed(self) -> int:
        """How many cases passed."""
        return sum(1 for r in self.results if r.passed)

    @property
    def failed(self) -> int:
        """How many cases failed."""
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        """True when every case passed."""
        return self.failed == 0


# Reading --------------------------------------------------------------------------------


def policytest_schema() -> dict[str, Any]:
    """The JSON Schema of test files (a copy of ``schemas/policytest.schema.json``)."""
    copy: dict[str, Any] = json.loads(json.dumps(_schema()))
    return copy


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return data


def find_test_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every ``*.test.yaml`` below ``paths`` (files are taken as given), sorted, once each.

    Raises :class:`PolicyTestError` for a path that does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob(f"*{TEST_FILE_SUFFIX}") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise PolicyTestError([Diagnostic(f"test path `{path}` does not exist", Span(str(path), 0, 0))])
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def read_test_file(path: str | os.PathLike[str]) -> PolicyTestFile:
    """Read and check one test file; raises :class:`PolicyTestError` with positions."""
    file = Path(path)
    name = str(file)
    try:
        raw = read_bounded_file(name, MAX_TEST_FILE_BYTES, cap="yaml_bytes")
    except InputLimitError as exc:
        raise PolicyTestError(exc.diagnostics) from None
    except OSError as exc:
        raise PolicyTestError([Diagnostic(f"cannot read test file: {exc.strerror or exc}",
                                          Span(name, 0, 0))]) from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise PolicyTestError([Diagnostic(
            f"test file is not UTF-8 text (byte {exc.start})", Span(name, 0, 0),
            "save it as UTF-8")]) from None
    data, spans = load_test_yaml(text, name)
    return _build(file, text, data, spans)


def load_test_yaml(text: str, name: str) -> tuple[Any, Mapping[str, Span]]:
    """The data of a YAML document and the span of every JSON pointer in it.

    Read through :func:`policy_engine.bounded.bounded_loader` with :data:`TEST_FILE_LIMITS`
    (sizes, line lengths, depth, keys, items); anchors and aliases are refused as well (they
    are how a small file becomes a huge document), as are documents nested deeper than
    :data:`MAX_NESTING`.
    """
    try:
        loader = bounded_loader(text, name=name, limits=TEST_FILE_LIMITS)
    except InputLimitError as exc:
        raise PolicyTestError(exc.diagnostics) from None
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyTestError([Diagnostic("expected a mapping with `cases`, found an empty document",
                                              Span(name, 1, 1), "see schemas/policytest.schema.json")])
        spans = _spans(root, name, text)
        data = loader.construct_document(root)
    except InputLimitError as exc:
        raise PolicyTestError(exc.diagnostics) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        problem = " ".join(f"{exc.context or ''} {exc.problem or 'invalid YAML'}".split())
        raise PolicyTestError([Diagnostic(f"invalid YAML: {problem}", Span(name, line, column),
                                          source_line=source_line(text, line, "yaml"))]) from None
    except yaml.YAMLError as exc:
        raise PolicyTestError([Diagnostic(f"invalid YAML: {' '.join(str(exc).split())}",
                                          Span(name, 0, 0))]) from None
    finally:
        loader.dispose()
    return data, spans


def _spans(root: yaml.Node, name: str, text: str) -> dict[str, Span]:
    spans: dict[str, Span] = {}
    stack: list[tuple[str, yaml.Node, int]] = [("", root, 0)]
    seen: set[int] = set()
    while stack:
        pointer, node, depth = stack.pop()
        span = Span(name, node.start_mark.line + 1, node.start_mark.column + 1)
        if id(node) in seen or getattr(node, "anchor", None):
            raise PolicyTestError([Diagnostic("YAML anchors and aliases are not allowed in test files",
                                              span, "write the value out", source_line=source_line(text, span.line, "yaml"))])
        seen.add(id(node))
        if depth > MAX_NESTING:
            raise PolicyTestError([Diagnostic(f"the document is nested deeper than {MAX_NESTING} levels",
                                              span, source_line=source_line(text, span.line, "yaml"))])
        spans[pointer] = span
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, Span] = {}
            for key, value in node.value:
                key_text = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
                key_span = Span(name, key.start_mark.line + 1, key.start_mark.column + 1)
                if key_text in keys:
                    raise PolicyTestError([Diagnostic(
                        f"duplicate field `{key_text}`", key_span,
                        f"the first is on line {keys[key_text].line}",
                        source_line=source_line(text, key_span.line, "yaml"))])
                keys[key_text] = key_span
                stack.append((f"{pointer}/{_escape(key_text)}", value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((f"{pointer}/{index}", item, depth + 1))
    return spans


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer(path: Iterable[Any]) -> str:
    return "".join(f"/{_escape(str(part))}" for part in path)


def _at(spans: Mapping[str, Span], pointer: str, name: str) -> Span:
    while pointer not in spans and pointer:
        pointer = pointer.rsplit("/", 1)[0]
    return spans.get(pointer, Span(name, 0, 0))


def _schema_problems(data: Any, spans: Mapping[str, Span], name: str, text: str) -> list[Diagnostic]:
    validator = jsonschema.Draft202012Validator(_schema())
    problems: list[Diagnostic] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: _at(spans, _pointer(e.absolute_path), name).line):
        pointer = _pointer(error.absolute_path)
        span = _at(spans, pointer, name)
        hint: str | None = None
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(error.schema.get("properties", {}))
            unknown = [k for k in error.instance if k not in known]
            message = "unknown field " + ", ".join(f"`{k}`" for k in unknown)
            if unknown:
                pointer = f"{pointer}/{_escape(str(unknown[0]))}"
                span = _at(spans, pointer, name)
            hint = did_you_mean(str(unknown[0]), known) if unknown else None
            hint = hint or "known fields: " + ", ".join(f"`{k}`" for k in known)
        elif error.validator == "required":
            missing = [k for k in error.validator_value if k not in error.instance]
            message = "missing required field " + ", ".join(f"`{k}`" for k in missing)
        elif error.validator == "enum":
            message = f"expected one of {', '.join(f'`{v}`' for v in error.validator_value)}, found `{error.instance}`"
            hint = did_you_mean(str(error.instance), [str(v) for v in error.validator_value])
        else:
            message = " ".join(error.message.split())
        problems.append(Diagnostic(message, span, hint, source_line=source_line(text, span.line, "yaml"),
                                   pointer=pointer))
    return problems


def _build(file: Path, text: str, data: Any, spans: Mapping[str, Span]) -> PolicyTestFile:
    name = str(file)
    problems = _schema_problems(data, spans, name, text)
    if problems:
        raise PolicyTestError(problems)
    base = file.parent

    def paths(value: Any) -> tuple[Path, ...]:
        items = [value] if isinstance(value, str) else list(value)
        return tuple(_shown(base / item) for item in items)

    policy = paths(data["policy"]) if "policy" in data else (_shown(base),)
    plugins = paths(data.get("plugins", []))
    cases: list[PolicyCase] = []
    for index, raw in enumerate(data["cases"]):
        resource = raw.get("resource")
        rules = raw.get("rule")
        parsed_rules: tuple[tuple[str, int | None], ...] | None = None
        if rules is not None:
            parsed_rules = tuple(_rule_ref(r) for r in ([rules] if isinstance(rules, str) else rules))
        default_name = " ".join(str(p) for p in (raw["plugin"], raw["action"], resource) if p is not None)
        cases.append(PolicyCase(
            name=raw.get("name", default_name),
            plugin=raw["plugin"],
            action=raw["action"],
            resource=resource,
            context=raw.get("context"),
            allowed=raw["expect"] == "allow",
            reason=Reason(raw["reason"]) if "reason" in raw else None,
            rules=parsed_rules,
            span=_at(spans, f"/cases/{index}", name),
        ))
    return PolicyTestFile(file, policy, plugins, dict(data.get("variables", {})), tuple(cases))


def _shown(path: Path) -> Path:
    """``path`` without ``..`` detours: relative to the working directory when inside it, so
    rules are cited as ``policies/site.policy``, not ``tests/x/../../policies/site.policy``."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd())
    except ValueError:
        return resolved


def _rule_ref(text: str) -> tuple[str, int | None]:
    file, sep, line = text.rpartition(":")
    if sep and line.isdigit():
        return file, int(line)
    return text, None


# Running --------------------------------------------------------------------------------

_TEMPLATE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def run_test_file(test: PolicyTestFile) -> tuple[list[CaseResult], Engine]:
    """Decide every case of ``test``; policy and manifest errors raise as when loading."""
    engine = Engine.load(list(test.policy), plugins=list(test.plugins) or None,
                         variables=test.variables, cache_size=0)
    results: list[CaseResult] = []
    for case in test.cases:
        resource = case.resource
        if resource is not None:
            resource = _expand(resource, case.plugin, engine)
        decision = engine.decide(case.plugin, case.action, resource, case.context)
        results.append(CaseResult(str(test.path), case, decision, _compare(test, case, decision)))
    return results, engine


def _expand(resource: str, plugin: str, engine: Engine) -> str:
    manifest = engine.manifest(plugin)
    values = dict(engine.variables)
    values["plugin"] = plugin
    if manifest is not None:
        values["plugin_dir"] = str(manifest.plugin_path)
    return _TEMPLATE.sub(lambda m: values.get(m.group(1), m.group(0)), resource)


def _compare(test: PolicyTestFile, case: PolicyCase, decision: Decision) -> tuple[str, ...]:
    problems: list[str] = []
    if decision.allowed is not case.allowed:
        problems.append(f"expected {'allow' if case.allowed else 'deny'}")
    if case.reason is not None and decision.reason is not case.reason:
        problems.append(f"expected reason `{case.reason.value}`, decided `{decision.reason.value}`")
    if case.rules is not None:
        got = list(decision.rules)
        unmatched = [r for r in case.rules]
        for ref in list(got):
            for wanted in unmatched:
                if _same_rule(test.path.parent, wanted, ref.file, ref.line):
                    unmatched.remove(wanted)
                    got.remove(ref)
                    break
        if unmatched or got:
            problems.append("expected the deciding rules to be "
                            + (", ".join(f"{f}:{n}" if n else f for f, n in case.rules) or "none"))
    return tuple(problems)


def _same_rule(base: Path, wanted: tuple[str, int | None], file: str, line: int) -> bool:
    name, wanted_line = wanted
    if wanted_line is not None and wanted_line != line:
        return False
    if "/" not in name and Path(file).name == name:
        return True
    return os.path.realpath(base / name) == os.path.realpath(file)


def run_tests(paths: Sequence[str | os.PathLike[str]]) -> PolicyTestReport:
    """Run every test file under ``paths``; coverage is over the policies they load.

    Raises :class:`PolicyTestError` for a bad test file and the loading errors of
    :meth:`Engine.load` for a policy set or plugins directory that cannot be loaded.
    """
    files = find_test_files(paths)
    if not files:
        shown = ", ".join(f"`{p}`" for p in paths)
        raise PolicyTestError([Diagnostic(f"no `*{TEST_FILE_SUFFIX}` files in {shown}", None,
                                          "name test files like `site.test.yaml`")])
    tests = [read_test_file(path) for path in files]
    results: list[CaseResult] = []
    rules: dict[tuple[str, int, int], UncoveredRule] = {}
    exercised: set[tuple[str, int, int]] = set()
    for test in tests:
        file_results, engine = run_test_file(test)
        results.extend(file_results)
        for rule in engine.policy.rules:
            ref = rule.ref
            rules.setdefault((os.path.realpath(ref.file), ref.line, ref.column),
                             UncoveredRule(ref.file, ref.line, ref.column, ref.text))
        for result in file_results:
            for ref in result.decision.rules:
                exercised.add((os.path.realpath(ref.file), ref.line, ref.column))
    uncovered = tuple(rule for key, rule in sorted(rules.items()) if key not in exercised)
    return PolicyTestReport(tuple(results), uncovered, tuple(str(t.path) for t in tests), len(rules))
