"""Pod networking: networks and their drivers, addresses, published ports, name resolution.

Three kinds of network, as ``hyper network ls`` lists them:

- ``bridge`` driver: a Linux bridge in hyperd's network namespace with a subnet; each pod
  gets a tap on it and an address from ``hyperd.network.ipam``.  The built-in network
  ``bridge`` is the default; ``hyper network create`` makes more, isolated from each other.
- ``null`` driver (``--network none``): no interface but loopback.
- ``user`` driver (``--network user``): QEMU's user-mode stack (slirp) inside the QEMU
  process.  It needs no bridge, tap or packet rules, and no privileges.
"""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field

from hyperd.network.ports import PortBinding


class Driver(enum.StrEnum):
    BRIDGE = "bridge"
    NULL = "null"
    USER = "user"

    @property
    def has_address(self) -> bool:
        """Whether pods on it get an address from hyperd (and so names, rules and a tap)."""
        return self is Driver.BRIDGE


DEFAULT_BRIDGE = "hyper0"
USER_SUBNET = "10.0.2.0/24"
USER_GUEST = "10.0.2.15"
USER_GATEWAY = "10.0.2.2"
USER_DNS = "10.0.2.3"
"""QEMU user-mode networking's fixed addresses (its defaults): the guest, the host side, the DNS relay."""


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: Driver
    subnet: str = ""
    gateway: str = ""
    bridge: str = ""
    """The Linux bridge of a ``bridge`` network."""
    labels: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    builtin: bool = False

    @property
    def scope(self) -> str:
        return "local"


def builtin_id(name: str) -> str:
    """Built-in networks get stable ids, so scripts that saved one keep working."""
    return hashlib.sha256(f"hyper-network-{name}".encode()).hexdigest()


@dataclass(frozen=True)
class Endpoint:
    """A container's place on a network, as asked for (``--network``, ``--ip``, ``--network-alias``)."""

    network: str
    """The network's id."""
    aliases: tuple[str, ...] = ()
    ip: str = ""
    mac: str = ""


@dataclass(frozen=True)
class NetworkRequest:
    """The network flags of ``run``/``create``, as the API received them."""

    mode: str = ""
    """``--network``: empty for the daemon's default."""
    aliases: tuple[str, ...] = ()
    ip: str = ""
    mac: str = ""
    ports: tuple[PortBinding, ...] = ()
    publish_all: bool = False
    expose: tuple[str, ...] = ()
    hostname: str = ""
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
