"""The fast path of :mod:`policy_engine.parser`: the simple statement shapes recognised without
the LALR parser, producing exactly the nodes (and spans) that the full parser produces.

Most statements of a real policy are simple: ``allow|deny plugin <who> to <permissions>
[on <patterns>]`` with at most one comparison (or bare operand) after ``when`` and after
``unless``, a ``policy`` header, a ``trust`` pin, a settings block. :func:`recognise` walks a file statement by statement; a statement it recognises
becomes its node here, and anything else (a condition with `and`, `or`, `not`, `in` or parentheses, an unusual spacing, a comment inside
a rule, a keyword used as a name, a shape added to the grammar later, any error) is handed
back as a :class:`Declined` region for the full parser. The recogniser is deliberately
narrow: it accepts only token sequences that the full parser reads the same way (every word
followed by whitespace, a comma, a brace, a comment or the end), and declining is always
correct, so every error message is the full parser's. ``tests/test_simple_parser.py``
checks on generated statements, valid and mutated, that whatever it accepts equals the full
parser's result, spans included.

It knows the grammar it was written for: :data:`GRAMMAR_SHA256` is the digest of
``grammar/policy.lark`` it matches, and :mod:`parser` uses it only while the shipped grammar
has that digest (a test fails when the grammar changes, so that the shapes here are
reviewed against it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import nodes
from .diagnostics import Span

__all__ = ["GRAMMAR_SHA256", "Declined", "recognise", "source_text", "unquote"]

GRAMMAR_SHA256 = "4694cd3bbff7f6f61ef43717e15f11c9721f386b6c1eb61acbdd51da4c0d1c98"


@dataclass(frozen=True, slots=True)
class Declined:
    """Text from ``start`` to ``end`` (offsets) for the full parser; it begins at ``line``,
    ``column``."""

    start: int
    end: int
    line: int
    column: int


_ESCAPE = re.compile(r"\\(.)")


def unquote(token: str) -> str:
    """A STRING token's value: quotes removed, ``\\n`` and ``\\t`` decoded, any other escaped
    character kept as itself."""
    if "\\" not in token:
        return token[1:-1]
    return _ESCAPE.sub(lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), token[1:-1])


def source_text(raw: str) -> str:
    """A rule's text for explanations: as written, whitespace runs made one space when it
    spans lines or holds a double space or a tab."""
    if "\n" not in raw and "  " not in raw and "\t" not in raw:
        return raw
    return " ".join(raw.split())


# The terminals, as in grammar/policy.lark (Lark's whitespace is common.WS).
_WS = r"[ \t\f\r\n]"
# The grammar's STRING, its loop unrolled (the same strings, and the same ends in any
# context: a string ends at its first unescaped quote), which Python's engine runs several
# times faster than an alternation tried at every character.
_STRING = r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_ACTION = r"(?:[a-z][a-z_]*:(?:\*|[a-z][a-z_]*)|\*)"
# What may follow the last token of a statement here: whitespace, a comment or the end.
_END = r"(?=[ \t\f\r\n#]|\Z)"
_LIST = rf"{_WS}*,{_WS}*"

_ATTRIBUTE = r"(?:plugin|context)\.[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_OPERAND = rf"(?:{_ATTRIBUTE}|{_STRING}|-?[0-9]+(?:\.[0-9]+)?|true|false)"
# A condition here is one operand or one comparison; anything more goes to the full parser.
_CONDITION = rf"{_OPERAND}(?:{_WS}+(?:==|!=|<=|>=|<|>){_WS}+{_OPERAND})?"
_RULE = re.compile(
    rf"(?:allow|deny){_WS}+plugin{_WS}+(?:\*|{_STRING}(?:{_LIST}{_STRING})*){_WS}+to{_WS}+"
    rf"{_ACTION}(?:{_LIST}{_ACTION})*(?:{_WS}+on{_WS}+{_STRING}(?:{_LIST}{_STRING})*)?"
    rf"(?:{_WS}+when{_WS}+{_CONDITION})?(?:{_WS}+unless{_WS}+{_CONDITION})?{_END}"
)
_RULE_PIECE = re.compile(rf'([ \t\f\r\n,]*)({_STRING}|[^ \t\f\r\n,"]+)')
_HEADER = re.compile(rf"policy{_WS}+({_STRING})(?:{_WS}+version{_WS}+([0-9]+))?{_END}")
_TRUST = re.compile(
    rf"trust{_WS}+plugin{_WS}+({_STRING}){_WS}+([A-Za-z_][A-Za-z0-9_\-]*){_WS}+({_STRING}){_END}")
_BLOCK_OPEN = re.compile(rf"(?:defaults|plugin{_WS}+({_STRING})){_WS}*\{{")
# Inside a block: whitespace, then one token (a STRING, punctuation, a word, a comment, or
# any other character, which declines).
_BLOCK_TOKEN = re.compile(rf'{_WS}*(?:({_STRING})|([{{}},])|([A-Za-z0-9_.%\-]+)|(#[^\n]*)|(.))', re.S)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_QUANTITY = re.compile(r"\d+(\.\d+)?([A-Za-z]+|%)?")
_GAP = re.compile(rf"(?:{_WS}+|#[^\n]*)*")
_COMMENT = re.compile(r"#[^\n]*")
# A statement starts at one of these words, preceded and followed by whitespace (or the
# text's start and end).
_STARTS = ("policy", "defaults", "plugin", "allow", "deny", "trust")
_START = re.compile(rf"(?:policy|defaults|plugin|allow|deny|trust)(?={_WS}|\Z)")
# The full parser's tokens, coarsely, to find where a declined statement ends.
_SCAN = re.compile(rf'{_STRING}|#[^\n]*|[{{}}]|[^ \t\f\r\n"#{{}}]+|"')
# Words of the grammar: never accepted here as a name.
_KEYWORDS = frozenset(
    "policy version defaults plugin allow deny to on when unless trust timeout limit warn max "
    "violation isolation degraded accept and or not in matches true false".split()
)
_SETTING_STARTS = frozenset({"timeout", "limit", "on", "isolation", "accept"})


class _Lines:
    """Line and column (from 1, as Lark counts them: ``\\n`` only) of offsets, cheapest when
    they increase."""

    __slots__ = ("text", "offset", "line", "line_start")

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0
        self.line = 1
        self.line_start = 0

    def at(self, offset: int) -> tuple[int, int]:
        if offset > self.offset:
            newlines = self.text.count("\n", self.offset, offset)
            if newlines:
                self.line += newlines
                self.line_start = self.text.rfind("\n", self.offset, offset) + 1
            self.offset = offset
        elif offset < self.offset:  # back to a declined statement's start: rare
            self.line -= self.text.count("\n", offset, self.offset)
            self.line_start = self.text.rfind("\n", 0, offset) + 1
            self.offset = offset
        return self.line, offset - self.line_start + 1


class _Decline(Exception):
    """The statement at hand is not one of the simple shapes."""


def recognise(text: str, file: str) -> tuple[list[nodes.Statement | Declined], list[nodes.Comment]]:
    """The statements of ``text`` in order, each a node or a :class:`Declined` region, and
    the comments outside the declined regions. Never raises for any text."""
    out: list[nodes.Statement | Declined] = []
    comments: list[nodes.Comment] = []
    lines = _Lines(text)
    size = len(text)
    pos = 0
    while True:
        gap_end = _GAP.match(text, pos).end()  # type: ignore[union-attr]  # matches empty
        if gap_end > pos and "#" in text[pos:gap_end]:
            for found in _COMMENT.finditer(text, pos, gap_end):
                line, column = lines.at(found.start())
                comments.append(nodes.Comment(found.group(), Span(file, line, column, line, column + len(found.group()))))
        pos = gap_end
        if pos >= size:
            break
        statement: nodes.Statement | None = None
        end = pos
        try:
            statement, end, block_comments = _statement(text, pos, file, lines)
        except _Decline:
            statement = None
        if statement is not None and _starts_statement(text, end):
            out.append(statement)
            comments.extend(block_comments)
            pos = end
            continue
        end = _declined_end(text, pos)
        line, column = lines.at(pos)
        previous = out[-1] if out else None
        if isinstance(previous, Declined) and previous.end == pos:
            out[-1] = Declined(previous.start, end, previous.line, previous.column)
        else:
            out.append(Declined(pos, end, line, column))
        pos = end
    return out, comments


def _starts_statement(text: str, end: int) -> bool:
    """Whether the end of the input or a statement's first word follows ``end`` (after
    whitespace and comments), so that nothing can continue the statement before it."""
    after = _GAP.match(text, end).end()  # type: ignore[union-attr]
    if after >= len(text):
        return True
    return after > end and _START.match(text, after) is not None


def _declined_end(text: str, start: int) -> int:
    """Where the next statement may start after the declined one at ``start``: the next
    statement word outside braces, preceded by whitespace, not the ``plugin`` of ``allow
    plugin``; the end of the text if none. Too early only costs speed: the full parser then
    fails on the piece and the whole file is parsed by it."""
    depth = 0
    previous = ""
    for found in _SCAN.finditer(text, start):
        word = found.group()
        at = found.start()
        if word == "{":
            depth += 1
        elif word == "}":
            depth = max(depth - 1, 0)
        elif (at > start and depth == 0 and word in _STARTS and text[at - 1] in " \t\f\r\n"
              and _START.match(text, at) is not None
              and not (word == "plugin" and previous in ("allow", "deny", "trust"))):
            return at
        if word[:1] != "#":
            previous = word
    return len(text)


def _statement(text: str, pos: int, file: str,
               lines: _Lines) -> tuple[nodes.Statement | None, int, list[nodes.Comment]]:
    first = text[pos]
    if text.startswith(("allow", "deny"), pos):
        match = _RULE.match(text, pos)
        if match is None:
            return None, pos, []
        return _rule(text, match, file, lines), match.end(), []
    if first == "t":
        match = _TRUST.match(text, pos)
        if match is None or match.group(2) in _KEYWORDS:
            return None, pos, []
        plugin_line, plugin_column = lines.at(pos)
        digest_line, digest_column = lines.at(match.start(3))
        end_line, end_column = lines.at(match.end())
        return nodes.Trust(
            unquote(match.group(1)), match.group(2), unquote(match.group(3)),
            Span(file, plugin_line, plugin_column, end_line, end_column),
            Span(file, digest_line, digest_column, digest_line, digest_column + len(match.group(3))),
        ), match.end(), []
    if first == "p" and text.startswith("policy", pos):
        match = _HEADER.match(text, pos)
        if match is None:
            return None, pos, []
        line, column = lines.at(pos)
        end_line, end_column = lines.at(match.end())
        version = int(match.group(2)) if match.group(2) is not None else None
        return nodes.Header(unquote(match.group(1)), version,
                            Span(file, line, column, end_line, end_column)), match.end(), []
    if first in "dp":
        return _block(text, pos, file, lines)
    return None, pos, []


def _rule(text: str, match: re.Match[str], file: str, lines: _Lines) -> nodes.Rule:
    start, end = match.span()
    raw = text[start:end]
    line, column = lines.at(start)
    pieces = _RULE_PIECE.findall(raw)
    # Where each word starts: on one line (the common case) by arithmetic as the words are
    # read, else from the offsets.
    starts: list[tuple[int, int]] | None = None
    if "\n" in raw:
        starts = []
        offset = start
        for separator, word in pieces:
            offset += len(separator)
            starts.append(lines.at(offset))
            offset += len(word)
    names: list[str] = []
    plugin_spans: list[Span] = []
    actions: list[nodes.ActionRef] = []
    patterns: list[nodes.PatternRef] | None = None
    conditions: dict[str, list[tuple[str, Span]]] = {}
    part = 0  # 0 effect, 1 `plugin`, 2 selector, 3 actions, 4 patterns, 5 a condition
    any_plugin = False
    clause: list[tuple[str, Span]] = []
    first_line = first_column = 0
    word = ""
    for index, (separator, word) in enumerate(pieces):
        if starts is None:
            column += len(separator)
        else:
            line, column = starts[index]
        if part == 2:
            if word == "to":
                part = 3
            elif word == "*":
                any_plugin = True
            else:
                names.append(unquote(word))
                plugin_spans.append(Span(file, line, column, line, column + len(word)))
        elif part >= 3 and (word == "when" or word == "unless"):
            part = 5
            clause = conditions[word] = []
        elif part == 4:
            assert patterns is not None
            patterns.append(nodes.PatternRef(unquote(word), Span(file, line, column, line, column + len(word))))
        elif part == 3:
            if word == "on":
                part = 4
                patterns = []
            else:
                actions.append(nodes.ActionRef(word, Span(file, line, column, line, column + len(word))))
        elif part == 5:
            clause.append((word, Span(file, line, column, line, column + len(word))))
        else:
            if part == 0:
                first_line, first_column = line, column
            part += 1
        if starts is None:
            column += len(word)
    if starts is None:
        column -= len(word)  # where the last word starts
    when = unless = None
    if "when" in conditions:
        when = _condition(conditions["when"], file)
    if "unless" in conditions:
        unless = _condition(conditions["unless"], file)
    return nodes.Rule(
        nodes.Effect.ALLOW if raw[0] == "a" else nodes.Effect.DENY,
        None if any_plugin else tuple(names),
        tuple(actions),
        None if patterns is None else tuple(patterns),
        when,
        unless,
        Span(file, first_line, first_column, line, column + len(word)),
        source_text(raw),
        tuple(plugin_spans),
    )


def _condition(words: list[tuple[str, Span]], file: str) -> nodes.Condition:
    """``operand`` or ``operand <comparator> operand``, as the full parser builds them."""
    left = _operand(*words[0])
    if len(words) == 1:
        return nodes.Truthy(left, words[0][1])
    first, last = words[0][1], words[2][1]
    return nodes.Compare(words[1][0], left, _operand(*words[2]),
                         Span(file, first.line, first.column, last.end_line, last.end_column))


def _operand(word: str, span: Span) -> nodes.Operand:
    if word[0] == '"':
        return nodes.Literal(unquote(word), span)
    if word == "true" or word == "false":
        return nodes.Literal(word == "true", span)
    if word[0] == "-" or word[0].isdigit():
        return nodes.Literal(float(word), span)
    root, *path = word.split(".")
    return nodes.Attribute(root, tuple(path), span)


def _block(text: str, pos: int, file: str,
           lines: _Lines) -> tuple[nodes.Statement | None, int, list[nodes.Comment]]:
    opening = _BLOCK_OPEN.match(text, pos)
    if opening is None:
        return None, pos, []
    plugin = unquote(opening.group(1)) if opening.group(1) is not None else None
    words: list[tuple[str, str, int]] = []  # kind, text, offset
    comments: list[tuple[str, int]] = []
    at = opening.end()
    while True:
        found = _BLOCK_TOKEN.match(text, at)
        if found is None:
            raise _Decline  # the end of the text inside the block
        at = found.end()
        string, punctuation, word, comment, other = found.groups()
        if comment is not None:
            comments.append((comment, found.start(4)))
            continue
        if other is not None or string is not None:
            raise _Decline
        if punctuation == "}":
            close = found.start(2)
            break
        if punctuation is not None:
            words.append(("punct", punctuation, found.start(2)))
            continue
        assert word is not None
        words.append(("word", word, found.start(3)))
    # Spans are taken in increasing offsets, as _Lines needs.
    line, column = lines.at(pos)
    settings: list[nodes.Setting] = []
    index = 0
    comment_index = 0
    block_comments: list[nodes.Comment] = []

    def comments_before(offset: int) -> None:
        nonlocal comment_index
        while comment_index < len(comments) and comments[comment_index][1] < offset:
            body, where = comments[comment_index]
            c_line, c_column = lines.at(where)
            block_comments.append(nodes.Comment(body, Span(file, c_line, c_column, c_line, c_column + len(body))))
            comment_index += 1

    def token_span(index: int) -> Span:
        _, body, where = words[index]
        comments_before(where)
        t_line, t_column = lines.at(where)
        return Span(file, t_line, t_column, t_line, t_column + len(body))

    def word_at(index: int) -> str:
        if index >= len(words) or words[index][0] != "word":
            raise _Decline
        return words[index][1]

    def name_at(index: int, keyword: str = "") -> str:
        found = word_at(index)
        if (found in _KEYWORDS and found != keyword) or _NAME.fullmatch(found) is None:
            raise _Decline
        return found

    def quantity_at(index: int) -> nodes.Quantity:
        found = word_at(index)
        if _QUANTITY.fullmatch(found) is None:
            raise _Decline
        return nodes.Quantity(found, token_span(index))

    while index < len(words):
        keyword = word_at(index)
        start = token_span(index)
        setting: nodes.Setting
        if keyword in ("timeout", "limit"):
            subject = name_at(index + 1)
            token_span(index + 1)
            value = quantity_at(index + 2)
            index += 3
            extra: dict[str, nodes.Quantity] = {}
            allowed = ["max"] if keyword == "timeout" else ["warn", "max"]
            while index < len(words) and words[index][0] == "word" and words[index][1] in allowed:
                label = words[index][1]
                allowed = allowed[allowed.index(label) + 1:]
                token_span(index)
                extra[label] = quantity_at(index + 1)
                index += 2
            last = extra.get("max") or extra.get("warn") or value
            end = last.span
            span = Span(file, start.line, start.column, end.end_line, end.end_column)
            if keyword == "timeout":
                setting = nodes.TimeoutSetting(subject, value, extra.get("max"), span)
            else:
                setting = nodes.LimitSetting(subject, value, extra.get("warn"), extra.get("max"), span)
        elif keyword == "on":
            if word_at(index + 1) != "violation":
                raise _Decline
            token_span(index + 1)
            action = name_at(index + 2, "warn")  # `on violation warn`: a name there
            end = token_span(index + 2)
            index += 3
            setting = nodes.ViolationSetting(action, Span(file, start.line, start.column, end.end_line, end.end_column))
        elif keyword == "isolation":
            mode = name_at(index + 1)
            end = token_span(index + 1)
            index += 2
            degraded = index < len(words) and words[index][:2] == ("word", "allow")
            if degraded:
                if word_at(index + 1) != "degraded":
                    raise _Decline
                token_span(index)
                end = token_span(index + 1)
                index += 2
            setting = nodes.IsolationSetting(mode, degraded,
                                             Span(file, start.line, start.column, end.end_line, end.end_column))
        elif keyword == "accept":
            names = [name_at(index + 1)]
            spans = [token_span(index + 1)]
            index += 2
            while index < len(words) and words[index][:2] == ("punct", ","):
                token_span(index)
                names.append(name_at(index + 1))
                spans.append(token_span(index + 1))
                index += 2
            end = spans[-1]
            setting = nodes.AcceptSetting(tuple(names), tuple(spans),
                                          Span(file, start.line, start.column, end.end_line, end.end_column))
        else:
            raise _Decline
        if index < len(words) and (words[index][0] != "word" or words[index][1] not in _SETTING_STARTS):
            raise _Decline
        settings.append(setting)
    comments_before(close)
    end_line, end_column = lines.at(close + 1)
    return nodes.SettingsBlock(plugin, tuple(settings), Span(file, line, column, end_line, end_column)), close + 1, block_comments
