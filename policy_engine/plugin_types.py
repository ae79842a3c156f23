"""The plugin types a manifest may name: one set, shared by every reader of manifests.

The enforcement layer registers a base class per type
(:func:`~policy_engine.enforcement.base.register_plugin_type`), which adds the name here, so
that loading a manifest, ``policy-lint`` and ``decide`` refuse the same unknown types that
``run`` refuses, without importing the enforcement layer.
"""

from __future__ import annotations

__all__ = ["KNOWN_PLUGIN_TYPES", "add_plugin_type", "known_plugin_types"]

#: The type names a manifest may use.
KNOWN_PLUGIN_TYPES: set[str] = {"agent", "workflow", "hook"}


def add_plugin_type(name: str) -> None:
    """Make ``name`` a known plugin type (the enforcement layer checks the spelling)."""
    KNOWN_PLUGIN_TYPES.add(name)


def known_plugin_types() -> tuple[str, ...]:
    """The known type names, sorted."""
    return tuple(sorted(KNOWN_PLUGIN_TYPES))
