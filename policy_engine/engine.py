"""The engine: loads policies and manifests, builds the decision table, answers and caches.

Every answer comes from one immutable snapshot (policy set, decision table, cache). A reload
or a newly registered plugin builds a new snapshot and swaps it in with one assignment, so a
decision never mixes two policies, and a cached answer can never outlive its snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cachetools

from . import codes
from .bounded import realpath_below
from .changes import ChangeDetector
from .compiler import CompiledRule, PolicySet, RuleMemo, compile_policy
from .decision import Decision, Reason, deny
from .decision_log import DecisionLog
from .diagnostics import Diagnostic
from .digest import plugin_digest
from .errors import ManifestError, PermissionDeniedError, PolicySyntaxError, UsageError
from .lifecycle import FETCH_TIMEOUT, Origin, Status, WatchHandle, describe
from .manifest import (
    PluginMetadata,
    discover_manifests,
    manifest_from_bytes,
    manifest_from_mapping,
    parse_manifest,
    read_manifest_file,
)
from .nodes import PolicyFile
from .parser import parse_policy
from .policyset import read_policy_sets
from .settings import EMPTY_OVERLAY, Effective, Limits, Timeouts, resolve
from .table import DecisionTable, PluginFacts, PluginTable, SharedRules, build_plugin_table

__all__ = ["AUDIT_LOGGER_NAME", "CacheInfo", "Engine", "default_variables", "read_policy_sources"]

#: The logger of plugin-directory audit events (a manifest added, changed or removed, a
#: pinned plugin's files changed, a new manifest claiming a loaded name refused), each a
#: WARNING whose record carries ``plugin_event`` (a dict: ``kind``, ``path``, ``plugin``).
AUDIT_LOGGER_NAME = "policy_engine.audit"
audit_log = logging.getLogger(AUDIT_LOGGER_NAME)

log = logging.getLogger("policy_engine")

PolicySource = str | os.PathLike[str]
_MISS = object()


def default_variables() -> dict[str, str]:
    """Template variables every engine has unless the host overrides them.

    ``{home}`` is the user's home, ``{tmp}`` the temporary directory and ``{data_dir}``
    ``$XDG_DATA_HOME/policy_engine`` (``~/.local/share/policy_engine`` when unset).
    """
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return {"home": home, "tmp": tempfile.gettempdir(), "data_dir": os.path.join(xdg, "policy_engine")}


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """Decision cache statistics of the current snapshot."""

    hits: int
    misses: int
    size: int
    maxsize: int


@dataclass
class _Stats:
    hits: int = 0
    misses: int = 0


@dataclass(frozen=True)
class _Snapshot:
    policy: PolicySet
    table: DecisionTable
    manifests: Mapping[str, PluginMetadata]
    rules_by_plugin: Mapping[str, tuple[CompiledRule, ...]]
    wildcard_rules: tuple[CompiledRule, ...]
    problems: tuple[Diagnostic, ...]
    cache: cachetools.Cache[Any, Decision] | None
    # Per plugin: what its table was built from, the table and its problems, so that a
    # reload rebuilds only the tables whose inputs changed.
    built: Mapping[str, tuple[Any, PluginTable, list[Diagnostic]]] = field(default_factory=dict)
    # The exact-key LRU cache of the common case (no TTL): functools' C implementation, which
    # is thread-safe and costs a fraction of a Python-level cache with a lock.
    memo: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    stats: _Stats = field(default_factory=_Stats)


# Context values a cache key may hold: their type is part of the key, so `1`, `1.0` and
# `True` (equal and of equal hash) never share an answer. Other values are decided uncached.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _context_key(context: Mapping[str, Any]) -> tuple[tuple[str, type, Any], ...] | None:
    try:
        items = sorted(context.items())
    except (TypeError, AttributeError):
        return None
    key = []
    for name, value in items:
        if name.__class__ is not str or value.__class__ not in _SCALARS:
            return None
        key.append((name, value.__class__, value))
    return tuple(key)


def _table_inputs(
    policy: PolicySet,
    manifest: PluginMetadata,
    rules_by_plugin: Mapping[str, tuple[CompiledRule, ...]],
    wildcard: tuple[CompiledRule, ...],
) -> tuple[Any, ...] | None:
    """Everything one plugin's table is built from (None: always rebuild it).

    A pinned plugin is always rebuilt: its digest is read from its files, which may change
    without its manifest changing.
    """
    if manifest.name in policy.pins:
        return None
    return (
        manifest,
        rules_by_plugin.get(manifest.name, ()),
        wildcard,
        dict(policy.variables),
        policy.defaults,
        policy.plugin_settings.get(manifest.name),
    )


def read_policy_sources(policy: PolicySource | Sequence[PolicySource]) -> dict[str, str]:
    """Read ``.policy`` files: a file, a directory (its own ``*.policy`` entries) or a list.

    Reads through :func:`policy_engine.policyset.read_policy_sets`; raises
    :class:`~policy_engine.errors.PolicySetError` (a :class:`UsageError`) listing every bad
    entry, a missing path and a directory without policies.
    """
    paths = [policy] if isinstance(policy, (str, os.PathLike)) else list(policy)
    return read_policy_sets(paths)


def parse_sources(
    sources: Mapping[str, str], memo: ChangeDetector[PolicyFile] | None = None
) -> list[PolicyFile]:
    """Parse several policy texts, collecting the syntax errors of all of them.

    ``memo`` (the change detector of :mod:`policy_engine.changes`) keeps each file's parse
    by content digest: a file whose text did not change is not parsed again (parsing is most
    of a load), and the memo keeps only the files of this set once all of them parsed.
    """
    parsed: list[PolicyFile] = []
    diagnostics: list[Diagnostic] = []
    kept: dict[str, tuple[str, PolicyFile]] = {}
    for name, text in sources.items():
        known = memo.kept(name, text) if memo is not None else None
        if known is not None:
            parsed.append(known)
            kept[name] = (text, known)
            continue
        try:
            tree = parse_policy(text, name)
        except PolicySyntaxError as exc:
            diagnostics.extend(exc.diagnostics)
            continue
        parsed.append(tree)
        kept[name] = (text, tree)
    if memo is not None and not diagnostics:
        memo.adopt(kept)
    if diagnostics:
        raise PolicySyntaxError(diagnostics)
    return parsed


_collector_lock = threading.Lock()
_collector_holds = 0
_collector_was_enabled = False


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cycle collector off while any thread builds an engine, restored as found when
    the last build ends (a counter, so concurrent builds cannot leave it off)."""
    global _collector_holds, _collector_was_enabled
    with _collector_lock:
        if _collector_holds == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_holds += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_holds -= 1
            if _collector_holds == 0 and _collector_was_enabled:
                gc.enable()


def _promote_to_oldest_generation() -> None:
    """Move every object the collector tracks into its oldest generation, unscanned.

    A build's objects all stay alive (its tables), and every one is young: the first young
    collection after the build would scan them all (a second or more at 10,000 plugins,
    at the end of the load, their caches cold), and the next one of the middle generation
    again, only to promote them. :func:`gc.freeze` then :func:`gc.unfreeze` moves them, in
    two list splices, where those collections would have put them; they stay collectable,
    and the next full collection (which the promoted objects do not bring forward) scans
    them as it would have. Skipped when the host has frozen objects of its own, which
    ``unfreeze`` would release."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


def _compared(manifest_path: Path, data: bytes) -> bytes:
    """What the change detector compares for one manifest, at load and in ``watch``: the
    path it resolved to and its bytes (a manifest moved behind a link is a change too)."""
    return os.fsencode(manifest_path) + b"\0" + data


class Engine:
    """Decides what plugins may do, from policies and manifests.

    Build one with :meth:`load` (files and directories) or :meth:`from_source` (text, for
    tests and embedding). ``decide`` never raises for a bad request: it returns a deny.

    A build allocates the decision tables, hundreds of thousands of objects that stay
    alive. It moves them (and the few objects younger than the build) straight into the
    collector's oldest generation, unless the host has frozen objects of its own, so no
    young collection scans them; the next collection of the oldest generation scans them
    once (about 0.2 s at 2,000 plugins, 1.2 s at 10,000), in whichever later call it lands. With
    ``freeze_collector=True`` the engine collects the process's cyclic garbage before each
    build and calls :func:`gc.freeze` after it, so no collection scans the tables. That is
    a process-wide choice, left to the host: every object alive at a build, the host's
    too, that later becomes part of an unreachable reference cycle is not reclaimed until
    :func:`gc.unfreeze` (a plugin's supervisor unloaded after a reload, say).
    """

    def __init__(
        self,
        policy_sources: Mapping[str, str],
        manifests: Iterable[PluginMetadata] = (),
        variables: Mapping[str, str] | None = None,
        *,
        policy_paths: Sequence[PolicySource] | None = None,
        plugin_dirs: Sequence[PolicySource] = (),
        cache_size: int = 4096,
        cache_ttl: float | None = None,
        decision_log: DecisionLog | None = None,
        strict: bool = False,
        freeze_collector: bool = False,
    ) -> None:
        if cache_size < 0:
            raise UsageError("cache_size must be >= 0")
        self._variables = {**default_variables(), **dict(variables or {})}
        self._policy_paths = list(policy_paths) if policy_paths is not None else None
        self._plugin_dirs = list(plugin_dirs)
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._strict = strict
        self._freeze_collector = freeze_collector
        self.decision_log = decision_log
        self._write_lock = threading.RLock()
        self._extra_manifests: dict[str, PluginMetadata] = {m.name: m for m in manifests}
        self._sources = dict(policy_sources)
        self._parsed: ChangeDetector[PolicyFile] = ChangeDetector()
        # Each unchanged file's compiled rules (the parse memo above keeps its object).
        self._compiled: RuleMemo = {}
        self._revision = 0
        # One change detector per plugins directory: its manifests by path, content = the
        # resolved path and the bytes (a symlinked plugin directory moved is a change).
        self._manifest_memo: dict[str, ChangeDetector[PluginMetadata | None]] = {}
        # What ``watch(plugins=True)`` compares: manifests (resolved path and bytes) and the
        # digest of each pinned plugin's files.
        self._plugin_watch: ChangeDetector[None] = ChangeDetector()
        self._manifest_staged: list[tuple[str, ChangeDetector[PluginMetadata | None],
                                          dict[str, tuple[bytes, PluginMetadata | None]]]] = []
        self._state = self._rebuild(self._sources, None)
        self._origin: Origin | None = None

    # Construction ---------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        policy: PolicySource | Sequence[PolicySource],
        plugins: PolicySource | Sequence[PolicySource] | None = None,
        variables: Mapping[str, str] | None = None,
        *,
        public_key: PolicySource | None = None,
        insecure: bool = False,
        cache_dir: PolicySource | None = None,
        timeout: float = FETCH_TIMEOUT,
        **options: Any,
    ) -> Engine:
        """Load ``.policy`` files (a file, a directory or a list) and plugin manifests
        (a plugins directory, one plugin's directory, or a list of them).

        ``policy`` may also be one bundle file or the ``http(s)://`` URL of one. With
        ``public_key`` (a ``NAME.pub`` file or a directory of them) the policy must be a
        bundle signed by one of those keys; an unsigned bundle is refused
        (:class:`BundleError`). A URL needs a key unless ``insecure=True``. With
        ``cache_dir`` (created with mode 0700) the last good bundle and its serial are kept
        there, and a host that cannot fetch its URL at start starts from the cached bundle,
        verified again. ``timeout`` bounds each download.

        A plugin whose manifest is invalid is left out and reported in :attr:`problems`
        (``strict=True`` raises instead); a policy with any error raises.
        """
        paths = [policy] if isinstance(policy, (str, os.PathLike)) else list(policy)
        plugin_dirs: list[PolicySource] = []
        if plugins is not None:
            plugin_dirs = [plugins] if isinstance(plugins, (str, os.PathLike)) else list(plugins)
        origin = Origin(paths, public_key=public_key, insecure=insecure, cache_dir=cache_dir,
                        timeout=timeout)
        # A bundle is verified and compiled from the same bytes, in memory.
        sources = origin.initial()
        engine = cls(sources, (), variables, policy_paths=None if origin.is_bundle else paths,
                     plugin_dirs=plugin_dirs, **options)
        engine._origin = origin
        origin.last_success = time.time()
        return engine

    @classmethod
    def from_source(
        cls,
        policy: str | Mapping[str, str],
        manifests: Iterable[PluginMetadata | Mapping[str, Any] | str] = (),
        variables: Mapping[str, str] | None = None,
        *,
        plugin_paths: Mapping[str, str | os.PathLike[str]] | None = None,
        **options: Any,
    ) -> Engine:
        """Build an engine from policy text (or ``{file name: text}``) and manifests given
        as :class:`PluginMetadata`, mappings or YAML text.

        A manifest given as text or a mapping has no directory: ``plugin_paths`` maps plugin
        names to their directories. Without an entry the plugin has no ``{plugin_dir}``
        (never the current directory): patterns and scopes using it match nothing for it.
        """
        sources = {"<policy>": policy} if isinstance(policy, str) else dict(policy)
        paths = {name: Path(path) for name, path in (plugin_paths or {}).items()}
        loaded: list[PluginMetadata] = []
        for index, manifest in enumerate(manifests):
            if isinstance(manifest, PluginMetadata):
                loaded.append(manifest)
                continue
            file = f"<manifest {index}>"
            if isinstance(manifest, str):
                parsed = parse_manifest(manifest, file=file, plugin_path=Path("/"))
            else:
                parsed = manifest_from_mapping(manifest, file=file, plugin_path=Path("/"))
            given = paths.get(parsed.name)
            loaded.append(dataclasses.replace(
                parsed, plugin_path=None if given is None else given.absolute()))
        return cls(sources, loaded, variables, **options)

    def _all_manifests(self) -> tuple[list[PluginMetadata], list[Diagnostic]]:
        self._manifest_staged = []
        found: list[PluginMetadata] = []
        problems: list[Diagnostic] = []
        for directory in self._plugin_dirs:
            if not Path(directory).is_dir():
                raise UsageError(f"plugins directory `{directory}` does not exist")
            manifests, errors = self._load_manifests(directory)
            found.extend(manifests)
            for error in errors:
                problems.extend(error.diagnostics)
        if problems and self._strict:
            raise ManifestError(problems)
        found.extend(self._extra_manifests.values())
        return found, problems

    def _load_manifests(
        self, directory: PolicySource
    ) -> tuple[list[PluginMetadata], list[ManifestError]]:
        # As manifest.load_manifests, but a file whose bytes did not change since the last
        # load is not parsed again: a reload after one manifest changed reads every file and
        # parses one.
        loaded: list[PluginMetadata] = []
        errors: list[ManifestError] = []
        detector = self._manifest_memo.setdefault(os.fspath(directory), ChangeDetector())
        seen: dict[str, tuple[bytes, PluginMetadata | None]] = {}
        resolve_path = realpath_below(str(Path(directory)))
        for path in discover_manifests(directory):
            key = str(path)
            # Read once (bounded, as load_manifest reads it): the content the detector
            # compares is the resolved path and the bytes.
            try:
                file_path, manifest_path, data = read_manifest_file(path, resolve=resolve_path)
            except ManifestError as exc:
                errors.append(exc)
                continue
            raw = _compared(manifest_path, data)
            known = detector.kept(key, raw)
            if known is not None:
                loaded.append(known)
                seen[key] = (raw, known)
                continue
            try:
                manifest = manifest_from_bytes(data, file_path, manifest_path)
            except ManifestError as exc:
                errors.append(exc)
                seen[key] = (raw, None)  # an invalid manifest is still a content to watch
                continue
            loaded.append(manifest)
            seen[key] = (raw, manifest)
        # Adopted by _build once the new state is in force: a refused build is seen again.
        self._manifest_staged.append((os.fspath(directory), detector, seen))
        return loaded, errors

    def _rebuild(self, sources: Mapping[str, str], previous: _Snapshot | None) -> _Snapshot:
        # Building allocates millions of objects that all stay alive: the cycle collector
        # would scan the growing heap again and again for nothing (about a third of a load).
        if self._freeze_collector:
            # The new tables would otherwise be scanned by the next collections, young then
            # old (about 0.2 s at 2,000 plugins, in whichever call allocates next, often a
            # `decide`): `gc.freeze` after the build moves every object alive then out of
            # the collector's sight. A build leaves no cyclic garbage and an old snapshot is
            # freed by reference counting; the collection before it frees the process's own
            # cyclic garbage first, so that none is frozen (after the first build it scans
            # only what is younger than the last freeze).
            gc.collect()
        elif gc.isenabled():
            # What is young now is the host's; collected here (a few thousand objects at
            # most), none of its cyclic garbage is promoted with the tables below.
            gc.collect(1)
        with _collector_paused():
            state = self._build(sources, self._all_manifests(), previous)
            if self._freeze_collector:
                gc.freeze()
            else:
                _promote_to_oldest_generation()
            return state

    def _build(
        self,
        sources: Mapping[str, str],
        manifests: tuple[list[PluginMetadata], list[Diagnostic]],
        previous: _Snapshot | None,
    ) -> _Snapshot:
        policy = compile_policy(parse_sources(sources, self._parsed), self._variables,
                                memo=self._compiled)
        by_plugin: dict[str, list[CompiledRule]] = {}
        wildcard: list[CompiledRule] = []
        for rule in policy.rules:
            if rule.plugins is None:
                wildcard.append(rule)
            else:
                for name in rule.plugins:
                    by_plugin.setdefault(name, []).append(rule)
        rules_by_plugin = {k: tuple(v) for k, v in by_plugin.items()}
        plugin_list, problems = manifests
        tables: dict[str, PluginTable] = {}
        accepted: dict[str, PluginMetadata] = {}
        built: dict[str, tuple[Any, PluginTable, list[Diagnostic]]] = {}
        before = previous.built if previous is not None else {}
        wildcard_rules = tuple(wildcard)
        shared: SharedRules = {}
        if previous is not None and previous.wildcard_rules == wildcard_rules:
            wildcard_rules = previous.wildcard_rules  # identical objects compare fastest below
        # A manifest already in force under its name is considered first, so a new directory
        # claiming a loaded name is the one refused (sorting earlier must not take it over).
        loaded_from = {name: m.manifest_path for name, m in previous.manifests.items()} if previous else {}
        plugin_list = sorted(plugin_list, key=lambda m: loaded_from.get(m.name, m.manifest_path) != m.manifest_path)
        for manifest in plugin_list:
            if manifest.name in accepted and manifest.name in loaded_from:
                problems.append(Diagnostic(
                    f"plugin `{manifest.name}` is already loaded; the new manifest `{manifest.manifest_path}` "
                    "claiming it is refused", None,
                    f"it is loaded from `{accepted[manifest.name].manifest_path}`; rename one of them",
                    code=codes.DUPLICATE_PLUGIN))
                audit_log.warning("plugin `%s` claimed by a new manifest `%s`: refused", manifest.name,
                                  manifest.manifest_path, extra={"plugin_event": {
                                      "kind": "claim-refused", "plugin": manifest.name,
                                      "path": str(manifest.manifest_path)}})
                continue
            if manifest.name in accepted:
                problems.append(Diagnostic(
                    f"plugin `{manifest.name}` is declared by two manifests; the second is ignored",
                    None, f"the first is `{accepted[manifest.name].manifest_path}`", code=codes.DUPLICATE_PLUGIN,
                ))
                continue
            inputs = _table_inputs(policy, manifest, rules_by_plugin, wildcard_rules)
            known = before.get(manifest.name)
            if inputs is not None and known is not None and known[0] == inputs:
                _, table, scope_problems = known
                scope_problems = list(scope_problems)
            else:
                table, scope_problems = self._table_for(policy, manifest, rules_by_plugin, wildcard, shared)
            if inputs is not None:
                built[manifest.name] = (inputs, table, list(scope_problems))
            if scope_problems and self._strict:
                raise ManifestError(scope_problems)
            problems.extend(scope_problems)
            tables[manifest.name] = table
            accepted[manifest.name] = manifest
        for problem in problems:
            log.warning("%s", problem.render(caret=False))
        self._revision += 1
        for _, detector, seen in self._manifest_staged:
            detector.adopt(seen)
        self._manifest_staged = []
        decision_table = DecisionTable(MappingProxyType(tables), policy.content_hash, self._revision)
        return _Snapshot(
            policy=policy,
            table=decision_table,
            manifests=MappingProxyType(accepted),
            rules_by_plugin=MappingProxyType(rules_by_plugin),
            wildcard_rules=wildcard_rules,
            problems=tuple(problems),
            cache=self._new_cache(),
            memo=self._new_memo(decision_table),
            built=MappingProxyType(built),
        )

    def _new_memo(self, table: DecisionTable) -> Any:
        # Every snapshot gets its own cache: no answer can outlive the policy it came from.
        if not self._cache_size or self._cache_ttl:
            return None

        @functools.lru_cache(maxsize=self._cache_size)
        def memo(plugin: str, action: str, resource: str | None,
                 context_key: tuple[tuple[str, type, Any], ...] | None) -> Decision:
            context = None if context_key is None else {name: value for name, _, value in context_key}
            return table.decide(plugin, action, resource, context)

        return memo

    def _new_cache(self) -> cachetools.Cache[Any, Decision] | None:
        if not self._cache_size or not self._cache_ttl:
            return None
        return cachetools.TTLCache(self._cache_size, self._cache_ttl)

    @staticmethod
    def _table_for(
        policy: PolicySet,
        manifest: PluginMetadata,
        rules_by_plugin: Mapping[str, tuple[CompiledRule, ...]],
        wildcard: Sequence[CompiledRule],
        shared: SharedRules | None = None,
    ) -> tuple[PluginTable, list[Diagnostic]]:
        declared: dict[Any, list[tuple[str, ...]]] = {}
        pointers: dict[Any, str] = {}
        for entry in manifest.permissions:
            for permission in entry.permissions:
                declared.setdefault(permission, []).append(tuple(entry.scopes))
                for scope in entry.scopes:
                    pointers[(permission, scope)] = entry.pointer
        digest = None
        if manifest.name in policy.pins and manifest.plugin_path is not None:
            try:
                digest = plugin_digest(manifest.plugin_path)
            except OSError as exc:  # a link or special file, a cap, a read error: no match
                digest = f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        facts = PluginFacts(
            name=manifest.name,
            plugin_dir=None if manifest.plugin_path is None else str(manifest.plugin_path),
            enabled=manifest.enabled,
            attributes=manifest.attributes,
            declared={k: tuple(v) for k, v in declared.items()},
            declared_pointers=pointers,
            requested_timeouts=manifest.timeouts,
            requested_limits=manifest.limits,
            digest=digest,
            manifest_file=str(manifest.manifest_path or "<manifest>"),
        )
        rules = (*rules_by_plugin.get(manifest.name, ()), *wildcard)
        return build_plugin_table(policy, facts, rules, shared)

    # Deciding ---------------------------------------------------------------------------

    def decide(
        self,
        plugin: str,
        action: str,
        resource: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
    ) -> Decision:
        """May ``plugin`` do ``action`` on ``resource``? Never raises; errors deny.

        ``source`` names who saw the request (``kernel`` for a system call the host saw
        through a worker's seccomp listener); it goes to the decision log only."""
        state = self._state
        if plugin.__class__ is str and action.__class__ is str and (resource is None or resource.__class__ is str):
            memo = state.memo
            if memo is None:
                if state.cache is None:
                    decision: Decision = state.table.decide(plugin, action, resource, context)
                else:
                    decision = self._decide_slow(state, plugin, action, resource, context)
            elif context is None:
                decision = memo(plugin, action, resource, None)
            else:
                key = _context_key(context)
                if key is None:
                    decision = state.table.decide(plugin, action, resource, context)
                else:
                    decision = memo(plugin, action, resource, key)
        else:
            decision = self._decide_slow(state, plugin, action, resource, context)
        if self.decision_log is not None:
            if source is None:
                self.decision_log.record(decision, state.policy.content_hash, context)
            else:
                self.decision_log.record(decision, state.policy.content_hash, context,
                                         source=source)
        return decision

    @staticmethod
    def _decide_slow(
        state: _Snapshot, plugin: str, action: str, resource: str | None, context: Mapping[str, Any] | None
    ) -> Decision:
        # No cache, a TTL cache, or arguments of odd types.
        if not isinstance(plugin, str) or not isinstance(action, str) or (
            resource is not None and not isinstance(resource, str)
        ):
            return deny(Reason.INVALID_RESOURCE, str(plugin), str(action), repr(resource),
                        "plugin, action and resource must be strings", revision=state.table.revision)
        cache = state.cache
        if cache is None:
            return state.table.decide(plugin, action, resource, context)
        key: Any = None
        if context is None:
            key = (plugin, action, resource, None)
        else:
            context_key = _context_key(context)
            if context_key is not None:
                key = (plugin, action, resource, context_key)
        if key is None:
            return state.table.decide(plugin, action, resource, context)
        with state.lock:
            found: Any = cache.get(key, _MISS)
            if found is _MISS:
                state.stats.misses += 1
            else:
                state.stats.hits += 1
        if found is _MISS:
            found = state.table.decide(plugin, action, resource, context)
            with state.lock:
                cache[key] = found
        result: Decision = found
        return result

    def check(
        self,
        plugin: str,
        action: str,
        resource: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Like :meth:`decide`, but raise :class:`PermissionDeniedError` on a denial."""
        decision = self.decide(plugin, action, resource, context)
        if not decision.allowed:
            raise PermissionDeniedError(decision)
        return decision

    # Settings ---------------------------------------------------------------------------

    def effective(self, plugin: str) -> Effective:
        """A plugin's resolved timeouts and limits (policy defaults for an unknown plugin)."""
        state = self._state
        table = state.table.plugins.get(plugin)
        if table is not None:
            return table.effective
        return resolve(state.policy.defaults, state.policy.plugin_settings.get(plugin, EMPTY_OVERLAY))

    def limits(self, plugin: str) -> Limits:
        """A plugin's effective resource limits."""
        return self.effective(plugin).limits

    def timeouts(self, plugin: str) -> Timeouts:
        """A plugin's effective timeouts."""
        return self.effective(plugin).timeouts

    # Plugins ----------------------------------------------------------------------------

    @property
    def plugins(self) -> tuple[str, ...]:
        """The names of the registered plugins, sorted."""
        return tuple(sorted(self._state.table.plugins))

    def manifest(self, plugin: str) -> PluginMetadata | None:
        """The manifest registered for ``plugin``."""
        return self._state.manifests.get(plugin)

    def plugin_table(self, plugin: str) -> PluginTable | None:
        """The compiled table of one plugin (grants, declared scopes, settings)."""
        return self._state.table.plugins.get(plugin)

    @property
    def policy(self) -> PolicySet:
        """The compiled policy set in force."""
        return self._state.policy

    @property
    def variables(self) -> Mapping[str, str]:
        """The template variables in force."""
        return MappingProxyType(self._variables)

    @property
    def problems(self) -> tuple[Diagnostic, ...]:
        """Manifest problems found while loading (those plugins were left out or cut)."""
        return self._state.problems

    @property
    def revision(self) -> int:
        """Which build of policy and plugins is in force: 1 after construction, one more
        after every reload, register and unregister. Each :class:`Decision` carries the
        revision that decided it."""
        return self._state.table.revision

    @property
    def content_hash(self) -> str:
        """A hash of the policy texts and variables in force."""
        return self._state.policy.content_hash

    def register(self, manifest: PluginMetadata) -> None:
        """Add or replace one plugin; raises :class:`ManifestError` for bad scopes."""
        with self._write_lock:
            state = self._state
            table, problems = self._table_for(
                state.policy, manifest, state.rules_by_plugin, state.wildcard_rules
            )
            if problems:
                raise ManifestError(problems)
            self._extra_manifests[manifest.name] = manifest
            tables = dict(state.table.plugins)
            tables[manifest.name] = table
            manifests = dict(state.manifests)
            manifests[manifest.name] = manifest
            self._swap(state, tables, manifests)

    def unregister(self, plugin: str) -> None:
        """Forget a plugin: every later request for it is denied as unknown."""
        with self._write_lock:
            state = self._state
            self._extra_manifests.pop(plugin, None)
            tables = {k: v for k, v in state.table.plugins.items() if k != plugin}
            manifests = {k: v for k, v in state.manifests.items() if k != plugin}
            self._swap(state, tables, manifests)

    def _swap(self, state: _Snapshot, tables: dict[str, PluginTable],
              manifests: dict[str, PluginMetadata]) -> None:
        self._revision += 1
        table = DecisionTable(MappingProxyType(tables), state.policy.content_hash, self._revision)
        self._state = _Snapshot(
            policy=state.policy,
            table=table,
            manifests=MappingProxyType(manifests),
            rules_by_plugin=state.rules_by_plugin,
            wildcard_rules=state.wildcard_rules,
            problems=state.problems,
            cache=self._new_cache(),
            memo=self._new_memo(table),
        )

    def reload(self, policy: str | Mapping[str, str] | None = None) -> None:
        """Rebuild from the policy files and plugin directories (or from new ``policy`` text)
        and swap atomically. On any error the old policy stays in force and the error is raised.
        """
        with self._write_lock:
            if policy is not None:
                sources = {"<policy>": policy} if isinstance(policy, str) else dict(policy)
            elif self._policy_paths is not None:
                sources = read_policy_sources(self._policy_paths)
            else:
                sources = self._sources
            # Built aside and swapped in one assignment: an error leaves the old state in force.
            state = self._rebuild(sources, self._state)
            self._sources = sources
            self._state = state

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the decision cache of the policy in force."""
        state = self._state
        if state.memo is not None:
            info = state.memo.cache_info()
            return CacheInfo(info.hits, info.misses, info.currsize, int(info.maxsize))
        with state.lock:
            size = len(state.cache) if state.cache is not None else 0
            return CacheInfo(state.stats.hits, state.stats.misses, size,
                             int(state.cache.maxsize) if state.cache is not None else 0)

    def clear_cache(self) -> None:
        """Drop every cached decision."""
        state = self._state
        if state.memo is not None:
            state.memo.cache_clear()
        if state.cache is not None:
            with state.lock:
                state.cache.clear()

    # Staying current --------------------------------------------------------------------

    def watch(self, interval: float = 5.0, *, max_backoff: float = 60.0, plugins: bool = False) -> WatchHandle:
        """Keep the engine current in a background thread; returns a handle with ``stop()``.

        Directories are adopted when their content is the same on two consecutive polls;
        bundle files when their bytes change; URLs by conditional GET. Each new version is
        verified, compiled and swapped in atomically; one that fails is never swapped in,
        and failures back off (doubling up to ``max_backoff`` seconds).

        With ``plugins=True`` (opt-in) the plugin directories are watched too: a new,
        changed or removed manifest is an audit event (:data:`AUDIT_LOGGER_NAME`) and is
        adopted; a pinned plugin whose files changed is rebuilt and so fails its pin; a new
        manifest claiming the name of a loaded plugin is refused.
        """
        if self._origin is None:
            raise UsageError("only an engine built by `Engine.load` has a source to watch")
        if interval <= 0:
            raise UsageError("watch interval must be > 0")
        if plugins:
            contents = self._plugin_contents()  # the state to compare with: what is loaded now
            self._plugin_watch.adopt({name: (content, None) for name, content in contents.items()})
            return WatchHandle(lambda: self.poll(plugins=True), interval, max_backoff)
        return WatchHandle(self.poll, interval, max_backoff)

    def _plugin_contents(self) -> dict[str, bytes | str]:
        contents: dict[str, bytes | str] = {}
        for directory in self._plugin_dirs:
            resolve_path = realpath_below(str(Path(directory)))
            for path in discover_manifests(directory):
                try:  # bounded, and compared as the load's change detector compares it
                    contents[str(path)] = _compared(*read_manifest_file(path, resolve=resolve_path)[1:])
                except ManifestError as exc:
                    contents[str(path)] = f"unreadable: {exc}"
        state = self._state
        for name in state.policy.pins:
            manifest = state.manifests.get(name)
            if manifest is not None and manifest.plugin_path is not None:
                try:
                    contents[f"pinned plugin `{name}`"] = plugin_digest(manifest.plugin_path)
                except (OSError, ValueError) as exc:
                    contents[f"pinned plugin `{name}`"] = f"unreadable: {exc}"
        return contents

    def _plugin_changes(self) -> dict[str, bytes | str] | None:
        """Compare the plugin directories with the state in force; log each change as an
        audit event; the new contents (to adopt once built) when something changed."""
        contents = self._plugin_contents()
        changes = self._plugin_watch.changes(contents)
        if not changes:
            return None
        for kind, names in (("added", changes.added), ("changed", changes.changed), ("removed", changes.removed)):
            for name in names:
                what = "files" if name.startswith("pinned plugin") else "manifest"
                audit_log.warning("plugin %s %s: %s", what, kind, name, extra={"plugin_event": {
                    "kind": f"{what}-{kind}", "path": name}})
        return contents

    def poll(self, *, plugins: bool = False) -> bool:
        """Check the source once (and with ``plugins=True`` the plugin directories) and
        swap in a new version; False when that failed (the error is in :meth:`status`)."""
        origin = self._origin
        if origin is None:
            raise UsageError("only an engine built by `Engine.load` has a source to poll")
        with origin.lock:
            try:
                sources = origin.poll()
                plugin_contents = self._plugin_changes() if plugins else None
                if sources is None and plugin_contents is not None:
                    with self._write_lock:
                        self._state = self._rebuild(self._sources, self._state)
                if sources is not None:
                    old = origin.serial
                    with self._write_lock:
                        state = self._rebuild(sources, self._state)
                        self._sources = dict(sources)
                        self._state = state
                    origin.commit()
                    origin.activated_at = time.time()
                    log.info("policy activated from %s: serial %s -> %s, revision %s, key %s",
                             origin.name, old, origin.serial, origin.revision, origin.key_id)
                if plugin_contents is not None:  # adopted only once built: a refused build is seen again
                    self._plugin_watch.adopt({n: (c, None) for n, c in plugin_contents.items()})
            except Exception as exc:  # noqa: BLE001 - any failure keeps the policy in force
                origin.discard()
                origin.failures += 1
                origin.last_error = describe(exc)
                log.warning("policy source %s: %s (the policy in force stays)", origin.name, origin.last_error)
                return False
            origin.failures = 0
            origin.last_success = time.time()
            return True

    def status(self) -> Status:
        """Source, revision, serial, age, last success and error, consecutive failures,
        dropped log events and each plugin's isolation level."""
        origin = self._origin
        dropped = int(getattr(self.decision_log, "dropped", 0))
        isolation = {name: self.effective(name).limits.isolation.value for name in self.plugins}
        if origin is None:
            return Status("<source>", None, None, None, 0.0, None, None, 0, dropped, isolation)
        return Status(origin.name, origin.revision, origin.serial, origin.key_id, origin.activated_at,
                      origin.last_success, origin.last_error, origin.failures, dropped, isolation)
