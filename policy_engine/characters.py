"""Characters that make text read differently from what it does: bidirectional controls,
invisible characters, and non-ASCII look-alikes of ASCII letters (confusables).

The parser reports them in policies and manifest permission entries (see the README's
"Look-alike and invisible characters"); this module only knows the characters.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ascii_lookalike", "describe", "invisible_characters"]

#: Bidirectional controls (the "Trojan Source" characters) and invisible characters that
#: change what a pattern or name matches while leaving the text looking the same.
_INVISIBLE = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2066\u2067\u2068\u2069\ufeff"
)
_INVISIBLE_RE = re.compile("[" + "".join(sorted(_INVISIBLE)) + "]")

# Letters from other scripts that render like ASCII letters in common fonts (a subset of
# Unicode's confusables.txt: the Cyrillic, Greek and Latin-extension letters seen in
# practice), and the typographic quotes and dashes.
_LOOKALIKES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ѕ": "s", "і": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J",
    # Greek
    "α": "a", "ο": "o", "ν": "v", "ρ": "p", "τ": "t", "ι": "i", "κ": "k", "υ": "u",
    "Α": "A", "Β": "B", "Ε": "E", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Χ": "X", "Υ": "Y", "Ζ": "Z",
    # Latin look-alikes
    "ı": "i", "ℓ": "l", "ⅼ": "l", "ꞵ": "b",
    # Punctuation
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2212": "-",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u00ab": '"', "\u00bb": '"', "\uff02": '"',
}


def describe(char: str) -> str:
    """``U+0430 CYRILLIC SMALL LETTER A``: a character by code point and name."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed character')}"


def invisible_characters(text: str) -> list[int]:
    """Offsets of the bidirectional controls and invisible characters in ``text`` (a
    byte-order mark at offset 0 is not one)."""
    if text.isascii():
        return []
    return [found.start() for found in _INVISIBLE_RE.finditer(text)
            if not (found.start() == 0 and found.group() == "\ufeff")]


def ascii_lookalike(text: str) -> str | None:
    """``text`` with every non-ASCII character replaced by the ASCII character it looks like
    (also compatibility forms: fullwidth letters), or None when some character has none or
    the text is ASCII already."""
    if text.isascii():
        return None
    out = []
    for char in text:
        if char.isascii():
            out.append(char)
            continue
        plain = _LOOKALIKES.get(char) or unicodedata.normalize("NFKC", char)
        if not plain.isascii() or len(plain) != 1:
            return None
        out.append(plain)
    return "".join(out)
