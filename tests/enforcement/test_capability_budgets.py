"""Capabilities cost the host only what the plugin's budget allows.

Each test is a statement or a value a hostile plugin would send to make the host spend
time, memory or bookkeeping on it; the capability must stop it with one of the library's
errors, and the next call must work (nothing is left half-done).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host.capabilities import (
    MAX_CONFIG_KEY_LENGTH,
    MAX_CONFIG_KEYS,
    ConfigCapability,
    DatabaseBudget,
    DatabaseCapability,
)
from policy_engine.errors import PluginTimeoutError, ResourceLimitError, UsageError
from policy_engine.permissions import Permission
from tests.enforcement.test_capabilities import FakeCheck

READ, WRITE = Permission.DATABASE_READ, Permission.DATABASE_WRITE


@pytest.fixture
def db(tmp_path: Path) -> Any:
    opened: list[DatabaseCapability] = []

    def make(budget: DatabaseBudget | None = None) -> DatabaseCapability:
        capability = DatabaseCapability("p", FakeCheck("p", (READ, "*"), (WRITE, "*")),
                                        tmp_path / "host.db", budget=budget)
        opened.append(capability)
        return capability

    yield make
    for capability in opened:
        capability.close()


_COUNTER = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT count(*) FROM c")


def test_a_statement_that_reads_no_table_is_stopped_on_time(db: Any) -> None:
    capability = db(DatabaseBudget(timeout_seconds=0.3))
    with pytest.raises(PluginTimeoutError):
        capability.execute(_COUNTER)
    assert capability.cpu_seconds > 0  # the host's CPU is on the plugin's account
    assert capability.execute("SELECT 1") == [(1,)]


def test_a_statement_that_grows_the_host_is_stopped(db: Any) -> None:
    capability = db(DatabaseBudget(timeout_seconds=10, max_memory_bytes=4_000_000))
    # An aggregate that builds a 14 MB string in the host without reading any table.
    statement = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                 "LIMIT 200000) SELECT length(group_concat(printf('%.70c', 'a'))) FROM c")
    with pytest.raises(ResourceLimitError, match="memory"):
        capability.execute(statement)
    assert capability.execute("SELECT 2") == [(2,)]


def test_result_bytes_are_capped(db: Any) -> None:
    capability = db(DatabaseBudget(max_result_bytes=100_000, max_rows=1_000_000))
    capability.execute("CREATE TABLE big (v BLOB)")
    capability.executemany("INSERT INTO big VALUES (?)", [(b"x" * 1000,)] * 500)
    with pytest.raises(ResourceLimitError, match="bytes"):
        capability.execute("SELECT v FROM big")
    # Rows are counted one at a time: huge values stop at the first one over the budget.
    with pytest.raises(ResourceLimitError, match="bytes"):
        capability.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                           "LIMIT 1000) SELECT zeroblob(90000) FROM c")
    assert len(capability.execute("SELECT v FROM big LIMIT 10")) == 10


def test_every_sqlite_type_comes_back(db: Any) -> None:
    capability = db()
    capability.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)")
    capability.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                       (2**62, 1.5, "tëxt", b"\x00\xffbytes", None))
    assert capability.execute("SELECT * FROM t") == [(2**62, 1.5, "tëxt", b"\x00\xffbytes", None)]


@pytest.mark.parametrize("statement", [
    "SELECT " + "(" * 500 + "1" + ")" * 500,
    "SELECT " + ", ".join(["1"] * 2000),
    " UNION ALL ".join(["SELECT 1"] * 100),
])
def test_statements_built_too_big_are_refused(db: Any, statement: str) -> None:
    capability = db(DatabaseBudget(max_sql_length=100_000))
    with pytest.raises(sqlite3.Error, match="too (many|large|big)|too deep|depth|overflow"):
        capability.execute(statement)
    assert capability.execute("SELECT 3") == [(3,)]


@pytest.mark.parametrize("statement", ["SELECT '" + "a" * 2000 + "'",
                                       "SELECT " + "+".join(["1"] * 600)])
def test_an_overlong_statement_is_refused_before_sqlite_sees_it(db: Any, statement: str) -> None:
    capability = db(DatabaseBudget(max_sql_length=1000))
    with pytest.raises(ResourceLimitError, match="characters"):
        capability.execute(statement)


def test_executemany_batches_are_capped(db: Any) -> None:
    capability = db(DatabaseBudget(max_rows=10))
    capability.execute("CREATE TABLE t (v)")
    with pytest.raises(ResourceLimitError):
        capability.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(11)])
    assert capability.execute("SELECT count(*) FROM t") == [(0,)]


# -- configuration ---------------------------------------------------------------------------


def _config(mapping: dict[str, Any], peek: Any = None) -> tuple[ConfigCapability, FakeCheck]:
    check = FakeCheck("p", (Permission.CONFIG_READ, "app.*"), (Permission.CONFIG_WRITE, "*"))
    return ConfigCapability("p", check, mapping, peek=peek), check


def test_keys_with_a_peek_records_no_denial() -> None:
    def peek(permission: Permission, key: str) -> bool:
        return key.startswith("app.")

    config, check = _config({"app.a": 1, "secret.b": 2, "app.c": 3}, peek)
    assert config.keys() == ["app.a", "app.c"]
    assert check.calls == []  # listing is not an attempt to read


def test_config_keys_and_values_are_capped() -> None:
    mapping: dict[str, Any] = {}
    config, _ = _config(mapping)
    with pytest.raises(UsageError, match="at most"):
        config.set("k" * (MAX_CONFIG_KEY_LENGTH + 1), 1)
    with pytest.raises(UsageError, match="too large"):
        config.set("wide", list(range(20_000)))
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(UsageError, match="nested"):
        config.set("deep", deep)
    with pytest.raises(UsageError, match="characters"):
        config.set("long", "x" * 2_000_000)
    with pytest.raises(UsageError, match="JSON-like"):
        config.set("odd", object())
    for i in range(MAX_CONFIG_KEYS):
        mapping[f"k{i}"] = i
    with pytest.raises(ResourceLimitError):
        config.set("one.more", 1)
    config.set("k1", 2)  # replacing a key never counts as growing
    assert mapping["k1"] == 2


# -- hooks -----------------------------------------------------------------------------------


def test_a_restarted_worker_replaces_its_hooks_instead_of_adding() -> None:
    from policy_engine.enforcement.host.capabilities import HookCapability, HookRegistry

    registry = HookRegistry()
    check = FakeCheck("p", (Permission.HOOK_REGISTER, "*"))
    for _ in range(3):  # three worker starts, each registering its hook again
        HookCapability("p", check, registry).register_worker_hook("on_event", lambda: "ran")
    assert [r.value for r in registry.run("on_event")] == ["ran"]


def test_hook_registrations_are_capped() -> None:
    from policy_engine.enforcement.host.capabilities import (
        MAX_HOOKS_PER_PLUGIN,
        HookCapability,
        HookRegistry,
    )

    registry = HookRegistry()
    hooks = HookCapability("p", FakeCheck("p", (Permission.HOOK_REGISTER, "*")), registry)
    for i in range(MAX_HOOKS_PER_PLUGIN):
        hooks.register(f"h{i}", lambda: None)
    with pytest.raises(ResourceLimitError):
        hooks.register("one.more", lambda: None)
    assert "one.more" not in registry._hooks
    with pytest.raises(UsageError):
        hooks.register("x" * 1000, lambda: None)
