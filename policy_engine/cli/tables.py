"""Tables for the ``policy-engine`` command: the library's results as rows, rendered as
aligned text or as Markdown. Nothing here decides anything; it only lays data out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..grants import PluginGrants
from ..impact import Impact
from ..settings import describe

__all__ = [
    "Table",
    "grant_tables",
    "impact_summary",
    "impact_tables",
    "render_markdown",
    "render_text",
]


@dataclass(frozen=True, slots=True)
class Table:
    """A titled table of strings; ``code`` holds the columns that are patterns or code
    (Markdown shows them in backticks)."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    code: frozenset[int] = field(default_factory=frozenset)


def render_text(tables: Sequence[Table], *, empty: str = "(none)") -> str:
    """Tables as aligned columns (two spaces apart), each under its title, separated by a
    blank line. A table without rows shows ``empty`` under its title."""
    blocks = []
    for table in tables:
        lines = [table.title] if table.title else []
        if not table.rows:
            lines.append(f"  {empty}")
        else:
            widths = [len(h) for h in table.headers]
            for row in table.rows:
                widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
            for row in (table.headers, *table.rows):
                lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _markdown_cell(text: str, code: bool) -> str:
    if not text:
        return ""
    if code:
        fence = "``" if "`" in text else "`"
        padded = f" {text} " if fence == "``" else text
        return f"{fence}{padded}{fence}".replace("|", "\\|")
    escaped = text
    for char in "\\`*_[]<>|~":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def render_markdown(tables: Sequence[Table], *, empty: str = "(none)") -> str:
    """Tables as GitHub-flavoured Markdown, each under a ``###`` heading."""
    blocks = []
    for table in tables:
        lines = [f"### {table.title[:1].upper()}{table.title[1:]}", ""] if table.title else []
        if not table.rows:
            lines.append(f"_{empty}_")
        else:
            lines.append("| " + " | ".join(table.headers) + " |")
            lines.append("|" + "|".join("---" for _ in table.headers) + "|")
            for row in table.rows:
                cells = [_markdown_cell(cell, index in table.code) for index, cell in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


# The matrix -----------------------------------------------------------------------------------


def grant_tables(matrix: Sequence[PluginGrants]) -> list[Table]:
    """``policy-engine matrix``: grants and blocking denies, what is withheld, settings."""
    grants: list[tuple[str, ...]] = []
    withheld: list[tuple[str, ...]] = []
    settings: list[tuple[str, ...]] = []
    notes: list[tuple[str, ...]] = []
    for plugin in matrix:
        for permission in plugin.permissions:
            name = permission.permission.value
            for scope in permission.granted:
                grants.append((plugin.name, name, "allow", scope.text, scope.condition or "",
                               ", ".join(scope.rules)))
            for scope in permission.blocked:
                grants.append((plugin.name, name, "deny", scope.text, scope.condition or scope.note or "",
                               ", ".join(scope.rules)))
            for item in permission.withheld:
                withheld.append((plugin.name, name, item.declared, item.reason))
        described = describe(plugin.limits, plugin.timeouts)
        settings.append((plugin.name, plugin.status, described["timeout init"], described["timeout hook"],
                         described["timeout execute"], described["memory"], described["cpu"],
                         described["file_size"], described["on violation"], described["isolation"]))
        notes.extend((plugin.name, note) for note in plugin.notes)
    tables = [
        Table("effective grants (declared ∩ allowed; deny rows block part of them)",
              ("PLUGIN", "PERMISSION", "EFFECT", "SCOPE", "CONDITION", "RULES"),
              tuple(grants), frozenset({3, 4})),
        Table("declared but not granted", ("PLUGIN", "PERMISSION", "DECLARED", "REASON"),
              tuple(withheld), frozenset({2})),
        Table("timeouts and limits",
              ("PLUGIN", "STATUS", "INIT", "HOOK", "EXECUTE", "MEMORY", "CPU", "FILE SIZE",
               "ON VIOLATION", "ISOLATION"),
              tuple(settings)),
    ]
    if notes:
        tables.append(Table("notes", ("PLUGIN", "NOTE"), tuple(notes)))
    return tables


# The impact of a policy edit ----------------------------------------------------------------


def _allowed(value: bool) -> str:
    return "allowed" if value else "denied"


def impact_tables(impact: Impact) -> list[Table]:
    """``policy-engine diff``: the tables that have rows (grant, setting and replay changes)."""
    tables: list[Table] = []
    if impact.grants:
        tables.append(Table(
            "grant changes", ("PLUGIN", "PERMISSION", "CHANGE", "SCOPE", "CONDITION", "RULES"),
            tuple((c.plugin, c.permission, c.change.value, c.scope, c.condition or "", ", ".join(c.rules))
                  for c in impact.grants),
            frozenset({3, 4}),
        ))
    if impact.settings:
        tables.append(Table(
            "setting changes", ("PLUGIN", "SETTING", "OLD", "NEW"),
            tuple((c.plugin, c.setting, c.old, c.new) for c in impact.settings),
        ))
    if impact.flips:
        tables.append(Table(
            "recorded decisions that would flip",
            ("PLUGIN", "ACTION", "RESOURCE", "WAS", "NOW", "REASON", "RULES", "COUNT"),
            tuple((f.plugin, f.action, f.resource or "", _allowed(f.was_allowed), _allowed(f.now_allowed),
                   f.reason, ", ".join(f.rules), str(f.count)) for f in impact.flips),
            frozenset({2}),
        ))
    if impact.unknown:
        tables.append(Table(
            "recorded decisions that cannot be replayed",
            ("PLUGIN", "ACTION", "RESOURCE", "WAS", "WHY", "COUNT"),
            tuple((u.plugin, u.action, u.resource or "", _allowed(u.was_allowed), u.why, str(u.count))
                  for u in impact.unknown),
            frozenset({2}),
        ))
    return tables


def impact_summary(impact: Impact) -> str:
    """One line saying how much changed."""
    counts: dict[str, int] = {}
    for change in impact.grants:
        counts[change.change.value] = counts.get(change.change.value, 0) + 1
    parts = [f"{counts[k]} {k}" for k in ("gained", "lost", "newly denied", "no longer denied") if k in counts]
    if impact.settings:
        parts.append(f"{len(impact.settings)} setting change{'s' if len(impact.settings) != 1 else ''}")
    plugins = {c.plugin for c in impact.grants} | {c.plugin for c in impact.settings}
    line = (f"{len(plugins)} plugin{'s' if len(plugins) != 1 else ''} affected: " + ", ".join(parts)
            if parts else "no change in grants, settings or pins")
    if impact.replayed is not None:
        flips = sum(f.count for f in impact.flips)
        line += f"; {flips} of {impact.replayed} recorded decision{'s' if impact.replayed != 1 else ''} would flip"
        unknown = sum(u.count for u in impact.unknown)
        if unknown:
            line += f", {unknown} unknown (logged without the context a rule reads)"
    return line
