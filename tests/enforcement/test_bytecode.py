"""The host's bytecode cache of this package: workers load their own modules from it
instead of compiling them on every cold start, and fall back to source when it is stale."""

from __future__ import annotations

import importlib.util
import os
import py_compile
from pathlib import Path

import pytest

from policy_engine.enforcement.host import bwrap
from policy_engine.enforcement.host.bytecode import worker_bytecode_dir
from policy_engine.enforcement.host.supervisor import _PACKAGE_DIR, WorkerInit, WorkerProcess
from policy_engine.enforcement.worker import bytecode
from policy_engine.enforcement.worker.lockdown import LockdownSpec

PLUGIN = '''
import sys


class Plugin:
    def loaders(self):
        from policy_engine.enforcement.worker.bytecode import cache_in_use
        return [cache_in_use()] + sorted({type(module.__spec__.loader).__name__
                                         for name, module in sys.modules.items()
                                         if name.startswith("policy_engine")
                                         and not name.endswith(".bytecode")})
'''


def _modes() -> list[object]:
    return [pytest.param(False, id="landlock"),
            pytest.param(True, id="bubblewrap", marks=pytest.mark.skipif(
                bool(bwrap.available()), reason=bwrap.available() or "ok"))]


@pytest.mark.integration
@pytest.mark.parametrize("sandbox", _modes())
def test_a_worker_loads_its_modules_from_the_cache(tmp_path: Path, sandbox: bool) -> None:
    cache = worker_bytecode_dir(_PACKAGE_DIR)
    if not cache:
        pytest.skip("the package's own __pycache__ serves the workers")
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "probe.py").write_text(PLUGIN)
    tmp_path.chmod(0o755)
    spec = LockdownSpec(scratch_dir=str(tmp_path / "scratch"), plugin_dir=str(tmp_path / "plugin"))
    with WorkerProcess(sandbox=sandbox) as worker:
        worker.start(WorkerInit(plugin="probe", plugin_dir=str(tmp_path / "plugin"),
                                entry_point="probe:Plugin", lockdown=spec, checker={"allow": []},
                                data_dir=str(tmp_path / "data")))
        assert worker.call("loaders", timeout=10) == [cache, "PackageLoader"]


def test_the_cache_mirrors_the_package_and_a_stale_entry_is_ignored(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    source = package / "mod.py"
    source.write_text("VALUE = 1\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    py_compile.compile(str(source), cfile=str(cache / "mod.pyc"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    code = bytecode._cached_code(str(source), str(package), str(cache))
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code, namespace)
    assert namespace["VALUE"] == 1
    source.write_text("VALUE = 22\n")  # another size: the cached entry no longer matches
    assert bytecode._cached_code(str(source), str(package), str(cache)) is None
    assert bytecode._cached_code(str(tmp_path / "elsewhere.py"), str(package), str(cache)) is None


def test_no_cache_is_made_where_the_package_cache_is_fresh(tmp_path: Path) -> None:
    from policy_engine.enforcement.host import bytecode as host_bytecode

    package = tmp_path / "pkg"
    (package / "enforcement" / "worker").mkdir(parents=True)
    main = package / "enforcement" / "worker" / "main.py"
    main.write_text("pass\n")
    made = host_bytecode.worker_bytecode_dir(str(package))
    assert made and os.path.isfile(os.path.join(made, "enforcement", "worker", "main.pyc"))
    assert os.stat(made).st_mode & 0o777 == 0o755
    py_compile.compile(str(main), cfile=importlib.util.cache_from_source(str(main)), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    host_bytecode.worker_bytecode_dir.cache_clear()
    assert host_bytecode.worker_bytecode_dir(str(package)) == ""
