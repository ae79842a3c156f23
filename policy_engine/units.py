"""Quantities with units: durations, sizes and percentages.

Sizes: decimal suffixes are powers of 1000 (``kB``/``KB``, ``MB``, ``GB``, ``TB``) and binary
suffixes powers of 1024 (``KiB``, ``MiB``, ``GiB``, ``TiB``); ``B`` or no suffix is bytes.
So ``500MB`` is 500,000,000 bytes and ``500MiB`` is 524,288,000 bytes.
Durations: ``ms``, ``s``, ``m``, ``h``. Percentages: ``80%`` is the fraction 0.8.
"""

from __future__ import annotations

import re

from .diagnostics import did_you_mean


class UnitError(ValueError):
    """A quantity is malformed or has an unknown unit; ``hint`` suggests the fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)


SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_QUANTITY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z%]*)\s*\Z")


def split_quantity(text: str) -> tuple[float, str]:
    """Split ``'1.5GB'`` into ``(1.5, 'GB')``."""
    match = _QUANTITY.match(str(text))
    if match is None:
        raise UnitError(f"`{text}` is not a number with a unit", "write it like `500MB`, `30s` or `80%`")
    return float(match.group(1)), match.group(2)


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``500MB``, ``1GiB`` or a bare integer of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UnitError(f"size `{text}` is negative")
        return text
    number, unit = split_quantity(str(text))
    if unit == "":
        unit = "B"
    factor = SIZE_UNITS.get(unit)
    if factor is None:
        hint = did_you_mean(unit, [u for u in SIZE_UNITS if u != "B"]) or "sizes take B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
        raise UnitError(f"unknown size unit `{unit}` in `{text}`", hint)
    return int(number * factor)


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as ``30s``, ``250ms``, ``5m`` or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise UnitError(f"duration `{text}` is negative")
        return float(text)
    number, unit = split_quantity(str(text))
    if unit == "":
        unit = "s"
    factor = DURATION_UNITS.get(unit)
    if factor is None:
        hint = did_you_mean(unit, DURATION_UNITS) or "durations take ms, s, m or h"
        raise UnitError(f"unknown duration unit `{unit}` in `{text}`", hint)
    return number * factor


def parse_percent(text: str) -> float:
    """The fraction in a percentage: ``80%`` is 0.8."""
    number, unit = split_quantity(str(text))
    if unit != "%":
        raise UnitError(f"expected a percentage like `80%`, found `{text}`", f"write `{number:g}%`")
    return number / 100.0


def format_size(size: float) -> str:
    """The shortest exact spelling of ``size`` bytes (``500MB``, ``1GiB``, ``1234B``)."""
    size = int(size)
    exact = [(size // factor, unit) for unit, factor in SIZE_UNITS.items()
             if unit != "KB" and size >= factor and size % factor == 0]
    if not exact:
        return f"{size}B"
    number, unit = min(exact)
    return f"{number}{unit}"


def human_size(size: float) -> str:
    """``size`` bytes for people, in decimal units with at most three significant digits:
    ``64 MB``, ``94.5 MB``, ``1.2 GB``, ``512 B``."""
    units = (("B", 1.0), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))
    index = max((i for i, (_, factor) in enumerate(units) if abs(size) >= factor), default=0)
    number = float(f"{size / units[index][1]:.3g}")
    if number >= 1000 and index + 1 < len(units):  # 999,999 B rounds to 1 MB, not 1000 kB
        index += 1
        number = float(f"{size / units[index][1]:.3g}")
    return f"{number:g} {units[index][0]}"


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration (``30s``, ``250ms``, ``5m``)."""
    for unit in ("h", "m", "s"):
        factor = DURATION_UNITS[unit]
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    ms = seconds * 1000
    return f"{ms:g}ms"


def format_percent(fraction: float) -> str:
    """``0.8`` as ``80%``."""
    return f"{fraction * 100:g}%"
