"""A container's seccomp filter: the BPF program hyperd compiled, installed for a process and
everything it becomes or starts.

hyperd compiles docker's default profile, or the user's, for the container's capabilities
(``hyperd/seccomp.py``); the guest has no libseccomp and only checks that what it installs is a
whole number of instructions within the kernel's limit.
"""

from __future__ import annotations

import ctypes

from hyperstart import syscalls

INSTRUCTION = 8
"""Bytes of a ``struct sock_filter``."""
MAX_INSTRUCTIONS = 4096
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _Program(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_char_p))


def check(program: bytes) -> bytes:
    if not program or len(program) % INSTRUCTION or len(program) > MAX_INSTRUCTIONS * INSTRUCTION:
        raise ValueError(f"a seccomp filter of {len(program)} bytes is not 1 to {MAX_INSTRUCTIONS} instructions")
    return program


def install(program: bytes) -> None:
    """Filter the calling process (before execve; it must have CAP_SYS_ADMIN or no_new_privs)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _Program(len(program) // INSTRUCTION, ctypes.cast(buffer, ctypes.c_char_p))
    syscalls.prctl_pointer(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
