"""The QEMU driver: one ``qemu-system-x86_64 -M microvm`` process per pod.

The agent channel and the QMP monitor are socketpairs made here and handed to QEMU
as pre-opened descriptors (``-chardev socket,fd=N``): no socket paths to race on or
leak, and both are connected before the guest runs its first instruction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
from pathlib import Path

from qemu.qmp import QMPClient, QMPError

from hyperd import spawn
from hyperd.errors import BootFailed, HypervisorMissing
from hyperd.network import USER_SUBNET
from hyperd.vm import VMSpec
from hyperd.vm.accel import Accelerator, probe
from hyperd.vm.cgroup import TCG_CACHE_MIB, HostCgroups, limits_for
from hyperstart.protocol import PORT_NAME

BINARY = "qemu-system-x86_64"
GUEST_DISK_SERIAL = "hyper-guest"
# PYTHONHASHSEED reaches the agent as environment: without it Python blocks at start-up
# in getrandom() until the guest's CRNG is seeded, over a second under TCG.  The agent
# then seeds the CRNG from the host (RNDADDENTROPY) for the containers.
KERNEL_ARGS = (
    "console=ttyS0 8250.nr_uarts=1 quiet pci=off reboot=t panic=-1 "
    "root=/dev/vda rootfstype=erofs ro init=/init PYTHONHASHSEED=0"
)
QUIT_TIMEOUT = 2.0
CONSOLE_LIMIT = 1 << 20
"""Bytes of guest console kept per log file; one older file is kept beside it."""

logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class ConsoleLog:
    """The guest console, drained by hyperd into a size-capped log (the guest is untrusted:
    it must not be able to fill the host's disk by printing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self._size + len(data) > CONSOLE_LIMIT:
            self._file.close()
            self.path.replace(self.path.with_name(self.path.name + ".1"))
            self._file = self.path.open("wb")
            self._size = 0
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        self._file.close()


class QemuVM:
    def __init__(self, child: spawn.Child, agent: socket.socket, monitor: socket.socket, console: socket.socket,
                 spec: VMSpec, cgroups: list[Path]) -> None:
        self.child = child
        self.cgroups = cgroups
        """The host cgroups QEMU runs in, removed once it has exited."""
        self.pid = child.pid
        self.agent = agent
        self._monitor_sock = monitor
        self._console_sock = console
        self.qmp = QMPClient(spec.name)
        self.spec = spec
        self._console = asyncio.create_task(self._drain_console(ConsoleLog(spec.console_log)))

    async def _drain_console(self, log: ConsoleLog) -> None:
        reader, writer = await asyncio.open_connection(sock=self._console_sock)
        try:
            while data := await reader.read(1 << 16):
                log.write(data)
        finally:
            log.close()
            writer.close()

    async def connect_monitor(self) -> None:
        await self.qmp.connect(self._monitor_sock)

    async def wait(self) -> int:
        status = await self.child.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._console, QUIT_TIMEOUT)  # the console's last lines
        await self._close()
        return status

    async def kill(self) -> None:
        """QMP ``quit``; SIGKILL if QEMU does not go within a moment."""
        if self.child.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.qmp.execute("quit"), QUIT_TIMEOUT)
            try:
                await asyncio.wait_for(asyncio.shield(self.child.wait()), QUIT_TIMEOUT)
            except TimeoutError:
                self.child.signal(signal.SIGKILL)
        await self.wait()

    async def pause(self) -> None:
        """Freeze every vCPU (QMP ``stop``): the guest, its containers and their clocks stand still."""
        await self.qmp.execute("stop")

    async def resume(self) -> None:
        await self.qmp.execute("cont")

    async def status(self) -> str:
        """The VM's run state as QEMU reports it (running, paused, ...)."""
        reply = await self.qmp.execute("query-status")
        return str(reply["status"]) if isinstance(reply, dict) else "unknown"

    async def set_memory(self, mib: int) -> None:
        """Let the guest keep ``mib`` of its RAM (at most what it booted with): the balloon takes
        the rest, and QEMU gives those pages back to the host as the guest hands them over."""
        await self.qmp.execute("balloon", {"value": min(mib, self.spec.memory_mib) << 20})

    async def memory(self) -> int:
        """Bytes of RAM the guest has now: its boot size less the balloon, as far as the guest has
        given pages to it (which the guest reports, so it is bounded here); its boot size when
        QEMU cannot say (it is going away), as a figure for ``stats`` is no reason to fail."""
        total = self.spec.memory_mib << 20
        try:
            reply = await self.qmp.execute("query-balloon")
        except QMPError:
            return total
        actual = reply.get("actual") if isinstance(reply, dict) else None
        return min(max(actual, 0), total) if isinstance(actual, int) else total

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()
        self._console.cancel()
        self.agent.close()
        self._monitor_sock.close()
        HostCgroups.remove(self.cgroups)


class Qemu:
    name = "qemu"

    def __init__(self, binary: str, version: str, accel: Accelerator, cgroups: HostCgroups | None = None) -> None:
        self.binary = binary
        self.version = version
        self.accel = accel
        self.cgroups = cgroups

    @classmethod
    async def detect(cls, kernel: Path, guest_disk: Path, cache: Path, binary: str = BINARY) -> Qemu:
        path = shutil.which(binary)
        if path is None:
            raise HypervisorMissing(f"{binary} not found: apt-get install qemu-system-x86")
        for what, file, fix in (("guest kernel", kernel, "make kernel"), ("guest disk", guest_disk, "make guest")):
            if not file.is_file():
                raise HypervisorMissing(f"{what} {file} not found: run '{fix}' (or set HYPER_KERNEL/HYPER_GUEST)")
        status, out = await spawn.run([path, "--version"])
        if status != 0:
            raise HypervisorMissing(f"{path} --version failed: {out.strip()}")
        version = out.split("\n")[0].removeprefix("QEMU emulator version ").strip()
        accel = await probe(path, version, kernel, guest_disk, cache)
        return cls(path, version, accel, HostCgroups())

    def describe(self) -> dict[str, str]:
        return {
            "Hypervisor": "qemu",
            "HypervisorVersion": self.version,
            "HypervisorBinary": self.binary,
            "Accelerator": self.accel.name,
            "AcceleratorReason": self.accel.reason,
        }

    def argv(self, spec: VMSpec, agent_fd: int, monitor_fd: int, console_fd: int) -> list[str]:
        kvm = self.accel.name == "kvm"
        argv = [
            self.binary, "-name", spec.name,
            "-M", "microvm,x-option-roms=off,acpi=off",
            # TCG's translated-code cache bounded, so that the VM's host cgroup can bound QEMU.
            "-accel", "kvm" if kvm else f"tcg,tb-size={TCG_CACHE_MIB}", "-cpu", "host" if kvm else "max",
            "-m", str(spec.memory_mib), "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(spec.kernel), "-append", KERNEL_ARGS,
            "-chardev", f"socket,id=console,fd={console_fd}", "-serial", "chardev:console",
        ]
        # The guest's own disk goes first so that it is /dev/vda, the root= above.
        disks = [(spec.guest_disk, GUEST_DISK_SERIAL, True)]
        disks += [(disk.path, disk.serial, disk.readonly) for disk in spec.disks]
        for index, (path, serial, readonly) in enumerate(disks):
            # A host error (a full disk above all) is the guest's I/O error, never a paused VM:
            # QEMU's default stops the whole VM on ENOSPC, every container of the pod with it.
            argv += [
                "-drive", f"file={path},if=none,id=disk{index},format=raw,readonly={'on' if readonly else 'off'},"
                          "werror=report,rerror=report",
                "-device", f"virtio-blk-device,drive=disk{index},serial={serial}",
            ]
        for index, share in enumerate(spec.shares):
            # The local backend as root, owners and modes passed through as docker's bind mounts
            # have them; a read-only share is refused writes by QEMU itself, whatever the guest does.
            shared = str(share.path).replace(",", ",,")
            argv += [
                "-fsdev", f"local,id=share{index},path={shared},security_model=passthrough"
                          f"{',readonly=on' if share.readonly else ''}",
                "-device", f"virtio-9p-device,fsdev=share{index},mount_tag={share.tag}",
            ]
        for index, nic in enumerate(spec.nics):
            if nic.tap_fd >= 0:
                # vhost-net is not on every host (nor here); QEMU then moves the packets itself.
                netdev = f"tap,id=net{index},fd={nic.tap_fd},vhost=off"
            else:
                netdev = f"user,id=net{index},net={USER_SUBNET}" + "".join(
                    f",hostfwd={p.protocol}:{'' if p.host_ip == '0.0.0.0' else p.host_ip}:{p.host_port}"
                    f"-:{p.container_port}" for p in nic.forwards)
            argv += ["-netdev", netdev, "-device", f"virtio-net-device,netdev=net{index},mac={nic.mac}"]
        argv += [
            "-device", "virtio-serial-device,max_ports=2",
            "-chardev", f"socket,id=agent,fd={agent_fd}",
            "-device", f"virtserialport,chardev=agent,name={PORT_NAME}",
            "-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng",
            # hyper update shrinks a VM with its container's limit; pages the guest frees go back
            # to the host as they are freed; and a guest short of memory takes the balloon's back
            # before its OOM killer would end a process.
            "-device", "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on",
            "-chardev", f"socket,id=monitor,fd={monitor_fd}", "-mon", "chardev=monitor,mode=control",
        ]
        return argv

    async def launch(self, spec: VMSpec) -> QemuVM:
        spec.workdir.mkdir(parents=True, exist_ok=True)
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        (agent_host, agent_vm), (monitor_host, monitor_vm), (console_host, console_vm) = pairs
        vm_ends = (agent_vm.fileno(), monitor_vm.fileno(), console_vm.fileno())
        taps = tuple(nic.tap_fd for nic in spec.nics if nic.tap_fd >= 0)
        try:
            child = await spawn.spawn(self.argv(spec, *vm_ends), log=spec.workdir / "qemu.log",
                                      pass_fds=vm_ends + taps)
        except BaseException:
            for sock in (agent_host, monitor_host, console_host):
                sock.close()
            raise
        finally:
            for sock in (agent_vm, monitor_vm, console_vm):
                sock.close()
        groups: list[Path] = []
        if self.cgroups is not None:
            groups = self.cgroups.place(spec.name, child.pid, limits_for(spec.memory_mib, spec.vcpus,
                                                                           self.accel.name != "kvm"))
        vm = QemuVM(child, agent_host, monitor_host, console_host, spec, groups)
        try:
            await vm.connect_monitor()
        except Exception as err:
            await vm.kill()
            raise BootFailed(f"guest boot failed: QEMU exited before it was ready (status {child.returncode})",
                             log_tail(spec.workdir / "qemu.log", 20), child.argv) from err
        except BaseException:
            await vm.kill()
            raise
        return vm


def log_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log (a console or QEMU's own), empty if there is none."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
