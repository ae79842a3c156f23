"""The pre-commit hook, run the way pre-commit runs it: the hook's ``entry`` split into
words, then the user's ``args``, then the changed files that match ``files``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent.parent
HOOK = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))[0]
MANIFEST = """name: fetcher
version: 1.0.0
type: agent
entry_point: plugin:Plugin
permissions:
  - file:read {plugin_dir}/**
"""
CLEAN_CODE = '''"""A plugin that reads its own files."""


class Plugin:
    """Reads."""

    def run(self) -> str:
        """Read."""
        return "ok"
'''
UNDECLARED_CODE = '''"""A plugin that now runs a program it never declared."""

import subprocess


class Plugin:
    """Runs."""

    def run(self) -> None:
        """Run."""
        subprocess.run(["true"], check=True)
'''


def run_hook(project: Path, changed: list[str], args: tuple[str, ...] = ("policies/",)
             ) -> subprocess.CompletedProcess[str]:
    """What pre-commit does: filter by ``files``, then entry + args + file names."""
    files = [name for name in changed if re.search(HOOK["files"], name)]
    entry = shlex.split(HOOK["entry"])
    # The console script of this environment, importing this checkout's package.
    command = [str(Path(sys.executable).parent / entry[0]), *entry[1:], *args, *files]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "site.policy").write_text(
        'allow plugin "fetcher" to file:read on "{plugin_dir}/**"\n')
    plugin = tmp_path / "plugins" / "fetcher"
    (plugin / "lib").mkdir(parents=True)
    (plugin / "plugin.yaml").write_text(MANIFEST)
    (plugin / "plugin.py").write_text(CLEAN_CODE)
    (plugin / "lib" / "__init__.py").write_text('"""Helpers."""\n')
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "release.py").write_text("import subprocess\nsubprocess.run(['x'])\n")
    return tmp_path


def test_the_hook_runs_on_python_files() -> None:
    assert re.search(HOOK["files"], "plugins/fetcher/plugin.py")
    assert re.search(HOOK["files"], "policies/site.policy")
    assert re.search(HOOK["files"], "plugins/fetcher/plugin.yaml")


def test_a_clean_plugin_change_passes(project: Path) -> None:
    done = run_hook(project, ["plugins/fetcher/plugin.py", "tools/release.py"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_an_added_undeclared_subprocess_run_is_reported(project: Path) -> None:
    (project / "plugins" / "fetcher" / "plugin.py").write_text(UNDECLARED_CODE)
    done = run_hook(project, ["plugins/fetcher/plugin.py"])
    assert done.returncode == 1, done.stderr
    assert "plugins/fetcher/plugin.py:11:9: PL401 " in done.stdout
    assert "subprocess:execute" in done.stdout


def test_a_change_in_a_plugin_subpackage_finds_the_plugin(project: Path) -> None:
    (project / "plugins" / "fetcher" / "lib" / "__init__.py").write_text(UNDECLARED_CODE)
    done = run_hook(project, ["plugins/fetcher/lib/__init__.py"], args=())
    assert done.returncode == 1, done.stderr
    assert "plugins/fetcher/lib/__init__.py:11:9: PL401 " in done.stdout


def test_python_outside_any_plugin_is_skipped_by_the_hook_only(project: Path) -> None:
    done = run_hook(project, ["tools/release.py"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # Named on the command line without the hook's option it is a usage error, as before.
    direct = subprocess.run([str(Path(sys.executable).parent / "policy-lint"), "tools/release.py"],
                            cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120, check=False)
    assert direct.returncode == 2 and "tools/release.py" in direct.stderr
