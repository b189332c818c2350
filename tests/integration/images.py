"""OCI image layouts built in Python for the pull tests, byte for byte the same on every run.

``write_layout(dir, {tag: spec})`` writes an OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/``) that ``skopeo copy oci:DIR:TAG docker://...`` pushes.  A spec is an
``ImageSpec`` (one manifest, its config, its layers) or an ``IndexSpec`` (an OCI index of
several platforms).  A layer is a list of tar entries or an existing tarball, compressed with
gzip or zstd.  Tar entries carry one fixed mtime, numeric root ownership and no user names, and
the compressors write no timestamps, so a spec always yields the same digests.

The images the tests use are built here too: ``multi_layer`` (whiteouts, an opaque directory,
hard and symbolic links across three layers), ``platforms`` (amd64 and arm64 in one index),
``MALICIOUS`` (layers that try to write outside the root) and ``debian`` (a Debian minbase made
by mmdebstrap, cached under ``/var/cache/hyper/test-images``).  No pytest here.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Protocol, cast

MTIME = 1700000000
CREATED = "2023-11-14T22:13:20Z"
"""The creation time of every image here: ``MTIME``."""
CACHE = Path("/var/cache/hyper/test-images")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
MMDEBSTRAP_TIMEOUT = 1800.0
CHUNK = 1 << 20

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


class ImageBuildError(Exception):
    """A test image could not be built (mmdebstrap failed, a tool is missing)."""


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"

    @property
    def tar_type(self) -> bytes:
        return {Kind.FILE: tarfile.REGTYPE, Kind.DIR: tarfile.DIRTYPE, Kind.SYMLINK: tarfile.SYMTYPE,
                Kind.HARDLINK: tarfile.LNKTYPE}[self]


@dataclass(frozen=True)
class Entry:
    """One tar member, named exactly as it goes into the tar (no normalisation: see ``MALICIOUS``)."""

    name: str
    kind: Kind = Kind.FILE
    data: bytes = b""
    target: str = ""     # of a link
    mode: int | None = None

    def info(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.kind.tar_type
        info.mode = self.mode if self.mode is not None else 0o755 if self.kind is Kind.DIR else 0o644
        if self.kind in (Kind.SYMLINK, Kind.HARDLINK):
            info.linkname = self.target
            info.mode = 0o777 if self.kind is Kind.SYMLINK else info.mode
        info.size = len(self.data) if self.kind is Kind.FILE else 0
        info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
        return info


def file(name: str, data: bytes | str, mode: int = 0o644) -> Entry:
    return Entry(name, Kind.FILE, data.encode() if isinstance(data, str) else data, mode=mode)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, Kind.DIR, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, Kind.SYMLINK, target=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, Kind.HARDLINK, target=target)


def whiteout(path: str) -> Entry:
    """Delete ``path`` of the layers below: an empty ``.wh.NAME`` beside it."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")


def opaque(path: str) -> Entry:
    """Hide everything the layers below have in directory ``path``."""
    return file(f"{path}/.wh..wh..opq", b"")


class Compression(StrEnum):
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_type(self) -> str:
        return f"application/vnd.oci.image.layer.v1.tar+{self.value}"


@dataclass(frozen=True)
class Layer:
    """A layer: ``entries`` in order, or the tarball ``tar`` as it is."""

    entries: tuple[Entry, ...] = ()
    tar: Path | None = None
    compression: Compression = Compression.GZIP
    level: int = 6
    """gzip level 1-9 or zstd level 1-22."""


@dataclass(frozen=True)
class ImageSpec:
    layers: tuple[Layer, ...]
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""
    cmd: tuple[str, ...] = ("sh",)
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    config: tuple[tuple[str, object], ...] = ()
    """More keys of the image config's ``config`` object (``StopSignal``, ``Labels``, ``WorkingDir``...)."""

    @property
    def platform(self) -> dict[str, str]:
        return {"architecture": self.architecture, "os": self.os, **({"variant": self.variant} if self.variant else {})}


@dataclass(frozen=True)
class IndexSpec:
    """An OCI index (a multi-platform image), its manifests in this order."""

    images: tuple[ImageSpec, ...]


# ---------------------------------------------------------------------------------------------
# Writing a layout


def entries_tar(entries: tuple[Entry, ...] | list[Entry]) -> bytes:
    """The uncompressed tar of ``entries``, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.info(), io.BytesIO(entry.data) if entry.kind is Kind.FILE else None)
    return buffer.getvalue()


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


@contextlib.contextmanager
def _compressor(out: _Hashing, compression: Compression, level: int) -> Iterator[_Sink]:
    if compression is Compression.GZIP:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=level, mtime=0) as stream:
            yield stream
    else:
        import zstandard

        with zstandard.ZstdCompressor(level=level).stream_writer(cast("IO[bytes]", out), closefd=False) as writer:
            yield writer


class _Blobs:
    """``blobs/sha256`` of a layout being written."""

    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        path = self.dir / digest
        if not path.exists():
            path.write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def layer(self, layer: Layer) -> tuple[dict[str, object], str]:
        """(descriptor, diff id) of a layer, compressed as it asks; streamed when it is a tarball."""
        plain_hash = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=self.dir, prefix=".layer-", delete=False) as out:
            try:
                packed = _Hashing(out)
                with _compressor(packed, layer.compression, layer.level) as stream:
                    source: IO[bytes] = open(layer.tar, "rb") if layer.tar else io.BytesIO(entries_tar(layer.entries))  # noqa: SIM115
                    with source:
                        while chunk := source.read(CHUNK):
                            plain_hash.update(chunk)
                            stream.write(chunk)
                out.flush()
                digest = packed.hash.hexdigest()
                os.replace(out.name, self.dir / digest)
            except BaseException:
                os.unlink(out.name)
                raise
        descriptor = {"mediaType": layer.compression.media_type, "digest": f"sha256:{digest}", "size": packed.size}
        return descriptor, f"sha256:{plain_hash.hexdigest()}"


class _Hashing(io.RawIOBase):
    """A write-only stream hashing and counting what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def _manifest(blobs: _Blobs, spec: ImageSpec) -> dict[str, object]:
    layers, diff_ids = [], []
    for layer in spec.layers:
        descriptor, diff_id = blobs.layer(layer)
        layers.append(descriptor)
        diff_ids.append(diff_id)
    config = json.dumps({
        **spec.platform, "created": CREATED,
        "config": {"Cmd": list(spec.cmd), "Env": list(spec.env), **dict(spec.config)},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "tests/integration/images.py"} for _ in layers],
    }, sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": blobs.add(config, OCI_CONFIG),
                           "layers": layers}).encode()
    return {**blobs.add(manifest, OCI_MANIFEST), "platform": spec.platform}


def write_layout(layout: Path, images: Mapping[str, ImageSpec | IndexSpec]) -> Path:
    """Write an OCI layout at ``layout`` holding ``images`` by tag; returns ``layout``."""
    blobs = _Blobs(layout)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    manifests = []
    for tag, spec in images.items():
        if isinstance(spec, ImageSpec):
            descriptor = _manifest(blobs, spec)
            del descriptor["platform"]
        else:
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                "manifests": [_manifest(blobs, image) for image in spec.images]}).encode()
            descriptor = blobs.add(index, OCI_INDEX)
        manifests.append({**descriptor, "annotations": {REF_NAME: tag}})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return layout


def layers_of(layout: Path, tag: str) -> list[dict[str, object]]:
    """The layer descriptors of the single-manifest image ``tag`` of a layout."""
    def blob(digest: str) -> dict[str, object]:
        document: dict[str, object] = json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:"))
                                                 .read_text())
        return document

    index = json.loads((layout / "index.json").read_text())
    [descriptor] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    layers = blob(descriptor["digest"])["layers"]
    assert isinstance(layers, list)
    return layers


# ---------------------------------------------------------------------------------------------
# The test images


def busybox_layer(scratch: Path) -> Layer:
    """The busybox root filesystem of ``hyperd.image.busybox`` as a gzip layer (its tar written in ``scratch``)."""
    from hyperd.image.busybox import build_rootfs_tar

    path = scratch / "busybox-rootfs.tar"
    if not path.exists():
        build_rootfs_tar(path)
    return Layer(tar=path)


def busybox(scratch: Path, *, cmd: tuple[str, ...] = ("sh",), extra: tuple[Entry, ...] = (),
            architecture: str = "amd64", config: tuple[tuple[str, object], ...] = ()) -> ImageSpec:
    """busybox, with one more layer of ``extra`` entries when given."""
    layers = (busybox_layer(scratch), *((Layer(extra),) if extra else ()))
    return ImageSpec(layers, architecture=architecture, cmd=cmd, env=("PATH=/bin:/sbin",), config=config)


def multi_layer(scratch: Path) -> ImageSpec:
    """busybox, then ``/data`` in two more layers; ``MULTI_LAYER_SCRIPT`` shows ``MULTI_LAYER_EXPECTED``.

    Layer 2 (gzip) adds files, a directory tree ``conf/`` with a subdirectory, a hard link
    ``hard`` to ``keep.txt``, a symlink ``link -> keep.txt`` and an executable.  Layer 3 (zstd)
    deletes ``gone.txt`` with a whiteout, makes ``conf/`` opaque (only ``conf/new`` is left)
    and adds ``added``.
    """
    second = Layer((
        directory("data"),
        file("data/keep.txt", "kept\n"),
        file("data/gone.txt", "to be deleted\n"),
        directory("data/conf"),
        file("data/conf/old-a", "a\n"),
        file("data/conf/old-b", "b\n"),
        directory("data/conf/sub"),
        file("data/conf/sub/deep", "deep\n"),
        hardlink("data/hard", "data/keep.txt"),
        symlink("data/link", "keep.txt"),
        file("data/exec.sh", "#!/bin/sh\necho exec ran\n", mode=0o755),
    ))
    third = Layer((
        whiteout("data/gone.txt"),
        directory("data/conf"),
        opaque("data/conf"),
        file("data/conf/new", "new\n"),
        file("data/added", "layer 3\n"),
    ), compression=Compression.ZSTD, level=3)
    return ImageSpec((busybox_layer(scratch), second, third), env=("PATH=/bin:/sbin",))


MULTI_LAYER_SCRIPT = (
    "cd /data && find . | sort && cat keep.txt hard added conf/new && readlink link && cat link"
    " && [ \"$(stat -c %i keep.txt)\" = \"$(stat -c %i hard)\" ] && echo same inode && stat -c %h keep.txt"
    " && stat -c %a exec.sh && ./exec.sh"
)
MULTI_LAYER_EXPECTED = """\
.
./added
./conf
./conf/new
./exec.sh
./hard
./keep.txt
./link
kept
kept
layer 3
new
keep.txt
kept
same inode
2
755
exec ran
"""


PLATFORM_MARKER = "etc/arm64-marker"


def platforms(scratch: Path) -> IndexSpec:
    """linux/arm64 (first, with ``/etc/arm64-marker``) and linux/amd64; each prints its architecture."""
    return IndexSpec((
        busybox(scratch, cmd=("echo", "arm64"), extra=(file(PLATFORM_MARKER, "arm64\n"),), architecture="arm64"),
        busybox(scratch, cmd=("echo", "amd64")),
    ))


MALICIOUS: dict[str, tuple[str, tuple[Entry, ...]]] = {
    "dotdot": ("../escape", (file("fine", "ok\n"), file("../escape", "escaped\n"))),
    "absolute": ("/etc/evil", (file("fine", "ok\n"), file("/etc/evil", "evil\n"))),
    "symlink": ("link/etc/x", (symlink("link", "/"), file("link/etc/x", "through the link\n"))),
    "hardlink": ("../../outside", (file("fine", "ok\n"), hardlink("evil-hard", "../../outside"))),
}
"""name -> (the entry a refusal must name, the one layer's entries)."""


def malicious(name: str) -> ImageSpec:
    return ImageSpec((Layer(MALICIOUS[name][1]),))


def incompressible(seed: str, size: int) -> ImageSpec:
    """One layer with ``size`` pseudo-random bytes (so its blob is about as big) seeded by ``seed``."""
    data = random.Random(seed).randbytes(size)
    return ImageSpec((Layer((file("random.bin", data),), level=1),))


# ---------------------------------------------------------------------------------------------
# Debian


def debian_mirror(sources: tuple[Path, ...] = (Path("/etc/apt/sources.list"),
                                               Path("/etc/apt/sources.list.d/debian.sources"))) -> str:
    """The host's Debian mirror (one-line or deb822 sources), else deb.debian.org."""
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if match := re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", line):
                return match.group(1)
            if match := re.match(r"\s*URIs:\s*(\S+/debian)/?\s*$", line):
                return match.group(1)
    return DEBIAN_MIRROR


def debian_tarball(suite: str = "bookworm", variant: str = "minbase", cache: Path = CACHE) -> Path:
    """A Debian root filesystem tarball by mmdebstrap, built once and kept at ``cache/debian-SUITE-VARIANT.tar``.

    Built into a temporary file and renamed, so an interrupted build leaves no half tarball
    for the next run to trust.  ``/dev`` is left empty, as in Docker Hub's debian images.
    """
    target = cache / f"debian-{suite}-{variant}.tar"
    if target.is_file():
        return target
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap not found (apt-get install mmdebstrap)")
    cache.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=cache, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        mode = "root" if os.geteuid() == 0 else "unshare"
        argv = ["mmdebstrap", f"--variant={variant}", f"--mode={mode}", "--format=tar", "--skip=output/dev",
                "--quiet", suite, temp, debian_mirror()]
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=MMDEBSTRAP_TIMEOUT, check=False,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                                     "HOME": "/root" if mode == "root" else os.environ.get("HOME", "/")})
        if result.returncode != 0:
            tail = "\n".join(result.stderr.splitlines()[-20:])
            raise ImageBuildError(f"{' '.join(argv)} failed with status {result.returncode}:\n{tail}")
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return target


def debian(tarball: Path) -> ImageSpec:
    """The Debian tarball as one gzip layer, configured like Docker Hub's debian (``Cmd ["bash"]``)."""
    return ImageSpec((Layer(tar=tarball, level=1),), cmd=("bash",))


__all__ = ["CACHE", "MALICIOUS", "MULTI_LAYER_EXPECTED", "MULTI_LAYER_SCRIPT", "PLATFORM_MARKER", "Compression",
           "Entry", "ImageBuildError", "ImageSpec", "IndexSpec", "Kind", "Layer", "busybox", "busybox_layer",
           "debian", "debian_mirror", "debian_tarball", "directory", "entries_tar", "file", "hardlink",
           "incompressible", "layers_of", "malicious", "multi_layer", "opaque", "platforms", "symlink", "whiteout",
           "write_layout"]
