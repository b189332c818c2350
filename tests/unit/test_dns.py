"""The network's DNS responder over real UDP on loopback: local answers, forwarding to fake upstream
servers, and the malformed datagrams an untrusted guest may send."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from hyperd.network import dns

A, AAAA, TXT, OPT = 1, 28, 16, 41
IN, CH = 1, 3
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = range(6)
QUICK = 0.2
"""The per-upstream timeout the forwarding tests start their servers with."""


def name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".") if label) + b"\0"


def query(text: str, qtype: int = A, *, qid: int = 0x1234, flags: int = RD, qclass: int = IN,
          additional: bytes = b"", arcount: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, 1, 0, 0, arcount) + name(text) + struct.pack("!HH", qtype, qclass) \
        + additional


def edns(size: int) -> bytes:
    """An OPT record asking for replies up to ``size`` bytes."""
    return b"\0" + struct.pack("!HHIH", OPT, size, 0, 0)


@dataclass
class Reply:
    id: int
    flags: int
    question: bytes
    answers: list[tuple[int, int, bytes]] = field(default_factory=list)
    """Type, TTL and data of each answer record."""
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def rcode(self) -> int:
        return self.flags & 0x0F

    @property
    def addresses(self) -> list[str]:
        return sorted(str(ipaddress.IPv4Address(data)) for rtype, _, data in self.answers if rtype == A)


def skip_name(data: bytes, offset: int) -> int:
    while data[offset]:
        if data[offset] & 0xC0 == 0xC0:
            return offset + 2
        offset += data[offset] + 1
    return offset + 1


def parse(data: bytes) -> Reply:
    qid, flags, *counts = struct.unpack_from("!6H", data)
    offset = 12
    for _ in range(counts[0]):
        offset = skip_name(data, offset) + 4
    reply = Reply(qid, flags, data[12:offset], counts=(counts[0], counts[1], counts[2], counts[3]))
    for _ in range(counts[1]):
        offset = skip_name(data, offset)
        rtype, _rclass, ttl, size = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        reply.answers.append((rtype, ttl, data[offset:offset + size]))
        offset += size
    return reply


def answer(packet: bytes, addresses: Sequence[str], *, rcode: int = NOERROR, qid: int | None = None) -> bytes:
    """What a resolver replies to ``packet``: its question, then an A record per address."""
    end = skip_name(packet, 12) + 4
    records = b"".join(struct.pack("!HHHIH", 0xC00C, A, IN, 300, 4) + ipaddress.IPv4Address(a).packed
                       for a in addresses)
    header = struct.pack("!6H", packet[0] << 8 | packet[1] if qid is None else qid, QR | RD | RA | rcode, 1,
                         len(addresses), 0, 0)
    return header + packet[12:end] + records


async def exchange(server: dns.DnsServer, packet: bytes, wait: float = 3.0) -> bytes | None:
    """Send ``packet`` from a fresh port; the first datagram back, or None after ``wait`` seconds."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
            if not received.done():
                received.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", server.port))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(received, wait)
    except TimeoutError:
        return None
    finally:
        transport.close()


async def ask(server: dns.DnsServer, packet: bytes, wait: float = 3.0) -> Reply:
    data = await exchange(server, packet, wait)
    assert data is not None, "no reply"
    return parse(data)


class Upstream(asyncio.DatagramProtocol):
    """A fake resolver on loopback: keeps what it is asked, replies what ``respond`` makes of it."""

    def __init__(self, respond: Callable[[bytes], Sequence[bytes]]) -> None:
        self.respond = respond
        self.queries: list[bytes] = []
        self.sources: list[tuple[Any, ...]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # not a subclass of it in 3.11

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queries.append(data)
        self.sources.append(addr)
        assert self.transport is not None
        for reply in self.respond(data):
            self.transport.sendto(reply, addr)

    @property
    def address(self) -> str:
        assert self.transport is not None
        return "{}:{}".format(*self.transport.get_extra_info("sockname"))


def silent(_packet: bytes) -> list[bytes]:
    return []


Serve = Callable[..., Awaitable[dns.DnsServer]]
Resolver = Callable[[Callable[[bytes], Sequence[bytes]]], Awaitable[Upstream]]

NAMES = {"web": ["10.88.0.2", "10.88.0.3"], "db": ["10.88.0.4"], "db.internal": ["10.88.0.4"]}


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start DnsServers on 127.0.0.1 (``NAMES`` unless told otherwise), closed after the test."""
    servers: list[dns.DnsServer] = []

    async def start(upstreams: Sequence[str] = (), lookup: dns.Lookup | None = None,
                    timeout: float = QUICK) -> dns.DnsServer:
        server = await dns.DnsServer.start("127.0.0.1", lookup or (lambda n: NAMES.get(n, [])), upstreams,
                                           port=0, timeout=timeout)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def resolver() -> AsyncIterator[Resolver]:
    """Start fake upstream resolvers on 127.0.0.1, closed after the test."""
    transports: list[asyncio.DatagramTransport] = []

    async def start(respond: Callable[[bytes], Sequence[bytes]]) -> Upstream:
        transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: Upstream(respond), local_addr=("127.0.0.1", 0))
        transports.append(transport)
        return protocol

    yield start
    for transport in transports:
        transport.close()


# -- local answers -------------------------------------------------------------------------

async def test_a_query_for_a_pod_gets_every_address_authoritatively(serve: Serve, resolver: Resolver) -> None:
    upstream = await resolver(silent)
    server = await serve([upstream.address])
    packet = query("web", qid=0xBEEF)
    reply = await ask(server, packet)
    assert reply.id == 0xBEEF
    assert reply.flags & (QR | AA | RD | RA) == QR | AA | RD | RA
    assert reply.rcode == NOERROR
    assert reply.question == packet[12:]
    assert reply.addresses == ["10.88.0.2", "10.88.0.3"]
    assert {ttl for _, ttl, _ in reply.answers} == {dns.TTL}
    assert upstream.queries == []


async def test_without_upstreams_recursion_is_not_offered(serve: Serve) -> None:
    server = await serve()
    reply = await ask(server, query("db"))
    assert reply.addresses == ["10.88.0.4"]
    assert not reply.flags & RA


async def test_names_match_whatever_their_case_and_the_question_comes_back_as_sent(serve: Serve) -> None:
    asked: list[str] = []

    def lookup(text: str) -> list[str]:
        asked.append(text)
        return NAMES.get(text, [])

    server = await serve(lookup=lookup)
    packet = query("DB.Internal.")
    reply = await ask(server, packet)
    assert asked == ["db.internal"]
    assert reply.question == packet[12:]
    assert reply.addresses == ["10.88.0.4"]


@pytest.mark.parametrize("qtype", [AAAA, TXT])
async def test_other_types_for_a_pod_get_no_data_at_once(serve: Serve, qtype: int) -> None:
    server = await serve()
    reply = await ask(server, query("web", qtype))
    assert reply.rcode == NOERROR
    assert reply.flags & AA
    assert reply.counts == (1, 0, 0, 0)


async def test_unknown_single_label_is_nxdomain_and_not_forwarded(serve: Serve, resolver: Resolver) -> None:
    upstream = await resolver(lambda packet: [answer(packet, ["192.0.2.1"])])
    server = await serve([upstream.address])
    reply = await ask(server, query("nosuchpod"))
    assert reply.rcode == NXDOMAIN
    assert reply.answers == []
    assert upstream.queries == []


async def test_a_label_holding_a_dot_is_not_taken_for_two_labels(serve: Serve) -> None:
    server = await serve()
    packet = struct.pack("!6H", 7, RD, 1, 0, 0, 0) + b"\x0bdb.internal\0" + struct.pack("!HH", A, IN)
    reply = await ask(server, packet)
    assert reply.rcode == NXDOMAIN


async def test_a_failing_lookup_is_servfail_and_the_server_carries_on(serve: Serve) -> None:
    def lookup(text: str) -> list[str]:
        if text == "boom":
            raise RuntimeError("bug")
        return NAMES.get(text, [])

    server = await serve(lookup=lookup)
    assert (await ask(server, query("boom"))).rcode == SERVFAIL
    assert (await ask(server, query("web"))).addresses == ["10.88.0.2", "10.88.0.3"]


async def test_many_addresses_are_cut_to_fit_512_bytes(serve: Serve) -> None:
    many = [f"10.88.1.{i}" for i in range(1, 100)]
    server = await serve(lookup=lambda text: many)
    data = await exchange(server, query("crowd"))
    assert data is not None and len(data) <= 512
    reply = parse(data)
    assert not reply.flags & TC
    assert 20 < len(reply.answers) < 99
    assert set(reply.addresses) <= set(many)


# -- forwarding ----------------------------------------------------------------------------

async def test_unknown_names_are_forwarded_and_the_reply_relayed_with_the_guests_id(
        serve: Serve, resolver: Resolver) -> None:
    upstream = await resolver(lambda packet: [answer(packet, ["192.0.2.7"])])
    server = await serve([upstream.address])
    packet = query("Example.COM", qid=0x4242)
    reply = await ask(server, packet)
    assert reply.id == 0x4242
    assert reply.rcode == NOERROR
    assert reply.question == packet[12:]
    assert reply.addresses == ["192.0.2.7"]
    assert not reply.flags & AA
    [forwarded] = upstream.queries
    assert forwarded[2:] == packet[2:]  # the same query, under an id of the server's own


async def test_a_silent_upstream_is_passed_over_for_the_next(serve: Serve, resolver: Resolver) -> None:
    first = await resolver(silent)
    second = await resolver(lambda packet: [answer(packet, ["192.0.2.8"])])
    server = await serve([first.address, second.address])
    reply = await ask(server, query("example.com"))
    assert reply.addresses == ["192.0.2.8"]
    assert len(first.queries) == len(second.queries) == 1


async def test_a_refusing_upstream_is_passed_over_for_the_next(serve: Serve, resolver: Resolver) -> None:
    first = await resolver(lambda packet: [answer(packet, [], rcode=REFUSED)])
    second = await resolver(lambda packet: [answer(packet, ["192.0.2.9"])])
    server = await serve([first.address, second.address], timeout=5)
    start = time.monotonic()
    reply = await ask(server, query("example.com"))
    assert reply.addresses == ["192.0.2.9"]
    assert time.monotonic() - start < 2  # on at once, not after the timeout


async def test_all_upstreams_silent_is_servfail_after_the_timeouts(serve: Serve, resolver: Resolver) -> None:
    upstreams = [await resolver(silent), await resolver(silent)]
    server = await serve([u.address for u in upstreams])
    start = time.monotonic()
    packet = query("example.com", qid=99)
    reply = await ask(server, packet)
    assert time.monotonic() - start >= 2 * QUICK * 0.9
    assert (reply.id, reply.rcode, reply.question) == (99, SERVFAIL, packet[12:])
    assert [len(u.queries) for u in upstreams] == [1, 1]


async def test_an_upstream_refusing_connections_is_passed_over_at_once(serve: Serve, resolver: Resolver) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead = "{}:{}".format(*closed.getsockname())
    closed.close()
    alive = await resolver(lambda packet: [answer(packet, ["192.0.2.10"])])
    server = await serve([dead, alive.address], timeout=5)
    start = time.monotonic()
    assert (await ask(server, query("example.com"))).addresses == ["192.0.2.10"]
    assert time.monotonic() - start < 2


async def test_no_upstreams_is_servfail(serve: Serve) -> None:
    reply = await ask(await serve(), query("example.com"))
    assert reply.rcode == SERVFAIL
    assert reply.answers == []


async def test_replies_with_the_wrong_id_or_question_are_ignored(serve: Serve, resolver: Resolver) -> None:
    def respond(packet: bytes) -> list[bytes]:
        qid = packet[0] << 8 | packet[1]
        other_question = answer(query("evil.example", qid=qid), ["192.0.2.66"])
        return [answer(packet, ["192.0.2.66"], qid=qid ^ 1), other_question, answer(packet, ["192.0.2.11"])]

    upstream = await resolver(respond)
    server = await serve([upstream.address])
    assert (await ask(server, query("example.com"))).addresses == ["192.0.2.11"]


async def test_replies_from_another_address_are_ignored(serve: Serve, resolver: Resolver) -> None:
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    upstream: Upstream | None = None

    def respond(packet: bytes) -> list[bytes]:
        assert upstream is not None and upstream.transport is not None
        # A forged reply, right id, question and port, gets there first; the real one a moment later.
        spoofer.sendto(answer(packet, ["192.0.2.66"]), upstream.sources[-1])
        loop.call_later(0.05, upstream.transport.sendto, answer(packet, ["192.0.2.12"]), upstream.sources[-1])
        return []

    upstream = await resolver(respond)
    server = await serve([upstream.address])
    try:
        assert (await ask(server, query("example.com"))).addresses == ["192.0.2.12"]
    finally:
        spoofer.close()


async def test_each_forward_asks_with_a_fresh_id_and_port(serve: Serve, resolver: Resolver) -> None:
    upstream = await resolver(lambda packet: [answer(packet, ["192.0.2.13"])])
    server = await serve([upstream.address])
    for _ in range(8):
        assert (await ask(server, query("example.com", qid=1))).id == 1
    assert len({q[:2] for q in upstream.queries}) > 1
    assert len({source[1] for source in upstream.sources}) > 4  # ephemeral ports may, rarely, come round again


async def test_an_oversize_upstream_reply_is_truncated_to_what_the_guest_takes(
        serve: Serve, resolver: Resolver) -> None:
    many = [f"192.0.2.{i}" for i in range(1, 60)]  # 59 records: 12 + 17 + 59 * 16 = 973 bytes
    upstream = await resolver(lambda packet: [answer(packet, many)])
    server = await serve([upstream.address])
    packet = query("big.example", qid=5)
    data = await exchange(server, packet)
    assert data is not None and len(data) <= 512
    reply = parse(data)
    assert (reply.id, reply.question, reply.counts) == (5, packet[12:], (1, 0, 0, 0))
    assert reply.flags & TC
    # A guest that speaks EDNS takes it whole.
    data = await exchange(server, query("big.example", qid=6, additional=edns(4096), arcount=1))
    assert data is not None and len(data) > 512
    reply = parse(data)
    assert not reply.flags & TC
    assert reply.id == 6
    assert reply.addresses == sorted(many)


async def test_a_retransmitted_query_is_forwarded_once(serve: Serve, resolver: Resolver) -> None:
    loop = asyncio.get_running_loop()
    upstream: Upstream | None = None

    def respond(packet: bytes) -> list[bytes]:
        assert upstream is not None and upstream.transport is not None
        loop.call_later(0.2, upstream.transport.sendto, answer(packet, ["192.0.2.14"]), upstream.sources[-1])
        return []

    upstream = await resolver(respond)
    server = await serve([upstream.address], timeout=2)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    client.connect(("127.0.0.1", server.port))
    try:
        packet = query("example.com", qid=77)
        client.send(packet)
        await asyncio.sleep(0.05)
        client.send(packet)
        data = await asyncio.wait_for(loop.sock_recv(client, 1024), 3)
        assert parse(data).addresses == ["192.0.2.14"]
        assert len(upstream.queries) == 1
    finally:
        client.close()


@pytest.mark.parametrize(("total", "per_client"), [(100, 3), (3, 100)])
async def test_forwards_in_flight_are_bounded(serve: Serve, resolver: Resolver, monkeypatch: pytest.MonkeyPatch,
                                              total: int, per_client: int) -> None:
    monkeypatch.setattr(dns, "MAX_FORWARDS", total)
    monkeypatch.setattr(dns, "MAX_FORWARDS_PER_CLIENT", per_client)
    upstream = await resolver(silent)
    server = await serve([upstream.address], timeout=0.5)
    waiting = [asyncio.create_task(ask(server, query(f"n{i}.example"))) for i in range(3)]
    while len(upstream.queries) < 3:
        await asyncio.sleep(0.01)
    start = time.monotonic()
    reply = await ask(server, query("one.more.example", qid=3))
    assert (reply.id, reply.rcode) == (3, SERVFAIL)
    assert time.monotonic() - start < 0.4  # turned down at once, not after the timeout
    assert len(upstream.queries) == 3
    assert [r.rcode for r in await asyncio.gather(*waiting)] == [SERVFAIL] * 3
    # The timed-out forwards gave their places back.
    assert (await ask(server, query("later.example"))).rcode == SERVFAIL
    assert len(upstream.queries) == 4


async def test_close_stops_serving_cancels_forwards_and_may_be_repeated(serve: Serve, resolver: Resolver) -> None:
    upstream = await resolver(silent)
    server = await serve([upstream.address], timeout=30)
    waiting = asyncio.create_task(exchange(server, query("example.com"), wait=0.5))
    while not upstream.queries:
        await asyncio.sleep(0.01)
    forwards = [t for t in asyncio.all_tasks() if "_relay" in repr(t.get_coro())]
    assert len(forwards) == 1
    server.close()
    server.close()
    assert await waiting is None
    assert forwards[0].cancelled()
    # The port is free again.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", server.port))
    sock.close()


# -- malformed datagrams -------------------------------------------------------------------

def header(qid: int = 0x1234, flags: int = RD, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


TAIL = struct.pack("!HH", A, IN)
FORMERRS = {
    "no question": header(qd=0),
    "two questions": header(qd=2) + name("web") + TAIL + name("db") + TAIL,
    "label past the end": header() + b"\x3fweb\0" + TAIL,
    "no root label": header() + b"\x03web",
    "question cut short": header() + name("web") + b"\0\1",
    "reserved label type": header() + b"\x43web\0" + TAIL,
    "pointer to itself": header() + b"\xc0\x0c" + TAIL,
    "pointer into the header": header() + b"\xc0\x02" + TAIL,
    "pointer forwards": header() + b"\xc0\x0e\0" + TAIL,
    "pointer cut short": header() + b"\x03web\xc0",
    # The additional record's name points back at itself through the question's name.
    "pointer loop in a record": header(ar=1) + b"\x03web\0" + TAIL + b"\x01a\xc0\x15" + struct.pack("!HHIH", A, IN,
                                                                                                   0, 0),
    "name over 255 octets": header() + b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\0" + TAIL,
    "record count past the end": header(ar=3) + name("web") + TAIL + edns(1232),
    "record data past the end": header(ar=1) + name("web") + TAIL + b"\0" + struct.pack("!HHIH", TXT, IN, 0, 50),
    "trailing bytes": header() + name("web") + TAIL + b"junk",
    "two OPT records": header(ar=2) + name("web") + TAIL + edns(1232) + edns(1232),
    "OPT among the answers": header(an=1) + name("web") + TAIL + edns(1232),
}


@pytest.fixture
def watchdog() -> Iterator[None]:
    """Turn a hung event loop (a parser going round a pointer loop) into a failing test rather than a stuck run."""
    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("the event loop hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("watchdog")
@pytest.mark.parametrize("packet", list(FORMERRS.values()), ids=list(FORMERRS))
async def test_malformed_queries_get_formerr_and_the_server_carries_on(serve: Serve, packet: bytes) -> None:
    server = await serve()
    data = await exchange(server, packet)
    assert data is not None
    reply = parse(data)
    assert (reply.id, reply.rcode, reply.counts) == (0x1234, FORMERR, (0, 0, 0, 0))
    assert reply.flags & QR
    assert len(data) == 12
    assert (await ask(server, query("web"))).addresses == ["10.88.0.2", "10.88.0.3"]


DROPPED = {
    "empty": b"",
    "short header": header()[:11],
    "oversize": query("web", additional=edns(1232) + b"\0" * 600),
    "a response": answer(query("web"), ["10.0.0.1"]),
}


@pytest.mark.parametrize("packet", list(DROPPED.values()), ids=list(DROPPED))
async def test_unreadable_datagrams_and_responses_are_dropped(serve: Serve, packet: bytes) -> None:
    server = await serve()
    assert await exchange(server, packet, wait=0.3) is None
    assert (await ask(server, query("web"))).addresses == ["10.88.0.2", "10.88.0.3"]


async def test_well_formed_compression_in_a_record_is_accepted(serve: Serve) -> None:
    # An additional record named by a pointer to the question: odd in a query, but valid.
    packet = header(ar=1) + name("web") + TAIL + b"\xc0\x0c" + struct.pack("!HHIH", TXT, IN, 0, 2) + b"\x01x"
    reply = await ask(await serve(), packet)
    assert reply.rcode == NOERROR
    assert reply.addresses == ["10.88.0.2", "10.88.0.3"]


@pytest.mark.parametrize(("packet", "rcode"), [
    (query("web", flags=2 << 11), NOTIMP),  # opcode STATUS
    (query("web", qclass=CH), REFUSED),
])
async def test_other_opcodes_and_classes_are_turned_down(serve: Serve, packet: bytes, rcode: int) -> None:
    reply = await ask(await serve(), packet)
    assert (reply.id, reply.rcode) == (0x1234, rcode)
    assert reply.answers == []


@pytest.mark.usefixtures("watchdog")
async def test_a_flood_of_garbage_leaves_the_server_answering(serve: Serve) -> None:
    server = await serve()
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for size in range(0, 700, 7):
            garbage.sendto(bytes((size * 31 + i * 17) & 0xFF for i in range(size)), ("127.0.0.1", server.port))
    finally:
        garbage.close()
    assert (await ask(server, query("web"))).addresses == ["10.88.0.2", "10.88.0.3"]


# -- resolv.conf ---------------------------------------------------------------------------

def test_upstream_servers_reads_nameservers_in_order() -> None:
    text = """\
# Generated by NetworkManager
search example.com
nameserver 192.0.2.53
  nameserver 2001:DB8::1   # trailing comment
;nameserver 198.51.100.1
#nameserver 198.51.100.2
nameserver fe80::1%eth0
nameserver
nameserver not-an-address
nameserver 192.0.2.300
nameservers 198.51.100.3
nameserver 192.0.2.53
options edns0 trust-ad
nameserver 127.0.0.53;comment
"""
    assert dns.upstream_servers(text) == ["192.0.2.53", "2001:db8::1", "fe80::1%eth0", "127.0.0.53"]
    assert dns.upstream_servers("") == []


async def test_upstreams_must_be_addresses() -> None:
    with pytest.raises(ValueError, match=r"invalid upstream DNS server 'dns\.example'"):
        await dns.DnsServer.start("127.0.0.1", lambda _: [], ["dns.example"], port=0)
    with pytest.raises(ValueError, match="invalid upstream"):
        await dns.DnsServer.start("127.0.0.1", lambda _: [], ["192.0.2.1:99999"], port=0)
