"""The DNS responder of a bridge network: pods resolve each other by name, as with docker's embedded DNS.

hyperd runs one `DnsServer` per bridge network, bound to the network's gateway address on UDP port 53; the
guests' ``/etc/resolv.conf`` names that address.  A question for a container name, pod name or network alias
of the network is answered here, authoritatively and with a short TTL (pods come and go); any other name is
forwarded to the host's resolvers and the reply relayed back.

The guests are untrusted, so every datagram is validated before anything acts on it: a query is at most 512
bytes with exactly one question, compression pointers may only point backwards (so a name cannot loop), names
are at most 255 octets, and the message must parse to its last byte.  A query that fails gets FORMERR (when its
header can be read) or nothing; no guest input raises into the event loop.  Forwarding is bounded (forwards in
flight in all and per guest address), every forward asks with a fresh random id from a fresh random port on a
socket connected to the server asked, and what is relayed is at most as large as the guest can take over UDP.

Choices where the RFCs leave room:

- A name this network knows, asked for any type but A: NOERROR with no answer (NODATA), so resolvers asking
  for AAAA move on at once instead of waiting for a timeout, and no SOA, so nobody caches the absence.
- An unknown single-label name: NXDOMAIN, never forwarded, as no public resolver can answer it meaningfully
  (a search domain turns it into a multi-label name, which is forwarded).
- An unknown name with no upstream servers to ask: SERVFAIL, as docker does; REFUSED would make some resolvers
  give up on this server for good.
- Opcodes other than QUERY: NOTIMP; classes other than IN: REFUSED.
- An upstream's SERVFAIL, REFUSED or NOTIMP: ask the next upstream, as glibc does between its nameservers; if
  none does better the last such reply is relayed.  All silent: SERVFAIL.
- An upstream reply larger than the guest can take (512 bytes, or the EDNS size it advertised, up to 1232):
  the header and question with TC set.  hyperd serves no TCP, so a guest cannot retry there; resolvers that
  send EDNS (systemd-resolved, dig, glibc with ``options edns0``) get the large replies whole.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import random
import secrets
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hyperd")

Lookup = Callable[[str], list[str]]
"""A lower-case name without the trailing dot -> the IPv4 addresses it has on this network ([] when unknown)."""

DNS_PORT = 53
TTL = 5
"""Seconds a resolver may cache an answer about a pod: short, because pods come and go."""
FORWARD_TIMEOUT = 2.0
"""Seconds to wait for one upstream server before asking the next."""
MAX_FORWARDS = 256
"""Forwarded queries in flight at once; past that a query gets SERVFAIL at once."""
MAX_FORWARDS_PER_CLIENT = 64
"""Forwarded queries in flight for one guest address, so one pod cannot starve the others of the above."""
MAX_QUERY = 512
"""The largest query accepted: plain DNS over UDP.  Larger datagrams are dropped unread."""
MAX_REPLY = 512
MAX_EDNS_REPLY = 1232
"""The most an EDNS query may ask for: the size that avoids IP fragmentation (DNS flag day 2020)."""

_HEADER = 12
_QR, _OPCODE, _AA, _TC, _RD, _RA, _CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
_TYPE_A, _TYPE_OPT, _CLASS_IN = 1, 41, 1
_RECORD_A = struct.Struct("!HHHIH")
"""An A record after its owner name, which is always a pointer to the question: 16 bytes with the address."""
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
"""The bytes of a label that can name a container; a name with any other byte is never looked up, so that a
label holding a dot cannot pass for two labels."""


class Rcode(enum.IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


_ASK_ANOTHER = frozenset({Rcode.SERVFAIL, Rcode.NOTIMP, Rcode.REFUSED})
"""An upstream replying one of these was asked in vain: the next one may do better."""


class _Malformed(Exception):
    """A datagram that is not a well-formed DNS message; never leaves this module."""


@dataclass(frozen=True)
class _Query:
    data: bytes
    id: int
    flags: int
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int
    question: bytes
    """The question section exactly as sent (it holds no compression pointer: nothing precedes it)."""
    payload: int
    """The largest reply the guest takes over UDP."""

    @property
    def name(self) -> str | None:
        """The name to look up, lower case; None when a label has a byte no container name has."""
        if not all(_PLAIN.issuperset(label) for label in self.labels):
            return None
        return ".".join(label.decode("ascii") for label in self.labels).lower()


def _read_name(data: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at ``offset``, and where the name ends in the message."""
    labels: list[bytes] = []
    length = 1  # on the wire, with the root label
    end: int | None = None
    floor = offset
    position = offset
    while True:
        if position >= len(data):
            raise _Malformed("name runs past the message")
        size = data[position]
        if size & 0xC0 == 0xC0:
            if position + 2 > len(data):
                raise _Malformed("compression pointer cut short")
            target = (size & 0x3F) << 8 | data[position + 1]
            # Strictly backwards, before where this run of labels began: every jump lands lower, so
            # following pointers ends within the message's length, and a loop is impossible.
            if not _HEADER <= target < floor:
                raise _Malformed("compression pointer not pointing backwards")
            if end is None:
                end = position + 2
            position = floor = target
            continue
        if size & 0xC0:
            raise _Malformed(f"label type {size >> 6:#x}")
        position += 1
        if size == 0:
            return tuple(labels), position if end is None else end
        length += size + 1
        if length > 255:
            raise _Malformed("name longer than 255 octets")
        if position + size > len(data):
            raise _Malformed("label runs past the message")
        labels.append(data[position:position + size])
        position += size


def _read_records(data: bytes, offset: int, answers: int, additional: int) -> int:
    """Check the records after the question run exactly to the end; the UDP size an OPT record asks for."""
    payload = MAX_REPLY
    seen_opt = False
    # Every record takes at least 11 bytes, so however large the counts, this ends within 47 rounds.
    for index in range(answers + additional):
        labels, offset = _read_name(data, offset)
        if offset + 10 > len(data):
            raise _Malformed("record cut short")
        rtype, rclass, _ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10 + rdlength
        if offset > len(data):
            raise _Malformed("record data runs past the message")
        if rtype == _TYPE_OPT:
            if seen_opt or labels or index < answers:
                raise _Malformed("misplaced OPT record")
            seen_opt = True
            payload = min(max(rclass, MAX_REPLY), MAX_EDNS_REPLY)
    if offset != len(data):
        raise _Malformed(f"{len(data) - offset} bytes after the last record")
    return payload


def _parse(data: bytes) -> _Query:
    """A query whose header has been read already (long enough, not a response, opcode QUERY)."""
    query_id, flags, questions, answers, authority, additional = struct.unpack_from("!6H", data)
    if questions != 1:
        raise _Malformed(f"{questions} questions")
    labels, end = _read_name(data, _HEADER)
    if end + 4 > len(data):
        raise _Malformed("question cut short")
    qtype, qclass = struct.unpack_from("!HH", data, end)
    payload = _read_records(data, end + 4, answers + authority, additional)
    return _Query(data, query_id, flags, labels, qtype, qclass, data[_HEADER:end + 4], payload)


def _header(query_id: int, flags: int, questions: int = 0, answers: int = 0) -> bytes:
    return struct.pack("!6H", query_id, flags, questions, answers, 0, 0)


def _answers_query(data: bytes, query_id: int, query: _Query) -> bool:
    """Whether an upstream's datagram is the reply to the query it was asked with ``query_id``."""
    if len(data) < _HEADER:
        return False
    reply_id: int
    flags: int
    reply_id, flags, questions = struct.unpack_from("!3H", data)
    if reply_id != query_id or not flags & _QR:
        return False
    if questions == 0:
        return flags & 0x0F != Rcode.NOERROR  # error replies may leave the question out
    if questions != 1:
        return False
    try:
        labels, end = _read_name(data, _HEADER)
    except _Malformed:
        return False
    if end + 4 > len(data):
        return False
    qtype, qclass = struct.unpack_from("!HH", data, end)
    same_name = [label.lower() for label in labels] == [label.lower() for label in query.labels]
    return same_name and (qtype, qclass) == (query.qtype, query.qclass)


def _upstream_address(text: str) -> tuple[str, int]:
    """``ADDRESS``, ``IPv4:PORT`` or ``[IPv6]:PORT`` (the port forms are for tests and odd setups)."""
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest.removeprefix(":")) if rest.startswith(":") else -1
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = int(rest) if rest.isdigit() else -1
    if not 0 < port < 65536:
        raise ValueError(f"invalid upstream DNS server {text!r}")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"invalid upstream DNS server {text!r}") from None


def upstream_servers(resolv_conf: str) -> list[str]:
    """The nameserver addresses of a resolv.conf text (IPv4 and IPv6), in order; comments and junk ignored.

    Addresses come back in their canonical form, each once; an IPv6 address keeps its ``%zone``.
    """
    servers: list[str] = []
    for line in resolv_conf.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            server = str(ipaddress.ip_address(fields[1]))
        except ValueError:
            continue
        if server not in servers:
            servers.append(server)
    return servers


class _Endpoint(asyncio.DatagramProtocol):
    """The server's socket, handing datagrams to its `DnsServer`."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.server._received(data, addr)
        except Exception:  # a bug here must not take the network's name resolution down with it
            log.exception("DNS: failed to handle a query from %s", addr[0])

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS: %s", exc)


class _Upstream(asyncio.DatagramProtocol):
    """One forward's socket to one upstream server, waiting for the reply that carries its query id."""

    def __init__(self, query_id: int, query: _Query, peer: tuple[Any, ...]) -> None:
        self.query_id = query_id
        self.query = query
        self.peer = peer
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # The socket is connected, so the kernel already drops other sources; checking again costs nothing.
        if not self.reply.done() and addr == self.peer and _answers_query(data, self.query_id, self.query):
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():  # such as ICMP port unreachable: no point waiting for this one
            self.reply.set_exception(exc)


class DnsServer:
    """Name resolution for the pods of one network, on one UDP socket; create it with `start`.

    Names ``lookup`` knows are answered here; other names with more than one label are forwarded to
    ``upstreams`` in order.  See the module's docstring for the replies chosen where the RFCs leave room.
    """

    def __init__(self, lookup: Lookup, upstreams: list[tuple[str, int]], timeout: float) -> None:
        self._lookup = lookup
        self._upstreams = upstreams
        self._timeout = timeout
        self._transport: asyncio.DatagramTransport | None = None
        self._port = 0
        self._forwards: set[asyncio.Task[None]] = set()
        self._pending: set[tuple[tuple[Any, ...], bytes]] = set()
        self._per_client: Counter[str] = Counter()

    @classmethod
    async def start(cls, address: str, lookup: Lookup, upstreams: Sequence[str], *, port: int = DNS_PORT,
                    timeout: float = FORWARD_TIMEOUT) -> DnsServer:
        """Serve on ``address``:``port`` (port 0: any free one) until `close`.

        ``upstreams`` are addresses as `upstream_servers` returns them; ``IPv4:PORT`` and ``[IPv6]:PORT`` name
        a port other than 53.  ``timeout`` is the seconds to wait for each upstream.  Raises `OSError` when the
        address cannot be bound, `ValueError` for an upstream that is no address.
        """
        targets = [_upstream_address(upstream) for upstream in upstreams]
        server = cls(lookup, targets, timeout)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Endpoint(server), local_addr=(address, port))
        server._transport = transport
        bound = transport.get_extra_info("sockname")
        server._port = bound[1]
        # Forwarding to ourselves would bounce every unknown name between our two sockets until the timeouts.
        itself = (ipaddress.ip_address(bound[0]), bound[1])
        for target in targets:
            if (ipaddress.ip_address(target[0]), target[1]) == itself:
                log.warning("DNS on %s:%d: not forwarding to itself", address, server._port)
        server._upstreams = [t for t in targets if (ipaddress.ip_address(t[0]), t[1]) != itself]
        return server

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return self._port

    def close(self) -> None:
        """Stop serving and cancel the forwards in flight; safe to call twice."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for task in list(self._forwards):
            task.cancel()

    # -- queries -------------------------------------------------------------------------

    def _received(self, data: bytes, client: tuple[Any, ...]) -> None:
        if not _HEADER <= len(data) <= MAX_QUERY:
            return
        query_id, flags = struct.unpack_from("!HH", data)
        if flags & _QR:
            return  # a response: answering it could start a loop with another server
        if flags & _OPCODE:
            self._send(self._header_reply(query_id, flags, Rcode.NOTIMP), client)
            return
        try:
            query = _parse(data)
        except _Malformed as err:
            log.debug("DNS: malformed query from %s: %s", client[0], err)
            self._send(self._header_reply(query_id, flags, Rcode.FORMERR), client)
            return
        if query.qclass != _CLASS_IN:
            self._send(self._reply(query, Rcode.REFUSED), client)
            return
        name = query.name
        if name:
            try:
                addresses = self._addresses(name)
            except Exception:  # the lookup is hyperd's, but a bug in it must not go unanswered
                log.exception("DNS: looking up %r failed", name)
                self._send(self._reply(query, Rcode.SERVFAIL), client)
                return
            if addresses:
                found = addresses if query.qtype == _TYPE_A else []
                self._send(self._reply(query, Rcode.NOERROR, authoritative=True, addresses=found), client)
                return
        if len(query.labels) == 1:
            self._send(self._reply(query, Rcode.NXDOMAIN, authoritative=True), client)
            return
        self._forward(query, client)

    def _addresses(self, name: str) -> list[ipaddress.IPv4Address]:
        """What ``lookup`` says, each once, shuffled so that the pods sharing an alias share the load."""
        found: dict[ipaddress.IPv4Address, None] = {}
        for text in self._lookup(name):
            try:
                found[ipaddress.IPv4Address(text)] = None
            except ValueError:
                log.debug("DNS: %r has the address %r, not an IPv4 address", name, text)
        addresses = list(found)
        random.shuffle(addresses)
        return addresses

    def _reply(self, query: _Query, rcode: Rcode, *, authoritative: bool = False,
               addresses: Sequence[ipaddress.IPv4Address] = ()) -> bytes:
        """A reply made here, echoing the question as sent."""
        room = (MAX_REPLY - _HEADER - len(query.question)) // (_RECORD_A.size + 4)
        # Dropping addresses beyond 512 bytes rather than setting TC: the guest has no TCP to retry over.
        addresses = addresses[:room]
        flags = _QR | query.flags & (_RD | _CD) | rcode
        if authoritative:
            flags |= _AA
        if self._upstreams:
            flags |= _RA
        records = b"".join(_RECORD_A.pack(0xC000 | _HEADER, _TYPE_A, _CLASS_IN, TTL, 4) + address.packed
                           for address in addresses)
        return _header(query.id, flags, 1, len(addresses)) + query.question + records

    def _header_reply(self, query_id: int, flags: int, rcode: Rcode) -> bytes:
        """A reply to a query that could not be read past its header."""
        flags = _QR | flags & (_OPCODE | _RD | _CD) | rcode | (_RA if self._upstreams else 0)
        return _header(query_id, flags)

    def _send(self, reply: bytes, client: tuple[Any, ...]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, client)

    # -- forwarding ----------------------------------------------------------------------

    def _forward(self, query: _Query, client: tuple[Any, ...]) -> None:
        if not self._upstreams:
            self._send(self._reply(query, Rcode.SERVFAIL), client)
            return
        key = (client, query.data)
        if key in self._pending:
            return  # the guest's resolver asking again: the forward under way answers it
        if len(self._forwards) >= MAX_FORWARDS or self._per_client[client[0]] >= MAX_FORWARDS_PER_CLIENT:
            self._send(self._reply(query, Rcode.SERVFAIL), client)
            return
        self._pending.add(key)
        self._per_client[client[0]] += 1
        task = asyncio.get_running_loop().create_task(self._relay(query, client))
        self._forwards.add(task)

        # A callback rather than `finally`: it runs even when the task is cancelled before it ever started.
        def done(task: asyncio.Task[None]) -> None:
            self._forwards.discard(task)
            self._pending.discard(key)
            self._per_client[client[0]] -= 1
            if self._per_client[client[0]] <= 0:
                del self._per_client[client[0]]
            if not task.cancelled() and task.exception() is not None:
                log.error("DNS: forwarding failed", exc_info=task.exception())

        task.add_done_callback(done)

    async def _relay(self, query: _Query, client: tuple[Any, ...]) -> None:
        refusal: bytes | None = None
        for upstream in self._upstreams:
            reply = await self._ask(upstream, query)
            if reply is None:
                continue
            if reply[3] & 0x0F not in _ASK_ANOTHER:
                self._send(self._fit(reply, query), client)
                return
            refusal = reply
        if refusal is not None:
            self._send(self._fit(refusal, query), client)
        else:
            self._send(self._reply(query, Rcode.SERVFAIL), client)

    async def _ask(self, upstream: tuple[str, int], query: _Query) -> bytes | None:
        """One upstream's reply to ``query``, or None when it fails or stays silent for the timeout."""
        loop = asyncio.get_running_loop()
        # A fresh id and a fresh port per question: a guest who sees its own query cannot guess either
        # to slip a forged reply to another guest's question.
        query_id = secrets.randbits(16)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as err:  # out of descriptors, or no IPv6 here
            log.debug("DNS: cannot ask %s: %s", upstream[0], err)
            return None
        try:
            sock.setblocking(False)
            sock.connect(upstream)
            peer = sock.getpeername()
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _Upstream(query_id, query, peer), sock=sock)
        except OSError as err:
            sock.close()
            log.debug("DNS: cannot ask %s: %s", upstream[0], err)
            return None
        except BaseException:
            sock.close()
            raise
        try:
            transport.sendto(struct.pack("!H", query_id) + query.data[2:])
            return await asyncio.wait_for(protocol.reply, self._timeout)
        except (OSError, TimeoutError) as err:
            log.debug("DNS: no reply from %s: %s", upstream[0], str(err) or "timed out")
            return None
        finally:
            transport.close()

    @staticmethod
    def _fit(reply: bytes, query: _Query) -> bytes:
        """An upstream's reply as the guest gets it: its own id and question, and no larger than it takes."""
        flags, questions = struct.unpack_from("!HH", reply, 2)
        if len(reply) > query.payload:
            return _header(query.id, flags | _TC, 1) + query.question
        if questions == 1:
            # The question matched ours but for case and is not compressed (nothing precedes it), so it
            # has our question's length: put back the guest's own spelling, which some resolvers check.
            end = _HEADER + len(query.question)
            return struct.pack("!H", query.id) + reply[2:_HEADER] + query.question + reply[end:]
        return struct.pack("!H", query.id) + reply[2:]
