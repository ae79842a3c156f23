"""Plugin code against its manifest, from the static code scan.

:func:`~policy_engine.enforcement.host.scan.scan_plugin` says what the code appears to do; this
module compares that with what the manifest declares (``PL401`` an undeclared capability,
``PL405`` a declared permission the code never uses) and turns the scan's findings about
hiding and native code into lint findings (``PL402``-``PL404``, ``PL406``, ``PL407``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import codes
from ..diagnostics import Diagnostic, Span
from ..enforcement.host.scan import CodeFinding, implied_permissions, scan_plugin
from ..errors import UsageError
from ..permissions import Permission
from .findings import finding
from .manifest_checks import LoadedManifest

__all__ = ["check_code", "SCAN_CODES"]

#: Scan codes that are lint findings in themselves, and their lint codes.
SCAN_CODES: dict[str, str] = {
    "SC000": codes.UNSCANNABLE_CODE,
    "SC001": codes.UNSCANNABLE_CODE,
    "SC002": codes.UNSCANNABLE_CODE,
    "SC003": codes.UNSCANNABLE_CODE,
    "SC401": codes.NATIVE_CODE,
    "SC402": codes.NATIVE_CODE,
    "SC403": codes.NATIVE_CODE,
    "SC501": codes.OBFUSCATED_IMPORT,
    "SC502": codes.DYNAMIC_CODE,
    "SC503": codes.COMPUTED_ATTRIBUTE,
}

# Permissions plugin code exercises itself, so the scan can tell whether it uses them.
# The others (hooks, configuration, the database) go through host capabilities.
_SEEN_BY_SCAN = frozenset({
    Permission.FILE_READ, Permission.FILE_WRITE, Permission.FILE_DELETE,
    Permission.NETWORK_REQUEST, Permission.SUBPROCESS_EXECUTE,
})
# Findings after which the scan cannot tell what the code does not do.
_BLINDING = frozenset({"SC000", "SC001", "SC002", "SC003", "SC501", "SC502", "SC503"})


class _Sources:
    """Plugin files' texts, read once, for the caret under code findings."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.texts: dict[str, str | None] = {}

    def get(self, relative: str) -> str | None:
        if relative not in self.texts:
            try:
                self.texts[relative] = (self.root / relative).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError, ValueError):
                self.texts[relative] = None
        return self.texts[relative]


def check_code(manifest: LoadedManifest) -> Iterator[Diagnostic]:
    """Scan the plugin's code and compare it with its manifest."""
    root = Path(manifest.plugin_dir)
    try:
        scanned = scan_plugin(root)
    except UsageError:  # pragma: no cover - the directory was found a moment ago
        return
    sources = _Sources(root)
    yield from _scan_findings(scanned, root, sources)
    metadata = manifest.metadata
    if metadata is None:
        return  # without a valid manifest there is nothing to compare with
    declared = frozenset(p for entry in metadata.permissions for p in entry.permissions)
    seen: set[tuple[str, int, Permission]] = set()
    for item in scanned:
        permission = item.permission
        if permission is None or permission in declared:
            continue
        key = (item.file, item.line, permission)
        if key in seen:
            continue
        seen.add(key)
        yield _at(item, root, sources, codes.UNDECLARED_CAPABILITY,
                  f"{item.message}, but the manifest does not declare `{permission.value}`",
                  f"declare `{permission.value}` with the scopes the code needs in "
                  f"`{manifest.path}`, or remove the call: the engine denies it")
    if any(item.code in _BLINDING for item in scanned) or not _has_source(root):
        return
    used = implied_permissions(scanned)
    for entry in metadata.permissions:
        visible = entry.permissions & _SEEN_BY_SCAN
        if entry.permissions == {Permission.FILE_READ} and entry.scopes and all(
            s.startswith("{plugin_dir}") for s in entry.scopes
        ):
            continue  # loading the plugin reads its own directory, whatever the code does
        if visible and visible == entry.permissions and not visible & used:
            yield manifest.at(
                codes.UNUSED_PERMISSION, f"`{entry.action}` is declared but the code never uses it", entry.pointer,
                "least privilege: remove the entry, or keep it if the use is hidden from the scan",
            )


def _scan_findings(scanned: Sequence[CodeFinding], root: Path, sources: _Sources) -> Iterator[Diagnostic]:
    for item in scanned:
        code = SCAN_CODES.get(item.code)
        if code is not None:
            yield _at(item, root, sources, code, item.message, _HINTS[code])


_HINTS: dict[str, str] = {
    codes.DYNAMIC_CODE: "code built at run time escapes review and the scan: call the code directly",
    codes.OBFUSCATED_IMPORT: "import modules by their names, so that reviewers and the scan see them",
    codes.NATIVE_CODE: "native code runs beneath every python-level check: remove it",
    codes.UNSCANNABLE_CODE: "code that cannot be scanned cannot be checked against the manifest",
    codes.COMPUTED_ATTRIBUTE: "name the attribute in the code, so that reviewers and the scan see it",
}


def _at(item: CodeFinding, root: Path, sources: _Sources, code: str, message: str, hint: str) -> Diagnostic:
    path = str(root / item.file) if item.file else str(root)
    span = Span(path, item.line, item.column, item.end_line, item.end_column)
    return finding(code, message, span, hint=hint, source=sources.get(item.file) if item.file else None)


def _has_source(root: Path) -> bool:
    return any(p.suffix == ".py" and "__pycache__" not in p.parts for p in root.rglob("*.py"))
