"""Published ports: docker's ``-p`` syntax, and the userland proxies that serve them.

A published port is a socket hyperd binds *before* the pod boots (so a port already in
use fails the start cleanly, with nothing half-made) and serves once the guest has its
address.  The kernel's DNAT (``hyperd.network.nft``) carries traffic that arrives from
outside the host; the proxy serves what DNAT cannot, such as the host's own loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any, cast

from hyperd.errors import Conflict, InvalidArgument

PROTOCOLS = ("tcp", "udp")
MAX_RANGE = 1024
"""Ports one ``-p`` range may publish."""
BACKLOG = 511
UDP_CLIENTS = 1024
"""Distinct UDP peers a published port relays for at once; past that, new peers' datagrams are dropped."""
UDP_IDLE = 30.0
"""Seconds a UDP peer's relay lives without traffic."""
HIGH_WATER = 1 << 20
"""Bytes a TCP relay buffers for a slow side before it stops reading the fast one."""


@dataclass(frozen=True)
class PortBinding:
    """One ``-p`` port: the container's port, and where the host publishes it (port 0: any free one)."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0
    """With a host range for one container port (``-p 8000-8010:80``): the range's last port."""

    @property
    def key(self) -> str:
        """Docker's name for the container side: ``80/tcp``."""
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class Published:
    """A port as published for one run: the host address and port actually bound."""

    container_port: int
    protocol: str
    host_ip: str
    host_port: int

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"

    def describe(self) -> str:
        """``0.0.0.0:8080->80/tcp``, as ``docker ps`` shows it."""
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.key}"


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidArgument(f"invalid port {text!r} in {spec!r}: ports are 1-65535")
    return int(text)


def _range(text: str, spec: str) -> tuple[int, int]:
    first, dash, last = text.partition("-")
    low = _port(first, spec)
    high = _port(last, spec) if dash else low
    if high < low or high - low >= MAX_RANGE:
        raise InvalidArgument(f"invalid port range {text!r} in {spec!r}")
    return low, high


def parse(spec: str) -> list[PortBinding]:
    """``[IP:][HOST:]CONTAINER[/PROTO]`` with ranges, as ``docker run -p`` takes it."""
    body, slash, protocol = spec.partition("/")
    protocol = protocol.lower() if slash else "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"invalid protocol {protocol!r} in {spec!r}: use tcp or udp")
    host_ip = ""
    if body.startswith("["):  # [IPv6]:host:container
        address, bracket, body = body[1:].partition("]")
        if not bracket or not body.startswith(":"):
            raise InvalidArgument(f"invalid port specification {spec!r}")
        host_ip, body = address, body[1:]
        parts = body.split(":")
        if len(parts) != 2:
            raise InvalidArgument(f"invalid port specification {spec!r}")
        parts.insert(0, host_ip)
    else:
        parts = body.split(":")
    if len(parts) == 3:
        host_ip = parts[0]
    elif len(parts) > 3 or not parts[-1]:
        raise InvalidArgument(f"invalid port specification {spec!r}")
    if host_ip:
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise InvalidArgument(f"invalid host address {host_ip!r} in {spec!r}") from None
    container_low, container_high = _range(parts[-1], spec)
    host_text = parts[-2] if len(parts) >= 2 else ""
    if not host_text:
        return [PortBinding(port, protocol, host_ip) for port in range(container_low, container_high + 1)]
    host_low, host_high = _range(host_text, spec)
    if container_low == container_high and host_high > host_low:
        return [PortBinding(container_low, protocol, host_ip, host_low, host_high)]
    if host_high - host_low != container_high - container_low:
        raise InvalidArgument(f"invalid port specification {spec!r}: the host and container ranges differ in size")
    return [PortBinding(container_low + i, protocol, host_ip, host_low + i)
            for i in range(container_high - container_low + 1)]


def exposed(names: tuple[str, ...]) -> list[PortBinding]:
    """``-P``: every exposed port (``80/tcp``, ``53/udp``, ``8000-8002``) on a free host port."""
    found = []
    for name in names:
        port, _, protocol = name.partition("/")
        found += parse(f"{port}/{protocol or 'tcp'}")
    return found


def bind(binding: PortBinding) -> socket.socket:
    """A socket bound to the binding's host side; Conflict naming the port when it is taken."""
    family = socket.AF_INET6 if ":" in binding.host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if binding.protocol == "tcp" else socket.SOCK_DGRAM
    address = binding.host_ip or "0.0.0.0"
    last = binding.host_port_end or binding.host_port
    for port in range(binding.host_port, last + 1):
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.setblocking(False)
            return sock
        except OSError as err:
            sock.close()
            if err.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(f"cannot publish on {address}: no such address on this host") from err
            if err.errno != errno.EADDRINUSE:
                raise
            if port == last:
                taken = f"{port}" if last == binding.host_port else f"{binding.host_port}-{last}"
                raise Conflict(f"cannot publish {binding.key} on {address}:{taken}: "
                               "port is already allocated") from err
    raise AssertionError("unreachable: a range has at least one port")


def published(binding: PortBinding, sock: socket.socket) -> Published:
    host_ip = binding.host_ip or "0.0.0.0"
    return Published(binding.container_port, binding.protocol, host_ip, sock.getsockname()[1])


# -- the proxies --------------------------------------------------------------------------


class _Relay(asyncio.Protocol):
    """One direction's reader and the other side's writer, with flow control both ways."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.early: list[bytes] = []
        self.ended = False
        """What arrived before the other side was connected (reading is paused then, but the
        event loop may deliver what it had already read)."""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        # Half-close: the other side sees our end of stream and may still answer.
        if self.peer is None:
            self.ended = True
        elif self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Relay):
    """A connection accepted on the published port; dials the guest before relaying."""

    def __init__(self, target: tuple[str, int], connections: set[_Relay]) -> None:
        super().__init__()
        self.target = target
        self.connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connections.add(self)
        assert self.transport is not None
        self.transport.pause_reading()  # nothing to relay to until the guest answers
        self.dialing = asyncio.ensure_future(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Relay, *self.target)
        except OSError:
            if self.transport is not None:
                self.transport.abort()  # the guest refused: so does the published port
            return
        if self.transport is None or self.transport.is_closing():
            if upstream.transport is not None:
                upstream.transport.close()
            return
        self.peer, upstream.peer = upstream, self
        if upstream.transport is not None:
            upstream.transport.writelines(self.early)
            if self.ended:
                upstream.transport.write_eof()
        self.early = []
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.connections.discard(self)


class _Datagrams(asyncio.DatagramProtocol):
    """The published UDP port: one connected socket to the guest per peer, so replies find their way back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: dict[Any, tuple[asyncio.DatagramTransport, list[float]]] = {}
        self.pending: set[Any] = set()
        self.opening: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass of it in 3.11

    def datagram_received(self, data: bytes, addr: Any) -> None:
        peer = self.peers.get(addr)
        if peer is not None:
            peer[1][0] = time.monotonic()
            peer[0].sendto(data)
        elif addr not in self.pending and len(self.peers) + len(self.pending) < UDP_CLIENTS:
            self.pending.add(addr)
            opening = asyncio.ensure_future(self._open(addr, data))
            self.opening.add(opening)
            opening.add_done_callback(self.opening.discard)

    async def _open(self, addr: Any, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        outer = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, _source: Any) -> None:
                if outer.transport is not None and not outer.transport.is_closing():
                    outer.transport.sendto(data, addr)
                    outer.peers[addr][1][0] = time.monotonic()

        try:
            upstream, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
        except OSError:
            return
        finally:
            self.pending.discard(addr)
        if self.transport is None or self.transport.is_closing():
            upstream.close()
            return
        self.peers[addr] = (upstream, [time.monotonic()])
        upstream.sendto(first)

    def sweep(self) -> None:
        now = time.monotonic()
        for addr, (upstream, seen) in list(self.peers.items()):
            if now - seen[0] > UDP_IDLE:
                upstream.close()
                del self.peers[addr]

    def close(self) -> None:
        for upstream, _ in self.peers.values():
            upstream.close()
        self.peers.clear()
        if self.transport is not None:
            self.transport.close()


class Proxy:
    """A published port's socket, bound at once and serving the guest's address once ``serve`` is called."""

    def __init__(self, binding: PortBinding, sock: socket.socket) -> None:
        self.binding = binding
        self.sock = sock
        self.published = published(binding, sock)
        self._server: asyncio.Server | None = None
        self._datagrams: _Datagrams | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Relay] = set()

    async def serve(self, guest_ip: str, guest_port: int | None = None) -> None:
        target = (guest_ip, guest_port or self.binding.container_port)
        loop = asyncio.get_running_loop()
        if self.binding.protocol == "tcp":
            self.sock.listen(BACKLOG)
            self._server = await loop.create_server(lambda: _Client(target, self._connections), sock=self.sock)
        else:
            _, protocol = await loop.create_datagram_endpoint(lambda: _Datagrams(target), sock=self.sock)
            self._datagrams = protocol
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while self._datagrams is not None:
            await asyncio.sleep(UDP_IDLE / 3)
            self._datagrams.sweep()

    async def close(self) -> None:
        """Stop serving and end every relayed connection; safe to call twice."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._datagrams is not None:
            self._datagrams.close()
            self._datagrams = None
        if self._server is not None:
            self._server.close()
            for relay in list(self._connections):
                if relay.transport is not None:
                    relay.transport.abort()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self.sock.close()


def open_proxies(bindings: list[PortBinding]) -> list[Proxy]:
    """Bind every published port now; on any failure the ones already bound are released."""
    proxies: list[Proxy] = []
    try:
        for binding in bindings:
            proxies.append(Proxy(binding, bind(binding)))
    except BaseException:
        for proxy in proxies:
            proxy.sock.close()
        raise
    return proxies
