"""The QEMU driver's command line and console log (no VM)."""

from __future__ import annotations

from pathlib import Path

from hyperd.vm import Disk, VMSpec, qemu
from hyperd.vm.accel import Accelerator


def spec(tmp_path: Path) -> VMSpec:
    return VMSpec(name="hyper-abc", kernel=Path("/k/vmlinux"), guest_disk=Path("/g/guest.erofs"),
                  workdir=tmp_path, vcpus=2, memory_mib=512,
                  disks=(Disk(Path("/img/a.erofs"), "imga"), Disk(Path("/vol/b.img"), "volb", readonly=False)))


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_guest_disk_comes_first_and_disks_keep_their_modes(tmp_path: Path) -> None:
    driver = qemu.Qemu("/usr/bin/qemu-system-x86_64", "7.2", Accelerator("tcg", "test"))
    argv = driver.argv(spec(tmp_path), 10, 11, 12)
    drives = option_values(argv, "-drive")
    assert drives[0].startswith("file=/g/guest.erofs,") and "readonly=on" in drives[0]
    assert "readonly=on" in drives[1] and "readonly=off" in drives[2]
    assert all("werror=report,rerror=report" in drive for drive in drives)  # a full host disk never pauses a VM
    serials = [d.rsplit("serial=", 1)[1] for d in option_values(argv, "-device") if "virtio-blk" in d]
    assert serials == [qemu.GUEST_DISK_SERIAL, "imga", "volb"]
    assert "root=/dev/vda" in option_values(argv, "-append")[0]
    assert option_values(argv, "-m") == ["512"] and option_values(argv, "-smp") == ["2"]
    chardevs = option_values(argv, "-chardev")
    assert {"socket,id=agent,fd=10", "socket,id=monitor,fd=11", "socket,id=console,fd=12"} <= set(chardevs)
    assert option_values(argv, "-accel") == ["tcg,tb-size=256"] and option_values(argv, "-cpu") == ["max"]


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    driver = qemu.Qemu("/usr/bin/qemu-system-x86_64", "7.2", Accelerator("kvm", "probe booted"))
    argv = driver.argv(spec(tmp_path), 3, 4, 5)
    assert option_values(argv, "-accel") == ["kvm"] and option_values(argv, "-cpu") == ["host"]


def test_console_log_is_capped(tmp_path: Path) -> None:
    log = qemu.ConsoleLog(tmp_path / "console.log")
    line = b"x" * 1023 + b"\n"
    for _ in range(3 * qemu.CONSOLE_LIMIT // len(line)):
        log.write(line)
    log.write(b"the last line\n")
    log.close()
    current = (tmp_path / "console.log").read_bytes()
    previous = (tmp_path / "console.log.1").read_bytes()
    assert current.endswith(b"the last line\n")
    assert len(current) <= qemu.CONSOLE_LIMIT and len(previous) <= qemu.CONSOLE_LIMIT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log", "console.log.1"]
