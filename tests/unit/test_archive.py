"""``hyper save`` / ``hyper load``: Docker archives and OCI layouts, both ways, on a real store."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from hyperd.image import ImageError, ImageNotFound, InvalidArchive, InvalidLayer
from hyperd.image.archive import load, save
from hyperd.image.store import CONFIG, LAYER_GZIP, MANIFEST, Image, ImageStore, Layer

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")


def tar_of(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


BASE = tar_of({"etc/os-release": b"ID=test\n", "bin/tool": b"#!/bin/sh\n"})
APP = tar_of({"srv/app": b"app\n"})
OTHER = tar_of({"other": b"other\n"})


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def config_of(layers: list[bytes], architecture: str = "amd64") -> bytes:
    return canonical({"architecture": architecture, "os": "linux", "created": "2024-05-01T12:00:00Z",
                      "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [digest(layer) for layer in layers]}})


@dataclass(frozen=True)
class OciImage:
    """An image's blobs as an OCI layout holds them: gzip layers, a config and a manifest."""

    layers: list[bytes]
    architecture: str = "amd64"

    @property
    def blobs(self) -> list[bytes]:
        return [gzip.compress(layer, mtime=0) for layer in self.layers]

    @property
    def config(self) -> bytes:
        return config_of(self.layers, self.architecture)

    @property
    def manifest(self) -> bytes:
        # As ``load`` writes one for a Docker archive, so the round trip keeps the manifest digest.
        return canonical({"schemaVersion": 2, "mediaType": MANIFEST,
                          "config": {"mediaType": CONFIG, "digest": digest(self.config), "size": len(self.config)},
                          "layers": [{"mediaType": LAYER_GZIP, "digest": digest(blob), "size": len(blob)}
                                     for blob in self.blobs]})

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": MANIFEST, "digest": digest(self.manifest), "size": len(self.manifest), **extra}

    def files(self) -> dict[str, bytes]:
        return {f"blobs/sha256/{digest(blob)[7:]}": blob for blob in (*self.blobs, self.config, self.manifest)}

    def add_to(self, store: ImageStore, reference: str | None) -> Image:
        for blob in self.blobs:
            store.blobs.put(blob)
        layers = [Layer(digest(layer), digest(blob), LAYER_GZIP, len(blob), len(layer))
                  for layer, blob in zip(self.layers, self.blobs, strict=True)]
        return store.record(self.manifest, self.config, layers, sum(map(len, self.layers)), reference)


def layout(index: list[dict[str, Any]], files: dict[str, bytes]) -> dict[str, bytes]:
    return {**files, "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
            "index.json": canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index})}


@dataclass(frozen=True)
class Legacy:
    """An image of a pre-25 Docker archive; ``described`` are the layers its config lists (default: its own)."""

    layers: list[bytes]
    tags: list[str]
    described: list[bytes] | None = None


def legacy_archive(images: list[Legacy]) -> bytes:
    """``<v1 id>/layer.tar`` per layer (a symlink to the first copy when shared), ``<hex>.json`` configs."""
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    first: dict[bytes, str] = {}
    manifest = []
    for number, image in enumerate(images):
        paths = []
        for index, layer in enumerate(image.layers):
            v1 = hashlib.sha256(f"{number}/{index}".encode()).hexdigest()
            files[f"{v1}/VERSION"] = b"1.0"
            if layer in first:
                links[f"{v1}/layer.tar"] = f"../{first[layer]}"
            else:
                files[f"{v1}/layer.tar"] = layer
                first[layer] = f"{v1}/layer.tar"
            paths.append(f"{v1}/layer.tar")
        config = config_of(image.described or image.layers)
        files[f"{digest(config)[7:]}.json"] = config
        manifest.append({"Config": f"{digest(config)[7:]}.json", "RepoTags": image.tags, "Layers": paths})
    files["manifest.json"] = json.dumps(manifest).encode()
    return tar_of(files, links)


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {member.name: (tar.extractfile(member) or io.BytesIO()).read() for member in tar if member.isreg()}


def rewrite(archive: bytes, changes: dict[str, bytes | None]) -> bytes:
    files = {**members(archive), **changes}
    return tar_of({name: data for name, data in files.items() if data is not None})


def saved(store: ImageStore, *references: str) -> bytes:
    out = io.BytesIO()
    save(store, references, out)
    return out.getvalue()


def blob_names(store: ImageStore) -> list[str]:
    return sorted(os.listdir(store.blobs.dir))


def summary(store: ImageStore) -> list[tuple[str, str, tuple[str, ...], tuple[Layer, ...]]]:
    return sorted((image.id, image.manifest_digest, image.references, image.layers) for image in store.list())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    with ImageStore(tmp_path / "a") as opened:
        yield opened


@pytest.fixture
def other(tmp_path: Path) -> Iterator[ImageStore]:
    with ImageStore(tmp_path / "b") as opened:
        yield opened


@pytest.fixture
def images(store: ImageStore) -> dict[str, Image]:
    """busybox (tagged twice) and app sharing its bottom layer, plus an untagged image."""
    busybox = OciImage([BASE]).add_to(store, "busybox:latest")
    store.tag(busybox, "busybox:1.36")
    return {"busybox": busybox, "app": OciImage([BASE, APP]).add_to(store, "app:1"),
            "untagged": OciImage([OTHER]).add_to(store, None)}


# ---------------------------------------------------------------------------------------------
# Save, then load


def test_round_trip_keeps_ids_tags_and_layers(store: ImageStore, other: ImageStore,
                                              images: dict[str, Image]) -> None:
    archive = saved(store, "busybox:latest", "busybox:1.36", "app:1", images["untagged"].id)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
    assert len(names) == len(set(names)), "a blob shared by two images is written once"

    assert load(other, io.BytesIO(archive)) == [
        "Loaded image: busybox:latest", "Loaded image: busybox:1.36", "Loaded image: app:1",
        f"Loaded image ID: {images['untagged'].id}"]
    assert summary(other) == summary(store)
    assert blob_names(other) == blob_names(store)
    for image in other.list():
        for layer in image.layers:
            assert other.blobs.read(layer.digest) == store.blobs.read(layer.digest)

    # Loading again changes nothing but says the same.
    assert len(load(other, io.BytesIO(archive))) == 4
    assert summary(other) == summary(store)


def test_save_is_deterministic_and_never_seeks(store: ImageStore, images: dict[str, Image]) -> None:
    class Socket:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> int:
            self.data += data
            return len(data)

    outputs = []
    for _ in range(2):
        out = Socket()
        save(store, ["app:1", "busybox"], out)  # type: ignore[arg-type]  # write() is all a stream needs
        outputs.append(bytes(out.data))
    assert outputs[0] == outputs[1]
    with tarfile.open(fileobj=io.BytesIO(outputs[0])) as tar:
        for info in tar:
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")


def test_saved_archive_is_a_docker_archive_and_an_oci_layout(store: ImageStore, images: dict[str, Image]) -> None:
    busybox, app, untagged = images["busybox"], images["app"], images["untagged"]
    files = members(saved(store, "busybox:latest", "busybox:1.36", "app:1", untagged.id[7:19]))

    def blob(hexdigest: str) -> str:
        return f"blobs/sha256/{hexdigest.removeprefix('sha256:')}"

    for name, data in files.items():
        if name.startswith("blobs/"):
            assert name == blob(digest(data))
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(files["manifest.json"]) == [
        {"Config": blob(busybox.id), "RepoTags": ["busybox:latest", "busybox:1.36"],
         "Layers": [blob(busybox.layers[0].digest)]},
        {"Config": blob(app.id), "RepoTags": ["app:1"], "Layers": [blob(layer.digest) for layer in app.layers]},
        {"Config": blob(untagged.id), "RepoTags": None, "Layers": [blob(untagged.layers[0].digest)]},
    ]
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX

    def descriptor(image: Image, **annotations: str) -> dict[str, Any]:
        size = len(files[blob(image.manifest_digest)])
        found = {"mediaType": MANIFEST, "digest": image.manifest_digest, "size": size}
        return {**found, "annotations": annotations} if annotations else found

    assert index["manifests"] == [
        descriptor(busybox, **{"io.containerd.image.name": "docker.io/library/busybox:latest",
                               "org.opencontainers.image.ref.name": "latest"}),
        descriptor(busybox, **{"io.containerd.image.name": "docker.io/library/busybox:1.36",
                               "org.opencontainers.image.ref.name": "1.36"}),
        descriptor(app, **{"io.containerd.image.name": "docker.io/library/app:1",
                           "org.opencontainers.image.ref.name": "1"}),
        descriptor(untagged),
    ]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": busybox.layers[0].digest[7:],
                                                             "1.36": busybox.layers[0].digest[7:]},
                                                 "app": {"1": app.layers[1].digest[7:]}}


def test_unknown_reference_writes_nothing(store: ImageStore, images: dict[str, Image]) -> None:
    out = io.BytesIO()
    with pytest.raises(ImageNotFound, match="No such image: nothere:latest"):
        save(store, ["busybox", "nothere"], out)
    assert out.getvalue() == b""


# ---------------------------------------------------------------------------------------------
# Other tools


def skopeo_cli(*argv: str) -> str:
    return subprocess.run(["skopeo", "--insecure-policy", *argv], check=True, capture_output=True,
                          text=True).stdout


def write_tree(directory: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)


def tar_tree(directory: Path) -> bytes:
    return tar_of({str(path.relative_to(directory)): path.read_bytes()
                   for path in sorted(directory.rglob("*")) if path.is_file()})


@skopeo
def test_skopeo_reads_a_saved_archive_as_both_formats(store: ImageStore, other: ImageStore,
                                                      images: dict[str, Image], tmp_path: Path) -> None:
    app = images["app"]
    archive = tmp_path / "app.tar"
    archive.write_bytes(saved(store, "app:1"))

    inspected = json.loads(skopeo_cli("inspect", f"oci-archive:{archive}"))
    assert inspected["Digest"] == app.manifest_digest
    assert inspected["Layers"] == [layer.digest for layer in app.layers]

    copied = tmp_path / "copied"
    skopeo_cli("copy", f"docker-archive:{archive}", f"oci:{copied}:example.com/app:copied")
    assert load(other, io.BytesIO(tar_tree(copied))) == ["Loaded image: example.com/app:copied"]
    loaded = other.resolve("example.com/app:copied")
    # skopeo re-serializes the config (its id changes) but keeps its content and the layers.
    assert json.loads(other.blobs.read(loaded.id)) == json.loads(store.blobs.read(app.id))
    assert loaded.diff_ids == app.diff_ids


@skopeo
def test_loads_a_docker_archive_written_by_skopeo(other: ImageStore, tmp_path: Path) -> None:
    image = OciImage([BASE, APP])
    write_tree(tmp_path / "layout", layout([image.descriptor()], image.files()))
    archive = tmp_path / "docker.tar"
    skopeo_cli("copy", f"oci:{tmp_path / 'layout'}", f"docker-archive:{archive}:docker.io/library/tool:v2")

    with archive.open("rb") as file:
        assert load(other, file) == ["Loaded image: tool:v2"]
    loaded = other.resolve("tool:v2")
    assert loaded.id == digest(image.config)
    assert loaded.diff_ids == (digest(BASE), digest(APP))
    for layer in loaded.layers:
        assert digest(other.blobs.read(layer.digest)) == layer.digest


# ---------------------------------------------------------------------------------------------
# Other layouts


def test_legacy_docker_archive_with_a_shared_layer_linked(other: ImageStore) -> None:
    archive = legacy_archive([Legacy([BASE], ["busybox:latest"]), Legacy([BASE, APP], ["app:1", "app:2"])])
    assert load(other, io.BytesIO(archive)) == ["Loaded image: busybox:latest", "Loaded image: app:1",
                                                "Loaded image: app:2"]
    app = other.resolve("app:2")
    assert app.references == ("app:1", "app:2")
    assert app.diff_ids == (digest(BASE), digest(APP))
    # Plain tar layers are stored as they are.
    assert [(layer.media_type, layer.digest) for layer in app.layers] == [(LAYER_TAR, digest(BASE)),
                                                                          (LAYER_TAR, digest(APP))]
    assert other.resolve("busybox").layers == app.layers[:1]


@pytest.mark.parametrize(("compress", "media_type", "stored_as_given"), [
    (lambda tar: gzip.compress(tar, mtime=0), LAYER_GZIP, True),
    (lambda tar: zstandard.ZstdCompressor().compress(tar), "application/vnd.oci.image.layer.v1.tar+zstd", True),
    (bz2.compress, LAYER_TAR, False),
], ids=["gzip", "zstd", "bzip2"])
def test_compressed_layers_keep_an_oci_media_type(other: ImageStore, compress: Callable[[bytes], bytes],
                                                  media_type: str, stored_as_given: bool) -> None:
    given = compress(APP)
    load(other, io.BytesIO(legacy_archive([Legacy([given], ["app:1"], described=[APP])])))
    [layer] = other.resolve("app:1").layers
    # bzip2 has no OCI media type: its tar is stored instead.
    assert other.blobs.read(layer.digest) == (given if stored_as_given else APP)
    assert (layer.media_type, layer.diff_id, layer.content_size) == (media_type, digest(APP), len(APP))


def test_oci_layout_multi_platform_index_picks_amd64(other: ImageStore) -> None:
    amd64, arm64 = OciImage([BASE], "amd64"), OciImage([APP], "arm64")
    platforms = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        arm64.descriptor(platform={"os": "linux", "architecture": "arm64"}),
        amd64.descriptor(platform={"os": "linux", "architecture": "amd64"})]})
    unnamed = OciImage([OTHER])
    files = layout([{"mediaType": OCI_INDEX, "digest": digest(platforms), "size": len(platforms),
                     "annotations": {"org.opencontainers.image.ref.name": "example.com/multi:1"}},
                    unnamed.descriptor()],
                   {**amd64.files(), **arm64.files(), **unnamed.files(),
                    f"blobs/sha256/{digest(platforms)[7:]}": platforms})

    assert load(other, io.BytesIO(tar_of(files))) == ["Loaded image: example.com/multi:1",
                                                      f"Loaded image ID: {digest(unnamed.config)}"]
    multi = other.resolve("example.com/multi:1")
    assert (multi.id, multi.manifest_digest) == (digest(amd64.config), digest(amd64.manifest))
    assert digest(arm64.blobs[0])[7:] not in blob_names(other)


# ---------------------------------------------------------------------------------------------
# Untrusted archives


def _cut(archive: bytes, name: str, into: Callable[[tarfile.TarInfo], int]) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = next(info for info in tar if info.name == name)
    return archive[:into(member)]


def _layer_member(archive: bytes) -> str:
    return str(json.loads(members(archive)["manifest.json"])[1]["Layers"][1])


def _truncated_in_layer(archive: bytes) -> bytes:
    return _cut(archive, _layer_member(archive), lambda member: member.offset_data + member.size // 2)


def _truncated_in_header(archive: bytes) -> bytes:
    return _cut(archive, "manifest.json", lambda member: member.offset + 100)


def _not_json(archive: bytes) -> bytes:
    return rewrite(archive, {"manifest.json": b'[{"Config": '})


def _missing_layer(archive: bytes) -> bytes:
    return rewrite(archive, {_layer_member(archive): None})


def _blob_not_its_name(archive: bytes) -> bytes:
    return rewrite(archive, {_layer_member(archive): gzip.compress(OTHER)})


def _diff_id_mismatch(archive: bytes) -> bytes:
    return legacy_archive([Legacy([APP], ["app:1"], described=[OTHER])])


def _escaping_layer_entry(archive: bytes) -> bytes:
    evil = tar_of({"../evil": b"x"})
    return legacy_archive([Legacy([evil], ["evil:1"])])


def _member_path_with_dotdot(archive: bytes) -> bytes:
    legacy = legacy_archive([Legacy([APP], ["app:1"])])
    manifest = json.loads(members(legacy)["manifest.json"])
    manifest[0]["Layers"] = ["../layer.tar"]
    return rewrite(legacy, {"manifest.json": json.dumps(manifest).encode()})


def _second_image_bad(archive: bytes) -> bytes:
    return legacy_archive([Legacy([APP], ["app:1"]), Legacy([OTHER], ["bad:1"], described=[APP])])


@pytest.mark.parametrize(("corrupt", "error", "message"), [
    (_truncated_in_layer, ImageError, r'archive is truncated: archive member "blobs/sha256/\w+" ends past'),
    (_truncated_in_header, ImageError, "archive is truncated: it has no end-of-archive block"),
    (_not_json, ImageError, 'archive member "manifest.json": not JSON'),
    (_missing_layer, ImageError, r'archive member "blobs/sha256/\w+" is missing \(named by manifest.json image 1'),
    (_blob_not_its_name, InvalidArchive, r'archive member "blobs/sha256/\w+": hashes to sha256:'),
    (_diff_id_mismatch, ImageError, r'archive member "\w+/layer.tar": layer content hashes to sha256:\w+, '
                                    r"the image config expects"),
    (_escaping_layer_entry, InvalidLayer, r'entry "../evil" escapes the root \(in archive member "\w+/layer.tar"\)'),
    (_member_path_with_dotdot, ImageError, 'manifest.json image 0 layer "../layer.tar" is not a plain relative path'),
    (_second_image_bad, ImageError, "layer content hashes to"),
], ids=lambda value: value.__name__.strip("_") if callable(value) else None)
def test_a_bad_archive_changes_nothing(store: ImageStore, other: ImageStore, images: dict[str, Image],
                                       corrupt: Callable[[bytes], bytes], error: type[ImageError],
                                       message: str) -> None:
    # The target shares busybox's blobs with the archive: a failed load must leave them.
    OciImage([BASE]).add_to(other, "busybox:latest")
    before = (summary(other), blob_names(other))
    with pytest.raises(error, match=message):
        load(other, io.BytesIO(corrupt(saved(store, "busybox", "app:1"))))
    assert (summary(other), blob_names(other)) == before


def test_not_an_archive(other: ImageStore) -> None:
    with pytest.raises(ImageError, match="archive is not a valid tar file"):
        load(other, io.BytesIO(b"hello"))
    with pytest.raises(ImageError, match="neither a Docker archive nor an OCI image layout"):
        load(other, io.BytesIO(tar_of({"hello": b"world"})))


def test_oci_layer_must_match_its_descriptor(other: ImageStore) -> None:
    image = OciImage([APP])
    manifest = json.loads(image.manifest)
    manifest["layers"][0]["mediaType"] = LAYER_TAR  # the blob is gzip
    lying = canonical(manifest)
    files = layout([{"mediaType": MANIFEST, "digest": digest(lying), "size": len(lying)}],
                   {**image.files(), f"blobs/sha256/{digest(lying)[7:]}": lying})
    before = blob_names(other)
    with pytest.raises(ImageError, match=r'archive member "blobs/sha256/\w+": its content is gzip, not '
                                         "application/vnd.oci.image.layer.v1.tar"):
        load(other, io.BytesIO(tar_of(files)))
    assert (other.list(), blob_names(other)) == ([], before)
