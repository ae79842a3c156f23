"""Resource patterns and the normal form of the resources they are matched against.

Every permission scopes one kind of resource (:class:`~policy_engine.permissions.ResourceKind`).
A request's resource is brought to its normal form once with :func:`normalize`; a rule's
resource pattern is compiled once with :func:`compile_pattern` and then tested against normal
forms with :meth:`Pattern.matches`, which is on the hot path and therefore has fast paths for
the common shapes (literals, ``/prefix/**``, ``/dir/*``, ``name.*``, ``*.example.com``).

PATH
    Normal form: an absolute path, normalised *lexically* (``.``, ``..``, duplicate and
    trailing slashes; ``..`` above ``/`` stays at ``/``). Symlinks are not resolved: that is
    the enforcement layer's job. Patterns are absolute globs: ``*`` matches a run of non-slash
    characters, ``?`` one non-slash character and a ``**`` segment zero or more whole
    segments, so ``/srv/**`` matches ``/srv`` itself and everything below it. Dot files are
    not special. ``[`` and ``]`` are ordinary characters (there are no character classes)
    and there is no escaping.

HOST
    Normal form: :class:`HostPort`. ``host``, ``host:port``, ``[v6]:port``, a bare IPv6
    address or a URL (whose scheme gives the default port). Hosts are ASCII and compared
    case-insensitively with a trailing dot ignored; legacy IPv4 spellings (``127.1``,
    ``0x7f.0.0.1``) and IPv4-mapped IPv6 addresses are rewritten to dotted quads so that a
    rule about ``127.0.0.1`` cannot be sidestepped by respelling it. Patterns are
    ``host[:port]`` where host may be ``*`` (any host) or ``*.suffix`` (subdomains at any
    depth, not the apex) and a missing or ``*`` port means any port. A request without a
    port only matches any-port patterns.

NAME
    Normal form: the name itself. In patterns ``*`` matches any run of characters (dots
    included); everything else is literal and case-sensitive.

The pattern algebra lives here and nowhere else: containment (:meth:`Pattern.subsumes`),
overlap (:func:`overlaps`), intersection and regions (:func:`intersect`,
:func:`region_overlaps`, :func:`region_covered`), coverage of pattern sets
(:func:`covers_all`, :func:`matches_everything`) and the one treatment of ``{plugin}`` and
``{plugin_dir}`` before a plugin fills them in (:data:`TEMPLATE_STAND_INS`,
:func:`symbolic_pattern`), used by the compiler, ``policy-engine matrix`` and ``policy-lint``.
"""

from __future__ import annotations

import abc
import functools
import ipaddress
import posixpath
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias, TypeVar, overload
from urllib.parse import urlsplit

from .permissions import ResourceKind

__all__ = [
    "EVERYTHING",
    "TEMPLATE_STAND_INS",
    "HostPattern",
    "HostPort",
    "InvalidResourceError",
    "NamePattern",
    "PathPattern",
    "Pattern",
    "PatternError",
    "Region",
    "Resource",
    "compile_pattern",
    "covers_all",
    "glob_matches",
    "may_match_below",
    "intersect",
    "matches_everything",
    "normalize",
    "host_text",
    "normalize_host_text",
    "overlaps",
    "region_covered",
    "region_overlaps",
    "symbolic_pattern",
    "with_stand_ins",
    "with_templates",
]


class PatternError(ValueError):
    """A resource pattern is malformed; ``hint`` suggests a fix when one is known."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)


class InvalidResourceError(ValueError):
    """A requested resource cannot be normalised (the request is denied as invalid)."""


@dataclass(frozen=True, slots=True)
class HostPort:
    """A normalised network endpoint; ``port`` is None when the request named none.

    ``host`` is lower-case without a trailing dot; an IPv6 address is stored without
    brackets. Build it with :func:`normalize` so those invariants hold.
    """

    host: str
    port: int | None = None

    def __str__(self) -> str:
        return host_text(self.host, self.port)


def host_text(host: str, port: int | None = None) -> str:
    """A host and port as text, the way :class:`HostPort` shows them: an IPv6 address (the
    only host with a ``:``) in brackets, the port after a ``:``."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


#: A request's resource in normal form: a path or name (``str``) or a :class:`HostPort`.
Resource: TypeAlias = str | HostPort


class _Bad(Exception):
    """Internal: a parse failure, turned into PatternError or InvalidResourceError."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True)
class Pattern(abc.ABC):
    """A compiled resource pattern; build one with :func:`compile_pattern`.

    Two patterns are equal when their canonical forms are (``/srv/`` equals ``/srv``), so
    equality means "matches the same resources by construction".
    """

    kind: ClassVar[ResourceKind]

    #: The pattern as written.
    text: str = field(compare=False)
    #: The pattern in canonical spelling (used for equality and messages).
    canonical: str
    #: True when the pattern matches exactly one normalised resource.
    is_literal: bool = field(compare=False)
    #: True when the pattern matches everything of its kind, or nearly.
    is_overbroad: bool = field(compare=False)

    @abc.abstractmethod
    def matches(self, resource: Resource) -> bool:
        """Whether the normalised ``resource`` is matched by this pattern."""

    @abc.abstractmethod
    def subsumes(self, other: Pattern) -> bool:
        """True only if every resource ``other`` matches is matched by this pattern too.

        Conservative: False when that cannot be shown (or ``other`` is of another kind).
        """

    def __str__(self) -> str:
        return self.text


# How a pattern is matched; ordered roughly by how cheap the test is.
_LITERAL, _ALL, _PREFIX, _CHILD, _SUFFIX, _REGEX, _CIDR = range(7)


@dataclass(frozen=True, slots=True)
class PathPattern(Pattern):
    """A file path glob; see the module docstring for the syntax."""

    kind: ClassVar[ResourceKind] = ResourceKind.PATH

    #: Canonical segments (no empty ones); ``**`` stands for any number of segments.
    segments: tuple[str, ...] = field(compare=False)
    #: The longest leading run of literal segments: the directory a kernel rule must cover.
    landlock_root: str = field(compare=False)
    _mode: int = field(compare=False, repr=False)
    _fixed: str = field(compare=False, repr=False)  # literal prefix for the fast paths
    _regex: re.Pattern[str] | None = field(compare=False, repr=False)

    def matches(self, resource: Resource) -> bool:
        """Whether the normalised absolute path ``resource`` is matched."""
        if not isinstance(resource, str):
            return False
        mode = self._mode
        if mode == _LITERAL:
            return resource == self.canonical
        if mode == _PREFIX:  # `/fixed/**`: the directory itself or anything below it
            fixed = self._fixed
            return resource.startswith(fixed) and (
                len(resource) == len(fixed) or resource[len(fixed)] == "/"
            )
        if mode == _CHILD:  # `/fixed/*`: `_fixed` ends with a slash here
            fixed = self._fixed
            return (
                resource.startswith(fixed)
                and len(resource) > len(fixed)
                and resource.find("/", len(fixed)) < 0
            )
        if mode == _ALL:
            return True
        assert self._regex is not None
        return self._regex.fullmatch(resource) is not None

    def subsumes(self, other: Pattern) -> bool:
        """See :meth:`Pattern.subsumes`; exact for literals and ``**`` prefixes."""
        if not isinstance(other, PathPattern):
            return False
        if self._mode == _ALL:
            return True
        if other.is_literal:
            return self.matches(other.canonical)
        return _covers(self.segments, other.segments, "**", _segment_covers)


@dataclass(frozen=True, slots=True)
class HostPattern(Pattern):
    """A ``host[:port]`` pattern; see the module docstring for the syntax."""

    kind: ClassVar[ResourceKind] = ResourceKind.HOST

    #: The canonical host part: ``*``, ``*.suffix``, a host name, an IP address or a CIDR
    #: range (``10.0.0.0/8``, ``fe80::/10``).
    host_text: str = field(compare=False)
    #: The port when the pattern names exactly one, else None (any port, or a range).
    port: int | None = field(compare=False)
    _mode: int = field(compare=False, repr=False)
    _suffix: str = field(compare=False, repr=False)  # `.example.com` for `*.example.com`
    #: The ports matched, ``(low, high)`` inclusive, or None for any port.
    port_range: tuple[int, int] | None = field(default=None, compare=False)
    # A CIDR pattern's range, set when compiled; a literal address's, made when first asked
    # for (see `network`): most are never asked, and each costs a parse and half a kilobyte.
    _network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = field(
        default=None, compare=False, repr=False)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The address range of a CIDR pattern (also for a literal IP address: one address)."""
        network = self._network
        if network is None and self._mode == _LITERAL:
            address = _address_of(self.host_text)
            if address is not None:
                network = ipaddress.ip_network(address)
                object.__setattr__(self, "_network", network)  # equal whoever sets it first
        return network

    def matches(self, resource: Resource) -> bool:
        """Whether the normalised :class:`HostPort` ``resource`` is matched."""
        if not isinstance(resource, HostPort):
            return False
        ports = self.port_range
        if ports is not None and (resource.port is None or not ports[0] <= resource.port <= ports[1]):
            return False
        mode = self._mode
        if mode == _LITERAL:
            return resource.host == self.host_text
        if mode == _SUFFIX:
            return resource.host.endswith(self._suffix)
        if mode == _CIDR:
            address = _address_of(resource.host)
            return address is not None and address in self.network  # type: ignore[operator]
        return True

    def subsumes(self, other: Pattern) -> bool:
        """See :meth:`Pattern.subsumes`; exact for host patterns."""
        if not isinstance(other, HostPattern):
            return False
        if not _ports_cover(self.port_range, other.port_range):
            return False
        mode = self._mode
        if mode == _ALL:
            return True
        if other._mode == _ALL:
            return False
        if mode == _CIDR:
            return (other.network is not None and other.network.version == self.network.version  # type: ignore[union-attr]
                    and other.network.subnet_of(self.network))  # type: ignore[arg-type]
        if mode == _LITERAL:
            return other._mode == _LITERAL and other.host_text == self.host_text
        if other._mode == _CIDR:
            return False
        # `.example.com` ends their literal host or their equal or deeper `*.` pattern alike.
        return other.host_text.endswith(self._suffix)


def _ports_cover(outer: tuple[int, int] | None, inner: tuple[int, int] | None) -> bool:
    if outer is None:
        return True
    return inner is not None and outer[0] <= inner[0] and inner[1] <= outer[1]


@functools.lru_cache(maxsize=4096)
def _address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a normalised host is, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class NamePattern(Pattern):
    """A name pattern: ``*`` matches any run of characters, the rest is literal."""

    kind: ClassVar[ResourceKind] = ResourceKind.NAME

    _mode: int = field(compare=False, repr=False)
    _fixed: str = field(compare=False, repr=False)  # the prefix or suffix of the fast paths
    _regex: re.Pattern[str] | None = field(compare=False, repr=False)

    def matches(self, resource: Resource) -> bool:
        """Whether the name ``resource`` is matched."""
        if not isinstance(resource, str):
            return False
        mode = self._mode
        if mode == _LITERAL:
            return resource == self.canonical
        if mode == _PREFIX:
            return resource.startswith(self._fixed)
        if mode == _ALL:
            return True
        if mode == _SUFFIX:
            return resource.endswith(self._fixed)
        assert self._regex is not None
        return self._regex.fullmatch(resource) is not None

    def subsumes(self, other: Pattern) -> bool:
        """See :meth:`Pattern.subsumes`; exact for literals, prefixes and suffixes."""
        if not isinstance(other, NamePattern):
            return False
        if other.is_literal:
            return self.matches(other.canonical)
        return _covers(self.canonical, other.canonical, "*", _same)


# --------------------------------------------------------------------------- containment

_T = TypeVar("_T")


def _covers(p: Sequence[_T], q: Sequence[_T], star: _T, item: Callable[[_T, _T], bool]) -> bool:
    """Whether token sequence ``p`` matches everything ``q`` does, by aligning tokens.

    ``star`` matches any run of tokens. A star in ``p`` may absorb any tokens of ``q``
    (stars included); a star in ``q`` can only be absorbed by a star in ``p``; other tokens
    pair up when ``item(p_token, q_token)`` says the first covers the second. Every
    alignment found is a proof of containment, so this is sound; it can miss containments
    that need case analysis (``*/**`` vs ``**/x``), which only makes it conservative.
    """
    m = len(q)
    # after[j]: does p[i + 1:] cover q[j:]; filled from the end of p backwards.
    after = [False] * m + [True]
    for token in reversed(p):
        here = [False] * (m + 1)
        if token == star:
            here[m] = after[m]
            for j in range(m - 1, -1, -1):
                here[j] = after[j] or here[j + 1]
        else:
            for j in range(m - 1, -1, -1):
                other = q[j]
                here[j] = other != star and after[j + 1] and item(token, other)
        after = here
    return after[0]


def _same(a: str, b: str) -> bool:
    return a == b


def _char_covers(a: str, b: str) -> bool:
    # `?` covers any single character and another `?`; a literal only itself.
    return a == "?" or a == b


def _segment_covers(a: str, b: str) -> bool:
    return a == b or _covers(a, b, "*", _char_covers)


# --------------------------------------------------------------------------- paths


def _normalize_path(path: str, base_dir: str | None) -> str:
    # The common shape is already normal: absolute, without empty, `.` or `..` segments (each
    # segment follows a `/`, so "/." and "//" find them all) and without a trailing slash.
    if path[:1] == "/" and "\0" not in path and path[-1] != "/":
        if len(path) < _LONG_PATH:
            if "/." not in path and "//" not in path:
                return path
        elif path.rfind("//") < 0:
            # A long path: the searches that stay fast on 4 KiB in Python 3.11 are `in` for
            # one character (memchr) and `rfind` for two (the forward search and
            # `posixpath.normpath` take several microseconds), and only the text from the
            # first "/." on is normalised.
            if "." not in path or path.rfind("/.") < 0:
                return path
            return _normalize_from(path, _first_dot_segment(path))
    return _normalize_path_full(path, base_dir)


#: From this length on (characters) a path takes the searches of a long one.
_LONG_PATH = 256

#: Dots tried one by one (a memchr each) before one search for "/." takes over, so that a
#: path of thousands of dots costs one scan, not thousands of calls.
_DOT_TRIES = 8


def _first_dot_segment(path: str) -> int:
    """The index of the first "/." in ``path``, which holds one."""
    dot = path.find(".")
    for _ in range(_DOT_TRIES):
        if path[dot - 1] == "/":
            return dot - 1
        dot = path.find(".", dot + 1)
    return path.find("/.", dot - 1)


#: The ``..`` segments a relative normal path starts with ("../../x": two).
_LEADING_UP = re.compile(r"(?:\.\.(?:/|\Z))*").match


def _normalize_from(path: str, first: int) -> str:
    """``_normalize_path_full`` of an absolute ``path`` without NUL, "//" or a trailing
    slash whose first segment starting with "." follows the "/" at ``first``: the plain head
    is kept as it is and only the tail is normalised, each of its leading ``..`` removing a
    segment of the head (none above the root)."""
    tail = path[first + 1:]
    match = _LEADING_UP(tail)  # `*`: it always matches, maybe nothing
    climbed = match.end() if match is not None else 0
    rest = tail[climbed:]
    if rest[:1] == "." or "/." in rest:
        # A `.` or `..` after the leading `..` (or a name starting with a dot): the tail's
        # own normalisation, then its leading `..` as below.
        tail = posixpath.normpath(tail)  # relative: "..", "../x", "x/y" or "."
        if tail == ".":
            return path[:first] or "/"
        match = _LEADING_UP(tail)
        climbed = match.end() if match is not None else 0
    if not climbed:
        return path[:first] + "/" + tail
    head = path[:first].rsplit("/", (climbed + 1) // 3)[0]  # "" when it climbs to the root
    tail = tail[climbed:]
    if not tail:
        return head or "/"
    return head + "/" + tail


def _normalize_path_full(path: str, base_dir: str | None) -> str:
    """Every path, without fast paths (the differential tests' judge)."""
    if not path:
        raise InvalidResourceError("empty path")
    if "\0" in path:
        raise InvalidResourceError("path contains a NUL byte")
    if not path.startswith("/"):
        if base_dir is None:
            raise InvalidResourceError(f"relative path {path!r} and no base directory")
        if not base_dir.startswith("/") or "\0" in base_dir:
            raise InvalidResourceError(f"base directory {base_dir!r} is not an absolute path")
        path = base_dir + "/" + path
    path = posixpath.normpath(path)
    # POSIX lets `//` at the very start mean something else, so normpath keeps it; we don't.
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path


def _segment_regex(segment: str) -> str:
    if segment == "*":
        return "[^/]+"  # a segment is never empty: `/*/**` must not match `/`
    out = []
    for char in segment:
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def may_match_below(pattern: PathPattern, path: str) -> bool:
    """Whether some path strictly below the normalised absolute ``path`` could be matched by
    ``pattern`` (with this module's segment semantics), so a walk of the filesystem for the
    pattern's matches must look inside ``path``; exact, and without touching the disk."""
    segments = pattern.segments
    count = len(segments)

    def closure(states: set[int]) -> set[int]:
        out = set(states)
        for index in sorted(states):
            while index < count and segments[index] == "**":
                index += 1
                out.add(index)
        return out

    states = closure({0})
    for part in (p for p in path.split("/") if p):
        moved: set[int] = set()
        for index in states:
            if index >= count:
                continue
            segment = segments[index]
            if segment == "**":
                moved.add(index)
            elif re.fullmatch(_segment_regex(segment), part, re.DOTALL):
                moved.add(index + 1)
        states = closure(moved)
        if not states:
            return False
    return any(index < count for index in states)


def _whole_segment_hint(text: str, segment: str) -> str:
    before, _, after = segment.partition("**")
    before, after = before.rstrip("*"), after.lstrip("*")
    parts = ([before + "*"] if before else []) + ["**"] + (["*" + after] if after else [])
    fixed = text.replace(segment, "/".join(parts), 1)
    return f"`*` matches within a segment, `**` any number of segments: did you mean `{fixed}`?"


def _compile_path(text: str) -> PathPattern:
    if not text:
        raise _Bad("empty path pattern")
    if "\0" in text:
        raise _Bad("path pattern contains a NUL byte")
    if not text.startswith("/"):
        if text.startswith("~"):
            raise _Bad(
                f"path pattern `{text}` is not absolute",
                "`~` is not expanded; write the absolute path",
            )
        suggestion = "/" + text.lstrip("./") if text.lstrip("./") else "/"
        raise _Bad(
            f"path pattern `{text}` is not absolute",
            f"patterns must start with `/`: did you mean `{suggestion}`?",
        )
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise _Bad(
                f"path pattern `{text}` contains `..`",
                "write the path the pattern means without `..` segments",
            )
        if "**" in segment and segment != "**":
            raise _Bad("`**` must be a whole path segment", _whole_segment_hint(text, segment))
        if segment == "**" and segments and segments[-1] == "**":
            continue  # `**/**` means the same as `**`
        segments.append(sys.intern(segment))  # `srv`, `**`, `lib`: one string for every pattern
    canonical = "/" + "/".join(segments)
    if canonical == text:
        canonical = text  # one string, not two equal ones (thousands of patterns are canonical)

    literal_count = 0
    for segment in segments:
        if "*" in segment or "?" in segment:
            break
        literal_count += 1
    is_literal = literal_count == len(segments)
    landlock_root = "/" + "/".join(segments[:literal_count])
    wild = segments[literal_count:]
    is_overbroad = bool(wild) and literal_count == 0 and all(s in ("*", "**") for s in wild)

    mode, fixed, regex = _REGEX, "", None
    if is_literal:
        mode = _LITERAL
    elif wild == ["**"]:
        mode, fixed = (_ALL, "") if literal_count == 0 else (_PREFIX, landlock_root)
    elif wild == ["*"]:
        mode, fixed = _CHILD, landlock_root.rstrip("/") + "/"
    else:
        pieces = [
            "(?:/.*)?" if segment == "**" else "/" + _segment_regex(segment) for segment in segments
        ]
        regex = re.compile("".join(pieces), re.DOTALL)
    return PathPattern(
        text=text,
        canonical=canonical,
        is_literal=is_literal,
        is_overbroad=is_overbroad,
        segments=tuple(segments),
        landlock_root=landlock_root,
        _mode=mode,
        _fixed=fixed,
        _regex=regex,
    )


# --------------------------------------------------------------------------- hosts

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_HOSTNAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")
_PORT = re.compile(r"[0-9]{1,5}")
_SPACE = re.compile(r"\s")
# The common case, already canonical: a lower-case name whose last label starts with a
# letter (so the C resolver cannot read it as an address) and an optional port.
_PLAIN_HOST = re.compile(r"((?:[a-z0-9_-]+\.)*[a-z][a-z0-9_-]*)(?::([0-9]{1,5}))?")
# A dotted quad already in canonical spelling (no leading zeros), with an optional port.
_PLAIN_IPV4 = re.compile(
    r"((?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))"
    r"(?::([0-9]{1,5}))?")
_SPLIT_HINT = "write `host`, `host:port`, `[ipv6]:port` or a URL such as `https://host/`"


def _check_text(text: str, what: str) -> None:
    if not text:
        raise _Bad(f"empty {what}")
    if "\0" in text:
        raise _Bad(f"{what} contains a NUL byte")
    if not text.isascii():
        raise _Bad(f"{what} `{text}` is not ASCII", "write international names in xn-- form")
    if _SPACE.search(text):
        raise _Bad(f"{what} `{text}` contains whitespace")


def _parse_port(raw: str) -> int:
    if not _PORT.fullmatch(raw):
        named = _DEFAULT_PORTS.get(raw.lower())
        hint = f"write the number, e.g. `:{named}`" if named else "ports are numbers 1-65535"
        raise _Bad(f"invalid port `{raw}`", hint)
    port = int(raw)
    if not 1 <= port <= 65535:
        raise _Bad(f"port {port} is out of range", "ports are numbers 1-65535")
    return port


def _split(text: str) -> tuple[str, str | None, bool]:
    """Split ``host[:port]`` forms into the host, the raw port and "was bracketed"."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Bad(f"unclosed `[` in `{text}`", _SPLIT_HINT)
        rest = text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise _Bad(f"unexpected `{rest}` after `]` in `{text}`", _SPLIT_HINT)
        return text[1:close], (rest[1:] if rest else None), True
    if text.count(":") >= 2:
        return text, None, True  # a bare IPv6 address cannot carry a port
    host, colon, port = text.partition(":")
    return host, (port if colon else None), False


def _canonical_ip(host: str, bracketed: bool) -> str | None:
    """The canonical spelling of ``host`` when it is an IP address, else None."""
    # Parsing IPv6 with ipaddress is the slow part of a host; the answer is a pure function
    # of the text, so short hosts (every address without a long zone) are remembered.
    if len(host) <= _REMEMBERED_HOST_LENGTH:
        return _canonical_ip_remembered(host, bracketed)
    return _canonical_ip_full(host, bracketed)


_REMEMBERED_HOST_LENGTH = 64


@functools.lru_cache(maxsize=4096)
def _canonical_ip_remembered(host: str, bracketed: bool) -> str | None:
    return _canonical_ip_full(host, bracketed)


def _canonical_ip_full(host: str, bracketed: bool) -> str | None:
    if bracketed or ":" in host:
        # A zone (`fe80::1%eth0`, `%25eth0` in URLs) picks the interface, not another
        # destination: it is dropped so that a rule about the address holds for every zone.
        bare = host.split("%", 1)[0]
        try:
            address = ipaddress.IPv6Address(bare)
        except ValueError:
            raise _Bad(f"invalid IPv6 address `{host}`") from None
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else address.compressed
    if _LEGACY_IPV4.fullmatch(host):
        # The C resolver reads `127.1` and `0x7f.0.0.1` as addresses: spell them as it does.
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _canonical_host(raw: str, bracketed: bool) -> str:
    host = raw.lower()
    if host.endswith(".") and not bracketed:
        host = host[:-1]  # before the address check, so `127.1.` is read as an address too
    ip = _canonical_ip(host, bracketed)
    if ip is not None:
        return ip
    if not host:
        raise _Bad("empty host", _SPLIT_HINT)
    if "/" in host:
        raise _Bad(f"`/` in host `{raw}`", _SPLIT_HINT)
    if not _HOSTNAME.fullmatch(host):
        raise _Bad(
            f"invalid host `{raw}`",
            "hosts are letters, digits, `-`, `_` and dots, or an IP address",
        )
    return host


class _UnfrozenHostPort:
    # `HostPort`'s slots, for the fast paths: built with plain slot stores, then given the
    # class `HostPort` (allowed between classes of identical layout; see `decision.py`).
    __slots__ = ("host", "port")
    host: str
    port: int | None


def _host_port(host: str, port: int | None) -> HostPort:
    """``HostPort(host, port)``, without the frozen dataclass's ``object.__setattr__`` calls."""
    found = object.__new__(_UnfrozenHostPort)
    found.host = host
    found.port = port
    found.__class__ = HostPort  # type: ignore[assignment]
    return found  # type: ignore[return-value]


if HostPort.__slots__ != _UnfrozenHostPort.__slots__ or _host_port("h", 1) != HostPort("h", 1):  # pragma: no cover
    raise ImportError("the fast HostPort constructor does not build a HostPort")


# A URL whose scheme has a default port and whose host is a plain name (as `_PLAIN_HOST`),
# with an optional port and the rest ASCII without spaces: `urlsplit` ends the host at the
# first `/`, `?` or `#`, and none of the full path's checks can refuse it.
_PLAIN_URL = re.compile(
    r"(https|http|wss|ws|ftp)://((?:[a-z0-9_-]+\.)*[a-z][a-z0-9_-]*)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?")
# A bracketed IPv6 address in lower case, with an optional port.
_PLAIN_IPV6 = re.compile(r"\[([0-9a-f:.]+)\](?::([0-9]{1,5}))?")


def normalize_host_text(text: str) -> tuple[HostPort, str]:
    """``normalize(ResourceKind.HOST, text)`` and the normal form's text (``str`` of it).

    Raises :class:`InvalidResourceError` as :func:`normalize` does.
    """
    # The common shapes take fast paths that answer as `_normalize_host_full` (differential
    # tests), each chosen by one look at the text (a plain name or address has no `[` and no
    # `://`); the rest, and every error, go the full way.
    if text[:1] == "[":
        bracketed = _PLAIN_IPV6.fullmatch(text)
        if bracketed is not None:
            raw_host, raw_port = bracketed.groups()
            port = None if raw_port is None else int(raw_port)
            if port is None or 1 <= port <= 65535:
                try:
                    address = _canonical_ip(raw_host, True)
                except _Bad:
                    address = None  # the full path says why
                if address is not None:
                    return _host_port(address, port), host_text(address, port)
    elif "://" in text:
        url = _PLAIN_URL.fullmatch(text)
        if url is not None:
            scheme, host, raw_port = url.groups()
            number = _DEFAULT_PORTS[scheme] if raw_port is None else int(raw_port)
            if 1 <= number <= 65535:
                return _host_port(host, number), f"{host}:{number}"
    else:
        plain = _PLAIN_HOST.fullmatch(text) or _PLAIN_IPV4.fullmatch(text)
        if plain is not None:
            host, raw_port = plain.groups()
            if raw_port is None:
                return _host_port(host, None), text
            number = int(raw_port)
            if 1 <= number <= 65535:
                # Already canonical unless the port has leading zeros.
                return _host_port(host, number), (text if raw_port[0] != "0" else f"{host}:{number}")
    try:
        found = _normalize_host_full(text)
    except _Bad as bad:
        raise InvalidResourceError(_bad_message(bad)) from None
    return found, str(found)


def _normalize_host_full(text: str) -> HostPort:
    """Every host form, without the fast paths above (the differential tests' judge)."""
    _check_text(text, "host")
    if "://" in text:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise _Bad(f"invalid URL `{text}`: {exc}") from None
        if not parts.hostname:
            raise _Bad(f"URL `{text}` has no host")
        if port is None:
            port = _DEFAULT_PORTS.get(parts.scheme.lower())
        elif port == 0:
            raise _Bad("port 0 is out of range")
        bracketed = parts.netloc.rpartition("@")[2].startswith("[")
        return HostPort(_canonical_host(parts.hostname, bracketed), port)
    raw_host, raw_port, bracketed = _split(text)
    host = _canonical_host(raw_host, bracketed)
    return HostPort(host, None if raw_port is None else _parse_port(raw_port))


def _compile_host(text: str) -> HostPattern:
    _check_text(text, "host pattern")
    if "://" in text:
        raise _Bad(
            f"host pattern `{text}` is a URL",
            "network rules scope hosts and ports, not URLs: write `host` or `host:port`",
        )
    raw_host, raw_port, bracketed = _split(text)
    ports = None if raw_port is None or raw_port == "*" else _parse_port_range(raw_port)
    port = ports[0] if ports is not None and ports[0] == ports[1] else None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    if raw_host == "*" and not bracketed:
        mode, host, suffix = _ALL, "*", ""
    elif "/" in raw_host:
        network = _parse_network(raw_host)
        mode, host, suffix = _CIDR, network.compressed, ""
    elif "*" in raw_host:
        if bracketed or not raw_host.startswith("*.") or "*" in raw_host[2:]:
            fixed = "*." + raw_host.lstrip("*.") if raw_host.startswith("*") else None
            hint = "`*` may only be the whole host or its first label, as in `*.example.com`"
            if fixed and "*" not in fixed[1:]:
                hint = f"did you mean `{fixed}`?"
            raise _Bad(f"misplaced `*` in host pattern `{text}`", hint)
        parent = _canonical_host(raw_host[2:], False)
        if parent.rpartition(".")[2].isdigit():
            raise _Bad(
                f"host pattern `{text}` puts a wildcard on an IP address",
                "wildcards apply to DNS names only; list the addresses",
            )
        mode, host, suffix = _SUFFIX, "*." + parent, "." + parent
    else:
        mode, host, suffix = _LITERAL, _canonical_host(raw_host, bracketed), ""
    shown = host_text(host)
    if ports is not None:
        shown += f":{ports[0]}" if ports[0] == ports[1] else f":{ports[0]}-{ports[1]}"
    if shown == text:
        shown = text
    return HostPattern(
        text=text,
        canonical=shown,
        is_literal=mode == _LITERAL and port is not None,
        is_overbroad=(mode == _ALL or (mode == _CIDR and network is not None and network.prefixlen == 0))
        and ports is None,
        host_text=host,
        port=port,
        _mode=mode,
        _suffix=suffix,
        port_range=ports,
        _network=network,
    )


def _parse_port_range(raw: str) -> tuple[int, int]:
    low, dash, high = raw.partition("-")
    if not dash:
        port = _parse_port(raw)
        return port, port
    first, last = _parse_port(low), _parse_port(high)
    if first > last:
        raise _Bad(f"port range `{raw}` runs backwards", f"did you mean `{last}-{first}`?")
    return first, last


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _parse_network(raw: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR range (``10.0.0.0/8``, ``fe80::/10``); IPv4-mapped IPv6 ranges become IPv4."""
    address, _, length = raw.partition("/")
    if not length.isdigit():
        raise _Bad(f"invalid CIDR range `{raw}`", "write an address, `/` and a prefix length, as `10.0.0.0/8`")
    try:
        network = ipaddress.ip_network(f"{address.lower()}/{int(length)}", strict=False)
    except ValueError:
        raise _Bad(f"invalid CIDR range `{raw}`",
                   "write an address, `/` and a prefix length, as `10.0.0.0/8` or `fe80::/10`") from None
    if network.compressed != f"{address.lower()}/{int(length)}" and network.network_address != ipaddress.ip_address(address):
        raise _Bad(f"CIDR range `{raw}` has host bits set", f"did you mean `{network.compressed}`?")
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


# --------------------------------------------------------------------------- names


def _check_name(text: str, what: str) -> None:
    if not text:
        raise _Bad(f"empty {what}")
    if "\0" in text:
        raise _Bad(f"{what} contains a NUL byte")
    if text.isspace():
        raise _Bad(f"{what} is only whitespace")


def _compile_name(text: str) -> NamePattern:
    _check_name(text, "name pattern")
    canonical = re.sub(r"\*{2,}", "*", text) if "**" in text else text
    stars = canonical.count("*")
    mode, fixed, regex = _REGEX, "", None
    if stars == 0:
        mode = _LITERAL
    elif canonical == "*":
        mode = _ALL
    elif stars == 1 and canonical.endswith("*"):
        mode, fixed = _PREFIX, canonical[:-1]
    elif stars == 1 and canonical.startswith("*"):
        mode, fixed = _SUFFIX, canonical[1:]
    else:
        regex = re.compile(".*".join(map(re.escape, canonical.split("*"))), re.DOTALL)
    return NamePattern(
        text=text,
        canonical=canonical,
        is_literal=stars == 0,
        is_overbroad=mode == _ALL,
        _mode=mode,
        _fixed=fixed,
        _regex=regex,
    )


# --------------------------------------------------------------------------- condition globs


@functools.lru_cache(maxsize=4096)
def _glob_regex(glob: str) -> re.Pattern[str]:
    out = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if glob.startswith("**", index):
            out.append(".*")
            while index < len(glob) and glob[index] == "*":
                index += 1
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL)


def glob_matches(glob: str, value: str) -> bool:
    """Whether ``value`` is matched by ``glob`` with the language's glob semantics.

    The semantics of path patterns, applied to any string: ``*`` matches a run of
    characters other than ``/``, ``?`` one character other than ``/``, ``**`` any run of
    characters including ``/``; ``.`` is not special (``core-*`` matches ``core-a.b``);
    ``[`` and ``]`` are ordinary characters and there is no escaping. Case-sensitive.
    """
    return _glob_regex(glob).fullmatch(value) is not None


# --------------------------------------------------------------------------- entry points


_PATH, _HOST, _NAME = ResourceKind.PATH, ResourceKind.HOST, ResourceKind.NAME


def normalize(kind: ResourceKind, resource: str, *, base_dir: str | None = None) -> Resource:
    """The normal form of a requested ``resource`` of ``kind``.

    ``base_dir`` (absolute) resolves relative paths; it is ignored for other kinds.
    Raises :class:`InvalidResourceError` when the resource is malformed.
    """
    if not isinstance(resource, str):
        raise InvalidResourceError(f"resource must be a string, not {type(resource).__name__}")
    # Identity tests against module constants: this runs once per request.
    if kind is _PATH:
        return _normalize_path(resource, base_dir)
    if kind is _HOST:
        return normalize_host_text(resource)[0]
    try:
        if kind is _NAME:
            _check_name(resource, "name")
            return resource
    except _Bad as bad:
        raise InvalidResourceError(_bad_message(bad)) from None
    return normalize(ResourceKind(kind), resource, base_dir=base_dir)


def _bad_message(bad: _Bad) -> str:
    return bad.message if bad.hint is None else f"{bad.message} ({bad.hint})"


@overload
def compile_pattern(kind: Literal[ResourceKind.PATH], text: str) -> PathPattern: ...
@overload
def compile_pattern(kind: Literal[ResourceKind.HOST], text: str) -> HostPattern: ...
@overload
def compile_pattern(kind: Literal[ResourceKind.NAME], text: str) -> NamePattern: ...
@overload
def compile_pattern(kind: ResourceKind, text: str) -> Pattern: ...
def compile_pattern(kind: ResourceKind, text: str) -> Pattern:
    """Compile the resource pattern ``text`` for resources of ``kind``.

    Raises :class:`PatternError` (with a ``hint`` when a fix is known) when it is malformed.
    """
    if not isinstance(text, str):
        raise PatternError(f"pattern must be a string, not {type(text).__name__}")
    try:
        if kind == ResourceKind.PATH:
            return _compile_path(text)
        if kind == ResourceKind.HOST:
            return _compile_host(text)
        return _compile_name(text)
    except _Bad as bad:
        raise PatternError(bad.message, bad.hint) from None


# --------------------------------------------------------------------------- algebra
#
# Everything the engine's tools know about patterns beyond matching one resource lives
# here: containment (:meth:`Pattern.subsumes`), overlap, the intersection of a declared and
# a rule pattern, and the one way templates are treated when a pattern is reasoned about
# before a plugin fills it in.

#: The pattern of each kind that matches every resource of it.
EVERYTHING: dict[ResourceKind, str] = {ResourceKind.PATH: "/**", ResourceKind.HOST: "*",
                                       ResourceKind.NAME: "*"}

#: What the per-plugin templates stand for while a pattern is reasoned about without a
#: plugin: opaque literals, so that ``{plugin_dir}/**`` subsumes ``{plugin_dir}/data/**``
#: and nothing else does (but ``/**``), and a pattern is valid for a kind exactly when it
#: is valid once a plugin fills it in. The compiler (which kinds a pattern is valid for)
#: and ``policy-lint`` (overlap, redundancy, breadth) both use these.
TEMPLATE_STAND_INS: dict[str, str] = {"plugin_dir": "/_plugin_dir_", "plugin": "_plugin_"}

#: A region: the patterns whose intersection it is; ``()`` is every resource.
Region: TypeAlias = tuple[Pattern, ...]


def with_stand_ins(text: str) -> str:
    """``text`` with each per-plugin template replaced by its :data:`TEMPLATE_STAND_INS`."""
    for name, stand_in in TEMPLATE_STAND_INS.items():
        text = text.replace("{" + name + "}", stand_in)
    return text


def with_templates(text: str) -> str:
    """``text`` with each stand-in turned back into its template, for messages."""
    for name, stand_in in TEMPLATE_STAND_INS.items():
        text = text.replace(stand_in, "{" + name + "}")
    return text


@functools.lru_cache(maxsize=65536)
def symbolic_pattern(kind: ResourceKind, text: str) -> Pattern | None:
    """``text`` (templates still open) compiled with the stand-ins, or None when invalid."""
    try:
        return compile_pattern(kind, with_stand_ins(text))
    except PatternError:
        return None


def matches_everything(pattern: Pattern) -> bool:
    """Whether ``pattern`` matches every resource of its kind (``/**``, ``*``, ``*:*``)."""
    everything = symbolic_pattern(pattern.kind, EVERYTHING[pattern.kind])
    return everything is not None and pattern.subsumes(everything)


def covers_all(broad: Sequence[Pattern] | None, narrow: Sequence[Pattern] | None) -> bool:
    """Whether the patterns ``broad`` match every resource the patterns ``narrow`` match
    (None: any resource). Conservative like :meth:`Pattern.subsumes`."""
    if broad is None:
        return True
    if narrow is None:
        return any(matches_everything(p) for p in broad)
    return all(any(b.subsumes(n) for b in broad) for n in narrow)


def _sequences_overlap(left: Sequence[_T], right: Sequence[_T], star: _T,
                       pair: Callable[[_T, _T], bool]) -> bool:
    """Whether two token sequences, where ``star`` matches any run of tokens, match a
    common sequence; ``pair(a, b)`` says whether two other tokens match a common token.

    The companion of :func:`_covers` (containment) for overlap.
    """

    @functools.cache
    def meet(i: int, j: int) -> bool:
        if i == len(left) and j == len(right):
            return True
        if i < len(left) and left[i] == star and meet(i + 1, j):
            return True
        if j < len(right) and right[j] == star and meet(i, j + 1):
            return True
        if i == len(left) or j == len(right):
            return False
        a, b = left[i], right[j]
        if a == star and b == star:
            return False  # one of the stars can always step aside (above)
        if a == star or b == star or pair(a, b):
            return meet(i if a == star else i + 1, j if b == star else j + 1)
        return False

    return meet(0, 0)


def _path_chars(a: str, b: str) -> bool:
    return a == b or "?" in (a, b)  # `?` is one character in a path segment


def _path_segments(a: str, b: str) -> bool:
    return _sequences_overlap(a, b, "*", _path_chars)


def overlaps(left: Pattern, right: Pattern) -> bool:
    """Whether some resource matches both patterns (exact for hosts, names and paths)."""
    if isinstance(left, PathPattern) and isinstance(right, PathPattern):
        return _sequences_overlap(left.segments, right.segments, "**", _path_segments)
    if isinstance(left, NamePattern) and isinstance(right, NamePattern):
        return _sequences_overlap(left.canonical, right.canonical, "*", _same)
    if isinstance(left, HostPattern) and isinstance(right, HostPattern):
        lp, rp = left.port_range, right.port_range
        if lp is not None and rp is not None and (lp[1] < rp[0] or rp[1] < lp[0]):
            return False
        if left.network is not None or right.network is not None:
            if left.host_text == "*" or right.host_text == "*":
                return True
            ln, rn = left.network, right.network
            # Names are not resolved: an address range and a name share no resource.
            return ln is not None and rn is not None and ln.version == rn.version and ln.overlaps(rn)
        a, b = left.host_text, right.host_text
        if a == "*" or b == "*":
            return True
        if a.startswith("*.") and b.startswith("*."):
            return a.endswith(b[1:]) or b.endswith(a[1:])
        if a.startswith("*."):
            return b.endswith(a[1:])
        if b.startswith("*."):
            return a.endswith(b[1:])
        return a == b
    return False


def intersect(declared: Pattern | None, rule: Pattern | None) -> Region | None:
    """The region both patterns match (None: either means any resource), shown as the
    narrower one when one contains the other; None when they share nothing."""
    if declared is None:
        return () if rule is None else (rule,)
    if rule is None or rule.subsumes(declared):
        return (declared,)
    if declared.subsumes(rule):
        return (rule,)
    if not overlaps(declared, rule):
        return None
    return (declared, rule)


def region_overlaps(region: Region, pattern: Pattern | None) -> bool:
    """Whether ``pattern`` (None: any resource) may match a resource of ``region``."""
    if pattern is None or not region:
        return True
    return all(overlaps(p, pattern) for p in region)


def region_covered(patterns: Sequence[Pattern] | None, region: Region) -> bool:
    """Whether one of ``patterns`` (None: any resource) matches the whole ``region``."""
    if patterns is None:
        return True
    if not region:
        return False  # a request without a resource matches only rules without `on`
    return any(pattern.subsumes(part) for pattern in patterns for part in region)
