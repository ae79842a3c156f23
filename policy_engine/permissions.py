"""The closed set of permissions, their families and the kind of resource each one scopes."""

from __future__ import annotations

import enum

from .families import FAMILIES, ResourceKind

__all__ = ["ACTION_SPELLINGS", "ALL_PERMISSIONS", "FAMILY_KINDS", "Permission",
           "PluginPermission", "ResourceKind", "expand_action", "parse_permission"]


class Permission(str, enum.Enum):
    """Everything a plugin can be allowed to do. The value is the spelling in policies."""

    FILE_READ = "file:read"
    FILE_WRITE = "file:write"
    FILE_DELETE = "file:delete"
    NETWORK_REQUEST = "network:request"
    SUBPROCESS_EXECUTE = "subprocess:execute"
    HOOK_REGISTER = "hook:register"
    CONFIG_READ = "config:read"
    CONFIG_WRITE = "config:write"
    DATABASE_READ = "database:read"
    DATABASE_WRITE = "database:write"

    @property
    def family(self) -> str:
        """The part before the colon: ``file``, ``network``, ..."""
        return self.value.split(":", 1)[0]

    @property
    def kind(self) -> ResourceKind:
        """The kind of resource this permission is scoped to."""
        return FAMILY_KINDS[self.family]

    def __str__(self) -> str:
        return self.value


#: The seed's name for :class:`Permission`.
PluginPermission = Permission

#: Each family's resource kind, read from the registry (:mod:`policy_engine.families`).
FAMILY_KINDS: dict[str, ResourceKind] = {f.name: f.kind for f in FAMILIES}

ALL_PERMISSIONS: frozenset[Permission] = frozenset(Permission)
_BY_VALUE: dict[str, Permission] = {p.value: p for p in Permission}

#: Every spelling accepted where an action is expected, for "did you mean" hints.
ACTION_SPELLINGS: tuple[str, ...] = (
    *_BY_VALUE,
    *(f"{family}:*" for family in FAMILY_KINDS),
    "*",
)


def expand_action(text: str) -> frozenset[Permission] | None:
    """The permissions an action pattern names: ``file:read``, ``file:*`` or ``*``.

    Returns None when the pattern names nothing known.
    """
    return _EXPANSIONS.get(text)


# Every answer of `expand_action`, made once: each manifest entry keeps its set, and one
# frozenset is 216 bytes.
_EXPANSIONS: dict[str, frozenset[Permission]] = {
    "*": ALL_PERMISSIONS,
    **{p.value: frozenset((p,)) for p in Permission},
    **{f"{family}:*": frozenset(p for p in Permission if p.family == family) for family in FAMILY_KINDS},
}


def parse_permission(text: str) -> Permission | None:
    """The permission spelled ``text`` exactly, or None."""
    return _BY_VALUE.get(text)
