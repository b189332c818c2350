"""An image's read-only disk: its layers flattened into one erofs filesystem.

The guest (``hyperstart.container``) mounts this disk read-only and stacks a tmpfs
overlay on it per container, so one file per layer stack (keyed by OCI chain id) serves
every pod using the image.  erofs because the disk never changes after it is built: it
is compact, needs no journal or fsck, and an uncompressed erofs lets the guest read file
data straight through the page cache without spending a small VM's CPU on decompression.

The layers are applied into a scratch directory with ``layers.apply_layer`` (which also
gives us the whiteout semantics overlayfs would otherwise need per layer), then
``mkfs.erofs`` packs that tree.  The result is reproducible: same layers, same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hyperd.image import CorruptBlob, DiskError
from hyperd.image.layers import DigestReader, apply_layer, decompress

MKFS = "mkfs.erofs"
MISSING_MKFS = "mkfs.erofs not found: install the erofs-utils package (apt-get install erofs-utils)"
# The only variables mkfs.erofs gets: where to find nothing else, and the timestamp
# (set per build below).
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True)
class LayerBlob:
    """A stored layer: where its blob is and the digests it must match."""

    path: Path
    digest: str
    diff_id: str


@dataclass(frozen=True)
class BuildStats:
    apply_seconds: float
    mkfs_seconds: float
    size: int


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI ChainID of a layer stack: the identity of the filesystem it produces."""
    if not diff_ids:
        return f"sha256:{hashlib.sha256(b'').hexdigest()}"
    chain = diff_ids[0]
    for diff_id in diff_ids[1:]:
        chain = f"sha256:{hashlib.sha256(f'{chain} {diff_id}'.encode()).hexdigest()}"
    return chain


def build(layers: Sequence[LayerBlob], output: Path, scratch_dir: Path) -> BuildStats:
    """Flatten ``layers`` (bottom first) into an erofs image written atomically to ``output``.

    Scratch space is a fresh directory under ``scratch_dir`` (same filesystem as
    ``output`` for the final rename), removed whatever happens.  Raises DiskError when
    mkfs.erofs is missing or fails, CorruptBlob when a blob does not match its digests,
    InvalidLayer when a layer is unsafe.
    """
    mkfs = shutil.which(MKFS, path=_ENV["PATH"])
    if mkfs is None:
        raise DiskError(MISSING_MKFS, [MKFS])
    # The pid in the name lets a later ImageStore clean up after a crashed build.  mkdtemp's
    # 0700 matters: the tree holds the image's setuid files and device nodes while it is built.
    scratch = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-disk-", dir=scratch_dir))
    try:
        rootfs = scratch / "rootfs"
        rootfs.mkdir()
        os.chmod(rootfs, 0o755)
        # A fixed root mtime, which layers may override: the build time would make disks differ.
        os.utime(rootfs, ns=(0, 0))
        started = time.monotonic()
        for layer in layers:
            _apply(layer, rootfs)
        applied = time.monotonic()
        image = scratch / "disk.erofs"
        # -U: a UUID derived from the content instead of a random one.  SOURCE_DATE_EPOCH:
        # mkfs.erofs 1.5 clamps every mtime to it and stamps the superblock with it; set
        # to the newest mtime in the tree it keeps all of them (``-T`` would flatten them).
        argv = [mkfs, "--quiet", f"-U{uuid.UUID(chain_id([layer.diff_id for layer in layers])[7:39])}",
                str(image), str(rootfs)]
        env = {**_ENV, "SOURCE_DATE_EPOCH": str(_newest_mtime(rootfs))}
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, text=True, errors="replace", check=False)
        if result.returncode != 0:
            raise DiskError(f"mkfs.erofs failed with exit status {result.returncode}", argv, result.stdout)
        built = time.monotonic()
        with open(image, "rb") as f:
            os.fsync(f.fileno())
        os.rename(image, output)
        fsync_dir(output.parent)
        return BuildStats(applied - started, built - applied, output.stat().st_size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _apply(layer: LayerBlob, rootfs: Path) -> None:
    if not layer.path.is_file():
        raise CorruptBlob(layer.digest, f"{layer.path} is missing")
    with open(layer.path, "rb") as raw:
        compressed = DigestReader(raw)
        plain = DigestReader(decompress(io.BufferedReader(compressed, 1 << 16)))
        apply_layer(io.BufferedReader(plain, 1 << 16), rootfs)
        # Hashes cover everything: tarfile stops reading at the end-of-archive marker.
        plain.drain()
        compressed.drain()
    # Checked after applying (into scratch, discarded on error) so the blob is read once.
    if compressed.digest != layer.digest:
        raise CorruptBlob(layer.digest, f"its content hashes to {compressed.digest}")
    if plain.digest != layer.diff_id:
        raise CorruptBlob(layer.digest, f"it unpacks to {plain.digest}, not its diff_id {layer.diff_id}")


def _newest_mtime(root: Path) -> int:
    """The newest mtime in the tree, in whole seconds rounded up."""
    newest = os.stat(root).st_mtime_ns
    for directory, _, _ in os.walk(root):
        with os.scandir(directory) as entries:
            for entry in entries:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
    return -(-newest // 1_000_000_000)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
