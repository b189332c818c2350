"""Each VM's QEMU in a host cgroup with the pod's limits: the groups and files written, for both
cgroup layouts, on a directory tree standing in for /sys/fs/cgroup."""

from __future__ import annotations

from pathlib import Path

from hyperd.vm.cgroup import MAX_TASKS, QEMU_MIB, TCG_CACHE_MIB, HostCgroups, Limits, limits_for


def test_limits_cover_the_guest_and_qemu() -> None:
    tcg, kvm = limits_for(256, 1, tcg=True), limits_for(256, 1, tcg=False)
    assert tcg.memory == (256 + QEMU_MIB + TCG_CACHE_MIB) << 20 and kvm.memory == (256 + QEMU_MIB) << 20
    assert limits_for(256, 1000, tcg=False).cpus == 0  # more than the host has: no quota
    assert tcg.tasks == MAX_TASKS


def test_v1_groups_sit_under_hyperds_own_in_each_hierarchy(tmp_path: Path) -> None:
    for controller in ("memory", "cpu", "pids"):
        (tmp_path / controller).mkdir()
    cgroups = HostCgroups(tmp_path, own="4:memory:/box/inner\n1:cpu,cpuacct:/\n8:pids:/\n0::/\n")
    made = cgroups.place("hyper-abc", 4242, Limits(700 << 20, 2))
    memory = tmp_path / "memory/box/inner/hyper/hyper-abc"
    assert made == [memory, tmp_path / "cpu/hyper/hyper-abc", tmp_path / "pids/hyper/hyper-abc"]
    assert (memory / "memory.limit_in_bytes").read_text() == str(700 << 20)
    assert (memory / "cgroup.procs").read_text() == "4242"
    assert (tmp_path / "cpu/hyper/hyper-abc/cpu.cfs_quota_us").read_text() == "200000"
    assert (tmp_path / "pids/hyper/hyper-abc/pids.max").read_text() == str(MAX_TASKS)


def test_v2_groups_are_a_sibling_of_hyperds_with_the_controllers_handed_down(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    service = tmp_path / "system.slice" / "hyperd.service"
    service.mkdir(parents=True)
    (tmp_path / "system.slice" / "cgroup.subtree_control").write_text("memory pids\n")
    cgroups = HostCgroups(tmp_path, own="0::/system.slice/hyperd.service\n")
    base = tmp_path / "system.slice" / "hyper"
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("")
    [group] = cgroups.place("hyper-abc", 7, Limits(512 << 20, 0))
    assert group == base / "hyper-abc"
    assert (tmp_path / "system.slice/cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (group / "memory.max").read_text() == str(512 << 20)
    assert (group / "cpu.max").read_text() == "max 100000"
    assert not (group / "memory.swap.max").exists()  # no swap accounting here: not made up


def test_a_host_without_the_controllers_runs_vms_unconfined(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    cgroups = HostCgroups(tmp_path, own="0::/\n")
    assert cgroups.place("hyper-abc", 7, Limits(1, 0)) == []
    assert "memory, pids" in cgroups.reason


def test_a_failure_is_logged_not_raised_and_leftovers_are_reclaimed(tmp_path: Path) -> None:
    for controller in ("memory", "cpu", "pids"):
        (tmp_path / controller).mkdir()
    (tmp_path / "pids" / "hyper").write_text("not a directory")
    cgroups = HostCgroups(tmp_path, own="1:memory:/\n")
    made = cgroups.place("hyper-abc", 7, Limits(1 << 30, 0))
    assert made == [tmp_path / "memory/hyper/hyper-abc", tmp_path / "cpu/hyper/hyper-abc"]
    for group in made:  # as the kernel's cgroupfs would: a group's files go with it
        for file in group.iterdir():
            file.unlink()
    cgroups.reclaim()
    assert not made[0].exists() and not made[1].exists()
