"""A seccomp filter for a container's processes: the system calls hyperd names fail with EPERM.

The filter is a classic BPF program built here (no libseccomp in the guest): check the
architecture (anything but x86_64, including the x32 ABI, is refused), then compare the
call's number against each denied one.  hyperd decides which calls (docker's default
profile, less what the container's capabilities allow); this module only builds and
installs the program.
"""

from __future__ import annotations

import ctypes
import struct

from hyperstart import syscalls

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
LOAD = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
RET = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
EPERM = 1
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
MAX_DENIED = 250
"""Jump offsets are 8 bits: the deny list must fit within them."""


class _Program(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_char_p))


def program(denied: list[int]) -> bytes:
    """The BPF instructions, as the kernel's ``struct sock_filter`` array."""
    denied = sorted(set(denied))[:MAX_DENIED]
    count = len(denied)
    deny_at = 6 + count  # index of the final "fail with EPERM"

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    instructions = [
        op(LOAD, 4),  # seccomp_data.arch
        op(JEQ, AUDIT_ARCH_X86_64, jt=1),
        op(RET, RET_KILL_PROCESS),
        op(LOAD, 0),  # seccomp_data.nr
        op(JGE, X32_SYSCALL_BIT, jt=deny_at - 5),
    ]
    for index, number in enumerate(denied):
        instructions.append(op(JEQ, number, jt=deny_at - (6 + index)))
    instructions += [op(RET, RET_ALLOW), op(RET, RET_ERRNO | EPERM)]
    return b"".join(instructions)


def install(denied: list[int]) -> None:
    """Filter the calling process and every process it becomes or starts (before execve)."""
    code = program(denied)
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _Program(len(code) // 8, ctypes.cast(buffer, ctypes.c_char_p))
    syscalls.prctl_pointer(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
