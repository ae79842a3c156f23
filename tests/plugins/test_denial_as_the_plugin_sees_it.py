"""A denied ``open()`` raises the same error whichever path the hook took, in both modes.

The worker's hook raises a copy of an error built once per remembered answer, from the hook
itself (``worker/audit.py``, ``worker/checker.py``); the in-process guard asks the host's
engine. Plugin code, in a real worker and in-process, catches the denial of one path three
times (the first answer computed, the later ones remembered) and describes what it can read
of each: type, errno, strerror, filename, args, ``str``, ``repr``, the decision and the
traceback. Every description equals the one of an error built the slow way, with
``__init__`` from the same decision (what the hook raised before the fast path), and the
traceback starts at the plugin's own ``open()`` call.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.enforcement.host.loader import PluginLoader
from policy_engine.enforcement.host.sandbox import PluginSandbox

pytestmark = pytest.mark.integration

MANIFEST = """\
name: opener
version: 0.1.0
type: workflow
entry_point: opener:Opener
permissions:
  - file:read {tree}/**
"""
CODE = '''\
import traceback

from policy_engine import BaseWorkflowPlugin


def describe(error):
    decision = error.decision
    return {
        "type": type(error).__module__ + "." + type(error).__qualname__,
        "bases": [c.__name__ for c in type(error).__mro__],
        "errno": error.errno, "strerror": error.strerror, "filename": error.filename,
        "filename2": error.filename2, "args": list(error.args), "str": str(error),
        "repr": repr(error), "plugin": error.plugin,
        "decision": [type(decision).__qualname__, decision.plugin, decision.action,
                     decision.resource, decision.allowed, decision.explain()],
        "cause": repr(error.__cause__), "context": repr(error.__context__),
        "suppress_context": error.__suppress_context__,
    }


class Opener(BaseWorkflowPlugin):
    def execute(self):
        return None

    def denied(self, path, times):
        seen = []
        for _ in range(times):
            try:
                open(path).close()  # the plugin's call
            except PermissionError as error:
                frames = traceback.extract_tb(error.__traceback__)
                seen.append({"raised": describe(error),
                             "built": describe(type(error)(error.decision)),
                             "first_frame": [frames[0].name, frames[0].line],
                             "frames": len(frames)})
        return seen

    def denied_while_handling(self, path):
        try:
            raise KeyError("the plugin's own")
        except KeyError:
            try:
                open(path).close()
            except PermissionError as error:
                return describe(error)
        return None
'''
POLICY = """\
defaults {{ isolation process allow degraded }}
allow plugin * to file:read on "{tree}/**"
deny plugin * to file:read on "{tree}/secret/**"
plugin "opener" {{ isolation {isolation}{accept} }}
"""


@pytest.fixture(scope="module", params=["process", "inprocess"])
def opener(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Any, Path]]:
    tmp_path = tmp_path_factory.mktemp(request.param)
    tree, plugins, data = tmp_path / "tree", tmp_path / "plugins" / "opener", tmp_path / "data"
    for directory in (tree / "secret", plugins, data):
        directory.mkdir(parents=True)
    (tree / "secret" / "k").write_text("k")
    (tmp_path / "elsewhere.txt").write_text("not granted")
    (plugins / "plugin.yaml").write_text(MANIFEST.replace("{tree}", str(tree)))
    (plugins / "opener.py").write_text(CODE)
    accept = " accept unpinned-inprocess" if request.param == "inprocess" else " accept inexact-deny"
    (tmp_path / "site.policy").write_text(POLICY.format(tree=tree, isolation=request.param,
                                                        accept=accept))
    engine = Engine.load(tmp_path / "site.policy", plugins=tmp_path / "plugins")
    with PluginLoader(engine, PluginSandbox(engine, data_dir=data,
                                            scratch_root=tmp_path)) as loader:
        yield request.param, loader.load(plugins), tree
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("target", ["secret/k", "outside"])
def test_each_denial_is_the_error_its_decision_builds(opener: tuple[str, Any, Path],
                                                       target: str) -> None:
    mode, plugin, tree = opener
    path = str(tree / target) if target != "outside" else str(tree.parent / "elsewhere.txt")
    seen = plugin.denied(path, 4)
    assert len(seen) == 4
    first = seen[0]
    raised, built = first["raised"], first["built"]
    assert raised == built  # the fast path's error is the slow path's, field by field
    assert raised["bases"][:2] == ["PermissionDeniedError", "EnforcementError"]
    assert "PermissionError" in raised["bases"]
    assert raised["type"] == "policy_engine.errors.PermissionDeniedError"
    assert (raised["errno"], raised["strerror"], raised["filename"]) == (None, None, None)
    assert raised["args"] == [raised["str"]] == [raised["decision"][-1]]
    assert raised["decision"][1:5] == ["opener", "file:read", path, False]
    assert (raised["cause"], raised["context"], raised["suppress_context"]) == ("None", "None", False)
    if mode == "process":
        assert raised["str"] == (f"plugin `opener` may not file:read on `{path}`: "
                                 "the plugin's decision table does not allow it")
    # The traceback starts at the plugin's call, and each raise has its own (no growth).
    assert first["first_frame"] == ["denied", "open(path).close()  # the plugin's call"]
    for later in seen[1:]:  # remembered answers: the same error, a fresh traceback
        assert {**later, "frames": 0} == {**first, "frames": 0}
    # Only the guard's own frames below the plugin's differ (fewer once answers are
    # remembered), and a traceback never grows from one raise to the next.
    assert len({later["frames"] for later in seen[1:]}) == 1
    assert 2 <= seen[-1]["frames"] <= first["frames"]
    if mode == "process":
        assert seen[-1]["frames"] == 2  # the plugin's and the hook's: the remembered answer


def test_a_denial_while_handling_keeps_the_plugins_exception_as_context(
        opener: tuple[str, Any, Path]) -> None:
    _mode, plugin, tree = opener
    path = str(tree / "secret" / "k")
    for _ in range(3):
        described = plugin.denied_while_handling(path)
        assert described["context"] == "KeyError(\"the plugin's own\")"
        assert (described["cause"], described["suppress_context"]) == ("None", False)
