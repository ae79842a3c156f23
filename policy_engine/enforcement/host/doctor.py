"""Preflight: which isolation layers this host offers, and the level each plugin would get.

:func:`preflight` is the library call behind ``policy-engine doctor``. Levels are named and
machine-readable: :attr:`Preflight.layers` says which layers are active, and the level is
``full`` only when every one is; otherwise it is ``without-<first missing layer>``.
Without bubblewrap or user namespaces a worker falls back to the in-process layers
(Landlock, seccomp, rlimits); an untrusted plugin is then refused unless the policy accepts
the risk by name (:func:`sandbox_refusal`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import bwrap, kernel
from .spec import kernel_grants

__all__ = ["LAYERS", "Check", "Preflight", "PluginLevel", "accepted_risks", "isolation_level",
           "preflight", "sandbox_refusal"]

#: Every layer, in the order the level names the first one missing.
LAYERS = ("bubblewrap", "user-namespace", "network-namespace", "landlock", "landlock-scoping",
          "seccomp", "cgroup")
#: The risk a policy accepts to run a plugin without each layer.
RISK_FOR_LAYER = {"bubblewrap": "missing-bubblewrap", "user-namespace": "missing-user-namespace"}


@dataclass(frozen=True, slots=True)
class Check:
    """One probe: ``name``, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PluginLevel:
    """The level one plugin would get, and its active layers."""

    plugin: str
    level: str
    layers: Mapping[str, bool]
    refusal: str = ""  # why the plugin would be refused, when it would


@dataclass(frozen=True, slots=True)
class Preflight:
    """What :func:`preflight` found."""

    checks: tuple[Check, ...]
    layers: Mapping[str, bool]
    level: str
    plugins: tuple[PluginLevel, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "level": self.level,
            "layers": dict(self.layers),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "plugins": [{"plugin": p.plugin, "level": p.level, "layers": dict(p.layers),
                         "refusal": p.refusal} for p in self.plugins],
        }


def isolation_level(layers: Mapping[str, bool]) -> str:
    """``full`` when every layer is active, else ``without-<first missing layer>``."""
    for layer in LAYERS:
        if not layers.get(layer, False):
            return f"without-{layer}"
    return "full"


def accepted_risks(settings: object) -> frozenset[str]:
    """The risks a plugin's settings accept (``accept <risk>``); none until that construct
    exists, so every refusal below stands."""
    return frozenset()


def sandbox_refusal(layers: Mapping[str, bool], accepted: frozenset[str]) -> str:
    """Why an untrusted plugin may not run with these layers, or empty."""
    for layer, risk in RISK_FOR_LAYER.items():
        if not layers.get(layer, False) and risk not in accepted:
            return (f"layer `{layer}` is missing and the policy does not accept `{risk}`; "
                    "install bubblewrap (`apt-get install bubblewrap`) or allow user "
                    "namespaces")
    return ""


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _bwrap_check() -> Check:
    path = bwrap.bwrap_path()
    if path is None:
        return Check("bubblewrap", False, "not installed (Debian/Ubuntu: `apt-get install "
                                          "bubblewrap`)")
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return Check("bubblewrap", False, f"{path} does not run: {error}")
    return Check("bubblewrap", True, f"{path} ({version or 'unknown version'})")


def _userns_check() -> Check:
    limits = []
    for path in ("/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/unprivileged_userns_clone",
                 "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"):
        value = _read(path)
        if value is not None:
            limits.append(f"{os.path.basename(path)}={value}")
    problem = bwrap.available() if bwrap.bwrap_path() is not None else ""
    how = "created by the host (root)" if os.geteuid() == 0 else "created by bwrap"
    detail = "; ".join([how, *limits]) if not problem else "; ".join([problem, *limits])
    ok = not problem and bwrap.bwrap_path() is not None
    return Check("user-namespace", ok, detail)


def _cgroup_check() -> Check:
    mounts = _read("/proc/self/mounts") or ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "cgroup2":
            where, options = parts[1], parts[3].split(",")
            delegated = os.access(where, os.W_OK) and "ro" not in options and \
                os.path.exists(os.path.join(where, "cgroup.subtree_control"))
            if where == "/sys/fs/cgroup" and delegated:
                return Check("cgroup", False, "cgroup v2 at /sys/fs/cgroup; no delegated "
                             "cgroup configured: limits are sampled from outside")
            state = "read-only" if not delegated else "writable"
            return Check("cgroup", False, f"cgroup v2 at {where} is {state} (cgroup v1 host): "
                         "memory and CPU limits are sampled from outside")
    return Check("cgroup", False, "no cgroup v2 mount: limits are sampled from outside")


def preflight(engine: Any = None) -> Preflight:
    """Probe this host; with ``engine``, the level each of its plugins would get."""
    features = kernel.detect()
    checks = (
        _bwrap_check(),
        _userns_check(),
        _cgroup_check(),
        Check("landlock", features.landlock_abi > 0, f"ABI {features.landlock_abi}"),
        Check("seccomp", features.seccomp, "libseccomp and kernel filtering"
              if features.seccomp else "libseccomp or kernel support missing"),
    )
    by_name = {check.name: check.ok for check in checks}
    layers = {
        "bubblewrap": by_name["bubblewrap"],
        "user-namespace": by_name["user-namespace"],
        "network-namespace": by_name["bubblewrap"] and by_name["user-namespace"],
        "landlock": features.landlock_abi > 0,
        "landlock-scoping": features.scoping,
        "seccomp": features.seccomp,
        "cgroup": by_name["cgroup"],
    }
    plugins: list[PluginLevel] = []
    if engine is not None:
        for name in _names(engine.plugins):
            table = engine.plugin_table(name)
            own = dict(layers)
            if table is not None and kernel_grants(table).network:
                own["network-namespace"] = False  # network granted: the host's is shared
            refusal = sandbox_refusal(own, accepted_risks(None))
            plugins.append(PluginLevel(name, isolation_level(own), own, refusal))
    return Preflight(checks, layers, isolation_level(layers), tuple(plugins))


def _names(plugins: Sequence[str]) -> list[str]:
    return sorted(plugins)
