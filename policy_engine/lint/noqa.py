"""``# noqa`` suppressions, and the findings about suppressions that suppress nothing.

Forms, in any linted file (``.policy``, ``plugin.yaml``, plugin ``.py``):

- ``# noqa`` at the end of a line suppresses every finding on that line;
- ``# noqa: PL101, PL3`` suppresses the listed codes (a code prefix names every code it
  starts);
- ``# policy-lint: noqa`` (optionally ``: CODES``) on one of the first
  :data:`FILE_LEVEL_LINES` lines suppresses findings in the whole file.

A finding whose span covers several lines may be suppressed on its first or its last line.
A suppression that suppresses nothing is reported as ``PL901``. In Python files only
``PL`` codes are ours: ``# noqa: E501`` belongs to other tools, and a bare ``# noqa`` there
suppresses our findings but is never reported as unused.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from .. import codes
from ..diagnostics import Diagnostic, Span, source_lines
from .findings import finding
from .rules import rules_matching

__all__ = ["FILE_LEVEL_LINES", "Suppression", "apply_suppressions", "find_suppressions"]

#: A file-level ``# policy-lint: noqa`` must be on one of the first this many lines.
FILE_LEVEL_LINES = 10

_FILE_LEVEL = re.compile(r"#\s*policy-lint:\s*noqa\b(?::\s*(?P<codes>[A-Za-z0-9_, \t]*))?", re.I)
_LINE_LEVEL = re.compile(r"#\s*noqa\b(?::\s*(?P<codes>[A-Za-z0-9_, \t]*))?", re.I)


@dataclass(frozen=True, slots=True)
class Suppression:
    """One noqa comment at ``line``; ``codes`` None suppresses every code."""

    file: str
    line: int
    column: int
    text: str
    codes: tuple[str, ...] | None
    file_level: bool
    report_unused: bool
    source_line: str

    def matches(self, code: str) -> str | None:
        """The listed code (or ``""`` for a bare noqa) that suppresses ``code``, if any."""
        if self.codes is None:
            return ""
        return next((c for c in self.codes if code.startswith(c)), None)


def find_suppressions(path: str, text: str, language: str) -> list[Suppression]:
    """The noqa comments of a file; ``language`` is ``policy``, ``yaml`` or ``python``."""
    comments = _python_comments(text) if language == "python" else _hash_comments(text, language)
    lines = source_lines(text, language)
    found: list[Suppression] = []
    for line, column, comment in comments:
        source = lines[line - 1] if line <= len(lines) else ""
        file_level = _FILE_LEVEL.search(comment)
        if file_level is not None:
            if line > FILE_LEVEL_LINES:
                continue
            codes = _codes(file_level.group("codes"), language)
            if codes == ():
                continue
            found.append(Suppression(path, line, column + file_level.start(), file_level.group(0).strip(),
                                     codes, True, language != "python" or codes is not None, source))
            continue
        match = _LINE_LEVEL.search(comment)
        if match is None:
            continue
        codes = _codes(match.group("codes"), language)
        if codes == ():
            continue  # only other tools' codes
        found.append(Suppression(path, line, column + match.start(), match.group(0).strip(), codes,
                                 False, language != "python" or codes is not None, source))
    return found


def _codes(raw: str | None, language: str) -> tuple[str, ...] | None:
    """None for a bare noqa; ``()`` when every code listed is another tool's (Python)."""
    if raw is None or not raw.strip():
        return None
    codes = tuple(c.upper() for c in re.split(r"[\s,]+", raw.strip()) if c)
    if language == "python":
        codes = tuple(c for c in codes if c.startswith("PL"))
    return codes


def _hash_comments(text: str, language: str) -> list[tuple[int, int, str]]:
    """``#`` comments outside quoted strings (policy strings use ``"``; YAML also ``'``,
    and there a ``#`` starts a comment only at the start or after white space)."""
    found: list[tuple[int, int, str]] = []
    for number, line in enumerate(source_lines(text, language), start=1):
        if "#" not in line:
            continue
        quote: str | None = None
        i = 0
        while i < len(line):
            char = line[i]
            if quote is not None:
                if char == "\\" and quote == '"':
                    i += 2
                    continue
                if char == quote:
                    quote = None
            elif char == '"' or (char == "'" and language == "yaml" and (i == 0 or not line[i - 1].isalnum())):
                quote = char
            elif char == "#" and (language != "yaml" or i == 0 or line[i - 1] in " \t"):
                found.append((number, i + 1, line[i:]))
                break
            i += 1
    return found


def _python_comments(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                found.append((token.start[0], token.start[1] + 1, token.string))
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # an unparsable file: its comments up to the error still count
    return found


def apply_suppressions(
    findings: Iterable[Diagnostic],
    suppressions: Sequence[Suppression],
    is_selected: Callable[[str], bool],
) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """Drop suppressed findings; return the rest and the ``PL901`` findings for unused
    suppressions (codes that are not selected are never reported as unused)."""
    by_line: dict[tuple[str, int], list[int]] = {}
    by_file: dict[str, list[int]] = {}
    for index, suppression in enumerate(suppressions):
        if suppression.file_level:
            by_file.setdefault(suppression.file, []).append(index)
        else:
            by_line.setdefault((suppression.file, suppression.line), []).append(index)
    used: dict[int, set[str]] = {}
    kept = [item for item in findings if not _suppressed(item, suppressions, by_line, by_file, used)]
    unused = [u for i, s in enumerate(suppressions) for u in _unused(s, used.get(i, set()), is_selected)]
    # A file-level suppression may silence the unused-noqa findings of its own file too.
    unused = [u for u in unused if not _suppressed(u, suppressions, {}, by_file, used)]
    return kept, unused


def _suppressed(
    item: Diagnostic,
    suppressions: Sequence[Suppression],
    by_line: dict[tuple[str, int], list[int]],
    by_file: dict[str, list[int]],
    used: dict[int, set[str]],
) -> bool:
    span = item.span
    if span is None:
        return False
    candidates = list(by_file.get(span.file, ()))
    if span.line > 0:
        candidates += by_line.get((span.file, span.line), [])
        if span.end_line > span.line:
            candidates += by_line.get((span.file, span.end_line), [])
    for index in candidates:
        matched = suppressions[index].matches(item.code)
        if matched is not None:
            used.setdefault(index, set()).add(matched)
            return True
    return False


def _unused(suppression: Suppression, used: set[str], is_selected: Callable[[str], bool]) -> list[Diagnostic]:
    if not suppression.report_unused:
        return []
    line = suppression.line
    span = Span(suppression.file, line, suppression.column, line, suppression.column + len(suppression.text))
    source = suppression.source_line
    if suppression.codes is None:
        if used:
            return []
        return [_finding(f"`{suppression.text}` suppresses nothing", span, "remove the comment", source)]
    unused = [c for c in suppression.codes if c not in used]
    reportable = [
        c for c in unused
        if not rules_matching([c]) or any(is_selected(r.code) for r in rules_matching([c]))
    ]
    if not reportable:
        return []
    unknown = [c for c in reportable if not rules_matching([c])]
    if unknown:
        hint = f"`{unknown[0]}` is no policy-lint code; `policy-lint --explain CODE` describes one"
    elif len(reportable) == len(suppression.codes):
        hint = "remove the comment"
    else:
        hint = "remove " + ", ".join(f"`{c}`" for c in reportable) + " from the comment"
    if len(reportable) == len(suppression.codes):
        message = f"`{suppression.text}` suppresses nothing"
    else:
        listed = ", ".join(f"`{c}`" for c in reportable)
        message = f"{listed} in `{suppression.text}` suppress{'es' if len(reportable) == 1 else ''} nothing"
    return [_finding(message, span, hint, source)]


def _finding(message: str, span: Span, hint: str, source_line: str) -> Diagnostic:
    return replace(finding(codes.UNUSED_NOQA, message, span, hint=hint), source_line=source_line)
