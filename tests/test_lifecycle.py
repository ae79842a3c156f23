"""Loading from a URL, watching a source, the cache of the last good bundle, status()."""

from __future__ import annotations

import hashlib
import http.server
import logging
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import bundle as B
from policy_engine.engine import Engine
from policy_engine.errors import BundleError, UsageError

ROOT = Path(__file__).parent.parent
PLUGINS = ROOT / "examples" / "plugins"
V1 = 'allow plugin * to hook:register\nallow plugin * to file:read on "{plugin_dir}/**"\n'
V2 = V1 + 'deny plugin * to file:read on "{plugin_dir}/words.txt"\n'
WORDS = ("summarizer", "file:read", "words.txt")


class Server:
    """A loopback HTTP server of in-memory files with ETags (304 on If-None-Match)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.not_modified = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    server.not_modified += 1
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    B.generate_key_pair(directory / "site")
    return directory


def publish(server: Server, keys: Path, text: str, serial: int, *, name: str = "/b.tar.gz") -> bytes:
    data = B.build_bundle({"site.policy": text}, revision=f"r{serial}", serial=serial,
                          key=B.signing_key(keys / "site.key"))
    server.files[name] = data
    return data


def load(server: Server, keys: Path, **options: Any) -> Engine:
    return Engine.load(server.url + "/b.tar.gz", plugins=PLUGINS, public_key=keys / "site.pub", **options)


def test_url_needs_a_key_unless_insecure(server: Server, keys: Path) -> None:
    publish(server, keys, V1, 1)
    with pytest.raises(UsageError, match="needs a public key"):
        Engine.load(server.url + "/b.tar.gz", plugins=PLUGINS)
    assert Engine.load(server.url + "/b.tar.gz", plugins=PLUGINS, insecure=True).decide(*WORDS).allowed
    assert load(server, keys).status().serial == 1


def test_poll_swaps_in_a_new_revision_and_uses_conditional_get(server: Server, keys: Path) -> None:
    publish(server, keys, V1, 1)
    engine = load(server, keys)
    assert engine.decide(*WORDS).allowed
    assert engine.poll() is True and server.not_modified == 1  # unchanged: 304
    publish(server, keys, V2, 2)
    assert engine.poll() is True
    assert not engine.decide(*WORDS).allowed
    status = engine.status()
    assert (status.revision, status.serial, status.key_id, status.consecutive_failures) == ("r2", 2, "site", 0)
    assert status.isolation == {"report-builder": "process", "rogue": "process", "summarizer": "process"}


@pytest.mark.parametrize("tamper", ["flip", "unsigned", "rollback"])
def test_a_refused_version_is_never_swapped_in(server: Server, keys: Path, tamper: str) -> None:
    publish(server, keys, V2, 5)
    engine = load(server, keys)
    if tamper == "flip":
        data = bytearray(B.build_bundle({"site.policy": V1}, serial=6, key=B.signing_key(keys / "site.key")))
        signed = B._members(bytes(data), B.MAX_BUNDLE_BYTES, B.MAX_UNPACKED_BYTES)
        signed["site.policy"] = V1.replace("hook", "h00k").encode()
        server.files["/b.tar.gz"] = B._tar(signed)
        match = "digest mismatch"
    elif tamper == "unsigned":
        server.files["/b.tar.gz"] = B.build_bundle({"site.policy": V1}, serial=6)
        match = "not signed"
    else:
        publish(server, keys, V1, 4)
        match = "rollback"
    assert engine.poll() is False and engine.poll() is False
    assert not engine.decide(*WORDS).allowed  # still V2
    status = engine.status()
    assert status.serial == 5 and status.consecutive_failures == 2 and match in (status.last_error or "")


def test_the_cache_keeps_the_last_good_bundle_for_a_restart(server: Server, keys: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    publish(server, keys, V2, 3)
    load(server, keys, cache_dir=cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    server.stop()
    restarted = load(server, keys, cache_dir=cache)
    assert not restarted.decide(*WORDS).allowed and restarted.status().serial == 3
    assert "cannot fetch" in (restarted.status().last_error or "")
    (cache / "serial.json").write_text('{"serial": 9}\n')  # a later serial was accepted since
    with pytest.raises(BundleError, match="rollback"):
        load(server, keys, cache_dir=cache)


def test_a_redirect_to_another_scheme_is_refused(server: Server, keys: Path) -> None:
    server.redirects["/b.tar.gz"] = "ftp://example.com/b.tar.gz"
    with pytest.raises(BundleError, match="redirect from `http` to `ftp` refused"):
        load(server, keys)


def test_an_oversize_download_is_refused(server: Server, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(server, keys, V1, 1)
    monkeypatch.setattr(B, "MAX_BUNDLE_BYTES", 100)
    with pytest.raises(BundleError, match="over the limit"):
        load(server, keys)


def test_a_directory_is_adopted_when_two_polls_agree(tmp_path: Path) -> None:
    (tmp_path / "site.policy").write_text(V1)
    engine = Engine.load(tmp_path, plugins=PLUGINS)
    (tmp_path / "site.policy").write_text(V2)
    assert engine.poll() is True and engine.decide(*WORDS).allowed  # seen once: not yet
    assert engine.poll() is True and not engine.decide(*WORDS).allowed  # seen twice: adopted
    (tmp_path / "site.policy").write_text("allow plugin * to\n")  # broken: never swapped in
    assert engine.poll() is True  # seen once
    assert engine.poll() is False and engine.poll() is False and not engine.decide(*WORDS).allowed
    assert engine.status().consecutive_failures == 2
    assert "site.policy:1:" in (engine.status().last_error or "")


def test_watch_follows_a_url_and_stops(server: Server, keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    publish(server, keys, V1, 1)
    engine = load(server, keys)
    handle = engine.watch(interval=0.05)
    try:
        with caplog.at_level(logging.INFO, logger="policy_engine"):
            publish(server, keys, V2, 2)
            deadline = time.monotonic() + 20
            while engine.decide(*WORDS).allowed and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not engine.decide(*WORDS).allowed
            time.sleep(0.1)
    finally:
        handle.stop()
    assert not handle.running
    assert any("serial 1 -> 2" in r.getMessage() for r in caplog.records)


def test_watch_needs_a_loaded_engine() -> None:
    with pytest.raises(UsageError):
        Engine.from_source(V1).watch(1.0)
