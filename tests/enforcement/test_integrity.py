"""Integrity attacks with real workers: what runs is the code whose bytes were digested.

The plugin's modules are compiled from one read of its directory (the read whose digest is
checked against the pin); these tests change the directory around that read and check that
no other code runs. The worker's audit hook is switched off: none of this rests on it.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import os
import py_compile
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine, PluginValidationError
from policy_engine.digest import plugin_digest, trust_line
from policy_engine.enforcement.host import loader as loader_module
from policy_engine.enforcement.host import sandbox as sandbox_module
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox
from policy_engine.errors import EnforcementError

pytestmark = pytest.mark.integration
#: A worker's exception arrives as PluginRaisedError; an in-process one as itself.
RAISED = (EnforcementError, ImportError)

POLICY = """
defaults { isolation process allow degraded }
allow plugin * to file:read on "{plugin_dir}/**", "{data_dir}/{plugin}/**"
allow plugin * to file:write, file:delete on "{data_dir}/{plugin}/**"
"""
INPROCESS = 'plugin "integ" { isolation inprocess }\n'

MANIFEST = """\
name: integ
version: 1.0.0
type: agent
entry_point: integ.plugin:Plugin
permissions:
  - file:read {plugin_dir}/**
"""
PLUGIN = """\
from policy_engine.plugin_api import BaseAgentPlugin

from integ import helper


class Plugin(BaseAgentPlugin):
    def run(self):
        return helper.VALUE

    def lazy(self):
        from integ import later
        return later.VALUE

    def extra(self):
        import integ.extra
        return integ.extra.VALUE

    def top_level(self):
        import dropped
        return dropped.VALUE

    def native(self):
        from integ import native
        return native.VALUE

    def sourceless(self):
        from integ import old
        return old.VALUE

    def boom(self):
        from integ import fail
        fail.boom()

    def cached(self):
        return getattr(helper, "__cached__", None), helper.__spec__.cached
"""
GOOD = 'VALUE = "pinned"\n'
EVIL = 'VALUE = "evil!!"\n'  # the same size as GOOD: size and mtime checks cannot tell
FAIL = 'def boom():\n    raise ValueError("the pinned line")\n'


def make_plugin(root: Path) -> Path:
    plugin = root / "plugins" / "integ"
    (plugin / "integ").mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(MANIFEST)
    (plugin / "integ" / "__init__.py").write_text("")
    (plugin / "integ" / "plugin.py").write_text(PLUGIN)
    (plugin / "integ" / "helper.py").write_text(GOOD)
    (plugin / "integ" / "later.py").write_text(GOOD)
    (plugin / "integ" / "fail.py").write_text(FAIL)
    return plugin


@pytest.fixture(autouse=True)
def no_audit_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sandbox_module.lockdown_spec

    def without_hook(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(real(*args, **kwargs), audit_hook=False)

    monkeypatch.setattr(sandbox_module, "lockdown_spec", without_hook)


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Path]:
    yield make_plugin(tmp_path)
    # In-process runs import into this process: forget them for the next test.
    for name in [n for n in sys.modules if n.split(".")[0] in ("integ", "dropped")]:
        del sys.modules[name]


def make_loader(tmp_path: Path, plugin: Path, extra_policy: str = "") -> PluginLoader:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (tmp_path / "site.policy").write_text(POLICY + extra_policy)
    engine = Engine.load(tmp_path / "site.policy", plugins=plugin.parent,
                         variables={"data_dir": str(data)})
    return PluginLoader(engine, PluginSandbox(engine, data_dir=data, scratch_root=tmp_path))


def pinned(plugin: Path, *more: str) -> str:
    return "".join(more) + trust_line("integ", plugin_digest(plugin)) + "\n"


def plant_bytecode(module: Path, source: str) -> Path:
    """Compile ``source`` into the cache file the standard importer would use for
    ``module``, as an unchecked-hash pyc: that importer runs it whatever the source says."""
    cache = Path(importlib.util.cache_from_source(str(module)))
    cache.parent.mkdir(exist_ok=True)
    decoy = module.with_name("decoy_src.py")
    decoy.write_text(source)
    py_compile.compile(str(decoy), cfile=str(cache), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    decoy.unlink()
    return cache


def plain_import(plugin: Path, module: str) -> str:
    """What an ordinary ``import`` of ``module`` from ``plugin`` gives (the attack's control)."""
    code = f"import sys; sys.path.insert(0, {str(plugin)!r}); import {module} as m; print(m.VALUE)"
    return subprocess.run([sys.executable, "-I", "-B", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(params=["process", "inprocess"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


def isolation(mode: str) -> str:
    return INPROCESS if mode == "inprocess" else ""


def test_a_file_swapped_after_pinning_is_refused(tmp_path: Path, plugin: Path, mode: str) -> None:
    policy = pinned(plugin, isolation(mode))
    (plugin / "integ" / "helper.py").write_text(EVIL)
    with make_loader(tmp_path, plugin, policy) as loader:
        with pytest.raises(PluginValidationError, match="does not match the policy's pin"):
            loader.load(plugin)


def test_a_file_swapped_between_the_check_and_the_start_never_runs(
    tmp_path: Path, plugin: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation passes on the pinned files; the swap lands before the runner reads them.
    real = PluginSandbox.validate_plugin

    def validate_then_swap(self: PluginSandbox, metadata: Any, table: Any = None) -> Any:
        result = real(self, metadata, table)
        (plugin / "integ" / "helper.py").write_text(EVIL)
        return result

    monkeypatch.setattr(PluginSandbox, "validate_plugin", validate_then_swap)
    with make_loader(tmp_path, plugin, pinned(plugin, isolation(mode))) as loader:
        with pytest.raises(PluginValidationError, match="its files changed since it was checked"):
            loader.load(plugin)


def test_a_manifest_swapped_during_the_load_is_refused(
    tmp_path: Path, plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loader reads a manifest that asks for more; the pinned one is back by the time
    # the engine digests the files, so the pin matches: the load is refused all the same,
    # never run with the swapped manifest's grants.
    policy = pinned(plugin) + 'allow plugin * to file:read on "/srv/**"\n'
    original = (plugin / "plugin.yaml").read_text()
    real = loader_module.load_manifest

    def read_then_restore(path: Any) -> Any:
        (plugin / "plugin.yaml").write_text(original + "  - file:read /srv/**\n")
        metadata = real(path)
        (plugin / "plugin.yaml").write_text(original)
        return metadata

    with make_loader(tmp_path, plugin, policy) as loader:
        monkeypatch.setattr(loader_module, "load_manifest", read_then_restore)
        with pytest.raises(PluginValidationError, match="is not the pinned `plugin.yaml`"):
            loader.load(plugin)


def test_a_module_swapped_after_load_is_imported_lazily_from_the_digested_bytes(
    tmp_path: Path, plugin: Path, mode: str
) -> None:
    with make_loader(tmp_path, plugin, pinned(plugin, isolation(mode))) as loader:
        loaded = loader.load(plugin)
        (plugin / "integ" / "later.py").write_text(EVIL)
        plant_bytecode(plugin / "integ" / "later.py", EVIL)
        assert loaded.lazy() == "pinned"
        assert loaded.run() == "pinned"


def test_planted_bytecode_never_runs(tmp_path: Path, plugin: Path, mode: str) -> None:
    # Unpinned (in a worker) or accepted unpinned (in-process): no digest check can catch it.
    extra = isolation(mode) and 'plugin "integ" { isolation inprocess accept unpinned-inprocess }\n'
    for module in ("helper", "later"):
        plant_bytecode(plugin / "integ" / f"{module}.py", EVIL)
    assert plain_import(plugin, "integ.helper") == "evil!!"  # the attack works on a plain import
    with make_loader(tmp_path, plugin, extra) as loader:
        loaded = loader.load(plugin)
        assert loaded.run() == "pinned" and loaded.lazy() == "pinned"
        cached = loaded.cached()
        assert list(cached) == [None, None]  # no bytecode path, read or written


def test_planted_bytecode_breaks_the_pin(tmp_path: Path, plugin: Path) -> None:
    policy = pinned(plugin)
    plant_bytecode(plugin / "integ" / "helper.py", EVIL)
    with make_loader(tmp_path, plugin, policy) as loader:
        with pytest.raises(PluginValidationError, match="does not match the policy's pin"):
            loader.load(plugin)


def test_a_module_dropped_in_after_load_does_not_exist(tmp_path: Path, plugin: Path, mode: str) -> None:
    with make_loader(tmp_path, plugin, pinned(plugin, isolation(mode))) as loader:
        loaded = loader.load(plugin)
        (plugin / "integ" / "extra.py").write_text(EVIL)
        (plugin / "dropped.py").write_text(EVIL)
        with pytest.raises(RAISED, match="No module named 'integ.extra'"):
            loaded.extra()
        with pytest.raises(RAISED, match="No module named 'dropped'"):
            loaded.top_level()
        assert loaded.run() == "pinned"


@pytest.mark.parametrize("where", ["integ/link.py", "data-link", "integ/helper.py"])
def test_a_symlink_in_the_plugin_directory_is_refused_naming_it(
    tmp_path: Path, plugin: Path, where: str
) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text(EVIL)
    (plugin / where).unlink(missing_ok=True)
    (plugin / where).symlink_to(outside)
    with make_loader(tmp_path, plugin) as loader:
        with pytest.raises(PluginValidationError, match="is a symbolic link") as caught:
            loader.load(plugin)
    assert str(plugin / where) in str(caught.value)


def test_a_fifo_in_the_plugin_directory_is_refused(tmp_path: Path, plugin: Path) -> None:
    os.mkfifo(plugin / "integ" / "pipe")
    with make_loader(tmp_path, plugin) as loader:
        with pytest.raises(PluginValidationError, match="is a FIFO"):
            loader.load(plugin)


def test_native_and_sourceless_modules_are_refused(tmp_path: Path, plugin: Path, mode: str) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (plugin / "integ" / f"native{suffix}").write_bytes(b"\x7fELF not really")
    source = plugin / "integ" / "old.py"
    source.write_text(EVIL)
    py_compile.compile(str(source), cfile=str(plugin / "integ" / "old.pyc"), doraise=True)
    source.unlink()
    extra = isolation(mode) and 'plugin "integ" { isolation inprocess accept unpinned-inprocess }\n'
    with make_loader(tmp_path, plugin, extra) as loader:
        loaded = loader.load(plugin)
        with pytest.raises(RAISED, match=f"native{suffix}` is not loaded"):
            loaded.native()
        with pytest.raises(RAISED, match="old.pyc` is not loaded"):
            loaded.sourceless()


def test_the_worker_writes_no_bytecode_into_the_plugin_directory(tmp_path: Path, plugin: Path) -> None:
    before = plugin_digest(plugin)
    with make_loader(tmp_path, plugin, pinned(plugin)) as loader:
        loaded = loader.load(plugin)
        assert loaded.run() == "pinned" and loaded.lazy() == "pinned"
    assert plugin_digest(plugin) == before
    assert not list(plugin.rglob("__pycache__"))


def test_a_traceback_shows_the_lines_that_ran(tmp_path: Path, plugin: Path, mode: str) -> None:
    with make_loader(tmp_path, plugin, pinned(plugin, isolation(mode))) as loader:
        loaded = loader.load(plugin)
        (plugin / "integ" / "fail.py").write_text('def boom():\n    raise ValueError("a decoy")\n')
        with pytest.raises((EnforcementError, ValueError)) as caught:
            loaded.boom()
    error = caught.value
    text = getattr(error, "remote_traceback", "") or "".join(
        traceback.format_exception(type(error), error, error.__traceback__))
    assert 'raise ValueError("the pinned line")' in text and "a decoy" not in text


def test_an_inprocess_reload_runs_the_newly_pinned_code(tmp_path: Path, plugin: Path) -> None:
    with make_loader(tmp_path, plugin, pinned(plugin, INPROCESS)) as loader:
        assert loader.load(plugin).run() == "pinned"
    (plugin / "integ" / "helper.py").write_text('VALUE = "renewed"\n')
    with make_loader(tmp_path, plugin, pinned(plugin, INPROCESS)) as loader:
        assert loader.load(plugin).run() == "renewed"  # not the module of the first load
