"""Each container's cgroup (v2) in the guest: its memory, CPU and process limits, and whether
the kernel OOM-killed in it.

The VM is the outer wall (its memory and vCPUs, sized by hyperd); the cgroup is the inner
one, so that a container of a pod over its limit is killed alone and the others live on.
"""

from __future__ import annotations

import contextlib
import os

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("cpu", "cpuset", "memory", "pids")
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def enable() -> None:
    """Hand the controllers down from the root, once per VM (the root may hold processes: it is exempt
    from cgroup v2's no-internal-processes rule)."""
    with open(f"{ROOT}/cgroup.controllers") as f:
        available = f.read().split()
    wanted = [c for c in CONTROLLERS if c in available]
    _write(f"{ROOT}/cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))


def create(container_id: str, limits: dict[str, Any]) -> str:
    """The container's cgroup with its limits written; its path."""
    path = f"{ROOT}/{container_id[:64]}"
    os.makedirs(path, exist_ok=True)
    write_limits(path, limits)
    return path


def write_limits(path: str, limits: dict[str, Any]) -> None:
    """Set the limits named in ``limits`` (at creation, or a running container's ``update``)."""
    if limits.get("memory"):
        _write(f"{path}/memory.max", str(int(limits["memory"])))
        if os.path.exists(f"{path}/memory.swap.max"):
            swap = int(limits.get("memory_swap") or 0)
            _write(f"{path}/memory.swap.max", "max" if swap < 0 else str(max(0, swap - int(limits["memory"]))))
    if limits.get("pids"):
        _write(f"{path}/pids.max", str(int(limits["pids"])))
    if limits.get("cpu_quota"):
        _write(f"{path}/cpu.max", f"{int(limits['cpu_quota'])} {int(limits.get('cpu_period') or 100000)}")
    if limits.get("cpu_weight"):
        _write(f"{path}/cpu.weight", str(int(limits["cpu_weight"])))
    if limits.get("cpuset"):
        _write(f"{path}/cpuset.cpus", str(limits["cpuset"]))


def freeze(path: str, frozen: bool) -> None:
    """Freeze (or thaw) every process of the cgroup at ``path``."""
    _write(f"{path}/cgroup.freeze", "1" if frozen else "0")


def join(path: str) -> None:
    """Move the calling process into the cgroup at ``path`` (its children follow)."""
    _write(f"{path}/cgroup.procs", "0")


def oom_killed(path: str) -> bool:
    try:
        with open(f"{path}/memory.events") as f:
            events = dict(line.split() for line in f if line.strip())
    except OSError:
        return False
    return int(events.get("oom_kill", "0")) > 0


def remove(path: str) -> None:
    """Remove an emptied cgroup; one still busy (a process outliving the container) stays."""
    with contextlib.suppress(OSError):
        os.rmdir(path)
