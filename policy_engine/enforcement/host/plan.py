"""The sandbox view a plugin would get, computed from the engine without starting anything."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...engine import Engine
from ...errors import UsageError
from .identity import IdentityMap
from .spec import lockdown_spec
from .supervisor import WorkerInit, view_inputs
from .view import ViewPlan, plan_view

__all__ = ["plugin_view"]

_UNASSIGNED = 65534


def plugin_view(engine: Engine, plugin: str, *, data_root: Path,
                identities: IdentityMap | None = None) -> ViewPlan:
    """The view of ``plugin``'s sandbox, its data directory under ``data_root``.

    The scratch directory is a fresh temporary directory at run time; the plan shows the
    data directory in its place. On a root host the uid is the plugin's assigned one (or
    the overflow uid with a note when none is assigned yet); nothing is assigned here.
    """
    table = engine.plugin_table(plugin)
    if table is None:
        known = ", ".join(f"`{name}`" for name in engine.plugins) or "none"
        raise UsageError(f"no plugin `{plugin}` in the loaded manifests (known: {known})")
    if table.plugin_dir is None:
        raise UsageError(f"plugin `{plugin}` has no directory, so it has no sandbox to show")
    data_dir = data_root.absolute() / plugin
    spec = lockdown_spec(table, data_dir)
    init = WorkerInit(plugin=plugin, plugin_dir=table.plugin_dir, entry_point="",
                      lockdown=spec, data_dir=str(data_dir))
    notes: list[str] = []
    if os.geteuid() == 0:
        identity = (identities or IdentityMap()).lookup(plugin)
        uid = identity.uid if identity is not None else _UNASSIGNED
        if identity is None:
            notes.append("the plugin's uid is assigned at its first start")
    else:
        uid = os.getuid()
    plan = plan_view(view_inputs(init, spec, python=sys.executable, uid=uid, gid=uid))
    return ViewPlan(plan.plugin, plan.mounts, (*plan.notes, *notes))
