"""The audit hook's path resolution and answer cache: the same answers as realpath and the
table, cheaper (``worker/resolver.py``, ``worker/checker.py``).

Unit tests compare :class:`PathResolver` with ``os.path.realpath`` on trees full of links,
and check what it remembers and what it never does (trees the plugin can write, shared
directories, ``/proc``). The integration tests attack the assumption the cache rests on
with real workers: a plugin cannot change an entry outside its kernel write grants, and a
link it makes inside them is resolved every time.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.wire import WireEntry, WireRule, WireTable
from policy_engine.enforcement.worker import landlock
from policy_engine.enforcement.worker.audit import AuditGuard
from policy_engine.enforcement.worker.checker import make_checker
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.enforcement.worker.resolver import MAX_CACHED, PathResolver
from policy_engine.errors import PermissionDeniedError, PluginRaisedError
from policy_engine.implicit import ImplicitReads


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Directories, files, links in and out, a loop, a dangling link, a `..` link."""
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "a" / "b" / "f.txt").write_text("f")
    (root / "other" / "g.txt").write_text("g")
    (root / "a" / "to_other").symlink_to(root / "other")
    (root / "a" / "relative").symlink_to("b")
    (root / "a" / "up").symlink_to("..")
    (root / "a" / "loop").symlink_to(root / "a" / "loop")
    (root / "a" / "dangling").symlink_to(root / "missing" / "x")
    (root / "a" / "b" / "to_file").symlink_to(root / "other" / "g.txt")
    (root / "a" / ".hidden").mkdir()
    (root / "a" / "..link").symlink_to(root / "other")
    for directory in (root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]):
        directory.chmod(0o755)
    return root


def _candidates(root: Path) -> list[str]:
    names = ["a", "b", "f.txt", "to_other", "relative", "up", "loop", "dangling", "to_file",
             "other", "g.txt", "missing", ".", "..", "", ".hidden", "..link", "..."]
    rng = random.Random(12)
    paths = [str(root)]
    for _ in range(600):
        parts = [rng.choice(names) for _ in range(rng.randint(1, 5))]
        path = str(root) + "/" + "/".join(parts)
        if rng.random() < 0.1:
            path += "/"
        paths.append(path)
    return paths


@pytest.mark.parametrize("changeable", [None, ()], ids=["nothing remembered", "remembering"])
def test_the_resolver_answers_as_realpath(tree: Path, changeable: tuple[str, ...] | None) -> None:
    resolver = PathResolver(changeable)
    paths = _candidates(tree) + ["/", "//", f"/{tree}", "/proc/self/cwd", "/dev/null",
                                 str(tree) + "/a/b/f.txt/x", str(tree) + "/a//b"]
    for _ in range(2):  # the second round answers from what the first remembered
        for path in paths:
            assert resolver.resolve(path) == os.path.realpath(path), path
    assert resolver.caching is (changeable is not None)


def test_an_embedded_nul_fails_as_realpath_fails(tree: Path) -> None:
    with pytest.raises(ValueError):
        PathResolver(()).resolve(str(tree) + "/a\0b")


def _remembered_below(root: Path) -> None:
    """Skip unless the resolver may remember paths below ``root``: as an unprivileged user
    the test's directory sits in a sticky, world-writable ``/tmp`` under an entry that is not
    the directory owner's, so nothing below it is ever remembered (by design)."""
    probe = PathResolver(())
    probe.resolve(str(root / "a" / "b" / "f.txt"))
    if not probe._cache:
        pytest.skip("an ancestor of the test's directory is shared with other users: "
                    "the resolver rightly remembers nothing below it")


def test_link_free_paths_outside_the_writable_trees_are_remembered(tree: Path) -> None:
    _remembered_below(tree)
    resolver = PathResolver((str(tree / "other"),))
    inside, outside = str(tree / "a" / "b" / "f.txt"), str(tree / "other" / "g.txt")
    absent = str(tree / "a" / "b" / "not-yet")
    for path in (inside, outside, absent, str(tree / "a" / "to_other" / "g.txt"),
                 "/proc/self/status"):
        resolver.resolve(path)
    assert resolver._cache is not None
    assert set(resolver._cache) == {inside, absent}  # no link, not writable, not live


def test_a_link_made_after_the_first_open_in_a_writable_tree_is_followed(tree: Path) -> None:
    writable = tree / "other"
    resolver = PathResolver((str(writable),))
    name = writable / "later.txt"
    name.write_text("plain")
    assert resolver.resolve(str(name)) == str(name)
    name.unlink()
    name.symlink_to(tree / "a" / "b" / "f.txt")
    assert resolver.resolve(str(name)) == str(tree / "a" / "b" / "f.txt")
    # The scratch directory the guard is given counts as writable whatever the caller says.
    guard = AuditGuard(lambda a, r: None, plugin="demo", scratch_dir=str(writable),
                       implicit=ImplicitReads(()), allow_subprocess=False,
                       allow_network=False, changeable=())
    assert guard._realpath(str(name)) == str(tree / "a" / "b" / "f.txt")
    assert guard._resolver._cache is not None and str(name) not in guard._resolver._cache


def test_shared_directories_are_never_remembered(tree: Path) -> None:
    _remembered_below(tree)
    shared, drop = tree / "shared", tree / "drop"
    shared.mkdir()
    drop.mkdir()
    (shared / "f").write_text("x")
    shared.chmod(0o775)  # group-writable: another user may swap the name
    drop.chmod(0o1777)  # sticky and world-writable: anyone may create a missing name
    resolver = PathResolver(())
    for path in (shared / "f", drop / "absent", drop / "absent" / "deeper"):
        assert resolver.resolve(str(path)) == str(path)
    assert resolver._cache == {}
    (drop / "mine").mkdir()  # an existing entry of the sticky directory's owner is safe
    resolver.resolve(str(drop / "mine" / "x"))
    assert resolver._cache == {str(drop / "mine" / "x"): str(drop / "mine" / "x")}


def test_writing_everywhere_or_no_kernel_confinement_remembers_nothing(tree: Path) -> None:
    for changeable in (None, ("/",), (str(tree), "/"), ("//",), ("relative",), ("",)):
        resolver = PathResolver(changeable)
        resolver.resolve(str(tree / "a" / "b" / "f.txt"))
        assert not resolver.caching and resolver._cache is None


def test_the_cache_is_bounded(tree: Path) -> None:
    _remembered_below(tree)
    resolver = PathResolver(())
    for index in range(MAX_CACHED + 10):
        resolver.resolve(f"{tree}/a/b/missing-{index}")
    assert resolver._cache is not None and 0 < len(resolver._cache) <= MAX_CACHED
    long = f"{tree}/a/" + "x" * 600
    resolver.resolve(long)
    assert long not in resolver._cache


class Recorder:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, action: str, resource: str | None) -> None:
        self.asked.append((action, resource))


def _guard(tmp_path: Path, recorder: Recorder, changeable: tuple[str, ...] | None) -> AuditGuard:
    (tmp_path / "scratch").mkdir(exist_ok=True)
    return AuditGuard(recorder, plugin="demo", scratch_dir=str(tmp_path / "scratch"),
                      implicit=ImplicitReads(()), allow_subprocess=False,
                      allow_network=False, changeable=changeable)


@pytest.mark.parametrize("changeable", [None, ()], ids=["in-process", "worker"])
def test_dot_dot_across_a_link_goes_through_the_link(tmp_path: Path, tree: Path,
                                                     changeable: tuple[str, ...] | None) -> None:
    recorder = Recorder()
    guard = _guard(tmp_path, recorder, changeable)
    for _ in range(2):
        guard._hook("open", (str(tree / "a" / "to_other" / ".." / "a" / "b" / "f.txt"), "r",
                             os.O_RDONLY))
    # The kernel goes to `other` first, and its parent is the tree: `..` is not lexical.
    assert recorder.asked == [("file:read", str(tree / "a" / "b" / "f.txt"))] * 2
    recorder.asked.clear()
    guard._hook("open", (str(tree / "a" / "to_other" / ".." / "other" / "g.txt"), "r",
                         os.O_RDONLY))
    assert recorder.asked == [("file:read", str(tree / "other" / "g.txt"))]


@pytest.mark.parametrize("changeable", [None, ()], ids=["in-process", "worker"])
def test_relative_paths_follow_the_working_directory(tmp_path: Path, tree: Path,
                                                     changeable: tuple[str, ...] | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    guard = _guard(tmp_path, recorder, changeable)
    (tree / "a" / "g.txt").write_text("same name, other directory")
    monkeypatch.chdir(tree / "other")
    guard._hook("open", ("g.txt", "r", os.O_RDONLY))
    monkeypatch.chdir(tree / "a")
    guard._hook("open", ("g.txt", "r", os.O_RDONLY))
    guard._hook("open", (b"g.txt", "rb", os.O_RDONLY))
    monkeypatch.chdir(tree / "a" / "to_other")  # through a link: the kernel's cwd is `other`
    guard._hook("open", ("g.txt", "r", os.O_RDONLY))
    assert recorder.asked == [("file:read", str(tree / "other" / "g.txt")),
                              ("file:read", str(tree / "a" / "g.txt")),
                              ("file:read", str(tree / "a" / "g.txt")),
                              ("file:read", str(tree / "other" / "g.txt"))]


@pytest.mark.parametrize("changeable", [None, ()], ids=["in-process", "worker"])
def test_directory_descriptors_resolve_where_they_point(tmp_path: Path, tree: Path,
                                                        changeable: tuple[str, ...] | None) -> None:
    recorder = Recorder()
    guard = _guard(tmp_path, recorder, changeable)
    guard._hook("open", (str(tree / "a" / "b" / "f.txt"), "r", os.O_RDONLY))  # remembered
    fd = os.open(tree / "a" / "to_other", os.O_RDONLY | os.O_DIRECTORY)
    try:
        guard._hook("os.remove", ("g.txt", fd))
        guard._hook("os.symlink", ("/etc/passwd", "new", fd))
        guard._hook("os.rename", ("g.txt", "../a/b/f.txt", fd, fd))
    finally:
        os.close(fd)
    assert recorder.asked[1:] == [
        ("file:delete", str(tree / "other" / "g.txt")),
        ("file:write", str(tree / "other" / "new")),
        ("file:delete", str(tree / "other" / "g.txt")),
        ("file:write", str(tree / "a" / "b" / "f.txt")),
    ]


def test_the_checkers_cache_answers_as_the_table() -> None:
    rules = (WireRule("p:1:1", ("/srv/**",)),)
    denies = (WireRule("p:2:1", ("/srv/secret/**",)),)
    entries = (WireEntry("file:read", True, None, rules, denies),)
    data = {"table": WireTable("demo", "/plugins/demo", True, True, entries).encode(),
            "audit": False}
    cached, fresh = make_checker(data), make_checker(data)
    rng = random.Random(3)
    resources = ["/srv/a", "/srv/secret/k", "/etc/passwd", "/plugins/demo/m.py", None,
                 "/srv/../etc/x", "relative"]

    def answer(check: Callable[[str, str | None], None], action: str,
               resource: str | None) -> bool:
        try:
            check(action, resource)
        except PermissionDeniedError as error:
            assert (error.decision.action, error.decision.resource) == (action, resource)
            return False
        return True

    for _ in range(400):
        action = rng.choice(["file:read", "file:write", "nonsense"])
        resource = rng.choice(resources)
        fresh_answer = answer(make_checker(data), action, resource)  # a table built anew
        assert answer(cached, action, resource) == fresh_answer == answer(fresh, action, resource)


def test_the_checkers_cache_still_reports_each_decision_in_audit_mode() -> None:
    entries = (WireEntry("file:read", True, None, (WireRule("p:1:1", ("/srv/**",)),), ()),)
    data = {"table": WireTable("demo", "/plugins/demo", True, True, entries).encode(),
            "audit": True}
    seen: list[tuple[str, str | None, bool]] = []
    check = make_checker(data, on_audit=lambda a, r, allowed: seen.append((a, r, allowed)))
    for _ in range(3):
        check("file:read", "/srv/a")
        check("file:read", "/etc/passwd")
    assert seen == [("file:read", "/srv/a", True), ("file:read", "/etc/passwd", False)] * 3


# -- real workers --------------------------------------------------------------------------------

PLUGIN = '''
import os


class Plugin:
    def read(self, path):
        with open(path) as handle:
            return handle.read()

    def link(self, target, name):
        try:
            if os.path.lexists(name):
                os.remove(name)
            os.symlink(target, name)
        except PermissionError as error:
            return type(error).__name__ if hasattr(error, "decision") else error.errno
        except OSError as error:
            return error.errno
        return 0

    def read_in(self, directory, name):
        os.chdir(directory)
        with open(name) as handle:
            return handle.read()
'''

Starter = Callable[..., WorkerProcess]


@pytest.fixture
def world(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    for name in ("plugin", "granted", "data", "secret", "scratch"):
        (tmp_path / name).mkdir(mode=0o755)
    (tmp_path / "plugin" / "linker.py").write_text(PLUGIN)
    (tmp_path / "plugin" / "public.txt").write_text("not code, not granted")
    (tmp_path / "granted" / "public.txt").write_text("public")
    (tmp_path / "data" / "notes.txt").write_text("notes")
    (tmp_path / "secret" / "public.txt").write_text("the host's secret")
    (tmp_path / "data").chmod(0o777)  # the worker may run under a uid of its own
    (tmp_path / "data" / "notes.txt").chmod(0o666)
    return tmp_path


@pytest.fixture
def start(world: Path) -> Iterator[Starter]:
    workers: list[WorkerProcess] = []

    def starter(*, audit_hook: bool = True) -> WorkerProcess:
        granted, data = str(world / "granted"), str(world / "data")
        allows = {"file:read": (f"{granted}/**", f"{data}/**"),
                  "file:write": (f"{data}/**",), "file:delete": (f"{data}/**",)}
        table = WireTable("linker", str(world / "plugin"), True, True, tuple(
            WireEntry(permission, True, None, (WireRule("t.policy:1:1", patterns),), ())
            for permission, patterns in allows.items()))
        spec = LockdownSpec(scratch_dir=str(world / "scratch"), plugin_dir=str(world / "plugin"),
                            read_paths=(granted, data), write_paths=(data,),
                            audit_hook=audit_hook)
        worker = WorkerProcess()
        workers.append(worker)
        worker.start(WorkerInit(plugin="linker", plugin_dir=str(world / "plugin"),
                                entry_point="linker:Plugin", lockdown=spec,
                                checker={"table": table.encode(), "audit": False},
                                data_dir=data,
                                limits=ResourceLimits(memory_bytes=256 * 1024 * 1024)))
        return worker

    yield starter
    for worker in workers:
        worker.stop()


landlocked = pytest.mark.skipif(landlock.abi_version() <= 0, reason="the kernel has no Landlock")


@pytest.mark.integration
@landlocked
def test_a_link_the_plugin_makes_after_reading_the_name_is_followed(start: Starter,
                                                                   world: Path) -> None:
    worker = start()
    notes = str(world / "data" / "notes.txt")
    for _ in range(3):  # whatever could be remembered of the name is
        assert worker.call("read", [notes], timeout=10) == "notes"
    secret = world / "secret" / "public.txt"
    # Landlock gives no right to make links, not even in the data directory, so whoever
    # swaps the name for a link there (the host here) swaps it in a tree the plugin writes.
    assert worker.call("link", [str(secret), notes], timeout=10) in (0, errno.EACCES)
    if not os.path.islink(notes):
        if os.path.lexists(notes):
            os.remove(notes)
        os.symlink(secret, notes)
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("read", [notes], timeout=10)
    assert caught.value.decision.resource == str(world / "secret" / "public.txt")


@pytest.mark.integration
@landlocked
def test_relative_reads_follow_the_plugins_working_directory(start: Starter,
                                                             world: Path) -> None:
    worker = start()
    assert worker.call("read_in", [str(world / "granted"), "public.txt"], timeout=10) == "public"
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("read_in", [str(world / "plugin"), "public.txt"], timeout=10)
    assert caught.value.decision.resource == str(world / "plugin" / "public.txt")
    assert worker.call("read_in", [str(world / "granted"), "public.txt"], timeout=10) == "public"


@pytest.mark.integration
@landlocked
@pytest.mark.parametrize("audit_hook", [True, False], ids=["hook", "kernel alone"])
def test_no_link_can_be_planted_outside_the_write_grants(start: Starter, world: Path,
                                                         audit_hook: bool) -> None:
    """What the cache rests on: outside its kernel write grants a plugin changes no entry."""
    worker = start(audit_hook=audit_hook)
    public = str(world / "granted" / "public.txt")
    assert worker.call("read", [public], timeout=10) == "public"
    secret = str(world / "secret" / "public.txt")
    refused: Any = worker.call("link", [secret, public], timeout=10)
    assert refused in ("PermissionDeniedError", errno.EACCES, errno.EPERM, errno.EROFS)
    planted = worker.call("link", [secret, str(world / "granted" / "new.txt")], timeout=10)
    assert planted in ("PermissionDeniedError", errno.EACCES, errno.EPERM, errno.EROFS)
    assert not (world / "granted" / "new.txt").is_symlink()
    assert not os.path.islink(public)
    assert worker.call("read", [public], timeout=10) == "public"
    with pytest.raises((PermissionDeniedError, PluginRaisedError)):
        worker.call("read", [secret], timeout=10)


@pytest.mark.parametrize("mode", ["r", "rb", "rt", "br", "tr", "r+", "w", "a", "x", "wb", None])
@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_RDONLY | os.O_CLOEXEC, os.O_WRONLY,
                                   os.O_RDWR, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                   os.O_APPEND])
def test_the_plain_read_shortcut_asks_as_the_general_path(tmp_path: Path, tree: Path,
                                                          mode: str | None, flags: int) -> None:
    """A str path takes the shortcut where it can; the same path as bytes never does."""
    (tmp_path / "runtime").mkdir()
    for path in (tree / "a" / "b" / "f.txt", tree / "a" / "to_other" / "g.txt",
                 tmp_path / "scratch" / "s.txt", tmp_path / "runtime" / "lib.py"):
        asked: list[list[tuple[str, str | None]]] = []
        for given in (str(path), os.fsencode(path)):
            recorder = Recorder()
            guard = AuditGuard(recorder, plugin="demo", scratch_dir=str(tmp_path / "scratch"),
                               implicit=ImplicitReads((str(tmp_path / "runtime"),)),
                               allow_subprocess=False, allow_network=False, changeable=())
            guard._hook("open", (given, mode, flags))
            asked.append(recorder.asked)
        assert asked[0] == asked[1], path


def test_the_worker_lists_what_landlock_lets_it_write() -> None:
    from policy_engine.enforcement.worker.main import _Worker

    spec = LockdownSpec(scratch_dir="/s", plugin_dir="/p", read_paths=("/r",),
                        write_paths=("/w",), throwaway_paths=("/t",))
    worker = _Worker(None, {"plugin": "p", "lockdown": spec.to_json(), "data_dir": "/d"},  # type: ignore[arg-type]
                     os.getpid())
    assert worker._changeable(False) is None  # no Landlock: nothing is remembered
    assert set(worker._changeable(True) or ()) == {"/s", "/w", "/t", "/d"}
