"""What a container's processes are and use, read from the VM's /proc (``top`` and ``stats``).

A container's processes are those in its PID namespace: the namespace of its reaper.
"""

from __future__ import annotations

import os

MAX_PROCESSES = 4096
MAX_COMMAND = 4096
"""Characters of a command line reported."""
TICKS = os.sysconf("SC_CLK_TCK")


def _members(reaper: int) -> list[int]:
    """Pids (as the agent sees them) in the PID namespace of ``reaper``."""
    try:
        namespace = os.readlink(f"/proc/{reaper}/ns/pid")
    except OSError:
        return []
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                    found.append(int(name))
            except OSError:
                continue  # gone meanwhile
    return sorted(found)[:MAX_PROCESSES]


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces and parentheses: fields start after its last ")".
        return f.read().rpartition(")")[2].split()


def processes(reaper: int) -> list[dict[str, object]]:
    """Each process: its pid and parent's inside the container, uid, start (seconds since the
    VM booted), CPU seconds, resident bytes, command line."""
    members = _members(reaper)
    inner = {}
    rows = []
    for pid in members:
        try:
            status, stat = _status(pid), _stat(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
        except OSError:
            continue
        inner[pid] = int(status.get("NSpid", str(pid)).split()[-1])
        rows.append((pid, int(status.get("PPid", "0")), status, stat, command or f"[{status.get('Name', '')}]"))
    result: list[dict[str, object]] = []
    for pid, ppid, status, stat, command in rows:
        result.append({
            "pid": inner[pid], "ppid": inner.get(ppid, 0), "uid": int(status.get("Uid", "0").split()[0]),
            "start": int(stat[19]) / TICKS, "cpu": (int(stat[11]) + int(stat[12])) / TICKS,
            "rss": int(status.get("VmRSS", "0 kB").split()[0]) * 1024, "command": command[:MAX_COMMAND],
        })
    return result


def stats(reaper: int) -> dict[str, int]:
    """CPU ticks, resident memory, processes and block I/O of the container, and the VM's
    memory and network counters (the pod's, shared by its containers)."""
    cpu = rss = read = written = count = 0
    for pid in _members(reaper):
        try:
            stat, status = _stat(pid), _status(pid)
        except OSError:
            continue
        try:
            with open(f"/proc/{pid}/io") as f:
                io = {key: value.strip() for key, _, value in (line.partition(":") for line in f)}
        except OSError:
            io = {}  # a kernel without I/O accounting: none counted
        count += 1
        cpu += int(stat[11]) + int(stat[12])
        rss += int(status.get("VmRSS", "0 kB").split()[0]) * 1024
        read += int(io.get("read_bytes", "0"))
        written += int(io.get("write_bytes", "0"))
    with open("/proc/meminfo") as f:
        meminfo = {key: int(value.split()[0]) * 1024 for key, _, value in (line.partition(":") for line in f)}
    received = sent = 0
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, counters = line.partition(":")
            if name.strip() != "lo":
                fields = counters.split()
                received += int(fields[0])
                sent += int(fields[8])
    return {"cpu_ns": cpu * 10**9 // TICKS, "memory": rss, "pids": count, "block_read": read,
            "block_write": written, "memory_total": meminfo.get("MemTotal", 0),
            "memory_available": meminfo.get("MemAvailable", 0), "net_rx": received, "net_tx": sent}
