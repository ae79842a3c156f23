"""Network through the host: real workers, the audit hook off, the broker the only route.

The worker runs in an empty network namespace (bubblewrap); a plugin granted
``network:request`` reaches a loopback server on the host only through the host's broker,
which decides by name before any lookup. Lookups are answered by a fake resolver that
counts its calls.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine
from policy_engine.decision import Decision
from policy_engine.enforcement.host import bwrap
from policy_engine.enforcement.host.broker import NetworkBroker
from policy_engine.enforcement.host.identity import IdentityMap
from policy_engine.enforcement.host.supervisor import WorkerInit, WorkerProcess
from policy_engine.enforcement.host.usage import ResourceLimits
from policy_engine.enforcement.worker.lockdown import LockdownSpec
from policy_engine.errors import PermissionDeniedError
from policy_engine.manifest import manifest_from_mapping

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(bwrap.available()), reason=bwrap.available() or "bwrap works"),
]

PLUGIN = '''
import asyncio
import errno
import socket
import urllib.request

import _socket


class Plugin:
    def get(self, host, port):
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"GET /raw HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        return data.decode().rpartition("\\r\\n\\r\\n")[2]

    def refused(self, host, port):
        try:
            socket.create_connection((host, port), timeout=5)
        except PermissionError as error:
            return "permission: " + str(error)
        except OSError as error:
            return "oserror: " + str(error)
        return "connected"

    def urlopen(self, url):
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def aio(self, host, port):
        async def fetch():
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /aio HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
            return data.decode().rpartition("\\r\\n\\r\\n")[2]
        return asyncio.run(fetch())

    def direct(self, host, port):
        sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            _socket.socket.connect(sock, (host, port))
        except OSError as error:
            return errno.errorcode.get(error.errno, str(error.errno))
        finally:
            sock.close()
        return "connected"

    def udp(self, host, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.sendto(b"ping", (host, port))
        except OSError as error:
            return errno.errorcode.get(error.errno, str(error.errno))
        finally:
            sock.close()
        return "sent"
'''

Starter = Callable[..., tuple[WorkerProcess, list[Decision]]]


class FakeResolver:
    """Answers lookups from a table; records every name it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0,
                 *args: Any) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in self.table[host]]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    """An HTTP server on the host's loopback."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver({"api.example.com": ["127.0.0.1"], "localhost": ["127.0.0.1"],
                         "leak.attacker.test": ["127.0.0.1"]})


@pytest.fixture
def start(tmp_path: Path, resolver: FakeResolver) -> Iterator[Starter]:
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "demo.py").write_text(PLUGIN)
    workers: list[WorkerProcess] = []

    def starter(policy: str, *, sandbox: bool = True) -> tuple[WorkerProcess, list[Decision]]:
        manifest = manifest_from_mapping(
            {"name": "demo", "version": "1.0.0", "type": "agent", "entry_point": "demo:Plugin",
             "permissions": ["network:request"]},
            file="demo.yaml", plugin_path=tmp_path / "plugin")
        engine = Engine.from_source(policy, [manifest])
        seen: list[Decision] = []

        def broker() -> NetworkBroker:
            return NetworkBroker("demo", engine.decide, resolver=resolver,
                                 on_decision=seen.append)

        spec = LockdownSpec(scratch_dir=str(tmp_path / "scratch"),
                            plugin_dir=str(tmp_path / "plugin"), audit_hook=False,
                            allow_network=True, connect_any_port=True)
        init = WorkerInit(plugin="demo", plugin_dir=str(tmp_path / "plugin"),
                          entry_point="demo:Plugin", lockdown=spec, checker={"allow": []},
                          data_dir=str(tmp_path / "data"),
                          limits=ResourceLimits(memory_bytes=256 * 1024 * 1024))
        identities = IdentityMap(tmp_path / "identities.json", first=0x5E000000, count=1024)
        worker = WorkerProcess(sandbox=sandbox, identities=identities, broker_factory=broker)
        workers.append(worker)
        worker.start(init)
        return worker, seen

    yield starter
    for worker in workers:
        worker.stop()


def test_create_connection_to_an_allowed_name_works(start: Starter, server: int,
                                                    resolver: FakeResolver) -> None:
    worker, seen = start(f'allow plugin "demo" to network:request on "api.example.com:{server}"')
    assert worker.call("get", ["api.example.com", server], timeout=20) == "hello /raw"
    assert resolver.asked == ["api.example.com"]
    assert [d.allowed for d in seen] and all(d.allowed for d in seen)
    assert seen[0].resource == f"api.example.com:{server}"


def test_a_denied_address_behind_an_allowed_name_refuses(start: Starter, server: int) -> None:
    worker, seen = start('allow plugin "demo" to network:request on "*"\n'
                         'deny plugin "demo" to network:request on "127.0.0.1"')
    answer = worker.call("refused", ["localhost", server], timeout=20)
    assert answer.startswith("permission: ")
    assert "127.0.0.1" in answer
    assert not seen[-1].allowed


def test_a_denied_name_is_never_resolved(start: Starter, server: int,
                                         resolver: FakeResolver) -> None:
    worker, seen = start(f'allow plugin "demo" to network:request on "api.example.com:{server}"')
    answer = worker.call("refused", ["leak.attacker.test", server], timeout=20)
    assert answer.startswith("permission: ")
    assert resolver.asked == []
    assert [(d.resource, d.allowed) for d in seen] == [(f"leak.attacker.test:{server}", False)]


def test_a_direct_connect_fails_in_the_kernel(start: Starter, server: int) -> None:
    worker, seen = start('allow plugin "demo" to network:request on "*"')
    # The worker's network namespace is empty: its loopback is its own (nothing listens
    # there) and nothing else has a route.
    assert worker.call("direct", ["127.0.0.1", server], timeout=20) == "ECONNREFUSED"
    assert worker.call("direct", ["192.0.2.1", server], timeout=20) == "ENETUNREACH"
    assert seen == []  # the broker was never asked


def test_urllib_to_an_allowed_host_works(start: Starter, server: int,
                                         resolver: FakeResolver) -> None:
    worker, seen = start(f'allow plugin "demo" to network:request on "api.example.com:{server}"')
    url = f"http://api.example.com:{server}/url"
    assert worker.call("urlopen", [url], timeout=20) == "hello /url"
    # Resolved once; the connect to the address was decided by the name again.
    assert resolver.asked == ["api.example.com"]
    assert {d.resource for d in seen if d.allowed} == {f"api.example.com:{server}"}


def test_asyncio_open_connection_works(start: Starter, server: int) -> None:
    worker, _ = start(f'allow plugin "demo" to network:request on "api.example.com:{server}"')
    assert worker.call("aio", ["api.example.com", server], timeout=20) == "hello /aio"


def test_udp_has_no_route(start: Starter) -> None:
    worker, seen = start('allow plugin "demo" to network:request on "*"')
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        assert worker.call("udp", ["192.0.2.1", 53], timeout=20) == "ENETUNREACH"
        # Sent to the sandbox's own loopback, never to the host's.
        worker.call("udp", ["127.0.0.1", port], timeout=20)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.recv(16)
    finally:
        listener.close()
    assert seen == []  # nothing reached the broker


def test_a_connect_outside_an_allowed_port_is_refused(start: Starter, server: int) -> None:
    worker, _ = start('allow plugin "demo" to network:request on "api.example.com:1"')
    # Uncaught by the plugin, the broker's denial reaches the host as itself.
    with pytest.raises(PermissionDeniedError) as caught:
        worker.call("get", ["api.example.com", server], timeout=20)
    assert caught.value.decision.resource == f"api.example.com:{server}"


def test_without_bubblewrap_the_shim_still_goes_through_the_broker(
        start: Starter, server: int, resolver: FakeResolver) -> None:
    # The fallback keeps the host's network namespace (and today's layers); the shim still
    # asks the broker, so the decision is by name and made by the host.
    worker, seen = start(f'allow plugin "demo" to network:request on "api.example.com:{server}"',
                         sandbox=False)
    assert worker.call("get", ["api.example.com", server], timeout=20) == "hello /raw"
    assert resolver.asked == ["api.example.com"]
    assert worker.call("refused", ["leak.attacker.test", server], timeout=20).startswith(
        "permission: ")
    assert resolver.asked == ["api.example.com"]
    assert seen[-1].resource == f"leak.attacker.test:{server}" and not seen[-1].allowed
