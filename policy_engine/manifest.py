"""Plugin manifests: ``plugin.yaml`` to :class:`PluginMetadata`, or every problem at once.

The stages, each feeding the next::

    bytes --UTF-8--> text --YAML nodes--> positions + data --JSON Schema--> shape problems
                                                          --fields-------> permission grammar,
                                                                           units, consistency

The schema (``schemas/plugin.schema.json``, package data) is the source of truth for the
shape of a manifest; this module adds what a schema cannot say: permission entries are
parsed with the policy grammar (:func:`~policy_engine.parser.parse_grant`), durations and
sizes with :mod:`~policy_engine.units`. Every problem becomes a :class:`Diagnostic` naming
the file, the JSON pointer of the field and, for YAML text, its line and column; all the
problems of one manifest are raised together as one :class:`ManifestError`, which is the
only exception these functions raise.
"""

from __future__ import annotations

import copy
import errno
import functools
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from .bounded import (
    DEFAULT_LIMITS,
    BoundedSafeLoader,
    NotPlainError,
    bounded_loader,
    check_text,
    compose_plain_yaml,
    is_plain_yaml_text,
    read_bounded_file_resolved,
)
from .diagnostics import Diagnostic, Span, did_you_mean, source_line, source_lines
from .errors import InputLimitError, ManifestError, PolicySyntaxError
from .nodes import Grant
from .parser import fullmatch_simple_grant, parse_grant
from .permissions import ACTION_SPELLINGS, Permission, expand_action
from .plugin_types import known_plugin_types
from .units import UnitError, parse_duration, parse_percent, parse_size

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_PATH",
    "DeclaredPermission",
    "PluginMetadata",
    "discover_manifests",
    "load_manifest",
    "load_manifests",
    "manifest_from_mapping",
    "parse_manifest",
    "plugin_schema",
]

#: The file name a plugin directory keeps its manifest in.
MANIFEST_NAME = "plugin.yaml"
#: The JSON Schema of manifests (a copy is published as ``schemas/plugin.schema.json``).
SCHEMA_PATH = Path(__file__).parent / "schemas" / "plugin.schema.json"

TIMEOUT_PHASES = ("init", "hook", "execute")
LIMIT_RESOURCES = ("memory", "cpu", "file_size")
EXTRA_FIELDS = ("author", "homepage", "tags", "requires_python")


# The data ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeclaredPermission:
    """One entry of a manifest's ``permissions``: what the plugin asks for, as written.

    ``scopes`` are the raw scope texts with quotes removed and templates such as
    ``{plugin_dir}`` not expanded; ``()`` asks for any resource. ``line`` and ``column``
    (1-based) locate the entry in the YAML file, or are 0 when the manifest had no text.
    """

    action: str
    permissions: frozenset[Permission]
    scopes: tuple[str, ...]
    text: str
    pointer: str
    line: int = 0
    column: int = 0


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PluginMetadata:
    """A plugin as its manifest describes it: identity, requested permissions and budgets.

    Everything here is *requested*; the policy decides what is granted. ``timeouts`` maps
    ``init``/``hook``/``execute`` to seconds; ``limits`` maps ``memory`` and ``file_size``
    to bytes and ``cpu`` to a fraction of one core (``0.5`` for ``50%``). ``extra`` holds the
    optional ``author``, ``homepage``, ``tags`` (a tuple) and ``requires_python`` that the
    manifest gave. The mappings are read-only.
    """

    name: str
    version: str
    type: str
    entry_point: str
    #: The plugin's directory, or None when the manifest came without one (text or a
    #: mapping given to :meth:`Engine.from_source <policy_engine.engine.Engine.from_source>`
    #: without ``plugin_paths``): then ``{plugin_dir}`` fills nothing and the plugin cannot run.
    plugin_path: Path | None
    description: str = ""
    enabled: bool = True
    permissions: tuple[DeclaredPermission, ...] = ()
    timeouts: Mapping[str, float] = field(default_factory=_empty, hash=False)
    limits: Mapping[str, float] = field(default_factory=_empty, hash=False)
    manifest_path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=_empty, hash=False)

    def __post_init__(self) -> None:
        # A caller may pass plain dicts and lists; keep the object immutable anyway.
        object.__setattr__(self, "permissions", tuple(self.permissions))
        for name in ("timeouts", "limits", "extra"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    @property
    def timeout_seconds(self) -> float | None:
        """The initialisation timeout the manifest asks for, in seconds (the older name)."""
        return self.timeouts.get("init")

    @property
    def attributes(self) -> dict[str, object]:
        """What policy conditions read as ``plugin.<attribute>``.

        ``name``, ``version``, ``type``, ``entry_point``, ``description``, ``enabled``,
        ``author`` (``""`` when not given) and ``tags`` (``()`` when not given).
        """
        return {
            "name": self.name,
            "version": self.version,
            "type": self.type,
            "entry_point": self.entry_point,
            "description": self.description,
            "enabled": self.enabled,
            "author": self.extra.get("author", ""),
            "tags": tuple(self.extra.get("tags", ())),
        }


# Entry points -----------------------------------------------------------------------------


def parse_manifest(
    text: str, *, file: str = MANIFEST_NAME, plugin_path: Path | None = None
) -> PluginMetadata:
    """Read a manifest from YAML ``text``; ``file`` names it in diagnostics.

    ``plugin_path`` defaults to the directory of ``file``. Raises :class:`ManifestError`
    listing every problem found.
    """
    return _from_text(text, file, _directory_of(file, plugin_path), None)


def load_manifest(path: str | os.PathLike[str]) -> PluginMetadata:
    """Read ``path``: a ``plugin.yaml`` file or the plugin directory that holds one.

    Diagnostics name the file as ``path`` was given; :attr:`PluginMetadata.plugin_path` and
    :attr:`PluginMetadata.manifest_path` are absolute. Raises :class:`ManifestError`.
    """
    file_path, manifest_path, raw = read_manifest_file(path)
    return manifest_from_bytes(raw, file_path, manifest_path)


def read_manifest_file(path: str | os.PathLike[str], *,
                       resolve: Callable[[str], str] = os.path.realpath) -> tuple[Path, Path, bytes]:
    """The first half of :func:`load_manifest`: the file as named, its absolute path and
    its bytes (bounded). ``resolve`` is :func:`os.path.realpath` or one that answers the same
    (:func:`~policy_engine.bounded.realpath_below`). Raises :class:`ManifestError`."""
    given = path if isinstance(path, Path) else Path(path)
    file_path = given
    try:
        if given.is_dir():
            file_path = given / MANIFEST_NAME
        resolved, raw = read_bounded_file_resolved(str(file_path), DEFAULT_LIMITS.yaml_bytes, cap="yaml_bytes",
                                                   resolve=resolve)
    except InputLimitError as exc:
        raise ManifestError(exc.diagnostics) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        hint = None
        if isinstance(exc, FileNotFoundError):
            hint = f"a plugin directory keeps its manifest in `{MANIFEST_NAME}`"
        raise ManifestError([Diagnostic(
            f"cannot read the manifest: {_reason(exc)}", Span(str(file_path), 0, 0), hint
        )]) from None
    return file_path, Path(resolved), raw  # the path opened: Path.resolve() of the file


def manifest_from_bytes(raw: bytes, file_path: Path, manifest_path: Path) -> PluginMetadata:
    """The second half of :func:`load_manifest`: what :func:`read_manifest_file` read, as a
    manifest. Raises :class:`ManifestError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError([_not_utf8(raw, exc, str(file_path))]) from None
    return _from_text(text, str(file_path), manifest_path.parent, manifest_path)


def manifest_from_mapping(
    data: Mapping[str, Any], *, file: str = "<manifest>", plugin_path: Path | None = None
) -> PluginMetadata:
    """Check already-loaded manifest data (from JSON, a test, an API) like a ``plugin.yaml``.

    Diagnostics carry the JSON pointer but no line. ``plugin_path`` defaults to the
    directory of ``file``. Raises :class:`ManifestError`.
    """
    source = _Source(file, None, {}, {}, {})
    return _build(data, source, [], _directory_of(file, plugin_path), None)


def discover_manifests(directory: str | os.PathLike[str]) -> tuple[Path, ...]:
    """The ``plugin.yaml`` files of a plugins directory, sorted.

    ``directory/plugin.yaml`` alone when ``directory`` is itself a plugin; otherwise the
    ``plugin.yaml`` of each immediate subdirectory that has one. Raises
    :class:`ManifestError` when ``directory`` cannot be listed.
    """
    root = Path(directory)
    if _holds_manifest(root):
        return (root / MANIFEST_NAME,)
    try:
        names = os.listdir(root)
    except (OSError, ValueError) as exc:
        raise ManifestError([Diagnostic(
            f"cannot list the plugins directory: {_reason(exc)}", Span(str(root), 0, 0)
        )]) from None
    # The paths differ only in the child's name, so they sort as the names do; a Path is
    # made for each manifest found, once.
    base = str(root)
    found = sorted(name for name in names if _holds_manifest_file(os.path.join(base, name, MANIFEST_NAME)))
    return tuple(root.joinpath(name, MANIFEST_NAME) for name in found)


def _holds_manifest(directory: Path) -> bool:
    return _holds_manifest_file(os.path.join(directory, MANIFEST_NAME))


# What Path.is_file takes for "no such file" rather than a failure.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def _holds_manifest_file(path: str) -> bool:
    """Whether ``path`` is a regular file (links followed), or cannot be looked at: an
    unreadable one (permission denied, say) is listed all the same, so that loading it
    reports why instead of the plugin silently going missing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        return exc.errno not in _ABSENT
    except ValueError:  # a NUL byte: no such file
        return False


def _reason(exc: Exception) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return reason.lower()


def load_manifests(
    directory: str | os.PathLike[str],
) -> tuple[tuple[PluginMetadata, ...], tuple[ManifestError, ...]]:
    """Load every manifest :func:`discover_manifests` finds: ``(loaded, errors)``.

    A bad manifest lands in ``errors`` and never stops the others. Two manifests may name
    the same plugin; telling them apart is the caller's business. Raises
    :class:`ManifestError` only when ``directory`` cannot be listed.
    """
    loaded: list[PluginMetadata] = []
    errors: list[ManifestError] = []
    for path in discover_manifests(directory):
        try:
            loaded.append(load_manifest(path))
        except ManifestError as exc:
            errors.append(exc)
    return tuple(loaded), tuple(errors)


def plugin_schema() -> dict[str, Any]:
    """A fresh copy of the manifest JSON Schema (draft 2020-12)."""
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def _directory_of(file: str, plugin_path: Path | None) -> Path:
    return _absolute(Path(plugin_path) if plugin_path is not None else Path(file).parent)


def _absolute(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop; the lexical absolute path still names it
        return path.absolute()


# Text to data, with positions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a manifest came from and where its fields are (empty maps for in-memory data)."""

    file: str
    text: str | None
    values: Mapping[str, Span]
    keys: Mapping[str, Span]
    scalars: Mapping[str, yaml.ScalarNode]

    def span(self, pointer: str, *, key: bool = False) -> Span:
        """The span of the field at ``pointer`` (its key's with ``key``), else of its
        nearest ancestor that has one, else a span without a line."""
        if key and pointer in self.keys:
            return self.keys[pointer]
        while pointer not in self.values and pointer:
            pointer = pointer.rsplit("/", 1)[0]
        return self.values.get(pointer, Span(self.file, 0, 0))

    def position(self, pointer: str) -> tuple[int, int]:
        """The line and column where the field at ``pointer`` starts, ``(0, 0)`` if unknown."""
        values = self.values
        if isinstance(values, _Spans):
            return values.start(pointer)
        where = values.get(pointer)
        return (where.line, where.column) if where is not None else (0, 0)

    def diagnostic(
        self, pointer: str, message: str, hint: str | None = None, *,
        span: Span | None = None, key: bool = False,
    ) -> Diagnostic:
        """A diagnostic about the field at ``pointer``."""
        where = span if span is not None else self.span(pointer, key=key)
        line = source_line(self.text, where.line, "yaml") if self.text is not None else None
        return Diagnostic(
            _printable(message),
            where,
            _printable(hint) if hint is not None else None,
            source_line=line,
            pointer=pointer,
        )

    def raw(self, pointer: str) -> str | None:
        """The scalar at ``pointer`` as written (``3.10``, which YAML reads as 3.1), if known."""
        node = self.scalars.get(pointer)
        return str(node.value) if node is not None else None

    def inside(self, pointer: str, inner: Span) -> Span:
        """Translate ``inner``, a span within the text of the string at ``pointer``, to the
        file, when the string is written on one line without escapes; else the field's span."""
        outer = self.span(pointer)
        node = self.scalars.get(pointer)
        if node is None or self.text is None or inner.line != 1:
            return outer
        raw = self.text[node.start_mark.index : node.end_mark.index]
        if "\n" in raw:
            return outer
        if raw == node.value:
            offset = 0
        elif raw[:1] in ("'", '"') and raw[1:-1] == node.value:
            offset = 1
        else:
            return outer
        start = outer.column + offset + inner.column - 1
        end = outer.column + offset + inner.end_column - 1 if inner.end_line == 1 else start + 1
        return Span(self.file, outer.line, start, outer.line, max(end, start + 1))


class _Loader(BoundedSafeLoader):
    """``yaml.safe_load`` semantics, with every failure to build a value reported at its node.

    PyYAML's constructors let Python's conversion errors through (``2024-13-45`` raises
    ValueError, an explicit ``!!timestamp x`` AttributeError); they become YAML errors here
    so that they carry a position like any other.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # any conversion failure: see the class docstring
            raise _conversion_error(node, exc) from None


class _Constructor(yaml.constructor.SafeConstructor):
    """:class:`_Loader`'s constructor alone, for a tree libyaml composed (no reader, scanner
    or parser to set up)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # as _Loader
            raise _conversion_error(node, exc) from None


_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"


def _construct_plain(node: yaml.Node, constructor: yaml.constructor.SafeConstructor) -> Any:
    """What ``constructor.construct_document(node)`` builds, for a tree without aliases (as
    libyaml's reader gives): strings, lists and mappings with string keys are built here,
    every other node, and a mapping with any other key, by the constructor itself."""
    tag = node.tag
    if node.__class__ is yaml.ScalarNode:
        if tag == _STR:
            return node.value
    elif node.__class__ is yaml.SequenceNode:
        if tag == _SEQ:
            return [_construct_plain(item, constructor) for item in node.value]
    elif tag == _MAP and all(key.__class__ is yaml.ScalarNode and key.tag == _STR for key, _ in node.value):
        return {key.value: _construct_plain(value, constructor) for key, value in node.value}
    return constructor.construct_document(node)


def _conversion_error(node: yaml.Node, exc: Exception) -> yaml.constructor.ConstructorError:
    kind = str(node.tag).rsplit(":", 1)[-1]
    shown = _show(node.value) if isinstance(node.value, str) else kind
    return yaml.constructor.ConstructorError(None, None, f"cannot read `{shown}` as a {kind}: {exc}", node.start_mark)


def _from_text(text: str, file: str, plugin_path: Path, manifest_path: Path | None) -> PluginMetadata:
    # A byte order mark is no content, and keeping it would shift the columns of line 1.
    data, source, early = _read_yaml(text.removeprefix("\ufeff"), file)
    return _build(data, source, early, plugin_path, manifest_path)


def _read_yaml(text: str, file: str) -> tuple[object, _Source, list[Diagnostic]]:
    """The document's data, where its fields are, and duplicate-key problems."""
    if is_plain_yaml_text(text):
        try:
            return _read_yaml_with(text, file, fast=True)
        except Exception:  # noqa: BLE001 - any failure is reported by the pure-Python reader
            pass
    return _read_yaml_with(text, file, fast=False)


def _read_yaml_with(text: str, file: str, *, fast: bool) -> tuple[object, _Source, list[Diagnostic]]:
    """:func:`_read_yaml` composed by libyaml (``fast``, plain texts; it may decline with
    :class:`~policy_engine.bounded.NotPlainError`) or by the bounded pure-Python composer."""
    loader: BoundedSafeLoader | None = None
    constructor: yaml.constructor.SafeConstructor
    try:
        if fast:
            # What bounded_loader checks first: the caps on size and lines, and PyYAML's
            # reader's refusal of unprintable characters (left to it to report).
            check_text(text, name=file, max_chars=DEFAULT_LIMITS.yaml_bytes, cap="yaml_bytes")
            if _NON_PRINTABLE.search(text):
                raise NotPlainError("an unprintable character")
            root = compose_plain_yaml(text)
            constructor = _Constructor()
        else:
            constructor = loader = bounded_loader(text, name=file, loader=_Loader)
            root = loader.get_single_node()
        if root is None:
            raise ManifestError([Diagnostic(
                "expected a mapping of manifest fields, found an empty document",
                Span(file, 1, 1),
                "a manifest needs at least `name`, `version`, `type` and `entry_point`",
                source_line=source_line(text, 1, "yaml"),
            )])
        source, early = _locate(root, file, text)
        data = _construct_plain(root, constructor) if fast else constructor.construct_document(root)
    except InputLimitError as exc:
        raise ManifestError(exc.diagnostics) from None
    except yaml.MarkedYAMLError as exc:
        raise ManifestError([_yaml_problem(exc, file, text)]) from None
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        raise ManifestError([Diagnostic(
            f"invalid YAML: unacceptable character `#x{exc.character:04x}`: {exc.reason}",
            Span(file, line, column, line, column + 1),
            "a manifest is plain text: remove control characters",
            source_line=source_line(text, line, "yaml"),
        )]) from None
    except yaml.YAMLError as exc:  # every other PyYAML error: no position to give
        raise ManifestError([Diagnostic(f"invalid YAML: {_one_line(str(exc))}", Span(file, 0, 0))]) from None
    except RecursionError:
        raise ManifestError([Diagnostic(
            "invalid YAML: the document is nested too deeply", Span(file, 0, 0),
            "a manifest needs only a few levels of nesting",
        )]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, source, early


_MERGE = "tag:yaml.org,2002:merge"
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE


def _locate(root: yaml.Node, file: str, text: str) -> tuple[_Source, list[Diagnostic]]:
    """Map the JSON pointer of every field to its span, and find duplicate keys (which
    PyYAML silently resolves to the last one: in a permission manifest that hides intent)."""
    values: dict[str, yaml.Node] = {}
    keys: dict[str, yaml.Node] = {}
    scalars: dict[str, yaml.ScalarNode] = {}
    duplicates: list[tuple[str, Span, Span]] = []
    seen: set[int] = set()
    stack: list[tuple[str, yaml.Node]] = [("", root)]
    while stack:
        pointer, node = stack.pop()
        values[pointer] = node
        if isinstance(node, yaml.ScalarNode):
            scalars[pointer] = node
        # An alias is the same node object again: descending twice would repeat work
        # exponentially (the "billion laughs") or forever (a recursive alias).
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                    continue
                name = key_node.value
                child = f"{pointer}/{_escape(name) if '~' in name or '/' in name else name}"
                identity = (str(key_node.tag), str(key_node.value))
                if identity in first:
                    duplicates.append((child, _node_span(key_node, file), _node_span(first[identity], file)))
                else:
                    first[identity] = key_node
                keys[child] = key_node
                stack.append((child, value_node))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((f"{pointer}/{index}", item))
    source = _Source(file, text, _Spans(file, values), _Spans(file, keys), scalars)
    problems = [
        source.diagnostic(
            pointer, f"duplicate field `{_unescape(pointer.rsplit('/', 1)[1])}`",
            f"YAML keeps only the last one; the first is on line {earlier.line}",
            span=span,
        )
        for pointer, span, earlier in duplicates
    ]
    return source, problems


class _Spans(Mapping[str, Span]):
    """JSON pointer to span, each span made when asked for (most never are)."""

    __slots__ = ("_file", "_nodes")

    def __init__(self, file: str, nodes: Mapping[str, yaml.Node]) -> None:
        self._file = file
        self._nodes = nodes

    def __getitem__(self, pointer: str) -> Span:
        return _node_span(self._nodes[pointer], self._file)

    def start(self, pointer: str) -> tuple[int, int]:
        """The 1-based line and column of the span's start (``(0, 0)`` without one), without
        making the span."""
        node = self._nodes.get(pointer)
        if node is None:
            return 0, 0
        mark = node.start_mark
        return mark.line + 1, mark.column + 1

    def __contains__(self, pointer: object) -> bool:
        return pointer in self._nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)


def _node_span(node: yaml.Node, file: str) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(file, start.line + 1, start.column + 1, end.line + 1, end.column + 1)


def _yaml_problem(exc: yaml.MarkedYAMLError, file: str, text: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "the text is not valid YAML"
    context = exc.context or ""
    hint: str | None = None
    if context and not context.startswith("while "):
        # PyYAML splits some sentences in two ("expected a single document in the stream",
        # "but found another document").
        problem = f"{context}, {problem}"
    elif context and exc.context_mark is not None and exc.context_mark is not mark:
        what = context.split(" ", 2)[-1]
        hint = (f"inside {what} that starts at line {exc.context_mark.line + 1}, "
                f"column {exc.context_mark.column + 1}")
    problem = _backticks(problem)
    if "\\t" in problem:
        hint = "indent with spaces: YAML does not allow tabs there"
    elif "mapping values are not allowed" in problem:
        hint = "quote a value that contains `: `, or check the indentation"
    elif "another document" in problem:
        hint = "a manifest is one YAML document: remove the `---` line"
    elif isinstance(exc, yaml.constructor.ConstructorError):
        hint = "a manifest holds plain values: strings, numbers, booleans, lists and mappings"
    message = _printable(f"invalid YAML: {problem}")
    if mark is None:
        return Diagnostic(message, Span(file, 0, 0), hint)
    line, column = mark.line + 1, mark.column + 1
    return Diagnostic(
        message, Span(file, line, column, line, column + 1), _backticks(hint) if hint else None,
        source_line=source_line(text, line, "yaml"),
    )


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, file: str) -> Diagnostic:
    start = exc.start
    line = raw.count(b"\n", 0, start) + 1
    line_start = raw.rfind(b"\n", 0, start) + 1
    line_end = raw.find(b"\n", start)
    line_end = len(raw) if line_end < 0 else line_end
    column = len(raw[line_start:start].decode("utf-8", "replace").removeprefix("\ufeff")) + 1
    text = raw[line_start:line_end].decode("utf-8", "replace").removeprefix("\ufeff")
    return Diagnostic(
        f"expected UTF-8 text, found the byte `0x{raw[start]:02x}`",
        Span(file, line, column, line, column + 1),
        "save the manifest as UTF-8",
        source_line=text,
    )


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counting lines as YAML does."""
    lines = source_lines(text[:index], "yaml", keepends=True)
    if not lines:
        return 1, 1
    last = lines[-1]
    if source_lines(last, "yaml")[0] != last:  # it ends with a line break: the next starts
        return len(lines) + 1, 1
    return len(lines), len(last) + 1


# Data to metadata -------------------------------------------------------------------------


def _build(
    data: object,
    source: _Source,
    early: list[Diagnostic],
    plugin_path: Path,
    manifest_path: Path | None,
) -> PluginMetadata:
    shape = _schema_problems(data, source)
    if not isinstance(data, Mapping):
        raise ManifestError(_ordered([*early, *shape]))
    permissions, permission_problems = _permissions(data.get("permissions"), source)
    timeouts, timeout_problems = _timeouts(data, source)
    limits, limit_problems = _limits(data.get("limits"), source)
    fields = [*permission_problems, *timeout_problems, *limit_problems, *_type_problems(data, source)]
    # A field check knows more than the schema about the same value (the grammar's message,
    # the unit's hint): where both object, keep the field check's word.
    overruled = {d.pointer for d in fields}
    problems = [*early, *(d for d in shape if d.pointer not in overruled), *fields]
    if problems:
        raise ManifestError(_ordered(problems))
    extra: dict[str, Any] = {k: data[k] for k in EXTRA_FIELDS if k in data}
    if "tags" in extra:
        extra["tags"] = tuple(extra["tags"])
    return PluginMetadata(
        name=data["name"],
        version=data["version"],
        type=data["type"],
        entry_point=data["entry_point"],
        plugin_path=plugin_path,
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        permissions=permissions,
        timeouts=MappingProxyType(timeouts),
        limits=MappingProxyType(limits),
        manifest_path=manifest_path,
        extra=MappingProxyType(extra),
    )


def _type_problems(data: Mapping[str, Any], source: _Source) -> list[Diagnostic]:
    kind = data.get("type")
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", kind):
        return []  # the schema reports it
    known = known_plugin_types()
    if kind in known:
        return []
    return [source.diagnostic(
        "/type", f"unknown plugin type `{_show(kind)}`",
        did_you_mean(kind, known) or "plugin types are " + ", ".join(f"`{t}`" for t in known),
    )]


def _ordered(problems: Sequence[Diagnostic]) -> list[Diagnostic]:
    """Problems in file order, each once."""
    unique = {(d.pointer, d.message, d.span): d for d in problems}
    return sorted(unique.values(), key=_position)


def _position(d: Diagnostic) -> tuple[int, int, tuple[tuple[int, int, str], ...]]:
    # Within a line (or without lines), fields come in the schema's order, items by index.
    line = d.span.line if d.span is not None else 0
    column = d.span.column if d.span is not None else 0
    parts = (d.pointer or "").split("/")[1:]
    order = _field_order()
    key = tuple(
        (0, int(p), "") if re.fullmatch(r"[0-9]{1,18}", p) else (1, order.get(p, len(order)) if i == 0 else 0, p)
        for i, p in enumerate(parts)
    )
    return line, column, key


@functools.lru_cache(maxsize=1)
def _field_order() -> dict[str, int]:
    return {name: i for i, name in enumerate(_schema()["properties"])}


# The schema ---------------------------------------------------------------------------------


def _ecma_pattern(validator: Any, pattern: str, instance: object, schema: Any) -> Iterator[Any]:
    """``pattern`` as JSON Schema means it: ``$`` is the end of the string. Python's ``$``
    also matches before a final newline, which would let ``"analytics\\n"`` pass as a name."""
    if isinstance(instance, str) and not _compiled(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    base = jsonschema.Draft202012Validator
    # manifest_from_mapping takes any Mapping; tuples are lists to a Python caller.
    checker = base.TYPE_CHECKER.redefine_many({
        "object": lambda _checker, value: isinstance(value, Mapping),
        "array": lambda _checker, value: isinstance(value, (list, tuple)),
    })
    cls = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        base, {"pattern": _ecma_pattern}, type_checker=checker
    )
    return cls(_schema())


# A predicate compiled from the schema that says "valid" only when the full validator would
# find nothing: most manifests are checked by it alone, and any other answer runs the full
# validator, so every message is still the validator's. It understands the keywords the
# schema uses (numbers it takes only as `int` and `float`); a keyword it does not know makes
# the whole predicate decline, so a schema change cannot make it accept too much.
_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description", "examples", "default"})
_SIMPLE_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda value: isinstance(value, Mapping),
    "array": lambda value: isinstance(value, (list, tuple)),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "number": lambda value: type(value) in (int, float),
    "integer": lambda value: type(value) is int,
}


class _Unsupported(Exception):
    """Internal: the schema uses a keyword the quick check does not know."""


Check = Callable[[object], bool]


def _quick_check(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Check:
    checks = [_quick_keyword(keyword, value, schema, root)
              for keyword, value in schema.items() if keyword not in _ANNOTATIONS]
    if len(checks) == 1:
        return checks[0]

    def every(value: object) -> bool:
        for check in checks:
            if not check(value):
                return False
        return True

    return every


def _quick_keyword(keyword: str, value: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Check:
    if keyword == "type" and isinstance(value, str) and value in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[value]
    if keyword == "pattern":
        search = _compiled(value).search
        return lambda v: not isinstance(v, str) or search(v) is not None
    if keyword == "maxLength":
        return lambda v: not isinstance(v, str) or len(v) <= int(value)
    if keyword == "minLength":
        return lambda v: not isinstance(v, str) or len(v) >= int(value)
    if keyword == "exclusiveMinimum":
        return lambda v: type(v) in (int, float) and v > value
    if keyword == "items" and isinstance(value, Mapping):
        item = _quick_check(value, root)
        return lambda v: not isinstance(v, (list, tuple)) or all(map(item, v))
    if keyword == "required":
        names = tuple(value)
        return lambda v: not isinstance(v, Mapping) or all(name in v for name in names)
    if keyword == "additionalProperties" and value is False:
        known = frozenset(schema.get("properties", {}))
        return lambda v: not isinstance(v, Mapping) or known.issuperset(v)
    if keyword == "properties":
        inner = {name: _quick_check(sub, root) for name, sub in value.items()}

        def properties(v: object) -> bool:
            if not isinstance(v, Mapping):
                return True
            for name, item in v.items():
                check = inner.get(name)
                if check is not None and not check(item):
                    return False
            return True

        return properties
    if keyword == "anyOf":
        branches = [_quick_check(sub, root) for sub in value]
        return lambda v: any(branch(v) for branch in branches)
    if keyword == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
        return _quick_check(root["$defs"][value.removeprefix("#/$defs/")], root)
    raise _Unsupported(keyword)


@functools.lru_cache(maxsize=1)
def _quick_validator() -> Callable[[object], bool]:
    try:
        return _quick_check(_schema(), _schema())
    except _Unsupported:
        return lambda _value: False


def _schema_problems(data: object, source: _Source) -> list[Diagnostic]:
    if _quick_validator()(data):
        return []
    problems: list[Diagnostic] = []
    for error in _validator().iter_errors(data):
        path = tuple(error.absolute_path)
        pointer = _pointer(path)
        if error.validator == "required":
            for name in error.validator_value:
                if name not in error.instance:
                    problems.append(source.diagnostic(
                        f"{pointer}/{_escape(name)}",
                        f"missing required field `{name}`",
                        f"add `{name}: {_EXAMPLES.get(name, '...')}`",
                        span=source.span(pointer),
                    ))
        elif error.validator == "additionalProperties":
            known = list(error.schema.get("properties", {}))
            for name in error.instance:
                if name in known:
                    continue
                where = f" in `{_field(path)}`" if path else ""
                hint = did_you_mean(str(name), known) or (
                    "known fields: " + ", ".join(f"`{k}`" for k in known)
                )
                problems.append(source.diagnostic(
                    f"{pointer}/{_escape(name)}", f"unknown field `{_show(str(name))}`{where}", hint,
                    key=True,
                ))
        else:
            key = _field_key(path)
            raw = source.raw(pointer)
            found = _describe(error.instance, raw)
            if error.validator == "type" and isinstance(error.instance, str):
                found = f"the string {found}"  # `true` and `1.0` in quotes are not what they look
            advice = _HINTS[key](error.instance, raw) if key in _HINTS else None
            if (advice is None and error.validator == "type" and error.validator_value == "string"
                    and raw is not None and path and isinstance(path[-1], str)):
                advice = f'quote it: `{_show(path[-1])}: "{_show(raw)}"`'
            problems.append(source.diagnostic(
                pointer, f"expected {_EXPECTED.get(key, 'a valid value')}, found {found}", advice,
            ))
    return problems


# Permissions, durations, sizes ------------------------------------------------------------


def _permissions(value: object, source: _Source) -> tuple[tuple[DeclaredPermission, ...], list[Diagnostic]]:
    if not isinstance(value, (list, tuple)):
        return (), []  # the schema has reported it
    declared: list[DeclaredPermission] = []
    problems: list[Diagnostic] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str):
            continue
        pointer = f"/permissions/{index}"
        simple = _simple_entry(entry)
        if simple is not None:
            declared.append(DeclaredPermission(*simple, entry, pointer, *source.position(pointer)))
            continue
        try:
            grant = parse_grant(entry, source.file)
        except PolicySyntaxError as exc:
            for d in exc.diagnostics:
                inner = d.span or Span(source.file, 1, 1)
                problems.append(source.diagnostic(pointer, d.message, d.hint, span=source.inside(pointer, inner)))
            continue
        action = grant.action.text
        expanded = expand_action(action)
        found: list[Diagnostic] = []
        if expanded is None:
            found.append(source.diagnostic(
                pointer, f"unknown permission `{action}`",
                did_you_mean(action, ACTION_SPELLINGS)
                or "permissions are " + ", ".join(f"`{p.value}`" for p in Permission),
                span=source.inside(pointer, grant.action.span),
            ))
        elif action == "*" and grant.scopes:
            found.append(source.diagnostic(
                pointer, "expected no scopes after `*`, found "
                + ", ".join(f"`{_show(s.text)}`" for s in grant.scopes),
                "`*` spans paths, hosts and names at once; give each permission its own scopes, "
                "such as `file:* /srv/**`",
                span=source.inside(pointer, grant.scopes[0].span),
            ))
        spaced = _unquoted_space(entry, grant, expanded)
        if spaced is not None:
            joined, inner = spaced
            found.append(source.diagnostic(
                pointer, f"unquoted space in scope `{_show(joined)}`",
                f'quote a scope that contains a space: `{_show(action)} "{_show(joined)}"`; '
                "separate scopes are each absolute paths",
                span=source.inside(pointer, inner),
            ))
        comment = _comment_in(entry, grant) if "#" in entry else None
        if comment is not None:
            index_in_entry, word = comment
            line, column = _line_column(entry, index_in_entry)
            inner = Span(source.file, line, column, line, column + 1)
            hint = (f'quote a scope that contains `#`: `"{_show(word)}"`' if not word.startswith("#")
                    else "put YAML comments outside the entry")
            found.append(source.diagnostic(
                pointer, "unexpected `#` in a permission entry: it would start a comment",
                hint, span=source.inside(pointer, inner),
            ))
        if found or expanded is None:
            problems.extend(found)
            continue
        where = source.values.get(pointer)
        declared.append(DeclaredPermission(
            action=action,
            permissions=expanded,
            scopes=tuple(s.text for s in grant.scopes),
            text=entry,
            pointer=pointer,
            line=where.line if where is not None else 0,
            column=where.column if where is not None else 0,
        ))
    return tuple(declared), problems


# Entries repeat across manifests (`network:request`, `file:read /srv/**`): each is read once.
@functools.lru_cache(maxsize=1024)
def _simple_entry(entry: str) -> tuple[str, frozenset[Permission], tuple[str, ...]] | None:
    """The action, its permissions and the scope of the commonest entry: a known action and at
    most one scope, in the shape the grant fast path takes (printable ASCII without quotes,
    commas or `#`), which no check of :func:`_permissions` can object to. Else None: the
    entry takes the full path, which gives the same result for this shape (a test checks)."""
    if fullmatch_simple_grant(entry) is None:
        return None
    action, space, scope = entry.partition(" ")
    expanded = expand_action(action)
    if expanded is None or " " in scope or (space and action == "*"):
        return None
    return action, expanded, (scope,) if space else ()


def _unquoted_space(
    entry: str, grant: Grant, expanded: frozenset[Permission] | None
) -> tuple[str, Span] | None:
    """``file:read /srv/my data/**``: the scope the author meant and where it is, when an
    unquoted path scope is followed by a bare word that cannot start a path of its own (the
    grammar would read two scopes, ``/srv/my`` and ``data/**``)."""
    if len(grant.scopes) < 2 or expanded is None or not any(p.value.startswith("file:") for p in expanded):
        return None
    if "\n" in entry:
        return None
    scopes = grant.scopes
    for index in range(1, len(scopes)):
        word = scopes[index]
        start = word.span.column - 1
        if entry[start:start + 1] == '"' or word.text.startswith(("/", "{", "~")):
            continue
        first = index - 1
        while first > 0 and entry[scopes[first].span.column - 1] != '"' and not scopes[first].text.startswith(("/", "{")):
            first -= 1
        if entry[scopes[first].span.column - 1] == '"':
            continue
        last = index
        while (last + 1 < len(scopes) and entry[scopes[last + 1].span.column - 1] != '"'
               and not scopes[last + 1].text.startswith(("/", "{", "~"))):
            last += 1
        begin, end = scopes[first].span.column - 1, scopes[last].span.end_column - 1
        return entry[begin:end], Span(grant.span.file, 1, begin + 1, 1, end + 1)
    return None


def _comment_in(entry: str, grant: Grant) -> tuple[int, str] | None:
    """Where a ``#`` outside every token of ``entry`` is, and the word it is in: the grammar
    skips comments, so without this check ``/data#1`` would silently shrink to ``/data``."""
    starts = [0]  # where each line starts, counting lines as Lark does (by "\n")
    for line in entry.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    covered: list[tuple[int, int]] = []
    for span in (grant.action.span, *(s.span for s in grant.scopes)):
        if span.line >= 1 and span.line <= len(starts):
            begin = starts[span.line - 1] + span.column - 1
            end = starts[min(span.end_line, len(starts)) - 1] + span.end_column - 1
            covered.append((begin, end))
    for match in re.finditer("#", entry):
        at = match.start()
        if not any(begin <= at < end for begin, end in covered):
            left = len(entry[:at]) - len(re.split(r"\s", entry[:at])[-1])
            word = re.split(r"\s", entry[left:], maxsplit=1)[0]
            return at, word
    return None


def _timeouts(data: Mapping[str, Any], source: _Source) -> tuple[dict[str, float], list[Diagnostic]]:
    result: dict[str, float] = {}
    problems: list[Diagnostic] = []
    given = data.get("timeouts")
    init_text: object = None
    if isinstance(given, Mapping):
        init_text = given.get("init")
        for phase in TIMEOUT_PHASES:
            if phase in given:
                seconds = _quantity(given[phase], parse_duration, f"/timeouts/{phase}", "duration", source, problems)
                if seconds is not None:
                    result[phase] = seconds
    if "timeout_seconds" in data:
        legacy = _quantity(data["timeout_seconds"], parse_duration, "/timeout_seconds", "duration", source, problems)
        if legacy is not None and "init" in result and not math.isclose(legacy, result["init"]):
            problems.append(source.diagnostic(
                "/timeout_seconds",
                f"expected `timeout_seconds` to agree with `timeouts.init` "
                f"({_describe(init_text, source.raw('/timeouts/init'))}), "
                f"found {_describe(data['timeout_seconds'], source.raw('/timeout_seconds'))}",
                "remove `timeout_seconds`: `timeouts.init` replaces it",
            ))
        elif legacy is not None:
            result.setdefault("init", legacy)
    return result, problems


def _limits(given: object, source: _Source) -> tuple[dict[str, float], list[Diagnostic]]:
    result: dict[str, float] = {}
    problems: list[Diagnostic] = []
    if not isinstance(given, Mapping):
        return result, problems
    parsers: dict[str, tuple[Callable[[Any], float], str]] = {
        "memory": (parse_size, "size"),
        "file_size": (parse_size, "size"),
        "cpu": (parse_percent, "percentage"),
    }
    for resource in LIMIT_RESOURCES:
        if resource in given:
            parse, what = parsers[resource]
            amount = _quantity(given[resource], parse, f"/limits/{resource}", what, source, problems)
            if amount is not None:
                result[resource] = amount
    return result, problems


def _quantity(
    value: object,
    parse: Callable[[Any], float],
    pointer: str,
    what: str,
    source: _Source,
    problems: list[Diagnostic],
) -> float | None:
    """``value`` parsed, or None with the problem appended (or left to the schema when the
    value is not even a string or a number)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        amount = float(parse(value))
    except UnitError as exc:
        problems.append(source.diagnostic(pointer, str(exc), exc.hint))
        return None
    except (OverflowError, ValueError):
        problems.append(source.diagnostic(pointer, f"expected a smaller {what}, found {_describe(value, source.raw(pointer))}"))
        return None
    if not math.isfinite(amount) or amount <= 0:
        problems.append(source.diagnostic(
            pointer, f"expected a positive {what}, found {_describe(value, source.raw(pointer))}",
            f"leave `{pointer.rsplit('/', 1)[1]}` out to use the policy's default",
        ))
        return None
    return amount


# Words --------------------------------------------------------------------------------------

_DURATION = "a duration such as `30s` or `500ms`, or a number of seconds"
_SIZE = "a size such as `512MB` or `1GiB`, or a whole number of bytes"

# What each field should hold, for "expected ..., found ..." (array items are `*`).
_EXPECTED: dict[str, str] = {
    "": "a mapping of manifest fields",
    "name": "a name matching `^[a-z][a-z0-9_-]*$`",
    "version": "a semantic version such as `1.0.0`",
    "type": "a lowercase plugin type such as `agent`, `workflow` or `hook`",
    "entry_point": "an entry point such as `package.module:ClassName`",
    "description": "a string",
    "enabled": "`true` or `false`",
    "permissions": "a list of permission entries",
    "permissions/*": "a permission entry such as `file:read /srv/data/**`",
    "timeout_seconds": _DURATION,
    "timeouts": "a mapping of `init`, `hook` and `execute` durations",
    **{f"timeouts/{phase}": _DURATION for phase in TIMEOUT_PHASES},
    "limits": "a mapping of `memory`, `cpu` and `file_size` limits",
    "limits/memory": _SIZE,
    "limits/file_size": _SIZE,
    "limits/cpu": "a percentage such as `50%`",
    "author": "a string",
    "homepage": "an `http://` or `https://` URL",
    "tags": "a list of strings",
    "tags/*": "a non-empty string",
    "requires_python": "a version specifier such as `>=3.10`",
}

_EXAMPLES = {
    "name": "my-plugin",
    "version": "1.0.0",
    "type": "agent",
    "entry_point": "my_plugin.plugin:MyPlugin",
}


def _name_hint(value: object, raw: str | None) -> str | None:
    if not isinstance(value, str) and raw is not None:
        return None  # the generic "quote it" applies
    if isinstance(value, str):
        guess = re.sub(r"[^a-z0-9_-]+", "-", value.strip().lower()).strip("-")
        if guess != value and re.fullmatch(r"[a-z][a-z0-9_-]*", guess):
            return f"did you mean `{guess}`?"
    return "names are lowercase letters, digits, `-` and `_`, starting with a letter"


def _type_hint(value: object, raw: str | None) -> str | None:
    if not isinstance(value, str) and raw is not None:
        return None
    if isinstance(value, str) and re.fullmatch(r"[a-z][a-z0-9_]*", value.lower()):
        return f"did you mean `{value.lower()}`?"
    return "plugin types are lowercase identifiers"


def _version_hint(value: object, raw: str | None) -> str | None:
    written = raw if raw is not None else str(value)
    parts = written.split(".")
    if len(parts) < 3 and all(re.fullmatch(r"[0-9]+", p) for p in parts):
        padded = ".".join([*(p.lstrip("0") or "0" for p in parts), *["0"] * (3 - len(parts))])
        if isinstance(value, str):
            return f"did you mean `{padded}`?"
        return f'write `version: "{padded}"`: quoted, so that YAML does not read a number'
    return "versions are `MAJOR.MINOR.PATCH`, such as `1.0.0`"


def _entry_point_hint(value: object, raw: str | None) -> str | None:
    if isinstance(value, str) and ":" not in value and "." in value:
        module, _, name = value.rpartition(".")
        return f"separate the module from the class with `:`: `{_show(module)}:{_show(name)}`"
    return "write the module's dotted path, `:` and the class name"


def _list_hint(value: object, raw: str | None) -> str | None:
    if isinstance(value, str):
        return f"write one entry per line: `- {_show(value)}`"
    return None


def _enabled_hint(value: object, raw: str | None) -> str | None:
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        truth = value.lower() in ("true", "yes", "on")
        return f"write `{'true' if truth else 'false'}` without quotes"
    return None


def _duration_hint(value: object, raw: str | None) -> str | None:
    return "write a number and a unit: `ms`, `s`, `m` or `h`"


def _requires_python_hint(value: object, raw: str | None) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'write `requires_python: ">={_show(raw or str(value))}"`'
    return None


def _root_hint(value: object, raw: str | None) -> str | None:
    if isinstance(value, (list, tuple)):
        return "write fields as `key: value` lines, without a leading `- `"
    return "a manifest is a YAML mapping such as `name: my-plugin`"


_HINTS: dict[str, Callable[[object, str | None], str | None]] = {
    "": _root_hint,
    "name": _name_hint,
    "type": _type_hint,
    "version": _version_hint,
    "entry_point": _entry_point_hint,
    "enabled": _enabled_hint,
    "permissions": _list_hint,
    "tags": _list_hint,
    "requires_python": _requires_python_hint,
    "timeout_seconds": _duration_hint,
    **{f"timeouts/{phase}": _duration_hint for phase in TIMEOUT_PHASES},
}


def _describe(value: object, raw: str | None = None) -> str:
    """``value`` as the "found" half of a message; ``raw`` is its YAML text when known."""
    if value is None:
        return "no value"
    if isinstance(value, bool):
        shown = "true" if value else "false"
        if raw is not None and raw.lower() != shown:  # YAML 1.1 reads `no`, `off`, `yes` as booleans
            return f"`{_show(raw)}`, which YAML reads as `{shown}`"
        return f"`{shown}`"
    if isinstance(value, (int, float)):
        if raw is not None:
            return f"the number `{_show(raw)}`"
        if isinstance(value, int) and value.bit_length() > 200:
            return "a very large number"
        return f"the number `{value}`"
    if isinstance(value, str):
        return f"`{_show(value)}`" if value else "an empty string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a value of type `{type(value).__name__}`"


def _show(text: str, limit: int = 60) -> str:
    """``text`` on one line and at most ``limit`` characters, for a message."""
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str) -> str:
    # Messages are one line: newlines and other control characters show as escapes.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _backticks(text: str) -> str:
    """PyYAML quotes what it found with ``'...'``; the house style is backticks."""
    return re.sub(r"'([^'\n]*)'", r"`\1`", _one_line(text))


def _pointer(path: Sequence[object]) -> str:
    return "".join(f"/{_escape(p)}" for p in path)


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _field(path: Sequence[object]) -> str:
    return ".".join(str(p) for p in path)


def _field_key(path: Sequence[object]) -> str:
    return "/".join("*" if isinstance(p, int) else str(p) for p in path)
