"""Preflight: which isolation layers this host offers, and the level each plugin would get.

:func:`preflight` is the library call behind ``policy-engine doctor``. Levels are named and
machine-readable: :attr:`Preflight.layers` says which layers are active, and the level is
``full`` only when every one is; otherwise it is ``without-<first missing layer>``.
An untrusted plugin (one without a matching ``trust`` pin) whose level is not ``full`` is
refused unless the policy accepts, for that plugin, the risk of each missing layer by name
(:func:`plugin_refusal`; the names are in :mod:`policy_engine.risks`).

The ``cgroup`` layer stands for "memory is counted from outside, all of it". It holds where
the worker's own cgroup (v2 or v1, under a delegated parent, see :mod:`.cgroup`) holds the
memory limit, and otherwise through the documented fallback: the worker runs under
bubblewrap (``/tmp`` and ``/dev/shm`` are size-capped tmpfs whose caps are counted in the
memory limit the sampler enforces) and seccomp refuses ``memfd_create`` and System V
``shmget``, the ways to hold memory outside the counted ones. Without a cgroup for memory
and with either of those missing, the layer is missing. The ``cgroup`` check names the
mechanism that holds each limit (memory, pids, cpu, the freeze between calls).
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...risks import (
    MISSING_BUBBLEWRAP,
    MISSING_CGROUP,
    MISSING_LANDLOCK,
    MISSING_SECCOMP,
    MISSING_USER_NAMESPACE,
)
from ...settings import Isolation
from ...table import PinStatus, PluginTable
from . import bwrap, cgroup, disk, kernel
from .spec import kernel_grants

__all__ = ["LAYERS", "RISK_FOR_LAYER", "Check", "Preflight", "PluginLevel", "accepted_risks",
           "host_layers", "isolation_level", "plugin_layers", "plugin_refusal", "preflight",
           "sandbox_refusal", "table_layers", "table_refusal", "worker_layers"]

#: Every layer, in the order the level names the first one missing.
LAYERS = ("bubblewrap", "user-namespace", "network-namespace", "landlock", "landlock-scoping",
          "seccomp", "cgroup")
#: The risk a policy accepts to run an untrusted plugin without each layer. The network
#: namespace is absent only where the policy grants network, so it has no risk.
RISK_FOR_LAYER: Mapping[str, str] = {
    "bubblewrap": MISSING_BUBBLEWRAP,
    "user-namespace": MISSING_USER_NAMESPACE,
    "landlock": MISSING_LANDLOCK,
    "landlock-scoping": MISSING_LANDLOCK,
    "seccomp": MISSING_SECCOMP,
    "cgroup": MISSING_CGROUP,
}
#: What to install or change to get each layer.
_REMEDY: Mapping[str, str] = {
    "bubblewrap": "install bubblewrap 0.8 or later (`apt-get install bubblewrap`)",
    "user-namespace": "allow user namespaces (run the host as root, or allow `userns` for "
                      "bwrap in AppArmor, `kernel.apparmor_restrict_unprivileged_userns`)",
    "landlock": "run a kernel with Landlock ABI 6 or later (Linux 6.12), enabled in `lsm=`",
    "landlock-scoping": "run a kernel with Landlock ABI 6 or later (Linux 6.12)",
    "seccomp": "install libseccomp (`apt-get install libseccomp2`) on a kernel with seccomp",
    "cgroup": f"name a delegated parent cgroup in `{cgroup.ENV}` (or give the service "
              "`Delegate=yes` and `DelegateSubgroup=`), or install bubblewrap and libseccomp "
              "so that the memory fallback holds",
}


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
    #: which mechanism holds each limit: ``memory``, ``pids``, ``cpu``, ``freeze``
    limits: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "level": self.level,
            "layers": dict(self.layers),
            "limits": dict(self.limits),
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


def accepted_risks(engine: Any, plugin: str) -> frozenset[str]:
    """The risks the policy accepts for ``plugin`` (``accept <risk>`` in its block and in
    ``defaults``)."""
    return frozenset(engine.effective(plugin).accepted_risks)


def sandbox_refusal(layers: Mapping[str, bool], accepted: frozenset[str]) -> str:
    """Why an untrusted plugin may not run with these layers, or empty: every missing layer
    whose risk is not accepted, each with what to install."""
    missing = [layer for layer, risk in RISK_FOR_LAYER.items()
               if not layers.get(layer, False) and risk not in accepted]
    if not missing:
        return ""
    risks = ", ".join(f"`accept {risk}`" for risk in dict.fromkeys(RISK_FOR_LAYER[m]
                                                                    for m in missing))
    remedies = "; ".join(dict.fromkeys(_REMEDY[m] for m in missing))
    names = ", ".join(f"`{m}`" for m in missing)
    return (f"an untrusted plugin needs full process isolation, and layer{'s' if len(missing) > 1 else ''} "
            f"{names} {'are' if len(missing) > 1 else 'is'} missing on this host; {remedies}; "
            f"or pin the plugin with a `trust` line, or add {risks} to its `plugin` block")


@functools.cache
def host_layers() -> Mapping[str, bool]:
    """The layers a worker started on this host gets (before any plugin's grants)."""
    features = kernel.detect()
    sandboxed = bwrap.bwrap_path() is not None and not bwrap.available()
    return MappingProxyType({
        "bubblewrap": sandboxed,
        "user-namespace": sandboxed,
        "network-namespace": sandboxed,
        "landlock": features.landlock_abi > 0,
        "landlock-scoping": features.scoping,
        "seccomp": features.seccomp,
        # A cgroup counts the memory, or the fallback does (see the module docstring):
        # tmpfs caps counted, memfd and System V shared memory refused.
        "cgroup": _memory_by_cgroup(cgroup.detect().mechanisms) or (
            sandboxed and features.seccomp),
    })


def _memory_by_cgroup(limits: Mapping[str, str]) -> bool:
    return limits.get("memory") in cgroup.KERNEL


def plugin_layers(engine: Any, plugin: str, layers: Mapping[str, bool] | None = None
                  ) -> dict[str, bool]:
    """The layers ``plugin``'s worker would get: the host's, less the network namespace
    where the policy grants network."""
    table = engine.plugin_table(plugin)
    if table is None:
        return dict(host_layers() if layers is None else layers)
    return table_layers(table, layers)


def table_layers(table: PluginTable, layers: Mapping[str, bool] | None = None) -> dict[str, bool]:
    """:func:`plugin_layers` for the plugin of ``table``, from that table alone."""
    own = dict(host_layers() if layers is None else layers)
    if kernel_grants(table).network:
        own["network-namespace"] = False  # network granted: the host's is shared
    return own


def worker_layers(report: Any, sandboxed: bool,
                  limits: Mapping[str, str] | None = None) -> dict[str, bool]:
    """The layers a started worker actually has, from its own isolation report and the
    mechanisms that hold its ``limits``: never more than was applied (a system call seccomp
    could not name is a missing layer)."""
    seccomp_ok = bool(report.seccomp) and not any(
        str(m).startswith("seccomp:") for m in report.missing)
    return {
        "bubblewrap": sandboxed,
        "user-namespace": sandboxed,
        "network-namespace": sandboxed,
        "landlock": report.landlock_abi > 0,
        "landlock-scoping": bool(report.scoping),
        "seccomp": seccomp_ok,
        "cgroup": _memory_by_cgroup(limits or {}) or (sandboxed and seccomp_ok),
    }


def plugin_refusal(engine: Any, plugin: str, layers: Mapping[str, bool] | None = None) -> str:
    """Why ``plugin`` may not run in a worker on this host, or empty.

    A plugin whose ``trust`` pin matches is trusted and never refused here; an in-process
    plugin is :func:`~.validation.inprocess_refusal`'s business."""
    table = engine.plugin_table(plugin)
    return "" if table is None else table_refusal(table, layers)


def table_refusal(table: PluginTable, layers: Mapping[str, bool] | None = None) -> str:
    """:func:`plugin_refusal` for the plugin of ``table``, from that table alone (the
    loader decides a load from one table, whatever a reload does meanwhile)."""
    if table.pin is PinStatus.MATCH:
        return ""
    if table.effective.limits.isolation is not Isolation.PROCESS:
        return ""
    return sandbox_refusal(table_layers(table, layers), table.effective.accepted_risks)


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


def _cgroup_check(fallback: bool, support: cgroup.CgroupSupport | None = None) -> Check:
    """The ``cgroup`` layer: memory counted from outside, by a cgroup or the fallback; the
    detail names the mechanism of each limit and what this host could use."""
    support = support if support is not None else cgroup.detect()
    held = support.mechanisms
    parts = [cgroup.describe(support)]
    if _memory_by_cgroup(held):
        parts.append("memory counted by the kernel, memfd and shared memory included")
    elif fallback:
        parts.append("memory fallback holds: resident memory sampled from outside, tmpfs caps "
                     "counted in the limit, memfd_create and shmget refused by seccomp")
    else:
        parts.append("memory fallback does not hold (it needs bubblewrap and seccomp): memory "
                     "in memfd or shared memory is not counted")
    if not support.active:
        usable = cgroup.writable_hierarchies()
        if usable:
            parts.append(f"writable here: {', '.join(usable)}; set `{cgroup.ENV}` to a parent "
                         "cgroup path (such as `/policy-engine`) to use them")
        else:
            parts.append("no writable cgroup hierarchy")
    ok = fallback or _memory_by_cgroup(held)
    return Check("cgroup", ok, "; ".join(parts))


def _kernel_records_check() -> Check:
    """Whether workers can hand the host a seccomp listener (what the kernel refused)."""
    from . import syscalls

    why = syscalls.unavailable()
    if why:
        return Check("kernel-records", False, f"{why}: denials that bypass the worker's hook "
                                              "are refused by the kernel but not recorded")
    return Check("kernel-records", True, "seccomp user notification: the host sees each "
                                         "worker's opens and program starts and records "
                                         "what it refuses (source `kernel`)")


#: Landlock's first ABI with audit records (Linux 6.15).
_LANDLOCK_AUDIT_ABI = 7
_AUDIT_GET = 1000
_NETLINK_AUDIT = 9


def _audit_enabled() -> bool | None:
    """The audit subsystem's ``enabled`` flag, or None when it cannot be asked."""
    import socket
    import struct

    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_AUDIT) as sock:
            sock.settimeout(1.0)
            sock.send(struct.pack("=LHHLL", 16, _AUDIT_GET, 1, 1, 0))  # NLM_F_REQUEST
            for _ in range(4):
                data = sock.recv(8192)
                length, kind = struct.unpack("=LH", data[:6])
                if kind == _AUDIT_GET and len(data) >= 24:
                    return bool(struct.unpack("=L", data[20:24])[0])
    except (OSError, struct.error):
        return None
    return None


def _landlock_audit_check(abi: int) -> Check:
    """Landlock's own audit records: named so nobody assumes they are read."""
    unread = ("policy_engine does not read them: a Landlock refusal the seccomp listener "
              "does not see (metadata, mkdir, unlink, rename, links, TCP ports) is refused "
              "without a record")
    if abi < _LANDLOCK_AUDIT_ABI:
        return Check("landlock-audit", False, f"Landlock ABI {abi} has no audit records "
                                              f"(ABI {_LANDLOCK_AUDIT_ABI}, Linux 6.15); {unread}")
    enabled = _audit_enabled()
    state = {None: "the audit subsystem cannot be reached from here",
             False: "the audit subsystem is disabled", True: "the audit subsystem is enabled"}
    return Check("landlock-audit", False, f"Landlock ABI {abi} logs denials to the audit "
                                          f"subsystem; {state[enabled]}; {unread}")
def _disk_check() -> Check:
    """``limit disk``: how this host holds it (not a layer: only plugins with one need it)."""
    why = disk.available()
    if why:
        return Check("disk-limit", False, why)
    return Check("disk-limit", True, "data directory on a loop-mounted ext4 image of the "
                                     "limit's size and file count (ENOSPC)")


def preflight(engine: Any = None) -> Preflight:
    """Probe this host; with ``engine``, the level each of its plugins would get."""
    features = kernel.detect()
    layers = dict(host_layers())
    checks = (
        _bwrap_check(),
        _userns_check(),
        _cgroup_check(_fallback_holds(features)),
        Check("landlock", features.landlock_abi > 0, f"ABI {features.landlock_abi}"),
        Check("seccomp", features.seccomp, "libseccomp and kernel filtering"
              if features.seccomp else "libseccomp or kernel support missing"),
        _kernel_records_check(),
        _landlock_audit_check(features.landlock_abi),
        _disk_check(),
    )
    plugins: list[PluginLevel] = []
    if engine is not None:
        for name in _names(engine.plugins):
            own = plugin_layers(engine, name, layers)
            refusals = [plugin_refusal(engine, name, layers), disk.disk_limit_refusal(engine.effective(name), name)]
            plugins.append(PluginLevel(name, isolation_level(own), own,
                                       "; ".join(r for r in refusals if r)))
    return Preflight(checks, layers, isolation_level(layers), tuple(plugins),
                     MappingProxyType(dict(cgroup.detect().mechanisms)))


def _fallback_holds(features: Any) -> bool:
    return bwrap.bwrap_path() is not None and not bwrap.available() and bool(features.seccomp)


def _names(plugins: Sequence[str]) -> list[str]:
    return sorted(plugins)
