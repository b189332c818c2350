"""Image management as a user drives it: save/load round trips, tags, removal of images in use, bad archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from hyperd.image.busybox import build_rootfs_tar
from tests.integration.conftest import Hyper, lines, wait_for


def _custom_image(hyper: Hyper, tmp_path: Path, name: str, marker: str) -> str:
    """busybox plus ``/marker`` holding ``marker``, imported as ``name``; its id."""
    rootfs = tmp_path / "rootfs.tar"
    build_rootfs_tar(rootfs)
    with tarfile.open(rootfs, "a") as tar:
        data = marker.encode()
        entry = tarfile.TarInfo("marker")
        entry.size, entry.mode = len(data), 0o644
        tar.addfile(entry, io.BytesIO(data))
    result = hyper("import", str(rootfs), name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _listing(hyper: Hyper) -> list[str]:
    result = hyper("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert result.returncode == 0, result.stderr
    return sorted(lines(result.stdout))


def test_save_rmi_load_and_run(hyper: Hyper, tmp_path: Path) -> None:
    image_id = _custom_image(hyper, tmp_path, "saved/app:1", "saved and loaded")
    tagged = hyper("tag", "saved/app:1", "saved/app:2")
    assert tagged.returncode == 0, tagged.stderr
    archive = tmp_path / "app.tar"
    saved = hyper("save", "-o", str(archive), "saved/app:1", "saved/app:2")
    assert saved.returncode == 0, saved.stderr
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "index.json", "oci-layout", "repositories"} <= names

    untag = hyper("rmi", "saved/app:2")
    assert (untag.returncode, lines(untag.stdout)) == (0, ["Untagged: saved/app:2"]), untag.stderr
    removed = hyper("rmi", "saved/app:1")
    assert removed.returncode == 0, removed.stderr
    assert lines(removed.stdout) == ["Untagged: saved/app:1", f"Deleted: {image_id}"]
    assert not any(row.startswith("saved/app:") for row in _listing(hyper))

    loaded = hyper("load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert sorted(lines(loaded.stdout)) == ["Loaded image: saved/app:1", "Loaded image: saved/app:2"]
    assert f"saved/app:1 {image_id}" in _listing(hyper)
    run = hyper("run", "--rm", "saved/app:2", "cat", "/marker")
    assert (run.returncode, run.stdout) == (0, "saved and loaded"), run.stderr
    inspected = hyper("image", "inspect", "--format", "{{.Id}} {{json .RepoTags}}", "saved/app:1")
    assert inspected.stdout.strip() == f'{image_id} ["saved/app:1","saved/app:2"]'
    history = hyper("history", "-q", "saved/app:1")
    assert lines(history.stdout)[0] == image_id.removeprefix("sha256:")[:12]
    assert hyper("rmi", "saved/app:1", "saved/app:2").returncode == 0


def test_an_image_in_use_is_not_removed(hyper: Hyper, tmp_path: Path) -> None:
    image_id = _custom_image(hyper, tmp_path, "inuse/app:1", "in use")
    started = hyper("run", "-d", "--name", "image-user", "inuse/app:1", "sleep", "600")
    assert started.returncode == 0, started.stderr
    for flags in ((), ("-f",)):
        refused = hyper("rmi", *flags, "inuse/app:1")
        assert refused.returncode == 125
        [line] = lines(refused.stderr)
        assert line.startswith("hyper: conflict: ") and "running container" in line, line
    assert f"inuse/app:1 {image_id}" in _listing(hyper)

    assert hyper("stop", "-t", "0", "image-user").returncode == 0
    wait_for(lambda: "exited" in hyper("inspect", "--format", "{{.State.Status}}", "image-user").stdout, 30,
             "the container to exit")
    refused = hyper("rmi", "inuse/app:1")
    assert refused.returncode == 125 and "must force" in refused.stderr, refused.stderr
    # Forced while a stopped container needs it: untagged, kept for that container.
    forced = hyper("rmi", "-f", "inuse/app:1")
    assert (forced.returncode, lines(forced.stdout)) == (0, ["Untagged: inuse/app:1"]), forced.stderr
    assert f"<none>:<none> {image_id}" in _listing(hyper)
    assert hyper("rm", "image-user").returncode == 0
    pruned = hyper("image", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert f"deleted: {image_id}" in lines(pruned.stdout)
    assert not any(image_id in row for row in _listing(hyper))


@pytest.mark.parametrize("archive", [b"this is not a tar archive\n" * 40, b""], ids=["garbage", "empty"])
def test_a_malformed_archive_is_one_line_and_changes_nothing(hyper: Hyper, tmp_path: Path, archive: bytes) -> None:
    before = _listing(hyper)
    path = tmp_path / "bad.tar"
    path.write_bytes(archive)
    result = hyper("load", "-i", str(path))
    assert (result.returncode, result.stdout) == (125, "")
    [line] = lines(result.stderr)
    assert line.startswith("hyper: "), line
    assert _listing(hyper) == before


def test_save_of_an_unknown_image_writes_nothing(hyper: Hyper, tmp_path: Path) -> None:
    target = tmp_path / "out.tar"
    result = hyper("save", "-o", str(target), "no/such:image")
    assert (result.returncode, lines(result.stderr)) == (125, ["hyper: No such image: no/such:image"])
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_running_container_has_its_changes(hyper: Hyper, tmp_path: Path) -> None:
    started = hyper("run", "-d", "--name", "exported", "busybox", "sh", "-c",
                    "echo changed > /etc/changed && rm /etc/group && touch /ready && sleep 600")
    assert started.returncode == 0, started.stderr
    archive = tmp_path / "rootfs.tar"

    def exported() -> set[str]:
        result = hyper("export", "-o", str(archive), "exported")
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        with tarfile.open(archive) as tar:
            return {name.removeprefix("./") for name in tar.getnames()}

    wait_for(lambda: "ready" in exported(), 60, "the container to write its files")
    names = exported()
    with tarfile.open(archive) as tar:
        changed = tar.extractfile("./etc/changed")
        assert changed is not None and changed.read() == b"changed\n"
    assert {"bin/busybox", "etc/passwd", "ready"} <= names
    assert "etc/group" not in names  # deleted in the container: gone from its filesystem
    assert not any(name.startswith("proc/") for name in names)  # its /proc is not part of its files

    assert hyper("rm", "-f", "exported").returncode == 0


def test_export_of_a_stopped_rm_container_is_one_line(hyper: Hyper, tmp_path: Path) -> None:
    # Its writable layer is a tmpfs that goes with its VM: nothing to export, and nothing written.
    created = hyper("create", "--rm", "--name", "finished", "busybox", "true")
    assert created.returncode == 0, created.stderr
    target = tmp_path / "out.tar"
    result = hyper("export", "-o", str(target), "finished")
    assert result.returncode == 125
    [line] = lines(result.stderr)
    assert line.startswith("hyper: cannot export container finished: it is not running"), line
    assert list(tmp_path.iterdir()) == []
    assert hyper("rm", "finished").returncode == 0
