"""The host's network broker: the only way a sandboxed worker reaches the network.

A worker runs in an empty network namespace, so the kernel refuses every connection it
tries on its own. A plugin granted ``network:request`` asks the broker instead, with the
name it wants and a port. The broker:

1. decides on the *name* first, so a name the policy does not allow never reaches a DNS
   server (a lookup of a denied name would itself carry data out);
2. resolves only an allowed name, once, under the call's deadline and a per-plugin lookup
   budget, and remembers which addresses that name gave this worker;
3. checks every address it got: any address that a ``deny`` rule matches denies the whole
   request (``allow ... on "*"`` with ``deny ... on "127.0.0.1"`` refuses ``localhost``);
4. connects only to those addresses (there is no second lookup for a resolver to answer
   differently) and returns the connected socket, which the host hands to the worker with
   ``SCM_RIGHTS``.

A connect to a bare address that this worker got from the broker's own ``getaddrinfo`` is
decided by the name that produced it (libraries such as urllib3 resolve first and connect to
an address); any other address is decided as itself. Only TCP is brokered: UDP (and so QUIC)
has no route out. "127.0.0.1" through the broker is the *host's* loopback.

Every attempt, allowed or not, is reported to ``on_decision`` (the engine's decision log).
The host CPU the broker spends for a plugin, DNS included, is added to :attr:`cpu_seconds`
so the supervisor can charge it to the plugin's CPU limit.
"""

from __future__ import annotations

import _socket
import ipaddress
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from ...decision import Decision, Reason, deny
from ...errors import PermissionDeniedError, PluginTimeoutError

__all__ = [
    "BrokerLimits",
    "NetworkBroker",
    "Resolver",
    "format_resource",
]

#: ``(plugin, action, resource) -> Decision``, normally ``engine.decide``.
Decide = Callable[[str, str, str], Decision]
#: ``socket.getaddrinfo``'s shape, so tests can answer lookups without DNS.
Resolver = Callable[..., Any]

_ACTION = "network:request"
# Reasons that mean "a rule or the plugin's state forbids this address", as opposed to "no
# rule names this address", which is what an address behind an allowed name usually gets.
_ADDRESS_REFUSALS = frozenset({
    Reason.DENIED_BY_RULE, Reason.UNTRUSTED, Reason.PLUGIN_DISABLED, Reason.UNKNOWN_PLUGIN,
    Reason.ERROR,
})


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """What one plugin's broker may spend on the host's behalf."""

    #: lookups refilled per second, and how many may be spent at once
    lookups_per_second: float = 20.0
    lookup_burst: int = 40
    #: addresses kept from one lookup (the rest are dropped, never connected to)
    max_addresses: int = 16
    #: names remembered per worker for address-first libraries
    max_remembered: int = 1024
    #: the longest a single connect may take, whatever the call's deadline leaves
    connect_timeout: float = 30.0


def format_resource(host: str, port: int) -> str:
    """The ``network:request`` resource for ``host`` and ``port`` (IPv6 bracketed)."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _literal_address(host: str) -> str | None:
    """``host`` in canonical form when it is an IP literal, else None.

    A zone ID is dropped (it names an interface, not another destination) and an
    IPv4-mapped IPv6 address is spelled as the IPv4 address it reaches.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    text = text.partition("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return address.compressed


class _Bucket:
    """A token bucket with an injectable clock."""

    __slots__ = ("_burst", "_clock", "_lock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class NetworkBroker:
    """Connects on one plugin's behalf, deciding by name before any lookup.

    ``decide`` is consulted on every request (nothing is cached here), so a reloaded policy
    takes effect on the next connect. ``deadline`` arguments are ``time.monotonic()`` values:
    the end of the plugin call that asked.
    """

    def __init__(
        self,
        plugin: str,
        decide: Decide,
        *,
        resolver: Resolver = socket.getaddrinfo,
        limits: BrokerLimits | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plugin = plugin
        self._decide = decide
        self._resolver = resolver
        self.limits = limits or BrokerLimits()
        self._on_decision = on_decision
        self._clock = clock
        self._bucket = _Bucket(self.limits.lookups_per_second, self.limits.lookup_burst, clock)
        self._lock = threading.Lock()
        # address -> the name whose lookup produced it, most recent last
        self._names: OrderedDict[str, str] = OrderedDict()
        self._cpu = 0.0
        self._lookup_cpu = 0.0
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"dns-{plugin}"[:15])
        self.lookups = 0
        self.refused_lookups = 0

    # -- accounting ---------------------------------------------------------------------

    @property
    def cpu_seconds(self) -> float:
        """Host CPU spent for this plugin so far (decisions, lookups, connects).

        A lookup's CPU is measured in the resolver thread that spent it and charged when that
        thread finishes, also when the call's deadline gave up waiting for it first.
        """
        with self._lock:
            return self._cpu + self._lookup_cpu

    @property
    def lookup_cpu_seconds(self) -> float:
        """The part of :attr:`cpu_seconds` spent in resolver threads (DNS), which the
        caller's own ``time.thread_time()`` does not see."""
        with self._lock:
            return self._lookup_cpu

    def _charge(self, seconds: float) -> None:
        with self._lock:
            self._cpu += max(0.0, seconds)

    def _timed_lookup(self, name: str, port: int, family: int) -> Any:
        """Run in a resolver thread: the lookup, with the CPU it spent charged to the plugin."""
        started = time.thread_time()
        try:
            return self._resolver(name, port, family, socket.SOCK_STREAM)
        finally:
            spent = max(0.0, time.thread_time() - started)
            with self._lock:
                self._lookup_cpu += spent

    def shutdown(self) -> None:
        """Stop the lookup threads; pending lookups are abandoned."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the two requests a worker can make -----------------------------------------------

    def getaddrinfo(self, host: str, port: int, *, deadline: float,
                    family: int = 0) -> list[tuple[int, str]]:
        """Resolve an allowed ``host`` for the worker: ``[(family, address), ...]``."""
        started = time.thread_time()
        try:
            name, addresses = self._resolve_allowed(host, port, deadline, family)
            with self._lock:
                for _, address in addresses:
                    if name is not None:
                        self._names[address] = name
                        self._names.move_to_end(address)
                while len(self._names) > self.limits.max_remembered:
                    self._names.popitem(last=False)
            return addresses
        finally:
            self._charge(time.thread_time() - started)

    def connect(self, host: str, port: int, *, deadline: float,
                family: int = 0) -> socket.socket:
        """A TCP socket connected to ``host:port``, or :class:`PermissionDeniedError`.

        ``family`` is the plugin's socket's family (0 for either): the broker connects only
        to addresses of that family, so the socket the worker gets in place of its own has
        the family its owner expects.
        """
        started = time.thread_time()
        try:
            literal = _literal_address(host)
            if literal is not None:
                with self._lock:
                    remembered = self._names.get(literal)
                if remembered is not None:
                    # An address the broker itself resolved: decide by the name again (a
                    # reload may have revoked it since) and by the address's deny rules.
                    self._allow_name(remembered, port)
                    self._refuse_denied_addresses(remembered, port, [literal])
                else:
                    self._allow_name(literal, port)
                addresses = [(_family(literal), literal)]
            else:
                _, addresses = self._resolve_allowed(host, port, deadline, family)
            if family:
                addresses = [entry for entry in addresses if entry[0] == family]
                if not addresses:
                    raise ConnectionError(
                        f"`{host}` has no address of the socket's family")
            return self._connect_any(host, port, addresses, deadline)
        finally:
            self._charge(time.thread_time() - started)

    # -- steps ------------------------------------------------------------------------------

    def _report(self, decision: Decision) -> None:
        if self._on_decision is not None:
            try:
                self._on_decision(decision)
            except Exception:  # a broken log handler never turns a deny into an allow
                pass

    def _allow_name(self, host: str, port: int) -> Decision:
        resource = format_resource(host, port)
        try:
            decision = self._decide(self.plugin, _ACTION, resource)
        except Exception as exc:  # fail closed
            decision = deny(Reason.ERROR, self.plugin, _ACTION, resource, str(exc))
        self._report(decision)
        if not decision.allowed:
            raise PermissionDeniedError(decision)
        return decision

    def _refuse_denied_addresses(self, host: str, port: int,
                                 addresses: Sequence[str]) -> None:
        for address in addresses:
            resource = format_resource(address, port)
            try:
                decision = self._decide(self.plugin, _ACTION, resource)
            except Exception as exc:
                decision = deny(Reason.ERROR, self.plugin, _ACTION, resource, str(exc))
            if decision.reason in _ADDRESS_REFUSALS:
                refusal = deny(
                    decision.reason, self.plugin, _ACTION, format_resource(host, port),
                    f"`{host}` resolved to `{address}`, which the policy denies",
                    rules=decision.rules, errors=decision.errors,
                )
                self._report(refusal)
                raise PermissionDeniedError(refusal)

    def _resolve_allowed(self, host: str, port: int, deadline: float,
                         family: int) -> tuple[str | None, list[tuple[int, str]]]:
        literal = _literal_address(host)
        if literal is not None:
            self._allow_name(literal, port)
            return None, [(_family(literal), literal)]
        name = host.lower().rstrip(".")
        self._allow_name(name, port)
        if not self._bucket.take():
            self.refused_lookups += 1
            decision = deny(Reason.OVER_BUDGET, self.plugin, _ACTION,
                            format_resource(name, port),
                            f"the plugin is over its DNS lookup budget "
                            f"({self.limits.lookup_burst} at once, "
                            f"{self.limits.lookups_per_second:g} per second)")
            self._report(decision)
            raise PermissionDeniedError(decision)
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise PluginTimeoutError(self.plugin, "network", 0.0, f"no time left to resolve `{name}`")
        self.lookups += 1
        future = self._pool.submit(self._timed_lookup, name, port, family)
        try:
            infos = future.result(timeout=remaining)
        except FutureTimeout:
            future.cancel()
            raise PluginTimeoutError(self.plugin, "network", remaining,
                                     f"resolving `{name}` took too long") from None
        except OSError as exc:
            raise ConnectionError(f"cannot resolve `{name}`: {exc}") from None
        addresses: list[tuple[int, str]] = []
        for fam, _type, _proto, _canon, sockaddr in infos:
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            canonical = _literal_address(str(sockaddr[0]))
            if canonical is None:
                continue
            entry = (_family(canonical), canonical)
            if entry not in addresses:
                addresses.append(entry)
            if len(addresses) >= self.limits.max_addresses:
                break
        if not addresses:
            raise ConnectionError(f"`{name}` has no IPv4 or IPv6 address")
        self._refuse_denied_addresses(name, port, [a for _, a in addresses])
        return name, addresses

    def _connect_any(self, host: str, port: int, addresses: Sequence[tuple[int, str]],
                     deadline: float) -> socket.socket:
        last: OSError | None = None
        for fam, address in addresses:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise PluginTimeoutError(self.plugin, "network", 0.0,
                                         f"no time left to connect to `{host}`")
            sock = socket.socket(fam, socket.SOCK_STREAM)
            try:
                sock.settimeout(min(remaining, self.limits.connect_timeout))
                # The C method: the host never goes through a patched Python connect.
                _socket.socket.connect(sock, (address, port))
                sock.settimeout(None)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise ConnectionError(f"cannot connect to `{format_resource(host, port)}`: {last}")


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET
