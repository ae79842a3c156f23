"""Building findings: a finding is a :class:`~policy_engine.diagnostics.Diagnostic` whose
code is a lint rule's and whose severity is that rule's."""

from __future__ import annotations

from dataclasses import replace

from ..diagnostics import Diagnostic, Span, language_of, source_line, source_lines
from .rules import get_rule

__all__ = ["finding", "position", "recode", "snippet", "first_line_span"]


def finding(
    code: str,
    message: str,
    span: Span | None,
    *,
    hint: str | None = None,
    source: str | None = None,
    pointer: str | None = None,
) -> Diagnostic:
    """A finding of rule ``code``; ``source`` is the file's text, for the caret."""
    rule = get_rule(code)
    if rule is None:  # pragma: no cover - a programming error, caught by the tests
        raise KeyError(code)
    line = None
    if source is not None and span is not None and span.line > 0:
        line = source_line(source, span.line, language_of(span.file))
    return Diagnostic(message, span, hint, code=rule.code, severity=rule.severity,
                      source_line=line, pointer=pointer)


def recode(diagnostic: Diagnostic, code: str) -> Diagnostic:
    """``diagnostic`` (from the parser, compiler or manifest loader) as a finding of ``code``."""
    rule = get_rule(code)
    if rule is None:  # pragma: no cover - a programming error
        raise KeyError(code)
    return replace(diagnostic, code=rule.code, severity=rule.severity)


def position(d: Diagnostic) -> tuple[str, int, int, str, str]:
    """Sort key: file, line, column, code, message."""
    span = d.span
    if span is None:
        return ("", 0, 0, d.code, d.message)
    return (span.file, span.line, span.column, d.code, d.message)


def snippet(source: str, span: Span) -> str:
    """The text a span covers, on one line (whitespace runs collapsed)."""
    lines = source_lines(source, language_of(span.file))
    if not 1 <= span.line <= len(lines):
        return ""
    end_line = span.end_line if span.end_line >= span.line else span.line
    if end_line == span.line:
        end = span.end_column if span.end_column > span.column else len(lines[span.line - 1]) + 1
        return lines[span.line - 1][span.column - 1 : end - 1]
    parts = [lines[span.line - 1][span.column - 1 :]]
    parts.extend(lines[span.line : min(end_line - 1, len(lines))])
    if end_line <= len(lines):
        parts.append(lines[end_line - 1][: max(span.end_column - 1, 0)])
    return " ".join(" ".join(parts).split())


def first_line_span(source: str, span: Span) -> Span:
    """``span`` cut to the end of its first line, so a caret can underline it."""
    if span.end_line == span.line or span.line <= 0:
        return span
    line = source_line(source, span.line) or ""
    return Span(span.file, span.line, span.column, span.line, len(line.rstrip()) + 1)
