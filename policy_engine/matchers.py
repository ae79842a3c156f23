"""Fast, linear-time predicates for compiled patterns, used on ``decide``'s hot path.

:func:`matcher` turns a :class:`~policy_engine.patterns.Pattern` into a plain function of a
normalised resource that answers exactly what ``pattern.matches`` answers. The common shapes
become one comparison; globs that ``patterns`` matches with a regular expression are matched
here without backtracking, so the cost is linear in the resource however many ``*`` and
``**`` the pattern holds (a regular expression such as ``(?:/.*)?/a(?:/.*)?/a...`` takes
polynomial time on a long path that almost matches). Patterns of other kinds, and shapes this
module does not know, keep their own ``matches``.

Nothing here generates source code: the predicates are closures over the pattern's data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from .patterns import HostPattern, HostPort, NamePattern, PathPattern, Pattern, Resource, host_text

__all__ = ["Matcher", "Prefixes", "any_matcher", "glob_segments_match", "host_shape", "matcher", "prefix_shape", "star_match"]

#: A predicate over a normalised resource.
Matcher = Callable[[Resource], bool]

# The matching modes of patterns.py, by value (kept in step by tests/test_matchers.py).
_LITERAL, _ALL, _PREFIX, _CHILD, _SUFFIX, _REGEX, _CIDR = range(7)


def _always(resource: Resource) -> bool:
    return True


def matcher(pattern: Pattern) -> Matcher:
    """A predicate equal to ``pattern.matches``, fast and linear in the resource."""
    kind = type(pattern)
    if kind is PathPattern:
        assert isinstance(pattern, PathPattern)
        return _path_matcher(pattern)
    if kind is NamePattern:
        assert isinstance(pattern, NamePattern)
        return _name_matcher(pattern)
    if kind is HostPattern:
        assert isinstance(pattern, HostPattern)
        return _host_matcher(pattern)
    return pattern.matches


def any_matcher(patterns: Sequence[Pattern]) -> Matcher:
    """A predicate: does any of ``patterns`` match (none: nothing matches).

    Equal patterns match the same resources by construction (their canonical forms are
    equal), so one predicate serves every table that holds the same patterns: a wildcard
    rule, or a manifest line many plugins share, is compiled once, not once per plugin.
    """
    return _shared_any_matcher(tuple(patterns))


# What many tables share (a wildcard rule's patterns, a manifest line every plugin has) is
# asked for again with every plugin and stays in a small cache; a plugin's own patterns are
# asked for once and would only fill a large one (about 0.8 KB per plugin at 10,000).
@functools.lru_cache(maxsize=4096)
def _shared_any_matcher(patterns: tuple[Pattern, ...]) -> Matcher:
    fused: list[Matcher] = []
    if len(patterns) > 1:
        for fuse in (_fuse, _fuse_hosts):
            one, rest = fuse(patterns)
            if one is not None:
                fused.append(one)
                patterns = rest
        if fused and not patterns and len(fused) == 1:
            return fused[0]
    tests = (*fused, *(matcher(p) for p in patterns))
    if len(tests) == 1:
        return tests[0]
    if not tests:
        return lambda resource: False

    def any_of(resource: Resource) -> bool:
        for test in tests:
            if test(resource):
                return True
        return False

    return any_of


def prefix_shape(patterns: Sequence[Pattern]) -> tuple[Prefixes, tuple[str, ...], Matcher | None] | None:
    """For path or name patterns of which some are one comparison each: ``(prefixes,
    literals, rest)`` such that the patterns match a normalised ``str`` resource ``r``
    exactly when ``r.startswith(prefixes) or r in literals or (rest is not None and
    rest(r))``: the comparisons are data ``decide`` tests in line, without a call, and
    ``rest`` predicates the other patterns. A literal is a pattern ``x`` or the directory of
    ``x/**``; up to :data:`_IN_LINE_LITERALS` of them are taken (``in`` on a tuple compares
    each, with no hash of the resource). None when no pattern is such a comparison."""
    starts: list[str] = []
    literals: list[str] = []
    rest: list[Pattern] = []
    for pattern in patterns:
        kind, mode = type(pattern), getattr(pattern, "_mode", -1)
        fixed: str = getattr(pattern, "_fixed", "")
        room = len(literals) < _IN_LINE_LITERALS
        if kind is NamePattern and mode == _PREFIX:
            starts.append(fixed)
        elif (kind is PathPattern or kind is NamePattern) and mode == _LITERAL and room:
            literals.append(pattern.canonical)
        elif kind is PathPattern and mode == _PREFIX and not fixed.endswith("/") and room:
            starts.append(fixed + "/")  # `/dir/**`: the directory, or anything below it
            literals.append(fixed)
        else:
            rest.append(pattern)
    if len(rest) == len(patterns):
        return None
    return _prefixes(starts), tuple(literals), (any_matcher(rest) if rest else None)


_IN_LINE_LITERALS = 8

#: What ``str.startswith`` takes: one prefix, or a tuple of them.
Prefixes = str | tuple[str, ...]


def _prefixes(starts: list[str]) -> Prefixes:
    """One prefix as itself (``startswith`` takes a str or a tuple; a plugin's one prefix is
    then one object to reach, not two), several as a tuple."""
    return starts[0] if len(starts) == 1 else tuple(starts)


def host_shape(patterns: Sequence[Pattern]) -> tuple[Prefixes, tuple[str, ...], Matcher | None] | None:
    """:func:`prefix_shape` for host patterns, over a request's normal text (``str`` of its
    :class:`HostPort`, as :func:`~policy_engine.patterns.normalize_host_text` gives it): a
    named host on one port is that text (``api.example.com:443``), a named host on any port
    is the host alone or its text followed by ``:`` and a port. Other patterns (suffixes,
    ranges, networks) are left to ``rest``."""
    starts: list[str] = []
    literals: list[str] = []
    rest: list[Pattern] = []
    for pattern in patterns:
        if type(pattern) is HostPattern and pattern._mode == _LITERAL and len(literals) < _IN_LINE_LITERALS:
            ports = pattern.port_range
            if ports is None:
                shown = host_text(pattern.host_text)
                starts.append(shown + ":")
                literals.append(shown)
                continue
            if ports[0] == ports[1]:
                literals.append(host_text(pattern.host_text, ports[0]))
                continue
        rest.append(pattern)
    if len(rest) == len(patterns):
        return None
    return _prefixes(starts), tuple(literals), (any_matcher(rest) if rest else None)


def _fuse(patterns: tuple[Pattern, ...]) -> tuple[Matcher | None, tuple[Pattern, ...]]:
    """One predicate for the literal, ``/dir/**``, ``prefix*`` and ``*suffix`` patterns among
    ``patterns`` (a set lookup and one ``startswith``/``endswith`` over a tuple, in C), and the
    patterns left over; None when fewer than two can be fused."""
    exact: set[str] = set()
    starts: list[str] = []
    ends: list[str] = []
    rest: list[Pattern] = []
    fused = 0
    for pattern in patterns:
        kind, mode = type(pattern), getattr(pattern, "_mode", -1)
        if kind is PathPattern and mode in (_LITERAL, _PREFIX):
            assert isinstance(pattern, PathPattern)
            exact.add(pattern.canonical if mode == _LITERAL else pattern._fixed)
            if mode == _PREFIX:
                starts.append(pattern._fixed + "/")
        elif kind is NamePattern and mode in (_LITERAL, _PREFIX, _SUFFIX):
            assert isinstance(pattern, NamePattern)
            if mode == _LITERAL:
                exact.add(pattern.canonical)
            else:
                (starts if mode == _PREFIX else ends).append(pattern._fixed)
        else:
            rest.append(pattern)
            continue
        fused += 1
    if fused < 2 or {type(p) for p in patterns if p not in rest} == {PathPattern, NamePattern}:
        return None, patterns
    exact_set, start_tuple, end_tuple = frozenset(exact), tuple(starts), tuple(ends)
    # No set lookup for a resource longer than every literal: hashing a new 4 KiB string
    # (a normalised long path) costs more than the rest of the test.
    longest = max(map(len, exact_set), default=-1)

    def any_fused(r: Resource) -> bool:
        return r.__class__ is str and (
            (len(r) <= longest and r in exact_set) or r.startswith(start_tuple) or r.endswith(end_tuple))

    return any_fused, tuple(rest)


def _fuse_hosts(patterns: tuple[Pattern, ...]) -> tuple[Matcher | None, tuple[Pattern, ...]]:
    """One predicate for the host patterns among ``patterns`` that name a host or a
    ``*.suffix`` with any port or one port (a set lookup and one ``endswith`` over a tuple,
    per port), and the patterns left over; None when fewer than two can be fused."""
    hosts: set[str] = set()
    suffixes: list[str] = []
    port_hosts: dict[int, set[str]] = {}
    port_suffixes: dict[int, list[str]] = {}
    rest: list[Pattern] = []
    for pattern in patterns:
        if type(pattern) is HostPattern and pattern._mode in (_LITERAL, _SUFFIX) and (
                pattern.port_range is None or pattern.port_range[0] == pattern.port_range[1]):
            assert isinstance(pattern, HostPattern)
            port = None if pattern.port_range is None else pattern.port_range[0]
            if pattern._mode == _LITERAL:
                (hosts if port is None else port_hosts.setdefault(port, set())).add(pattern.host_text)
            else:
                (suffixes if port is None else port_suffixes.setdefault(port, [])).append(pattern._suffix)
        else:
            rest.append(pattern)
    if len(patterns) - len(rest) < 2:
        return None, patterns
    host_set, suffix_tuple = frozenset(hosts), tuple(suffixes)
    by_port = {port: frozenset(names) for port, names in port_hosts.items()}
    ends_by_port = {port: tuple(ends) for port, ends in port_suffixes.items()}

    def any_host(r: Resource) -> bool:
        if r.__class__ is not HostPort:
            return False
        host = r.host
        if host in host_set or host.endswith(suffix_tuple):
            return True
        names = by_port.get(r.port)  # type: ignore[arg-type]  # None is not a key: no match
        if names is not None and host in names:
            return True
        ends = ends_by_port.get(r.port)  # type: ignore[arg-type]
        return ends is not None and host.endswith(ends)

    return any_host, tuple(rest)


def _path_matcher(pattern: PathPattern) -> Matcher:
    mode, fixed, canonical = pattern._mode, pattern._fixed, pattern.canonical
    if mode == _LITERAL:
        return lambda r: r.__class__ is str and r == canonical
    if mode == _ALL:
        return lambda r: r.__class__ is str
    if mode == _PREFIX:
        size = len(fixed)
        return lambda r: r.__class__ is str and r.startswith(fixed) and (len(r) == size or r[size] == "/")
    if mode == _CHILD:
        size = len(fixed)
        return lambda r: r.__class__ is str and r.startswith(fixed) and len(r) > size and r.find("/", size) < 0
    if mode == _REGEX:
        segments = pattern.segments
        if pattern._regex is not None and "**" not in segments and all(s.count("*") <= 1 for s in segments):
            # No `**` and at most one `*` per segment: each `[^/]*` of the expression can only
            # end at one place (before its segment's `/`), so the regular expression, which runs
            # in C, never backtracks more than the length of a segment.
            fullmatch = pattern._regex.fullmatch
            return lambda r: r.__class__ is str and fullmatch(r) is not None
        groups = _groups(segments)
        return lambda r: r.__class__ is str and _groups_match(groups, r)
    return pattern.matches


def _host_matcher(pattern: HostPattern) -> Matcher:
    mode, host, suffix, ports = pattern._mode, pattern.host_text, pattern._suffix, pattern.port_range
    if mode == _CIDR or mode not in (_LITERAL, _SUFFIX, _ALL):
        return pattern.matches
    if ports is None:
        if mode == _LITERAL:
            return lambda r: r.__class__ is HostPort and r.host == host
        if mode == _SUFFIX:
            return lambda r: r.__class__ is HostPort and r.host.endswith(suffix)
        return lambda r: r.__class__ is HostPort
    low, high = ports
    if low == high:
        if mode == _LITERAL:
            return lambda r: r.__class__ is HostPort and r.port == low and r.host == host
        if mode == _SUFFIX:
            return lambda r: r.__class__ is HostPort and r.port == low and r.host.endswith(suffix)
        return lambda r: r.__class__ is HostPort and r.port == low

    def in_range(r: Resource) -> bool:
        if r.__class__ is not HostPort:
            return False
        assert isinstance(r, HostPort)
        port = r.port
        if port is None or not low <= port <= high:
            return False
        return mode == _ALL or (r.host == host if mode == _LITERAL else r.host.endswith(suffix))

    return in_range


def _name_matcher(pattern: NamePattern) -> Matcher:
    mode, fixed, canonical = pattern._mode, pattern._fixed, pattern.canonical
    if mode == _LITERAL:
        return lambda r: r.__class__ is str and r == canonical
    if mode == _ALL:
        return lambda r: r.__class__ is str
    if mode == _PREFIX:
        return lambda r: r.__class__ is str and r.startswith(fixed)
    if mode == _SUFFIX:
        return lambda r: r.__class__ is str and r.endswith(fixed)
    if mode == _REGEX:
        pieces = tuple(canonical.split("*"))
        return lambda r: r.__class__ is str and star_match(pieces, r)
    return pattern.matches


def star_match(pieces: Sequence[str], text: str) -> bool:
    """Whether ``text`` matches the glob ``"*".join(pieces)`` (``*``: any run of characters).

    The first piece is a prefix, the last a suffix, and each piece between is found at its
    leftmost place after the one before: taking the leftmost place never loses a match, so
    no backtracking is needed and the cost is linear in ``text`` for a given pattern.
    """
    if len(pieces) == 1:
        return text == pieces[0]
    first, last = pieces[0], pieces[-1]
    if len(text) < len(first) + len(last) or not text.startswith(first) or not text.endswith(last):
        return False
    position, end = len(first), len(text) - len(last)
    for piece in pieces[1:-1]:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _segment_match(glob: str, segment: str) -> bool:
    """One path segment against one segment glob (``*`` within it, ``?`` one character).

    The classic two-pointer wildcard match: on a mismatch it resumes after the last ``*``,
    one character further, so it is at most ``len(glob) * len(segment)`` steps.
    """
    if glob == "*":
        return segment != ""
    g = s = 0
    star, mark = -1, 0
    glen, slen = len(glob), len(segment)
    while s < slen:
        if g < glen and (glob[g] == "?" or (glob[g] != "*" and glob[g] == segment[s])):
            g += 1
            s += 1
        elif g < glen and glob[g] == "*":
            star, mark = g, s
            g += 1
        elif star >= 0:
            g = star + 1
            mark += 1
            s = mark
        else:
            return False
    while g < glen and glob[g] == "*":
        g += 1
    return g == glen


def _run_at(group: Sequence[str], parts: Sequence[str], start: int) -> bool:
    for offset, glob in enumerate(group):
        if not _segment_match(glob, parts[start + offset]):
            return False
    return True


def glob_segments_match(segments: Sequence[str], path: str) -> bool:
    """Whether the normalised absolute ``path`` matches a path glob given as segments.

    ``**`` segments split the glob into runs of segment globs. The first run must match the
    path's first segments, the last run its last ones, and each run between is placed at its
    leftmost fit after the one before (``**`` absorbs any number of whole segments, so the
    leftmost fit never loses a match). Cost: linear in the path for a given glob.
    """
    return _groups_match(_groups(segments), path)


def _groups(segments: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The runs of segment globs between ``**`` segments (done once per pattern)."""
    groups: list[list[str]] = [[]]
    for segment in segments:
        if segment == "**":
            groups.append([])
        else:
            groups[-1].append(segment)
    return tuple(tuple(group) for group in groups)


def _groups_match(groups: tuple[tuple[str, ...], ...], path: str) -> bool:
    parts = path.split("/")[1:] if path != "/" else []
    if len(groups) == 1:
        only = groups[0]
        return len(only) == len(parts) and _run_at(only, parts, 0)
    head, tail = groups[0], groups[-1]
    if len(parts) < len(head) + len(tail):
        return False
    if not _run_at(head, parts, 0) or not _run_at(tail, parts, len(parts) - len(tail)):
        return False
    position, end = len(head), len(parts) - len(tail)
    for group in groups[1:-1]:
        if not group:
            continue
        size = len(group)
        while position + size <= end and not _run_at(group, parts, position):
            position += 1
        if position + size > end:
            return False
        position += size
    return True
