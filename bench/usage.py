"""What a process costs the host at rest: memory from smaps_rollup, CPU from /proc/PID/stat."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from measure import BenchError, Sample

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """Rss and Pss in KiB. PSS charges shared pages (QEMU's libraries) by the share, RSS in full."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError as err:
        raise BenchError(f"cannot read the memory of pid {pid}: {err}") from err
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key] = int(rest.split()[0])
    if set(found) != {"Rss", "Pss"}:
        raise BenchError(f"/proc/{pid}/smaps_rollup has no Rss/Pss lines")
    return found


def _smaps(pid: int) -> list[tuple[str, str, int, int]]:
    """Each mapping's permissions, path (empty when anonymous), Size and Rss in KiB."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError as err:
        raise BenchError(f"cannot read the mappings of pid {pid}: {err}") from err
    found: list[tuple[str, str, int, int]] = []
    perms = path = ""
    size = 0
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and not head[0].endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            perms, path = head[1], head[5] if len(head) > 5 else ""
        elif head[0] == "Size:":
            size = int(head[1])
        elif head[0] == "Rss:":
            found.append((perms, path, size, int(head[1])))
    return found


def qemu_breakdown(pid: int, guest_mib: int) -> dict[str, int]:
    """QEMU's resident memory in KiB by what it is for.

    The guest's RAM is the anonymous mapping of exactly ``-m`` MiB; TCG's translated-code
    cache is the anonymous writable and executable one (there is none under KVM).
    """
    guest = code = 0
    for perms, path, size, rss in _smaps(pid):
        if path:
            continue
        if size == guest_mib * 1024 and not guest:
            guest = rss
        elif perms.startswith("rwx"):
            code += rss
    return {"guest_ram": guest, "tcg_code": code}


def guest_memory_mib(pid: int) -> int:
    """The ``-m`` of a QEMU process, from its command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    for flag, value in itertools.pairwise(argv):
        if flag == "-m":
            return int(value.split(",")[0].removesuffix("M"))
    raise BenchError(f"pid {pid} has no -m on its command line")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as err:
        raise BenchError(f"cannot read the CPU time of pid {pid}: {err}") from err
    # The command name, field 2, is in parentheses and may hold spaces: count from after it.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def resident(pid: int) -> Sample:
    """A QEMU process's RSS and PSS now (MiB), with the guest RAM's and TCG's shares of RSS."""
    memory = memory_kib(pid)
    parts = qemu_breakdown(pid, guest_memory_mib(pid))
    return {
        "rss_mib": memory["Rss"] / 1024,
        "pss_mib": memory["Pss"] / 1024,
        "guest_ram_rss_mib": parts["guest_ram"] / 1024,
        "tcg_code_rss_mib": parts["tcg_code"] / 1024,
    }


def at_rest(pid: int, settle: float, window: float) -> Sample:
    """``resident`` after ``settle`` seconds, then the process's CPU use over ``window`` seconds
    (% of one core)."""
    time.sleep(settle)
    sample = resident(pid)
    cpu_before, begun = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    cpu_after, elapsed = cpu_seconds(pid), time.monotonic() - begun
    return {**sample, "cpu_percent": 100 * (cpu_after - cpu_before) / elapsed}
