"""The risks a policy can accept: one registry of names for every refusal that has an opt-out.

Where the engine refuses something that an administrator may knowingly want (an unpinned
plugin run in-process, a kernel layer this machine lacks), the refusal names a risk and the
policy opts out with ``accept <risk>`` inside ``defaults { }`` or ``plugin "<name>" { }``.
Each name is one :class:`Risk` in :data:`RISKS`; code that adds a refusal adds one entry here
and tests ``name in effective.accepted_risks``. There is no blanket opt-out: every accepted
risk is named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["INEXACT_DENY", "INEXACT_GRANT", "MISSING_BUBBLEWRAP", "MISSING_CGROUP", "MISSING_DISK_LIMIT",
           "MISSING_LANDLOCK",
           "MISSING_SECCOMP", "MISSING_USER_NAMESPACE", "RISKS", "UNPINNED_INPROCESS", "Risk",
           "risk_names"]


@dataclass(frozen=True, slots=True)
class Risk:
    """A refusal a policy may opt out of: what is refused, and what accepting it gives up."""

    name: str
    refusal: str
    gives_up: str


def _registry(*risks: Risk) -> Mapping[str, Risk]:
    return MappingProxyType({risk.name: risk for risk in risks})


#: ``isolation inprocess`` for a plugin without a matching ``trust`` pin.
UNPINNED_INPROCESS = "unpinned-inprocess"
#: An untrusted plugin's worker runs without bubblewrap (no namespaces, no computed view).
MISSING_BUBBLEWRAP = "missing-bubblewrap"
#: An untrusted plugin's worker runs without its own user namespace and uid.
MISSING_USER_NAMESPACE = "missing-user-namespace"
#: An untrusted plugin's worker runs without Landlock (or without its signal and socket scoping).
MISSING_LANDLOCK = "missing-landlock"
#: An untrusted plugin's worker runs without a seccomp filter.
MISSING_SECCOMP = "missing-seccomp"
#: An untrusted plugin's memory is not counted by a cgroup nor by the documented fallback.
MISSING_CGROUP = "missing-cgroup"
#: A file deny the kernel cannot express exactly (held by the audit hook alone).
INEXACT_DENY = "inexact-deny"
#: A glob file grant too wide to reach the kernel path by path (shown as its literal root).
INEXACT_GRANT = "inexact-grant"
#: A plugin's ``limit disk`` cannot be held by the kernel on this host.
MISSING_DISK_LIMIT = "missing-disk-limit"

#: Every risk name a policy may accept, in the order they are documented.
RISKS: Mapping[str, Risk] = _registry(
    Risk(
        UNPINNED_INPROCESS,
        "a plugin without a matching `trust` pin is not loaded with `isolation inprocess`",
        "the plugin's code runs inside the host with the host's privileges, and nothing "
        "checks that it is the code that was reviewed",
    ),
    Risk(
        MISSING_BUBBLEWRAP,
        "an untrusted (unpinned) plugin is not loaded in a worker without bubblewrap",
        "the worker shares the host's mount, PID, IPC and network namespaces and sees the "
        "host's filesystem wherever Landlock lets it",
    ),
    Risk(
        MISSING_USER_NAMESPACE,
        "an untrusted (unpinned) plugin is not loaded in a worker without its own user "
        "namespace",
        "the worker has no user namespace of its own and no bubblewrap view",
    ),
    Risk(
        MISSING_LANDLOCK,
        "an untrusted (unpinned) plugin is not loaded where Landlock (ABI 6, with scoping) "
        "is not available",
        "paths and ports inside the view beyond the grants, signals and abstract sockets are "
        "held by the audit hook alone",
    ),
    Risk(
        MISSING_SECCOMP,
        "an untrusted (unpinned) plugin is not loaded where seccomp filtering is not "
        "available",
        "set-id modes, namespaces, mounts, ptrace, process creation and memory outside the "
        "limit are no longer refused by the kernel",
    ),
    Risk(
        MISSING_CGROUP,
        "an untrusted (unpinned) plugin is not loaded where neither a delegated cgroup nor "
        "the memory fallback (seccomp refusing memfd and System V shared memory, tmpfs caps "
        "counted) holds",
        "memory the plugin holds outside its processes' resident set is not counted",
    ),
    Risk(
        INEXACT_DENY,
        "a plugin is not loaded when a `file:read` deny applies to it that the kernel cannot "
        "express exactly (a glob inside a granted tree, a path that does not exist yet)",
        "that deny is held by the decision table and the worker's audit hook only; routes "
        "the hook does not see read through it",
    ),
    Risk(
        INEXACT_GRANT,
        "a plugin is not loaded when one of its glob file grants matches more existing paths "
        "than the kernel is given one by one (512 matches, or a walk of 65,536 entries, "
        "for all its glob grants together)",
        "that grant reaches the kernel as its literal directory: the other files there are "
        "held by the decision table and the worker's audit hook only",
    ),
    Risk(
        MISSING_DISK_LIMIT,
        "a plugin with a `limit disk` is not loaded where the kernel cannot hold that limit "
        "(its data directory on a size-capped filesystem image needs a root host, loop "
        "devices and `mkfs.ext4`), nor in `isolation inprocess`",
        "the plugin's data directory is not limited: it can fill the host's filesystem up "
        "to the file-size limit per file",
    ),
)


def risk_names() -> tuple[str, ...]:
    """Every known risk name, sorted."""
    return tuple(sorted(RISKS))
