"""The worker's side of the network broker: sockets that connect through the host.

A sandboxed worker has an empty network namespace, so this module is not a wall: it only
makes ordinary Python networking (``socket.create_connection``, ``http.client``, urllib3 and
requests, asyncio's ``sock_connect`` and ``open_connection``) ask the host's broker instead of
failing with "network unreachable". The broker decides, resolves and connects; the connected
socket comes back as a file descriptor (``SCM_RIGHTS``) that is put in place of the plugin's
own socket with ``dup2``, so the plugin's socket object, its timeout and its blocking mode
stay as the plugin set them.

Code that goes around this module (``_socket`` directly, ctypes) reaches only the empty
namespace and gets the kernel's refusal.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["BrokerClient", "install"]

_SERVICES = {"http": 80, "https": 443, "ftp": 21, "ssh": 22, "smtp": 25, "imap": 143,
             "imaps": 993, "pop3": 110, "pop3s": 995, "ldap": 389, "ldaps": 636}

#: ``(host, port, family) -> fd`` of a connected socket, raising ``OSError`` subclasses
#: (``PermissionError`` for a denial) on failure.
ConnectFn = Callable[[str, int, int], int]
#: ``(host, port, family) -> [(family, address), ...]``.
ResolveFn = Callable[[str, int, int], list[tuple[int, str]]]


class BrokerClient:
    """What the shim needs from the worker's channel to the host."""

    def __init__(self, connect: ConnectFn, resolve: ResolveFn) -> None:
        self.connect = connect
        self.resolve = resolve


def _port(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        if value.lower() in _SERVICES:
            return _SERVICES[value.lower()]
        raise socket.gaierror(socket.EAI_SERVICE, f"unknown service {value!r}")
    return int(value)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def install(client: BrokerClient) -> Callable[[], None]:
    """Route the worker's TCP connects and name lookups through ``client``.

    Returns a function that undoes the patch (for tests; a worker never undoes it).
    """
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def brokered(sock: socket.socket, address: Any) -> None:
        host, port = str(address[0]), int(address[1])
        fd = client.connect(host, port, int(sock.family))
        try:
            timeout = sock.gettimeout()
            os.dup2(fd, sock.fileno())
        finally:
            os.close(fd)
        # dup2 brought the host socket's file status flags: put the plugin's mode back.
        sock.settimeout(timeout)

    def is_brokered(sock: socket.socket) -> bool:
        return (sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM)

    def connect(self: socket.socket, address: Any) -> None:
        if not is_brokered(self):
            original_connect(self, address)
            return
        brokered(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not is_brokered(self):
            return original_connect_ex(self, address)
        try:
            brokered(self, address)
        except OSError as exc:
            return exc.errno or errno.ECONNREFUSED
        return 0

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                    proto: int = 0, flags: int = 0) -> Any:
        name = host.decode("idna") if isinstance(host, bytes) else host
        if name is None or _is_literal(str(name)) or type not in (0, socket.SOCK_STREAM):
            # Numeric forms need no DNS; datagram lookups have nowhere to go anyway.
            return original_getaddrinfo(host, port, family, type, proto, flags)
        number = _port(port)
        results = []
        for fam, address in client.resolve(str(name), number, int(family)):
            if family and fam != family:
                continue
            sockaddr: tuple[Any, ...] = ((address, number, 0, 0) if fam == socket.AF_INET6
                                         else (address, number))
            results.append((socket.AddressFamily(fam), socket.SOCK_STREAM,
                            socket.IPPROTO_TCP, "", sockaddr))
        if not results:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return results

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo

    def uninstall() -> None:
        socket.socket.connect = original_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = original_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = original_getaddrinfo

    return uninstall
