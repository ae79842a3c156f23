"""``limit disk``: the kernel caps the data directory (ENOSPC), the data survives restarts,
and a host that cannot hold the limit refuses the plugin unless the policy accepts it."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.enforcement.host import bwrap, disk
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.spec import resource_limits
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import EnforcementError, PluginCrashedError
from policy_engine.manifest import manifest_from_mapping
from policy_engine.settings import resolve

PLUGIN = '''
import os


class Plugin:
    def fill(self, path, size):
        try:
            with open(path, "wb") as handle:
                for _ in range(size >> 16):
                    handle.write(b"x" * (1 << 16))
                    handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            return error.errno
        return 0

    def many(self, directory, count):
        for index in range(count):
            try:
                open(os.path.join(directory, f"f{index}"), "w").close()
            except OSError as error:
                return [index, error.errno]
        return [count, 0]

    def write(self, path, text):
        with open(path, "w") as handle:
            handle.write(text)
        return True

    def read(self, path):
        with open(path) as handle:
            return handle.read()

    def remove(self, path):
        os.remove(path)
        return True

    def crash(self):
        os._exit(3)
'''

MiB = 1024 * 1024
Starter = Callable[..., WorkerProcess]
needs_disk = pytest.mark.skipif(bool(disk.available()), reason=disk.available() or "ok")


def _modes() -> list[Any]:
    return [pytest.param(False, id="landlock"),
            pytest.param(True, id="bubblewrap", marks=pytest.mark.skipif(
                bool(bwrap.available()), reason=bwrap.available() or "ok"))]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "fill.py").write_text(PLUGIN)
    (tmp_path / "data").mkdir()
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture(params=_modes())
def start(request: pytest.FixtureRequest, tree: Path) -> Iterator[Starter]:
    workers: list[WorkerProcess] = []
    data_dir = str(tree / "data" / "fill")

    def starter(**limits: Any) -> WorkerProcess:
        spec = LockdownSpec(scratch_dir=str(tree / "scratch"), plugin_dir=str(tree / "plugin"),
                            write_paths=(data_dir,), read_paths=(data_dir,), audit_hook=False)
        init = WorkerInit(plugin="fill", plugin_dir=str(tree / "plugin"),
                          entry_point="fill:Plugin", lockdown=spec, checker={"allow": []},
                          data_dir=data_dir,
                          limits=ResourceLimits(memory_bytes=256 * MiB, **limits))
        identities = IdentityMap(tree / "identities.json", first=0x5E200000, count=1024)
        worker = WorkerProcess(sandbox=request.param, identities=identities)
        workers.append(worker)
        worker.start(init)
        return worker

    yield starter
    for worker in workers:
        worker.stop()
    disk.unmount_data_dir(data_dir)


@pytest.mark.integration
@needs_disk
def test_writing_past_the_limit_fails_with_enospc_and_the_data_survives_restarts(
        start: Starter, tree: Path) -> None:
    data = tree / "data" / "fill"
    worker = start(disk_bytes=4 * MiB, disk_files=32)
    assert os.path.ismount(data)
    assert worker.call("write", [str(data / "keep.txt"), "kept"], timeout=10)
    assert worker.call("fill", [str(data / "big"), 8 * MiB], timeout=30) == errno.ENOSPC
    assert worker.alive
    assert worker.call("remove", [str(data / "big")], timeout=10)
    assert worker.call("many", [str(data), 200], timeout=30) == [pytest.approx(32, abs=16),
                                                                  errno.ENOSPC]
    with pytest.raises(PluginCrashedError):
        worker.call("crash", timeout=10)
    # A fresh worker (after the crash), then a stop and a new start: the same data.
    assert worker.call("read", [str(data / "keep.txt")], timeout=10) == "kept"
    worker.stop()
    assert not os.path.ismount(data)
    again = start(disk_bytes=4 * MiB, disk_files=32)
    assert again.call("read", [str(data / "keep.txt")], timeout=10) == "kept"
    image = Path(disk.image_path(str(data)))
    assert image.stat().st_size == 4 * MiB and image.stat().st_mode & 0o777 == 0o600


@needs_disk
def test_an_image_of_another_size_and_a_full_directory_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "plugin-data"
    data.mkdir()
    (data / "old.txt").write_text("x")
    with pytest.raises(EnforcementError, match="already holds files"):
        disk.mount_data_dir(str(data), disk.DiskLimit(2 * MiB), 0, 0)
    (data / "old.txt").unlink()
    disk.mount_data_dir(str(data), disk.DiskLimit(2 * MiB), 0, 0)
    disk.unmount_data_dir(str(data))
    with pytest.raises(EnforcementError, match="resize it"):
        disk.mount_data_dir(str(data), disk.DiskLimit(3 * MiB), 0, 0)
    assert not os.path.ismount(data)


def _engine(settings: str) -> Engine:
    manifest = manifest_from_mapping({"name": "fill", "version": "1.0.0", "type": "agent",
                                      "entry_point": "fill:Plugin"}, file="fill.yaml")
    return Engine.from_source(f'plugin "fill" {{ {settings} }}\n'
                              'allow plugin * to hook:register', [manifest])


def test_without_the_mechanism_the_plugin_is_refused_unless_accepted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk, "available", lambda: "a disk limit needs a root host")
    refusal = disk.disk_limit_refusal(_engine("limit disk 10MB").effective("fill"), "fill")
    assert refusal is not None and "a disk limit needs a root host" in refusal
    assert "accept missing-disk-limit" in refusal
    accepted = _engine("limit disk 10MB\n accept missing-disk-limit")
    assert disk.disk_limit_refusal(accepted.effective("fill"), "fill") is None
    assert resource_limits(accepted.effective("fill")).disk_bytes == 0  # not held, as accepted
    files_only = disk.disk_limit_refusal(_engine("limit disk_files 10").effective("fill"), "fill")
    assert files_only is not None and "needs a `limit disk`" in files_only


def test_limit_disk_compiles_with_bytes_and_files() -> None:
    engine = _engine("limit disk 64MB max 1GB\n limit disk_files 5000")
    limits = engine.limits("fill")
    assert (limits.disk, limits.disk_files) == (64_000_000, 5000)
    assert resolve.__name__ == "resolve"
    if not disk.available():
        assert resource_limits(engine.effective("fill")).disk_bytes == 64_000_000


def test_doctor_reports_the_mechanism_and_the_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.enforcement.host import doctor

    monkeypatch.setattr(disk, "available", lambda: "a disk limit needs a root host")
    report = doctor.preflight(_engine("limit disk 10MB"))
    check = next(c for c in report.checks if c.name == "disk-limit")
    assert not check.ok and "root host" in check.detail
    (plugin,) = report.plugins
    assert "accept missing-disk-limit" in plugin.refusal


@pytest.mark.integration
@needs_disk
def test_a_policy_limit_disk_caps_ctx_data_dir_through_the_loader(tmp_path: Path) -> None:
    import shutil

    from policy_engine.enforcement.host.loader import PluginLoader
    from policy_engine.enforcement.host.sandbox import PluginSandbox
    from policy_engine.errors import PluginRaisedError

    fixtures = Path(__file__).parent.parent / "plugins" / "fixtures"
    plugins = tmp_path / "plugins"
    shutil.copytree(fixtures / "example_workflow_plugin", plugins / "example_workflow_plugin")
    data, scratch = tmp_path / "data", tmp_path / "scratch"
    data.mkdir()
    scratch.mkdir()
    (tmp_path / "site.policy").write_text(
        'defaults { isolation process allow degraded }\n'
        'plugin "example-workflow" { limit disk 2MiB\n limit disk_files 20 }\n'
        'allow plugin * to file:read, file:write on "{data_dir}/{plugin}/**"\n')
    engine = Engine.load(tmp_path / "site.policy", plugins=plugins,
                         variables={"data_dir": str(data)})
    own = data / "example-workflow"
    try:
        with PluginLoader(engine, PluginSandbox(engine, data_dir=data,
                                                scratch_root=scratch)) as loader:
            workflow = loader.load(plugins / "example_workflow_plugin")
            assert os.path.ismount(own)
            assert workflow.execute("a.txt", 800_000) > 0  # whole 64 KiB blocks
            with pytest.raises(PluginRaisedError) as full:
                for index in range(3):
                    workflow.execute(f"more-{index}.txt", 800_000)
            assert "No space left" in str(full.value.remote_message)
        with PluginLoader(engine, PluginSandbox(engine, data_dir=data,
                                                scratch_root=scratch)) as loader:
            again = loader.load(plugins / "example_workflow_plugin")
            assert again.read_back("a.txt") == "xxxxx"
    finally:
        disk.unmount_data_dir(str(own))
