"""Bounded input: one table of caps, and the readers that enforce them before building anything.

Every reader of user input (policy files, manifests, and later test files and bundles) goes
through here, so that no input, whatever its shape, costs more than the caps allow:

- :data:`DEFAULT_LIMITS` is the one table of caps (:class:`InputLimits`);
- :func:`read_bounded_file` reads a regular file of at most a given size, refusing FIFOs,
  sockets and devices by ``stat`` before any open, so a read never blocks;
- :func:`check_text` caps the size and the line length of a text;
- :func:`load_yaml` and :func:`compose_yaml` parse YAML with PyYAML's safe loader, counting
  while composing: nesting depth, keys, items, scalar and number sizes, aliases and the
  nodes an alias-expanding walk would visit (the "billion laughs" are refused after a few
  thousand nodes, long before anything big is built).

A cap that is exceeded is an :class:`~policy_engine.errors.InputLimitError` whose
diagnostics say where (``file:line:col``), which cap and its value.
"""

# PyYAML's composer methods are untyped in its stubs.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingEndEvent, ScalarEvent, SequenceEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .diagnostics import Diagnostic, Span, source_line
from .errors import InputLimitError

__all__ = [
    "DEFAULT_LIMITS",
    "LIMIT_MESSAGE_PREFIX",
    "BoundedSafeLoader",
    "InputLimits",
    "check_text",
    "compose_yaml",
    "is_limit_diagnostic",
    "limit_diagnostic",
    "load_yaml",
    "read_bounded_file",
    "read_bounded_lines",
    "UndecodableLineError",
]

#: Every diagnostic about a cap starts with this, so tools can tell them apart.
LIMIT_MESSAGE_PREFIX = "input limit exceeded"


@dataclass(frozen=True, slots=True)
class InputLimits:
    """The caps on every input; the README's table of input limits lists each one.

    Sizes are in bytes (files) or characters (lines, scalars); counts are per file.
    """

    #: Bytes of one ``.policy`` file.
    policy_file_bytes: int = 512 * 1024
    #: Bytes of all the files of one policy set together.
    policy_set_bytes: int = 16 * 1024 * 1024
    #: ``.policy`` files in one policy set.
    policy_set_files: int = 1000
    #: Statements (rules, blocks, pins, headers) in one ``.policy`` file.
    policy_statements: int = 50_000
    #: Levels of a rule's condition tree (each ``and``, ``or``, ``not`` and test is one;
    #: parentheses group without adding one). Evaluation recurses at most this deep.
    condition_depth: int = 64
    #: ``and``/``or``/``not`` in one statement, counted before parsing (a long chain is a
    #: deep tree, and parsing it at all costs time).
    condition_operators: int = 1000
    #: Bytes of one manifest (``plugin.yaml``) or other YAML document.
    yaml_bytes: int = 256 * 1024
    #: Characters of one line, in policies and YAML.
    line_chars: int = 8192
    #: Nesting of YAML mappings and sequences.
    yaml_depth: int = 32
    #: YAML aliases (``*name``) in one document.
    yaml_aliases: int = 100
    #: Nodes a walk that expands every alias would visit (the alias fan-out).
    yaml_nodes: int = 20_000
    #: Characters of one YAML scalar.
    scalar_chars: int = 16 * 1024
    #: Characters of one YAML number (integer or float).
    number_digits: int = 40
    #: Keys of one YAML mapping.
    mapping_keys: int = 1000
    #: Items of one YAML sequence.
    sequence_items: int = 10_000
    #: Bytes of one decision log read back (``diff --replay``).
    log_bytes: int = 256 * 1024 * 1024
    #: Entries (non-empty lines) of one decision log read back.
    log_entries: int = 1_000_000
    #: Characters of one line of a decision log.
    log_line_chars: int = 64 * 1024
    #: Regular files in one plugin directory (the pin's digest covers every one).
    plugin_files: int = 10_000
    #: Bytes of all the files of one plugin directory together.
    plugin_bytes: int = 64 * 1024 * 1024
    #: Levels of directories below a plugin directory.
    plugin_depth: int = 32

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"input limit `{item.name}` must be a positive integer, got {value!r}")


#: The caps in force unless a caller passes others.
DEFAULT_LIMITS = InputLimits()


def limit_diagnostic(file: str, what: str, cap: str, value: int, *, line: int = 0, column: int = 0,
                     text: str | None = None) -> Diagnostic:
    """A diagnostic for an exceeded cap: where, what, which cap and its value."""
    span = Span(file, line, column, line, column + 1) if line > 0 else Span(file, 0, 0)
    shown = source_line(text, line) if text is not None and line > 0 else None
    if shown is not None and len(shown) > 200:
        shown = None  # a caret under a megabyte line helps nobody
    return Diagnostic(
        f"{LIMIT_MESSAGE_PREFIX}: {what} (the limit `{cap}` is {value:,})",
        span,
        "inputs are capped so that any file is answered in bounded time and memory; "
        "see the table of input limits in the README",
        source_line=shown,
    )


def is_limit_diagnostic(diagnostic: Diagnostic) -> bool:
    """Whether ``diagnostic`` reports an exceeded cap."""
    return diagnostic.message.startswith(LIMIT_MESSAGE_PREFIX)


# Files --------------------------------------------------------------------------------------


def describe_file_type(mode: int) -> str:
    """What a non-regular file is, in words (``a directory``, ``a named pipe (FIFO)``...)."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def read_bounded_file(path: str, max_bytes: int, *, cap: str) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``max_bytes``.

    Non-regular files are refused by ``stat`` before any open; the open itself uses
    ``O_NONBLOCK`` and ``O_NOFOLLOW`` on the resolved path, so a file swapped for a FIFO or
    a link in between still cannot block or redirect the read. Raises :class:`OSError`
    (with a reason in words as its ``strerror``) or :class:`InputLimitError`.
    """
    return read_bounded_file_resolved(path, max_bytes, cap=cap)[1]


def read_bounded_file_resolved(path: str, max_bytes: int, *, cap: str,
                               resolve: Callable[[str], str] = os.path.realpath) -> tuple[str, bytes]:
    """:func:`read_bounded_file`, with the resolved path it opened (``resolve`` is
    :func:`os.path.realpath` or one that answers the same, such as :func:`realpath_below`'s)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, f"it is {describe_file_type(info.st_mode)}, not a regular file")
    if info.st_size > max_bytes:
        raise InputLimitError([limit_diagnostic(
            path, f"the file has {info.st_size:,} bytes", cap, max_bytes)])
    resolved = resolve(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(resolved, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "it changed into something that is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:  # it grew since the stat
        raise InputLimitError([limit_diagnostic(path, f"the file has more than {max_bytes:,} bytes",
                                                cap, max_bytes)])
    return resolved, b"".join(chunks)


def realpath_below(root: str) -> Callable[[str], str]:
    """:func:`os.path.realpath` for the many files of one directory ``root``, which it
    resolves once: a path below it is resolved by looking up only its own components, and
    whenever one of them is a link (or the path is not plainly below ``root``) by
    :func:`os.path.realpath` itself. ``realpath(root/a/b)`` resolves ``root`` first and then
    keeps each component that is not a link as it is, so both answer the same."""
    base = os.path.realpath(root)
    prefix = os.path.join(root, "")

    def resolve(path: str) -> str:
        if not path.startswith(prefix):
            return os.path.realpath(path)
        current = base
        for part in path[len(prefix):].split("/"):
            if part in ("", ".", ".."):
                return os.path.realpath(path)
            current = os.path.join(current, part)
            if os.path.islink(current):
                return os.path.realpath(path)
        return current

    return resolve


class UndecodableLineError(ValueError):
    """A line of :func:`read_bounded_lines` is not UTF-8: its number and the byte (1-based)."""

    def __init__(self, line: int, byte: int) -> None:
        super().__init__(f"line {line} is not UTF-8 text (byte {byte})")
        self.line = line
        self.byte = byte


def read_bounded_lines(path: str, *, limits: InputLimits = DEFAULT_LIMITS) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-empty line of the regular file ``path`` (a log),
    within ``limits.log_bytes``, ``limits.log_entries`` and ``limits.log_line_chars``.

    Streams: at most one line is held at a time. Non-regular files are refused by ``stat``
    before any open. Raises :class:`OSError`, :class:`UndecodableLineError` for a line that
    is not UTF-8, or :class:`InputLimitError` naming the line.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, f"it is {describe_file_type(info.st_mode)}, not a regular file")
    if info.st_size > limits.log_bytes:
        raise InputLimitError([limit_diagnostic(path, f"the file has {info.st_size:,} bytes", "log_bytes",
                                                limits.log_bytes)])
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise OSError(errno.EINVAL, "it changed into something that is not a regular file")
        # A UTF-8 character is at most 4 bytes: reading 4x the cap (+1) bounds the line.
        line_bytes = 4 * limits.log_line_chars + 1
        number = entries = size = 0
        while True:
            raw = stream.readline(line_bytes)
            if not raw:
                return
            number += 1
            size += len(raw)
            if size > limits.log_bytes:  # it grew since the stat
                raise InputLimitError([limit_diagnostic(path, f"the file has more than {limits.log_bytes:,} bytes",
                                                        "log_bytes", limits.log_bytes, line=number, column=1)])
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UndecodableLineError(number, exc.start + 1) from None
            if len(text.rstrip("\r\n")) > limits.log_line_chars or not raw.endswith(b"\n") and len(raw) == line_bytes:
                raise InputLimitError([limit_diagnostic(
                    path, f"line {number} is longer than {limits.log_line_chars:,} characters", "log_line_chars",
                    limits.log_line_chars, line=number, column=limits.log_line_chars + 1)])
            text = text.strip()
            if not text:
                continue
            entries += 1
            if entries > limits.log_entries:
                raise InputLimitError([limit_diagnostic(
                    path, f"the log has more than {limits.log_entries:,} entries", "log_entries",
                    limits.log_entries, line=number, column=1)])
            yield number, text


# Text ---------------------------------------------------------------------------------------


def check_text(text: str, *, name: str, max_chars: int, cap: str,
               limits: InputLimits = DEFAULT_LIMITS) -> None:
    """Raise :class:`InputLimitError` if ``text`` is longer than ``max_chars`` characters or
    has a line longer than ``limits.line_chars``."""
    if len(text) > max_chars:
        raise InputLimitError([limit_diagnostic(name, f"the text has {len(text):,} characters",
                                                cap, max_chars)])
    if len(text) <= limits.line_chars or max(map(len, text.split("\n"))) <= limits.line_chars:
        return  # no line too long (found in C; the loop below names the first one)
    for number, length in _line_lengths(text):
        if length > limits.line_chars:
            raise InputLimitError([limit_diagnostic(
                name, f"line {number} has {length:,} characters", "line_chars", limits.line_chars,
                line=number, column=limits.line_chars + 1, text=text)])


def _line_lengths(text: str) -> Iterator[tuple[int, int]]:
    start = 0
    number = 1
    while True:
        end = text.find("\n", start)
        if end < 0:
            yield number, len(text) - start
            return
        yield number, end - start
        start = end + 1
        number += 1


# YAML ---------------------------------------------------------------------------------------

_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's ``SafeLoader`` that enforces :class:`InputLimits` while composing.

    Each node's expanded size (itself plus, recursively, its children, counting an alias as
    the whole node it names) is known as soon as the node is composed, so an alias bomb is
    refused when its running total crosses ``yaml_nodes``, long before any walk expands it.
    Set :attr:`input_name` and :attr:`limits` before composing (:func:`compose_yaml` does).
    """

    input_name: str = "<yaml>"
    limits: InputLimits = DEFAULT_LIMITS

    def _setup_bounds(self) -> None:
        if not hasattr(self, "_bounded_sizes"):
            self._bounded_sizes: dict[int, int] = {}
            self._bounded_depth = 0
            self._bounded_aliases = 0
            self._bounded_total = 0

    def _refuse(self, what: str, cap: str, node_or_mark: Any) -> InputLimitError:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        line = getattr(mark, "line", -1) + 1
        column = getattr(mark, "column", -1) + 1
        text = getattr(self, "_bounded_text", None)
        return InputLimitError([limit_diagnostic(
            self.input_name, what, cap, getattr(self.limits, cap), line=line, column=column, text=text)])

    def _count(self, node: Node, size: int) -> None:
        self._bounded_sizes[id(node)] = size
        self._bounded_total += 1
        if size > self.limits.yaml_nodes:
            raise self._refuse(f"this node expands to more than {self.limits.yaml_nodes:,} nodes "
                               "(aliases repeat what they name)", "yaml_nodes", node)

    def compose_node(self, parent: Node | None, index: Any) -> Any:
        self._setup_bounds()
        if self.check_event(AliasEvent):
            event = self.peek_event()
            self._bounded_aliases += 1
            if self._bounded_aliases > self.limits.yaml_aliases:
                raise self._refuse(f"more than {self.limits.yaml_aliases:,} aliases", "yaml_aliases",
                                   event.start_mark)
        elif not self.check_event(ScalarEvent):
            event = self.peek_event()
            self._bounded_depth += 1
            try:
                if self._bounded_depth > self.limits.yaml_depth:
                    raise self._refuse(f"nesting deeper than {self.limits.yaml_depth} levels",
                                       "yaml_depth", event.start_mark)
                node = super().compose_node(parent, index)
            finally:
                self._bounded_depth -= 1
            return node
        return super().compose_node(parent, index)

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        self._setup_bounds()
        event = self.peek_event()
        if isinstance(event, ScalarEvent) and len(event.value) > self.limits.scalar_chars:
            raise self._refuse(f"a scalar of {len(event.value):,} characters", "scalar_chars",
                               event.start_mark)
        node: ScalarNode = super().compose_scalar_node(anchor)
        if node.tag in _NUMBER_TAGS and len(node.value) > self.limits.number_digits:
            raise self._refuse(f"a number of {len(node.value):,} characters", "number_digits", node)
        self._count(node, 1)
        return node

    def compose_sequence_node(self, anchor: Any) -> SequenceNode:
        start_event = self.get_event()
        tag = start_event.tag
        if tag is None or tag == "!":
            tag = self.resolve(SequenceNode, None, start_event.implicit)
        node = SequenceNode(tag, [], start_event.start_mark, None, flow_style=start_event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        size = 1
        while not self.check_event(SequenceEndEvent):
            if len(node.value) >= self.limits.sequence_items:
                raise self._refuse(f"a sequence of more than {self.limits.sequence_items:,} items",
                                   "sequence_items", node)
            child = self.compose_node(node, len(node.value))
            node.value.append(child)
            size += self._size_of(child)
            self._check_size(node, size)
        node.end_mark = self.get_event().end_mark
        self._count(node, size)
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        start_event = self.get_event()
        tag = start_event.tag
        if tag is None or tag == "!":
            tag = self.resolve(MappingNode, None, start_event.implicit)
        node = MappingNode(tag, [], start_event.start_mark, None, flow_style=start_event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        size = 1
        while not self.check_event(MappingEndEvent):
            if len(node.value) >= self.limits.mapping_keys:
                raise self._refuse(f"a mapping of more than {self.limits.mapping_keys:,} keys",
                                   "mapping_keys", node)
            key = self.compose_node(node, None)
            value = self.compose_node(node, key)
            node.value.append((key, value))
            size += self._size_of(key) + self._size_of(value)
            self._check_size(node, size)
        node.end_mark = self.get_event().end_mark
        self._count(node, size)
        return node

    def _size_of(self, node: Node) -> int:
        # A node still being composed (a recursive alias to an ancestor) counts once here;
        # the constructor refuses the recursion itself.
        return self._bounded_sizes.get(id(node), 1)

    def _check_size(self, node: Node, size: int) -> None:
        if size > self.limits.yaml_nodes:
            raise self._refuse(f"this node expands to more than {self.limits.yaml_nodes:,} nodes "
                               "(aliases repeat what they name)", "yaml_nodes", node)


def bounded_loader(text: str, *, name: str, limits: InputLimits = DEFAULT_LIMITS,
                   loader: type[BoundedSafeLoader] = BoundedSafeLoader) -> BoundedSafeLoader:
    """A loader for ``text`` after :func:`check_text`; the caller disposes of it."""
    check_text(text, name=name, max_chars=limits.yaml_bytes, cap="yaml_bytes", limits=limits)
    instance = loader(text)
    instance.input_name = name
    instance.limits = limits
    instance._bounded_text = text  # type: ignore[attr-defined]
    return instance


class NotPlainError(Exception):
    """:func:`compose_plain_yaml` declines: libyaml's reading may differ from the bounded
    composer's here, so the caller reads the text again with :func:`bounded_loader`."""


def _same_index(start: Any, stop: Any) -> bool:
    return bool(start.index == stop.index)


def is_plain_yaml_text(text: str) -> bool:
    """Whether ``text`` is a shape libyaml reads exactly as PyYAML does: ASCII, no tabs, no
    carriage returns (positions count the same characters and lines in both)."""
    return text.isascii() and "\t" not in text and "\r" not in text


_CPARSER: Any = getattr(getattr(yaml, "_yaml", None), "CParser", None)


class _LibyamlComposer(_CPARSER or object, yaml.resolver.Resolver):  # type: ignore[misc]
    """libyaml's parser and composer with PyYAML's own resolver (as ``yaml.CSafeLoader``)."""

    def __init__(self, text: str) -> None:
        _CPARSER.__init__(self, text)
        yaml.resolver.Resolver.__init__(self)


def has_libyaml() -> bool:
    """Whether PyYAML was built with libyaml."""
    return _CPARSER is not None and bool(getattr(yaml, "__with_libyaml__", False))


_SEQUENCE_START, _MAPPING_START = yaml.SequenceStartEvent, yaml.MappingStartEvent


def nesting_bound(text: str) -> int:
    """At least the nesting depth of the collections libyaml reads from the plain text
    ``text`` (see :func:`is_plain_yaml_text`), counted without reading it.

    Every collection opens at an indicator of its own: a flow collection at its `[` or `{`,
    a block sequence at its first `-` entry (followed by a space, a line break or the end), a
    mapping at the `:` or `?` of its first key; so the count of the characters that can be
    one bounds how many collections, let alone how deep. Out of a flow collection a `:` is an
    indicator only before a space, a line break or the end; in one (a single pair in a flow
    sequence, a JSON-like key), any `:` may be.
    """
    flow = text.count("[") + text.count("{")
    if flow:
        colons = text.count(":")
    else:
        colons = text.count(": ") + text.count(":\n") + text.endswith(":")
    dashes = text.count("- ") + text.count("-\n") + text.endswith("-")
    return flow + colons + dashes + text.count("?")


def _check_events(text: str, limits: InputLimits) -> None:
    """libyaml's events of ``text``: :class:`NotPlainError` for nesting deeper than the cap
    or an explicit tag (the two readers scan and resolve some tags differently)."""
    depth = 0
    for event in iter(_CPARSER(text).get_event, None):
        kind = event.__class__
        if kind is ScalarEvent:
            if event.tag is not None:
                raise NotPlainError("an explicit tag")
        elif kind is _SEQUENCE_START or kind is _MAPPING_START:
            depth += 1
            if depth > limits.yaml_depth:
                raise NotPlainError("deep nesting")
            if event.tag is not None:
                raise NotPlainError("an explicit tag")
        elif kind is SequenceEndEvent or kind is MappingEndEvent:
            depth -= 1


def compose_plain_yaml(text: str, *, limits: InputLimits = DEFAULT_LIMITS) -> Node | None:
    """The node tree of ``text``, composed by libyaml in C, or :class:`NotPlainError` when
    the fast reading might differ from :class:`BoundedSafeLoader`'s.

    For :func:`is_plain_yaml_text` texts that already passed :func:`bounded_loader` (size,
    line length, printable characters). Since libyaml's composer recurses in C, the nesting
    is bounded by ``yaml_depth`` before anything is composed: by :func:`nesting_bound` when
    the text has no `!`, else (or when that bound is over the cap) by a first pass over
    libyaml's events, which also declines explicit tags; the tree composed is then checked against every other
    cap the bounded composer counts, and declined with any alias (a node reached twice) or
    implicit empty scalar (the two readers place it differently), and so is a `?` with a
    flow collection, leaving those, and every message, to the bounded composer. The resolver and the constructor stay PyYAML's.
    """
    if not has_libyaml():
        raise NotPlainError("libyaml is not available")
    if "?" in text and ("[" in text or "{" in text):
        # In a flow collection PyYAML ends a plain scalar at `?`, libyaml does not.
        raise NotPlainError("a `?` and a flow collection")
    # libyaml's composer recurses without a limit (a few thousand levels overflow a thread's
    # stack); its parser keeps a stack instead, so its events bound the depth first, unless
    # the text itself does: no `!` (so no explicit tag) and too few indicators to nest deeper
    # than the cap (the pass costs about as much as composing).
    if "!" in text or nesting_bound(text) > limits.yaml_depth:
        _check_events(text, limits)
    root: Node | None = _LibyamlComposer(text).get_single_node()
    if root is None:
        return None
    # libyaml places the end of a text without a final line break on a line after it,
    # PyYAML at the end of the last line: the marks at the very end are PyYAML's here.
    end = len(text) if text and not text.endswith("\n") else -1
    line = text.count("\n")
    column = len(text) - (text.rfind("\n") + 1)
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise NotPlainError("an alias")  # the same node twice: its caps are the composer's
        seen.add(id(node))
        if end >= 0:
            mark = node.end_mark
            if mark.index == end and (mark.line, mark.column) != (line, column):
                node.end_mark = yaml.Mark(mark.name, end, line, column, None, None)  # type: ignore[arg-type]
            mark = node.start_mark
            if mark.index == end and (mark.line, mark.column) != (line, column):
                node.start_mark = yaml.Mark(mark.name, end, line, column, None, None)  # type: ignore[arg-type]
        value = node.value
        if node.__class__ is ScalarNode:
            if len(value) > limits.scalar_chars:
                raise NotPlainError("a long scalar")
            if node.tag in _NUMBER_TAGS and len(value) > limits.number_digits:
                raise NotPlainError("a long number")
            if not value and _same_index(node.start_mark, node.end_mark):
                raise NotPlainError("an implicit empty scalar")  # the two place it differently
        elif node.__class__ is MappingNode:
            if len(value) > limits.mapping_keys:
                raise NotPlainError("a large mapping")
            for key, item in value:
                stack.append(key)
                stack.append(item)
        else:
            if len(value) > limits.sequence_items:
                raise NotPlainError("a large sequence")
            stack.extend(value)
    if len(seen) > limits.yaml_nodes:
        raise NotPlainError("many nodes")
    return root


def compose_yaml(text: str, *, name: str, limits: InputLimits = DEFAULT_LIMITS) -> Node | None:
    """The node tree of the single YAML document ``text`` (None when empty), within the caps.

    Raises :class:`InputLimitError` for a cap and ``yaml.YAMLError`` for bad YAML.
    """
    loader = bounded_loader(text, name=name, limits=limits)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def load_yaml(text: str, *, name: str, limits: InputLimits = DEFAULT_LIMITS) -> Any:
    """``yaml.safe_load(text)`` within the caps: the one function every YAML reader calls.

    ``name`` (the file) is what diagnostics point at. Raises :class:`InputLimitError` for a
    cap and ``yaml.YAMLError`` for bad YAML.
    """
    loader = bounded_loader(text, name=name, limits=limits)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
