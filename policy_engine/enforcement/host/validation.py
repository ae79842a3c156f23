"""Checks a plugin must pass before it loads: manifest, entry point, base class, pin,
enabled, and the static code scan (whose findings are warnings, never blockers).

Nothing here imports or runs plugin code: the entry point and base class are found by
parsing the module with :mod:`ast`. The loader checks the base class again for real after
importing the class inside the sandbox.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ...digest import PluginTree, is_python_source, read_plugin_tree
from ...engine import Engine
from ...errors import ManifestError, PluginValidationError
from ...manifest import MANIFEST_NAME, PluginMetadata, parse_manifest
from ...plugin_api import PLUGIN_BASES
from ...risks import INEXACT_DENY, UNPINNED_INPROCESS
from ...settings import Isolation
from ...table import PinStatus, PluginTable
from .disk import disk_limit_refusal
from .scan import CodeFinding, scan_plugin
from .spec import inexact_denies, inexact_grants

__all__ = ["ValidationResult", "find_entry_point", "inexact_deny_refusal",
           "inexact_grant_refusal", "inprocess_refusal", "read_plugin_code", "validate_plugin"]


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The outcome of :func:`validate_plugin`; ``valid`` is False when there are errors."""

    valid: bool
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    findings: tuple[CodeFinding, ...] = ()

    def __bool__(self) -> bool:
        return self.valid


def validate_plugin(metadata: PluginMetadata, engine: Engine | None = None, *,
                    scan: bool = True, table: PluginTable | None = None) -> ValidationResult:
    """Validate one plugin (its manifest is already parsed into ``metadata``).

    ``table`` is the plugin's table when the caller holds one (the loader reads it once and
    passes it down); without it the engine's current table is used."""
    errors: list[str] = []
    warnings: list[str] = []
    if not metadata.enabled:
        errors.append("the plugin is disabled in its manifest (`enabled: false`)")
    errors.extend(find_entry_point(metadata))
    if engine is not None:
        table = table if table is not None else engine.plugin_table(metadata.name)
        if table is None:
            errors.append("the engine has no table for this plugin; register its manifest first")
        elif table.pin is PinStatus.MISMATCH:
            pin = engine.policy.pins[metadata.name]
            errors.append(
                f"the plugin's content digest `{table.digest}` does not match the policy's pin "
                f"`{pin.digest}` ({pin.span}); review the change, then update the `trust` line"
            )
        if table is not None:
            warnings.extend(table.effective.notes)
            refusal = inprocess_refusal(table)
            if refusal is not None:
                errors.append(refusal)
            errors.extend(inexact_deny_refusal(table))
            errors.extend(inexact_grant_refusal(table))
            disk_refusal = disk_limit_refusal(table.effective, metadata.name)
            if disk_refusal is not None:
                errors.append(disk_refusal)
    findings: tuple[CodeFinding, ...] = ()
    if scan and metadata.plugin_path is not None and metadata.plugin_path.is_dir():
        findings = scan_plugin(metadata.plugin_path)
        warnings.extend(str(f) for f in findings if f.severity.value in ("warning", "error"))
    return ValidationResult(not errors, tuple(errors), tuple(warnings), findings)


def inprocess_refusal(table: PluginTable) -> str | None:
    """Why the plugin of ``table`` must not run in-process, or None.

    ``isolation inprocess`` runs the plugin's code in the host with nothing between it and
    the host's privileges, so it is for reviewed code only: the plugin needs a ``trust`` pin
    that matches, or the policy must say ``accept unpinned-inprocess`` for it.
    """
    plugin = table.name
    effective = table.effective
    if effective.limits.isolation is not Isolation.INPROCESS or table.pin is PinStatus.MATCH:
        return None
    if UNPINNED_INPROCESS in effective.accepted_risks:
        return None
    return (f"`isolation inprocess` needs a matching `trust` pin for `{plugin}`, which has "
            f"{'a pin that does not match' if table.pin is PinStatus.MISMATCH else 'none'}; pin it "
            f"(`policy-engine digest` prints the line), or add `accept {UNPINNED_INPROCESS}` to its "
            f"`plugin \"{plugin}\"` block")


def inexact_deny_refusal(table: PluginTable, data_dir: str | None = None) -> list[str]:
    """One error per file deny the kernel sandbox cannot hold exactly for the plugin of
    ``table`` (in process isolation, with its own data directory ``data_dir``), unless the
    policy says ``accept inexact-deny`` for it."""
    plugin = table.name
    if table.effective.limits.isolation is not Isolation.PROCESS:
        return []
    if INEXACT_DENY in table.effective.accepted_risks:
        return []
    return [f"the kernel cannot hold this deny exactly: {why}; narrow the grant or the deny "
            f"to whole existing paths, or add `accept {INEXACT_DENY}` to its "
            f"`plugin \"{plugin}\"` block (`policy-lint`: PL313)"
            for why in inexact_denies(table, data_dir)]


def inexact_grant_refusal(table: PluginTable) -> list[str]:
    """One error per glob file grant of the plugin of ``table`` (in process isolation) that
    matches too many existing paths to reach the kernel one by one, unless the policy says
    ``accept inexact-grant`` for it (:mod:`policy_engine.globs`)."""
    if table.effective.limits.isolation is not Isolation.PROCESS:
        return []
    return list(inexact_grants(table))


def read_plugin_code(metadata: PluginMetadata, engine: Engine | None = None) -> PluginTree:
    """The one read of ``metadata``'s plugin directory that its runner loads code from.

    The digest of this read is the one that counts: when the plugin is pinned it must still
    equal the pin (a file swapped since validation is refused here, and the bytes that run
    are the bytes of this read), and its manifest must be the one the engine decided on.
    Raises :class:`PluginValidationError` naming what is wrong.
    """
    name = metadata.name
    if metadata.plugin_path is None:
        raise PluginValidationError(name, ["the manifest came without a plugin directory"])
    try:
        tree = read_plugin_tree(metadata.plugin_path,
                                keep=lambda path: is_python_source(path) or path == MANIFEST_NAME)
    except OSError as exc:  # PluginTreeError names the link, special file or cap
        raise PluginValidationError(name, [f"cannot read the plugin directory: {exc}"]) from None
    pin = engine.policy.pins.get(name) if engine is not None else None
    if pin is None:
        return _without_manifest(tree)
    if tree.digest != pin.digest:
        raise PluginValidationError(name, [
            f"the plugin's content digest `{tree.digest}` does not match the policy's pin "
            f"`{pin.digest}` ({pin.span}); its files changed since it was checked: review the "
            "change, then update the `trust` line"])
    raw = tree.files.get(MANIFEST_NAME)
    try:
        pinned = parse_manifest(raw.decode("utf-8"), file=str(metadata.plugin_path / MANIFEST_NAME),
                                plugin_path=metadata.plugin_path) if raw is not None else None
    except (UnicodeDecodeError, ManifestError):
        pinned = None
    if pinned is None or dataclasses.replace(pinned, manifest_path=metadata.manifest_path) != metadata:
        raise PluginValidationError(name, [
            f"the manifest the engine read is not the pinned `{MANIFEST_NAME}` (it changed while "
            "the plugin was loading); load the plugin again"])
    return _without_manifest(tree)


def _without_manifest(tree: PluginTree) -> PluginTree:
    files = {path: data for path, data in tree.files.items() if is_python_source(path)}
    return dataclasses.replace(tree, files=MappingProxyType(files))


def find_entry_point(metadata: PluginMetadata) -> list[str]:
    """Problems with the entry point: module file, class, base class (found statically)."""
    module_name, sep, class_name = metadata.entry_point.partition(":")
    if not sep or not module_name or not class_name:
        return [f"entry point `{metadata.entry_point}` is not of the form `module:Class`"]
    parts = module_name.split(".")
    root = metadata.plugin_path
    if root is None:
        return ["the manifest came without a plugin directory, so there is no code to load"]
    candidates = [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    module_file = next((c for c in candidates if c.is_file()), None)
    if module_file is None:
        return [f"entry point module `{module_name}` is not in the plugin directory "
                f"(expected `{candidates[0].relative_to(root)}`)"]
    try:
        tree = ast.parse(module_file.read_bytes(), filename=str(module_file))
    except (SyntaxError, ValueError, OSError) as exc:
        return [f"entry point module `{module_name}` does not parse: {exc}"]
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    if class_name not in classes:
        return [f"entry point class `{class_name}` is not defined in `{module_file.relative_to(root)}`"]
    base = PLUGIN_BASES.get(metadata.type)
    if base is None:
        return [f"plugin type `{metadata.type}` has no registered base class"]
    if not _derives_from(class_name, classes, {base.__name__}):
        return [f"entry point class `{class_name}` does not derive from `{base.__name__}` "
                f"(the base of `{metadata.type}` plugins)"]
    return []


def _derives_from(name: str, classes: dict[str, ast.ClassDef], targets: set[str],
                  seen: frozenset[str] = frozenset()) -> bool:
    node = classes.get(name)
    if node is None or name in seen:
        return False
    for base in node.bases:
        base_name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
        if base_name in targets or (base_name and _derives_from(base_name, classes, targets, seen | {name})):
            return True
    return False


def plugin_dir_of(path: str | Path) -> Path:
    """The plugin directory for a path to a plugin directory or its ``plugin.yaml``."""
    path = Path(path)
    return path.parent if path.name == "plugin.yaml" else path
