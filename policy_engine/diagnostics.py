"""Positions in source files and the diagnostics that point at them.

Every user-facing message of the project (syntax and compile errors, manifest errors, lint
findings) is a :class:`Diagnostic`. It renders the same way everywhere::

    policies/site.policy:12:24: unknown permission `file:raed`
        allow plugin * to file:raed on "/srv/**"
                          ^^^^^^^^^
      hint: did you mean `file:read`?
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace


class Severity(str, enum.Enum):
    """How bad a diagnostic is."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file; lines and columns count from 1."""

    file: str
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Fix:
    """A machine-applicable edit: replace the text of ``span`` (``end_column`` exclusive)
    with ``replacement``. Applied literally, it makes the text parse (tests check it)."""

    span: Span
    replacement: str

    def apply(self, text: str) -> str:
        """``text`` with the edit made."""
        start = _offset(text, self.span.line, self.span.column)
        end = _offset(text, self.span.end_line or self.span.line,
                      self.span.end_column or self.span.column)
        return text[:start] + self.replacement + text[end:]


def _offset(text: str, line: int, column: int) -> int:
    offset = 0
    for _ in range(line - 1):
        offset = text.index("\n", offset) + 1
    return offset + column - 1


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about one place: an error, a warning or a lint finding.

    ``pointer`` is the JSON pointer of the offending field when the source is a manifest.
    ``source_line`` is the text of the line the span starts on, kept so the message can be
    rendered with a caret long after the file is gone. ``fix``, when set, is the edit the
    hint describes, to apply by machine.
    """

    message: str
    span: Span | None = None
    hint: str | None = None
    code: str = ""
    severity: Severity = Severity.ERROR
    source_line: str | None = None
    pointer: str | None = None
    fix: Fix | None = None

    def with_code(self, code: str) -> Diagnostic:
        """Return a copy carrying a lint code."""
        return replace(self, code=code)

    @property
    def location(self) -> str:
        """``file:line:col`` (or ``file`` alone, or ``file#/pointer``)."""
        if self.span is None:
            return ""
        if self.span.line <= 0:
            where = self.span.file
            return f"{where}#{self.pointer}" if self.pointer is not None else where
        return str(self.span)

    def render(self, *, caret: bool = True) -> str:
        """Render as ``file:line:col: message``, the source line, a caret and the hint."""
        head = self.message
        if self.code:
            head = f"{self.code} {head}"
        if self.pointer is not None and self.span is not None and self.span.line > 0:
            head = f"{head} (at `{self.pointer or '/'}`)"
        text = f"{self.location}: {head}" if self.location else head
        lines = [text]
        if caret and self.span is not None and self.source_line is not None and self.span.line > 0:
            src = self.source_line.rstrip("\n").expandtabs(4)
            col = max(self.span.column, 1)
            width = 1
            if self.span.end_line == self.span.line and self.span.end_column > col:
                width = self.span.end_column - col
            width = max(1, min(width, max(1, len(src) - col + 1)))
            lines.append(f"    {src}")
            lines.append("    " + " " * (col - 1) + "^" * width)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


#: What ends a line in each kind of source, as the reader that gives the positions counts:
#: Lark counts ``\n`` alone; Python's tokenizer ``\r\n``, ``\r`` and ``\n``; YAML 1.1 (libyaml
#: and PyYAML) also NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR. ``str.splitlines`` splits on
#: more than any of them (form feed, U+2028 ...), which shows the wrong line.
_LINE_ENDS = {
    "policy": re.compile(r"\r?\n"),
    "python": re.compile(r"\r\n|\r|\n"),
    "yaml": re.compile("\r\n|[\r\n\x85\u2028\u2029]"),
}


def source_lines(text: str, language: str = "policy", *, keepends: bool = False) -> list[str]:
    """``text`` split into lines the way the reader of ``language`` (``policy``, ``python``
    or ``yaml``) numbers them; like ``str.splitlines``, no empty line after a final break."""
    lines: list[str] = []
    start = 0
    for end in _LINE_ENDS[language].finditer(text):
        lines.append(text[start:end.end() if keepends else end.start()])
        start = end.end()
    if start < len(text):
        lines.append(text[start:])
    return lines


def language_of(path: str) -> str:
    """The kind of source a file holds, by its name: ``python``, ``yaml`` or ``policy``."""
    if path.endswith((".py", ".pyi")):
        return "python"
    if path.endswith((".yaml", ".yml", ".json")):
        return "yaml"
    return "policy"


def source_line(text: str, line: int, language: str = "policy") -> str | None:
    """The 1-based ``line`` of ``text`` (numbered as :func:`source_lines` does), or None
    when out of range."""
    lines = source_lines(text, language)
    if 1 <= line <= len(lines):
        return lines[line - 1]
    return None


def did_you_mean(word: str, candidates: Iterable[str], *, quote: bool = True) -> str | None:
    """A ``did you mean`` hint for ``word`` among ``candidates``, or None."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not matches:
        return None
    return f"did you mean `{matches[0]}`?" if quote else f"did you mean {matches[0]}?"


def edit_distance(a: str, b: str) -> int:
    """The optimal-string-alignment distance: insertions, deletions, substitutions and
    transpositions of neighbours each count 1."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def closest_keyword(word: str, keywords: Iterable[str]) -> str | None:
    """The keyword ``word`` misspells: the same but for case, or within edit distance 2 (1
    for words of one or two letters); None when there is none or it is ``word`` itself."""
    best: tuple[int, str] | None = None
    lowered = word.lower()
    limit = 2 if len(word) >= 3 else 1
    for keyword in sorted(set(keywords)):
        if keyword == word:
            return None
        distance = 0 if keyword == lowered else edit_distance(lowered, keyword)
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, keyword)
    return best[1] if best else None


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    """Render several diagnostics separated by newlines."""
    return "\n".join(d.render() for d in diagnostics)
