"""Glob file grants reach the kernel exactly: each existing match is bound and given its own
Landlock rule, with the audit hook off (``LockdownSpec(audit_hook=False)``), with and
without bubblewrap. Nothing else in the granted directory is readable, or (under
bubblewrap) even visible; a symbolic link that matches is never followed."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.enforcement.host import bwrap
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.spec import (
    expanded_grants,
    inexact_denies,
    inexact_grants,
    lockdown_spec,
)
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess, view_inputs
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.host.validation import inexact_grant_refusal
from policy_engine.enforcement.host.view import MountKind, plan_view
from policy_engine.enforcement.worker import landlock
from policy_engine.errors import PluginValidationError
from policy_engine.globs import MAX_MATCHES, expand_glob, is_expandable
from policy_engine.patterns import compile_pattern, may_match_below
from policy_engine.permissions import ResourceKind
from policy_engine.table import PluginTable

ROOT = Path(__file__).resolve().parents[2]
REFUSED = (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS)

PLUGIN = '''
import os


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

    def exists(self, path):
        return os.path.lexists(path)

    def listdir(self, path):
        try:
            return sorted(os.listdir(path))
        except OSError as error:
            return error.errno

    def walk(self):
        seen = []
        for root, dirs, files in os.walk("/"):
            if root.startswith(("/proc", "/dev", "/sys")):
                dirs[:] = []
                continue
            for name in dirs + files:
                seen.append(os.path.join(root, name))
        return seen
'''


def _path(text: str) -> Any:
    return compile_pattern(ResourceKind.PATH, text)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    plugin = tmp_path / "plugins" / "globby"
    plugin.mkdir(parents=True)
    (plugin / "globby.py").write_text(PLUGIN)
    (plugin / "plugin.yaml").write_text(
        "name: globby\nversion: 1.0.0\ntype: agent\nentry_point: globby:Plugin\n"
        f"permissions:\n  - file:read {tmp_path}/srv/**\n  - file:write {tmp_path}/srv/**\n")
    srv = tmp_path / "srv"
    (srv / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "y.csv").write_text("outside tree")
    (tmp_path / "outside.txt").write_text("outside secret")
    for name, text in (("a.csv", "a"), ("b.txt", "b"), ("sub/c.csv", "c"), ("sub/d.txt", "d"),
                       ("sub/deeper/e.csv", "e"), ("secret1.csv", "s")):
        (srv / name).write_text(text)
    (srv / "x.csv").symlink_to(tmp_path / "outside.txt")
    (srv / "link").symlink_to(tmp_path / "outside")
    tmp_path.chmod(0o755)
    for path in tmp_path.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o777 if path.is_dir() else 0o666)  # only the sandbox may say no
    return tmp_path


def _table(tree: Path, policy: str) -> PluginTable:
    (tree / "site.policy").write_text(policy.replace("<srv>", str(tree / "srv")))
    engine = Engine.load([str(ROOT / "policies"), str(tree / "site.policy")],
                         plugins=tree / "plugins", variables={"data_dir": str(tree / "data")})
    table = engine.plugin_table("globby")
    assert table is not None
    return table


def _init(tree: Path, table: PluginTable) -> WorkerInit:
    spec = lockdown_spec(table, tree / "scratch", data_dir=str(tree / "data"))
    return WorkerInit(plugin="globby", plugin_dir=str(tree / "plugins" / "globby"),
                      entry_point="globby:Plugin", lockdown=replace(spec, audit_hook=False),
                      checker={"allow": []}, data_dir=str(tree / "data"),
                      limits=ResourceLimits(memory_bytes=256 * 1024 * 1024))


def _modes() -> list[Any]:
    no_bwrap = bool(bwrap.available())
    return [pytest.param(False, id="landlock"),
            pytest.param(True, id="bubblewrap",
                         marks=pytest.mark.skipif(no_bwrap, reason=bwrap.available() or "ok"))]


Starter = Callable[[str], WorkerProcess]


@pytest.fixture(params=_modes())
def start(request: pytest.FixtureRequest, tree: Path) -> Iterator[Starter]:
    if landlock.abi_version() <= 0:
        pytest.skip("the kernel has no Landlock")
    workers: list[WorkerProcess] = []

    def starter(policy: str) -> WorkerProcess:
        (tree / "scratch").mkdir(exist_ok=True)
        (tree / "data").mkdir(exist_ok=True)
        identities = IdentityMap(tree / "identities.json", first=0x5E200000, count=1024)
        worker = WorkerProcess(sandbox=request.param, identities=identities)
        workers.append(worker)
        report = worker.start(_init(tree, _table(tree, policy))).report
        assert report.landlock_abi > 0 and not [m for m in report.missing if "landlock:" in m]
        assert worker.sandboxed is request.param
        return worker

    yield starter
    for worker in workers:
        worker.stop()


# ---------------------------------------------------------------------------- real workers


@pytest.mark.integration
def test_a_glob_grant_reaches_its_matches_and_nothing_else(start: Starter, tree: Path) -> None:
    worker = start('allow plugin "globby" to file:read on "<srv>/*.csv"\n')
    srv = tree / "srv"
    assert worker.call("read", [str(srv / "a.csv")], timeout=10) == "a"
    for path in (srv / "b.txt", srv / "sub" / "c.csv", srv / "x.csv", tree / "outside.txt"):
        assert worker.call("read", [str(path)], timeout=10) in REFUSED, path
    assert worker.call("write", [str(srv / "a.csv"), "x"], timeout=10) in REFUSED
    if worker.sandboxed:
        assert worker.call("exists", [str(srv / "b.txt")], timeout=10) is False
        assert worker.call("exists", [str(srv / "x.csv")], timeout=10) is False
    # Listing the directory is no `file:read` of it: the kernel refuses that too.
    assert worker.call("listdir", [str(srv)], timeout=10) in REFUSED
    assert (srv / "a.csv").read_text() == "a"


@pytest.mark.integration
def test_a_double_star_glob_reaches_matches_in_subdirectories(start: Starter,
                                                               tree: Path) -> None:
    worker = start('allow plugin "globby" to file:read on "<srv>/**/*.csv"\n')
    srv = tree / "srv"
    for name, text in (("a.csv", "a"), ("sub/c.csv", "c"), ("sub/deeper/e.csv", "e")):
        assert worker.call("read", [str(srv / name)], timeout=10) == text
    for path in (srv / "b.txt", srv / "sub" / "d.txt", srv / "x.csv", srv / "link" / "y.csv",
                 tree / "outside" / "y.csv", tree / "outside.txt"):
        assert worker.call("read", [str(path)], timeout=10) in REFUSED, path
    if worker.sandboxed:
        for path in (srv / "link", srv / "sub" / "d.txt", srv / "b.txt"):
            assert worker.call("exists", [str(path)], timeout=10) is False, path
        assert worker.call("exists", [str(srv / "sub" / "deeper" / "e.csv")], timeout=10)


@pytest.mark.integration
def test_a_denied_match_is_left_out(start: Starter, tree: Path) -> None:
    policy = ('allow plugin "globby" to file:read on "<srv>/*.csv"\n'
              'deny plugin "globby" to file:read on "<srv>/secret*.csv"\n')
    worker = start(policy)
    srv = tree / "srv"
    assert worker.call("read", [str(srv / "a.csv")], timeout=10) == "a"
    assert worker.call("read", [str(srv / "secret1.csv")], timeout=10) in REFUSED
    # Left out of the kernel plan, the glob deny is exact: nothing to refuse at load.
    assert inexact_denies(_table(tree, policy)) == ()


@pytest.mark.integration
def test_a_glob_write_grant_writes_existing_matches_only(start: Starter, tree: Path) -> None:
    worker = start('allow plugin "globby" to file:write on "<srv>/*.csv"\n')
    srv = tree / "srv"
    assert worker.call("write", [str(srv / "a.csv"), "+", "a"], timeout=10) == 0
    assert (srv / "a.csv").read_text() == "a+"
    assert worker.call("read", [str(srv / "a.csv")], timeout=10) in REFUSED  # write-only
    assert worker.call("write", [str(srv / "new.csv"), "x"], timeout=10) in REFUSED
    assert worker.call("write", [str(srv / "b.txt"), "x"], timeout=10) in REFUSED
    assert not (srv / "new.csv").exists() and (srv / "b.txt").read_text() == "b"


@pytest.mark.integration
@pytest.mark.skipif(bool(bwrap.available()), reason=bwrap.available() or "bwrap works")
def test_walking_the_root_finds_only_the_plan_of_a_glob_grant(tree: Path) -> None:
    table = _table(tree, 'allow plugin "globby" to file:read on "<srv>/**/*.csv"\n')
    init = _init(tree, table)
    (tree / "scratch").mkdir()
    (tree / "data").mkdir()
    identities = IdentityMap(tree / "identities.json", first=0x5E200000, count=1024)
    worker = WorkerProcess(sandbox=True, identities=identities)
    try:
        worker.start(init)
        seen = worker.call("walk", timeout=60)
    finally:
        worker.stop()
    uid = int(os.stat(tree / "data").st_uid)
    plan = plan_view(view_inputs(init, init.lockdown, python=worker._python, uid=uid, gid=uid))
    roots = [m.dest for m in plan.mounts if m.kind not in (MountKind.PROC, MountKind.DEV,
                                                           MountKind.REMOUNT_RO)]
    for path in seen:
        inside = any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots
                     if r != "/")
        ancestor = any(r.startswith(path + "/") for r in roots)
        assert inside or ancestor, f"{path} is visible but not in the plan"
    srv = str(tree / "srv")
    matches = {f"{srv}/{name}" for name in ("a.csv", "secret1.csv", "sub/c.csv",
                                            "sub/deeper/e.csv")}
    assert {m.dest for m in plan.mounts if m.dest.startswith(srv + "/")} == matches
    # The directories on the way are the sandbox's own (empty but for the matches), and
    # listing them is no `file:read` the grant gives: the walk finds nothing below.
    assert {p for p in seen if p.startswith(srv + "/")} <= matches


# ---------------------------------------------------------------------------- the bound


def test_a_glob_grant_past_the_bound_is_refused_naming_the_rule(tree: Path) -> None:
    many = tree / "srv" / "many"
    many.mkdir()
    for index in range(MAX_MATCHES + 1):
        (many / f"f{index}.csv").touch()
    table = _table(tree, 'allow plugin "globby" to file:read on "<srv>/many/*.csv"\n')
    refused = inexact_grant_refusal(table)
    assert len(refused) == 1
    assert "site.policy:1:1" in refused[0] and "`<srv>/many/*.csv`".replace(
        "<srv>", str(tree / "srv")) in refused[0]
    assert "accept inexact-grant" in refused[0] and "too many paths" in refused[0]
    with pytest.raises(PluginValidationError, match="inexact-grant"):
        lockdown_spec(table, tree / "scratch")
    # Accepted, the grant reaches the kernel as its literal directory.
    accepted = _table(tree, 'allow plugin "globby" to file:read on "<srv>/many/*.csv"\n'
                            'plugin "globby" { accept inexact-grant }\n')
    assert inexact_grants(accepted) == ()
    assert str(many) in lockdown_spec(accepted, tree / "scratch").read_paths


def test_the_walk_budget_bounds_the_expansion(tree: Path) -> None:
    expansion = expand_glob(_path(f"{tree}/srv/**/*.csv"), max_visits=3)
    assert not expansion.complete
    assert expand_glob(_path(f"{tree}/srv/**/*.csv")).complete


# ---------------------------------------------------------------------------- units


def test_expansion_matches_with_the_languages_matcher_and_never_follows_links(
        tree: Path) -> None:
    srv = f"{tree}/srv"
    expansion = expand_glob(_path(f"{srv}/**/*.csv"))
    assert expansion.complete
    assert expansion.paths == (f"{srv}/a.csv", f"{srv}/secret1.csv", f"{srv}/sub/c.csv",
                               f"{srv}/sub/deeper/e.csv")
    assert set(expansion.links) == {f"{srv}/x.csv", f"{srv}/link"}
    denied = expand_glob(_path(f"{srv}/*.csv"), lambda p: p.endswith("secret1.csv"))
    assert denied.paths == (f"{srv}/a.csv",)


def test_a_matched_directory_is_a_tree_only_under_a_trailing_double_star(tree: Path) -> None:
    srv = f"{tree}/srv"
    # `*` matches the directory `sub`, not what is inside it: the directory is not granted.
    assert expand_glob(_path(f"{srv}/s*")).paths == (f"{srv}/secret1.csv",)
    assert expand_glob(_path(f"{srv}/s*/**")).paths == (f"{srv}/secret1.csv", f"{srv}/sub")


def test_which_grants_are_expanded(tree: Path) -> None:
    assert not is_expandable(_path("/srv/data"))
    assert not is_expandable(_path("/srv/data/**"))
    assert is_expandable(_path("/srv/data/*.csv"))
    assert is_expandable(_path("/srv/**/x"))
    table = _table(tree, 'allow plugin "globby" to file:read on "<srv>/*.csv", "<srv>/sub/**"\n')
    reads = expanded_grants(table)[0].read_paths
    assert f"{tree}/srv/a.csv" in reads and f"{tree}/srv/sub" in reads
    assert f"{tree}/srv" not in reads


def test_may_match_below_follows_the_segments() -> None:
    star = _path("/srv/data/*.csv")
    assert may_match_below(star, "/srv") and may_match_below(star, "/srv/data")
    assert not may_match_below(star, "/srv/data/sub") and not may_match_below(star, "/etc")
    deep = _path("/srv/*/x/**")
    assert may_match_below(deep, "/srv/a") and may_match_below(deep, "/srv/a/x/y")
    assert not may_match_below(deep, "/srv/a/y")
    assert may_match_below(_path("/srv/**/*.csv"), "/srv/a/b/c")


@pytest.mark.integration
@pytest.mark.skipif(bool(bwrap.available()), reason=bwrap.available() or "bwrap works")
def test_a_plugin_at_the_bound_starts_under_bubblewrap(tree: Path) -> None:
    # Each match is a bind of its own: the bound keeps bubblewrap's argument list in its limit.
    many = tree / "srv" / "many"
    many.mkdir()
    for index in range(MAX_MATCHES):
        (many / f"match-{index:05d}-with-a-name-of-some-length.csv").write_text(str(index))
    (many / "other.txt").write_text("not granted")
    table = _table(tree, 'allow plugin "globby" to file:read on "<srv>/many/*.csv"\n')
    init = _init(tree, table)
    assert len(init.lockdown.read_paths) >= MAX_MATCHES
    (tree / "scratch").mkdir()
    (tree / "data").mkdir()
    worker = WorkerProcess(sandbox=True, identities=IdentityMap(
        tree / "identities.json", first=0x5E200000, count=1024))
    try:
        worker.start(init)
        last = many / f"match-{MAX_MATCHES - 1:05d}-with-a-name-of-some-length.csv"
        assert worker.call("read", [str(last)], timeout=30) == str(MAX_MATCHES - 1)
        assert worker.call("read", [str(many / "other.txt")], timeout=30) in REFUSED
    finally:
        worker.stop()


def test_one_load_walks_each_glob_grant_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from policy_engine.enforcement.host import spec as spec_module
    from policy_engine.enforcement.host.loader import PluginLoader
    from policy_engine.enforcement.host.sandbox import PluginSandbox

    (tree / "plugins" / "globby" / "globby.py").write_text(
        "from policy_engine.plugin_api import BaseAgentPlugin\n\n"
        "class Plugin(BaseAgentPlugin):\n"
        "    def run(self):\n        return None\n\n"
        "    def read(self, path):\n        with open(path) as handle:\n"
        "            return handle.read()\n")
    (tree / "site.policy").write_text(
        f'allow plugin "globby" to file:read on "{tree}/srv/*.csv"\n')
    engine = Engine.load([str(ROOT / "policies"), str(tree / "site.policy")],
                         plugins=tree / "plugins", variables={"data_dir": str(tree / "data")})
    walks: list[str] = []
    real = spec_module.expand_glob

    def counted(pattern: Any, *args: Any, **kwargs: Any) -> Any:
        walks.append(pattern.text)
        return real(pattern, *args, **kwargs)

    monkeypatch.setattr(spec_module, "expand_glob", counted)
    sandbox = PluginSandbox(engine, data_dir=tree / "data", scratch_root=tree)
    with PluginLoader(engine, sandbox) as loader:
        plugin = loader.load(tree / "plugins" / "globby")
        assert walks == [f"{tree}/srv/*.csv"]  # validation, refusals and the plan: one walk
        assert plugin.call("read", str(tree / "srv" / "a.csv")) == "a"
    table = engine.plugin_table("globby")
    assert table is not None
    spec_module.expanded_grants(table)
    spec_module.expanded_grants(table)
    assert len(walks) == 3  # outside a load each call walks afresh
