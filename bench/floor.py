"""The floor: plain QEMU booting hyperd's kernel and guest disk to a trivial init, and exiting.

Same machine type, accelerator, CPU model, memory and kernel command line as hyperd's pods
(only ``init=`` differs), no agent channel, no monitor, no container disk: what any
``hyper run`` must pay at the very least on this host.
"""

from __future__ import annotations

from pathlib import Path

from measure import BenchError, Sample, timed

from hyperd.config import Config
from hyperd.vm.qemu import KERNEL_ARGS

MARKER = "HYPER-PROBE-OK"
APPEND = KERNEL_ARGS.replace("init=/init", "init=/probe")
MEMORY_MIB = Config.memory_mib  # the dataclass default: what hyperd gives each pod


class Floor:
    def __init__(self, qemu: str, accel: str, kernel: Path, guest_disk: Path, workdir: Path) -> None:
        self.console = workdir / "floor-console.log"
        self.argv = [
            qemu, "-M", "microvm,x-option-roms=off,acpi=off",
            "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(MEMORY_MIB), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-append", APPEND,
            "-chardev", f"file,id=console,path={self.console}", "-serial", "chardev:console",
            "-drive", f"file={guest_disk},if=none,id=root,format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=root",
        ]

    def boot(self) -> Sample:
        """One boot, spawn to QEMU's exit; a boot that never reached init is an error, not a fast run."""
        self.console.unlink(missing_ok=True)
        wall, output = timed(self.argv, timeout=120)
        console = self.console.read_text(errors="replace") if self.console.exists() else ""
        if MARKER not in console:
            tail = "\n".join((console + output).strip().splitlines()[-15:])
            raise BenchError(f"the floor guest exited without printing {MARKER}:\n{tail}")
        return {"wall": wall}
