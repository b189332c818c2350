"""The confinement hyperd asks of the guest: limits, capabilities, devices and their BPF."""

from __future__ import annotations

import struct

import pytest

from hyperd.errors import InvalidArgument
from hyperd.isolation import Device, Resources, Security, parse_size, split_device
from hyperstart import devcg


def test_sizes_and_vm_sizing() -> None:
    assert parse_size("512m", "memory") == 512 << 20 and parse_size("1g", "memory") == 1 << 30
    limited = Resources.parse(memory=512 << 20, cpus=1.5)
    assert limited.vm_memory_mib(256) == 512 + 96 and limited.vm_vcpus() == 2
    assert Resources().vm_memory_mib(256) == 256 and Resources().vm_vcpus() == 1
    assert limited.agent_limits() == {"memory": 512 << 20, "memory_swap": 0, "cpu_quota": 150000,
                                      "cpu_period": 100000}
    assert Resources.parse(cpu_shares=1024).agent_limits() == {"cpu_weight": 39}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memory": 1 << 20}, "minimum memory"), ({"memory_swap": 1 << 30}, "always set the memory limit"),
    ({"memory": 64 << 20, "memory_swap": 32 << 20}, "larger than the memory"), ({"cpus": 1000.0}, "range of CPUs"),
    ({"cpu_shares": 1}, "cpu-shares"), ({"cpuset_cpus": "1-0"}, "upwards"), ({"pids_limit": -5}, "pids-limit"),
])
def test_resource_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Resources.parse(**kwargs)  # type: ignore[arg-type]


def test_capabilities_and_security_options() -> None:
    assert Security.parse(security_opt=("no-new-privileges:true",)).no_new_privileges
    assert len(Security.parse(cap_drop=("ALL",)).capabilities()) == 0
    with pytest.raises(InvalidArgument, match="unknown capability"):
        Security.parse(cap_add=("FLY",))
    with pytest.raises(InvalidArgument, match=r"seccomp=unconfined or seccomp=PROFILE\.json"):
        Security.parse(security_opt=("apparmor=foo",))


def _run_device_program(code: bytes, kind: int, access: int, major: int, minor: int) -> int:
    """Execute the device program on one request: an interpreter of the few eBPF instructions it uses."""
    context = struct.pack("<III", (access << 16) | kind, major, minor)
    regs = [0] * 11
    pc = 0
    while True:
        op, registers, off, imm = struct.unpack("<BBhi", code[pc * 8:pc * 8 + 8])
        dst, src = registers & 0xF, registers >> 4
        pc += 1
        if op == 0x61:  # the context is r1's only memory
            assert src == 1 and off in (0, 4, 8)
            regs[dst] = struct.unpack_from("<I", context, off)[0]
        elif op == 0xBF:
            regs[dst] = regs[src]
        elif op == 0xB7:
            regs[dst] = imm
        elif op == 0x57:
            regs[dst] &= imm & 0xFFFFFFFFFFFFFFFF
        elif op == 0x77:
            regs[dst] >>= imm
        elif op == 0x55:
            pc += off if regs[dst] != imm else 0
        elif op == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


def test_device_rules_are_dockers_and_a_devices() -> None:
    code = devcg.program([*devcg.DEFAULT_RULES, (devcg.BLOCK, 254, 16, devcg.READ | devcg.MKNOD)])

    def allowed(kind: int, access: int, major: int, minor: int) -> bool:
        return _run_device_program(code, kind, access, major, minor) == 1

    char, block, read, write, mknod = devcg.CHAR, devcg.BLOCK, devcg.READ, devcg.WRITE, devcg.MKNOD
    assert allowed(char, read | write, 1, 3) and allowed(char, read, 1, 9) and allowed(char, write, 136, 7)
    assert allowed(char, read | write, 5, 2) and allowed(char, read, 10, 200)
    assert allowed(block, mknod, 254, 0) and allowed(char, mknod, 4, 1)  # made, not used
    assert not allowed(block, read, 254, 0) and not allowed(block, write, 254, 0)  # the VM's disks
    assert not allowed(char, read, 1, 1) and not allowed(char, write, 4, 1)  # /dev/mem, a console
    assert not allowed(block, read, 8, 0) and not allowed(char, read, 1, 4)
    assert allowed(block, read, 254, 16) and not allowed(block, write, 254, 16)  # the --device, read-only
    assert not allowed(block, read, 254, 17) and not allowed(char, read, 254, 16)


def test_devices() -> None:
    assert split_device("/dev/sdb") == ("/dev/sdb", "/dev/sdb", "rwm")
    assert split_device("/dev/sdb:r") == ("/dev/sdb", "/dev/sdb", "r")
    assert split_device("/x.img:/dev/xvdc:rw") == ("/x.img", "/dev/xvdc", "rw")
    with pytest.raises(InvalidArgument, match="character device"):
        Device.parse("/dev/null:/dev/n")
