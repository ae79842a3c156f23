"""The host's network broker and the worker's socket shim, against a real loopback server.

Lookups are answered by a fake resolver that counts its calls, so the tests can show that a
denied name is never looked up and that a connect never triggers a second lookup.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policy_engine import Engine, PermissionDeniedError, Reason
from policy_engine.decision import Decision
from policy_engine.enforcement.host.broker import BrokerLimits, NetworkBroker, format_resource
from policy_engine.enforcement.worker.netshim import BrokerClient, install
from policy_engine.errors import PluginTimeoutError
from policy_engine.manifest import manifest_from_mapping


def _manifest(permissions: list[str]) -> Any:
    data = {"name": "net", "version": "1.0.0", "type": "agent", "entry_point": "m:C",
            "permissions": permissions}
    return manifest_from_mapping(data, file="net.yaml", plugin_path=Path("/srv/plugins/net"))


def _engine(policy: str, permissions: list[str] | None = None) -> Engine:
    return Engine.from_source(policy, [_manifest(permissions or ["network:request"])])


class FakeResolver:
    """Answers lookups from a table; records every name it was asked."""

    def __init__(self, table: dict[str, list[str]], delay: float = 0.0) -> None:
        self.table = table
        self.asked: list[str] = []
        self.delay = delay

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0,
                 *args: Any) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        self.asked.append(host)
        if self.delay:
            time.sleep(self.delay)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in self.table[host]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr: tuple[Any, ...] = (address, port, 0, 0) if ":" in address else (address, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out


@pytest.fixture
def server() -> Iterator[int]:
    """A loopback TCP server that answers each connection with b"hello"."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(2)
    listener.close()


def _deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_a_denied_address_behind_an_allowed_name_denies(server: int) -> None:
    engine = _engine('allow plugin * to network:request on "*"\n'
                     'deny plugin * to network:request on "127.0.0.1"')
    resolver = FakeResolver({"localhost": ["127.0.0.1", "::1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver)
    with pytest.raises(PermissionDeniedError) as caught:
        broker.connect("localhost", server, deadline=_deadline())
    assert caught.value.decision.reason is Reason.DENIED_BY_RULE
    assert "127.0.0.1" in caught.value.decision.detail
    assert caught.value.decision.rules  # the deny rule that matched the address


def test_a_denied_name_is_never_looked_up(server: int) -> None:
    engine = _engine('allow plugin * to network:request on "*.example.com:*"\n'
                     'deny plugin * to network:request on "secret.example.com"')
    resolver = FakeResolver({"secret.example.com": ["127.0.0.1"],
                             "leak.attacker.test": ["127.0.0.1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver)
    for name in ("secret.example.com", "leak.attacker.test", "SECRET.example.com."):
        with pytest.raises(PermissionDeniedError):
            broker.connect(name, server, deadline=_deadline())
        with pytest.raises(PermissionDeniedError):
            broker.getaddrinfo(name, server, deadline=_deadline())
    assert resolver.asked == []


def test_an_allowed_name_connects_with_one_lookup(server: int) -> None:
    engine = _engine(f'allow plugin * to network:request on "api.example.com:{server}"')
    resolver = FakeResolver({"api.example.com": ["127.0.0.1"]})
    seen: list[Decision] = []
    broker = NetworkBroker("net", engine.decide, resolver=resolver, on_decision=seen.append)
    sock = broker.connect("api.example.com", server, deadline=_deadline())
    with sock:
        assert sock.recv(5) == b"hello"
    assert resolver.asked == ["api.example.com"]
    assert [d.allowed for d in seen] == [True]
    assert broker.cpu_seconds > 0


def test_the_wrong_port_is_denied(server: int) -> None:
    engine = _engine('allow plugin * to network:request on "api.example.com:443"')
    resolver = FakeResolver({"api.example.com": ["127.0.0.1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver)
    with pytest.raises(PermissionDeniedError):
        broker.connect("api.example.com", server, deadline=_deadline())
    assert resolver.asked == []


def test_an_address_from_the_brokers_own_lookup_is_decided_by_its_name(server: int) -> None:
    engine = _engine(f'allow plugin * to network:request on "api.example.com:{server}"')
    resolver = FakeResolver({"api.example.com": ["127.0.0.1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver)
    assert broker.getaddrinfo("api.example.com", server, deadline=_deadline()) == [
        (socket.AF_INET, "127.0.0.1")]
    with broker.connect("127.0.0.1", server, deadline=_deadline()) as sock:
        assert sock.recv(5) == b"hello"
    assert resolver.asked == ["api.example.com"]  # no second lookup


def test_an_address_nobody_resolved_is_decided_as_itself(server: int) -> None:
    engine = _engine(f'allow plugin * to network:request on "api.example.com:{server}"')
    broker = NetworkBroker("net", engine.decide, resolver=FakeResolver({}))
    with pytest.raises(PermissionDeniedError) as caught:
        broker.connect("127.0.0.1", server, deadline=_deadline())
    assert caught.value.decision.reason is Reason.NO_MATCHING_ALLOW


@pytest.mark.parametrize("spelling", ["::ffff:127.0.0.1", "[::ffff:127.0.0.1]", "127.0.0.1"])
def test_spellings_of_a_denied_address_are_denied(server: int, spelling: str) -> None:
    engine = _engine('allow plugin * to network:request on "*"\n'
                     'deny plugin * to network:request on "127.0.0.1"')
    broker = NetworkBroker("net", engine.decide, resolver=FakeResolver({}))
    with pytest.raises(PermissionDeniedError):
        broker.connect(spelling, server, deadline=_deadline())


def test_a_revoked_name_is_refused_on_the_next_connect(server: int) -> None:
    engine = _engine(f'allow plugin * to network:request on "api.example.com:{server}"')
    resolver = FakeResolver({"api.example.com": ["127.0.0.1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver)
    broker.getaddrinfo("api.example.com", server, deadline=_deadline())
    engine.reload('deny plugin * to network:request')
    with pytest.raises(PermissionDeniedError):
        broker.connect("127.0.0.1", server, deadline=_deadline())


def test_lookups_are_rate_limited() -> None:
    engine = _engine('allow plugin * to network:request on "*"')
    now = [0.0]
    resolver = FakeResolver({"a.example.com": ["192.0.2.1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver, clock=lambda: now[0],
                           limits=BrokerLimits(lookups_per_second=1.0, lookup_burst=2))
    for _ in range(2):
        broker.getaddrinfo("a.example.com", 443, deadline=10.0)
    with pytest.raises(PermissionDeniedError, match="budget") as refused:
        broker.getaddrinfo("a.example.com", 443, deadline=10.0)
    # Its own reason: no deny rule is involved, so no hint points at one.
    decision = refused.value.decision
    assert decision.reason is Reason.OVER_BUDGET and not decision.rules
    assert "deny rule" not in " ".join(decision.hints())
    assert "retry later" in " ".join(decision.hints())
    now[0] = 1.5
    broker.getaddrinfo("a.example.com", 443, deadline=10.0)
    assert len(resolver.asked) == 3 and broker.refused_lookups == 1


def test_a_slow_lookup_is_stopped_by_the_calls_deadline() -> None:
    engine = _engine('allow plugin * to network:request on "*"')
    broker = NetworkBroker("net", engine.decide,
                           resolver=FakeResolver({"slow.example.com": ["192.0.2.1"]}, delay=2.0))
    started = time.monotonic()
    with pytest.raises(PluginTimeoutError):
        broker.getaddrinfo("slow.example.com", 443, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 1.5
    broker.shutdown()


def test_a_failing_decide_denies() -> None:
    def broken(plugin: str, action: str, resource: str) -> Decision:
        raise RuntimeError("boom")

    broker = NetworkBroker("net", broken, resolver=FakeResolver({"a.example.com": ["192.0.2.1"]}))
    with pytest.raises(PermissionDeniedError) as caught:
        broker.connect("a.example.com", 443, deadline=_deadline())
    assert caught.value.decision.reason is Reason.ERROR


def test_format_resource_brackets_ipv6() -> None:
    assert format_resource("::1", 443) == "[::1]:443"
    assert format_resource("example.com", 80) == "example.com:80"


# -- the worker's shim, with the descriptor crossing a real SCM_RIGHTS channel -------------------


@pytest.fixture
def shim(server: int) -> Iterator[tuple[int, FakeResolver]]:
    engine = _engine(f'allow plugin * to network:request on "api.example.com:{server}"')
    resolver = FakeResolver({"api.example.com": ["127.0.0.1"]})
    broker = NetworkBroker("net", engine.decide, resolver=resolver)
    host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def connect(host: str, port: int, family: int) -> int:
        try:
            sock = broker.connect(host, port, deadline=_deadline(), family=family)
        except PermissionDeniedError as exc:
            raise PermissionError(str(exc)) from None
        with sock:
            socket.send_fds(host_end, [b"c"], [sock.fileno()])
        _, fds, _, _ = socket.recv_fds(worker_end, 1, 1)
        return fds[0]

    def resolve(host: str, port: int, family: int) -> list[tuple[int, str]]:
        try:
            return broker.getaddrinfo(host, port, deadline=_deadline(), family=family)
        except PermissionDeniedError as exc:
            raise socket.gaierror(socket.EAI_FAIL, str(exc)) from None

    uninstall = install(BrokerClient(connect, resolve))
    try:
        yield server, resolver
    finally:
        uninstall()
        host_end.close()
        worker_end.close()


def test_create_connection_goes_through_the_broker(shim: tuple[int, FakeResolver]) -> None:
    port, resolver = shim
    with socket.create_connection(("api.example.com", port), timeout=3) as sock:
        assert sock.gettimeout() == 3
        assert sock.recv(5) == b"hello"
    assert resolver.asked == ["api.example.com"]


def test_a_denied_connect_raises_permission_error(shim: tuple[int, FakeResolver]) -> None:
    port, _ = shim
    sock = socket.socket()
    with sock, pytest.raises(PermissionError):
        sock.connect(("127.0.0.1", port + 1 if port < 65535 else 1))


def test_connect_ex_reports_an_errno(shim: tuple[int, FakeResolver]) -> None:
    with socket.socket() as sock:
        assert sock.connect_ex(("evil.test", 80)) != 0


def test_a_non_blocking_socket_stays_non_blocking(shim: tuple[int, FakeResolver]) -> None:
    port, _ = shim
    sock = socket.socket()
    sock.setblocking(False)
    with sock:
        sock.connect(("api.example.com", port))
        assert sock.getblocking() is False
        deadline = time.monotonic() + 3
        while True:
            try:
                assert sock.recv(5) == b"hello"
                break
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.01)


def test_asyncio_open_connection_goes_through_the_broker(shim: tuple[int, FakeResolver]) -> None:
    port, _ = shim

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection("api.example.com", port)
        data = await reader.readexactly(5)
        writer.close()
        await writer.wait_closed()
        return data

    assert asyncio.run(fetch()) == b"hello"


def test_udp_is_not_brokered(shim: tuple[int, FakeResolver]) -> None:
    # A datagram socket is left to the kernel: in a sandbox its empty network namespace.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 9))  # allowed here because this test runs on the host


class _BusyResolver(FakeResolver):
    """A resolver that burns CPU in its own thread before answering."""

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0,
                 *args: Any) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
        started = time.thread_time()
        while time.thread_time() - started < 0.05:
            pass
        return super().__call__(host, port, family, type, *args)


def test_the_cpu_a_lookup_spends_in_its_thread_is_charged_to_the_plugin() -> None:
    engine = _engine('allow plugin * to network:request on "*"')
    broker = NetworkBroker("net", engine.decide,
                           resolver=_BusyResolver({"a.example.com": ["192.0.2.1"]}))
    broker.getaddrinfo("a.example.com", 443, deadline=time.monotonic() + 30)
    # The caller's thread did almost nothing; the resolver thread spent the 50 ms.
    assert broker.lookup_cpu_seconds >= 0.05
    assert broker.cpu_seconds >= broker.lookup_cpu_seconds
    broker.shutdown()


def test_a_lookup_abandoned_at_the_deadline_is_still_charged() -> None:
    engine = _engine('allow plugin * to network:request on "*"')
    broker = NetworkBroker("net", engine.decide,
                           resolver=_BusyResolver({"a.example.com": ["192.0.2.1"]}))
    with pytest.raises(PluginTimeoutError):
        broker.getaddrinfo("a.example.com", 443, deadline=time.monotonic() + 0.01)
    broker._pool.shutdown(wait=True)  # let the abandoned lookup finish
    assert broker.lookup_cpu_seconds >= 0.05
