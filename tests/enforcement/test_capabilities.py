"""Tests of the host capabilities: configuration, database and hooks."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from policy_engine.enforcement.host.capabilities import (
    ConfigCapability,
    DatabaseCapability,
    HookCapability,
    HookRegistry,
    HookResult,
)
from policy_engine.errors import (
    PermissionDeniedError,
    PluginTimeoutError,
    ResourceLimitError,
    UsageError,
)
from policy_engine.permissions import Permission
from policy_engine.plugin_api import ConfigAccess, DatabaseAccess, HookAccess

READ, WRITE = Permission.DATABASE_READ, Permission.DATABASE_WRITE


@dataclass(frozen=True)
class StandInDecision:
    """Just enough of a Decision for PermissionDeniedError."""

    plugin: str
    action: str
    resource: str
    allowed: bool = False
    reason: str = "no_matching_allow"

    def explain(self) -> str:
        return f"denied: plugin `{self.plugin}` may not `{self.action}` on `{self.resource}`"


class FakeCheck:
    """Grants are (permission, glob) pairs; everything else is denied."""

    def __init__(self, plugin: str, *grants: tuple[Permission, str]) -> None:
        self.plugin = plugin
        self.grants = set(grants)
        self.calls: list[tuple[Permission, str]] = []

    def __call__(self, permission: Permission, resource: str) -> None:
        self.calls.append((permission, resource))
        if not any(p is permission and fnmatch.fnmatchcase(resource, pattern)
                   for p, pattern in self.grants):
            decision = StandInDecision(self.plugin, permission.value, resource)
            raise PermissionDeniedError(cast(Any, decision))


def resource_of(error: pytest.ExceptionInfo[PermissionDeniedError]) -> str | None:
    resource: str | None = cast(Any, error.value.decision).resource
    return resource


# -- configuration ---------------------------------------------------------------------------


@pytest.fixture
def settings() -> dict[str, Any]:
    return {"app.name": "demo", "app.limits": {"max": 3}, "secret.token": "t0k3n"}


def test_config_get_allowed(settings: dict[str, Any]) -> None:
    check = FakeCheck("p", (Permission.CONFIG_READ, "app.*"))
    config = ConfigCapability("p", check, settings)
    assert config.get("app.name") == "demo"
    assert config.get("app.missing", 7) == 7
    assert check.calls == [(Permission.CONFIG_READ, "app.name"),
                           (Permission.CONFIG_READ, "app.missing")]


def test_config_get_denied(settings: dict[str, Any]) -> None:
    config = ConfigCapability("p", FakeCheck("p", (Permission.CONFIG_READ, "app.*")), settings)
    with pytest.raises(PermissionDeniedError) as denied:
        config.get("secret.token")
    assert resource_of(denied) == "secret.token"
    assert denied.value.plugin == "p"


def test_config_values_are_copies(settings: dict[str, Any]) -> None:
    config = ConfigCapability("p", FakeCheck("p", (Permission.CONFIG_READ, "*")), settings)
    limits = config.get("app.limits")
    limits["max"] = 1000
    assert settings["app.limits"] == {"max": 3}


def test_config_set_allowed_and_stored_as_a_copy(settings: dict[str, Any]) -> None:
    check = FakeCheck("p", (Permission.CONFIG_WRITE, "app.*"))
    config = ConfigCapability("p", check, settings)
    value = {"level": "debug"}
    config.set("app.logging", value)
    value["level"] = "changed later"
    assert settings["app.logging"] == {"level": "debug"}
    assert check.calls == [(Permission.CONFIG_WRITE, "app.logging")]


def test_config_set_denied(settings: dict[str, Any]) -> None:
    config = ConfigCapability("p", FakeCheck("p", (Permission.CONFIG_READ, "*")), settings)
    with pytest.raises(PermissionDeniedError):
        config.set("app.name", "other")
    assert settings["app.name"] == "demo"


def test_config_keys_lists_only_readable_keys(settings: dict[str, Any]) -> None:
    config = ConfigCapability("p", FakeCheck("p", (Permission.CONFIG_READ, "app.*")), settings)
    assert config.keys() == ["app.name", "app.limits"]
    assert ConfigCapability("p", FakeCheck("p"), settings).keys() == []


def test_config_key_must_be_a_string(settings: dict[str, Any]) -> None:
    config = ConfigCapability("p", FakeCheck("p", (Permission.CONFIG_READ, "*")), settings)
    with pytest.raises(UsageError):
        config.get(cast(Any, 3))


# -- database --------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "host.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        conn.execute("CREATE TABLE secrets (token TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('first')")
        conn.execute("INSERT INTO secrets VALUES ('s3cr3t')")
    conn.close()
    return path


def host_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def schema(path: Path) -> list[tuple[Any, ...]]:
    return host_rows(path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")


@pytest.fixture
def open_db(db_path: Path) -> Iterator[Any]:
    opened: list[DatabaseCapability] = []

    def make(*grants: tuple[Permission, str], **options: Any) -> DatabaseCapability:
        db = DatabaseCapability("p", FakeCheck("p", *grants), db_path, **options)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


def test_select_allowed(open_db: Any) -> None:
    db = open_db((READ, "notes"))
    assert db.execute("SELECT id, body FROM notes") == [(1, "first")]
    assert db.execute("SELECT body FROM notes WHERE id = ?", (1,)) == [("first",)]
    assert db.execute("SELECT body FROM notes WHERE id = :id", {"id": 1}) == [("first",)]


def test_select_denied_names_the_table(open_db: Any) -> None:
    db = open_db((READ, "notes"))
    for sql in ("SELECT token FROM secrets", "SELECT count(*) FROM secrets",
                "SELECT n.body FROM notes n JOIN secrets s ON s.token = n.body",
                "SELECT (SELECT token FROM secrets)"):
        with pytest.raises(PermissionDeniedError) as denied:
            db.execute(sql)
        assert resource_of(denied) == "secrets", sql


def test_counting_a_common_table_expression_reads_no_table(open_db: Any) -> None:
    db = open_db((READ, "notes"))
    assert db.execute("WITH c(x) AS (SELECT body FROM notes) SELECT count(*) FROM c") == [(1,)]
    with pytest.raises(PermissionDeniedError):
        db.execute("WITH c(x) AS (SELECT token FROM secrets) SELECT count(*) FROM c")
    with pytest.raises(PermissionDeniedError):
        # A CTE named like a real table is still checked under that name: fail closed.
        db.execute("WITH secrets(x) AS (SELECT 1) SELECT count(*) FROM secrets")


def test_one_check_per_table_per_statement(db_path: Path) -> None:
    check = FakeCheck("p", (READ, "notes"))
    with DatabaseCapability("p", check, db_path) as db:
        db.execute("SELECT id, body, id, body FROM notes")
        db.execute("SELECT body FROM notes")
    assert check.calls == [(READ, "notes"), (READ, "notes")]


def test_insert_allowed(open_db: Any, db_path: Path) -> None:
    db = open_db((WRITE, "notes"))
    assert db.execute("INSERT INTO notes (body) VALUES (?)", ("second",)) == []
    assert host_rows(db_path, "SELECT body FROM notes ORDER BY id") == [("first",), ("second",)]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO notes (body) VALUES ('x')",
        "REPLACE INTO notes (id, body) VALUES (1, 'x')",
        "UPDATE notes SET body = 'x'",
        "DELETE FROM notes",
    ],
)
def test_row_writes_denied_without_database_write(open_db: Any, db_path: Path, sql: str) -> None:
    db = open_db((READ, "*"))
    with pytest.raises(PermissionDeniedError) as denied:
        db.execute(sql)
    assert resource_of(denied) == "notes"
    assert cast(Any, denied.value.decision).action == "database:write"
    assert host_rows(db_path, "SELECT id, body FROM notes") == [(1, "first")]


def test_writing_one_table_does_not_allow_reading_another(open_db: Any, db_path: Path) -> None:
    db = open_db((WRITE, "notes"), (READ, "notes"))
    with pytest.raises(PermissionDeniedError) as denied:
        db.execute("INSERT INTO notes (body) SELECT token FROM secrets")
    assert resource_of(denied) == "secrets"
    assert host_rows(db_path, "SELECT count(*) FROM notes") == [(1,)]


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("CREATE TABLE extra (x)", "extra"),
        ("CREATE TABLE extra AS SELECT 1 AS x", "extra"),
        ("CREATE INDEX notes_body ON notes (body)", "notes"),
        ("CREATE VIEW everything AS SELECT * FROM notes", "everything"),
        ("DROP TABLE notes", "notes"),
        ("ALTER TABLE notes ADD COLUMN extra TEXT", "notes"),
        ("ALTER TABLE notes RENAME TO gone", "notes"),
    ],
)
def test_schema_changes_denied_without_database_write(
    open_db: Any, db_path: Path, sql: str, table: str
) -> None:
    before = schema(db_path)
    db = open_db((READ, "*"))
    with pytest.raises(PermissionDeniedError) as denied:
        db.execute(sql)
    assert resource_of(denied) == table
    assert schema(db_path) == before


def test_create_table_allowed_with_write_on_its_name(open_db: Any, db_path: Path) -> None:
    db = open_db((WRITE, "plugin_*"), (READ, "plugin_*"))
    db.execute("CREATE TABLE plugin_cache (k TEXT PRIMARY KEY, v TEXT)")
    db.execute("INSERT INTO plugin_cache VALUES ('a', 'b')")
    assert db.execute("SELECT v FROM plugin_cache") == [("b",)]
    db.execute("ALTER TABLE plugin_cache ADD COLUMN stamp INTEGER")
    db.execute("DROP TABLE plugin_cache")
    assert [row[1] for row in schema(db_path)] == ["notes", "secrets"]


def test_reading_the_schema_needs_a_grant(open_db: Any) -> None:
    with pytest.raises(PermissionDeniedError) as denied:
        open_db((READ, "notes")).execute("SELECT name FROM sqlite_master")
    assert resource_of(denied) == "sqlite_master"


def test_views_are_checked_against_the_tables_they_read(open_db: Any) -> None:
    creator = open_db((WRITE, "leak"), (READ, "leak"))
    creator.execute("CREATE VIEW leak AS SELECT token FROM secrets")
    with pytest.raises(PermissionDeniedError) as denied:
        creator.execute("SELECT * FROM leak")
    assert resource_of(denied) == "secrets"


@pytest.mark.parametrize(
    ("sql", "detail"),
    [
        ("ATTACH DATABASE ':memory:' AS other", "attaching"),
        ("DETACH DATABASE main", "detaching"),
        ("PRAGMA user_version = 5", "pragmas"),
        ("PRAGMA writable_schema = ON", "pragmas"),
        ("PRAGMA journal_mode = DELETE", "pragmas"),
        ("SELECT load_extension('evil')", "load_extension"),
        ("CREATE TRIGGER t AFTER INSERT ON notes BEGIN DELETE FROM secrets; END", "trigger"),
        ("CREATE TEMP TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END", "trigger"),
        ("BEGIN", "transactions"),
        ("SAVEPOINT s", "transactions"),
        ("VACUUM", "attaching"),
    ],
)
def test_refused_whatever_the_grants(open_db: Any, db_path: Path, sql: str, detail: str) -> None:
    before = schema(db_path)
    db = open_db((READ, "*"), (WRITE, "*"))
    with pytest.raises(PermissionDeniedError) as denied:
        db.execute(sql)
    assert detail in str(denied.value)
    assert schema(db_path) == before
    assert host_rows(db_path, "PRAGMA user_version") == [(0,)]


def test_vacuum_into_cannot_write_a_file(open_db: Any, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    with pytest.raises(PermissionDeniedError):
        open_db((READ, "*"), (WRITE, "*")).execute(f"VACUUM INTO '{target}'")
    assert not target.exists()


def test_direct_writes_to_the_schema_table_fail(open_db: Any, db_path: Path) -> None:
    before = schema(db_path)
    db = open_db((READ, "*"), (WRITE, "*"))
    with pytest.raises(sqlite3.Error):
        db.execute("DELETE FROM sqlite_master")
    assert schema(db_path) == before


def test_read_only_pragmas(open_db: Any) -> None:
    db = open_db((READ, "notes"))
    assert db.execute("PRAGMA user_version") == [(0,)]
    assert [row[1] for row in db.execute("PRAGMA table_info(notes)")] == ["id", "body"]
    with pytest.raises(PermissionDeniedError) as denied:
        db.execute("PRAGMA table_info(secrets)")
    assert resource_of(denied) == "secrets"


def test_executemany_allowed(open_db: Any, db_path: Path) -> None:
    db = open_db((WRITE, "notes"))
    assert db.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), ("b",)]) == 2
    assert host_rows(db_path, "SELECT count(*) FROM notes") == [(3,)]


def test_executemany_denied(open_db: Any, db_path: Path) -> None:
    db = open_db((READ, "notes"))
    with pytest.raises(PermissionDeniedError):
        db.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), ("b",)])
    assert host_rows(db_path, "SELECT count(*) FROM notes") == [(1,)]
    assert db.execute("SELECT count(*) FROM notes") == [(1,)]  # no transaction left open


def test_executemany_is_atomic(open_db: Any, db_path: Path) -> None:
    db = open_db((WRITE, "notes"))
    with pytest.raises(sqlite3.IntegrityError):
        db.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), (None,)])
    assert host_rows(db_path, "SELECT count(*) FROM notes") == [(1,)]


def test_a_revoked_grant_applies_to_the_next_call(db_path: Path) -> None:
    check = FakeCheck("p", (READ, "notes"))
    with DatabaseCapability("p", check, db_path) as db:
        assert db.execute("SELECT body FROM notes") == [("first",)]
        check.grants.clear()
        with pytest.raises(PermissionDeniedError):
            db.execute("SELECT body FROM notes")


def test_a_check_that_breaks_fails_closed(db_path: Path) -> None:
    def broken(permission: Permission, resource: str) -> None:
        raise RuntimeError("engine bug")

    with DatabaseCapability("p", broken, db_path) as db, pytest.raises(RuntimeError):
        db.execute("DELETE FROM notes")
    assert host_rows(db_path, "SELECT count(*) FROM notes") == [(1,)]


def test_sql_errors_stay_sqlite_errors(open_db: Any) -> None:
    db = open_db((READ, "*"))
    with pytest.raises(sqlite3.OperationalError):
        db.execute("SELEKT 1")
    with pytest.raises(sqlite3.OperationalError):
        db.execute("SELECT * FROM nowhere")


def test_long_queries_are_interrupted(open_db: Any) -> None:
    db = open_db(timeout_seconds=0.2)
    forever = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT count(*) FROM c")
    started = time.monotonic()
    with pytest.raises(PluginTimeoutError) as timed_out:
        db.execute(forever)
    assert time.monotonic() - started < 5
    assert timed_out.value.phase == "database"
    assert db.execute("SELECT 1") == [(1,)]


def test_too_many_rows(open_db: Any) -> None:
    db = open_db(max_rows=5)
    with pytest.raises(ResourceLimitError):
        db.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 6) "
                   "SELECT x FROM c")
    assert len(db.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                          "LIMIT 5) SELECT x FROM c")) == 5


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Connection.setlimit is 3.11+")
def test_huge_values_are_refused(open_db: Any) -> None:
    with pytest.raises(sqlite3.DataError):
        open_db().execute("SELECT length(zeroblob(1000000000))")


def test_the_plugin_gets_neither_path_nor_connection(open_db: Any, db_path: Path) -> None:
    db = open_db((READ, "*"))
    assert str(db_path) not in repr(db)
    assert not [name for name in dir(db) if not name.startswith("_")
                and name not in {"execute", "executemany", "close", "budget", "cpu_seconds"}]


def test_closed_database(open_db: Any) -> None:
    db = open_db((READ, "*"))
    db.close()
    with pytest.raises(UsageError, match="closed"):
        db.execute("SELECT 1")


# -- hooks -----------------------------------------------------------------------------------


@pytest.fixture
def registry() -> HookRegistry:
    return HookRegistry(timeout_seconds=0.3)


def allow_hooks(plugin: str) -> FakeCheck:
    return FakeCheck(plugin, (Permission.HOOK_REGISTER, "*"))


def test_register_allowed_and_run(registry: HookRegistry) -> None:
    registry.register("a", "file.saved", lambda path, **kw: f"a saw {path}", allow_hooks("a"))
    registry.register("b", "file.saved", lambda path, **kw: (path, kw), allow_hooks("b"))
    results = registry.run("file.saved", "/x", extra=1)
    assert results == [HookResult("a", ok=True, value="a saw /x"),
                       HookResult("b", ok=True, value=("/x", {"extra": 1}))]
    assert registry.run("nothing.registered") == []


def test_register_denied(registry: HookRegistry) -> None:
    check = FakeCheck("a", (Permission.HOOK_REGISTER, "file.*"))
    with pytest.raises(PermissionDeniedError) as denied:
        registry.register("a", "auth.login", lambda: None, check)
    assert resource_of(denied) == "auth.login"
    assert registry.plugins("auth.login") == ()
    assert check.calls == [(Permission.HOOK_REGISTER, "auth.login")]


def test_failing_hook_is_logged_and_skipped(registry: HookRegistry,
                                            caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise ValueError("boom")

    registry.register("bad", "tick", broken, allow_hooks("bad"))
    registry.register("good", "tick", lambda: "ok", allow_hooks("good"))
    with caplog.at_level(logging.WARNING, logger="policy_engine.enforcement.host.capabilities"):
        results = registry.run("tick")
    assert results[1] == HookResult("good", ok=True, value="ok")
    assert results[0].plugin == "bad" and not results[0].ok
    assert isinstance(results[0].error, ValueError)
    (record,) = caplog.records
    assert "`tick`" in record.getMessage() and "`bad`" in record.getMessage()
    assert "boom" in record.getMessage()
    assert record.exc_info is not None
    assert not registry.is_quarantined("bad")  # a failure is not an overrun


def test_overrunning_hook_is_skipped_while_others_run(registry: HookRegistry,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    calls: list[str] = []

    def stuck() -> None:
        calls.append("stuck")
        release.wait(10)

    try:
        registry.register("slow", "tick", stuck, allow_hooks("slow"))
        registry.register("fast", "tick", lambda: "done", allow_hooks("fast"))
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            results = registry.run("tick")
        assert time.monotonic() - started < 2
        assert results[1] == HookResult("fast", ok=True, value="done")
        assert not results[0].ok
        assert isinstance(results[0].error, PluginTimeoutError)
        assert results[0].error.phase == "hook"
        assert registry.is_quarantined("slow")
        assert "quarantined" in caplog.text

        # Quarantined: not run again until it registers anew.
        assert [r.plugin for r in registry.run("tick")] == ["fast"]
        assert calls == ["stuck"]
        registry.register("slow", "other", lambda: None, allow_hooks("slow"))
        assert not registry.is_quarantined("slow")
    finally:
        release.set()


def test_async_hooks(registry: HookRegistry) -> None:
    async def answer(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    registry.register("a", "calc", answer, allow_hooks("a"))
    assert registry.run("calc", 21) == [HookResult("a", ok=True, value=42)]


def test_async_overrun_is_cancelled(registry: HookRegistry) -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry.register("a", "tick", slow, allow_hooks("a"))
    registry.register("b", "tick", lambda: "b", allow_hooks("b"))
    results = registry.run("tick")
    assert isinstance(results[0].error, PluginTimeoutError)
    assert "cancelled" in str(results[0].error)
    assert results[1].ok
    assert cancelled.is_set()
    assert not registry.is_quarantined("a")  # cancelled, so nothing is left running


def test_unregister_plugin(registry: HookRegistry) -> None:
    registry.register("a", "x", lambda: 1, allow_hooks("a"))
    registry.register("a", "y", lambda: 2, allow_hooks("a"))
    registry.register("b", "x", lambda: 3, allow_hooks("b"))
    registry.unregister_plugin("a")
    assert registry.plugins("x") == ("b",)
    assert registry.plugins("y") == ()


def test_register_rejects_non_callables(registry: HookRegistry) -> None:
    with pytest.raises(UsageError):
        registry.register("a", "x", cast(Any, "not callable"), allow_hooks("a"))
    with pytest.raises(UsageError):
        registry.register("a", "", lambda: None, allow_hooks("a"))


def test_hook_capability(registry: HookRegistry) -> None:
    granted = HookCapability("a", FakeCheck("a", (Permission.HOOK_REGISTER, "file.*")),
                             registry)
    granted.register("file.saved", lambda: "a")
    with pytest.raises(PermissionDeniedError):
        granted.register("auth.login", lambda: "a")
    assert registry.plugins("file.saved") == ("a",)
    assert registry.plugins("auth.login") == ()


def test_capabilities_fit_the_protocols_plugins_see(db_path: Path,
                                                    registry: HookRegistry) -> None:
    config: ConfigAccess = ConfigCapability("p", FakeCheck("p"), {})
    hooks: HookAccess = HookCapability("p", FakeCheck("p"), registry)
    with DatabaseCapability("p", FakeCheck("p"), db_path) as capability:
        db: DatabaseAccess = capability
        assert db is capability
    assert config.keys() == [] and hooks is not None
