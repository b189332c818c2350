"""The image store on a real directory: OCI blobs, the SQLite index, references and erofs disks."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import sqlite3
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hyperd.image import DiskError, ImageInUse, ImageNotFound, InvalidLayer, InvalidReference
from hyperd.image import busybox as busybox_image
from hyperd.image import disk as disks
from hyperd.image.store import CONFIG, LAYER_GZIP, MANIFEST, Image, ImageConfig, ImageStore, Layer, parse_reference

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="building a disk preserves ownership, which needs root")
CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def rootfs(files: dict[str, bytes] | None = None, *, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (files or {"etc/hello": b"hello\n", "bin/tool": b"#!/bin/sh\n"}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname, link.mtime = tarfile.SYMTYPE, "tool", 1_700_000_000
        tar.addfile(link)
    data = buffer.getvalue()
    return gzip.compress(data) if compress else data


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    with ImageStore(tmp_path) as opened:
        yield opened


def blob_names(store: ImageStore) -> list[str]:
    return sorted(os.listdir(store.blobs.dir))


def rows(store: ImageStore, tables: tuple[str, ...] = ("image_images", "image_tags", "image_layers")
         ) -> dict[str, int]:
    db = sqlite3.connect(store.root / "hyper.db")
    try:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}
    finally:
        db.close()


def test_import_stores_content_addressed_oci_blobs(store: ImageStore) -> None:
    tar = rootfs()
    given = gzip.compress(tar)
    image = store.import_rootfs(io.BytesIO(given), "hello",
                                config=ImageConfig(cmd=("sh",), env=("A=1",), working_dir="/srv", user="nobody",
                                                   labels={"k": "v"}, exposed_ports=("80",)),
                                created=CREATED)
    names = blob_names(store)
    assert len(names) == 3
    for name in names:
        assert hashlib.sha256((store.blobs.dir / name).read_bytes()).hexdigest() == name

    manifest = json.loads(store.blobs.read(image.manifest_digest))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MANIFEST
    assert manifest["config"] == {"mediaType": CONFIG, "digest": image.id,
                                  "size": len(store.blobs.read(image.id))}
    [layer] = manifest["layers"]
    assert layer["mediaType"] == LAYER_GZIP
    assert layer["size"] == store.blobs.path(layer["digest"]).stat().st_size

    config = json.loads(store.blobs.read(image.id))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["created"] == "2024-05-01T12:00:00Z"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]}
    assert config["history"][0]["created_by"] == "hyper import"
    assert config["config"] == {
        "Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1"],
        "WorkingDir": "/srv", "User": "nobody", "Labels": {"k": "v"}, "ExposedPorts": {"80/tcp": {}},
    }
    # A gzip tarball is the layer blob as given.
    assert store.blobs.path(layer["digest"]).read_bytes() == given

    assert image.references == ("hello:latest",)
    assert image.created == int(CREATED.timestamp()) and image.created_at == CREATED
    assert image.size == len(tar)
    assert image.config.cmd == ("sh",) and image.config.entrypoint is None
    assert image.layers[0].diff_id == config["rootfs"]["diff_ids"][0]
    assert rows(store) == {"image_images": 1, "image_tags": 1, "image_layers": 1}


@pytest.mark.parametrize("compress", [lambda data: data, bz2.compress, lzma.compress], ids=["plain", "bzip2", "xz"])
def test_other_inputs_are_stored_as_gzip(store: ImageStore, compress: Callable[[bytes], bytes]) -> None:
    tar = rootfs()
    image = store.import_rootfs(io.BytesIO(compress(tar)), "hello", created=CREATED)
    [layer] = image.layers
    assert layer.media_type == LAYER_GZIP
    assert gzip.decompress(store.blobs.path(layer.digest).read_bytes()) == tar
    assert layer.diff_id == f"sha256:{hashlib.sha256(tar).hexdigest()}"


def test_resolve_by_name_tag_id_and_prefix(store: ImageStore, tmp_path: Path) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "busybox", created=CREATED)
    store.tag(image, "localhost:5000/tools/busybox:1.35")
    hexid = image.id.removeprefix("sha256:")
    for reference in ("busybox", "busybox:latest", "localhost:5000/tools/busybox:1.35", image.id, hexid,
                      hexid[:12], hexid[:4], f"sha256:{hexid[:8]}", f"busybox@{image.manifest_digest}"):
        assert store.resolve(reference).id == image.id, reference
    # The index lives in SQLite: a new store on the same root sees the same images.
    with ImageStore(tmp_path) as again:
        assert again.resolve("busybox").references == (
            "busybox:latest", "localhost:5000/tools/busybox:1.35")


def test_unknown_references_raise_dockers_message(store: ImageStore) -> None:
    store.import_rootfs(io.BytesIO(rootfs()), "busybox", created=CREATED)
    for reference, message in (("nope", "No such image: nope:latest"), ("busybox:1.0", "No such image: busybox:1.0"),
                               ("sha256:" + "0" * 64, "No such image: sha256:" + "0" * 64),
                               ("0000", "No such image: 0000:latest")):
        with pytest.raises(ImageNotFound) as err:
            store.resolve(reference)
        assert str(err.value) == message
    with pytest.raises(InvalidReference, match="must be lowercase"):
        store.resolve("BusyBox")
    with pytest.raises(InvalidReference, match="invalid reference format"):
        store.resolve("bad name!")


def test_reference_parsing() -> None:
    assert str(parse_reference("busybox")) == "busybox:latest"
    assert str(parse_reference("library/busybox:1.36")) == "library/busybox:1.36"
    ref = parse_reference("registry.example.com:5000/a/b-c__d:v1.2_3")
    assert (ref.repository, ref.tag, ref.digest) == ("registry.example.com:5000/a/b-c__d", "v1.2_3", None)
    digest = "sha256:" + "a" * 64
    assert parse_reference(f"busybox@{digest}").tag is None
    for bad in ("", ":latest", "busybox:", "a//b", "-a", "a:" + "t" * 129, "busybox@sha256:abc", "f" * 64 + ":x"):
        with pytest.raises(InvalidReference):
            parse_reference(bad)


def test_tag_moves_and_list(store: ImageStore) -> None:
    first = store.import_rootfs(io.BytesIO(rootfs({"a": b"1"})), "app:v1", created=CREATED)
    second = store.import_rootfs(io.BytesIO(rootfs({"a": b"2"})), "app:v2",
                                 created=CREATED.replace(year=2025))
    assert store.tag(second, "app:v1").references == ("app:v1", "app:v2")
    assert store.resolve("app:v1").id == second.id
    listed = store.list()
    assert [image.id for image in listed] == [second.id, first.id]  # newest first
    assert listed[1].references == ()
    with pytest.raises(InvalidReference):
        store.tag(first, f"app@{first.manifest_digest}")


def test_untagged_import_and_reimport_is_idempotent(store: ImageStore) -> None:
    untagged = store.import_rootfs(io.BytesIO(rootfs()), None, created=CREATED)
    assert untagged.references == ()
    before = blob_names(store)
    again = store.import_rootfs(io.BytesIO(rootfs()), "named", created=CREATED)
    assert again.id == untagged.id and again.references == ("named:latest",)
    assert blob_names(store) == before


@pytest.mark.parametrize("data", [
    b"definitely not a tarball" * 100,
    gzip.compress(rootfs())[:-40],
    rootfs({"../escape": b"x"}),
    gzip.compress(rootfs({"/etc/passwd": b"x"})),
], ids=["garbage", "truncated-gzip", "dotdot", "absolute"])
def test_rejected_import_leaves_nothing(store: ImageStore, data: bytes) -> None:
    with pytest.raises(InvalidLayer, match="layer rejected: "):
        store.import_rootfs(io.BytesIO(data), "broken")
    assert blob_names(store) == []
    assert rows(store) == {"image_images": 0, "image_tags": 0, "image_layers": 0}
    with pytest.raises(ImageNotFound):
        store.resolve("broken")


def test_failure_after_blobs_are_written_removes_only_new_ones(store: ImageStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    kept = store.import_rootfs(io.BytesIO(rootfs()), "kept", created=CREATED)
    before = blob_names(store)

    def broken(*args: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(ImageStore, "_set_reference", broken)
    # Same layer (shared with `kept`), different config: the layer blob must survive.
    with pytest.raises(RuntimeError):
        store.import_rootfs(io.BytesIO(rootfs()), "other", config=ImageConfig(cmd=("true",)), created=CREATED)
    assert blob_names(store) == before
    assert rows(store) == {"image_images": 1, "image_tags": 1, "image_layers": 1}
    assert store.resolve("kept").id == kept.id


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path: Path) -> None:
    with ImageStore(tmp_path) as store:
        blobs, scratch = store.blobs.dir, store.tmp_dir
    dead = 2 ** 22 + 12345  # above pid_max's default ceiling: never a live process
    (blobs / f".tmp-{dead}-abc").write_bytes(b"partial")
    (scratch / f"{dead}-disk-xyz" / "rootfs").mkdir(parents=True)
    (scratch / f"{os.getpid()}-disk-live").mkdir()
    with ImageStore(tmp_path):
        assert os.listdir(blobs) == []
        assert os.listdir(scratch) == [f"{os.getpid()}-disk-live"]


@root_only
def test_disk_is_an_erofs_image_built_once(store: ImageStore, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    if shutil.which("mkfs.erofs") is None:
        pytest.skip("erofs-utils is not installed")
    image = store.import_rootfs(io.BytesIO(rootfs()), "app", created=CREATED)
    builds = []
    real_build = disks.build

    def counting(*args: object, **kwargs: object) -> disks.BuildStats:
        builds.append(args)
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(disks, "build", counting)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(store.disk(image))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    path = store.disk(image)
    assert len(builds) == 1
    assert set(paths) == {path}
    assert path == store.root / "images/disks" / f"{image.chain_id.removeprefix('sha256:')}.erofs"
    assert image.chain_id == image.layers[0].diff_id  # one layer: its chain id is its diff_id
    with open(path, "rb") as f:
        f.seek(1024)
        assert f.read(4) == bytes.fromhex("e2e1f5e0")  # EROFS_SUPER_MAGIC_V1, little-endian
    assert os.listdir(store.tmp_dir) == []
    inode = path.stat().st_ino
    assert store.disk(image) == path and path.stat().st_ino == inode

    if shutil.which("dump.erofs"):
        dump = subprocess.run(["dump.erofs", "--path=/etc/hello", str(path)], capture_output=True, text=True)
        assert dump.returncode == 0 and "Size: 6" in dump.stdout
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-o", "loop,ro", "-t", "erofs", str(path), str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount erofs here: {mounted.stderr.strip()}")
    try:
        assert (mountpoint / "etc/hello").read_bytes() == b"hello\n"
        assert os.readlink(mountpoint / "bin/sh") == "tool"
        assert (mountpoint / "bin/tool").stat().st_mtime == 1_700_000_000
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@root_only
def test_disk_corruption_is_detected(store: ImageStore) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "app", created=CREATED)
    blob = store.blobs.path(image.layers[0].digest)
    blob.write_bytes(gzip.compress(rootfs({"evil": b"swapped"})))
    with pytest.raises(Exception, match="is corrupt"):
        store.disk(image)
    assert not store.disk_path(image).exists()
    assert os.listdir(store.tmp_dir) == []


def test_missing_mkfs_names_the_package(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "app", created=CREATED)
    monkeypatch.setattr(disks, "MKFS", "mkfs.erofs-not-installed")
    with pytest.raises(DiskError, match="install the erofs-utils package"):
        store.disk(image)


# -- pulled images, removal, garbage collection -------------------------------------------------


def layer(store: ImageStore, files: dict[str, bytes]) -> Layer:
    """A layer blob committed as a pull commits it, before any row names it."""
    tar = rootfs(files)
    blob = gzip.compress(tar, mtime=0)
    digest, _ = store.blobs.put(blob)
    return Layer(f"sha256:{hashlib.sha256(tar).hexdigest()}", digest, LAYER_GZIP, len(blob), len(tar))


def pulled(store: ImageStore, layers: list[Layer], reference: str | None, *, repo_digest: str | None = None,
           cmd: str = "sh", created: str = "2024-05-01T12:00:00.123456789Z",
           history: list[object] | None = None) -> Image:
    """Record an image as the registry client does: its layer blobs are already in the store."""
    config = json.dumps({
        "architecture": "arm64", "variant": "v8", "os": "linux", "author": "someone",
        "created": created,
        "config": {"Cmd": [cmd], "Env": ["PATH=/bin"], "Labels": {"k": "v"}},
        "rootfs": {"type": "layers", "diff_ids": [item.diff_id for item in layers]},
        "history": history if history is not None else [{"created": "2024-05-01T12:00:00Z", "created_by": "ADD x"}
                                                        for _ in layers],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
                   "size": len(config)},
        "layers": [{"mediaType": item.media_type, "digest": item.digest, "size": item.size} for item in layers],
    }).encode()
    return store.record(manifest, config, layers, sum(item.content_size or 0 for item in layers), reference,
                        repo_digest=repo_digest)


def fake_disk(store: ImageStore, image: Image) -> Path:
    """Stand-in for store.disk(image): removal only cares that the file exists and what it weighs."""
    path = store.disk_path(image)
    path.write_bytes(b"erofs" * 100)
    return path


def blob_files(image: Image) -> set[str]:
    return {digest.removeprefix("sha256:")
            for digest in (image.id, image.manifest_digest, *(item.digest for item in image.layers))}


def test_remove_by_tag_untags_and_the_last_tag_deletes(store: ImageStore) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "app:1", created=CREATED)
    store.tag(image, "other/app:2")
    disk = fake_disk(store, image)
    assert store.remove("app:1") == [{"Untagged": "app:1"}]
    assert store.resolve(image.id).references == ("other/app:2",)
    assert set(blob_names(store)) == blob_files(image) and disk.exists()

    assert store.remove("other/app:2") == [{"Untagged": "other/app:2"}, {"Deleted": image.id}]
    assert blob_names(store) == [] and not disk.exists()
    assert rows(store) == {"image_images": 0, "image_tags": 0, "image_layers": 0}
    with pytest.raises(ImageNotFound, match="No such image: app:1"):
        store.remove("app:1")


def test_remove_by_id_needs_force_when_several_tags_name_it(store: ImageStore) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "app:1", created=CREATED)
    store.tag(image, "app:2")
    with pytest.raises(ImageInUse) as err:
        store.remove(image.short_id)
    assert str(err.value) == (f"conflict: unable to delete {image.short_id} (must be forced) - "
                              "image is referenced in multiple repositories")
    assert err.value.forceable and err.value.image_id == image.id
    assert store.remove(image.short_id, force=True) == [
        {"Untagged": "app:1"}, {"Untagged": "app:2"}, {"Deleted": image.id}]
    assert blob_names(store) == []

    # One tag: an id removes it without force.
    single = store.import_rootfs(io.BytesIO(rootfs()), "solo", created=CREATED)
    assert store.remove(single.id) == [{"Untagged": "solo:latest"}, {"Deleted": single.id}]


def test_a_stopped_container_keeps_its_image_even_when_forced(store: ImageStore) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "app", created=CREATED)
    disk = fake_disk(store, image)
    stopped = {image.id: False}
    with pytest.raises(ImageInUse) as err:
        store.remove("app", users=stopped)
    assert str(err.value) == ('conflict: unable to remove repository reference "app:latest" (must force) - '
                              f"a stopped container is using its referenced image {image.short_id}")
    with pytest.raises(ImageInUse, match=rf"^conflict: unable to delete {image.short_id} \(must be forced\) - "
                                         "image is being used by a stopped container$"):
        store.remove(image.id, users=stopped)

    # Forced: untagged, but the container can still start from it.
    assert store.remove("app", force=True, users=stopped) == [{"Untagged": "app:latest"}]
    kept = store.resolve(image.id)
    assert kept.dangling and kept.layers == image.layers
    assert set(blob_names(store)) == blob_files(image) and disk.exists()
    assert store.remove(image.id, force=True, users=stopped) == []
    # Once the container is gone, the dangling image goes by id.
    assert store.remove(image.short_id) == [{"Deleted": image.id}]
    assert blob_names(store) == [] and not disk.exists()


def test_a_running_container_keeps_its_image_whatever_the_force(store: ImageStore) -> None:
    image = store.import_rootfs(io.BytesIO(rootfs()), "app", created=CREATED)
    running = {image.id: True}
    for reference in ("app", image.id):
        for force in (False, True):
            with pytest.raises(ImageInUse) as err:
                store.remove(reference, force=force, users=running)
            assert str(err.value) == (f"conflict: unable to delete {image.short_id} (cannot be forced) - "
                                      "image is being used by a running container")
            assert not err.value.forceable
    assert store.resolve("app").id == image.id
    # Another name may go: the image keeps one.
    store.tag(image, "app:2")
    assert store.remove("app:2", users=running) == [{"Untagged": "app:2"}]
    assert store.resolve("app").references == ("app:latest",)


def test_shared_layers_and_disks_go_with_their_last_image(store: ImageStore) -> None:
    base = layer(store, {"etc/os-release": b"base\n"})
    top = layer(store, {"srv/app": b"app\n"})
    small = pulled(store, [base], "small")
    twin = pulled(store, [base], "twin", cmd="true")  # another config over the same layers: the same disk
    big = pulled(store, [base, top], "big")
    assert small.chain_id == twin.chain_id != big.chain_id
    small_disk, big_disk = fake_disk(store, small), fake_disk(store, big)

    store.remove("small")
    assert base.digest in store.blobs and small_disk.exists()
    assert small.id not in store.blobs and small.manifest_digest not in store.blobs
    store.remove("twin")
    assert base.digest in store.blobs  # big still needs it
    assert not small_disk.exists() and big_disk.exists()
    store.remove("big")
    assert blob_names(store) == [] and os.listdir(store.disks_dir) == []


def test_open_collects_what_a_crash_left_unreferenced(tmp_path: Path) -> None:
    with ImageStore(tmp_path) as store:
        base = layer(store, {"etc/os-release": b"base\n"})
        gone = pulled(store, [base, layer(store, {"gone": b"1"})], "gone")
        kept = pulled(store, [base, layer(store, {"kept": b"2"})], "kept")
        fake_disk(store, gone)
        kept_disk = fake_disk(store, kept)
        # A removal whose process died after its transaction, before unlinking anything.
        db = sqlite3.connect(tmp_path / "hyper.db")
        with db:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("DELETE FROM image_images WHERE id = ?", (gone.id,))
        db.close()
        # blobs.py's own files are not the store's to collect.
        owned = [store.blobs.dir / ".partial-abc", store.blobs.dir / f".tmp-{os.getpid()}-abc"]
        for path in owned:
            path.write_bytes(b"in progress")
        expected = sorted({*blob_files(kept), *(path.name for path in owned)})

        # While a store is open (the daemon, mid-pull), another open (the busybox installer) collects nothing.
        with ImageStore(tmp_path) as beside:
            assert len(blob_names(beside)) == len(expected) + 3
    with ImageStore(tmp_path) as reopened:
        assert blob_names(reopened) == expected
        assert os.listdir(reopened.disks_dir) == [kept_disk.name]
        assert reopened.resolve("kept").id == kept.id


def test_prune_removes_dangling_images_no_container_uses(store: ImageStore) -> None:
    base = layer(store, {"etc/os-release": b"base\n"})
    tagged = pulled(store, [base], "tagged", created="2024-01-01T00:00:00Z")
    dangling = pulled(store, [base, layer(store, {"a": b"1"})], None)
    digest = f"used@sha256:{'b' * 64}"
    used = pulled(store, [base, layer(store, {"b": b"2"})], None, repo_digest=digest, created="2025-01-01T00:00:00Z")
    assert used.dangling and used.repo_digests == (digest,)  # a digest is no tag
    disk = fake_disk(store, dangling)

    def weight(paths: set[Path]) -> int:
        return sum(path.stat().st_size for path in paths)

    unshared = {store.blobs.dir / name for name in blob_files(dangling) - blob_files(tagged)} | {disk}
    freed = weight(unshared)
    assert store.prune(users={used.id}) == ([{"Deleted": dangling.id}], freed)
    assert not any(path.exists() for path in unshared)
    assert [image.id for image in store.list()] == [used.id, tagged.id]

    freed = weight({store.blobs.dir / name for name in blob_files(tagged) | blob_files(used)})
    assert store.prune(all=True, users=()) == ([{"Untagged": digest}, {"Deleted": used.id},
                                                {"Untagged": "tagged:latest"}, {"Deleted": tagged.id}], freed)
    assert blob_names(store) == [] and store.list() == []
    assert store.prune() == ([], 0)


def test_prune_removes_partial_downloads_no_pull_is_writing(store: ImageStore) -> None:
    abandoned = store.blobs.partial(f"sha256:{'d' * 64}", 100)
    abandoned.write(b"x" * 40)
    abandoned.release()  # a pull that failed: kept to resume
    writing = store.blobs.partial(f"sha256:{'e' * 64}", 100)
    writing.write(b"y" * 30)
    try:
        assert store.prune() == ([], 40)
        assert [path.name for path in store.blobs.dir.iterdir()] == [f".partial-{'e' * 64}"]
    finally:
        writing.discard()


def test_repo_digests_name_pulled_images(store: ImageStore) -> None:
    index = f"sha256:{'c' * 64}"
    image = pulled(store, [layer(store, {"a": b"1"})], "registry.example/team/app:1.0",
                   repo_digest=f"registry.example/team/app@{index}")
    assert image.references == ("registry.example/team/app:1.0",)
    assert image.repo_digests == (f"registry.example/team/app@{index}",)
    for reference in (f"registry.example/team/app@{index}", f"registry.example/team/app@{image.manifest_digest}"):
        assert store.resolve(reference).id == image.id
    with pytest.raises(ImageNotFound):
        store.resolve(f"registry.example/other@{index}")  # a repo digest belongs to its repository
    # Pulled again, by digest this time under another name: no tag, one more digest.
    again = pulled(store, list(image.layers), None, repo_digest=f"mirror.example/app@{index}")
    assert again.id == image.id and again.references == image.references
    assert again.repo_digests == (f"mirror.example/app@{index}", f"registry.example/team/app@{index}")
    with pytest.raises(InvalidReference):
        pulled(store, list(image.layers), None, repo_digest="registry.example/team/app:1.0")

    # A digest is a name: removing it untags only it.
    assert store.remove(f"mirror.example/app@{index}") == [{"Untagged": f"mirror.example/app@{index}"}]
    # Its repository's last tag takes the repository's digests along, as in Docker.
    assert store.remove("registry.example/team/app:1.0") == [
        {"Untagged": "registry.example/team/app:1.0"}, {"Untagged": f"registry.example/team/app@{index}"},
        {"Deleted": image.id}]
    assert rows(store, ("image_images", "image_tags", "image_layers", "image_digests")) == {
        "image_images": 0, "image_tags": 0, "image_layers": 0, "image_digests": 0}


def test_inspect_and_history_in_dockers_shape(store: ImageStore) -> None:
    base = layer(store, {"etc/os-release": b"base\n"})
    top = layer(store, {"srv/app": b"app" * 1000})
    image = pulled(store, [base, top], "app:1", repo_digest=f"app@sha256:{'d' * 64}", history=[
        {"created": "2024-04-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in /"},
        {"created": "2024-04-01T00:00:01Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
        {"created": "2024-05-01T12:00:00Z", "created_by": "COPY app /srv", "comment": "buildkit"},
        "not an entry",
    ])
    assert store.inspect(image) == {
        "Id": image.id,
        "RepoTags": ["app:1"],
        "RepoDigests": [f"app@sha256:{'d' * 64}"],
        "Parent": "",
        "Comment": "",
        "Created": "2024-05-01T12:00:00.123456789Z",
        "Author": "someone",
        "Config": {"Cmd": ["sh"], "Env": ["PATH=/bin"], "Labels": {"k": "v"}},
        "Architecture": "arm64",
        "Variant": "v8",
        "Os": "linux",
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": [base.diff_id, top.diff_id]},
    }
    assert store.history(image) == [
        {"Id": image.id, "Created": 1714564800, "CreatedBy": "COPY app /srv", "Tags": ["app:1"],
         "Size": top.content_size, "Comment": "buildkit"},
        {"Id": "<missing>", "Created": 1711929601, "CreatedBy": '/bin/sh -c #(nop)  CMD ["sh"]', "Tags": None,
         "Size": 0, "Comment": ""},
        {"Id": "<missing>", "Created": 1711929600, "CreatedBy": "/bin/sh -c #(nop) ADD file:abc in /", "Tags": None,
         "Size": base.content_size, "Comment": ""},
    ]
    assert top.content_size == len(rootfs({"srv/app": b"app" * 1000}))

    imported = store.import_rootfs(io.BytesIO(rootfs()), None, created=CREATED, comment="from a tarball")
    details = store.inspect(imported)
    assert (details["Comment"], details["Created"], details["RepoTags"]) == (
        "from a tarball", "2024-05-01T12:00:00Z", [])
    assert "Variant" not in details
    [entry] = store.history(imported)
    assert entry == {"Id": imported.id, "Created": int(CREATED.timestamp()), "CreatedBy": "hyper import",
                     "Tags": None, "Size": imported.size, "Comment": "from a tarball"}


def test_untrusted_config_fields_show_as_empty(store: ImageStore) -> None:
    image = pulled(store, [layer(store, {"a": b"1"})], "odd", created="2024-13-45T99:99:99Z", history=[
        {"created": 5, "created_by": ["not", "text"], "comment": {}, "empty_layer": "yes"}])
    assert store.inspect(image)["Created"] == "1970-01-01T00:00:00Z"
    [entry] = store.history(image)
    assert (entry["Created"], entry["CreatedBy"], entry["Comment"]) == (0, "", "")
    assert entry["Size"] == image.layers[0].content_size


def test_databases_from_before_digests_and_layer_sizes_still_open(tmp_path: Path) -> None:
    with ImageStore(tmp_path) as store:
        image = store.import_rootfs(io.BytesIO(rootfs()), "old", created=CREATED)
    db = sqlite3.connect(tmp_path / "hyper.db")
    db.execute("DROP TABLE image_digests")
    db.execute("ALTER TABLE image_layers DROP COLUMN content_size")
    db.commit()
    db.close()
    with ImageStore(tmp_path) as store:
        old = store.resolve("old")
        assert old.id == image.id and old.repo_digests == ()
        assert old.layers[0].content_size is None
        # Unknown uncompressed size: the history shows the blob's.
        assert store.history(old)[0]["Size"] == old.layers[0].size
        again = pulled(store, [layer(store, {"a": b"1"})], "new", repo_digest=f"new@sha256:{'e' * 64}")
        assert store.resolve(f"new@sha256:{'e' * 64}").id == again.id


# -- busybox -------------------------------------------------------------------------------------


def _static_busybox() -> bool:
    try:
        busybox_image._check_static(busybox_image.BUSYBOX)
    except Exception:
        return False
    return True


needs_busybox = pytest.mark.skipif(not _static_busybox(), reason="needs busybox-static installed")


@needs_busybox
def test_busybox_rootfs_is_deterministic(tmp_path: Path) -> None:
    first = busybox_image.build_rootfs_tar(tmp_path / "a.tar")
    second = busybox_image.build_rootfs_tar(tmp_path / "b.tar")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = {member.name: member for member in tar.getmembers()}
        passwd = tar.extractfile("etc/passwd")
        assert passwd is not None and passwd.read().startswith(b"root:x:0:0:root:/root:/bin/sh\n")
    assert members["bin/busybox"].isreg() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["usr/bin/env"].issym()
    assert members["tmp"].mode == 0o1777 and members["root"].mode == 0o700
    assert {member.uid for member in members.values()} == {0}
    assert len({member.mtime for member in members.values()}) == 1
    assert list(members) == sorted(members, key=lambda name: name.split("/"))


@needs_busybox
def test_busybox_install_is_idempotent(store: ImageStore) -> None:
    image = busybox_image.install(store)
    assert image.references == ("busybox:latest",)
    assert image.config.cmd == ("sh",)
    blobs = blob_names(store)
    again = busybox_image.install(store)
    assert again.id == image.id and blob_names(store) == blobs
    assert isinstance(store.resolve("busybox"), Image)
