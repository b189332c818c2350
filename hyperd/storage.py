"""A container's writable layer on a disk of its own.

hyperd gives every container that outlives its run a sparse ext4 image file in its directory
(``--storage-opt size=``, or the daemon's ``storage-opts`` default), attached read-write to
every VM that runs the container, where hyperstart keeps the overlay's upper and work
directories: the size is a hard limit the guest kernel enforces, and the changes survive a
restart of the container, as Docker's do, and can be copied, diffed or committed after it
stopped.  A ``--rm`` container's writable layer is a tmpfs in its VM: it goes with the VM.

The file is written by the guest, which is untrusted: hyperd creates it and hands it to
QEMU, and never mounts or reads it on the host.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from hyperd import spawn
from hyperd.errors import InvalidArgument, StorageError

MIN_SIZE = 32 << 20
"""Bytes; below this ext4's own metadata leaves the container next to nothing."""
MAX_SIZE = 16 << 40
DEFAULT_SIZE = 10 << 30
"""docker's devicemapper default; sparse, so an unused size costs nothing."""
MKFS = "mkfs.ext4"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_options(options: dict[str, str]) -> int:
    """Docker's ``--storage-opt`` as the writable layer's size in bytes (0: none given)."""
    unknown = sorted(set(options) - {"size"})
    if unknown:
        raise InvalidArgument(f"unknown storage option {unknown[0]!r}: only size=SIZE is supported")
    return parse_size(options["size"], "storage") if "size" in options else 0


def parse_size(text: str, what: str) -> int:
    """A disk's size (``512M``, ``2G``) in bytes, within what an ext4 disk can be."""
    text = text.strip()
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidArgument(f"invalid {what} size {text!r}: expected a number with an optional unit (512M, 2G)")
    size = int(float(match[1]) * _UNITS[match[2].lower()])
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidArgument(f"{what} size {text} is out of range: from {MIN_SIZE >> 20}M to {MAX_SIZE >> 40}T")
    return size


async def create(path: Path, size: int) -> None:
    """A sparse ext4 image of ``size`` bytes at ``path``, made atomically (no half-made disk survives)."""
    mkfs = shutil.which(MKFS, path=spawn.MINIMAL_ENV["PATH"])
    if mkfs is None:
        raise StorageError(f"{MKFS} not found: install the e2fsprogs package (apt-get install e2fsprogs)")
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(scratch, "wb") as image:
            image.truncate(size)
        # Lazy init: the inode tables and journal are zeroed by the guest as it goes, so a
        # large disk costs nothing up front and stays sparse on the host.
        status, output = await spawn.run([mkfs, "-q", "-F", "-m", "0", "-E",
                                          "lazy_itable_init=1,lazy_journal_init=1", str(scratch)])
        if status != 0:
            raise StorageError(f"{MKFS} failed with exit status {status}: {output.strip()[-500:]}")
        os.replace(scratch, path)
    except OSError as err:
        raise StorageError(f"cannot create the disk {path}: {err.strerror or err}") from err
    finally:
        scratch.unlink(missing_ok=True)
