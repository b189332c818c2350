"""The daemon's settings, fixed at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hyperd.errors import InvalidArgument

DEFAULT_HOST = "unix:///run/hyper/hyperd.sock"
DEFAULT_ROOT = Path("/var/lib/hyper")
SHARE = Path("/usr/local/share/hyper")


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

    @classmethod
    def create(cls, host: str, root: Path, kernel: Path | None, guest_disk: Path | None) -> Config:
        return cls(
            root=root.resolve(),
            socket=socket_path(host),
            kernel=kernel or Path(os.environ.get("HYPER_KERNEL", SHARE / "vmlinux")),
            guest_disk=guest_disk or Path(os.environ.get("HYPER_GUEST", SHARE / "guest.erofs")),
            cache=Path(os.environ.get("HYPER_CACHE", "/var/cache/hyper")),
        )
