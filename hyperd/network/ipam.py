"""Networks and address leases, kept in the daemon's database.

A lease is taken when a pod starts on a network and given back when its VM is gone; the
table survives a daemon restart, so no address is handed out twice while in use.  The
lowest free address is chosen; the network's own address, the gateway and the broadcast
address are never leased.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from hyperd.errors import Conflict, InvalidArgument, StorageError
from hyperd.network import Driver, Network

POOL = ipaddress.IPv4Network("10.29.0.0/16")
"""Where user networks get their subnets when none is given."""
POOL_PREFIX = 24


class AddressesExhausted(Conflict):
    pass


class Ipam:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("CREATE TABLE IF NOT EXISTS networks (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
                         "record TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS leases (network TEXT NOT NULL, address TEXT NOT NULL, "
                         "container TEXT NOT NULL, PRIMARY KEY (network, address))")

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as err:
            raise StorageError(f"cannot record network state: {err}") from err

    # -- networks ---------------------------------------------------------------------

    def networks(self) -> list[Network]:
        found = []
        for (record,) in self._db.execute("SELECT record FROM networks"):
            data = json.loads(record)
            data["driver"] = Driver(data["driver"])
            found.append(Network(**data))
        return found

    def add(self, network: Network) -> None:
        record = {**network.__dict__, "driver": str(network.driver)}
        try:
            self._write("INSERT INTO networks (id, name, record) VALUES (?, ?, ?)",
                        (network.id, network.name, json.dumps(record)))
        except sqlite3.IntegrityError:
            raise Conflict(f"network with name {network.name} already exists") from None

    def remove(self, network_id: str) -> None:
        self._write("DELETE FROM leases WHERE network = ?", (network_id,))
        self._write("DELETE FROM networks WHERE id = ?", (network_id,))

    # -- leases -----------------------------------------------------------------------

    def leased(self, network_id: str) -> dict[str, str]:
        """Address -> container, for one network."""
        rows = self._db.execute("SELECT address, container FROM leases WHERE network = ?", (network_id,))
        return dict(rows.fetchall())

    def lease(self, network: Network, container: str, requested: str = "") -> ipaddress.IPv4Address:
        """An address for ``container``: ``requested`` if it is free, else the lowest free one."""
        subnet = ipaddress.IPv4Network(network.subnet)
        reserved = {subnet.network_address, subnet.broadcast_address, ipaddress.IPv4Address(network.gateway)}
        taken = set(self.leased(network.id))
        if requested:
            address = ipaddress.IPv4Address(requested)
            if address not in subnet or address in reserved:
                raise InvalidArgument(f"address {address} is not a usable address of network {network.name} "
                                      f"({subnet})")
            if str(address) in taken:
                raise Conflict(f"address {address} is already in use on network {network.name}")
            candidates: Iterable[ipaddress.IPv4Address] = [address]
        else:
            candidates = (host for host in subnet.hosts() if host not in reserved and str(host) not in taken)
        for address in candidates:
            try:
                self._write("INSERT INTO leases (network, address, container) VALUES (?, ?, ?)",
                            (network.id, str(address), container))
                return address
            except sqlite3.IntegrityError:
                continue  # taken since we looked: the next one
        raise AddressesExhausted(f"no free address left on network {network.name} ({subnet})")

    def release(self, container: str) -> None:
        self._write("DELETE FROM leases WHERE container = ?", (container,))

    def release_all(self) -> None:
        self._write("DELETE FROM leases", ())

    def close(self) -> None:
        self._db.close()


def free_subnet(used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of the pool that overlaps nothing in ``used``."""
    used = list(used)
    for candidate in POOL.subnets(new_prefix=POOL_PREFIX):
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    raise AddressesExhausted(f"no free subnet left in {POOL} for a new network: remove unused networks, "
                             "or give one with --subnet")
