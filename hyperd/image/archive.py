"""``hyper save`` / ``hyper load``: images to and from Docker archives and OCI image layouts.

``save`` writes what Docker 25+ writes: one tarball that is at once an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``) and a Docker archive (``manifest.json``
pointing into those blobs, plus the legacy ``repositories``), so ``docker load``, skopeo and
containerd all read it.  The store's blobs go in as they are, each once, and the output
depends only on the images saved: saving twice gives the same bytes.

``load`` reads a Docker archive (Docker 25+'s, or the older ``<id>/layer.tar`` + ``<hex>.json``
one) or, when there is no ``manifest.json``, an OCI image layout.  The archive is untrusted:
nothing is extracted, JSON members are size-bounded, the paths the JSON names must be plain
relative paths to regular members, and every layer is read once, checked by ``validate_layer``,
hashed against its blob name or descriptor and the config's diff_ids, and staged as a blob.
Images are recorded only after every layer of every image verified; on failure the blobs this
load created are removed, so the store is as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import IO, Any, BinaryIO

from hyperd.image import CorruptBlob, ImageError, InvalidArchive, InvalidLayer, InvalidReference
from hyperd.image.layers import MALFORMED, Compression, DigestReader, check_layer
from hyperd.image.reference import DOCKER_HUB, split_domain
from hyperd.image.registry import (
    LAYER_COMPRESSION,
    OCI_INDEX,
    TAR_LAYERS,
    ZSTD_LAYERS,
    Platform,
    parse_descriptor,
    select_platform,
)
from hyperd.image.store import (
    CONFIG,
    LAYER_GZIP,
    MANIFEST,
    Image,
    ImageConfig,
    ImageStore,
    Layer,
    Reference,
    canonical_json,
    digest_of,
    parse_reference,
)

MAX_JSON = 8 << 20
"""Bytes of a JSON member of an archive: manifest.json, an index, a manifest, a config."""
MAX_MEMBERS = 1 << 16
"""Members of an archive; Docker writes at most four per layer of each image."""
LAYER_TAR = TAR_LAYERS[0]
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

_CHUNK = 1 << 20
_MAX_LINKS = 8
_MAX_NESTING = 4
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")
# Compressions with an OCI media type: such layers are stored as given.
_MEDIA_TYPES = {Compression.NONE: LAYER_TAR, Compression.GZIP: LAYER_GZIP, Compression.ZSTD: ZSTD_LAYERS[0]}


# ---------------------------------------------------------------------------------------------
# Save


def save(store: ImageStore, references: Sequence[str], out: BinaryIO) -> None:
    """Write the images ``references`` name to ``out`` as one tar stream, written front to back.

    An image is saved once with every tag it was named by; one named by id or digest is saved
    untagged, as Docker does.  Every reference is resolved and every blob opened before the
    first byte is written, so ImageNotFound or CorruptBlob leaves ``out`` untouched.
    """
    saved: dict[str, tuple[Image, list[str]]] = {}
    for reference in references:
        image = store.resolve(reference)
        tags = saved.setdefault(image.id, (image, []))[1]
        tag = _tag(reference, image)
        if tag is not None and tag not in tags:
            tags.append(tag)
    with contextlib.ExitStack() as files:
        blobs: dict[str, tuple[int, BinaryIO]] = {}
        docker: list[dict[str, Any]] = []
        descriptors: list[dict[str, Any]] = []
        repositories: dict[str, dict[str, str]] = {}
        for image, tags in saved.values():
            manifest = store.blobs.read(image.manifest_digest)
            config = store.blobs.read(image.id)
            blobs[image.manifest_digest] = (len(manifest), io.BytesIO(manifest))
            blobs[image.id] = (len(config), io.BytesIO(config))
            for layer in image.layers:
                if layer.digest not in blobs:
                    blobs[layer.digest] = (layer.size, files.enter_context(_open_layer(store, layer)))
            docker.append({"Config": _member(image.id), "RepoTags": tags or None,
                           "Layers": [_member(layer.digest) for layer in image.layers]})
            descriptor = {"mediaType": _media_type(manifest), "digest": image.manifest_digest,
                          "size": len(manifest)}
            for tag in tags:
                ref = parse_reference(tag)
                host, path = split_domain(ref.repository)
                descriptors.append({**descriptor, "annotations": {NAME_ANNOTATION: f"{host}/{path}:{ref.tag}",
                                                                   REF_ANNOTATION: ref.tag}})
                if image.layers:
                    top = image.layers[-1].digest.removeprefix("sha256:")
                    repositories.setdefault(ref.repository, {})[str(ref.tag)] = top
            if not tags:
                descriptors.append(descriptor)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        metadata = {"index.json": canonical_json(index), "manifest.json": canonical_json(docker),
                    "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"})}
        if repositories:
            metadata["repositories"] = canonical_json(repositories)

        # Stream mode never seeks: ``out`` may be a socket.  Blobs first, then the JSON, all in
        # name order, as Docker writes it.
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_CHUNK) as tar:
            for directory in ("blobs", "blobs/sha256"):
                tar.addfile(_entry(directory, directory=True))
            for digest in sorted(blobs):
                size, content = blobs[digest]
                tar.addfile(_entry(_member(digest), size), content)
            for name, data in sorted(metadata.items()):
                tar.addfile(_entry(name, len(data)), io.BytesIO(data))


def _tag(reference: str, image: Image) -> str | None:
    """The tag ``reference`` names ``image`` by, or None when it names it by id or digest."""
    try:
        parsed = parse_reference(reference)
    except InvalidReference:
        return None  # an id prefix
    if parsed.digest is not None:
        return None
    tag = str(parsed)
    return tag if tag in image.references else None


def _open_layer(store: ImageStore, layer: Layer) -> BinaryIO:
    try:
        blob = store.blobs.path(layer.digest).open("rb")
    except FileNotFoundError:
        raise CorruptBlob(layer.digest, "it is missing") from None
    # The tar header is written before the content: a blob of another size would corrupt the stream.
    size = blob.seek(0, io.SEEK_END)
    blob.seek(0)
    if size != layer.size:
        blob.close()
        raise CorruptBlob(layer.digest, f"it has {size} bytes, the image records {layer.size}")
    return blob


def _media_type(manifest: bytes) -> str:
    """The manifest's own media type: a pulled image may have a Docker one."""
    document = json.loads(manifest)
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    return media_type if isinstance(media_type, str) else MANIFEST


def _member(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _entry(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
    # TarInfo's defaults (mtime 0, uid/gid 0, no user or group names) make the output reproducible.
    info = tarfile.TarInfo(name)
    info.size = size
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


# ---------------------------------------------------------------------------------------------
# Load


def load(store: ImageStore, archive: BinaryIO) -> list[str]:
    """Load every image of a Docker archive or OCI layout tarball (a seekable file) into ``store``.

    Returns Docker's lines: ``Loaded image: NAME:TAG`` per tag, ``Loaded image ID: sha256:...``
    for an untagged image.  Names are recorded as Docker shows them (``busybox:latest`` for
    ``docker.io/library/busybox:latest``).  On any error nothing is recorded and the blobs this
    load created are removed.
    """
    return _Loader(store, _Members(archive)).run()


class _Members:
    """A seekable tar's members by plain relative name, read in place: nothing is extracted."""

    def __init__(self, file: BinaryIO) -> None:
        end = file.seek(0, io.SEEK_END)
        file.seek(0)
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            # Never closed: it owns nothing but ``file``, which is the caller's.
            self._tar = tarfile.open(fileobj=file, mode="r:")  # noqa: SIM115
            count = 0
            while (member := self._tar.next()) is not None:
                count += 1
                if count > MAX_MEMBERS:
                    raise InvalidArchive(f"archive has more than {MAX_MEMBERS} members")
                if member.isreg() and member.offset_data + member.size > end:
                    raise InvalidArchive(f"archive is truncated: {_where(member.name)} ends past the end of the file")
                name = _plain(member.name)
                if name is not None:
                    self._members[name] = member  # a later member of the same name wins, as when extracting
            # tarfile stops quietly at a header cut short; a whole archive ends with a zero block.
            file.seek(self._tar.offset)
            if file.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise InvalidArchive("archive is truncated: it has no end-of-archive block")
        except MALFORMED as err:
            raise InvalidArchive(f"archive is not a valid tar file: {err}") from err

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def resolve(self, path: str, what: str) -> tuple[str, tarfile.TarInfo]:
        """The regular member ``path`` (from the archive's JSON) names, and its plain name.

        Links are followed within this table, never on a filesystem: Docker before 25 and skopeo
        link layers shared by several images to one copy.
        """
        name = _plain(path)
        if name is None:
            raise InvalidArchive(f"{what} {json.dumps(path)} is not a plain relative path")
        for _ in range(_MAX_LINKS):
            member = self._members.get(name)
            if member is None:
                raise InvalidArchive(f"{_where(name)} is missing (named by {what})")
            if member.isreg():
                return name, member
            if not member.issym() and not member.islnk():
                raise _bad(name, "not a regular file")
            # A symlink is relative to its directory, a hard link to the archive's root.
            start = posixpath.dirname(name) if member.issym() else ""
            target = posixpath.normpath(posixpath.join(start, member.linkname))
            if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise _bad(name, f"links outside the archive to {json.dumps(member.linkname)}")
            name = target
        raise _bad(path, "too many levels of links")

    def read(self, path: str, what: str) -> tuple[str, bytes]:
        """A small member's plain name and content, checked against its name under ``blobs/sha256/``."""
        name, member = self.resolve(path, what)
        if member.size > MAX_JSON:
            raise _bad(name, f"{member.size} bytes is over the {MAX_JSON >> 20} MiB limit")
        with self.open(member) as source:
            data = source.read()
        _check_name(name, digest_of(data))
        return name, data

    def open(self, member: tarfile.TarInfo) -> IO[bytes]:
        source = self._tar.extractfile(member)
        assert source is not None  # resolve() returns regular members only
        return source


@dataclass(frozen=True)
class _Content:
    """A layer member as read and stored."""

    compression: Compression   # of the member
    member_size: int
    layer: Layer               # the blob stored: the member itself, or its tar if it had no OCI media type
    plain_size: int            # bytes of the tar


@dataclass(frozen=True)
class _Verified:
    """An image whose blobs are all committed and checked, waiting to be recorded."""

    manifest: bytes
    config: bytes
    layers: tuple[Layer, ...]
    size: int


class _Loader:
    def __init__(self, store: ImageStore, members: _Members) -> None:
        self.store = store
        self.members = members
        self.created: list[str] = []  # blobs this load added, in case it fails
        self.images: dict[str, _Verified] = {}
        self.names: dict[str, list[str]] = {}
        self._layers: dict[tuple[str, bool], _Content] = {}

    def run(self) -> list[str]:
        recorded: set[str] = set()
        try:
            if "manifest.json" in self.members:
                self.docker()
            elif "index.json" in self.members and "oci-layout" in self.members:
                self.oci()
            else:
                raise InvalidArchive("archive has no manifest.json or index.json: it is neither a Docker archive "
                                 "nor an OCI image layout")
            messages = []
            for image_id, image in self.images.items():
                names = self.names[image_id]
                stored = self.store.record(image.manifest, image.config, image.layers, image.size,
                                           names[0] if names else None)
                recorded.update(layer.digest for layer in image.layers)
                for name in names[1:]:
                    self.store.tag(stored, name)
                messages += [f"Loaded image: {name}" for name in names] or [f"Loaded image ID: {image_id}"]
            return messages
        except BaseException:
            # Blobs of images already recorded are theirs now; every other blob this load added goes.
            for digest in self.created:
                if digest not in recorded:
                    self.store.blobs.remove(digest)
            raise

    def add(self, manifest: bytes, config: bytes, layers: list[_Content], names: list[str]) -> None:
        image_id = digest_of(config)
        self.images.setdefault(image_id, _Verified(manifest, config, tuple(content.layer for content in layers),
                                                   sum(content.plain_size for content in layers)))
        known = self.names.setdefault(image_id, [])
        known += [name for name in names if name not in known]

    # -- Docker archives ------------------------------------------------------------------------

    def docker(self) -> None:
        entries = _json(*self.members.read("manifest.json", "manifest.json"))
        if not isinstance(entries, list):
            raise _bad("manifest.json", "not a list of images")
        for number, entry in enumerate(entries):
            what = f"manifest.json image {number}"
            if not isinstance(entry, dict):
                raise InvalidArchive(f"{what} is not an object")
            config_path, tags, paths = entry.get("Config"), entry.get("RepoTags") or [], entry.get("Layers")
            if not isinstance(config_path, str):
                raise InvalidArchive(f"{what} has no Config")
            if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
                raise InvalidArchive(f"{what} has no Layers list")
            if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
                raise InvalidArchive(f"{what}: RepoTags is not a list of strings")
            config_name, config = self.members.read(config_path, f"{what} Config")
            diff_ids = _diff_ids(config_name, config, len(paths))
            layers = []
            for index, (path, diff_id) in enumerate(zip(paths, diff_ids, strict=True)):
                name, member = self.members.resolve(path, f"{what} layer")
                layers.append(_checked(name, self.layer(name, member, base=index == 0), diff_id))
            # A Docker archive has no manifest: this is the one ``import`` would write.
            manifest = canonical_json({
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": digest_of(config), "size": len(config)},
                "layers": [{"mediaType": content.layer.media_type, "digest": content.layer.digest,
                            "size": content.layer.size} for content in layers],
            })
            names = [_name(tag, "manifest.json") for tag in tags]
            self.add(manifest, config, layers, [name for name in names if name is not None])

    # -- OCI image layouts ----------------------------------------------------------------------

    def oci(self) -> None:
        layout = _json(*self.members.read("oci-layout", "oci-layout"))
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != "1.0.0":
            raise _bad("oci-layout", f"unsupported image layout version {version!r}")
        index = _json(*self.members.read("index.json", "index.json"))
        descriptors = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(descriptors, list):
            raise _bad("index.json", "no manifests list")
        for number, descriptor in enumerate(descriptors):
            name = _annotated_name(descriptor)
            manifest_name, manifest, document = self.manifest(descriptor, f"index.json manifests[{number}]")
            config_name, config = self.blob(document.get("config"), f"{manifest_name} config")
            found = document.get("layers")
            if not isinstance(found, list):
                raise _bad(manifest_name, "no layers list")
            diff_ids = _diff_ids(config_name, config, len(found))
            layers = [self.oci_layer(item, f"{manifest_name} layer {index}", index == 0, diff_id)
                      for index, (item, diff_id) in enumerate(zip(found, diff_ids, strict=True))]
            self.add(manifest, config, layers, [] if name is None else [name])

    def oci_layer(self, descriptor: object, what: str, base: bool, diff_id: str) -> _Content:
        digest, size, media_type = parse_descriptor(descriptor, what)
        if media_type not in LAYER_COMPRESSION:
            raise InvalidArchive(f"{what} has the unsupported media type {media_type!r}")
        name, member = self.members.resolve(_member(digest), what)
        content = _checked(name, self.layer(name, member, base=base), diff_id)
        if content.compression is not LAYER_COMPRESSION[media_type]:
            raise _bad(name, f"its content is {content.compression.name.lower()}, not {media_type}")
        if content.member_size != size:
            raise _bad(name, f"has {content.member_size} bytes, its descriptor {size}")
        # The manifest is stored as it is: its layers keep the media type it gives them.
        return replace(content, layer=replace(content.layer, media_type=media_type))

    def blob(self, descriptor: object, what: str) -> tuple[str, bytes]:
        """A small blob a descriptor points to, checked against its digest and size."""
        digest, size, _ = parse_descriptor(descriptor, what)
        name, data = self.members.read(_member(digest), what)
        if len(data) != size:
            raise _bad(name, f"has {len(data)} bytes, its descriptor {size}")
        return name, data

    def manifest(self, descriptor: object, what: str) -> tuple[str, bytes, dict[str, Any]]:
        """The image manifest a descriptor leads to, through indexes (multi-platform images) on the way."""
        for _ in range(_MAX_NESTING):
            name, data = self.blob(descriptor, what)
            document = _json(name, data)
            if not isinstance(document, dict):
                raise _bad(name, "not a JSON object")
            manifests = document.get("manifests")
            if not isinstance(manifests, list):
                return name, data, document
            try:
                descriptor = manifests[0] if len(manifests) == 1 else select_platform(document, Platform())
            except ImageError as err:
                raise _bad(name, str(err)) from err
            what = f"{name} manifest"
        raise _bad(name, f"indexes nested more than {_MAX_NESTING} deep")

    # -- layers ---------------------------------------------------------------------------------

    def layer(self, name: str, member: tarfile.TarInfo, *, base: bool) -> _Content:
        """Read a layer member once: validate, hash and commit it as a blob (cached for shared layers)."""
        key = (name, base)
        if key in self._layers:
            return self._layers[key]
        with self.store.blobs.staging() as staged, self.members.open(member) as source:
            try:
                compression, whole = Compression.sniff(source)
                # bzip2 and xz, which Docker accepts, have no OCI media type: their tar is stored.
                keep = compression in _MEDIA_TYPES
                given = DigestReader(whole, copy=staged.write if keep else None)
                plain = check_layer(io.BufferedReader(given, _CHUNK), compression, base=base,
                                    copy=None if keep else staged.write)
                given.drain()
            except InvalidLayer as err:
                raise InvalidLayer(f"{err.reason} (in {_where(name)})", err.entry) from err
            _check_name(name, given.digest)
            if self.store.blobs.commit(staged):
                self.created.append(staged.digest)
            layer = Layer(plain.digest, staged.digest, _MEDIA_TYPES.get(compression, LAYER_TAR), staged.size,
                          plain.size)
        content = self._layers[key] = _Content(compression, given.size, layer, plain.size)
        return content


def _plain(name: str) -> str | None:
    """``name`` without ``./`` and empty components; None if it is absolute or has a ``..``."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        return None
    return "/".join(parts)


def _where(name: str) -> str:
    # Quoted with escapes: a name from the archive must not break the one-line error.
    return f"archive member {json.dumps(name)}"


def _bad(member: str, reason: str) -> InvalidArchive:
    return InvalidArchive(f"{_where(member)}: {reason}")


def _json(name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise _bad(name, f"not JSON: {err}") from err


def _check_name(name: str, digest: str) -> None:
    """A member under ``blobs/sha256/`` must hash to its name."""
    match = _BLOB.fullmatch(name)
    if match is not None and digest != f"sha256:{match.group(1)}":
        raise _bad(name, f"hashes to {digest}")


def _diff_ids(name: str, config: bytes, count: int) -> list[str]:
    """The config's diff_ids, one per layer; the whole config is checked as ``record`` will."""
    document = _json(name, config)
    if not isinstance(document, dict):
        raise _bad(name, "image config is not a JSON object")
    try:
        ImageConfig.from_oci(document.get("config"))
    except ImageError as err:
        raise _bad(name, str(err)) from err
    rootfs = document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(diff_id, str) for diff_id in diff_ids):
        raise _bad(name, "image config has no rootfs.diff_ids list")
    if len(diff_ids) != count:
        raise _bad(name, f"image config lists {len(diff_ids)} layers, the manifest {count}")
    return diff_ids


def _checked(name: str, content: _Content, diff_id: str) -> _Content:
    if content.layer.diff_id != diff_id:
        raise _bad(name, f"layer content hashes to {content.layer.diff_id}, the image config expects {diff_id}")
    return content


def _annotated_name(descriptor: object) -> str | None:
    """The image name an index.json descriptor carries, if any.

    ``ref.name`` holds a whole reference when skopeo writes it, but only the tag when Docker
    does (next to the full name in containerd's annotation): alone, a bare word names nothing.
    """
    annotations = descriptor.get("annotations") if isinstance(descriptor, dict) else None
    if not isinstance(annotations, dict):
        return None
    name = annotations.get(NAME_ANNOTATION)
    if not isinstance(name, str):
        ref = annotations.get(REF_ANNOTATION)
        name = ref if isinstance(ref, str) and (":" in ref or "/" in ref) else None
    return None if name is None else _name(name, "index.json")


def _name(text: str, member: str) -> str | None:
    """A name from the archive as Docker shows it (``busybox:latest``); None for a digest alone."""
    try:
        reference = parse_reference(text)
    except InvalidReference as err:
        raise _bad(member, f"image name {text!r}: {err}") from err
    if reference.tag is None:
        return None
    host, path = split_domain(reference.repository)
    if host != DOCKER_HUB:
        return str(Reference(f"{host}/{path}", reference.tag))
    official = path.removeprefix("library/")
    return str(Reference(official if "/" not in official else path, reference.tag))


__all__ = ["MAX_JSON", "MAX_MEMBERS", "load", "save"]
