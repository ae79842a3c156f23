"""Render a :class:`~policy_engine.lint.runner.LintResult` as text, JSON or SARIF 2.1.0.

Formatters only turn findings into strings; they never print and never decide the exit
code.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from .._version import __version__
from ..diagnostics import Diagnostic, Severity
from ..errors import UsageError
from .rules import DOCS_URL, Rule, get_rule
from .runner import LintResult

__all__ = ["FORMATS", "SARIF_SCHEMA", "check_doc_url", "format_json", "format_sarif", "format_text", "tool_version"]

#: The schema a SARIF log names in ``$schema``: the OASIS 2.1.0 schema (with errata 01).
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

_SARIF_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
_COLOURS = {Severity.ERROR: "\x1b[31m", Severity.WARNING: "\x1b[33m", Severity.INFO: "\x1b[36m"}
_BOLD, _DIM, _CYAN, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[36m", "\x1b[0m"


def format_text(result: LintResult, *, colour: bool = False) -> str:
    """``path:line:col: CODE message``, the source line, a caret and the hint, for each
    finding; then a summary line. Empty when there is nothing to report."""
    if not result.findings:
        return ""
    blocks = [_colourise(f) if colour else f.render() for f in result.findings]
    errors, warnings = result.count(Severity.ERROR), result.count(Severity.WARNING)
    files = len({f.span.file for f in result.findings if f.span is not None})
    summary = (f"found {_plural(errors, 'error')} and {_plural(warnings, 'warning')} "
               f"in {_plural(files, 'file')}")
    return "\n\n".join(blocks) + "\n\n" + summary + "\n"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _colourise(item: Diagnostic) -> str:
    lines = item.render().split("\n")
    colour = _COLOURS[item.severity]
    head = lines[0]
    if item.code:
        head = head.replace(f" {item.code} ", f" {colour}{_BOLD}{item.code}{_RESET} ", 1)
    out = [f"{_BOLD}{head.split(': ', 1)[0]}{_RESET}: {head.split(': ', 1)[1]}" if ": " in head else head]
    for line in lines[1:]:
        if line.strip().startswith("^"):
            out.append(f"{colour}{line}{_RESET}")
        elif line.startswith("  hint: "):
            out.append(f"  {_CYAN}hint:{_RESET} {line[len('  hint: '):]}")
        else:
            out.append(f"{_DIM}{line}{_RESET}")
    return "\n".join(out)


def _position(item: Diagnostic) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    span = item.span
    if span is None or span.line <= 0:
        return None, None
    end_line = span.end_line if span.end_line >= span.line else span.line
    end_column = span.end_column if (span.end_column > span.column or end_line > span.line) else span.column + 1
    return {"line": span.line, "column": span.column}, {"line": end_line, "column": end_column}


def format_json(result: LintResult) -> str:
    """An array of findings: code, name, severity, message, file, start and end (or null),
    hint, JSON pointer and doc anchor, and ``fix`` (start, end exclusive, replacement) where
    the finding has a machine-applicable one."""
    items: list[dict[str, Any]] = []
    for item in result.findings:
        rule = get_rule(item.code)
        start, end = _position(item)
        items.append({
            "code": item.code,
            "name": rule.name if rule is not None else None,
            "severity": item.severity.value,
            "message": item.message,
            "file": item.span.file if item.span is not None else None,
            "start": start,
            "end": end,
            "hint": item.hint,
            "pointer": item.pointer,
            "doc": rule.anchor if rule is not None else None,
        })
        fix = getattr(item, "fix", None)
        if fix is not None:  # only where there is one, so other findings keep their shape
            items[-1]["fix"] = {
                "start": {"line": fix.span.line, "column": fix.span.column},
                "end": {"line": fix.span.end_line, "column": fix.span.end_column},
                "replacement": fix.replacement,
            }
    return json.dumps(items, indent=2, ensure_ascii=False) + "\n"


def tool_version() -> str:
    """The package's single-sourced version, for ``tool.driver.version``."""
    return __version__


def format_sarif(result: LintResult, *, doc_url: str = DOCS_URL) -> str:
    """A SARIF 2.1.0 log for GitHub code scanning. ``doc_url`` is where the rule table is
    published (``helpUri`` is ``<doc_url>#pl101``); it must be an absolute URL, as SARIF
    requires of ``helpUri``, else :class:`UsageError`."""
    check_doc_url(doc_url)
    rules = list(result.rules)
    index = {rule.code: i for i, rule in enumerate(rules)}
    results = [_sarif_result(item, index) for item in result.findings]
    version = tool_version()
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "policy-lint",
                "version": version,
                "informationUri": doc_url,
                "rules": [_sarif_rule(rule, doc_url) for rule in rules],
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


def check_doc_url(url: str) -> None:
    """Raise :class:`UsageError` unless ``url`` is an absolute URL, as SARIF needs of
    ``helpUri``."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not (parts.netloc or parts.scheme == "file") or any(c.isspace() for c in url):
        raise UsageError(f"`{url}` is not an absolute URL, which SARIF needs for `helpUri` "
                         "(such as `https://host/path/README.md`)")


def _sarif_rule(rule: Rule, doc_url: str) -> dict[str, Any]:
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": " ".join(rule.what.split())},
        "help": {"text": rule.doc, "markdown": _help_markdown(rule)},
        "helpUri": f"{doc_url}#{rule.code.lower()}",
        "defaultConfiguration": {"level": _SARIF_LEVELS[rule.severity]},
        "properties": {"tags": ["policy-lint", rule.code[:3]]},
    }


def _help_markdown(rule: Rule) -> str:
    example = "\n".join(f"    {line}" for line in rule.example.splitlines())
    return f"{' '.join(rule.what.split())}\n\n**Why it matters.** {' '.join(rule.why.split())}\n\n**Example**\n\n{example}"


def _sarif_result(item: Diagnostic, index: dict[str, int]) -> dict[str, Any]:
    text = item.message if not item.hint else f"{item.message}\nhint: {item.hint}"
    out: dict[str, Any] = {
        "ruleId": item.code,
        "level": _SARIF_LEVELS[item.severity],
        "message": {"text": text},
    }
    if item.code in index:
        out["ruleIndex"] = index[item.code]
    if item.span is not None:
        start, end = _position(item)
        region: dict[str, int]
        if start is None or end is None:
            region = {"startLine": 1}  # a finding about the file as a whole
        else:
            region = {"startLine": start["line"], "startColumn": start["column"],
                      "endLine": end["line"], "endColumn": end["column"]}
        out["locations"] = [{"physicalLocation": {
            "artifactLocation": _artifact(item.span.file),
            "region": region,
        }}]
    if item.pointer is not None:
        out["properties"] = {"jsonPointer": item.pointer}
    return out


def _artifact(file: str) -> dict[str, str]:
    # A file name may hold spaces, `#` or `%`: percent-encode it, so the URI means that file.
    path = Path(file)
    if not path.is_absolute():
        return {"uri": urllib.parse.quote(PurePosixPath(*path.parts).as_posix()), "uriBaseId": "%SRCROOT%"}
    try:
        relative = path.relative_to(os.getcwd())
    except ValueError:
        return {"uri": path.as_uri()}
    return {"uri": urllib.parse.quote(PurePosixPath(*relative.parts).as_posix()), "uriBaseId": "%SRCROOT%"}


#: Formatter by ``--format`` name.
FORMATS: dict[str, Callable[[LintResult], str]] = {
    "text": format_text,
    "json": format_json,
    "sarif": format_sarif,
}
