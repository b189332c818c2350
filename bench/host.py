"""Facts about the machine the figures were taken on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def facts() -> dict[str, str]:
    return {
        "cpu": cpu_model(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "host_kernel": platform.release(),
        "python": platform.python_version(),
    }


def qemu_processes() -> list[tuple[int, bytes]]:
    """Pid and NUL-separated command line of every QEMU process on the host."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline.split(b"\0")[0]:
            found.append((int(entry.name), cmdline))
    return sorted(found)


def other_vms(own: Path) -> list[int]:
    """Pids of QEMU processes that are not the bench's own: they compete for the same cores."""
    marker = str(own).encode()
    return [pid for pid, cmdline in qemu_processes() if marker not in cmdline]


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
