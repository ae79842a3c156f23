"""The sandbox view and bwrap's arguments, as data (no process started)."""

from __future__ import annotations

import os
from pathlib import Path

from policy_engine.enforcement.host.bwrap import SandboxOptions, bwrap_arguments
from policy_engine.enforcement.host.view import (
    Mount,
    MountKind,
    ViewInputs,
    ViewPlan,
    plan_view,
)


def _inputs(tmp_path: Path, **fields: object) -> ViewInputs:
    (tmp_path / "plugin").mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    defaults: dict[str, object] = {"plugin": "demo", "plugin_dir": str(tmp_path / "plugin"),
                                   "data_dirs": (str(tmp_path / "data"),)}
    defaults.update(fields)
    return ViewInputs(**defaults)  # type: ignore[arg-type]


def _by_dest(plan: ViewPlan) -> dict[str, Mount]:
    return {m.dest: m for m in plan.mounts}


def test_code_is_read_only_data_read_write_and_grants_as_granted(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    plan = plan_view(_inputs(tmp_path, read_paths=(str(tmp_path / "in"),),
                             write_paths=(str(tmp_path / "out"),)))
    mounts = _by_dest(plan)
    assert mounts[str(tmp_path / "plugin")].kind is MountKind.RO_BIND
    assert mounts[str(tmp_path / "data")].kind is MountKind.BIND
    assert mounts[str(tmp_path / "in")].kind is MountKind.RO_BIND
    assert mounts[str(tmp_path / "out")].kind is MountKind.BIND
    assert mounts["/"].kind is MountKind.TMPFS
    assert mounts["/etc/passwd"].data.startswith("plugin-demo:x:65534:65534:")
    assert str(tmp_path) not in mounts  # the parent is not shown, only what was asked


def test_parents_are_mounted_before_children(tmp_path: Path) -> None:
    (tmp_path / "in" / "deeper").mkdir(parents=True)
    plan = plan_view(_inputs(tmp_path, read_paths=(str(tmp_path / "in"),),
                             write_paths=(str(tmp_path / "in" / "deeper"),)))
    order = [m.dest for m in plan.mounts]
    assert order.index(str(tmp_path / "in")) < order.index(str(tmp_path / "in" / "deeper"))
    assert order[:2] == ["/", "/proc"]
    # A read grant inside a read-write bind of the same tree adds nothing.
    again = plan_view(_inputs(tmp_path, read_paths=(str(tmp_path / "in" / "deeper"),),
                              write_paths=(str(tmp_path / "in"),)))
    assert str(tmp_path / "in" / "deeper") not in [m.dest for m in again.mounts]


def test_a_symlink_on_the_way_becomes_a_link_and_its_target_is_bound(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    plan = plan_view(_inputs(tmp_path, read_paths=(str(tmp_path / "link"),)))
    mounts = _by_dest(plan)
    assert mounts[str(tmp_path / "link")].kind is MountKind.SYMLINK
    assert mounts[str(tmp_path / "real")].kind is MountKind.RO_BIND


def test_a_granted_path_swapped_for_a_symlink_in_a_writable_tree_is_left_out(
        tmp_path: Path) -> None:
    sub = tmp_path / "data" / "sub"
    (tmp_path / "data").mkdir()
    sub.mkdir()
    first = plan_view(_inputs(tmp_path, read_paths=(str(sub),)))
    assert str(sub) in _by_dest(first) or any(m.dest == str(tmp_path / "data")
                                              for m in first.mounts)
    sub.rmdir()
    os.symlink("/etc", sub)  # what a plugin that can write its data directory could do
    second = plan_view(_inputs(tmp_path, read_paths=(str(sub),)))
    assert "/etc" not in _by_dest(second)
    assert any("symbolic link inside a tree the plugin can write" in n for n in second.notes)


def test_arguments_name_every_namespace_and_carry_the_view() -> None:
    plan = ViewPlan("demo", (
        Mount(MountKind.TMPFS, "/", size=4096),
        Mount(MountKind.RO_BIND, "/srv/code", "/srv/code"),
        Mount(MountKind.BIND, "/srv/data", "/srv/data"),
        Mount(MountKind.SYMLINK, "/lib", "usr/lib"),
        Mount(MountKind.DATA, "/etc/passwd", data="x"),
    ))
    args = bwrap_arguments(plan, SandboxOptions(uid=7, gid=8, env={"A": "1"}, chdir="/srv/data"),
                           data_fds={"/etc/passwd": 9}, sources={"/srv/code": "/stage/0"})
    assert args[:5] == ["--unshare-user", "--uid", "7", "--gid", "8"]
    for flag in ("--disable-userns", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--unshare-net", "--die-with-parent", "--new-session",
                 "--clearenv"):
        assert flag in args
    joined = " ".join(args)
    assert "--cap-drop ALL" in joined
    assert "--setenv A 1" in joined
    assert "--size 4096 --perms 0755 --tmpfs /" in joined
    assert "--ro-bind /stage/0 /srv/code" in joined  # the staged source
    assert "--bind /srv/data /srv/data" in joined
    assert "--symlink usr/lib /lib" in joined
    assert "--perms 0444 --ro-bind-data 9 /etc/passwd" in joined
    assert args[-2:] == ["--chdir", "/srv/data"]


def test_a_network_grant_keeps_the_host_network(tmp_path: Path) -> None:
    args = bwrap_arguments(ViewPlan("demo", ()), SandboxOptions(uid=1, gid=1, share_net=True))
    assert "--unshare-net" not in args


def test_the_plan_renders_one_mount_a_line() -> None:
    plan = ViewPlan("demo", (Mount(MountKind.RO_BIND, "/a", "/a", "plugin code"),
                             Mount(MountKind.SYMLINK, "/lib", "usr/lib", "system libraries")),
                    ("a note",))
    assert plan.render() == ("sandbox view of plugin `demo`:\n"
                             "  ro-bind    /a  (plugin code)\n"
                             "  symlink    /lib -> usr/lib  (system libraries)\n"
                             "  note: a note\n")


def test_the_runtime_part_is_computed_once_per_host(tmp_path: Path) -> None:
    from policy_engine.enforcement.host import view

    first = plan_view(_inputs(tmp_path))
    before = view._runtime_mounts.cache_info()
    second = plan_view(_inputs(tmp_path, read_paths=(str(tmp_path / "plugin"),)))
    after = view._runtime_mounts.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    runtime = [m for m in first.mounts if m.reason == "python runtime"]
    assert runtime and runtime == [m for m in second.mounts if m.reason == "python runtime"]


def test_only_sources_the_plugin_cannot_reach_are_staged(tmp_path: Path) -> None:
    from policy_engine.enforcement.host import bwrap

    closed = tmp_path / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    (tmp_path / "open").mkdir()
    tmp_path.chmod(0o755)
    uid = os.getuid() + 12345  # neither the owner nor in the group
    plan = ViewPlan("demo", (Mount(MountKind.RO_BIND, str(closed / "inner"), str(closed / "inner")),
                             Mount(MountKind.RO_BIND, str(tmp_path / "open"), str(tmp_path / "open"))))
    reachable = all(os.stat(p).st_mode & 0o001 for p in tmp_path.parents)
    sources, steps = bwrap._staging(plan, uid, uid)
    assert str(closed / "inner") in sources
    assert (str(tmp_path / "open") in sources) is not reachable
    assert len(steps) == len(sources)
    # The owner of the closed directory reaches it: nothing of it needs staging.
    own = bwrap._staging(plan, os.getuid(), os.getgid())[0]
    assert str(closed / "inner") not in own or not reachable


def test_a_path_granted_read_and_write_is_bound_writable(tmp_path: Path) -> None:
    both = tmp_path / "both.txt"
    both.write_text("x")
    plan = plan_view(_inputs(tmp_path, read_paths=(str(both),), write_paths=(str(both),)))
    assert _by_dest(plan)[str(both)].kind is MountKind.BIND
