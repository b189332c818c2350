"""The few Linux system calls the standard library lacks, through ctypes."""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18

MNT_DETACH = 2
AT_FDCWD = -100
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 4

LINUX_REBOOT_CMD_RESTART = 0x01234567
RNDADDENTROPY = 0x40085203


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None,
            ctypes.c_ulong(flags), data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    # glibc has no wrapper for pivot_root; 155 is its number on x86_64.
    _check(_libc.syscall(155, new_root.encode(), put_old.encode()), "pivot_root")


def open_tree(path: str) -> int:
    """A detached bind mount of ``path`` (open_tree, 428 on x86_64), to be attached later with
    ``move_mount``, even after the mount it came from is out of reach."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC
    return _check(_libc.syscall(428, AT_FDCWD, path.encode(), ctypes.c_uint(flags)), f"open_tree {path}")


def move_mount(fd: int, target: str) -> None:
    """Attach the mount ``fd`` (from ``open_tree``) on ``target`` (move_mount, 429 on x86_64)."""
    _check(_libc.syscall(429, fd, b"", AT_FDCWD, target.encode(), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
           f"move_mount on {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def prctl_pointer(option: int, arg: int, pointer: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_void_p(pointer), 0, 0), f"prctl {option}")


def setrlimit(resource: int, soft: int, hard: int) -> None:
    """setrlimit(2) without the resource module (not in the guest's trimmed standard library)."""
    limits = (ctypes.c_uint64 * 2)(soft, hard)
    _check(_libc.setrlimit(resource, limits), f"setrlimit {resource}")


def reboot() -> None:
    """Restart the machine; with ``reboot=t`` and QEMU's -no-reboot that ends the VM."""
    _check(_libc.reboot(LINUX_REBOOT_CMD_RESTART), "reboot")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """``path`` opened as if ``root_fd`` were ``/`` (openat2 with RESOLVE_IN_ROOT, 437 on x86_64):
    ``..`` and symlinks, absolute ones too, never lead out of it."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    return _check(_libc.syscall(437, root_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)),
                  f"open {path}")


def bpf(command: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    """The bpf system call (321 on x86_64) with ``attr`` as its ``union bpf_attr``."""
    return _check(_libc.syscall(321, command, attr, ctypes.sizeof(attr)), what)
