"""Hypervisor drivers.  The daemon sees only ``Hypervisor`` and ``VM``; building a
hypervisor's command line or talking to its monitor happens inside a driver."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hyperd.network.ports import Published


@dataclass(frozen=True)
class Disk:
    """A block device for the guest, found there by its serial."""

    path: Path
    serial: str
    readonly: bool = True


@dataclass(frozen=True)
class Share:
    """A host directory for the guest (virtio-9p), found there by its tag."""

    path: Path
    tag: str
    readonly: bool = True


@dataclass(frozen=True)
class Nic:
    """A network interface for the guest, found there by its MAC: on a tap descriptor the
    hypervisor receives, or (``tap_fd`` < 0) on the hypervisor's user-mode stack, with its
    published ports forwarded from the host."""

    mac: str
    tap_fd: int = -1
    forwards: tuple[Published, ...] = ()


@dataclass(frozen=True)
class VMSpec:
    name: str
    kernel: Path
    guest_disk: Path
    workdir: Path
    """Per-VM directory: console log, hypervisor log."""
    vcpus: int = 1
    memory_mib: int = 256
    disks: tuple[Disk, ...] = field(default_factory=tuple)
    nics: tuple[Nic, ...] = field(default_factory=tuple)
    shares: tuple[Share, ...] = field(default_factory=tuple)

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"


class VM(Protocol):
    pid: int
    spec: VMSpec
    """What it was launched with: its vCPUs and its RAM at boot, the most it can have."""
    agent: socket.socket
    """The host end of the agent's channel, connected before the guest boots."""

    async def wait(self) -> int:
        """Until the VM has exited; returns the hypervisor's exit status."""

    async def kill(self) -> None:
        """End the VM now (no guest cooperation); safe to call on an exited VM."""

    async def pause(self) -> None:
        """Freeze the whole VM."""

    async def resume(self) -> None:
        """Let a frozen VM run again."""

    async def set_memory(self, mib: int) -> None:
        """Shrink (or grow back, up to its boot size) the RAM the guest may use."""

    async def memory(self) -> int:
        """Bytes of RAM the guest may use now."""


class Hypervisor(Protocol):
    name: str

    async def launch(self, spec: VMSpec) -> VM: ...

    def describe(self) -> dict[str, str]:
        """Version, accelerator and why, for ``hyper info``."""
