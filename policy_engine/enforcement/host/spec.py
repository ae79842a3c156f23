"""What the policy grants one plugin, translated for the kernel and the worker.

Landlock and seccomp are coarse: paths, TCP ports, whole syscalls. The plan here is a
superset of what the decision table allows (every path an allow pattern reaches, every port
an allow pattern names); the worker's audit hook then checks each action against the
plugin's decision table, which has the rest of the precision (host names, conditions).
A glob grant reaches the kernel as the existing paths it matches at start
(:mod:`policy_engine.globs`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...errors import PluginValidationError, UsageError
from ...exactness import inexact_reason, is_under, mask_path
from ...families import kernel_actions
from ...globs import MAX_MATCHES, MAX_VISITS, denied_by, expand_glob, is_expandable
from ...patterns import HostPattern, PathPattern, Pattern
from ...permissions import Permission
from ...risks import INEXACT_GRANT, MISSING_DISK_LIMIT
from ...settings import Effective
from ...table import (
    ActionEntry,
    PinStatus,
    PluginTable,
    TableRule,
    _allow_applies,
    _deny_applies,
)
from ..wire import WireEntry, WireRule, WireTable
from ..worker.lockdown import LockdownSpec
from .usage import ResourceLimits

__all__ = ["KernelGrants", "checker_data", "expanded_grants", "inexact_denies", "one_expansion",
           "inexact_grants", "kernel_grants", "kernel_masks", "lockdown_spec",
           "resource_limits", "wire_table"]


@dataclass(frozen=True, slots=True)
class KernelGrants:
    """The coarse grants of one plugin: directories, ports, and two yes/no switches."""

    read_paths: tuple[str, ...]
    write_paths: tuple[str, ...]
    connect_ports: tuple[int, ...]
    any_port: bool
    network: bool
    subprocess: bool


def _granted(entry: ActionEntry | None) -> tuple[Pattern, ...] | None:
    """Patterns an allow could reach for one permission; None means "any resource";
    an empty tuple means nothing is granted."""
    if entry is None or not entry.declared or not entry.allows:
        return ()
    if any(rule.patterns is None and rule.error is None for rule in entry.denies
           if rule.when is None and rule.unless is None):
        return ()  # an unconditional deny of every resource
    rule_patterns: list[Pattern] = []
    for rule in entry.allows:
        if rule.patterns is None:
            return entry.declared_patterns  # any resource, narrowed by the declaration
        rule_patterns.extend(rule.patterns)
    # A grant inside a tree an unconditional deny covers whole is never shown: the kernel
    # then holds that deny exactly (see policy_engine.exactness).
    denied = _denied_trees(entry)
    return tuple(p for p in rule_patterns
                 if not (isinstance(p, PathPattern) and any(is_under(p.landlock_root, tree)
                                                            for tree in denied)))


def _denied_trees(entry: ActionEntry) -> tuple[str, ...]:
    trees: list[str] = []
    for rule in entry.denies:
        if rule.patterns is None or rule.when is not None or rule.unless is not None:
            continue
        for pattern in rule.patterns:
            if isinstance(pattern, PathPattern) and not pattern.is_literal:
                tree = mask_path(pattern)
                if tree is not None:
                    trees.append(tree)
    return tuple(trees)


def _roots(patterns: tuple[Pattern, ...] | None) -> tuple[str, ...]:
    if patterns is None:
        return ("/",)
    return tuple(dict.fromkeys(p.landlock_root for p in patterns if isinstance(p, PathPattern)))


#: The widest port range given to the kernel port by port.
_MAX_KERNEL_PORTS = 1024


def kernel_grants(table: PluginTable) -> KernelGrants:
    """The coarse grants for ``table``: each path grant as its literal root (the widest the
    kernel could be asked to show; :func:`expanded_grants` is what a worker gets)."""
    reads = tuple(dict.fromkeys(r for g in _granted_for(table, "read_paths") for r in _roots(g)))
    writes = tuple(dict.fromkeys(r for g in _granted_for(table, "write_paths")
                                 for r in _roots(g)))
    return _grants(table, reads, writes)


def _granted_for(table: PluginTable, part: str) -> list[tuple[Pattern, ...] | None]:
    # Which permissions feed which part of the plan is the registry's.
    return [_granted(table.entries.get(Permission(action))) for action in kernel_actions(part)]


def _grants(table: PluginTable, reads: tuple[str, ...], writes: tuple[str, ...]) -> KernelGrants:
    def granted(part: str) -> list[tuple[Pattern, ...] | None]:
        return _granted_for(table, part)

    connects = granted("connect_ports")
    network: tuple[Pattern, ...] | None = (
        None if any(g is None for g in connects) else tuple(p for g in connects if g for p in g))
    network_granted = any(g != () for g in connects)
    # A port range becomes its ports for the kernel, up to a bound; a wider range is "any
    # port" there (the decision table still holds the range exactly).
    ranges = [p.port_range for p in network or () if isinstance(p, HostPattern)]
    any_port = network is None or any(r is None or r[1] - r[0] >= _MAX_KERNEL_PORTS for r in ranges)
    ports = () if network is None else tuple(sorted({
        port for r in ranges if r is not None and r[1] - r[0] < _MAX_KERNEL_PORTS
        for port in range(r[0], r[1] + 1)
    }))
    return KernelGrants(
        read_paths=reads,
        write_paths=writes,
        connect_ports=ports,
        any_port=any_port and network_granted,
        network=network_granted,
        subprocess=any(g != () for g in granted("exec")),
    )


#: The expansions made inside one :func:`one_expansion` scope, by table (None outside one).
_EXPANSIONS: contextvars.ContextVar[dict[int, tuple[PluginTable, tuple[KernelGrants, tuple[str, ...]]]] | None] = \
    contextvars.ContextVar("expansions", default=None)


@contextlib.contextmanager
def one_expansion() -> Iterator[None]:
    """Within this scope a table's glob grants are walked once: validation, the refusals
    and the worker's kernel plan all see the same expansion (the loader wraps one load in
    it). Outside it each call walks the filesystem afresh."""
    token = _EXPANSIONS.set({})
    try:
        yield
    finally:
        _EXPANSIONS.reset(token)


def expanded_grants(table: PluginTable) -> tuple[KernelGrants, tuple[str, ...]]:
    """The grants for ``table`` with each glob grant expanded into the existing paths it
    matches (:mod:`policy_engine.globs`), and one message naming each rule whose expansion
    went past the bound (such a grant stays its literal root: see :func:`inexact_grants`)."""
    made = _EXPANSIONS.get()
    if made is None:
        return _expand(table)
    held = made.get(id(table))
    if held is None or held[0] is not table:
        held = (table, _expand(table))
        made[id(table)] = held
    return held[1]


def _expand(table: PluginTable) -> tuple[KernelGrants, tuple[str, ...]]:
    entries = table.entries
    overflow: dict[str, None] = {}
    left = [MAX_MATCHES, MAX_VISITS]  # shared by every glob grant of the plugin

    def paths(part: str) -> tuple[str, ...]:
        out: dict[str, None] = {}
        for action in kernel_actions(part):
            entry = entries.get(Permission(action))
            patterns = _granted(entry)
            if patterns is None:
                out.setdefault("/", None)  # any resource
                continue
            if entry is None:
                continue
            denied = denied_by(_unconditional_denies(entry))
            for pattern in patterns:
                if not isinstance(pattern, PathPattern):
                    continue
                if not is_expandable(pattern):
                    out.setdefault(pattern.landlock_root, None)
                    continue
                expansion = expand_glob(pattern, denied, max_matches=left[0],
                                        max_visits=left[1])
                left[0] -= len(expansion.paths)
                left[1] -= expansion.visits
                if expansion.complete:
                    out.update(dict.fromkeys(expansion.paths))
                    continue
                out.setdefault(pattern.landlock_root, None)
                overflow.setdefault(_overflow_message(entry, pattern), None)
        return tuple(out)

    return _grants(table, paths("read_paths"), paths("write_paths")), tuple(overflow)


def _unconditional_denies(entry: ActionEntry) -> tuple[PathPattern, ...]:
    return tuple(p for rule in entry.denies if _unconditional(rule) and rule.patterns is not None
                 for p in rule.patterns if isinstance(p, PathPattern))


def _overflow_message(entry: ActionEntry, pattern: PathPattern) -> str:
    rule = next((r for r in entry.allows if r.patterns is not None and pattern in r.patterns),
                next(iter(entry.allows), None))
    where = f"{rule.ref.location}: `{rule.ref.text}`: " if rule is not None else ""
    return (f"{where}the glob `{pattern.text}` matches too many paths below "
            f"`{pattern.landlock_root}` for the kernel to be given each one (the plugin's glob "
            f"grants together may match {MAX_MATCHES} paths and walk {MAX_VISITS} entries)")


def inexact_grants(table: PluginTable) -> tuple[str, ...]:
    """Each glob grant of ``table`` too wide to reach the kernel path by path, as an error
    naming the rule; empty when every one expands within the bound, or when the policy
    says ``accept inexact-grant`` for the plugin."""
    return _refused(table, expanded_grants(table)[1])


def _refused(table: PluginTable, overflow: tuple[str, ...]) -> tuple[str, ...]:
    if INEXACT_GRANT in table.effective.accepted_risks:
        return ()
    return tuple(f"the kernel cannot hold this grant exactly: {why}; narrow the pattern, or "
                 f"add `accept {INEXACT_GRANT}` to its `plugin \"{table.name}\"` block (the "
                 "grant then reaches the kernel as its literal directory)" for why in overflow)


def inexact_denies(table: PluginTable, data_dir: str | None = None) -> tuple[str, ...]:
    """Each file deny of ``table`` the kernel sandbox cannot hold exactly, as a message
    naming the rule (see :mod:`policy_engine.exactness`); empty when all are exact.
    ``data_dir`` is the plugin's own data directory, which the view shows writable.

    A condition is weighed against each grant's literal root; an unconditional deny against
    what the worker is shown (glob grants expanded, their denied matches left out): a
    directory shown is a tree, an existing single file counts only when the deny matches it."""
    coarse, fine = _shown(table, kernel_grants(table), data_dir), \
        _shown(table, expanded_grants(table)[0], data_dir)
    masks = set(kernel_masks(table))
    found: dict[str, None] = {}
    for permission, index in ((Permission.FILE_READ, 0), (Permission.FILE_WRITE, 1),
                              (Permission.FILE_DELETE, 1)):
        entry = table.entries.get(permission)
        for rule in entry.denies if entry is not None else ():
            conditional = rule.when is not None or rule.unless is not None
            if rule.patterns is None:
                if conditional and coarse[index]:
                    found.setdefault(f"{rule.ref.location}: `{rule.ref.text}`: it has a "
                                     "condition, which the kernel cannot evaluate", None)
                continue
            for pattern in rule.patterns:
                if not isinstance(pattern, PathPattern):
                    continue
                trees = coarse[index] if conditional else tuple(
                    tree for tree in fine[index]
                    if _is_tree(tree) or pattern.matches(tree))
                masked = permission is Permission.FILE_READ or pattern.canonical in masks or \
                    pattern.landlock_root in masks and pattern.segments[-1:] == ("**",)
                why = inexact_reason(pattern, trees, conditional=conditional, masked=masked)
                if why is not None:
                    found.setdefault(f"{rule.ref.location}: `{rule.ref.text}`: {why}", None)
    return tuple(found)


def _is_tree(path: str) -> bool:
    """False for a single file shown (a directory, or a path created at start, is a tree)."""
    return os.path.isdir(path) or not os.path.lexists(path)


def _shown(table: PluginTable, grants: KernelGrants,
           data_dir: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the view shows (for read denies) and what it shows writable."""
    writable = (*grants.write_paths, *((data_dir,) if data_dir else ()))
    shown = (*grants.read_paths, *writable, *((table.plugin_dir,) if table.plugin_dir else ()))
    return shown, writable


def kernel_masks(table: PluginTable) -> tuple[str, ...]:
    """Paths an unconditional ``file:read`` deny names exactly (a literal, or a ``/dir/**``
    tree): the sandbox masks each one it would show with an empty mount, so no route reads
    it. (Write and delete denies are held by read-only binds and Landlock.)"""
    masks: dict[str, None] = {}
    for permission in (Permission.FILE_READ,):
        entry = table.entries.get(permission)
        for rule in entry.denies if entry is not None else ():
            if rule.patterns is None or rule.when is not None or rule.unless is not None:
                continue
            for pattern in rule.patterns:
                if not isinstance(pattern, PathPattern):
                    continue
                if pattern.is_literal:
                    masks.setdefault(pattern.canonical, None)
                elif len(pattern.segments) > 1 and pattern.segments[-1] == "**" and \
                        pattern.landlock_root == "/" + "/".join(pattern.segments[:-1]):
                    masks.setdefault(pattern.landlock_root, None)  # `/dir/**`: the whole tree
    return tuple(masks)


def lockdown_spec(table: PluginTable, scratch_dir: Path, *, audit: bool = False,
                  unsandboxed: bool = False, data_dir: str | None = None,
                  kernel_records: bool = False) -> LockdownSpec:
    """The worker's lockdown for the plugin of ``table``.

    In audit mode nothing is denied by the worker's hook, and the sandbox is what holds:
    the plugin's view is the one its grants give, read-only, with the default denies
    masked; its write grants and its data directory (``data_dir``) are throwaway tmpfs
    mounts, so whatever it writes is gone when the worker stops; it may start programs
    (inside the same sandbox) and reach the network through the host's broker, which
    allows only what the policy allows. ``unsandboxed`` is the old audit mode: the whole
    filesystem open, read-write. ``kernel_records`` asks the worker to hand the host a
    seccomp listener, so the host sees (and records) opens and program starts from the
    kernel's side (:mod:`.syscalls`).
    """
    if table.plugin_dir is None:  # the runner refuses a plugin without a directory before this
        raise UsageError(f"plugin `{table.name}` has no directory, so it cannot run in a worker")
    limits = table.effective.limits
    grants, overflow = expanded_grants(table)
    refused = _refused(table, overflow)
    if refused:  # checked at load too; the filesystem may have grown since: fail closed
        raise PluginValidationError(table.name, refused)
    throwaway: tuple[str, ...] = ()
    masks = kernel_masks(table)
    if audit and unsandboxed:
        grants = KernelGrants(("/",), ("/",), (), True, True, True)
        masks = ()
    elif audit:
        # Each write grant's literal directory, not its glob's matches: a tmpfs covers a
        # directory, and what the plugin writes there in audit mode is thrown away anyway.
        coarse = kernel_grants(table).write_paths
        throwaway = tuple(dict.fromkeys((*coarse, *((data_dir,) if data_dir else ()))))
        grants = KernelGrants(grants.read_paths, (), (), True, True, True)
    return LockdownSpec(
        scratch_dir=str(scratch_dir),
        plugin_dir=table.plugin_dir,
        memory_bytes=limits.memory,
        file_size_bytes=limits.file_size,
        read_paths=grants.read_paths,
        write_paths=grants.write_paths,
        connect_ports=grants.connect_ports,
        connect_any_port=grants.any_port,
        allow_network=grants.network,
        allow_subprocess=grants.subprocess,
        mask_paths=masks,
        throwaway_paths=throwaway,
        kernel_records=kernel_records,
    )


def resource_limits(effective: Effective) -> ResourceLimits:
    """The supervisor's sampler limits for a plugin's resolved settings."""
    limits, timeouts = effective.limits, effective.timeouts
    disk_bytes, disk_files = limits.disk, limits.disk_files
    if disk_bytes and MISSING_DISK_LIMIT in effective.accepted_risks:
        from .disk import available

        if available():  # accepted: the directory stays unlimited where it cannot be held
            disk_bytes = disk_files = 0
    return ResourceLimits(
        disk_bytes=disk_bytes,
        disk_files=disk_files if disk_bytes else 0,
        memory_bytes=limits.memory,
        memory_warn_fraction=limits.memory_warn,
        cpu_share=limits.cpu,
        on_violation=limits.on_violation.value,
        init_timeout=timeouts.init,
    )


def checker_data(table: PluginTable, *, audit: bool = False) -> dict[str, object]:
    """The decision data the worker's audit hook consults: the plugin's own table, as data."""
    return {"table": wire_table(table).encode(), "audit": audit}


def wire_table(table: PluginTable) -> WireTable:
    """``table`` as the worker receives it (:class:`~..wire.WireTable`).

    A worker decides without a request context, as the host does when it decides a
    denial again; so each conditional rule is evaluated here, for no context, with the
    engine's own rules (a deny that cannot be evaluated applies, such an allow does not),
    and crosses as an unconditional rule or not at all.
    """
    entries = []
    for permission, entry in table.entries.items():
        kind = permission.kind
        entries.append(WireEntry(
            permission=permission.value,
            declared=entry.declared,
            declared_patterns=None if entry.declared_patterns is None else tuple(
                p.text for p in entry.declared_patterns if p.kind is kind),
            allows=tuple(_wire_rule(r, kind) for r in entry.allows
                         if _unconditional(r) or _allow_applies(r, table, None, [])),
            denies=tuple(_wire_rule(r, kind) for r in entry.denies
                         if (_unconditional(r) and r.error is None)
                         or _deny_applies(r, table, None, [])),
        ))
    if table.plugin_dir is None:  # the sandbox refuses such a plugin before it gets here
        raise UsageError(f"plugin `{table.name}` has no directory, so it cannot run in a worker")
    return WireTable(plugin=table.name, plugin_dir=table.plugin_dir, enabled=table.enabled,
                     trusted=table.pin is not PinStatus.MISMATCH, entries=tuple(entries))


def _unconditional(rule: TableRule) -> bool:
    return rule.when is None and rule.unless is None


def _wire_rule(rule: TableRule, kind: object) -> WireRule:
    patterns = None if rule.patterns is None else tuple(
        p.text for p in rule.patterns if p.kind is kind)
    return WireRule(location=rule.ref.location, patterns=patterns)
