"""TEMPORARY STUB (to be replaced by the DNS responder being written): same interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Lookup = Callable[[str], list[str]]


def upstream_servers(resolv_conf: str) -> list[str]:
    return [line.split()[1] for line in resolv_conf.splitlines() if line.startswith("nameserver ")]


class DnsServer:
    @classmethod
    async def start(cls, address: str, lookup: Lookup, upstreams: Sequence[str], *, port: int = 53) -> DnsServer:
        return cls()

    def close(self) -> None:
        pass
