"""Grants on single files, held by the kernel alone (audit hook off), with and without
bubblewrap: a file next to a granted one is out of reach, a write grant stays write-only."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host import bwrap
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.worker import landlock
from policy_engine.enforcement.worker.lockdown import LockdownSpec, landlock_plan

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(landlock.abi_version() <= 0, reason="the kernel has no Landlock"),
]

PLUGIN = '''
import errno


class Plugin:
    def read(self, path):
        try:
            with open(path) as handle:
                return handle.read()
        except OSError as error:
            return error.errno

    def write(self, path, text, mode="w"):
        try:
            with open(path, mode) as handle:
                handle.write(text)
        except OSError as error:
            return error.errno
        return 0
'''

REFUSED = (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS)
Starter = Callable[..., WorkerProcess]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "files.py").write_text(PLUGIN)
    for name in ("in", "out"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "granted.txt").write_text(f"{name} granted")
        (tmp_path / name / "neighbour.txt").write_text(f"{name} neighbour")
    tmp_path.chmod(0o755)
    for path in tmp_path.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)  # only the sandbox may say no
    return tmp_path


def _modes() -> list[Any]:
    no_bwrap = bool(bwrap.available())
    return [pytest.param(False, id="landlock"),
            pytest.param(True, id="bubblewrap",
                         marks=pytest.mark.skipif(no_bwrap, reason=bwrap.available() or "ok"))]


@pytest.fixture(params=_modes())
def start(request: pytest.FixtureRequest, tree: Path) -> Iterator[Starter]:
    workers: list[WorkerProcess] = []

    def starter(**fields: Any) -> WorkerProcess:
        spec = LockdownSpec(scratch_dir=str(tree / "scratch"), plugin_dir=str(tree / "plugin"),
                            audit_hook=False, **fields)
        init = WorkerInit(plugin="files", plugin_dir=str(tree / "plugin"),
                          entry_point="files:Plugin", lockdown=spec, checker={"allow": []},
                          data_dir=str(tree / "data"),
                          limits=ResourceLimits(memory_bytes=256 * 1024 * 1024))
        identities = IdentityMap(tree / "identities.json", first=0x5E100000, count=1024)
        worker = WorkerProcess(sandbox=request.param, identities=identities)
        workers.append(worker)
        report = worker.start(init).report
        assert report.landlock_abi > 0 and not [m for m in report.missing if "landlock:" in m]
        return worker

    yield starter
    for worker in workers:
        worker.stop()


def test_a_read_grant_on_one_file_reaches_that_file_only(start: Starter, tree: Path) -> None:
    worker = start(read_paths=(str(tree / "in" / "granted.txt"),))
    assert worker.call("read", [str(tree / "in" / "granted.txt")], timeout=10) == "in granted"
    assert worker.call("read", [str(tree / "in" / "neighbour.txt")], timeout=10) in REFUSED
    assert worker.call("write", [str(tree / "in" / "granted.txt"), "x"], timeout=10) in REFUSED
    assert worker.call("write", [str(tree / "in" / "new.txt"), "x"], timeout=10) in REFUSED
    assert (tree / "in" / "granted.txt").read_text() == "in granted"
    assert not (tree / "in" / "new.txt").exists()


def test_a_write_grant_on_one_file_is_write_only_and_that_file_only(start: Starter,
                                                                    tree: Path) -> None:
    target = tree / "out" / "granted.txt"
    worker = start(write_paths=(str(target),))
    assert worker.call("write", [str(target), " appended", "a"], timeout=10) == 0
    assert target.read_text() == "out granted appended"
    assert worker.call("read", [str(target)], timeout=10) in REFUSED
    assert worker.call("read", [str(tree / "out" / "neighbour.txt")], timeout=10) in REFUSED
    assert worker.call("write", [str(tree / "out" / "neighbour.txt"), "x"],
                       timeout=10) in REFUSED
    assert worker.call("write", [str(tree / "out" / "new.txt"), "x"], timeout=10) in REFUSED
    assert (tree / "out" / "neighbour.txt").read_text() == "out neighbour"
    assert not (tree / "out" / "new.txt").exists()


def test_read_and_write_grants_on_one_file_give_both(start: Starter, tree: Path) -> None:
    target = str(tree / "out" / "granted.txt")
    worker = start(read_paths=(target,), write_paths=(target,))
    assert worker.call("write", [target, "rewritten"], timeout=10) == 0
    assert worker.call("read", [target], timeout=10) == "rewritten"
    assert worker.call("read", [str(tree / "out" / "neighbour.txt")], timeout=10) in REFUSED


def test_the_landlock_rule_of_a_file_grant_names_the_file(tree: Path) -> None:
    target = str(tree / "out" / "granted.txt")
    spec = LockdownSpec(scratch_dir=str(tree / "scratch"), plugin_dir=str(tree / "plugin"),
                        read_paths=(str(tree / "in" / "granted.txt"),), write_paths=(target,))
    rules = dict(landlock_plan(spec).paths)
    assert rules[target] == landlock.WRITE_ONLY
    assert not rules[target] & (landlock.READ_FILE | landlock.READ_DIR)
    assert str(tree / "out") not in rules and str(tree / "in") not in rules
