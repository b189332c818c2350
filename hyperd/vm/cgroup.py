"""Each VM's QEMU process in a host cgroup of its own, with the pod's limits (Hyper's issue #25).

The guest enforces each container's limits; this is the outer bound, on the host: whatever its
guest does, a pod takes no more memory than it was sized for plus QEMU's own (its heap and
threads, and under TCG its translated-code cache, which ``-accel tcg,tb-size=`` bounds), no
more CPU than its vCPUs plus one for QEMU's main loop, and no more than a bounded number of
threads.

Both cgroup layouts are handled: v2 (unified), and v1 with a hierarchy per controller (this
host's hybrid layout).  The groups are made beside hyperd's own (v1: under it, in each
controller's hierarchy; v2: a sibling, as v2 lets only leaves hold processes) in a ``hyper``
group.  A host where neither is writable runs its VMs unconfined, and hyperd says so once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hyperd")

ROOT = Path("/sys/fs/cgroup")
GROUP = "hyper"
CONTROLLERS = ("memory", "cpu", "pids")
QEMU_MIB = 192
"""QEMU's own memory beside the guest's RAM: heap, threads, device buffers."""
TCG_CACHE_MIB = 256
"""The translated-code cache under TCG (``tb-size``); idle pods use about 48 MiB of it."""
PERIOD_US = 100_000
MAX_TASKS = 512
"""Threads of one QEMU: vCPUs, the main loop, I/O and 9p workers."""


@dataclass(frozen=True)
class Limits:
    memory: int
    """Bytes."""
    cpus: int
    """Cores of CPU time per period; 0 for no quota."""
    tasks: int = MAX_TASKS


def limits_for(memory_mib: int, vcpus: int, tcg: bool) -> Limits:
    """A VM's host limits: its RAM and vCPUs plus what QEMU needs around them."""
    memory = memory_mib + QEMU_MIB + (TCG_CACHE_MIB if tcg else 0)
    cpus = vcpus + 1 if vcpus + 1 < (os.cpu_count() or 1) else 0
    return Limits(memory << 20, cpus)


class HostCgroups:
    def __init__(self, root: Path = ROOT, own: str | None = None) -> None:
        """``own``: the text of /proc/self/cgroup (read when not given)."""
        self.bases: dict[str, Path] = {}
        """Controller (or "" for v2's one hierarchy) -> the ``hyper`` group VMs go under."""
        self.v2 = False
        self.reason = ""
        if own is None:
            own = Path("/proc/self/cgroup").read_text()
        paths = {}
        for line in own.splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path.lstrip("/")
        if (root / "cgroup.controllers").exists():
            available = (root / "cgroup.controllers").read_text().split()
            missing = [c for c in CONTROLLERS if c not in available]
            if missing:
                self.reason = f"the host's cgroup v2 root offers no {', '.join(missing)} controller"
                return
            own_dir = root / paths.get("", "")
            parent = own_dir if own_dir == root else own_dir.parent
            self.v2, self.bases = True, {"": parent / GROUP}
        elif all((root / c).is_dir() for c in CONTROLLERS):
            self.bases = {c: root / c / paths.get(c, "") / GROUP for c in CONTROLLERS}
        else:
            self.reason = f"no cgroup v1 or v2 hierarchy with {', '.join(CONTROLLERS)} under {root}"

    def place(self, name: str, pid: int, limits: Limits) -> list[Path]:
        """The VM's group(s) made with ``limits`` and ``pid`` moved in; the directories made.  A
        failure is logged, never raised: the pod runs, with its guest's limits only."""
        made: list[Path] = []
        try:
            for controller, base in self.bases.items():
                if self.v2:
                    self._enable(base)
                group = base / name
                group.mkdir(parents=True, exist_ok=True)
                made.append(group)
                for file, value in self._settings(controller, limits):
                    if file != "memory.swap.max" or (group / file).exists():  # where swap is accounted
                        (group / file).write_text(value)
                (group / "cgroup.procs").write_text(str(pid))
        except OSError as err:
            log.warning("cannot confine VM %s in a host cgroup: %s", name, err)
        return made

    def _enable(self, base: Path) -> None:
        """v2: the controllers handed down to ``base`` and from it to the VMs' groups."""
        base.mkdir(exist_ok=True)
        wanted = " ".join(f"+{c}" for c in CONTROLLERS)
        for parent in (base.parent, base):
            if set(CONTROLLERS) - set((parent / "cgroup.subtree_control").read_text().split()):
                (parent / "cgroup.subtree_control").write_text(wanted)

    def _settings(self, controller: str, limits: Limits) -> list[tuple[str, str]]:
        quota = str(limits.cpus * PERIOD_US) if limits.cpus else ("max" if self.v2 else "-1")
        if self.v2:
            return [("memory.max", str(limits.memory)), ("memory.swap.max", "0"),
                    ("cpu.max", f"{quota} {PERIOD_US}"), ("pids.max", str(limits.tasks))]
        return {"memory": [("memory.limit_in_bytes", str(limits.memory))],
                "cpu": [("cpu.cfs_period_us", str(PERIOD_US)), ("cpu.cfs_quota_us", quota)],
                "pids": [("pids.max", str(limits.tasks))]}[controller]

    @staticmethod
    def remove(groups: list[Path]) -> None:
        """Remove a VM's groups, once its QEMU has exited."""
        for group in groups:
            with contextlib.suppress(OSError):
                group.rmdir()

    def reclaim(self) -> None:
        """Remove the groups of VMs a crashed hyperd left (empty once those VMs are gone)."""
        for base in self.bases.values():
            with contextlib.suppress(OSError):
                self.remove([group for group in base.iterdir() if group.is_dir()])
