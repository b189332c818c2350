"""hyperd's packet rules: one nftables table, ``ip hyper``, rewritten whole on every change.

The table is rendered from the daemon's state and loaded in one ``nft -f`` transaction
that deletes the old table and adds the new one, so the rules are never half-applied and
rules left by a crashed hyperd are replaced (or removed) by the next one.  It holds:

- masquerade for each bridge's subnet leaving by another interface (pods reach out);
- DNAT of published ports for traffic arriving from outside the host (the userland
  proxy in ``hyperd.network.ports`` serves the host's own connections);
- drops between the bridges of different networks (networks are isolated).
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from hyperd import spawn
from hyperd.errors import HyperError

TABLE = "hyper"


class RulesError(HyperError):
    """nftables is missing or refused the rules."""


@dataclass(frozen=True)
class Bridge:
    name: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class Forward:
    """A published port to DNAT: traffic to ``host_ip`` (any local address when empty) and ``host_port``."""

    protocol: str
    host_ip: str
    host_port: int
    guest_ip: str
    guest_port: int
    bridge: str


def render(bridges: Sequence[Bridge], forwards: Sequence[Forward]) -> str:
    """The ``nft -f`` script that replaces the table (or only deletes it when there is nothing to rule)."""
    script = [f"table ip {TABLE}", f"delete table ip {TABLE}"]
    if not bridges:
        return "\n".join(script) + "\n"
    names = [bridge.name for bridge in bridges]
    script += [f"table ip {TABLE} {{",
               "  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
    for fwd in forwards:
        address = ipaddress.ip_address(fwd.host_ip) if fwd.host_ip else None
        if address is not None and (address.version != 4 or address.is_loopback):
            continue  # loopback never arrives from outside; IPv6 is the proxy's alone
        match = f"ip daddr {address}" if address is not None else "fib daddr type local"
        script.append(f'    iifname != "{fwd.bridge}" {match} {fwd.protocol} dport {fwd.host_port} '
                      f"dnat to {fwd.guest_ip}:{fwd.guest_port}")
    script += ["  }", "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    for bridge in bridges:
        script.append(f'    ip saddr {bridge.subnet} oifname != "{bridge.name}" masquerade')
    script += ["  }", "  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    for name in names:
        others = [other for other in names if other != name]
        if others:
            quoted = ", ".join(f'"{other}"' for other in others)
            script.append(f'    iifname "{name}" oifname {{ {quoted} }} drop')
    script += ["  }", "}"]
    return "\n".join(script) + "\n"


async def apply(bridges: Sequence[Bridge], forwards: Sequence[Forward]) -> None:
    """Load the rules for this state in one transaction."""
    binary = shutil.which("nft")
    if binary is None:
        raise RulesError("nft not found: bridge networking needs nftables (apt-get install nftables)")
    status, output = await spawn.run([binary, "-f", "-"], input=render(bridges, forwards).encode())
    if status != 0:
        lines = output.strip().splitlines()
        raise RulesError(f"nft refused hyperd's rules: {lines[0] if lines else f'status {status}'}")
