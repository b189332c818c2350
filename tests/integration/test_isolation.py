"""Confinement inside the VM: each limit bites, each privilege flag changes what the kernel says."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import CLI_TIMEOUT, Hyper, wait_for

DOCKER_DEFAULT_CAPS = "00000000a80425fb"
"""docker's 14 default capabilities as /proc/self/status prints them."""
EVERY_CAP = "000001ffffffffff"
"""Capabilities 0-40, all of the guest kernel's."""


def status_field(hyper: Hyper, name: str, *flags: str) -> str:
    got = hyper("run", "--rm", *flags, "busybox", "grep", f"^{name}:", "/proc/self/status")
    assert got.returncode == 0, got.stderr
    return got.stdout.split()[1]


# A bound, not a threshold: under TCG, a hog in a container whose writable layer is an ext4
# disk may thrash for long before the guest's OOM killer ends it (4-8 s with a tmpfs layer;
# 6-11 s with the disk most of the time, but up to 131 s seen on this host).
OOM_TIMEOUT = 3 * CLI_TIMEOUT


def test_memory_limit_kills_a_hog_and_says_so(hyper: Hyper) -> None:
    got = hyper("run", "--name", "hog", "-m", "24m", "busybox", "sh", "-c",
                "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived", timeout=OOM_TIMEOUT)
    assert got.returncode == 137 and "survived" not in got.stdout, (got.returncode, got.stdout, got.stderr)
    details = json.loads(hyper("inspect", "hog").stdout)[0]
    assert details["State"]["OOMKilled"] is True and details["State"]["ExitCode"] == 137
    assert details["HostConfig"]["Memory"] == 24 << 20
    # Without a limit the same work fits in the VM.
    fits = hyper("run", "--rm", "busybox", "sh", "-c", "x=$(head -c 20000000 /dev/zero | tr '\\0' a); echo fits")
    assert fits.stdout == "fits\n", fits.stderr


def test_pids_limit_stops_a_fork_bomb(hyper: Hyper) -> None:
    # The forking in a subshell (a shell whose fork fails gives up); counted with the shell's own
    # glob, as at the limit not even a `ls` can be forked.
    bomb = "(i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo $#"
    got = hyper("run", "--rm", "--pids-limit", "12", "busybox", "sh", "-c", bomb)
    assert int(got.stdout.split()[-1]) <= 12, got.stdout  # the limit counts every process of the container
    free = hyper("run", "--rm", "busybox", "sh", "-c", bomb)
    assert int(free.stdout.split()[-1]) > 40, free.stdout


def test_cpus_cap_a_busy_loop(hyper: Hyper) -> None:
    """CPU time of a busy loop over 4 s of the guest's clock: near half a CPU with --cpus 0.5."""
    loop = ("while true; do :; done & p=$!; sleep 4; set -- $(cut -d' ' -f14,15 /proc/$p/stat); kill $p; "
            "echo $(( $1 + $2 ))")
    limited = int(hyper("run", "--rm", "--cpus", "0.5", "busybox", "sh", "-c", loop).stdout.split()[-1])
    free = int(hyper("run", "--rm", "busybox", "sh", "-c", loop).stdout.split()[-1])
    # Ticks are 1/100 s: 4 s is 400 ticks of one CPU.
    assert limited < 0.75 * 400 and free > limited + 60, (limited, free)


def test_the_container_sees_its_own_cgroup(hyper: Hyper) -> None:
    # As docker on cgroup v2: a cgroup namespace, and the container's cgroup read-only at
    # /sys/fs/cgroup, where runtimes that size themselves (a JVM's heap) read their limits.
    probe = ("cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; "
             "mkdir /sys/fs/cgroup/sub 2>&1 || true")
    limits = ("-m", "64m", "--cpus", "1.5")
    expected = ["0::/", "67108864", "150000 100000",
                "mkdir: can't create directory '/sys/fs/cgroup/sub': Read-only file system"]
    assert hyper("run", "--rm", *limits, "busybox", "sh", "-c", probe).stdout.splitlines() == expected
    assert hyper("run", "-d", "--name", "own-cgroup", *limits, "busybox", "sleep", "600").returncode == 0
    assert hyper("exec", "own-cgroup", "sh", "-c", probe).stdout.splitlines() == expected
    privileged = hyper("run", "--rm", "--privileged", "busybox", "sh", "-c",
                       "mkdir /sys/fs/cgroup/sub && cat /sys/fs/cgroup/sub/cgroup.type")
    assert privileged.stdout == "domain\n", privileged.stderr


def test_capabilities(hyper: Hyper) -> None:
    assert status_field(hyper, "CapBnd") == DOCKER_DEFAULT_CAPS
    assert status_field(hyper, "CapEff") == DOCKER_DEFAULT_CAPS
    assert status_field(hyper, "CapEff", "--cap-drop", "NET_RAW") == f"{int(DOCKER_DEFAULT_CAPS, 16) & ~(1 << 13):016x}"
    assert status_field(hyper, "CapEff", "--cap-add", "CAP_SYS_ADMIN") == \
        f"{int(DOCKER_DEFAULT_CAPS, 16) | (1 << 21):016x}"
    assert status_field(hyper, "CapEff", "--cap-drop", "ALL") == "0000000000000000"
    assert status_field(hyper, "CapEff", "--privileged") == EVERY_CAP
    assert status_field(hyper, "CapEff", "-u", "nobody") == "0000000000000000"
    assert status_field(hyper, "NoNewPrivs") == "0"
    assert status_field(hyper, "NoNewPrivs", "--security-opt", "no-new-privileges") == "1"
    bad = hyper("run", "--rm", "--cap-add", "FLY", "busybox", "true")
    assert bad.returncode == 125 and "unknown capability: 'FLY'" in bad.stderr


def test_privileged_operations_need_their_capability(hyper: Hyper) -> None:
    mount = "mkdir -p /m && mount -t tmpfs none /m && echo mounted"
    denied = hyper("run", "--rm", "busybox", "sh", "-c", mount)
    assert denied.returncode != 0 and "mounted" not in denied.stdout
    assert hyper("run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "sh", "-c", mount).stdout == "mounted\n"


def test_masked_and_read_only_paths(hyper: Hyper) -> None:
    # Of docker's masked paths, this guest kernel has /proc/timer_list and /sys/firmware.
    probe = ("wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l; "
             "echo 1 > /proc/sys/vm/drop_caches && echo wrote || echo refused")
    got = hyper("run", "--rm", "busybox", "sh", "-c", probe)
    assert got.stdout.split() == ["0", "0", "refused"], got.stdout
    privileged = hyper("run", "--rm", "--privileged", "busybox", "sh", "-c", probe)
    shown = privileged.stdout.split()
    assert int(shown[0]) > 0 and shown[2] == "wrote", privileged.stdout


def test_read_only_root_with_tmpfs(hyper: Hyper) -> None:
    got = hyper("run", "--rm", "--read-only", "--tmpfs", "/scratch:size=1m", "busybox", "sh", "-c",
                "touch /root-file 2>&1; echo x > /scratch/f && cat /scratch/f; echo nameserver 1.2.3.4 >> "
                "/etc/resolv.conf && echo hosts-writable; df -k /scratch | tail -1")
    lines = got.stdout.splitlines()
    assert "Read-only file system" in lines[0], got.stdout
    assert lines[1:3] == ["x", "hosts-writable"], got.stdout
    assert lines[3].split()[1] == "1024", got.stdout  # the tmpfs's size in KiB
    bad = hyper("run", "--rm", "--tmpfs", "relative", "busybox", "true")
    assert bad.returncode == 125 and "invalid --tmpfs path" in bad.stderr


def vm_memory(hyper: Hyper, container: str) -> str:
    """The RAM of the container's VM, as the last column of ``hyper stats`` shows it."""
    got = hyper("stats", "--no-stream", container)
    assert got.returncode == 0, got.stderr
    return got.stdout.splitlines()[-1].rsplit("/", 1)[1].strip()


def test_update_changes_a_running_containers_limits(hyper: Hyper) -> None:
    assert hyper("run", "-d", "--name", "resized", "-m", "256m", "busybox", "sleep", "600").returncode == 0
    hog = "x=$(head -c 60000000 /dev/zero | tr '\\0' a); echo survived"
    assert hyper("exec", "resized", "sh", "-c", hog).stdout == "survived\n"
    assert vm_memory(hyper, "resized") == "352MiB"  # the limit and the guest's 96 MiB
    assert hyper("update", "-m", "24m", "resized").stdout == "resized\n"
    assert json.loads(hyper("inspect", "resized").stdout)[0]["HostConfig"]["Memory"] == 24 << 20
    # The VM shrinks with its container's limit, to hyperd's default VM size (256 MiB) at the
    # least: the guest hands pages to its balloon.
    wait_for(lambda: vm_memory(hyper, "resized") == "256MiB", 60, "the balloon to take the VM down to 256 MiB")
    killed = hyper("exec", "resized", "sh", "-c", hog, timeout=OOM_TIMEOUT)  # exec'd processes are in the cgroup too
    assert killed.returncode == 137 and "survived" not in killed.stdout
    beyond = hyper("update", "-m", "2g", "resized")
    assert beyond.returncode == 125 and "beyond its VM (352 MiB" in beyond.stderr
    assert hyper("update", "-m", "256m", "resized").returncode == 0  # back up to the VM's size at boot
    wait_for(lambda: vm_memory(hyper, "resized") == "352MiB", 60, "the balloon to give the VM its memory back")
    assert hyper("exec", "resized", "sh", "-c", hog).stdout == "survived\n"
    assert hyper("stop", "-t", "0", "resized").returncode == 0
    assert hyper("update", "--cpus", "1", "resized").returncode == 0  # stopped: kept for the next run
    assert json.loads(hyper("inspect", "resized").stdout)[0]["HostConfig"]["NanoCpus"] == 10**9


def test_devices(hyper: Hyper, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"hello device" + bytes(1 << 20))
    got = hyper("run", "--rm", "--device", f"{image}:/dev/xvdc", "busybox", "sh", "-c",
                "ls -l /dev/xvdc | cut -c1; head -c 12 /dev/xvdc; echo; printf 'HELLO' | dd of=/dev/xvdc "
                "conv=notrunc 2>/dev/null && echo written")
    assert got.stdout == "b\nhello device\nwritten\n", got.stderr
    assert image.read_bytes()[:12] == b"HELLO device"  # the guest wrote to the host's file
    read_only = hyper("run", "--rm", "--device", f"{image}:/dev/xvdd:r", "busybox", "sh", "-c",
                      "printf x | dd of=/dev/xvdd conv=notrunc 2>/dev/null && echo written || echo refused")
    assert read_only.stdout == "refused\n"
    refused = hyper("run", "--rm", "--device", "/dev/null:/dev/mynull", "busybox", "true")
    assert refused.returncode == 125 and "is a character device" in refused.stderr
    missing = hyper("run", "--rm", "--device", "/nonexistent.img:/dev/x", "busybox", "true")
    assert missing.returncode == 125 and "no such file or directory" in missing.stderr


def test_device_rules_keep_the_vms_disks_out_of_reach(hyper: Hyper) -> None:
    # A container's root keeps CAP_MKNOD, as docker's does: it may make a node for one of the VM's
    # disks (its own image, the volumes of the pod's other containers) but not open it, as with
    # docker's device rules; --privileged may.
    script = ("mknod /tmp/disk b $(cut -d: -f1 /sys/block/vda/dev) $(cut -d: -f2 /sys/block/vda/dev) && "
              "{ head -c 4 /tmp/disk >/dev/null 2>&1 && echo read || echo refused; }; head -c 1 /dev/zero | wc -c")
    confined = hyper("run", "--rm", "busybox", "sh", "-c", script)
    assert confined.stdout.split() == ["refused", "1"], confined.stderr
    privileged = hyper("run", "--rm", "--privileged", "busybox", "sh", "-c", script)
    assert privileged.stdout.split() == ["read", "1"], privileged.stderr


def _host_group(pid: int) -> tuple[Path, str]:
    """The host cgroup holding ``pid``'s memory, and the file that limits it (v1 or v2)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        return Path("/sys/fs/cgroup" + path), "memory.max"
    path = next(line.split(":", 2)[2] for line in lines if "memory" in line.split(":")[1].split(","))
    return Path("/sys/fs/cgroup/memory" + path), "memory.limit_in_bytes"


def test_each_vm_runs_in_a_host_cgroup_with_its_limits(hyper: Hyper) -> None:
    started = hyper("run", "-d", "--name", "bounded", "-m", "300m", "busybox", "sleep", "600")
    assert started.returncode == 0, started.stderr
    pid = int(hyper("inspect", "--format", "{{.State.Pid}}", "bounded").stdout)
    group, limit = _host_group(pid)
    assert group.name == f"hyper-{started.stdout.strip()[:12]}" and group.parent.name == "hyper"
    # The VM's memory (the container's limit and the guest's 96 MiB), QEMU's own 192 MiB, and
    # under TCG its translated-code cache, bounded on its command line.
    tcg = b"tcg,tb-size=256" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert int((group / limit).read_text()) == (300 + 96 + 192 + (256 if tcg else 0)) << 20
    assert hyper("rm", "-f", "bounded").returncode == 0
    wait_for(lambda: not group.exists(), 30, "the VM's host cgroup to go")


def test_default_seccomp_profile(hyper: Hyper) -> None:
    """syslog(2) needs no capability here (dmesg_restrict is 0), but docker's profile refuses it."""
    refused = hyper("run", "--rm", "busybox", "sh", "-c", "dmesg >/dev/null && echo read || echo refused")
    assert refused.stdout == "refused\n", refused.stderr
    for flags in (["--security-opt", "seccomp=unconfined"], ["--cap-add", "SYSLOG"], ["--privileged"]):
        allowed = hyper("run", "--rm", *flags, "busybox", "sh", "-c", "dmesg | head -1")
        assert allowed.stdout.startswith("Linux version"), (flags, allowed.stdout, allowed.stderr)
    # unshare is refused by the filter even where a capability would allow it, unless SYS_ADMIN.
    assert hyper("run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "unshare", "-u", "true").returncode == 0
    assert hyper("run", "--rm", "busybox", "unshare", "-u", "true").returncode != 0


def test_a_seccomp_profile_of_the_users(hyper: Hyper, tmp_path: Path) -> None:
    """docker's profile format: errnoRet, a condition on an argument; the processes exec starts too."""
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
    ]}, indent=2))
    started = hyper("run", "-d", "--name", "filtered", "--security-opt", f"seccomp={profile}", "busybox",
                    "sleep", "600")
    assert started.returncode == 0, started.stderr
    got = hyper("exec", "filtered", "sh", "-c", "mkdir /made; touch /touched && echo touched; "
                "kill -0 $$ || echo probe refused; kill -CONT $$ && echo signalled")
    assert "mkdir: can't create directory '/made': Permission denied" in got.stderr, got.stderr
    assert got.stdout == "touched\nprobe refused\nsignalled\n", got.stdout
    shown = json.loads(hyper("inspect", "--format", "{{json .HostConfig.SecurityOpt}}", "filtered").stdout)
    assert [json.loads(option.removeprefix("seccomp=")) for option in shown] == [json.loads(profile.read_text())]
    assert hyper("rm", "-f", "filtered").returncode == 0

    before = hyper("ps", "-aq").stdout
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}')
    bad = hyper("run", "--security-opt", f"seccomp={profile}", "busybox", "true")
    assert bad.returncode == 125, bad.stderr
    assert bad.stderr == "hyper: invalid seccomp profile: syscalls[0].action is missing\n", bad.stderr
    missing = hyper("run", "--security-opt", f"seccomp={tmp_path}/none.json", "busybox", "true")
    assert missing.returncode == 125 and "opening seccomp profile" in missing.stderr, missing.stderr
    assert hyper("ps", "-aq").stdout == before
