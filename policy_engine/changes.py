"""The one change detector: what changed among named contents since the state last adopted.

``watch`` (a policy directory polled by :class:`~policy_engine.lifecycle.Origin`, plugin
directories when watched) and the engine's incremental reload (policy files not parsed
again, manifests not read again when their bytes are equal) all ask the same question:
which names are new, changed or gone, and what did we derive from the ones that are not.
:class:`ChangeDetector` answers it by content digest (SHA-256), so that equal content is
never mistaken for a change and different content never for "the same".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["ChangeDetector", "Changes", "content_digest", "fingerprint"]

T = TypeVar("T")

Content = str | bytes


def content_digest(content: Content) -> str:
    """The SHA-256 of ``content`` (text as UTF-8), in hex."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()


def fingerprint(contents: Mapping[str, Content]) -> str:
    """One digest of named contents, independent of their order; names and contents are
    length-prefixed, so no two different sets share it by concatenation."""
    return _fingerprint_digests({name: content_digest(c) for name, c in contents.items()})


def _fingerprint_digests(digests: Mapping[str, str]) -> str:
    total = hashlib.sha256()
    for name in sorted(digests):
        for part in (name.encode("utf-8"), digests[name].encode("ascii")):
            total.update(len(part).to_bytes(8, "big") + part)
    return total.hexdigest()


@dataclass(frozen=True, slots=True)
class Changes:
    """Names new, changed and gone since the adopted state, each sorted."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class ChangeDetector(Generic[T]):
    """Remembers, per name, the digest of its content and a value derived from it.

    :meth:`changes` compares new contents with the adopted state without changing it;
    :meth:`kept` returns the derived value of a name whose content is unchanged (a parse
    not done again); :meth:`adopt` makes a new state current, once it has been accepted.
    Not thread-safe: its owner serialises calls (the engine's write lock, the watch lock).
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, T]] = {}

    @property
    def fingerprint(self) -> str | None:
        """The :func:`fingerprint` of the adopted contents; None before anything was adopted."""
        if not self._known:
            return None
        return _fingerprint_digests({name: digest for name, (digest, _) in self._known.items()})

    def changes(self, contents: Mapping[str, Content]) -> Changes:
        """What differs between ``contents`` and the adopted state."""
        added, changed = [], []
        for name, content in contents.items():
            known = self._known.get(name)
            if known is None:
                added.append(name)
            elif known[0] != content_digest(content):
                changed.append(name)
        removed = [name for name in self._known if name not in contents]
        return Changes(tuple(sorted(added)), tuple(sorted(changed)), tuple(sorted(removed)))

    def kept(self, name: str, content: Content) -> T | None:
        """The value derived from ``name`` when its content is the adopted one, else None."""
        known = self._known.get(name)
        if known is not None and known[0] == content_digest(content):
            return known[1]
        return None

    def adopt(self, values: Mapping[str, tuple[Content, T]]) -> None:
        """Make ``{name: (content, derived value)}`` the adopted state (names not given are
        forgotten)."""
        self._known = {name: (content_digest(content), value) for name, (content, value) in values.items()}
