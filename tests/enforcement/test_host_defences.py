"""A host that no worker can stall or grow: real workers attacking the supervisor.

Each plugin here does what a hostile plugin that has read the supervisor would do to keep a
call alive or make the host work for it; the call must end on time with one of the
library's errors, and the host must be able to start the plugin again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host.supervisor import StartResult, WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import EnforcementError, PluginTimeoutError, ResourceLimitError
from tests.enforcement.test_worker import rules_table

pytestmark = pytest.mark.integration

PLUGIN = '''
import logging


class Plugin:
    def initialize(self, ctx):
        self.ctx = ctx

    def flood_logs(self):
        log = logging.getLogger("policy_engine.plugins.flood")
        while True:
            log.warning("x")

    def flood_capabilities(self):
        while True:
            try:
                self.ctx.config.get("k")
            except Exception:
                pass

    def many_loggers(self, count):
        for i in range(count):
            logging.getLogger(f"policy_engine.plugins.flood.n{i}").warning("x")
            logging.getLogger(f"anything.else{i}").warning("y")
        return count

    def ping(self):
        return "pong"
'''


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., tuple[WorkerProcess, StartResult]]]:
    directory = tmp_path / "plugin"
    directory.mkdir()
    (directory / "flood.py").write_text(PLUGIN)
    workers: list[WorkerProcess] = []

    def starter(handler: Any = None, **limits: Any) -> tuple[WorkerProcess, StartResult]:
        lockdown = LockdownSpec(scratch_dir=str(tmp_path / "scratch"),
                                plugin_dir=str(directory))
        worker = WorkerProcess(capability_handler=handler)
        workers.append(worker)
        result = worker.start(WorkerInit(
            plugin="flood", plugin_dir=str(directory), entry_point="flood:Plugin",
            lockdown=lockdown, checker=rules_table([], directory),
            limits=ResourceLimits(memory_bytes=256 * 1024 * 1024, **limits)))
        return worker, result

    yield starter
    for worker in workers:
        worker.stop()


def test_a_flood_of_log_frames_does_not_stop_the_deadline(start: Any) -> None:
    worker, _ = start()
    began = time.monotonic()
    with pytest.raises(PluginTimeoutError):
        worker.call("flood_logs", timeout=1.0)
    assert time.monotonic() - began < 5
    assert worker.host_cpu_seconds > 0  # what the host spent is on the plugin's account
    assert worker.call("ping", timeout=10) == "pong"  # a fresh worker serves the next call


def test_host_cpu_spent_on_a_plugins_requests_counts_against_its_cpu_limit(start: Any) -> None:
    def expensive(capability: str, method: str, args: list[Any]) -> Any:
        end = time.thread_time() + 0.01  # every request costs the host 10 ms of CPU
        while time.thread_time() < end:
            pass
        return None

    worker, _ = start(handler=expensive, cpu_share=0.2, cpu_window=0.5)
    began = time.monotonic()
    with pytest.raises((ResourceLimitError, EnforcementError)) as stopped:
        worker.call("flood_capabilities", timeout=30.0)
    assert isinstance(stopped.value, ResourceLimitError), stopped.value
    assert stopped.value.resource == "cpu"
    assert time.monotonic() - began < 10


def test_logger_names_a_worker_invents_do_not_grow_the_host(start: Any) -> None:
    import logging

    worker, _ = start()
    before = len(logging.Logger.manager.loggerDict)
    assert worker.call("many_loggers", [300], timeout=20) == 300
    assert len(logging.Logger.manager.loggerDict) - before <= 1


def test_nothing_a_load_made_outlives_unload_but_the_data_directory(tmp_path: Path) -> None:
    import shutil

    from policy_engine import Engine
    from policy_engine.enforcement.host.loader import PluginLoader
    from policy_engine.enforcement.host.sandbox import PluginSandbox

    fixtures = Path(__file__).parent.parent / "plugins" / "fixtures"
    plugins = tmp_path / "plugins"
    shutil.copytree(fixtures / "example_workflow_plugin", plugins / "example_workflow_plugin")
    data, scratch = tmp_path / "data", tmp_path / "scratch"
    data.mkdir()
    scratch.mkdir()
    (tmp_path / "site.policy").write_text(
        'defaults { isolation process allow degraded }\n'
        'allow plugin * to file:read, file:write on "{data_dir}/{plugin}/**"\n')
    engine = Engine.load(tmp_path / "site.policy", plugins=plugins,
                         variables={"data_dir": str(data)})
    with PluginLoader(engine, PluginSandbox(engine, data_dir=data, scratch_root=scratch)) as loader:
        workflow = loader.load(plugins / "example_workflow_plugin")
        assert workflow.execute("out.txt", 10) == 10
        assert list(scratch.iterdir())
        loader.unload("example-workflow")
        assert list(scratch.iterdir()) == []
    assert (data / "example-workflow" / "out.txt").exists()


def test_records_are_a_ring() -> None:
    from policy_engine import Engine
    from policy_engine.enforcement.host import sandbox as sandbox_module
    from policy_engine.enforcement.host.sandbox import PluginSandbox

    engine = Engine.from_source("allow plugin * to hook:register", [])
    box = PluginSandbox(engine)
    for _ in range(sandbox_module.MAX_RECORDS + 5):
        box.record(engine.decide("nobody", "file:read", "/x"))
    assert len(box.records()) == sandbox_module.MAX_RECORDS
    assert box.dropped_records == 5
