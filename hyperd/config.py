"""The daemon's settings, fixed at start-up: command-line flags over an optional JSON file.

The file (``--config-file``, default ``/etc/hyper/daemon.json`` when it exists) uses Docker's
``daemon.json`` key names for what hyperd shares with dockerd::

    {"registry-mirrors": ["https://mirror.example"], "insecure-registries": ["10.0.0.0/8", "reg.lan:5000"],
     "max-concurrent-downloads": 3, "bip": "172.31.0.1/16", "bridge": "none", "storage-opts": ["size=20G"]}

``bip`` is the default bridge network's gateway address and subnet; ``"bridge": "none"``
turns the default bridge network off, so containers have no network unless one is asked
for (dockerd's ``--bridge=none``).  ``storage-opts`` ``size=`` is the size of the writable disk every
container gets unless it asks for another (``--storage-opt size=``) or is removed when it exits
(``--rm``, a tmpfs in its VM): sparse, so only what the container writes takes room.

Flags add to the file's lists and override its scalars.  Unknown keys are refused, so a
typo does not silently leave a setting at its default.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperd import storage
from hyperd.errors import InvalidArgument

DEFAULT_HOST = "unix:///run/hyper/hyperd.sock"
DEFAULT_ROOT = Path("/var/lib/hyper")
SHARE = Path("/usr/local/share/hyper")
DEFAULT_CONFIG_FILE = Path("/etc/hyper/daemon.json")
FILE_KEYS = {"registry-mirrors", "insecure-registries", "max-concurrent-downloads", "bip", "bridge", "storage-opts"}
DEFAULT_BIP = "172.31.0.1/16"


def socket_path(host: str) -> Path:
    """The socket path of a ``unix:///path`` host, the only kind hyperd serves."""
    if not host.startswith("unix://") or len(host) <= len("unix://"):
        raise InvalidArgument(f"unsupported host {host!r}: use unix:///path/to/hyperd.sock")
    return Path(host.removeprefix("unix://"))


@dataclass(frozen=True)
class Config:
    root: Path
    socket: Path
    kernel: Path
    guest_disk: Path
    cache: Path
    boot_timeout: float = 60.0
    """Seconds a guest may take from QEMU's start to the agent's ready event."""
    memory_mib: int = 256
    stop_timeout: float = 10.0
    registry_mirrors: tuple[str, ...] = ()
    """Base URLs tried in order before Docker Hub for its images, as dockerd's registry-mirrors."""
    insecure_registries: tuple[str, ...] = ()
    """``host[:port]`` or CIDR: registries that may be reached over plain HTTP."""
    max_concurrent_downloads: int = 3
    bip: str = DEFAULT_BIP
    """The default bridge network's gateway address with its prefix length."""
    bridge: bool = True
    """Whether the default bridge network exists (``--bridge none`` turns it off)."""
    writable_size: int = storage.DEFAULT_SIZE
    """Bytes of the writable disk of a container that names no size and outlives its run."""

    @classmethod
    def create(cls, host: str, root: Path, kernel: Path | None, guest_disk: Path | None, *,
               config_file: Path | None = None, registry_mirrors: Sequence[str] = (),
               insecure_registries: Sequence[str] = (), max_concurrent_downloads: int | None = None,
               bip: str | None = None, bridge: str | None = None) -> Config:
        settings = _read_file(config_file)
        bip = bip or settings.get("bip", DEFAULT_BIP)
        try:
            gateway = ipaddress.IPv4Interface(bip)
        except (ValueError, TypeError):
            raise InvalidArgument(f"bip must be an IPv4 address with a prefix length, like {DEFAULT_BIP}, "
                                  f"not {bip!r}") from None
        if gateway.ip in (gateway.network.network_address, gateway.network.broadcast_address) \
                or gateway.network.prefixlen > 30:
            raise InvalidArgument(f"bip {bip} must be a host address of a subnet of at least 4 addresses")
        bridge = bridge or settings.get("bridge", "")
        if bridge not in ("", "none"):
            raise InvalidArgument(f"bridge may only be \"none\" (to turn the default bridge network off), "
                                  f"not {bridge!r}")
        downloads = max_concurrent_downloads or settings.get("max-concurrent-downloads", 3)
        if not isinstance(downloads, int) or isinstance(downloads, bool) or not 1 <= downloads <= 64:
            raise InvalidArgument(f"max-concurrent-downloads must be an integer from 1 to 64, not {downloads!r}")
        return cls(
            root=root.resolve(),
            socket=socket_path(host),
            kernel=kernel or Path(os.environ.get("HYPER_KERNEL", SHARE / "vmlinux")),
            guest_disk=guest_disk or Path(os.environ.get("HYPER_GUEST", SHARE / "guest.erofs")),
            cache=Path(os.environ.get("HYPER_CACHE", "/var/cache/hyper")),
            registry_mirrors=(*_strings(settings, "registry-mirrors"), *registry_mirrors),
            insecure_registries=(*_strings(settings, "insecure-registries"), *insecure_registries),
            max_concurrent_downloads=downloads,
            bip=str(gateway),
            bridge=bridge != "none",
            writable_size=storage.parse_options(_options(settings, "storage-opts")) or storage.DEFAULT_SIZE,
        )


def _read_file(path: Path | None) -> dict[str, Any]:
    """The settings file's content; a missing default file is no settings, a missing named one an error."""
    if path is None:
        if not DEFAULT_CONFIG_FILE.exists():
            return {}
        path = DEFAULT_CONFIG_FILE
    try:
        document = json.loads(path.read_text())
    except OSError as err:
        raise InvalidArgument(f"cannot read {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise InvalidArgument(f"{path} is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise InvalidArgument(f"{path} must hold a JSON object")
    unknown = sorted(set(document) - FILE_KEYS)
    if unknown:
        raise InvalidArgument(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(FILE_KEYS))})")
    return document


def _strings(settings: dict[str, Any], key: str) -> tuple[str, ...]:
    value = settings.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidArgument(f"{key} must be a list of strings")
    return tuple(value)


def _options(settings: dict[str, Any], key: str) -> dict[str, str]:
    """A list of ``KEY=VALUE`` strings as a mapping."""
    options = {}
    for item in _strings(settings, key):
        name, equals, value = item.partition("=")
        if not equals:
            raise InvalidArgument(f"{key}: expected KEY=VALUE, not {item!r}")
        options[name.strip()] = value
    return options
