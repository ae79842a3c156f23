"""Where an engine's policy comes from, and keeping it current.

An :class:`Origin` is the policy source of an engine loaded from a directory, a bundle file
or an ``http(s)://`` URL of a bundle, with what verifying it needs (a keyring, the serial
state). :meth:`Origin.poll` returns a new policy set when the source changed and verified,
``None`` when nothing changed, and raises when the new version is refused.
:class:`Watcher` polls in a background thread with backoff and swaps each new version in
through :meth:`Engine.reload`.

Bundle files and URLs are read by :func:`policy_engine.policyset.read_bundle_bytes`, the
one policy-set reader (``urllib`` for URLs: a timeout, a size cap, conditional GET with
``ETag``/``If-None-Match``, and no redirect to another scheme); this module verifies them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .changes import ChangeDetector, content_digest
from .changes import fingerprint as content_fingerprint
from .errors import BundleError, PolicyEngineError, UsageError
from .policyset import FETCH_TIMEOUT, fetch, is_bundle_file, is_url, read_bundle_bytes

if TYPE_CHECKING:
    from .bundle import Bundle, Keyring

__all__ = ["FETCH_TIMEOUT", "Origin", "Status", "WatchHandle", "fetch", "is_url"]

log = logging.getLogger("policy_engine")

CACHE_NAME = "bundle.tar.gz"
SERIAL_NAME = "serial.json"


@dataclass(frozen=True, slots=True)
class Status:
    """What ``engine.status()`` reports about the policy in force and its source."""

    source: str
    revision: str | None
    serial: int | None
    key_id: str | None
    activated_at: float
    last_success: float | None
    last_error: str | None
    consecutive_failures: int
    dropped_log_events: int
    isolation: Mapping[str, str]

    @property
    def age(self) -> float:
        """Seconds since the policy in force was activated."""
        return max(0.0, time.time() - self.activated_at)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "source": self.source, "revision": self.revision, "serial": self.serial,
            "key_id": self.key_id, "age": round(self.age, 3), "activated_at": self.activated_at,
            "last_success": self.last_success, "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "dropped_log_events": self.dropped_log_events, "isolation": dict(self.isolation),
        }


class Origin:
    """A policy source and its verification settings; remembers the version in force."""

    def __init__(self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 public_key: str | os.PathLike[str] | None = None, insecure: bool = False,
                 cache_dir: str | os.PathLike[str] | None = None, timeout: float = FETCH_TIMEOUT) -> None:
        from .bundle import load_keyring

        self.paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        self.url = str(self.paths[0]) if len(self.paths) == 1 and is_url(self.paths[0]) else None
        self.keyring: Keyring | None = load_keyring(public_key) if public_key is not None else None
        if self.url is not None and self.keyring is None and not insecure:
            raise UsageError(f"a remote policy source needs a public key (`public_key=`/`--public-key`) "
                             f"unless `insecure` is set: `{self.url}`")
        self.timeout = timeout
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.etag: str | None = None
        self.revision: str | None = None
        self.serial: int | None = None
        self.key_id: str | None = None
        self.fingerprint: str | None = None
        self._candidate: str | None = None
        self._pending: tuple[Bundle, bytes | None] | None = None
        self._pending_fingerprint: str | None = None
        # The files of a directory source, by content: the change detector the engine's
        # incremental reload uses too.
        self._files: ChangeDetector[None] = ChangeDetector()
        self._pending_files: Mapping[str, str] | None = None
        self.lock = threading.Lock()
        self.activated_at = time.time()
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = 0

    @property
    def name(self) -> str:
        """The source as given."""
        return ", ".join(str(p) for p in self.paths)

    @property
    def is_bundle(self) -> bool:
        """True for a URL or a bundle file."""
        return self.url is not None or (len(self.paths) == 1 and is_bundle_file(self.paths[0]))

    def _state_file(self) -> Path | None:
        return self.cache_dir / SERIAL_NAME if self.cache_dir is not None else None

    def _verify(self, data: bytes) -> Bundle:
        from .bundle import last_serial, read_bundle

        bundle = read_bundle(data, self.keyring)
        floor = self.serial
        state = self._state_file()
        if state is not None:
            recorded = last_serial(state)
            floor = recorded if floor is None or (recorded is not None and recorded > floor) else floor
        if floor is not None and bundle.serial < floor:
            raise BundleError(f"serial {bundle.serial} is older than the last accepted serial {floor} "
                              "(rollback refused)")
        return bundle

    def _ensure_cache_dir(self) -> None:
        assert self.cache_dir is not None
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.cache_dir, 0o700)

    def _keep(self, data: bytes) -> None:
        if self.cache_dir is None:
            return
        self._ensure_cache_dir()
        tmp = self.cache_dir / f".{CACHE_NAME}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.cache_dir / CACHE_NAME)

    def _adopt(self, bundle: Bundle, data: bytes | None = None) -> dict[str, str]:
        # Called for the initial version; later ones are adopted by commit() after they built.
        self._pending = (bundle, data)
        self.commit()
        return dict(bundle.files)

    def _stage(self, bundle: Bundle, data: bytes | None) -> dict[str, str]:
        self._pending = (bundle, data)
        return dict(bundle.files)

    def discard(self) -> None:
        """Forget a staged version that failed to build."""
        self._pending = None
        self._pending_fingerprint = None
        self._pending_files = None

    def commit(self) -> None:
        """Record the staged version as the one in force: revision, serial, the cached
        bundle and the serial state file."""
        from .bundle import record_serial

        if self._pending_fingerprint is not None:
            self.fingerprint, self._pending_fingerprint = self._pending_fingerprint, None
            self._candidate = None
            if self._pending_files is not None:
                self._files.adopt({name: (text, None) for name, text in self._pending_files.items()})
                self._pending_files = None
        pending, self._pending = self._pending, None
        if pending is None:
            return
        bundle, data = pending
        self.revision, self.serial, self.key_id = bundle.revision, bundle.serial, bundle.key_id
        self.fingerprint = bundle.digest
        if data is not None:
            self._keep(data)
        state = self._state_file()
        if state is not None:
            self._ensure_cache_dir()
            record_serial(state, bundle.serial)

    def initial(self) -> dict[str, str]:
        """The policy texts to start with; a URL that cannot be fetched falls back to the
        cached bundle (verified again, serial included)."""
        from .engine import read_policy_sources

        if self.url is not None:
            try:
                data, etag = read_bundle_bytes(self.url, timeout=self.timeout)
                assert data is not None
                bundle = self._verify(data)
                self.etag = etag
                return self._adopt(bundle, data)
            except BundleError as exc:
                cached = self.cache_dir / CACHE_NAME if self.cache_dir is not None else None
                if cached is None or not cached.is_file():
                    raise
                log.warning("policy source `%s` failed (%s); starting from the cached bundle", self.url, exc)
                self.last_error = str(exc)
                data, _ = read_bundle_bytes(cached)
                assert data is not None
                return self._adopt(self._verify(data))
        if self.is_bundle:
            data, _ = read_bundle_bytes(self.paths[0])
            assert data is not None
            return self._adopt(self._verify(data))
        if self.keyring is not None:
            raise UsageError("a public key verifies bundles only: pass one bundle file or URL")
        sources = read_policy_sources(self.paths)
        self._files.adopt({name: (text, None) for name, text in sources.items()})
        self.fingerprint = self._files.fingerprint
        return sources

    def poll(self) -> dict[str, str] | None:
        """A new verified policy set, or None when the source has not (stably) changed."""
        from .engine import read_policy_sources

        if self.url is not None:
            data, etag = read_bundle_bytes(self.url, etag=self.etag, timeout=self.timeout)
            if data is None or content_digest(data) == self.fingerprint:
                self.etag = etag
                return None
            bundle = self._verify(data)
            self.etag = etag
            return self._stage(bundle, data)
        if self.is_bundle:
            data, _ = read_bundle_bytes(self.paths[0])
            assert data is not None
            if content_digest(data) == self.fingerprint:
                return None
            return self._stage(self._verify(data), None)
        sources = read_policy_sources(self.paths)
        changes = self._files.changes(sources)
        if not changes:
            self._candidate = None
            return None
        fingerprint = content_fingerprint(sources)
        # A directory is adopted only when two consecutive polls read the same content: a
        # half-written file that happens to parse must not replace (and drop) a deny.
        if fingerprint != self._candidate:
            self._candidate = fingerprint
            return None
        log.info("policy source `%s` changed: added %s, changed %s, removed %s", self.name,
                 list(changes.added), list(changes.changed), list(changes.removed))
        self._pending_fingerprint = fingerprint  # adopted by commit() once it compiled
        self._pending_files = sources
        return sources


class WatchHandle:
    """A running watch; :meth:`stop` ends it (and waits for the thread)."""

    def __init__(self, poll_once: Callable[[], bool], interval: float, max_backoff: float) -> None:
        self._poll_once = poll_once
        self.interval = interval
        self.max_backoff = max_backoff
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy_engine-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self.interval
        while not self._stopped.wait(delay):
            ok = self._poll_once()
            # Failures back off exponentially, up to max_backoff; a success resets the pace.
            delay = self.interval if ok else min(self.max_backoff, delay * 2)

    @property
    def running(self) -> bool:
        """True until :meth:`stop`."""
        return self._thread.is_alive()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop polling; returns once the thread has ended (or ``timeout`` passed)."""
        self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


def describe(exc: BaseException) -> str:
    """One line for ``status().last_error``."""
    if isinstance(exc, PolicyEngineError):
        return " ".join(str(exc).split())[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
