"""Pure parts of pod networking: ``-p`` parsing, the nftables script, the address allocator,
and the published-port proxy relaying real loopback connections."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path
from typing import cast

import pytest

from hyperd.errors import Conflict, InvalidArgument
from hyperd.network import Driver, Network, nft, ports
from hyperd.network.ipam import AddressesExhausted, Ipam, free_subnet
from hyperd.network.ports import PortBinding


@pytest.mark.parametrize(("spec", "expected"), [
    ("80", [PortBinding(80)]),
    ("8080:80", [PortBinding(80, host_port=8080)]),
    ("127.0.0.1:8080:80/udp", [PortBinding(80, "udp", "127.0.0.1", 8080)]),
    ("127.0.0.1::80", [PortBinding(80, host_ip="127.0.0.1")]),
    ("[::1]:8080:80", [PortBinding(80, host_ip="::1", host_port=8080)]),
    ("8000-8001:80-81/TCP", [PortBinding(80, host_port=8000), PortBinding(81, host_port=8001)]),
    ("8000-8010:80", [PortBinding(80, host_port=8000, host_port_end=8010)]),
    ("53-54/udp", [PortBinding(53, "udp"), PortBinding(54, "udp")]),
])
def test_port_specs(spec: str, expected: list[PortBinding]) -> None:
    assert ports.parse(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("0", "invalid port"), ("65536", "invalid port"), ("80/sctp", "invalid protocol"), ("a:b:c:d", "invalid port"),
    ("8000-8002:80-81", "differ in size"), ("nohost:80:80", "invalid host address"), ("90-80", "invalid port range"),
    ("1-2000", "invalid port range"), ("", "invalid port"), ("[::1:80", "invalid port specification"),
])
def test_bad_port_specs(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        ports.parse(spec)


def test_exposed_ports_publish_on_free_ports() -> None:
    assert ports.exposed(("80/tcp", "53/udp", "9000")) == [PortBinding(80), PortBinding(53, "udp"),
                                                            PortBinding(9000)]


def test_bind_reports_a_taken_port_and_takes_the_next_in_a_range() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        with pytest.raises(Conflict, match=f"127.0.0.1:{taken}: port is already allocated"):
            ports.bind(PortBinding(80, host_ip="127.0.0.1", host_port=taken))
        sock = ports.bind(PortBinding(80, host_ip="127.0.0.1", host_port=taken, host_port_end=taken + 1))
        assert sock.getsockname()[1] == taken + 1
        sock.close()
        with pytest.raises(InvalidArgument, match="no such address"):
            ports.bind(PortBinding(80, host_ip="192.0.2.1", host_port=taken))
    finally:
        holder.close()


def test_open_proxies_releases_what_it_bound_when_one_fails() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        first = ports.bind(PortBinding(80, host_ip="127.0.0.1"))
        free = first.getsockname()[1]
        first.close()
        with pytest.raises(Conflict):
            ports.open_proxies([PortBinding(80, host_ip="127.0.0.1", host_port=free),
                                PortBinding(81, host_ip="127.0.0.1", host_port=holder.getsockname()[1])])
        ports.bind(PortBinding(80, host_ip="127.0.0.1", host_port=free)).close()  # released again
    finally:
        holder.close()


def test_nft_script() -> None:
    bridges = [nft.Bridge("hyper0", ipaddress.IPv4Network("172.31.0.0/16")),
               nft.Bridge("hyb0123456789ab", ipaddress.IPv4Network("10.29.0.0/24"))]
    forwards = [nft.Forward("tcp", "", 8080, "172.31.0.2", 80, "hyper0"),
                nft.Forward("udp", "127.0.0.1", 5353, "172.31.0.2", 53, "hyper0"),
                nft.Forward("tcp", "192.0.2.7", 443, "10.29.0.2", 8443, "hyb0123456789ab")]
    script = nft.render(bridges, forwards)
    assert script.startswith("table ip hyper\ndelete table ip hyper\ntable ip hyper {\n")
    assert 'iifname != "hyper0" fib daddr type local tcp dport 8080 dnat to 172.31.0.2:80' in script
    assert "5353" not in script  # loopback is the proxy's: DNAT never sees it
    assert 'iifname != "hyb0123456789ab" ip daddr 192.0.2.7 tcp dport 443 dnat to 10.29.0.2:8443' in script
    assert 'ip saddr 172.31.0.0/16 oifname != "hyper0" masquerade' in script
    assert 'iifname "hyper0" oifname { "hyb0123456789ab" } drop' in script
    assert 'iifname "hyb0123456789ab" oifname { "hyper0" } drop' in script
    assert nft.render([], []) == "table ip hyper\ndelete table ip hyper\n"


def _network(subnet: str = "10.30.0.0/29", gateway: str = "10.30.0.1") -> Network:
    return Network("n" * 64, "net", Driver.BRIDGE, subnet, gateway, "hybnnnnnnnnnnnn")


def test_leases_lowest_free_never_twice_and_survive_reopening(tmp_path: Path) -> None:
    ipam = Ipam(tmp_path / "db")
    network = _network()
    got = [str(ipam.lease(network, f"c{i}")) for i in range(5)]
    assert got == ["10.30.0.2", "10.30.0.3", "10.30.0.4", "10.30.0.5", "10.30.0.6"]
    with pytest.raises(AddressesExhausted, match="no free address left on network net"):
        ipam.lease(network, "c5")
    ipam.release("c1")
    ipam.close()
    again = Ipam(tmp_path / "db")
    assert str(again.lease(network, "c6")) == "10.30.0.3"
    assert again.leased(network.id)["10.30.0.2"] == "c0"
    with pytest.raises(Conflict, match="already in use"):
        again.lease(network, "c7", "10.30.0.4")
    with pytest.raises(InvalidArgument, match="not a usable address"):
        again.lease(network, "c7", "10.30.0.1")
    again.release_all()
    assert again.leased(network.id) == {}


def test_free_subnets_avoid_what_is_used() -> None:
    used = [ipaddress.IPv4Network("10.29.0.0/24"), ipaddress.IPv4Network("10.29.1.128/25")]
    assert str(free_subnet(used)) == "10.29.2.0/24"
    with pytest.raises(AddressesExhausted):
        free_subnet([ipaddress.IPv4Network("10.0.0.0/8")])


async def test_proxy_relays_tcp_both_ways_with_half_close() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's half-close
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    proxy = ports.open_proxies([PortBinding(80, host_ip="127.0.0.1")])[0]
    await proxy.serve("127.0.0.1", target)
    try:
        payload = bytes(range(256)) * 8192  # 2 MiB: more than the relay buffers
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.published.host_port)
        writer.write(payload)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 30) == payload[::-1]
        writer.close()
    finally:
        await proxy.close()
        server.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.published.host_port)


async def test_proxy_refuses_when_the_guest_does() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    proxy = ports.open_proxies([PortBinding(80, host_ip="127.0.0.1")])[0]
    await proxy.serve("127.0.0.1", dead_port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.published.host_port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    finally:
        await proxy.close()


async def test_udp_proxy_relays_replies_to_each_peer() -> None:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(b"re:" + data, addr)

    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    proxy = ports.open_proxies([PortBinding(53, "udp", "127.0.0.1")])[0]
    await proxy.serve("127.0.0.1", echo.get_extra_info("sockname")[1])
    try:
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for index, peer in enumerate(peers):
            peer.settimeout(10)
            peer.sendto(f"peer{index}".encode(), ("127.0.0.1", proxy.published.host_port))
        replies = [await loop.run_in_executor(None, peer.recv, 100) for peer in peers]
        assert replies == [b"re:peer0", b"re:peer1"]
        for peer in peers:
            peer.close()
    finally:
        await proxy.close()
        echo.close()
