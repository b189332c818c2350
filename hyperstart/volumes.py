"""Volumes and bind mounts of a container: mounted in the VM, then bound into the container.

hyperd attaches a named volume as a disk of the VM (ext4) and a bind mount as a virtio-9p
share (a host directory).  The agent mounts each in the VM under the container's run
directory; ``container._enter_root`` binds them at their paths inside the container, after
``pivot_root``, so that a path the image made a symlink resolves within the container.

An empty volume is filled first with what the image has at its path, as docker does.  The
image is read through a descriptor opened with RESOLVE_IN_ROOT, so no symlink in it can
make the copy read the VM's own files.
"""

from __future__ import annotations

import os
import stat

from hyperstart import syscalls
from hyperstart.container import RUN, Container, StartError, disk_by_serial

NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"
"""9p as its host side expects: 9p2000.L for owners and modes, messages as large as virtio-9p
takes, and the page cache for mmap only, so that what the host writes is seen at once."""
EMPTY = {"lost+found"}
"""What a fresh ext4 volume holds."""


def attach(box: Container, entries: list[dict[str, object]]) -> None:
    """Mount each volume or share of ``entries`` in the VM, ready for the container to bind."""
    for index, entry in enumerate(entries):
        target = str(entry["target"])
        if not target.startswith("/") or "\0" in target:
            raise StartError(125, f"invalid mount point {target!r}")
        readonly = bool(entry.get("readonly"))
        where = f"{RUN}/containers/{box.id}/mounts/{index}"
        os.makedirs(where, exist_ok=True)
        flags = syscalls.MS_RDONLY if readonly else 0
        if "tag" in entry:
            syscalls.mount(str(entry["tag"]), where, "9p", flags, NINEP_OPTIONS)
        else:
            syscalls.mount(disk_by_serial(str(entry["disk"])), where, "ext4", flags)
        box.mounts.append(where)
        if entry.get("populate") and not readonly and set(os.listdir(where)) <= EMPTY:
            _populate(box.root, target, where)
        box.volumes.append((target, where, readonly))


def _populate(root: str, target: str, volume: str) -> None:
    """Copy the image's content at ``target`` (within ``root``) into the empty ``volume``."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        source = syscalls.open_in_root(root_fd, target, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there in the image: the volume stays empty
    finally:
        os.close(root_fd)
    try:
        _copy_tree(source, volume)
        _copy_attributes(os.stat(source), volume)
    finally:
        os.close(source)


def _copy_tree(source: int, into: str) -> None:
    """The entries of the directory ``source`` (a descriptor) into ``into``; no symlink followed."""
    with os.scandir(source) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            path = f"{into}/{entry.name}"
            mode = info.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(path)
                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=source)
                try:
                    _copy_tree(child, path)
                finally:
                    os.close(child)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(entry.name, dir_fd=source), path)
            elif stat.S_ISREG(mode):
                _copy_file(entry.name, source, path)
            else:  # device nodes, fifos and sockets: as they are
                os.mknod(path, mode, info.st_rdev)
            _copy_attributes(info, path)


def _copy_file(name: str, parent: int, path: str) -> None:
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while os.sendfile(target, source, None, 1 << 24):
                pass
        finally:
            os.close(target)
    finally:
        os.close(source)


def _copy_attributes(info: os.stat_result, path: str) -> None:
    os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
