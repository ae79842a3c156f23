"""Every SQLite value type crosses the worker's channel, both ways, and a failed database
call leaves the channel in step (the next call gets its own answer, not the last one's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox

MANIFEST = """\
name: db-values
version: 1.0.0
type: agent
entry_point: db_values:DbValues
permissions:
  - database:read notes
  - database:write notes
timeouts: {init: 10s, execute: 10s}
"""
CODE = """\
from policy_engine import BaseAgentPlugin


class DbValues(BaseAgentPlugin):
    def run(self):
        return None

    def create(self):
        self.ctx.db.execute("CREATE TABLE IF NOT EXISTS notes "
                            "(i INTEGER, r REAL, s TEXT, b BLOB, n)")

    def put(self, i, r, s, b, n):
        self.ctx.db.execute("INSERT INTO notes VALUES (?, ?, ?, ?, ?)", (i, r, s, b, n))

    def put_blob(self):
        self.ctx.db.execute("INSERT INTO notes VALUES (?, ?, ?, ?, ?)",
                            (7, 0.5, "made inside", bytes(range(256)), None))

    def rows(self):
        return self.ctx.db.execute("SELECT i, r, s, b, n FROM notes ORDER BY rowid")

    def blob_inside(self):
        rows = self.ctx.db.execute("SELECT b FROM notes WHERE i = 7")
        value = rows[0][0]
        return [type(value).__name__, len(value), value[:4] == bytes(range(4))]

    def put_uncrossable(self):
        try:
            self.ctx.db.execute("INSERT INTO notes VALUES (?, ?, ?, ?, ?)",
                                (1, 1.0, "x", object(), None))
        except Exception as exc:
            return [type(exc).__name__, str(exc)]
        return ["no error", ""]

    def put_unbindable(self):
        try:
            self.ctx.db.execute("INSERT INTO notes VALUES (?, ?, ?, ?, ?)",
                                (1, 1.0, "x", [1, 2], None))
        except Exception as exc:
            return [type(exc).__name__, str(exc)]
        return ["no error", ""]

    def echo_types(self):
        rows = self.ctx.db.execute("SELECT 1, 2.5, 'text', x'00ff', NULL, 2 * 4611686018427387904")
        return [type(v).__name__ for v in rows[0]]

    def fail_then_count(self):
        try:
            self.ctx.db.execute("SELECT no_such_column FROM notes")
        except Exception as exc:
            first = type(exc).__name__
        else:
            first = "no error"
        count = self.ctx.db.execute("SELECT count(*) FROM notes")
        return [first, count]
"""
POLICY = """
defaults { isolation process allow degraded }
allow plugin * to database:read on "notes"
allow plugin * to database:write on "notes"
"""


@pytest.fixture
def loaded(tmp_path: Path) -> Any:
    plugin = tmp_path / "plugins" / "db_values"
    plugin.mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(MANIFEST, encoding="utf-8")
    (plugin / "db_values.py").write_text(CODE, encoding="utf-8")
    (tmp_path / "site.policy").write_text(POLICY, encoding="utf-8")
    engine = Engine.load(tmp_path / "site.policy", plugins=tmp_path / "plugins")
    sandbox = PluginSandbox(engine, data_dir=tmp_path / "data", scratch_root=tmp_path,
                            db_path=tmp_path / "host.db")
    with PluginLoader(engine, sandbox) as loader:
        handle = loader.load(plugin)
        assert handle.isolation.startswith("process")
        handle.create()
        yield handle


@pytest.mark.integration
def test_every_sqlite_value_type_crosses_the_channel(loaded: Any) -> None:
    loaded.put_blob()
    assert loaded.blob_inside() == ["bytes", 256, True]
    rows = loaded.rows()
    assert rows[0][:3] == [7, 0.5, "made inside"] or tuple(rows[0][:3]) == (7, 0.5, "made inside")
    assert bytes(rows[0][3]) == bytes(range(256)) and rows[0][4] is None


@pytest.mark.integration
def test_a_failed_database_call_leaves_the_channel_in_step(loaded: Any) -> None:
    loaded.put_blob()
    for _ in range(3):
        first, count = loaded.fail_then_count()
        assert first != "no error"
        assert [list(row) for row in count] == [[1]]
    # A value the channel cannot carry fails that call in the worker, naming its type and
    # where it was, before anything is sent; one SQLite cannot bind fails in the host. The
    # next call gets its own answer either way.
    kind, message = loaded.put_uncrossable()
    assert kind == "ChannelValueError" and "`object`" in message and "db.execute()" in message
    assert [list(row) for row in loaded.fail_then_count()[1]] == [[1]]
    kind, message = loaded.put_unbindable()
    assert kind != "no error"
    assert [list(row) for row in loaded.fail_then_count()[1]] == [[1]]


@pytest.mark.integration
def test_each_sqlite_type_arrives_as_itself(loaded: Any) -> None:
    # INTEGER, REAL, TEXT, BLOB, NULL, and an integer overflowing to REAL in SQLite.
    assert loaded.echo_types() == ["int", "float", "str", "bytes", "NoneType", "float"]
