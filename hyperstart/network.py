"""The pod's interfaces, configured with the classic socket ioctls (no ``ip`` binary, no netlink
library: a handful of ioctls is all a pod needs, and each costs microseconds where a process
would cost milliseconds under TCG).

Containers share the VM's network namespace: the pod is the VM, so what is configured here
is what every container of the pod sees.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

SIOCADDRT = 0x890B
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
RTF_UP = 0x1
RTF_GATEWAY = 0x2
IFREQ = 40
NET = "/sys/class/net"


def _sockaddr(address: str) -> bytes:
    return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(IFREQ - 16, b"\0")


def _up(sock: socket.socket, name: str) -> None:
    flags = struct.unpack_from("H", fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(name, b"")), 16)[0]
    fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | IFF_UP)))


def up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _up(sock, "lo")


def find(mac: str) -> str:
    """The interface with this MAC address."""
    for name in sorted(os.listdir(NET)):
        with open(f"{NET}/{name}/address") as f:
            if f.read().strip() == mac:
                return name
    raise LookupError(f"no interface with MAC {mac} in the VM")


def configure(mac: str, address: str, prefix: int, mtu: int, gateway: str = "") -> str:
    """Address, netmask, MTU and up for the interface with ``mac``, and a default route through
    ``gateway``; returns the interface's name."""
    name = find(mac)
    netmask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFMTU, _ifreq(name, struct.pack("i", mtu)))
        fcntl.ioctl(sock, SIOCSIFADDR, _ifreq(name, _sockaddr(address)))
        fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq(name, _sockaddr(netmask)))
        _up(sock, name)
        if gateway:
            # struct rtentry (x86_64): pad, dst, gateway, genmask, flags, pads, metric, dev, mtu, window, irtt.
            route = struct.pack("@L16s16s16sHhLPhPLLH6x", 0, _sockaddr("0.0.0.0"), _sockaddr(gateway),
                                _sockaddr("0.0.0.0"), RTF_UP | RTF_GATEWAY, 0, 0, 0, 0, 0, 0, 0, 0)
            fcntl.ioctl(sock, SIOCADDRT, route)
    return name
