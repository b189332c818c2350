"""``Networks``: the networks hyperd knows, and each pod's attachment to them.

A bridge network's bridge, its DNS responder and its rules exist only while a pod uses the
network: the first pod brings them up, the last one's end takes them down.  So a host
where no pod runs has no hyperd bridge, tap, address or rule, and a daemon that starts
after a crash first removes whatever the crashed one left (``reclaim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from hyperd.errors import Conflict, InvalidArgument, NotFound
from hyperd.network import (
    DEFAULT_BRIDGE,
    USER_DNS,
    USER_GATEWAY,
    USER_GUEST,
    USER_SUBNET,
    Driver,
    Endpoint,
    Network,
    builtin_id,
    dns,
    link,
    nft,
    ports,
)
from hyperd.network.ipam import Ipam, free_subnet
from hyperd.vm import Nic

log = logging.getLogger("hyperd")

MTU = 1500
RESOLV_CONF = Path("/etc/resolv.conf")
HOSTS_HEADER = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class Wiring:
    """What a container asked of the network (from its spec)."""

    container_id: str
    names: tuple[str, ...]
    """The names other pods resolve it by: its name, short id and aliases."""
    mode: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[ports.PortBinding, ...]
    hostname: str
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()


@dataclass
class Joined:
    """One endpoint in use: the network, the address leased and the tap that carries it."""

    network: Network
    address: ipaddress.IPv4Interface
    mac: str
    tap: link.Tap | None = None


@dataclass(frozen=True)
class Member:
    """A running pod on a network: the names it answers to there, its address and MAC."""

    names: tuple[str, ...]
    address: ipaddress.IPv4Interface
    mac: str


@dataclass
class Attachment:
    """A pod's networking for one run; ``Networks.detach`` undoes all of it."""

    wiring: Wiring
    joined: list[Joined] = field(default_factory=list)
    proxies: list[ports.Proxy] = field(default_factory=list)
    user_forwards: list[ports.Published] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    interfaces: list[dict[str, object]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def published(self) -> list[ports.Published]:
        return [proxy.published for proxy in self.proxies] + self.user_forwards

    def settings(self) -> dict[str, object]:
        """For inspect: the addresses of this run, by network name."""
        found: dict[str, object] = {
            j.network.name: {"NetworkID": j.network.id, "IPAddress": str(j.address.ip),
                             "IPPrefixLen": j.address.network.prefixlen, "Gateway": j.network.gateway,
                             "MacAddress": j.mac} for j in self.joined}
        if self.wiring.mode == "user":
            found["user"] = {"NetworkID": builtin_id("user"), "IPAddress": USER_GUEST, "IPPrefixLen": 24,
                             "Gateway": USER_GATEWAY, "MacAddress": self.nics[0].mac}
        return found


class Networks:
    def __init__(self, db: Path, bip: str, enabled: bool) -> None:
        self.ipam = Ipam(db)
        gateway = ipaddress.IPv4Interface(bip)
        self.default_mode = "bridge" if enabled else "none"
        self._builtin = {
            "bridge": Network(builtin_id("bridge"), "bridge", Driver.BRIDGE, str(gateway.network), str(gateway.ip),
                              DEFAULT_BRIDGE, created=0.0, builtin=True),
            "none": Network(builtin_id("none"), "none", Driver.NULL, created=0.0, builtin=True),
            "user": Network(builtin_id("user"), "user", Driver.USER, USER_SUBNET, USER_GATEWAY, created=0.0,
                            builtin=True),
        }
        if not enabled:
            del self._builtin["bridge"]
        self._lock = asyncio.Lock()
        self._members: dict[str, dict[str, Member]] = {}
        """Network id -> container id -> its member while its pod runs."""
        self._forwards: dict[str, list[nft.Forward]] = {}
        self._dns: dict[str, dns.DnsServer] = {}

    # -- the networks -----------------------------------------------------------------

    def list(self) -> list[Network]:
        return [*self._builtin.values(), *sorted(self.ipam.networks(), key=lambda n: n.created)]

    def get(self, ref: str) -> Network:
        """By name, full id or unique id prefix, as docker finds networks."""
        every = self.list()
        for network in every:
            if ref in (network.name, network.id):
                return network
        matches = [n for n in every if ref and n.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"network {ref} is ambiguous ({len(matches)} matches found on id)")
        raise NotFound(f"network {ref} not found")

    async def create(self, name: str, subnet: str = "", gateway: str = "",
                     labels: dict[str, str] | None = None) -> Network:
        if not name or not name[0].isalnum() or not set(name) <= NAME_CHARS or len(name) > 128:
            raise InvalidArgument(f'invalid network name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
        if any(n.name == name for n in self.list()):
            raise Conflict(f"network with name {name} already exists")
        taken = [ipaddress.IPv4Network(n.subnet) for n in self.list() if n.driver is Driver.BRIDGE]
        if subnet:
            try:
                net = ipaddress.IPv4Network(subnet, strict=True)
            except ValueError as err:
                raise InvalidArgument(f"invalid subnet {subnet!r}: {err}") from None
            if net.num_addresses < 4:
                raise InvalidArgument(f"subnet {net} is too small: pods need at least a /30")
            if any(net.overlaps(other) for other in taken):
                raise Conflict(f"subnet {net} overlaps the subnet of another network")
        else:
            net = free_subnet([*taken, *await link.routed_networks()])
        if gateway:
            try:
                gate = ipaddress.IPv4Address(gateway)
            except ValueError:
                raise InvalidArgument(f"invalid gateway {gateway!r}") from None
            if gate not in net or gate in (net.network_address, net.broadcast_address):
                raise InvalidArgument(f"gateway {gate} is not a host address of subnet {net}")
        else:
            gate = net.network_address + 1
        network_id = secrets.token_hex(32)
        network = Network(network_id, name, Driver.BRIDGE, str(net), str(gate),
                          f"{link.BRIDGE_PREFIX}{network_id[:12]}", labels=dict(labels or {}))
        self.ipam.add(network)
        return network

    def remove(self, ref: str) -> Network:
        network = self.get(ref)
        users = self._members.get(network.id)
        if users:
            raise Conflict(f"error while removing network: network {network.name} id {network.id} has active "
                           f"endpoints ({len(users)} running container{'s' if len(users) > 1 else ''})")
        self.ipam.remove(network.id)
        return network

    def members(self, network: Network) -> dict[str, Member]:
        """Container id -> member, of the pods on ``network`` now."""
        return dict(self._members.get(network.id, {}))

    def endpoint(self, ref: str, aliases: tuple[str, ...] = (), ip: str = "", mac: str = "") -> Endpoint:
        """A container's endpoint on a bridge network named by the user, checked now (at create)."""
        network = self.get(ref)
        if network.driver is not Driver.BRIDGE:
            raise InvalidArgument(f"container cannot be connected to network {network.name} and others: "
                                  f"{network.name} gives a pod its whole network")
        if ip:
            try:
                address = ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidArgument(f"invalid IPv4 address {ip!r}") from None
            if network.builtin:
                raise InvalidArgument("user specified IP address is supported on user defined networks only")
            if address not in ipaddress.IPv4Network(network.subnet):
                raise InvalidArgument(f"address {address} is not in network {network.name}'s subnet "
                                      f"{network.subnet}")
        if mac and not _valid_mac(mac):
            raise InvalidArgument(f"invalid MAC address {mac!r}")
        return Endpoint(network.id, aliases, ip, mac.lower())

    # -- start-up ---------------------------------------------------------------------

    async def reclaim(self) -> None:
        """At start-up, before any pod: remove the bridges and rules a previous hyperd left behind."""
        self.ipam.release_all()  # no pod outlives its daemon
        names = [n.bridge for n in self.list() if n.driver is Driver.BRIDGE]
        for name in {*names, *await link.bridges(link.BRIDGE_PREFIX)}:
            await link.remove_bridge(name)
        with contextlib.suppress(nft.RulesError):  # no nft: there can be no rules of ours either
            await nft.apply([], [])

    # -- a pod's attachment -----------------------------------------------------------

    async def attach(self, wiring: Wiring) -> Attachment:
        """Everything a pod needs before its VM boots; nothing is left behind if any of it fails."""
        attachment = Attachment(wiring)
        try:
            if wiring.mode == "user":
                self._attach_user(attachment)
            elif wiring.endpoints:
                async with self._lock:
                    await self._attach_bridges(attachment)
            attachment.files = self._files(attachment)
        except BaseException:
            await self.detach(attachment)
            raise
        return attachment

    def _attach_user(self, attachment: Attachment) -> None:
        # QEMU binds the forwarded ports itself: each is bound here first only to pick a
        # free port (and to fail with docker's message); the window before QEMU binds it is small.
        forwards = []
        for proxy in ports.open_proxies(list(attachment.wiring.ports)):
            forwards.append(proxy.published)
            proxy.sock.close()
        attachment.user_forwards = forwards
        mac = link.random_mac()
        attachment.nics.append(Nic(mac=mac, forwards=tuple(forwards)))
        attachment.interfaces.append({"mac": mac, "address": f"{USER_GUEST}/24", "gateway": USER_GATEWAY,
                                      "mtu": MTU})

    async def _attach_bridges(self, attachment: Attachment) -> None:
        wiring = attachment.wiring
        for index, endpoint in enumerate(wiring.endpoints):
            network = self.get(endpoint.network)
            first_user = not self._members.get(network.id)
            if first_user:
                await self._bring_up(network)
            self._members.setdefault(network.id, {})
            address = self.ipam.lease(network, wiring.container_id, endpoint.ip)
            prefix = ipaddress.IPv4Network(network.subnet).prefixlen
            joined = Joined(network, ipaddress.IPv4Interface(f"{address}/{prefix}"), endpoint.mac or link.random_mac())
            attachment.joined.append(joined)
            self._members[network.id][wiring.container_id] = Member(
                (*wiring.names, *endpoint.aliases), joined.address, joined.mac)
            joined.tap = await link.Tap.open(f"{link.TAP_PREFIX}{wiring.container_id[:11]}{index}", network.bridge)
            attachment.nics.append(Nic(mac=joined.mac, tap_fd=joined.tap.fd))
            attachment.interfaces.append({"mac": joined.mac, "address": str(joined.address), "mtu": MTU,
                                          **({"gateway": network.gateway} if index == 0 else {})})
        attachment.proxies = ports.open_proxies(list(wiring.ports))
        first = attachment.joined[0]
        self._forwards[wiring.container_id] = [
            nft.Forward(p.protocol, p.host_ip if p.host_ip != "0.0.0.0" else "", p.host_port,
                        str(first.address.ip), p.container_port, first.network.bridge)
            for p in attachment.published]
        await self._apply_rules()

    async def _bring_up(self, network: Network) -> None:
        gateway = ipaddress.IPv4Interface(f"{network.gateway}/{ipaddress.IPv4Network(network.subnet).prefixlen}")
        try:
            await link.ensure_bridge(network.bridge, gateway, MTU)
        except BaseException:
            await link.remove_bridge(network.bridge)
            raise
        try:
            upstreams = dns.upstream_servers(RESOLV_CONF.read_text())
        except OSError:
            upstreams = []
        try:
            self._dns[network.id] = await dns.DnsServer.start(network.gateway, self._lookup(network.id), upstreams)
        except OSError as err:
            log.warning("no name resolution on network %s: cannot serve DNS on %s:53: %s", network.name,
                        network.gateway, err.strerror or err)

    def _lookup(self, network_id: str) -> dns.Lookup:
        def lookup(name: str) -> list[str]:
            members = self._members.get(network_id, {}).values()
            return [str(m.address.ip) for m in members if name in {n.lower() for n in m.names}]
        return lookup

    async def serve(self, attachment: Attachment) -> None:
        """Once the guest has its address: start serving its published ports."""
        if attachment.proxies:
            guest = str(attachment.joined[0].address.ip)
            for proxy in attachment.proxies:
                await proxy.serve(guest)

    async def detach(self, attachment: Attachment) -> None:
        """Undo ``attach``; safe to call twice, and after a partial attach."""
        for proxy in attachment.proxies:
            await proxy.close()
        attachment.proxies = []
        if not attachment.joined and attachment.wiring.container_id not in self._forwards:
            return
        async with self._lock:
            cid = attachment.wiring.container_id
            self._forwards.pop(cid, None)
            for joined in attachment.joined:
                if joined.tap is not None:
                    joined.tap.close()
                members = self._members.get(joined.network.id, {})
                members.pop(cid, None)
                if not members:
                    self._members.pop(joined.network.id, None)
                    server = self._dns.pop(joined.network.id, None)
                    if server is not None:
                        server.close()
                    try:
                        await link.remove_bridge(joined.network.bridge)
                    except link.NetworkSetupError as err:
                        log.warning("%s", err)
            attachment.joined = []
            self.ipam.release(cid)
            try:
                await self._apply_rules()
            except nft.RulesError as err:
                log.warning("%s", err)

    async def _apply_rules(self) -> None:
        active = [self.get(network_id) for network_id in self._members]
        bridges = [nft.Bridge(n.bridge, ipaddress.IPv4Network(n.subnet)) for n in active]
        await nft.apply(bridges, [fwd for fwds in self._forwards.values() for fwd in fwds])

    # -- the files that name things in the container ------------------------------------

    def _files(self, attachment: Attachment) -> dict[str, str]:
        wiring = attachment.wiring
        hosts = HOSTS_HEADER
        if attachment.joined:
            hosts += f"{attachment.joined[0].address.ip}\t{wiring.hostname}\n"
        elif wiring.mode == "user":
            hosts += f"{USER_GUEST}\t{wiring.hostname}\n"
        for entry in wiring.extra_hosts:
            name, _, address = entry.partition(":")
            hosts += f"{address}\t{name}\n"
        if wiring.dns:
            servers = list(wiring.dns)
        elif attachment.joined:
            servers = [attachment.joined[0].network.gateway]
        elif wiring.mode == "user":
            servers = [USER_DNS]
        else:
            servers = []
        resolv = "".join(f"nameserver {server}\n" for server in servers)
        if wiring.dns_search:
            resolv += f"search {' '.join(wiring.dns_search)}\n"
        if wiring.dns_options:
            resolv += f"options {' '.join(wiring.dns_options)}\n"
        return {"/etc/hosts": hosts, "/etc/resolv.conf": resolv, "/etc/hostname": f"{wiring.hostname}\n"}

    async def close(self) -> None:
        for server in self._dns.values():
            server.close()
        self._dns.clear()
        self.ipam.close()


def _valid_mac(mac: str) -> bool:
    parts = mac.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts) \
        and not int(parts[0], 16) & 1
