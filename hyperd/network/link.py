"""Links in hyperd's network namespace, over netlink (pyroute2): bridges and pod taps.

A pod's tap is opened by hyperd on ``/dev/net/tun`` without ``TUNSETPERSIST`` and handed
to QEMU as a descriptor: the kernel removes it when the last descriptor closes, so a tap
never outlives its VM, even when hyperd is killed.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import secrets
import struct
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hyperd.errors import HyperError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
RT_TABLE_MAIN = 254
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
BRIDGE_PREFIX = "hyb"
"""User networks' bridges are ``hyb`` and 12 hex digits of the network id (15 characters, IFNAMSIZ - 1)."""
TAP_PREFIX = "tap"


class NetworkSetupError(HyperError):
    """A bridge or tap could not be made; the message names the link and the kernel's reason."""


def _fail(what: str, err: OSError | NetlinkError) -> NetworkSetupError:
    code = err.code if isinstance(err, NetlinkError) else err.errno
    reason = os.strerror(code) if code else str(err)
    return NetworkSetupError(f"{what}: {reason}")


async def ensure_bridge(name: str, gateway: ipaddress.IPv4Interface, mtu: int) -> None:
    """The bridge ``name`` up with the gateway address; made if missing, left as is if it is already right."""
    try:
        async with AsyncIPRoute() as ipr:
            found = await ipr.link_lookup(ifname=name)
            if not found:
                await ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
                found = await ipr.link_lookup(ifname=name)
            index = found[0]
            addresses = {(a.get("address"), a["prefixlen"]) async for a in await ipr.addr("dump", index=index)}
            if (str(gateway.ip), gateway.network.prefixlen) not in addresses:
                await ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
            await ipr.link("set", index=index, state="up")
    except (OSError, NetlinkError) as err:
        raise _fail(f"cannot set up bridge {name}", err) from err
    enable_forwarding()


async def remove_bridge(name: str) -> None:
    """Delete a bridge (its address and routes go with it); a missing one is fine."""
    try:
        async with AsyncIPRoute() as ipr:
            await ipr.link("del", ifname=name)
    except NetlinkError as err:
        if err.code != errno.ENODEV:
            raise _fail(f"cannot remove bridge {name}", err) from err


async def bridges(prefix: str) -> list[str]:
    """Names of the bridges whose name starts with ``prefix``."""
    async with AsyncIPRoute() as ipr:
        names = []
        async for link in await ipr.get_links():
            name = link.get("ifname") or ""
            if name.startswith(prefix) and link.get(("linkinfo", "kind")) == "bridge":
                names.append(name)
        return names


def enable_forwarding() -> None:
    """IPv4 forwarding in this namespace, without which pods cannot reach past the host (docker does the same)."""
    if FORWARDING.read_text().strip() != "1":
        FORWARDING.write_text("1\n")


async def routed_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations of the main routing table, to keep new subnets clear of them."""
    found = []
    async with AsyncIPRoute() as ipr:
        async for route in await ipr.route("dump", family=2):
            table = route.get("table") or route["table"]
            dst = route.get("dst")
            if table == RT_TABLE_MAIN and dst:
                found.append(ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False))
    return found


def random_mac() -> str:
    """A locally administered unicast MAC (``02:...``), as docker gives containers."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


class Tap:
    """A pod's tap: an open descriptor for QEMU, attached to a bridge; gone when closed."""

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd

    @classmethod
    async def open(cls, name: str, bridge: str) -> Tap:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise _fail("cannot open /dev/net/tun (is the tun module available?)", err) from err
        tap = cls(name, fd)
        try:
            # IFF_VNET_HDR lets QEMU pass checksum offload through instead of computing it in software.
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            async with AsyncIPRoute() as ipr:
                bridge_index = (await ipr.link_lookup(ifname=bridge) or [0])[0]
                if not bridge_index:
                    raise NetworkSetupError(f"cannot attach {name}: bridge {bridge} is missing")
                index = (await ipr.link_lookup(ifname=name))[0]
                await ipr.link("set", index=index, master=bridge_index, state="up")
        except (OSError, NetlinkError) as err:
            tap.close()
            raise _fail(f"cannot set up tap {name}", err) from err
        except BaseException:
            tap.close()
            raise
        return tap

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
