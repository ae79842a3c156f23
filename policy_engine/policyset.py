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
kind (:data:`SOURCE_READERS`): local files and directories, bundle files (a regular file
that starts like a gzip stream) and ``http(s)://`` URLs of bundles; any other
``scheme://`` source is refused as unsupported. :func:`read_bundle_bytes` is the one place
the bytes of a bundle file or URL are read (size cap, timeout, conditional GET, no redirect
to another scheme); :class:`~policy_engine.lifecycle.Origin` verifies what it returns. A
bundle read here without a key is checked for integrity only; a URL read here without a
key is refused (a remote source needs one: ``Engine.load(url, public_key=...)``).
"""

from __future__ import annotations

import enum
import errno
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .bounded import (
    DEFAULT_LIMITS,
    LIMIT_MESSAGE_PREFIX,
    InputLimits,
    describe_file_type,
    read_bounded_file,
)
from .diagnostics import Diagnostic, Span
from .errors import BundleError, InputLimitError, PolicyEngineError, PolicySetError

__all__ = [
    "FETCH_TIMEOUT",
    "POLICY_SUFFIX",
    "SOURCE_READERS",
    "PolicyFile",
    "PolicyFileProblem",
    "PolicySet",
    "PolicySetScan",
    "ProblemKind",
    "fetch",
    "is_bundle_file",
    "is_url",
    "read_bundle_bytes",
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


def _scan_bundle(source: str, limits: InputLimits) -> PolicySetScan:
    from .bundle import read_bundle

    if is_url(source):
        return PolicySetScan(source, (), (PolicyFileProblem(
            source, ProblemKind.UNSUPPORTED, f"a remote policy source needs a public key: `{source}`",
            "load it with `Engine.load(url, public_key=...)` or `--public-key`"),))
    try:
        data, _ = read_bundle_bytes(source)
        assert data is not None
        bundle = read_bundle(data)  # no key given: integrity only (listed files, digests)
    except PolicyEngineError as exc:
        return PolicySetScan(source, (), (PolicyFileProblem(
            source, ProblemKind.UNREADABLE, f"cannot read the bundle `{source}`: {_one_line(exc)}"),))
    files = tuple(PolicyFile(name, text) for name, text in sorted(bundle.files.items()))
    problems = _set_caps(source, len(files), sum(len(f.text.encode("utf-8")) for f in files), limits)
    return PolicySetScan(source, files, tuple(problems))


#: Readers by source kind: ``"path"`` for local files and directories, ``"path:bundle"``
#: for a bundle file (no URL scheme has a colon), ``"http"``/``"https"`` for a bundle's
#: URL; one more kind is one more entry.
SOURCE_READERS: Mapping[str, SourceReader] = {
    "path": _scan_local, "path:bundle": _scan_bundle, "http": _scan_bundle, "https": _scan_bundle,
}


def _kind_of(source: str) -> str:
    match = _SCHEME.match(source)
    if match:
        return match.group(1).lower()
    return "path:bundle" if is_bundle_file(source) else "path"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# Bundle files and URLs: the one place their bytes are read ----------------------------------

#: Seconds a download may take.
FETCH_TIMEOUT = 10.0

_GZIP_MAGIC = b"\x1f\x8b"


def is_url(source: object) -> bool:
    """True for an ``http://`` or ``https://`` string."""
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def is_bundle_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a regular file that starts like a gzip stream (checked by
    ``stat`` first: a FIFO is never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return os.read(fd, 2) == _GZIP_MAGIC
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return False


def read_bundle_bytes(source: str | os.PathLike[str], *, etag: str | None = None,
                      timeout: float = FETCH_TIMEOUT, max_bytes: int | None = None) -> tuple[bytes | None, str | None]:
    """``(bytes, etag)`` of a bundle file or ``http(s)://`` URL, within ``max_bytes``
    (default :data:`policy_engine.bundle.MAX_BUNDLE_BYTES`); ``(None, etag)`` when a URL
    answers 304 Not Modified to ``etag``. Raises :class:`BundleError`."""
    from .bundle import MAX_BUNDLE_BYTES

    limit = MAX_BUNDLE_BYTES if max_bytes is None else max_bytes
    name = os.fspath(source)
    if is_url(name):
        return fetch(name, etag=etag, timeout=timeout, max_bytes=limit)
    try:
        return read_bounded_file(name, limit, cap="bundle_bytes"), None
    except InputLimitError:
        raise BundleError(f"the bundle `{name}` is over the limit of {limit} bytes") from None
    except OSError as exc:
        raise BundleError(f"cannot read `{name}`: {exc.strerror or exc}") from None


def _same_scheme_handler() -> Any:
    import urllib.request

    class SameScheme(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: IO[bytes], code: int, msg: str, headers: Any,
                             newurl: str) -> urllib.request.Request | None:
            old, new = req.full_url.split(":", 1)[0].lower(), newurl.split(":", 1)[0].lower()
            if old != new:
                raise BundleError(f"redirect from `{old}` to `{new}` refused",
                                  "serve the bundle without a scheme change")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return SameScheme()


def fetch(url: str, *, etag: str | None = None, timeout: float = FETCH_TIMEOUT,
          max_bytes: int | None = None) -> tuple[bytes | None, str | None]:
    """``(bytes, etag)`` of ``url``, or ``(None, etag)`` when the server says 304 Not Modified.

    Raises :class:`BundleError` for a network error, an HTTP error status, a redirect to
    another scheme, or a body over ``max_bytes``.
    """
    # urllib (and with it http.client and ssl) is imported only when a URL is fetched.
    import urllib.error
    import urllib.request

    from .bundle import MAX_BUNDLE_BYTES

    limit = MAX_BUNDLE_BYTES if max_bytes is None else max_bytes
    request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    opener = urllib.request.build_opener(_same_scheme_handler())
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read(limit + 1)
            if len(data) > limit:
                raise BundleError(f"the bundle at `{url}` is over the limit of {limit} bytes")
            return data, response.headers.get("ETag")
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return None, etag
        raise BundleError(f"cannot fetch `{url}`: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BundleError(f"cannot fetch `{url}`: {reason}") from None


def scan_policy_set(source: PolicySource, *, limits: InputLimits = DEFAULT_LIMITS) -> PolicySetScan:
    """Read the policy set ``source`` names without raising: readable files plus problems."""
    name = os.fspath(source)
    kind = _kind_of(name)
    reader = SOURCE_READERS.get(kind)
    if reader is None:
        return PolicySetScan(name, (), (PolicyFileProblem(
            name, ProblemKind.UNSUPPORTED, f"unsupported policy source `{name}`: `{kind}://` sources cannot be read",
            "give a `.policy` file, a directory of them, a bundle or an `http(s)://` URL of one"),))
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
