"""Build ``busybox:latest`` from the host's busybox-static: a first image without any registry.

    python3 -m hyperd.image.busybox --root /var/lib/hyper

The image looks like Docker Hub's busybox: one statically linked binary, a symlink per
applet at the path busybox itself lists, ``/etc/passwd`` and ``/etc/group`` with root
and nobody, the usual empty directories, and ``Cmd ["sh"]``.  The tarball is
deterministic (sorted entries, numeric root ownership, one fixed mtime) and the image's
creation time is that same mtime, so building twice yields the same image id; when
``busybox:latest`` already has this content nothing is written at all.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hyperd.image import ImageError, ImageNotFound
from hyperd.image.store import Image, ImageConfig, ImageStore

BUSYBOX = Path("/bin/busybox")
REFERENCE = "busybox:latest"
CONFIG = ImageConfig(cmd=("sh",))
INSTALL_HINT = "apt-get install busybox-static"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"
# Directories beyond the applets' own; proc, sys and dev are mount points in the guest.
DIRECTORIES = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o755, "root": 0o700,
    "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "var": 0o755,
}
_PT_INTERP = 3


class BusyboxMissing(ImageError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: {INSTALL_HINT}")


def _check_static(binary: Path) -> None:
    """Refuse a dynamically linked busybox: the image has no libc to run it with."""
    try:
        with open(binary, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF":
                raise BusyboxMissing(f"{binary} is not an ELF executable")
            order = "<" if header[5] == 1 else ">"
            if header[4] == 2:
                phoff, = struct.unpack_from(order + "Q", header, 0x20)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 0x36)
            else:
                phoff, = struct.unpack_from(order + "I", header, 0x1C)
                phentsize, phnum = struct.unpack_from(order + "HH", header, 0x2A)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except FileNotFoundError:
        raise BusyboxMissing(f"{binary} not found") from None
    for index in range(phnum):
        p_type, = struct.unpack_from(order + "I", table, index * phentsize)
        if p_type == _PT_INTERP:
            raise BusyboxMissing(f"{binary} is dynamically linked and the image has no libc for it")


def _applets(binary: Path) -> list[str]:
    result = subprocess.run([str(binary), "--list-full"], stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, check=False)
    if result.returncode != 0:
        raise ImageError(f"{binary} --list-full failed: {result.stderr.strip()}")
    applets = []
    for line in result.stdout.split():
        path = line.strip("/")
        # Our own binary's output, but still: only plain relative paths make it into the tar.
        if path and path != "bin/busybox" and ".." not in path.split("/"):
            applets.append(path)
    return sorted(set(applets))


def _epoch(binary: Path) -> int:
    """The one timestamp of the image: SOURCE_DATE_EPOCH if set, else the binary's (its package build)."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else int(binary.stat().st_mtime)


def build_rootfs_tar(path: Path, binary: Path = BUSYBOX) -> Path:
    """Write the busybox root filesystem as a deterministic tarball at ``path``; returns ``path``."""
    _check_static(binary)
    applets = _applets(binary)
    mtime = _epoch(binary)
    directories = dict(DIRECTORIES)
    for applet in [*applets, "bin/busybox"]:
        parts = applet.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directories.setdefault("/".join(parts[:depth]), 0o755)
    files = {"etc/passwd": PASSWD.encode(), "etc/group": GROUP.encode()}

    def header(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    names = sorted([*directories, *files, *applets, "bin/busybox"], key=lambda name: name.split("/"))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            if name in directories:
                tar.addfile(header(name, tarfile.DIRTYPE, directories[name]))
            elif name in files:
                info = header(name, tarfile.REGTYPE, 0o644)
                info.size = len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
            elif name == "bin/busybox":
                info = header(name, tarfile.REGTYPE, 0o755)
                info.size = binary.stat().st_size
                with open(binary, "rb") as f:
                    tar.addfile(info, f)
            else:
                info = header(name, tarfile.SYMTYPE, 0o777)
                info.linkname = "/bin/busybox"
                tar.addfile(info)
    return path


def install(store: ImageStore, binary: Path = BUSYBOX) -> Image:
    """Make ``busybox:latest`` the image of this host's busybox-static; a no-op when it already is."""
    with tempfile.TemporaryDirectory(prefix=f"{os.getpid()}-busybox-", dir=store.tmp_dir) as scratch:
        tar = build_rootfs_tar(Path(scratch) / "rootfs.tar", binary)
        digest = hashlib.sha256()
        with open(tar, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        try:
            current: Image | None = store.resolve(REFERENCE)
        except ImageNotFound:
            current = None
        wanted = ImageConfig.from_oci(CONFIG.to_oci())
        if current is not None and current.diff_ids == (f"sha256:{digest.hexdigest()}",) and current.config == wanted:
            return current
        with open(tar, "rb") as f:
            return store.import_rootfs(f, REFERENCE, config=CONFIG,
                                       created=datetime.fromtimestamp(_epoch(binary), UTC),
                                       comment=f"busybox-static from {binary}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hyperd.image.busybox",
                                     description="Build busybox:latest from the host's busybox-static.")
    parser.add_argument("--root", type=Path, default=Path("/var/lib/hyper"), help="the daemon's root directory")
    args = parser.parse_args(argv)
    try:
        with ImageStore(args.root) as store:
            image = install(store)
    except ImageError as err:
        print(f"hyper: {err}", file=sys.stderr)
        return 1
    print(f"{REFERENCE} {image.id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
