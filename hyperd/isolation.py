"""What confines a container inside its VM, as docker's flags ask: resource limits (its cgroup
in the guest, and the size of the VM around it) and privileges (capabilities, no-new-privileges,
masked paths, a read-only root, tmpfs mounts).

Checked here, when the container is created, so that a start cannot fail on them; the guest
agent applies what this module renders (``agent_limits``, ``agent_security``).
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from hyperd import seccomp
from hyperd.errors import InvalidArgument

MIB = 1 << 20
MIN_MEMORY = 6 * MIB
"""docker's smallest memory limit."""
GUEST_OVERHEAD_MIB = 96
"""Memory a VM needs besides its containers': the guest kernel, the agent and page cache headroom."""
CPU_PERIOD = 100_000
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
"""Linux capabilities by number (the guest kernel is 6.1)."""
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                        "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")
"""docker's default set."""
SECCOMP_NAMED = ("unconfined", "builtin", "")
"""``seccomp=`` values that name no profile file: none, or docker's default."""
TMPFS_OPTIONS = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks")
TMPFS_FLAGS = ("ro", "rw", "noexec", "exec", "nosuid", "suid", "nodev", "dev")
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)b?$", re.IGNORECASE)


def parse_size(text: str, what: str) -> int:
    """``512m``, ``1g``, ``1048576``: bytes, docker's units (powers of 1024)."""
    match = SIZE.match(text.strip())
    if not match:
        raise InvalidArgument(f"invalid {what} {text!r}: a number of bytes with an optional unit (k, m, g)")
    return int(float(match.group(1)) * 1024 ** "bkmg".index((match.group(2) or "b").lower()))


def _cpuset(text: str, vcpu_limit: int) -> int:
    """The highest CPU named by ``0-1,3``, checked."""
    highest = -1
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise InvalidArgument(f"invalid --cpuset-cpus {text!r}: use 0-1,3")
        if dash and int(high) < int(low):
            raise InvalidArgument(f"invalid --cpuset-cpus {text!r}: a range goes upwards")
        highest = max(highest, int(high) if dash else int(low))
    if highest >= vcpu_limit:
        raise InvalidArgument(f"invalid --cpuset-cpus {text!r}: this host has CPUs 0-{vcpu_limit - 1}")
    return highest


@dataclass(frozen=True)
class Resources:
    memory: int = 0
    """Bytes; 0 for no limit."""
    memory_swap: int = 0
    """docker's --memory-swap (memory plus swap; -1 unlimited); the guest has no swap."""
    cpus: float = 0.0
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0

    @classmethod
    def parse(cls, memory: int = 0, memory_swap: int = 0, cpus: float = 0.0, cpu_shares: int = 0,
              cpuset_cpus: str = "", pids_limit: int = 0) -> Resources:
        """docker's HostConfig values: bytes (memory-swap -1 for unlimited), CPUs, shares, a CPU list."""
        host_cpus = os.cpu_count() or 1
        limit, swap = memory, memory_swap
        if limit < 0 or (limit and limit < MIN_MEMORY):
            raise InvalidArgument("minimum memory limit allowed is 6MB")
        if swap < -1:
            raise InvalidArgument("memory-swap must be a number of bytes, or -1 for unlimited")
        if swap and not limit:
            raise InvalidArgument("you should always set the memory limit when using the memory-swap limit")
        if swap > 0 and swap < limit:
            raise InvalidArgument("minimum memory-swap limit should be larger than the memory limit")
        if cpus < 0 or cpus > host_cpus:
            raise InvalidArgument(f"range of CPUs is from 0.01 to {host_cpus}.00, as there are only {host_cpus} "
                                  "CPUs available")
        if cpu_shares < 0 or cpu_shares > 262144 or 0 < cpu_shares < 2:
            raise InvalidArgument("cpu-shares must be from 2 to 262144")
        if cpuset_cpus:
            _cpuset(cpuset_cpus, host_cpus)
        if pids_limit < 0 and pids_limit != -1:
            raise InvalidArgument("pids-limit must be positive, or -1 for no limit")
        return cls(limit, swap, cpus, cpu_shares, cpuset_cpus, max(pids_limit, 0))

    def vm_memory_mib(self, default: int) -> int:
        """The VM holds the container's limit plus the guest's own needs (and never less than the default)."""
        return max(default, math.ceil(self.memory / MIB) + GUEST_OVERHEAD_MIB) if self.memory else default

    def vm_vcpus(self) -> int:
        """vCPUs enough for ``--cpus`` and for the CPUs ``--cpuset-cpus`` names."""
        needed = math.ceil(self.cpus) if self.cpus else 1
        if self.cpuset_cpus:
            needed = max(needed, _cpuset(self.cpuset_cpus, os.cpu_count() or 1) + 1)
        return max(1, needed)

    def agent_limits(self) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        if self.memory:
            limits.update(memory=self.memory, memory_swap=self.memory_swap)
        if self.pids_limit:
            limits["pids"] = self.pids_limit
        if self.cpus:
            limits.update(cpu_quota=round(self.cpus * CPU_PERIOD), cpu_period=CPU_PERIOD)
        if self.cpu_shares:
            # docker's (runc's) mapping of shares (2-262144) onto cgroup v2 weights (1-10000).
            limits["cpu_weight"] = 1 + ((self.cpu_shares - 2) * 9999) // 262142
        if self.cpuset_cpus:
            limits["cpuset"] = self.cpuset_cpus
        return limits


def split_security_opt(option: str) -> tuple[str, str]:
    """``--security-opt key=value`` (or docker's older ``key:value``) as its key and value."""
    key, value = ([*re.split(r"[=:]", option, maxsplit=1), ""])[:2]
    return key, value


def _capability(name: str) -> str:
    upper = name.upper().removeprefix("CAP_")
    if upper != "ALL" and upper not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability: {name!r}")
    return upper


@dataclass(frozen=True)
class Security:
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    no_new_privileges: bool = False
    read_only: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    seccomp: bool = True
    """A seccomp filter (``--security-opt seccomp=unconfined`` turns it off)."""
    seccomp_profile: str = ""
    """The JSON of the user's profile (``seccomp=FILE``; the CLI reads the file); empty for docker's default."""

    @classmethod
    def parse(cls, cap_add: tuple[str, ...] = (), cap_drop: tuple[str, ...] = (), privileged: bool = False,
              security_opt: tuple[str, ...] = (), read_only: bool = False,
              tmpfs: dict[str, str] | None = None) -> Security:
        no_new_privileges, filtered, profile = False, True, ""
        for option in security_opt:
            key, value = split_security_opt(option)
            if key == "no-new-privileges" and value in ("", "true", "false"):
                no_new_privileges = value != "false"
            elif key == "seccomp" and value in SECCOMP_NAMED:
                filtered, profile = value != "unconfined", ""
            elif key == "seccomp":
                filtered, profile = True, value
            else:
                raise InvalidArgument(f"invalid --security-opt {option!r}: no-new-privileges[:true|false], "
                                      "seccomp=unconfined or seccomp=PROFILE.json")
        mounts = {}
        for path, options in (tmpfs or {}).items():
            if not path.startswith("/") or path.rstrip("/") == "" or ".." in path.split("/"):
                raise InvalidArgument(f"invalid --tmpfs path {path!r}: an absolute path other than /")
            for option in filter(None, options.split(",")):
                key = option.partition("=")[0]
                if key not in TMPFS_OPTIONS and option not in TMPFS_FLAGS:
                    raise InvalidArgument(f"invalid --tmpfs option {option!r} for {path}")
            mounts[path.rstrip("/")] = options
        security = cls(tuple(_capability(c) for c in cap_add), tuple(_capability(c) for c in cap_drop), privileged,
                       no_new_privileges, read_only, mounts, filtered, profile)
        security.seccomp_filter()  # a profile that does not parse or compile fails the create, not a start
        return security

    def capabilities(self) -> list[int]:
        """The bounding set the container's processes keep, by number."""
        kept = set(CAPABILITIES if self.privileged else DEFAULT_CAPABILITIES)
        kept |= set(CAPABILITIES) if "ALL" in self.cap_add else set(self.cap_add)
        kept -= set(CAPABILITIES) if "ALL" in self.cap_drop else set(self.cap_drop)
        return sorted(CAPABILITIES.index(name) for name in kept)

    def seccomp_filter(self) -> bytes | None:
        """The BPF program of the container's seccomp filter, or None for none (privileged or unconfined)."""
        if self.privileged or not self.seccomp:
            return None
        profile = seccomp.parse(self.seccomp_profile) if self.seccomp_profile else seccomp.DEFAULT
        return seccomp.compile_filter(profile, frozenset(CAPABILITIES[n] for n in self.capabilities()))

    def security_opt(self) -> list[str]:
        """The options as docker's ``HostConfig.SecurityOpt`` shows them."""
        options = ["no-new-privileges"] if self.no_new_privileges else []
        if not self.seccomp:
            options.append("seccomp=unconfined")
        elif self.seccomp_profile:
            options.append(f"seccomp={self.seccomp_profile}")
        return options

    def agent_security(self) -> dict[str, Any]:
        return {"privileged": self.privileged, "read_only": self.read_only}


def split_device(text: str) -> tuple[str, str, str]:
    """``HOST[:CONTAINER[:PERMS]]`` (or ``HOST:PERMS``) as its three parts, with docker's defaults."""
    host, _, rest = text.partition(":")
    target, _, permissions = rest.partition(":")
    if not permissions and target and set(target) <= set("rwm"):
        target, permissions = "", target
    return host, target or host, permissions or "rwm"


@dataclass(frozen=True)
class Device:
    """``--device HOST[:CONTAINER[:PERMS]]``: a host block device or image file, attached to the VM as
    a disk of its own and made a node in the container."""

    host: str
    container: str
    permissions: str = "rwm"

    @property
    def writable(self) -> bool:
        return "w" in self.permissions

    @classmethod
    def parse(cls, text: str) -> Device:
        host, target, permissions = split_device(text)
        if not host.startswith("/") or not target.startswith("/dev/") or ".." in target.split("/"):
            raise InvalidArgument(f"invalid --device {text!r}: HOST[:CONTAINER[:PERMS]] with absolute paths, "
                                  "the container's under /dev")
        if not permissions or not set(permissions) <= set("rwm"):
            raise InvalidArgument(f"invalid --device permissions {permissions!r}: letters of rwm")
        try:
            mode = os.stat(host).st_mode
        except OSError as err:
            raise InvalidArgument(f"error gathering device information while adding device {host!r}: "
                                  f"{(err.strerror or str(err)).lower()}") from None
        if stat.S_ISCHR(mode):
            raise InvalidArgument(f"{host} is a character device: a VM cannot be given a host character device "
                                  "(only block devices and image files, which become disks of the VM)")
        if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
            raise InvalidArgument(f"{host} is not a block device or an image file")
        return cls(host, target, permissions)
