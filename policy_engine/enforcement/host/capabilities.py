"""Host-side capabilities for the permissions no operating-system sandbox can enforce.

Files, network and processes are fenced by the worker's sandbox. Configuration, the host's
database and hook registration exist only inside the host, so the host itself checks every
call a plugin makes to them: each capability is built with the plugin's name and a
``check(permission, resource)`` callable that raises :class:`PermissionDeniedError` when the
engine denies (typically ``lambda p, r: engine.check(plugin, p.value, r)``). Nothing is
cached across calls, so a reloaded policy takes effect on the next call.

In process isolation the worker holds proxies that forward each call to these objects in
the host; in in-process mode the plugin holds them directly, which keeps it honest but is
no isolation (Python cannot hide an attribute from code in the same interpreter).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from ...decision import Reason, deny
from ...errors import PermissionDeniedError, PluginTimeoutError, ResourceLimitError, UsageError
from ...permissions import Permission
from ...plugin_api import SqlParams

__all__ = [
    "ConfigCapability",
    "DatabaseBudget",
    "DatabaseCapability",
    "HookCapability",
    "HookRegistry",
    "HookResult",
    "NoDatabase",
    "PermissionCheck",
]

logger = logging.getLogger(__name__)

#: Raises :class:`PermissionDeniedError` when the plugin may not do ``permission`` on the
#: resource; whatever it returns (an allowing Decision, say) is ignored.
PermissionCheck = Callable[[Permission, str], object]


def _require_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{what} must be a non-empty string, not `{value!r}`")
    return value


def _refusal(plugin: str, permission: Permission, resource: str, detail: str) -> \
        PermissionDeniedError:
    """A denial the host makes on its own, whatever the policy grants."""
    return PermissionDeniedError(
        deny(Reason.DENIED_BY_RULE, plugin, permission.value, resource, detail)
    )


# --------------------------------------------------------------------------------------
# Configuration


class ConfigCapability:
    """A plugin's view of the host configuration: each key checked on each call.

    Values cross the boundary as deep copies both ways, so a plugin that mutates a value it
    read (or one it wrote) cannot change the host's configuration without ``config:write``.
    """

    __slots__ = ("_check", "_lock", "_mapping", "_peek", "_plugin")

    def __init__(self, plugin: str, check: PermissionCheck,
                 mapping: MutableMapping[str, Any], *,
                 peek: Callable[[Permission, str], bool] | None = None) -> None:
        self._plugin = plugin
        self._check = check
        self._mapping = mapping
        self._peek = peek
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (``config:read`` on the key), or ``default`` when unset."""
        self._check(Permission.CONFIG_READ, _config_key(key))
        with self._lock:
            if key not in self._mapping:
                return default
            return copy.deepcopy(self._mapping[key])

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to a copy of ``value`` (``config:write`` on the key)."""
        self._check(Permission.CONFIG_WRITE, _config_key(key))
        _check_config_value(key, value)
        stored = copy.deepcopy(value)
        with self._lock:
            if key not in self._mapping and len(self._mapping) >= MAX_CONFIG_KEYS:
                raise ResourceLimitError(
                    f"plugin `{self._plugin}` may not add config key `{key}`: the host "
                    f"configuration already holds {MAX_CONFIG_KEYS} keys",
                    plugin=self._plugin, resource="config keys", limit=MAX_CONFIG_KEYS,
                    used=float(len(self._mapping)))
            self._mapping[key] = stored

    def keys(self) -> list[str]:
        """The keys the plugin may read, in the mapping's order.

        With a ``peek`` (a decision that records nothing), keys the plugin may not read are
        left out without a denial on record: listing is not an attempt to read them.
        """
        with self._lock:
            candidates = [k for k in self._mapping
                          if isinstance(k, str) and 0 < len(k) <= MAX_CONFIG_KEY_LENGTH]
        readable: list[str] = []
        for key in candidates:
            if self._peek is not None:
                if self._peek(Permission.CONFIG_READ, key):
                    readable.append(key)
                continue
            try:
                self._check(Permission.CONFIG_READ, key)
            except PermissionDeniedError:
                continue
            readable.append(key)
        return readable[:MAX_CONFIG_KEYS]


#: The longest config key a plugin may name, the most keys the host keeps, and the largest
#: value (counted as the nodes and characters of its JSON-like form) a plugin may store.
MAX_CONFIG_KEY_LENGTH = 256
MAX_CONFIG_KEYS = 4096
MAX_CONFIG_VALUE_NODES = 10_000
MAX_CONFIG_VALUE_CHARS = 1_000_000


def _config_key(key: object) -> str:
    name = _require_name("a config key", key)
    if len(name) > MAX_CONFIG_KEY_LENGTH:
        raise UsageError(f"a config key may be at most {MAX_CONFIG_KEY_LENGTH} characters, "
                         f"not {len(name)}")
    return name


def _check_config_value(key: str, value: object) -> None:
    """Refuse a value too big or too deep to keep, before copying any of it."""
    nodes = chars = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_VALUE_NODES or depth > 64:
            raise UsageError(f"the value for config key `{key}` is too large or too deeply "
                             f"nested (at most {MAX_CONFIG_VALUE_NODES} items, depth 64)")
        if isinstance(item, (str, bytes)):
            chars += len(item)
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif not (item is None or isinstance(item, (bool, int, float))):
            raise UsageError(f"config values are JSON-like data; `{key}` holds a "
                             f"`{type(item).__name__}`")
        if chars > MAX_CONFIG_VALUE_CHARS:
            raise UsageError(f"the value for config key `{key}` is over "
                             f"{MAX_CONFIG_VALUE_CHARS} characters")


# --------------------------------------------------------------------------------------
# Database

_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master",
                            "sqlite_temp_schema"})
# Actions whose first argument is the table (or view) written.
_WRITE_TABLE_ARG1 = frozenset({
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_DROP_TEMP_VIEW, sqlite3.SQLITE_ANALYZE,
    sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE,
})
# Actions whose second argument is the table: indexes, trigger drops, ALTER TABLE.
_WRITE_TABLE_ARG2 = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_TRIGGER,
    sqlite3.SQLITE_ALTER_TABLE,
})
_ROW_WRITES = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})
_HARMLESS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE})
_REFUSED: dict[int, str] = {
    sqlite3.SQLITE_ATTACH: "attaching another database file is never allowed",
    sqlite3.SQLITE_DETACH: "detaching databases is never allowed",
    sqlite3.SQLITE_CREATE_TRIGGER: "triggers run later with the rights of whoever fires "
                                   "them, so plugins may not create them",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "plugins may not create triggers",
    sqlite3.SQLITE_TRANSACTION: "the host manages transactions; each call is one",
    sqlite3.SQLITE_SAVEPOINT: "the host manages transactions; each call is one",
    sqlite3.SQLITE_REINDEX: "reindexing is maintenance the host does",
}
# Pragmas that only read, without an argument.
_READ_PRAGMAS = frozenset({
    "application_id", "data_version", "encoding", "foreign_keys", "freelist_count",
    "page_count", "page_size", "schema_version", "user_version",
})
# Pragmas that describe one table, named by their argument.
_TABLE_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "foreign_key_list"})
_REFUSED_FUNCTIONS = frozenset({
    "load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "fsdir",
})
# How many SQLite virtual-machine steps run between checks of the statement's budget.
_PROGRESS_STEPS = 10_000


@dataclass(frozen=True, slots=True)
class DatabaseBudget:
    """What one database statement of a plugin may cost the host.

    Time is wall time of the statement; ``max_memory_bytes`` is the growth of the host's
    resident memory while the statement runs, sampled by SQLite's progress handler, and
    ``cache_bytes`` caps SQLite's page cache for the plugin's connection so that sorting and
    grouping spill instead of growing. The CPU the host spends is added to the plugin's
    account (:attr:`DatabaseCapability.cpu_seconds`) for its CPU limit.
    """

    timeout_seconds: float = 5.0
    max_rows: int = 10_000
    max_result_bytes: int = 16 * 1000 * 1000
    max_memory_bytes: int = 64 * 1000 * 1000
    cache_bytes: int = 8 * 1000 * 1000
    #: the largest string or blob a statement may build (SQLite's own default is 1 GB)
    max_value_bytes: int = 16 * 1000 * 1000
    max_sql_length: int = 100_000
    max_params: int = 10_000


# SQLite's run-time limits for a plugin's connection: what one statement may be built of.
_SQLITE_LIMITS: tuple[tuple[str, int], ...] = (
    ("SQLITE_LIMIT_COLUMN", 1000),
    ("SQLITE_LIMIT_EXPR_DEPTH", 200),
    ("SQLITE_LIMIT_COMPOUND_SELECT", 50),
    ("SQLITE_LIMIT_VDBE_OP", 250_000),
    ("SQLITE_LIMIT_FUNCTION_ARG", 32),
    ("SQLITE_LIMIT_ATTACHED", 0),
    ("SQLITE_LIMIT_LIKE_PATTERN_LENGTH", 1000),
    ("SQLITE_LIMIT_TRIGGER_DEPTH", 10),
)


def _resident_bytes() -> int:
    """The host's resident memory, cheaply (one read of /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _value_bytes(value: object) -> int:
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        return len(value) + 8
    return 16


class DatabaseCapability:
    """The host's SQLite database, checked table by table with an SQLite authorizer.

    Reading a table needs ``database:read`` on its name and changing it (``INSERT``,
    ``UPDATE``, ``DELETE``, ``CREATE``, ``DROP``, ``ALTER``) ``database:write``. ``ATTACH``,
    ``DETACH`` (so also ``VACUUM``), pragma writes, ``load_extension``, triggers,
    transaction control and every action the authorizer does not know are refused
    outright: the authorizer fails closed, and a refusal surfaces as
    :class:`PermissionDeniedError` naming the table, never as a raw SQLite error. Other SQL
    errors (syntax, constraints) are raised as the :mod:`sqlite3` errors they are.

    The plugin never receives the file path or the connection. In process isolation the
    worker only holds a proxy to this object, and it is the worker's filesystem sandbox
    that stops the plugin from opening the database file itself; in in-process mode
    nothing can. Statements are never cached, so every call is authorized afresh against
    the current grants. Rows come back as plain tuples of ``int``, ``float``, ``str``,
    ``bytes`` or ``None``. A statement running longer than ``timeout_seconds`` is
    interrupted (:class:`PluginTimeoutError`); one returning more than ``max_rows`` rows
    raises :class:`ResourceLimitError`. ``REINDEX`` without arguments never reaches the
    authorizer in SQLite; it only rebuilds indexes and changes no data.
    """

    def __init__(self, plugin: str, check: PermissionCheck, db_path: str | os.PathLike[str],
                 *, timeout_seconds: float | None = None, max_rows: int | None = None,
                 budget: DatabaseBudget | None = None) -> None:
        budget = budget or DatabaseBudget()
        if timeout_seconds is not None or max_rows is not None:
            budget = DatabaseBudget(
                timeout_seconds=budget.timeout_seconds if timeout_seconds is None
                else timeout_seconds,
                max_rows=budget.max_rows if max_rows is None else max_rows,
                max_result_bytes=budget.max_result_bytes,
                max_memory_bytes=budget.max_memory_bytes, cache_bytes=budget.cache_bytes,
                max_value_bytes=budget.max_value_bytes, max_sql_length=budget.max_sql_length,
                max_params=budget.max_params)
        self.budget = budget
        self._plugin = plugin
        self._check = check
        self._timeout = budget.timeout_seconds
        self._max_rows = budget.max_rows
        self._cpu = 0.0
        self._memory_floor = 0
        self._progress_calls = 0
        self._lock = threading.Lock()
        self._closed = False
        # Per-statement state, reset before each statement is prepared.
        self._granted: set[tuple[Permission, str]] = set()
        self._denial: PermissionDeniedError | None = None
        self._failure: Exception | None = None
        self._schema_change = False
        self._tables: frozenset[str] = frozenset()
        self._internal = False
        self._deadline: float | None = None
        # isolation_level=None: no implicit BEGIN that the authorizer would have to allow;
        # cached_statements=0: a cached statement would skip the authorizer on reuse.
        self._conn = sqlite3.connect(os.fspath(db_path), timeout=self._timeout,
                                     isolation_level=None, check_same_thread=False,
                                     cached_statements=0)
        # Defence in depth: SQL functions with side effects stay out of views and triggers.
        self._conn.execute("PRAGMA trusted_schema = OFF")
        # A small page cache: big sorts and groupings spill to temporary files instead of
        # growing the host; one thread, so the sorter does not start helpers of its own.
        self._conn.execute(f"PRAGMA cache_size = -{max(budget.cache_bytes // 1024, 64)}")
        self._conn.execute("PRAGMA threads = 0")
        if sys.version_info >= (3, 11):
            # One `zeroblob(1e9)` would otherwise allocate a gigabyte in the host.
            self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, budget.max_value_bytes)
            self._conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, budget.max_sql_length)
            self._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, budget.max_params)
            for name, value in _SQLITE_LIMITS:
                self._conn.setlimit(getattr(sqlite3, name), value)
        if sys.version_info >= (3, 12):
            self._conn.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)
        self._conn.set_authorizer(self._authorize)
        self._conn.set_progress_handler(self._progress, _PROGRESS_STEPS)

    def __repr__(self) -> str:
        return f"DatabaseCapability(plugin={self._plugin!r})"

    @property
    def cpu_seconds(self) -> float:
        """Host CPU this plugin's statements have cost so far (charged to its CPU limit)."""
        return self._cpu

    # -- the plugin's API -------------------------------------------------------------------

    def execute(self, sql: str, params: SqlParams = ()) -> list[tuple[Any, ...]]:
        """Run one SQL statement and return its rows (empty for statements without rows)."""
        self._check_statement(sql)
        rows: list[tuple[Any, ...]] = []
        size = 0
        with self._lock, self._statement():
            cursor = self._conn.execute(sql, params)
            try:
                # One row at a time: a batch of huge values would be in memory before
                # the budget could be checked.
                for row in cursor:
                    rows.append(tuple(row))
                    size += sum(_value_bytes(value) for value in row) + 8
                    if len(rows) > self._max_rows:
                        raise ResourceLimitError(
                            f"plugin `{self._plugin}` ran a query returning more than "
                            f"{self._max_rows} rows; add a LIMIT", plugin=self._plugin,
                            resource="rows", limit=float(self._max_rows), used=float(len(rows)))
                    if size > self.budget.max_result_bytes:
                        raise ResourceLimitError(
                            f"plugin `{self._plugin}` ran a query returning more than "
                            f"{self.budget.max_result_bytes:,} bytes; select fewer or smaller "
                            "columns", plugin=self._plugin, resource="result bytes",
                            limit=float(self.budget.max_result_bytes), used=float(size))
            finally:
                cursor.close()
        return rows

    def executemany(self, sql: str, seq_of_params: Iterable[SqlParams]) -> int:
        """Run one statement per parameter set in a single transaction; rows changed."""
        self._check_statement(sql)
        # Materialised first: a generator would run plugin code while the lock is held.
        batch = list(seq_of_params)
        if len(batch) > self._max_rows:
            raise ResourceLimitError(
                f"plugin `{self._plugin}` passed {len(batch)} parameter sets; at most "
                f"{self._max_rows} run in one call", plugin=self._plugin,
                resource="rows", limit=float(self._max_rows), used=float(len(batch)))
        with self._lock:
            self._ensure_open()
            self._run_internal("BEGIN")
            try:
                with self._statement():
                    cursor = self._conn.executemany(sql, batch)
                    changed = cursor.rowcount
                    cursor.close()
            except BaseException:
                # Some errors make SQLite roll back on its own; a second ROLLBACK would
                # replace the real error with "no transaction is active".
                if self._conn.in_transaction:
                    self._run_internal("ROLLBACK")
                raise
            self._run_internal("COMMIT")
        return max(changed, 0)

    def close(self) -> None:
        """Close the connection; later calls raise :class:`UsageError`."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> DatabaseCapability:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- statement bookkeeping --------------------------------------------------------------

    def _check_statement(self, sql: object) -> None:
        text = _require_name("an SQL statement", sql)
        if len(text) > self.budget.max_sql_length:
            raise ResourceLimitError(
                f"plugin `{self._plugin}` sent an SQL statement of {len(text):,} characters; "
                f"at most {self.budget.max_sql_length:,} are taken", plugin=self._plugin,
                resource="sql length", limit=float(self.budget.max_sql_length),
                used=float(len(text)))

    @contextmanager
    def _statement(self) -> Iterator[None]:
        """Reset per-statement state, and turn authorizer and deadline failures into ours."""
        self._ensure_open()
        self._granted = set()
        self._denial = None
        self._failure = None
        self._schema_change = False
        self._tables = self._table_names()
        self._deadline = time.monotonic() + self._timeout
        self._memory_floor = _resident_bytes()
        self._progress_calls = 0
        started = time.thread_time()
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        finally:
            self._deadline = None
            self._cpu += time.thread_time() - started

    def _ensure_open(self) -> None:
        if self._closed:
            raise UsageError(f"the database of plugin `{self._plugin}` is closed")

    def _translate(self, error: sqlite3.Error) -> Exception:
        if self._denial is not None:
            return self._denial
        if self._failure is not None:
            return self._failure  # the check itself broke; nothing ran
        if isinstance(error, sqlite3.OperationalError) and str(error) == "interrupted":
            return PluginTimeoutError(self._plugin, "database", self._timeout,
                                      "the query was interrupted")
        return error

    def _run_internal(self, sql: str) -> list[Any]:
        """Run the host's own statements, which the authorizer lets through."""
        self._internal = True
        try:
            return self._conn.execute(sql).fetchall()
        finally:
            self._internal = False

    def _table_names(self) -> frozenset[str]:
        """Lowercased names of every table and view, main and temporary."""
        rows = self._run_internal("SELECT name FROM sqlite_master UNION ALL "
                                  "SELECT name FROM sqlite_temp_master")
        return frozenset(str(row[0]).lower() for row in rows)

    def _progress(self) -> int:
        # A non-zero answer interrupts the statement.
        deadline = self._deadline
        if deadline is None:
            return 0
        if time.monotonic() > deadline:
            return 1
        self._progress_calls += 1
        if self._progress_calls % 8 == 0:
            grown = _resident_bytes() - self._memory_floor
            if grown > self.budget.max_memory_bytes:
                if self._failure is None:
                    self._failure = ResourceLimitError(
                        f"plugin `{self._plugin}` ran a statement that grew the host's memory "
                        f"by more than {self.budget.max_memory_bytes:,} bytes; it was stopped",
                        plugin=self._plugin, resource="database memory",
                        limit=float(self.budget.max_memory_bytes), used=float(grown))
                return 1
        return 0

    # -- the authorizer ---------------------------------------------------------------------

    def _authorize(self, action: int, arg1: str | None, arg2: str | None,
                   database: str | None, source: str | None) -> int:
        if self._internal:
            return sqlite3.SQLITE_OK
        try:
            self._authorize_or_raise(action, arg1 or "", arg2)
        except PermissionDeniedError as denial:
            if self._denial is None:
                self._denial = denial
            return sqlite3.SQLITE_DENY
        except Exception as failure:  # a broken check must not let the statement through
            if self._failure is None:
                self._failure = failure
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _authorize_or_raise(self, action: int, arg1: str, arg2: str | None) -> None:
        if action in _HARMLESS:
            return  # what a SELECT reads is authorized column by column as SQLITE_READ
        if action == sqlite3.SQLITE_READ:
            # SQLite reads its schema table while it carries out an authorized schema
            # change, and touches its rowid to register built-in virtual tables.
            if arg1 in _SCHEMA_TABLES and (self._schema_change or arg2 == "ROWID"):
                return
            # `count(*)` over a common table expression or a subquery reports a read of
            # no column under the CTE's name; nothing stored is read there (what the CTE
            # reads is authorized on its own), so only a real table's name is checked.
            if arg2 == "" and arg1.lower() not in self._tables:
                return
            self._require(Permission.DATABASE_READ, arg1)
        elif action in _WRITE_TABLE_ARG1:
            if action in _ROW_WRITES and arg1 in _SCHEMA_TABLES:
                # SQLite's own bookkeeping for a schema change authorized on its own
                # action; a plugin's direct write to the schema table is refused by SQLite
                # itself unless `writable_schema` is on, and that pragma is never allowed.
                return
            self._require(Permission.DATABASE_WRITE, arg1)
            self._schema_change = self._schema_change or action not in _ROW_WRITES
        elif action in _WRITE_TABLE_ARG2:
            self._require(Permission.DATABASE_WRITE, arg2 or "")
            self._schema_change = True
        elif action == sqlite3.SQLITE_FUNCTION:
            function = (arg2 or "").lower()
            if function in _REFUSED_FUNCTIONS:
                self._refuse(Permission.DATABASE_WRITE, function,
                             f"the SQL function `{function}` is never allowed")
        elif action == sqlite3.SQLITE_PRAGMA:
            self._authorize_pragma(arg1.lower(), arg2)
        elif action in _REFUSED:
            self._refuse(Permission.DATABASE_WRITE, arg1, _REFUSED[action])
        else:
            self._refuse(Permission.DATABASE_WRITE, arg1,
                         f"sqlite action {action} is not one the host knows, so it is refused")

    def _authorize_pragma(self, pragma: str, argument: str | None) -> None:
        if pragma in _TABLE_PRAGMAS and argument:
            self._require(Permission.DATABASE_READ, argument)
        elif pragma in _READ_PRAGMAS and argument is None:
            return
        elif argument is None:
            self._refuse(Permission.DATABASE_READ, pragma,
                         f"the pragma `{pragma}` is not one plugins may read")
        else:
            self._refuse(Permission.DATABASE_WRITE, pragma,
                         f"plugins may not set pragmas (`{pragma}`)")

    def _require(self, permission: Permission, table: str) -> None:
        if (permission, table) in self._granted:
            return  # one check per table per statement, not one per column
        self._check(permission, table)
        self._granted.add((permission, table))

    def _refuse(self, permission: Permission, resource: str, detail: str) -> NoReturn:
        raise _refusal(self._plugin, permission, resource, detail)


class NoDatabase:
    """``ctx.db`` when the host configured no database: every call says so.

    Without it a plugin's ``ctx.db.execute`` would fail as an unknown capability call (in a
    worker) or on ``None`` (in process), neither of which names the cause.
    """

    def __init__(self, plugin: str) -> None:
        self._plugin = plugin

    def __repr__(self) -> str:
        return f"<NoDatabase plugin={self._plugin!r}>"

    def execute(self, sql: str, params: SqlParams = ()) -> NoReturn:
        """Raise :class:`UsageError`: there is no database."""
        raise self._error("execute")

    def executemany(self, sql: str, seq_of_params: Iterable[SqlParams]) -> NoReturn:
        """Raise :class:`UsageError`: there is no database."""
        raise self._error("executemany")

    def close(self) -> None:
        """Nothing to close."""

    def _error(self, method: str) -> UsageError:
        return UsageError(
            f"plugin `{self._plugin}` called `db.{method}`, but no database is configured: "
            "the host passes `db_path=` to `PluginSandbox` to offer one"
        )


# --------------------------------------------------------------------------------------
# Hooks


@dataclass(frozen=True, slots=True)
class HookResult:
    """What one plugin's hook function did: its return value, or the error it ended with."""

    plugin: str
    ok: bool
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Registration:
    plugin: str
    fn: Callable[..., Any]
    key: object = None


#: The most hook registrations one plugin may hold; a worker cannot grow the host's table.
MAX_HOOKS_PER_PLUGIN = 256


class _Outcome:
    """Filled in by the thread running one hook call."""

    __slots__ = ("awaiting", "error", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.awaiting = False  # set once the call returned a coroutine now being awaited


# Time a cancelled coroutine gets to unwind before its thread is written off as stuck.
_CANCEL_GRACE_SECONDS = 1.0


class HookRegistry:
    """The host's hooks: plugins register functions, the host runs them by hook name.

    Every call runs in its own daemon thread with a deadline of ``timeout_seconds``.
    Python cannot kill a thread, so a synchronous hook that overruns keeps running in the
    background: its result is dropped, and its plugin is quarantined, meaning none of its
    hooks run again until it registers a hook anew. A coroutine function is run under
    :func:`asyncio.wait_for`, which cancels it at the deadline; only one that ignores the
    cancellation (by blocking its event loop) is quarantined. A hook that raises or
    overruns is logged and skipped, and the other hooks still run.
    """

    def __init__(self, timeout_seconds: float = 5.0) -> None:
        if timeout_seconds <= 0:
            raise UsageError(f"hook timeout must be positive, not `{timeout_seconds}`")
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._hooks: dict[str, list[_Registration]] = {}
        self._quarantined: set[str] = set()

    def register(self, plugin: str, name: str, fn: Callable[..., Any],
                 check: PermissionCheck, *, key: object = None) -> None:
        """Register ``fn`` for hook ``name`` (``hook:register`` on the name).

        When ``check`` raises, nothing is registered. Registering lifts a quarantine. A
        registration with a ``key`` replaces the plugin's earlier one for the same hook and
        key instead of adding to it: a restarted worker registering its hooks again gets
        each hook once, not twice. A plugin holds at most :data:`MAX_HOOKS_PER_PLUGIN`.
        """
        name = _require_name("a hook name", name)
        if len(name) > MAX_CONFIG_KEY_LENGTH:
            raise UsageError(f"a hook name may be at most {MAX_CONFIG_KEY_LENGTH} characters")
        if not callable(fn):
            raise UsageError(f"the hook `{name}` of plugin `{plugin}` must be callable")
        check(Permission.HOOK_REGISTER, name)
        with self._lock:
            entries = self._hooks.setdefault(name, [])
            if key is not None:
                entries[:] = [r for r in entries if not (r.plugin == plugin and r.key == key)]
            held = sum(1 for regs in self._hooks.values() for r in regs if r.plugin == plugin)
            if held >= MAX_HOOKS_PER_PLUGIN:
                if not entries:
                    del self._hooks[name]
                raise ResourceLimitError(
                    f"plugin `{plugin}` already holds {MAX_HOOKS_PER_PLUGIN} hook "
                    "registrations", plugin=plugin, resource="hooks",
                    limit=float(MAX_HOOKS_PER_PLUGIN), used=float(held))
            entries.append(_Registration(plugin, fn, key))
            self._quarantined.discard(plugin)

    def unregister_plugin(self, plugin: str) -> None:
        """Forget every hook of ``plugin`` and its quarantine."""
        with self._lock:
            for name in list(self._hooks):
                kept = [r for r in self._hooks[name] if r.plugin != plugin]
                if kept:
                    self._hooks[name] = kept
                else:
                    del self._hooks[name]
            self._quarantined.discard(plugin)

    def plugins(self, name: str) -> tuple[str, ...]:
        """The plugins with a function registered for hook ``name``, in order."""
        with self._lock:
            return tuple(r.plugin for r in self._hooks.get(name, ()))

    def is_quarantined(self, plugin: str) -> bool:
        """Whether ``plugin``'s hooks are skipped after one overran its deadline."""
        with self._lock:
            return plugin in self._quarantined

    def run(self, name: str, *args: Any, **kwargs: Any) -> list[HookResult]:
        """Run every hook registered for ``name``, in registration order.

        Hooks of quarantined plugins are skipped and have no result.
        """
        with self._lock:
            # A copy: hooks may register hooks, and the lock is not held while they run.
            registrations = list(self._hooks.get(name, ()))
        results: list[HookResult] = []
        for registration in registrations:
            if self.is_quarantined(registration.plugin):
                logger.debug("hook `%s` of quarantined plugin `%s` skipped", name,
                             registration.plugin)
                continue
            results.append(self._run_one(name, registration, args, kwargs))
        return results

    def _run_one(self, name: str, registration: _Registration, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> HookResult:
        plugin, fn = registration.plugin, registration.fn
        outcome = _Outcome()
        started = time.monotonic()
        deadline = started + self.timeout_seconds
        thread = threading.Thread(
            target=_call, args=(fn, args, kwargs, deadline, outcome), daemon=True,
            name=f"hook:{name}:{plugin}",
        )
        thread.start()
        thread.join(self.timeout_seconds)
        if thread.is_alive() and outcome.awaiting:
            thread.join(_CANCEL_GRACE_SECONDS)  # let the cancellation unwind
        if thread.is_alive():
            with self._lock:
                self._quarantined.add(plugin)
            error: BaseException = PluginTimeoutError(
                plugin, "hook", self.timeout_seconds,
                f"hook `{name}` is still running in the background; the plugin is "
                "quarantined until it registers again")
            logger.warning("hook `%s` of plugin `%s` overran its deadline and was skipped; "
                           "plugin quarantined", name, plugin)
            return HookResult(plugin, ok=False, error=error)
        if outcome.error is not None:
            error = outcome.error
            if (isinstance(error, asyncio.TimeoutError)
                    and time.monotonic() - started >= self.timeout_seconds):
                error = PluginTimeoutError(plugin, "hook", self.timeout_seconds,
                                           f"hook `{name}` was cancelled")
                logger.warning("hook `%s` of plugin `%s` overran its deadline and was "
                               "cancelled", name, plugin)
            else:
                logger.warning("hook `%s` of plugin `%s` failed and was skipped: %s", name,
                               plugin, error, exc_info=error)
            return HookResult(plugin, ok=False, error=error)
        return HookResult(plugin, ok=True, value=outcome.value)


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
          deadline: float, outcome: _Outcome) -> None:
    """Body of a hook thread: call ``fn`` and, when it gives a coroutine, await it."""
    try:
        value = fn(*args, **kwargs)
        if inspect.iscoroutine(value):
            outcome.awaiting = True
            remaining = max(deadline - time.monotonic(), 0.0)
            value = asyncio.run(_bounded(value, remaining))
        outcome.value = value
    except BaseException as error:  # whatever a plugin raises, even SystemExit, is reported
        outcome.error = error


async def _bounded(coroutine: Any, timeout: float) -> Any:
    return await asyncio.wait_for(coroutine, timeout)


class HookCapability:
    """A plugin's handle on the host's :class:`HookRegistry` (``ctx.hooks``)."""

    __slots__ = ("_check", "_plugin", "_registry")

    def __init__(self, plugin: str, check: PermissionCheck, registry: HookRegistry) -> None:
        self._plugin = plugin
        self._check = check
        self._registry = registry

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` whenever the host fires hook ``name`` (``hook:register`` on it)."""
        self._registry.register(self._plugin, name, fn, self._check)

    def register_worker_hook(self, name: str, fn: Callable[..., Any]) -> None:
        """Register the host's proxy for a worker's hook ``name``, replacing any earlier one."""
        self._registry.register(self._plugin, name, fn, self._check, key="worker")
