"""Which devices a container may use: docker's default device rules, as a cgroup v2 BPF program.

cgroup v2 has no ``devices.allow`` file: the kernel asks a ``BPF_PROG_TYPE_CGROUP_DEVICE``
program attached to the container's cgroup at every open and ``mknod`` of a device node.
Without one, a container root (which keeps ``CAP_MKNOD``, as docker's does) could make a
node for the VM's disks, the images and volumes of the pod's other containers among them,
and read or write them.  The program is built here instruction by instruction (eBPF,
no compiler or libbpf in the guest): one block per rule, returning 1 (allow) on a match,
and 0 (deny) after the last.
"""

from __future__ import annotations

import ctypes
import os
import struct

from hyperstart import syscalls

BLOCK, CHAR = 1, 2
"""``BPF_DEVCG_DEV_*``: the low 16 bits of ``access_type``."""
MKNOD, READ, WRITE = 1, 2, 4
"""``BPF_DEVCG_ACC_*``: the high 16 bits."""
RWM = READ | WRITE | MKNOD
ANY = -1

DEFAULT_RULES = (
    (CHAR, ANY, ANY, MKNOD), (BLOCK, ANY, ANY, MKNOD),  # mknod of anything; using it is another matter
    (CHAR, 1, 3, RWM), (CHAR, 1, 5, RWM), (CHAR, 1, 7, RWM), (CHAR, 1, 8, RWM), (CHAR, 1, 9, RWM),  # null ... urandom
    (CHAR, 5, 0, RWM), (CHAR, 5, 1, RWM), (CHAR, 5, 2, RWM),  # tty, console, ptmx
    (CHAR, 136, ANY, RWM),  # the pts of the container's devpts
    (CHAR, 10, 200, RWM),  # tun
)
"""(type, major, minor, access): what docker (runc) allows a container that is not privileged."""

_SYS_BPF = 321
_BPF_PROG_LOAD, _BPF_PROG_ATTACH = 5, 8
_PROG_TYPE_CGROUP_DEVICE, _ATTACH_CGROUP_DEVICE = 15, 6

# eBPF opcodes (class | size/op | mode/source)
_LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K
_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K
_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
_MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_EXIT = 0x95  # BPF_JMP | BPF_EXIT


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(rules: list[tuple[int, int, int, int]]) -> bytes:
    """The instructions: r2 = type, r3 = access, r4 = major, r5 = minor from the context
    (``struct bpf_cgroup_dev_ctx``), then a block per rule."""
    out = [
        _insn(_LDX_W, 2, 1, 0), _insn(_MOV_X, 3, 2), _insn(_AND_K, 2, imm=0xFFFF), _insn(_RSH_K, 3, imm=16),
        _insn(_LDX_W, 4, 1, 4), _insn(_LDX_W, 5, 1, 8),
    ]
    for kind, major, minor, access in rules:
        # r6 = the access asked for beyond the rule's; each test that fails jumps to the next rule.
        tests = [(2, kind), *((reg, value) for reg, value in ((4, major), (5, minor)) if value != ANY), (6, 0)]
        out += [_insn(_MOV_X, 6, 3), _insn(_AND_K, 6, imm=~access & 0xFFFF)]
        out += [_insn(_JNE_K, reg, off=len(tests) - index + 1, imm=value) for index, (reg, value) in enumerate(tests)]
        out += [_insn(_MOV_K, 0, imm=1), _insn(_EXIT)]
    out += [_insn(_MOV_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(out)


def restrict(cgroup: str, extra: list[tuple[int, int, int, int]]) -> None:
    """Attach docker's default rules, and ``extra`` ones (a ``--device``'s), to ``cgroup``."""
    code = program([*DEFAULT_RULES, *extra])
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    # union bpf_attr for BPF_PROG_LOAD: type, insn_cnt, insns, license (the rest zero)
    attr = ctypes.create_string_buffer(struct.pack("<IIQQ", _PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                                                   ctypes.addressof(insns), ctypes.addressof(license_)), 128)
    prog = syscalls.bpf(_BPF_PROG_LOAD, attr, "load the device rules")
    try:
        directory = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attach = ctypes.create_string_buffer(struct.pack("<IIII", directory, prog, _ATTACH_CGROUP_DEVICE, 0), 128)
            syscalls.bpf(_BPF_PROG_ATTACH, attach, f"attach the device rules to {cgroup}")
        finally:
            os.close(directory)
    finally:
        os.close(prog)  # the attachment holds the program
