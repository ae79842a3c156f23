"""PermissionManager: the seed's grant / has / revoke API, backed by the engine.

The engine stays the one source of truth: ``has_permission`` is an engine decision. The
manager only narrows it: a revoked plugin is denied everything until re-granted, and a
grant may name a subset of permissions to keep active.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ...decision import Decision, Reason
from ...engine import Engine
from ...permissions import Permission, expand_action

__all__ = ["PermissionManager"]


class PermissionManager:
    """Grants, checks and revokes plugin permissions on top of an :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._revoked: set[str] = set()
        self._active: dict[str, frozenset[Permission]] = {}

    def grant_permissions(self, plugin_name: str, permissions: Iterable[str | Permission] | None = None) -> None:
        """Re-enable a plugin; with ``permissions``, only those stay active (the engine must
        still allow each request). Unknown permission names raise ValueError."""
        active: frozenset[Permission] | None = None
        if permissions is not None:
            chosen: set[Permission] = set()
            for permission in permissions:
                expanded = expand_action(str(permission.value if isinstance(permission, Permission) else permission))
                if expanded is None:
                    raise ValueError(f"unknown permission `{permission}`")
                chosen |= expanded
            active = frozenset(chosen)
        with self._lock:
            self._revoked.discard(plugin_name)
            if active is None:
                self._active.pop(plugin_name, None)
            else:
                self._active[plugin_name] = active

    def decide(self, plugin_name: str, operation: str | Permission, resource: str | None = None,
               *, source: str | None = None) -> Decision:
        """The engine's decision, denied when the plugin is revoked or the permission inactive.
        ``source`` says who saw the request, for the engine's decision log."""
        action = operation.value if isinstance(operation, Permission) else str(operation)
        with self._lock:
            revoked = plugin_name in self._revoked
            active = self._active.get(plugin_name)
        if revoked:
            return Decision(False, Reason.PLUGIN_DISABLED, plugin_name, action, resource,
                            detail="the plugin's permissions were revoked by the host")
        if active is not None and action not in {p.value for p in active}:
            return Decision(False, Reason.NOT_DECLARED, plugin_name, action, resource,
                            detail="the host did not grant this permission to the plugin")
        if source is not None:
            return self.engine.decide(plugin_name, action, resource, source=source)
        return self.engine.decide(plugin_name, action, resource)

    def has_permission(self, plugin_name: str, operation: str | Permission, resource: str | None = None) -> bool:
        """True when the plugin may do ``operation`` (on ``resource``)."""
        return self.decide(plugin_name, operation, resource).allowed

    def revoke_all_permissions(self, plugin_name: str) -> None:
        """Deny the plugin everything until :meth:`grant_permissions` is called again."""
        with self._lock:
            self._revoked.add(plugin_name)

    def is_revoked(self, plugin_name: str) -> bool:
        """Whether the plugin is revoked."""
        with self._lock:
            return plugin_name in self._revoked
