"""Reading a policy set from its source: the one place that opens ``.policy`` files.

A policy set is what one source names: a ``.policy`` file, or a directory's own ``*.policy``
entries (not those of its subdirectories; hidden names are skipped, as editors keep their
lock files there). :func:`read_policy_set` returns it or raises :class:`PolicySetError`
listing every bad entry; :func:`scan_policy_set` never raises and returns the readable files
beside one :class:`PolicyFileProblem` per bad entry, for ``policy-lint``. The engine, every
command and the linter read through these two functions, so they cannot disagree about
which files form a set or whether it is usable.

No entry is ever skipped silently: a dangling or looping symlink, a directory, FIFO,
socket or device named ``*.policy``, an unreadable file, a file that is not UTF-8 text, a
file or set over its size cap, and a directory without ``.policy`` files are each a problem
that names the entry. Non-regular files are refused by ``stat`` before any open, so nothing
blocks. A symlink that resolves is followed.

Text is UTF-8; a leading UTF-8 byte-order mark is dropped. Sources are dispatched on their
kind (:data:`SOURCE_READERS`); today only local paths are read, and any ``scheme://``
source is refused as unsupported, which is where bundle and URL readers plug in.
"""

from __future__ import annotations

import enum
import errno
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .bounded import (
    DEFAULT_LIMITS,
    LIMIT_MESSAGE_PREFIX,
    InputLimits,
    describe_file_type,
    read_bounded_file,
)
from .diagnostics import Diagnostic, Span
from .errors import InputLimitError, PolicySetError

__all__ = [
    "POLICY_SUFFIX",
    "SOURCE_READERS",
    "PolicyFile",
    "PolicyFileProblem",
    "PolicySet",
    "PolicySetScan",
    "ProblemKind",
    "read_policy_set",
    "read_policy_sets",
    "scan_policy_set",
]

#: The suffix of a policy file.
POLICY_SUFFIX = ".policy"

PolicySource = str | os.PathLike[str]


class ProblemKind(str, enum.Enum):
    """What is wrong with an entry of a policy set."""

    MISSING = "missing"            # the source does not exist
    DANGLING_LINK = "dangling-link"
    LINK_LOOP = "link-loop"
    NOT_REGULAR = "not-regular"    # a directory, FIFO, socket or device
    UNREADABLE = "unreadable"      # permission denied, I/O error
    ENCODING = "encoding"          # not UTF-8 text
    TOO_LARGE = "too-large"        # over a size cap
    EMPTY = "empty"                # a directory without .policy files
    UNSUPPORTED = "unsupported"    # a source kind nobody reads yet


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One file of a policy set: its name (the path as found) and its text."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class PolicyFileProblem:
    """Why one entry of a policy set cannot be read; ``line``/``column`` are 0 when the
    problem is about the whole entry."""

    path: str
    kind: ProblemKind
    message: str
    hint: str | None = None
    line: int = 0
    column: int = 0

    def to_diagnostic(self, *, located: bool = True) -> Diagnostic:
        """The problem as a diagnostic pointing at the entry.

        The message names the entry already; ``located=False`` leaves out the span of a
        whole-entry problem, so a one-line error does not name the path twice.
        """
        if self.line:
            return Diagnostic(self.message, Span(self.path, self.line, self.column, self.line,
                                                 self.column + 1), self.hint)
        return Diagnostic(self.message, Span(self.path, 0, 0) if located else None, self.hint)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The files a source names, sorted by name."""

    source: str
    files: tuple[PolicyFile, ...]

    def texts(self) -> dict[str, str]:
        """``{name: text}`` in file order."""
        return {f.name: f.text for f in self.files}


@dataclass(frozen=True, slots=True)
class PolicySetScan:
    """What :func:`scan_policy_set` found: the readable files and one problem per bad entry."""

    source: str
    files: tuple[PolicyFile, ...]
    problems: tuple[PolicyFileProblem, ...]

    @property
    def ok(self) -> bool:
        """Whether the set is usable (no problem at all)."""
        return not self.problems

    def to_policy_set(self) -> PolicySet:
        """The set, or :class:`PolicySetError` listing every problem."""
        if self.problems:
            raise PolicySetError([p.to_diagnostic(located=False) for p in self.problems])
        return PolicySet(self.source, self.files)


# Dispatch on the kind of source -------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

SourceReader = Callable[[str, InputLimits], PolicySetScan]


def _scan_local(source: str, limits: InputLimits) -> PolicySetScan:
    return _LocalScan(source, limits).run()


#: Readers by source kind: ``"path"`` for local files and directories; a bundle or URL
#: reader is one more entry here (keyed by the URL scheme).
SOURCE_READERS: Mapping[str, SourceReader] = {"path": _scan_local}


def _kind_of(source: str) -> str:
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else "path"


def scan_policy_set(source: PolicySource, *, limits: InputLimits = DEFAULT_LIMITS) -> PolicySetScan:
    """Read the policy set ``source`` names without raising: readable files plus problems."""
    name = os.fspath(source)
    kind = _kind_of(name)
    reader = SOURCE_READERS.get(kind)
    if reader is None:
        return PolicySetScan(name, (), (PolicyFileProblem(
            name, ProblemKind.UNSUPPORTED, f"unsupported policy source `{name}`: `{kind}://` sources cannot be read",
            "give a `.policy` file or a directory of them"),))
    return reader(name, limits)


def read_policy_set(source: PolicySource, *, limits: InputLimits = DEFAULT_LIMITS) -> PolicySet:
    """The policy set ``source`` names: a ``.policy`` file or a directory of them.

    Raises :class:`PolicySetError` listing every bad entry (see the module docstring).
    """
    return scan_policy_set(source, limits=limits).to_policy_set()


def read_policy_sets(sources: Sequence[PolicySource], *, limits: InputLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """The texts of several sources as one set (``{name: text}``), for ``Engine.load``.

    Raises :class:`PolicySetError` listing the problems of every source, and for a set
    over ``limits.policy_set_bytes`` or ``limits.policy_set_files`` as a whole.
    """
    problems: list[PolicyFileProblem] = []
    texts: dict[str, str] = {}
    for source in sources:
        scan = scan_policy_set(source, limits=limits)
        problems.extend(scan.problems)
        texts.update((f.name, f.text) for f in scan.files)
    if not sources:
        problems.append(PolicyFileProblem("<policy>", ProblemKind.EMPTY, "no policy source given",
                                          "name a `.policy` file or a directory of them"))
    if not problems:
        total = sum(len(t.encode("utf-8")) for t in texts.values())
        where = os.fspath(sources[0]) if len(sources) == 1 else "the policy set"
        problems.extend(_set_caps(where, len(texts), total, limits))
    if problems:
        raise PolicySetError([p.to_diagnostic(located=False) for p in problems])
    return texts


def _set_caps(where: str, count: int, total: int, limits: InputLimits) -> list[PolicyFileProblem]:
    found: list[PolicyFileProblem] = []
    if count > limits.policy_set_files:
        found.append(PolicyFileProblem(
            where, ProblemKind.TOO_LARGE,
            f"{LIMIT_MESSAGE_PREFIX}: `{where}` has {count:,} `.policy` files (the limit `policy_set_files` is "
            f"{limits.policy_set_files:,})", "split the policy set"))
    if total > limits.policy_set_bytes:
        found.append(PolicyFileProblem(
            where, ProblemKind.TOO_LARGE,
            f"{LIMIT_MESSAGE_PREFIX}: the policy set `{where}` has {total:,} bytes (the limit "
            f"`policy_set_bytes` is {limits.policy_set_bytes:,})", "split the policy set"))
    return found


# Local files and directories ----------------------------------------------------------------


class _LocalScan:
    def __init__(self, source: str, limits: InputLimits) -> None:
        self.source = source
        self.limits = limits
        self.files: list[PolicyFile] = []
        self.problems: list[PolicyFileProblem] = []

    def run(self) -> PolicySetScan:
        info = self._stat(self.source, top=True)
        if info is not None:
            if stat.S_ISDIR(info.st_mode):
                self._directory(self.source)
            elif stat.S_ISREG(info.st_mode):
                self._file(self.source)
            else:
                self._problem(self.source, ProblemKind.NOT_REGULAR,
                              f"policy path `{self.source}` is {describe_file_type(info.st_mode)}",
                              "a policy source is a `.policy` file or a directory of them")
        if not self.problems:
            total = sum(len(f.text.encode("utf-8")) for f in self.files)
            self.problems.extend(_set_caps(self.source, len(self.files), total, self.limits))
        files = tuple(sorted(self.files, key=lambda f: f.name))
        return PolicySetScan(self.source, files, tuple(self.problems))

    def _problem(self, path: str, kind: ProblemKind, message: str, hint: str | None = None,
                 line: int = 0, column: int = 0) -> None:
        self.problems.append(PolicyFileProblem(path, kind, message, hint, line, column))

    def _stat(self, path: str, *, top: bool = False) -> os.stat_result | None:
        what = "policy path" if top else "policy file"
        try:
            return os.stat(path)
        except FileNotFoundError:
            if os.path.lexists(path):
                self._problem(path, ProblemKind.DANGLING_LINK,
                              f"{what} `{path}` is a symlink to `{_readlink(path)}`, which does not exist",
                              "restore the target or remove the link; a missing file could hold a deny rule")
            else:
                self._problem(path, ProblemKind.MISSING, f"{what} `{path}` does not exist")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._problem(path, ProblemKind.LINK_LOOP, f"{what} `{path}` is a symlink loop",
                              "point the link at a real file")
            else:
                self._problem(path, ProblemKind.UNREADABLE, f"cannot read {what} `{path}`: {_reason(exc)}")
        except ValueError:  # a NUL byte in the path
            self._problem(path, ProblemKind.MISSING, f"{what} `{path}` is not a valid path")
        return None

    def _directory(self, directory: str) -> None:
        try:
            with os.scandir(directory) as entries:
                names = sorted(e.name for e in entries
                               if e.name.endswith(POLICY_SUFFIX) and not e.name.startswith("."))
        except OSError as exc:
            self._problem(directory, ProblemKind.UNREADABLE,
                          f"cannot list the policy directory `{directory}`: {_reason(exc)}")
            return
        if not names:
            self._problem(directory, ProblemKind.EMPTY, f"no `{POLICY_SUFFIX}` files in `{directory}`",
                          "a policy directory holds its `.policy` files directly (subdirectories are not read)")
            return
        for name in names:
            path = os.path.join(directory, name)
            info = self._stat(path)
            if info is None:
                continue
            if not stat.S_ISREG(info.st_mode):
                self._problem(path, ProblemKind.NOT_REGULAR,
                              f"policy file `{path}` is {describe_file_type(info.st_mode)}, not a regular file",
                              "rename or remove it: every `*.policy` entry of a directory is part of its set")
                continue
            self._file(path)

    def _file(self, path: str) -> None:
        try:
            raw = read_bounded_file(path, self.limits.policy_file_bytes, cap="policy_file_bytes")
        except InputLimitError as exc:
            first = exc.diagnostics[0]
            detail = first.message.removeprefix(f"{LIMIT_MESSAGE_PREFIX}: ")
            self._problem(path, ProblemKind.TOO_LARGE,
                          f"{LIMIT_MESSAGE_PREFIX}: policy file `{path}` is too large: {detail}", first.hint)
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a link after the stat
                self._problem(path, ProblemKind.LINK_LOOP, f"policy file `{path}` changed into a symlink while read")
            else:
                self._problem(path, ProblemKind.UNREADABLE, f"cannot read policy file `{path}`: {_reason(exc)}")
            return
        text = self._decode(path, raw)
        if text is not None:
            self.files.append(PolicyFile(path, text))

    def _decode(self, path: str, raw: bytes) -> str | None:
        for bom, encoding in _OTHER_BOMS:
            if raw.startswith(bom):
                self._problem(path, ProblemKind.ENCODING,
                              f"policy file `{path}` is {encoding} text (it starts with a {encoding} "
                              "byte-order mark); policies are UTF-8",
                              f"convert it, for example with `iconv -f {encoding} -t UTF-8`", 1, 1)
                return None
        body = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as exc:
            offset = exc.start + (len(raw) - len(body))
            before = raw[:offset]
            line = before.count(b"\n") + 1
            column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1
            self._problem(path, ProblemKind.ENCODING,
                          f"policy file `{path}` is not UTF-8 text: byte 0x{raw[offset]:02x} at offset "
                          f"{offset:,} (line {line}, column {column}) cannot be decoded",
                          "save the file as UTF-8", line, column)
            return None


# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one.
_OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"),
)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.strerror else str(exc)
