"""Which accelerator to use: KVM when a real boot under it works, else TCG.

``/dev/kvm`` existing is not enough: some hosts (nested or paravirtual KVM such as
kvm_pvm) open it fine and then fail to run a stock kernel.  So the probe boots the
guest kernel to a trivial init under KVM and looks for its marker.  The answer is
cached per (QEMU, host kernel, guest kernel), since the probe costs seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from hyperd import spawn

PROBE_MARKER = "HYPER-PROBE-OK"
PROBE_TIMEOUT = 20.0
KVM_FAILURES = ("KVM internal error", "KVM: entry failed", "kvm run failed")


@dataclass(frozen=True)
class Accelerator:
    name: str
    """``kvm`` or ``tcg``"""
    reason: str


def _cache_key(qemu_version: str, kernel: Path) -> str:
    stat = kernel.stat()
    uname = platform.uname()
    raw = f"{qemu_version}|{uname.release}|{uname.version}|{kernel}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


async def probe(qemu: str, qemu_version: str, kernel: Path, guest_disk: Path, cache: Path) -> Accelerator:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accelerator("tcg", "/dev/kvm is missing or not accessible")
    key = _cache_key(qemu_version, kernel)
    cached = cache / f"accel-{key}.json"
    try:
        return Accelerator(**json.loads(cached.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    result = await _boot_probe(qemu, kernel, guest_disk)
    cache.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(result)))
    partial.rename(cached)
    return result


async def _boot_probe(qemu: str, kernel: Path, guest_disk: Path) -> Accelerator:
    argv = [
        qemu, "-M", "microvm,x-option-roms=off,acpi=off", "-accel", "kvm", "-cpu", "host", "-m", "128",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
        "-kernel", str(kernel),
        "-append", "console=ttyS0 quiet pci=off reboot=t panic=-1 root=/dev/vda rootfstype=erofs ro init=/probe",
        "-drive", f"file={guest_disk},if=none,id=root,format=raw,readonly=on",
        "-device", "virtio-blk-device,drive=root",
    ]
    child = await spawn.spawn(argv, capture=True)
    output = child.process.stdout
    assert output is not None

    async def watch() -> str | None:
        async for raw in output:
            line = raw.decode(errors="replace").strip()
            if PROBE_MARKER in line:
                return None
            if any(failure in line for failure in KVM_FAILURES):
                return line
        return "the guest exited without reaching init"

    try:
        failure = await asyncio.wait_for(watch(), PROBE_TIMEOUT)
    except TimeoutError:
        failure = f"a probe guest did not reach init within {PROBE_TIMEOUT:.0f}s"
    finally:
        child.signal(signal.SIGKILL)
        await child.wait()
    if failure is None:
        return Accelerator("kvm", "a probe guest booted under KVM")
    return Accelerator("tcg", f"/dev/kvm is present but cannot boot the guest kernel ({failure})")
