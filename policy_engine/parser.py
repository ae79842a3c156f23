"""Text to syntax tree: Lark parses, this module turns its tree into :mod:`nodes` and its
exceptions into :class:`PolicySyntaxError` diagnostics. Lark's exceptions never escape."""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import codes, nodes
from .bounded import DEFAULT_LIMITS, InputLimits, check_text, limit_diagnostic
from .characters import ascii_lookalike, describe, invisible_characters
from .diagnostics import Diagnostic, Fix, Span, closest_keyword, source_line, source_lines
from .errors import InputLimitError, PolicySyntaxError
from .simple_parser import GRAMMAR_SHA256, Declined, recognise, source_text, unquote

__all__ = ["parse_policy", "parse_grant", "grammar_text"]

_MAX_ERRORS = 20

# Terminal names in words, for "expected ..." messages.
_WORDS: dict[str, str] = {
    "STRING": "a quoted string",
    "ACTION": "a permission such as `file:read`",
    "STAR": "`*`",
    "NAME": "a name",
    "QUANTITY": "a quantity such as `30s`, `500MB` or `80%`",
    "INT": "a whole number",
    "NUMBER": "a number",
    "ATTRIBUTE": "an attribute such as `plugin.type` or `context.env`",
    "COMPARATOR": "a comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`)",
    "TRUE": "`true`",
    "FALSE": "`false`",
    "ALLOW": "`allow`",
    "DENY": "`deny`",
    "DEGRADED": "`degraded`",
    "BARE_SCOPE": "a scope such as `/srv/data/**`",
    "$END": "the end of the input",
}
_STATEMENT_START = re.compile(r"^[ \t]*(policy|defaults|plugin|allow|deny|trust)\b", re.M)


def grammar_text() -> str:
    """The Lark grammar shipped with the package."""
    return resources.files("policy_engine").joinpath("grammar/policy.lark").read_text("utf-8")


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        start=["policy_file", "grant"],
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


def parse_policy(text: str, file: str = "<policy>", *, limits: InputLimits = DEFAULT_LIMITS) -> nodes.PolicyFile:
    """Parse a ``.policy`` file. Raises :class:`PolicySyntaxError` listing every syntax error.

    The text is checked against ``limits`` (size and line length before parsing, statements
    and condition depth before the tree is converted): an exceeded cap is a syntax error
    whose message starts with ``input limit exceeded``.
    """
    try:
        check_text(text, name=file, max_chars=limits.policy_file_bytes, cap="policy_file_bytes",
                   limits=limits)
    except InputLimitError as exc:
        raise PolicySyntaxError(exc.diagnostics) from None
    _check_operators(text, file, limits)
    fast = _fast_policy(text, file, limits)
    if fast is not None:
        return fast
    return _full_policy(text, file, limits)


@functools.lru_cache(maxsize=1)
def _is_fast_grammar() -> bool:
    # The simple statements' recogniser knows one grammar: any other turns it off.
    return hashlib.sha256(grammar_text().encode("utf-8")).hexdigest() == GRAMMAR_SHA256


def _fast_policy(text: str, file: str, limits: InputLimits) -> nodes.PolicyFile | None:
    """The file parsed with the simple statements recognised without Lark and the rest
    parsed by Lark piece by piece, each piece at its own line and column; None whenever
    anything is wrong (a syntax error, a limit, an invisible character, a non-ASCII plugin
    name), so that the full parse reports it exactly as it always has."""
    if not _is_fast_grammar() or limits.condition_depth < 1 or invisible_characters(text):
        return None
    pieces, comments = recognise(text, file)
    statements: list[nodes.Statement] = []
    found: list[nodes.Comment] = list(comments)
    for piece in pieces:
        if not isinstance(piece, Declined):
            statements.append(piece)
            continue
        window = "\n" * (piece.line - 1) + " " * (piece.column - 1) + text[piece.start:piece.end]
        tokens: list[Token] = []
        try:
            tree = _parse(window, "policy_file", tokens)
            _check_tree(tree, window, file, limits)
        except (UnexpectedInput, PolicySyntaxError):
            return None
        statements.extend(_statement(child, window, file) for child in tree.children if isinstance(child, Tree))
        found.extend(nodes.Comment(str(c), _token_span(c, file)) for c in tokens)
        if len(statements) > limits.policy_statements:
            return None
    if len(statements) > limits.policy_statements or _plugin_name_errors(statements, text):
        return None
    if len(found) > len(comments):
        found.sort(key=lambda c: (c.span.line, c.span.column))
    return nodes.PolicyFile(path=file, source=text, statements=tuple(statements), comments=tuple(found))


def _full_policy(text: str, file: str, limits: InputLimits) -> nodes.PolicyFile:
    """The whole file through Lark, collecting every syntax error (the error path)."""
    comments: list[Token] = []
    errors: list[Diagnostic] = []
    statements: list[nodes.Statement] = []
    offset_text = text
    while True:
        comments_here: list[Token] = []
        try:
            tree = _parse(offset_text, "policy_file", comments_here)
        except UnexpectedInput as exc:
            errors.append(_diagnostic(exc, text, file))
            restart = _next_statement(text, exc)
            if restart is None or len(errors) >= _MAX_ERRORS:
                break
            # Blank out what came before so that positions stay those of the real file.
            offset_text = re.sub(r"[^\n]", " ", text[:restart]) + text[restart:]
            continue
        comments.extend(comments_here)
        if not errors:
            _check_tree(tree, text, file, limits)
            statements = [
                _statement(child, text, file) for child in tree.children if isinstance(child, Tree)
            ]
            errors.extend(_plugin_name_errors(statements, text))
        break
    # Invisible characters are reported whatever else is wrong, and first: they explain
    # errors that the text as displayed cannot.
    errors = _invisible(text, file) + errors
    if errors:
        raise PolicySyntaxError(errors)
    return nodes.PolicyFile(
        path=file,
        source=text,
        statements=tuple(statements),
        comments=tuple(
            nodes.Comment(str(c), _token_span(c, file)) for c in comments
        ),
    )


_OPERATOR_SCAN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\b(?:and|or|not)\b|\(|^[ \t]*(?:policy|defaults|plugin|allow|deny|trust)\b',
    re.M,
)


_OPERATOR_WORDS = re.compile(r"\b(?:and|or|not)\b")


def _check_operators(text: str, file: str, limits: InputLimits) -> None:
    """Count ``and``/``or``/``not`` and ``(`` per statement before Lark sees the text (one
    pass in C): parentheses add no depth to the tree, but parsing 50,000 of them costs more
    than a second."""
    if text.count("(") + len(_OPERATOR_WORDS.findall(text)) <= limits.condition_operators:
        return  # fewer in the whole file (strings and comments too) than one statement may hold
    count = 0
    for match in _OPERATOR_SCAN.finditer(text):
        word = match.group()
        if word in ("and", "or", "not", "("):
            count += 1
            if count > limits.condition_operators:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                raise PolicySyntaxError([limit_diagnostic(
                    file, f"more than {limits.condition_operators:,} `and`/`or`/`not`/`(` in one statement",
                    "condition_operators", limits.condition_operators, line=line, column=column, text=text)])
        elif word[:1] not in ('"', "#"):
            count = 0


def _check_tree(tree: Tree[Token], text: str, file: str, limits: InputLimits) -> None:
    """Statement count and condition depth, measured without recursion (a chain of 10,000
    ``and`` is a tree 10,000 deep, which the recursive conversion below must not see)."""
    statements = [c for c in tree.children if isinstance(c, Tree)]
    if len(statements) > limits.policy_statements:
        extra = _span(statements[limits.policy_statements], file)
        raise PolicySyntaxError([limit_diagnostic(
            file, f"{len(statements):,} statements", "policy_statements", limits.policy_statements,
            line=extra.line, column=extra.column, text=text)])
    stack: list[tuple[Tree[Token] | Token, int]] = [(c, 0) for c in statements]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        if node.data in _CONDITION_NODES:
            depth += 1
            if depth > limits.condition_depth:
                where = _span(node, file)
                raise PolicySyntaxError([limit_diagnostic(
                    file, f"a condition nested deeper than {limits.condition_depth} levels",
                    "condition_depth", limits.condition_depth, line=where.line, column=where.column,
                    text=text)])
        stack.extend((child, depth) for child in node.children)


_CONDITION_NODES = frozenset({"or_", "and_", "not_", "compare", "in_", "not_in", "matches", "truthy"})
# The common manifest entry: an action, then unquoted scopes of printable ASCII, one space
# apart, no quotes, commas, comments or escapes. Such text is split here without the LALR
# parser (most of a manifest's load otherwise); tests/test_fast_paths.py checks that the
# result equals the full parser's on every string this accepts.
_SIMPLE_GRANT = re.compile(r"(?:[a-z][a-z_]*:(?:\*|[a-z][a-z_]*)|\*)(?: [!$-+\--~]+)*")
_SIMPLE_SCOPE = re.compile(r"[!$-+\--~]+")


def fullmatch_simple_grant(text: str) -> re.Match[str] | None:
    """Whether ``text`` has the shape of the common manifest entry the grant fast path takes."""
    return None if len(text) > 1024 else _SIMPLE_GRANT.fullmatch(text)


def _simple_grant(text: str, file: str) -> nodes.Grant | None:
    if len(text) > 1024 or _SIMPLE_GRANT.fullmatch(text) is None:
        return None
    action, _, _ = text.partition(" ")
    refs = []
    for found in _SIMPLE_SCOPE.finditer(text, len(action)):
        start, end = found.span()
        refs.append(nodes.PatternRef(found.group(), Span(file, 1, start + 1, 1, end + 1)))
    return nodes.Grant(
        nodes.ActionRef(action, Span(file, 1, 1, 1, len(action) + 1)),
        tuple(refs),
        Span(file, 1, 1, 1, len(text) + 1),
    )


def parse_grant(text: str, file: str = "<manifest>") -> nodes.Grant:
    """Parse one manifest permission entry such as ``file:read {plugin_dir}/**``."""
    hidden = _invisible(text, file)
    if hidden:
        raise PolicySyntaxError(hidden)
    simple = _simple_grant(text, file)
    if simple is not None:
        return simple
    return _full_grant(text, file)


def _full_grant(text: str, file: str) -> nodes.Grant:
    try:
        tree = _parse(text, "grant", [])
    except UnexpectedInput as exc:
        raise PolicySyntaxError([_diagnostic(exc, text, file)]) from None
    action = _action(tree.children[0], file)
    scopes = tuple(
        nodes.PatternRef(_unquote(str(tok)) if tok.type == "STRING" else str(tok), _token_span(tok, file))
        for tok in tree.children[1:]
        if isinstance(tok, Token)
    )
    return nodes.Grant(action, scopes, _span(tree, file))


def _parse(text: str, start: str, comments: list[Token]) -> Tree[Token]:
    _comments.sink = comments
    try:
        return _lark().parse(text, start=start)
    finally:
        _comments.sink = None


class _CommentSink(threading.local):
    sink: list[Token] | None = None


_comments = _CommentSink()


def _collect_comment(token: Token) -> None:
    # Lark calls this for every comment it skips; the formatter and `noqa` need them.
    sink = _comments.sink
    if sink is not None:
        sink.append(token)


def _next_statement(text: str, exc: UnexpectedInput) -> int | None:
    """Where to resume after a syntax error: the next line that starts a statement."""
    line = getattr(exc, "line", None)
    if not isinstance(line, int) or line < 1:
        return None
    lines = source_lines(text, keepends=True)
    position = sum(len(x) for x in lines[:line])
    match = _STATEMENT_START.search(text, position)
    return match.start() if match else None


# Error messages --------------------------------------------------------------------------


def _describe_expected(expected: set[str] | frozenset[str]) -> str:
    words = []
    for name in sorted(expected):
        word = _WORDS.get(name)
        if word is None:
            word = _terminal_literal(name)
        if word and word not in words:
            words.append(word)
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


@functools.lru_cache(maxsize=256)
def _terminal_literal(name: str) -> str:
    for term in _lark().terminals:
        if term.name == name:
            value = term.pattern.value
            if term.pattern.type == "str":
                return f"`{value}`"
            return name.lower()
    return name.lower()


def _diagnostic(exc: UnexpectedInput, text: str, file: str) -> Diagnostic:
    line = getattr(exc, "line", 0) or 0
    column = getattr(exc, "column", 0) or 0
    hint: str | None = None
    fix: Fix | None = None
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        expected = set(exc.expected)
        if token.type == "$END":
            found = "the end of the input"
            line = line if line > 0 else len(source_lines(text)) or 1
        else:
            found = f"`{token}`"
        message = f"expected {_describe_expected(expected)}, found {found}"
        end = column + max(len(str(token)), 1) if token.type != "$END" else column + 1
        if token.type == "$END" or token.start_pos is None:
            hint, fix = _suggest(expected, "", text, len(text), file)
        else:
            # The lexer may stop inside a word (`tο` with a Greek omicron lexes `t`).
            word = _WORD.match(text, token.start_pos)
            found_word = str(token)
            if word and word.group().startswith(found_word):
                found_word = word.group()
            hint, fix = _suggest(expected, found_word, text, token.start_pos, file)
    elif isinstance(exc, UnexpectedCharacters):
        char = exc.char
        allowed = set(exc.allowed or ())
        if char == '"':
            message = "unterminated string"
            hint = 'close the string with `"` on the same line'
        else:
            message = f"unexpected character `{char}`"
            if allowed:
                message += f", expected {_describe_expected(allowed)}"
            position = exc.pos_in_stream or 0
            word = _WORD.match(text, position)
            hint, fix = _suggest(allowed, word.group() if word else char, text, position, file)
        end = column + 1
    elif isinstance(exc, UnexpectedEOF):
        message = f"unexpected end of input, expected {_describe_expected(set(exc.expected))}"
        lines = source_lines(text) or [""]
        line, column = len(lines), len(lines[-1]) + 1
        end = column + 1
    else:  # pragma: no cover - Lark has no other kinds
        message = "syntax error"
        end = column + 1
    if line <= 0:
        line, column = 1, 1
    return Diagnostic(
        message=message,
        span=Span(file, line, max(column, 1), line, end),
        hint=hint,
        code=codes.SYNTAX_ERROR,
        source_line=source_line(text, line),
        fix=fix,
    )


# What a suggestion looks at: the word at the error, and a number just before it.
_WORD = re.compile(r'[^\s",#{}()\[\]]+|\S')
_NUMBER_BEFORE = re.compile(r"\d+(\.\d+)?[ \t]+$")
_UNIT = re.compile(r"(ms|s|m|h|B|[kK]B|[MGT]B|[KMGT]iB|%)")
_SMART_QUOTES = "\u201c\u201d\u201e\u00ab\u00bb\uff02\u2018\u2019"
_KEYWORD = re.compile(r"[a-z]+")
# Hints that suggest no literal text; used when no edit can be offered.
_GENERAL_HINTS = {
    "STRING": "patterns and plugin names are quoted, such as `\"/srv/data/**\"` or `\"analytics\"`",
    "QUANTITY": "write a number with its unit, such as `30s`, `500MB` or `80%`",
}


def _suggest(expected: set[str], word: str, text: str, offset: int,
             file: str) -> tuple[str | None, Fix | None]:
    """A hint for the error at ``offset`` where ``word`` starts, and the edit it describes.

    The edit is offered only when applying it makes this statement parse; the hint then
    quotes its text literally. Otherwise the hint, if any, is general.
    """
    keywords = {w for w in (_terminal_literal(n).strip("`") for n in expected) if _KEYWORD.fullmatch(w)}
    candidates: list[tuple[str, int, int, str]] = []  # hint, start, end, replacement
    end = offset + len(word)
    if word and word[0] in _SMART_QUOTES:
        line_end = text.find("\n", offset)
        close = re.compile(f"[{_SMART_QUOTES}\"]")
        closing = close.search(text, offset + 1, len(text) if line_end < 0 else line_end)
        if closing is not None:
            inner = text[offset + 1:closing.start()].replace("\\", "\\\\").replace('"', '\\"')
            quoted = f'"{inner}"'
            candidates.append((f"typographic quotes do not quote: write `{quoted}`",
                               offset, closing.end(), quoted))
    plain = ascii_lookalike(word)
    if plain is not None:
        odd = next(c for c in word if not c.isascii())
        candidates.append((f"`{odd}` ({describe(odd)}) only looks like `{ascii_lookalike(odd)}`: "
                           f"write `{plain}`", offset, end, plain))
    number = _NUMBER_BEFORE.search(text, 0, offset)
    if number is not None and _UNIT.fullmatch(word) and "\n" not in number.group():
        joined = number.group().split()[0] + word
        candidates.append((f"the unit follows the number without a space: write `{joined}`",
                           number.start(), end, joined))
    keyword = closest_keyword(word, keywords) if _WORD.fullmatch(word) else None
    if keyword is not None:
        candidates.append((f"did you mean `{keyword}`?", offset, end, keyword))
    if (len(word) > 1 and "STRING" in expected and "ACTION" not in expected
            and word not in _KEYWORDS and word[0] not in _SMART_QUOTES and word.isascii()
            and _WORD.fullmatch(word)):
        candidates.append((f'patterns and plugin names are quoted: write `"{word}"`',
                           offset, end, f'"{word}"'))
    for hint, start, stop, replacement in candidates:
        if _parses_after(text, start, stop, replacement):
            return hint, Fix(_offset_span(text, start, stop, file), replacement)
    if "STRING" in expected and word in _KEYWORDS:
        if word == "to":
            return ("name the plugins before `to`: `*` for every plugin, or quoted names such "
                    "as `\"analytics\"`"), None
        return f"`{word}` is a keyword here, not a name: quoted names come first", None
    if "ACTION" in expected and re.fullmatch(r"[a-z_]+", word) and (offset == 0 or text[offset - 1].isspace()):
        return f"permissions are written `family:action`, such as `{word}:read`", None
    if expected == {"TO"}:
        return "rules read `allow|deny plugin <who> to <permissions> [on <patterns>]`", None
    for name, hint in _GENERAL_HINTS.items():
        if name in expected and word not in tuple(",{}()[]"):
            return hint, None
    return None, None


_KEYWORDS = frozenset(
    "policy version defaults plugin allow deny to on when unless trust timeout limit warn max "
    "violation isolation degraded and or not in matches true false".split()
)


def _parses_after(text: str, start: int, stop: int, replacement: str) -> bool:
    """Whether the statement around ``start`` parses once ``text[start:stop]`` is replaced."""
    begin = 0
    for match in _STATEMENT_START.finditer(text, 0, start + 1):
        begin = match.start()
    following = _STATEMENT_START.search(text, max(stop, text.find("\n", start) + 1 or stop))
    finish = following.start() if following else len(text)
    if finish < stop:
        finish = len(text)
    window = text[begin:start] + replacement + text[stop:finish]
    try:
        _parse(window, "policy_file", [])
    except UnexpectedInput:
        return False
    return True


def _offset_span(text: str, start: int, stop: int, file: str) -> Span:
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    end_line = text.count("\n", 0, stop) + 1
    end_column = stop - (text.rfind("\n", 0, stop) + 1) + 1
    return Span(file, line, column, end_line, end_column)


def _invisible(text: str, file: str) -> list[Diagnostic]:
    """Bidirectional controls and invisible characters, wherever they are (comments too)."""
    found = []
    for offset in invisible_characters(text)[:_MAX_ERRORS]:
        span = _offset_span(text, offset, offset + 1, file)
        found.append(Diagnostic(
            message=f"invisible character {describe(text[offset])}: the text does not read as "
                    "it runs",
            span=span,
            hint="remove it (bidirectional controls and zero-width characters are refused "
                 "everywhere in a policy)",
            code=codes.SYNTAX_ERROR,
            source_line=source_line(text, span.line),
            fix=Fix(span, ""),
        ))
    return found


def _plugin_name_errors(statements: list[nodes.Statement], text: str) -> list[Diagnostic]:
    """Plugin names are ASCII, as manifests require: a non-ASCII name never matches a plugin,
    so a deny rule naming it would deny nothing."""
    names: list[tuple[str, Span]] = []
    for statement in statements:
        if isinstance(statement, nodes.Rule) and statement.plugins is not None:
            names.extend(zip(statement.plugins, statement.plugin_spans, strict=False))
        elif isinstance(statement, (nodes.SettingsBlock, nodes.Trust)):
            plugin = statement.plugin
            if plugin is not None and not plugin.isascii():
                start = text.find('"', _offset_of(text, statement.span))
                end = text.find('"', start + 1) + 1
                names.append((plugin, _offset_span(text, start, end, statement.span.file)))
    errors = []
    for name, span in names:
        if name.isascii():
            continue
        odd = next(c for c in name if not c.isascii())
        plain = ascii_lookalike(name)
        hint = "plugin names are lowercase ASCII letters, digits, `-` and `_`, as in plugin.yaml"
        fix = None
        if plain is not None:
            hint = f"`{odd}` only looks like `{ascii_lookalike(odd)}`: write `\"{plain}\"`"
            fix = Fix(span, f'"{plain}"')
        errors.append(Diagnostic(
            message=f"plugin name `{name}` is not ASCII: it holds {describe(odd)}",
            span=span, hint=hint, code=codes.SYNTAX_ERROR, source_line=source_line(text, span.line),
            fix=fix,
        ))
    return errors


def _offset_of(text: str, span: Span) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[: span.line - 1]) + span.column - 1


# Tree to nodes ---------------------------------------------------------------------------


def _span(tree: Tree[Token], file: str) -> Span:
    meta = tree.meta
    if getattr(meta, "empty", True):
        return Span(file, 0, 0)
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token, file: str) -> Span:
    return Span(
        file,
        token.line or 0,
        token.column or 0,
        token.end_line or token.line or 0,
        token.end_column or token.column or 0,
    )


_unquote = unquote


def _source_text(text: str, tree: Tree[Token]) -> str:
    meta = tree.meta
    start = getattr(meta, "start_pos", None)
    end = getattr(meta, "end_pos", None)
    if start is None or end is None:
        return ""
    return source_text(text[start:end])


def _statement(tree: Tree[Token], text: str, file: str) -> nodes.Statement:
    kind = tree.data
    span = _span(tree, file)
    if kind == "header":
        name = _unquote(str(tree.children[0]))
        version = int(str(tree.children[1])) if len(tree.children) > 1 else None
        return nodes.Header(name, version, span)
    if kind in ("defaults", "plugin_block"):
        children = list(tree.children)
        plugin = None
        if kind == "plugin_block":
            plugin = _unquote(str(children.pop(0)))
        settings = tuple(_setting(child, file) for child in children if isinstance(child, Tree))
        return nodes.SettingsBlock(plugin, settings, span)
    if kind == "trust":
        plugin_tok, algo_tok, digest_tok = tree.children
        assert isinstance(digest_tok, Token)
        return nodes.Trust(
            _unquote(str(plugin_tok)),
            str(algo_tok),
            _unquote(str(digest_tok)),
            span,
            _token_span(digest_tok, file),
        )
    assert kind == "rule", kind
    return _rule(tree, text, file)


def _setting(tree: Tree[Token], file: str) -> nodes.Setting:
    kind = tree.data
    span = _span(tree, file)
    toks = [c for c in tree.children if isinstance(c, Token)]
    if kind in ("timeout_setting", "limit_setting"):
        name, value = toks[0], toks[1]
        extra: dict[str, nodes.Quantity] = {}
        for keyword, quantity in zip(toks[2::2], toks[3::2], strict=False):
            extra[keyword.type] = nodes.Quantity(str(quantity), _token_span(quantity, file))
        first = nodes.Quantity(str(value), _token_span(value, file))
        if kind == "timeout_setting":
            return nodes.TimeoutSetting(str(name), first, extra.get("MAX"), span)
        return nodes.LimitSetting(str(name), first, extra.get("WARN"), extra.get("MAX"), span)
    if kind == "violation_setting":
        return nodes.ViolationSetting(str(toks[0]), span)
    if kind == "accept_setting":
        return nodes.AcceptSetting(tuple(str(t) for t in toks), tuple(_token_span(t, file) for t in toks), span)
    assert kind == "isolation_setting", kind
    return nodes.IsolationSetting(str(toks[0]), len(toks) > 1, span)


def _rule(tree: Tree[Token], text: str, file: str) -> nodes.Rule:
    effect_token, selector, actions_tree, *rest = tree.children
    assert isinstance(selector, Tree) and isinstance(actions_tree, Tree)
    effect = nodes.Effect(str(effect_token))
    plugins: tuple[str, ...] | None
    plugin_spans: tuple[Span, ...] = ()
    if selector.data == "any_plugin":
        plugins = None
    else:
        toks = [t for t in selector.children if isinstance(t, Token)]
        plugins = tuple(_unquote(str(t)) for t in toks)
        plugin_spans = tuple(_token_span(t, file) for t in toks)
    actions = tuple(_action(a, file) for a in actions_tree.children if isinstance(a, Token))
    patterns: tuple[nodes.PatternRef, ...] | None = None
    when = unless = None
    for part in rest:
        assert isinstance(part, Tree)
        if part.data == "patterns":
            patterns = tuple(
                nodes.PatternRef(_unquote(str(t)), _token_span(t, file))
                for t in part.children
                if isinstance(t, Token)
            )
        elif part.data == "when_clause":
            when = _condition(part.children[0], file)
        elif part.data == "unless_clause":
            unless = _condition(part.children[0], file)
    return nodes.Rule(
        effect=effect,
        plugins=plugins,
        actions=actions,
        patterns=patterns,
        when=when,
        unless=unless,
        span=_span(tree, file),
        text=_source_text(text, tree),
        plugin_spans=plugin_spans,
    )


def _action(tree: Tree[Token] | Token, file: str) -> nodes.ActionRef:
    token = tree.children[0] if isinstance(tree, Tree) else tree
    assert isinstance(token, Token)
    return nodes.ActionRef(str(token), _token_span(token, file))


def _condition(tree: Tree[Token] | Token, file: str) -> nodes.Condition:
    assert isinstance(tree, Tree)
    kind = tree.data
    span = _span(tree, file)
    c = tree.children
    if kind == "or_":
        return nodes.Or(_condition(c[0], file), _condition(c[1], file), span)
    if kind == "and_":
        return nodes.And(_condition(c[0], file), _condition(c[1], file), span)
    if kind == "not_":
        return nodes.Not(_condition(c[0], file), span)
    if kind == "compare":
        return nodes.Compare(str(c[1]), _operand(c[0], file), _operand(c[2], file), span)
    if kind in ("in_", "not_in"):
        items = c[1]
        assert isinstance(items, Tree)
        values = tuple(_literal(x, file) for x in items.children if isinstance(x, Tree))
        return nodes.In(_operand(c[0], file), values, kind == "not_in", span)
    if kind == "matches":
        return nodes.Matches(_operand(c[0], file), _unquote(str(c[1])), span)
    if kind == "truthy":
        return nodes.Truthy(_operand(c[0], file), span)
    raise AssertionError(kind)  # pragma: no cover


def _operand(tree: Tree[Token] | Token, file: str) -> nodes.Operand:
    assert isinstance(tree, Tree)
    if tree.data == "attribute":
        token = tree.children[0]
        assert isinstance(token, Token)
        root, *path = str(token).split(".")
        return nodes.Attribute(root, tuple(path), _token_span(token, file))
    return _literal(tree, file)


def _literal(tree: Tree[Token] | Token, file: str) -> nodes.Literal:
    assert isinstance(tree, Tree)
    token = tree.children[0]
    assert isinstance(token, Token)
    span = _token_span(token, file)
    value: str | float | bool
    if token.type == "STRING":
        value = _unquote(str(token))
    elif token.type == "TRUE":
        value = True
    elif token.type == "FALSE":
        value = False
    else:
        value = float(token)
    return nodes.Literal(value, span)
