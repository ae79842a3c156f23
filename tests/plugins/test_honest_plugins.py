"""Honest plugins keep working: real workers, the full sandbox, an administrator's grants.

The plugin under ``honest/`` uses what plugins use (json, pathlib, tempfile, logging,
threads, asyncio, sqlite3 on a file in its data directory, zoneinfo, numpy, pandas, a
granted subprocess, ``policy_engine`` itself, ``self.ctx = ctx``); it returns values JSON
cannot say, and it prints. Under ``CI=1`` a skip here is a failure (see conftest.py).
"""

from __future__ import annotations

import datetime
import decimal
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import ChannelValueError, Engine, PluginCrashedError
from policy_engine.enforcement.host import doctor
from policy_engine.enforcement.host.loader import LoadedPlugin, PluginLoader
from policy_engine.enforcement.host.output import LINE_CHARS, OutputLimits
from policy_engine.enforcement.host.sandbox import PluginSandbox

pytestmark = [pytest.mark.integration, pytest.mark.must_run]

HONEST = Path(__file__).parent / "honest"
POLICY = """
allow plugin "honest" to file:read, file:write, file:delete on "{data_dir}/{plugin}/**"
allow plugin "honest" to config:read on "plugins.honest.*"
allow plugin "honest" to subprocess:execute on "echo"
"""


def _full_sandbox_here() -> str:
    """Empty when this machine gives the full sandbox, else what is missing."""
    report = doctor.preflight()
    return "" if report.level == "full" else f"the sandbox here is `{report.level}`"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedPlugin]:
    missing = _full_sandbox_here()
    if missing:
        pytest.skip(missing)
    tmp_path = tmp_path_factory.mktemp("honest")
    plugins = tmp_path / "plugins"
    shutil.copytree(HONEST, plugins, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "site.policy").write_text(POLICY)
    engine = Engine.load(tmp_path / "site.policy", plugins=plugins,
                         variables={"data_dir": str(data)})
    sandbox = PluginSandbox(engine, data_dir=data, config={"plugins.honest.colour": "green"},
                            scratch_root=tmp_path)
    with PluginLoader(engine, sandbox) as loader:
        plugin = loader.load(plugins / "honest_plugin")
        yield plugin


def test_it_runs_untrusted_in_the_full_sandbox(loaded: LoadedPlugin) -> None:
    assert loaded.isolation == "process (full)"
    assert loaded.init_result == {"started": datetime.date(2024, 1, 1)}
    assert loaded.run("hi") == "honest: hi"


def test_json(loaded: LoadedPlugin) -> None:
    assert loaded.uses_json({"b": [1, 2.5, None], "a": "x"}) == {"a": "x", "b": [1, 2.5, None]}


def test_pathlib_in_the_data_directory(loaded: LoadedPlugin) -> None:
    text, names = loaded.uses_pathlib("kept")
    assert text == "kept" and "notes" in names


def test_tempfile(loaded: LoadedPlugin) -> None:
    assert loaded.uses_tempfile() == ("scratch", ["x"])


def test_logging_reaches_the_plugins_logger(loaded: LoadedPlugin,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="policy_engine.plugins.honest"):
        assert loaded.uses_logging("hello") is True
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("policy_engine.plugins.honest", "through the context: hello") in messages
    assert ("policy_engine.plugins.honest",
            "[policy_engine.plugins.honest.part] a child logger: hello") in messages


def test_threads(loaded: LoadedPlugin) -> None:
    assert loaded.uses_threads(100) == (sum(n * n for n in range(100)), 1)


def test_asyncio(loaded: LoadedPlugin) -> None:
    assert loaded.uses_asyncio(20) == sum(range(20))


def test_sqlite_on_a_file_in_the_data_directory(loaded: LoadedPlugin) -> None:
    assert loaded.uses_sqlite([["a", 2], ["b", 3]]) == (5, 2)


def test_zoneinfo(loaded: LoadedPlugin) -> None:
    offset, when = loaded.uses_zoneinfo()
    assert offset == 7200.0
    assert when == datetime.datetime(2024, 7, 1, 10, tzinfo=datetime.timezone.utc)


def test_numpy(loaded: LoadedPlugin) -> None:
    pytest.importorskip("numpy")
    got = loaded.uses_numpy()
    assert got["sum"] == 45 and type(got["sum"]) is int
    assert got["mean"] == 2.5 and got["trace"] > 0
    # BLAS's pool is sized to the plugin's CPU limit (80 % of a core: one thread), not to
    # the host's cores, which would run it over its share and its tasks limit.
    assert got["blas_threads"] == "1" and got["tasks"] <= 2


def test_pandas(loaded: LoadedPlugin) -> None:
    pytest.importorskip("pandas")
    got = loaded.uses_pandas()
    assert got["totals"] == {"a": 4, "b": 2, "c": 4} and got["rows"] == 3
    assert got["when"] == datetime.datetime(2024, 3, 1, 10, tzinfo=datetime.timezone.utc)


def test_a_granted_subprocess(loaded: LoadedPlugin) -> None:
    assert loaded.uses_subprocess() == "from a child"


def test_imports_from_policy_engine_and_a_saved_context(loaded: LoadedPlugin) -> None:
    assert loaded.uses_policy_engine() == ["BaseAgentPlugin", "PermissionDeniedError",
                                           "PluginContext", True]
    assert loaded.uses_saved_context("plugins.honest.colour") == "green"


@pytest.mark.parametrize(("kind", "expected"), [
    ("bytes", b"\x00\x01 raw"),
    ("datetime", datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)),
    ("set", {1, 2, 3}),
    ("tuple", (1, ("two", 3.0))),
    ("decimal", decimal.Decimal("19.99")),
    ("nested", {"when": [datetime.date(2024, 1, 2), datetime.time(3, 4)],
                "tags": frozenset({"x"}), 7: b"seven"}),
])
def test_return_values_json_cannot_say_cross(loaded: LoadedPlugin, kind: str,
                                             expected: Any) -> None:
    assert loaded.returns(kind) == expected


def test_arguments_json_cannot_say_cross(loaded: LoadedPlugin) -> None:
    when = datetime.datetime(2024, 1, 1, 9, 30)
    got = loaded.echo(b"raw", (1, 2), when=when, tags={"a"})
    assert got == {"args": (b"raw", (1, 2)), "kwargs": {"when": when, "tags": {"a"}}}


def test_a_value_that_cannot_cross_names_its_type_and_place(loaded: LoadedPlugin) -> None:
    worker = loaded.runner.worker  # type: ignore[attr-defined]
    restarts = worker.restarts
    with pytest.raises(ChannelValueError) as info:
        loaded.returns_unencodable()
    assert info.value.value_type == "numpy.ndarray"
    assert info.value.where == 'result["a"][2]'
    assert "`numpy.ndarray` at `result[\"a\"][2]`" in str(info.value)
    assert "exited with status" not in str(info.value)
    with pytest.raises(ChannelValueError, match=r"`object` at `result\[0\]`"):
        loaded.returns_object()
    with pytest.raises(ChannelValueError, match=r"at `args\[0\]\[1\]`"):
        loaded.echo([1, object()])
    assert loaded.run("still") == "honest: still"  # the same worker serves on
    assert worker.restarts == restarts


def test_output_goes_to_the_plugins_logger_never_the_hosts(
        loaded: LoadedPlugin, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.INFO, logger="policy_engine.plugins.honest"):
        assert loaded.prints() is True
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "policy_engine.plugins.honest"]
    for expected in [(logging.INFO, "[stdout] a line from print()"),
                     (logging.WARNING, "[stderr] to stderr from print()"),
                     (logging.INFO, "[stdout] a line from os.write(1)"),
                     (logging.WARNING, "[stderr] a line from C: 42"),
                     (logging.INFO, "[stdout] a line from a child")]:
        assert expected in lines
    long = next(text for _level, text in lines if "very long line" in text)
    assert long.startswith("[stdout] \\x1b[31mred\\x1b[0m and a very long line")
    assert "\x1b" not in long and long.endswith("more characters]")
    assert len(long) < LINE_CHARS + 100
    captured = capfd.readouterr()
    assert "a line from" not in captured.out + captured.err


def test_a_flood_of_output_is_bounded(loaded: LoadedPlugin, caplog: pytest.LogCaptureFixture,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.INFO, logger="policy_engine.plugins.honest"):
        assert loaded.floods(6) is True
    records = [r.getMessage() for r in caplog.records if r.name == "policy_engine.plugins.honest"]
    logged = sum(len(text) for text in records if text.startswith("[stdout]"))
    assert logged <= OutputLimits().call_bytes + len(records) * 10
    dropped = [text for text in records if text.startswith("[output]")]
    assert len(dropped) == 1 and "bytes of the plugin's output were dropped" in dropped[0]
    assert "yyyy" not in capfd.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="policy_engine.plugins.honest"):
        loaded.prints()  # the next call has its own budget
    assert any("a line from print()" in r.getMessage() for r in caplog.records)


def test_many_log_records_are_bounded_not_fatal(loaded: LoadedPlugin,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="policy_engine.plugins.honest"):
        assert loaded.logs_a_lot(10_500) == 10_500
    messages = [r.getMessage() for r in caplog.records if r.name == "policy_engine.plugins.honest"]
    assert messages.count("record 0") == 1 and "record 10499" not in messages
    assert messages[-1] == "500 log records were dropped (at most 10,000 cross per call)"
    assert not any("not sent" in text for text in messages)


def test_a_dead_worker_is_named_with_its_last_line_on_stderr(loaded: LoadedPlugin) -> None:
    with pytest.raises(PluginCrashedError, match=r"exited with status 3; its last line on "
                                                 r"stderr: `about to give up: disk on fire`"):
        loaded.dies()
    assert loaded.run("again") == "honest: again"  # a fresh worker
