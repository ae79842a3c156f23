"""A database call when the host configured no database says so, in a real worker and in
process (today's message was "unknown capability call")."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_engine import EnforcementError, Engine, UsageError
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.runners import HostServices
from policy_engine.enforcement.host.sandbox import PluginSandbox

MANIFEST = """\
name: db-user
version: 1.0.0
type: agent
entry_point: db_user:DbUser
permissions:
  - database:read notes
timeouts: {init: 10s, execute: 5s}
"""
CODE = """\
from policy_engine import BaseAgentPlugin


class DbUser(BaseAgentPlugin):
    def run(self):
        return self.ctx.db.execute("SELECT body FROM notes")

    def caught(self):
        try:
            self.ctx.db.execute("SELECT body FROM notes")
        except Exception as exc:
            return str(exc)
        return "no error"
"""
POLICY = """
defaults { isolation process allow degraded }
allow plugin * to database:read on "notes"
"""
MESSAGE = "plugin `db-user` called `db.execute`, but no database is configured"


@pytest.mark.integration
def test_a_worker_is_told_there_is_no_database(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins" / "db_user"
    plugin.mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(MANIFEST, encoding="utf-8")
    (plugin / "db_user.py").write_text(CODE, encoding="utf-8")
    (tmp_path / "site.policy").write_text(POLICY, encoding="utf-8")
    engine = Engine.load(tmp_path / "site.policy", plugins=tmp_path / "plugins")
    sandbox = PluginSandbox(engine, data_dir=tmp_path / "data", scratch_root=tmp_path)
    with PluginLoader(engine, sandbox) as loader:
        loaded = loader.load(plugin)
        assert loaded.isolation.startswith("process")
        assert MESSAGE in loaded.caught()
        with pytest.raises(EnforcementError) as info:
            loaded.run()
        assert MESSAGE in str(info.value)
        assert "unknown capability" not in str(info.value)


def test_in_process_the_context_database_says_there_is_none() -> None:
    services = HostServices("db-user", lambda permission, resource: None, config={},
                            db_path=None, hooks=None)
    with pytest.raises(UsageError, match="no database is configured"):
        services.db.execute("SELECT 1")
    with pytest.raises(UsageError, match=r"`db\.executemany`"):
        services.handle("db", "executemany", ["INSERT INTO t VALUES (?)", [[1]]])
    services.close()
