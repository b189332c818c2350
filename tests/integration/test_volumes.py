"""Data outside the VM: bind mounts over virtio-9p and named volumes on disks of their own."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DaemonFactory, Hyper, wait_for

RUNNING_TIMEOUT = 180.0


def inspect(hyper: Hyper, name: str) -> dict[str, Any]:
    got = hyper("inspect", name)
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout)[0])


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def test_a_bind_mount_is_shared_both_ways(hyper: Hyper, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hello from the host\n")
    got = hyper("run", "--rm", "-v", f"{shared}:/srv/data", "busybox", "sh", "-c",
                "cat /srv/data/from-host && echo written > /srv/data/from-pod && chmod 640 /srv/data/from-pod "
                "&& mkdir /srv/data/dir && chown 1234:5678 /srv/data/dir")
    assert got.returncode == 0 and got.stdout == "hello from the host\n", got.stderr
    assert (shared / "from-pod").read_text() == "written\n"
    assert (shared / "from-pod").stat().st_mode & 0o777 == 0o640
    assert ((shared / "dir").stat().st_uid, (shared / "dir").stat().st_gid) == (1234, 5678)


def test_a_read_only_bind_mount_refuses_writes_in_the_guest(hyper: Hyper, tmp_path: Path) -> None:
    shared = tmp_path / "ro"
    shared.mkdir()
    (shared / "file").write_text("keep\n")
    got = hyper("run", "--rm", "-v", f"{shared}:/data:ro", "busybox", "sh", "-c",
                "cat /data/file; echo changed > /data/file; touch /data/new")
    assert got.stdout == "keep\n" and "Read-only file system" in got.stderr, (got.stdout, got.stderr)
    assert got.returncode != 0
    assert (shared / "file").read_text() == "keep\n" and not (shared / "new").exists()
    mount = inspect_mounts(hyper, "--mount", f"type=bind,source={shared},target=/data,readonly")
    assert mount == {"Type": "bind", "Source": str(shared), "Destination": "/data", "Mode": "ro", "RW": False,
                     "Propagation": "rprivate"}


def inspect_mounts(hyper: Hyper, *flags: str) -> dict[str, Any]:
    name = unique("mounts")
    created = hyper("create", "--name", name, *flags, "busybox", "true")
    assert created.returncode == 0, created.stderr
    mounts = inspect(hyper, name)["Mounts"]
    assert len(mounts) == 1, mounts
    return dict(mounts[0])


def test_missing_bind_sources(hyper: Hyper, tmp_path: Path) -> None:
    made = tmp_path / "made" / "by" / "run"
    got = hyper("run", "--rm", "-v", f"{made}:/data", "busybox", "sh", "-c", "echo x > /data/x")
    assert got.returncode == 0, got.stderr
    assert made.is_dir() and (made / "x").read_text() == "x\n"  # -v makes the directory, as docker's does
    before = hyper.ids()
    missing = tmp_path / "missing"
    got = hyper("run", "--rm", "--mount", f"type=bind,source={missing},target=/data", "busybox", "true")
    assert got.returncode == 125
    assert got.stderr.strip().endswith(f"bind source path does not exist: {missing}"), got.stderr
    assert not missing.exists() and hyper.ids() == before
    (tmp_path / "file").write_text("one file\n")
    got = hyper("run", "--rm", "-v", f"{tmp_path / 'file'}:/etc/file", "busybox", "true")
    assert got.returncode == 125 and "is not a directory" in got.stderr, got.stderr
    assert hyper.ids() == before


@pytest.mark.parametrize(("flag", "message"), [
    ("rel/path:/data", "includes invalid characters for a local volume name"),
    ("/host:relative", "invalid mode 'relative'"),
    ("data:/", "cannot replace the container's root"),
    ("data:/x:ro,rw", "both ro and rw"),
])
def test_invalid_volume_specifications(hyper: Hyper, flag: str, message: str) -> None:
    before, volumes = hyper.ids(), hyper.volumes()
    got = hyper("run", "--rm", "-v", flag, "busybox", "true")
    assert got.returncode == 125 and message in got.stderr, got.stderr
    assert len(got.stderr.strip().splitlines()) == 1
    assert hyper.ids() == before and hyper.volumes() == volumes


def test_a_named_volume_outlives_its_container_and_moves_to_another_pod(hyper: Hyper) -> None:
    volume = unique("data")
    created = hyper("volume", "create", "--opt", "size=64m", "--label", "team=a", volume)
    assert created.returncode == 0 and created.stdout == f"{volume}\n", created.stderr
    details = json.loads(hyper("volume", "inspect", volume).stdout)[0]
    assert (details["Name"], details["Driver"], details["Labels"]) == (volume, "local", {"team": "a"})
    assert details["Options"] == {"size": str(64 << 20)}
    writer = unique("writer")
    got = hyper("run", "--name", writer, "-v", f"{volume}:/data", "busybox", "sh", "-c",
                "echo kept > /data/file && df -k /data | tail -1")
    assert got.returncode == 0, got.stderr
    assert 40_000 < int(got.stdout.split()[1]) <= 65_536, got.stdout  # the volume's own 64 MiB disk
    # Named by a container, even a stopped one, a volume stays.
    refused = hyper("volume", "rm", volume)
    assert refused.returncode == 125 and "volume is in use" in refused.stderr, refused.stderr
    assert hyper("rm", "-v", writer).returncode == 0  # -v removes anonymous volumes only
    assert volume in hyper.volumes()
    reader = hyper("run", "--rm", "--mount", f"source={volume},target=/elsewhere,readonly", "busybox", "sh",
                   "-c", "cat /elsewhere/file; touch /elsewhere/new")
    assert reader.stdout == "kept\n" and "Read-only file system" in reader.stderr, (reader.stdout, reader.stderr)
    assert hyper("volume", "rm", volume).returncode == 0
    assert volume not in hyper.volumes()


def test_an_empty_volume_is_filled_from_the_image(hyper: Hyper) -> None:
    volume = unique("etc")
    image = hyper("run", "--rm", "busybox", "sh", "-c", "stat -c '%n %a %u %g' /etc/passwd /etc; readlink /bin/ls")
    assert image.returncode == 0, image.stderr
    script = "stat -c '%n %a %u %g' /etc/passwd /etc; readlink /bin/ls"
    got = hyper("run", "--rm", "-v", f"{volume}:/etc", "-v", f"{volume}-bin:/bin", "busybox", "sh", "-c", script)
    assert got.returncode == 0 and got.stdout == image.stdout, (got.stdout, got.stderr)
    # Filled once: what a container changes is what the next one finds.
    hyper("run", "--rm", "-v", f"{volume}:/etc", "busybox", "sh", "-c", "echo changed > /etc/motd; rm /etc/group")
    again = hyper("run", "--rm", "-v", f"{volume}:/etc", "busybox", "sh", "-c", "cat /etc/motd; ls /etc/group")
    assert again.stdout == "changed\n" and "No such file" in again.stderr, (again.stdout, again.stderr)
    nocopy = hyper("run", "--rm", "--mount", f"source={volume}-empty,target=/etc,volume-nocopy", "busybox",
                   "ls", "-A", "/etc")
    # Only what every container gets there (its naming files, bound over as docker's are) and ext4's own.
    assert nocopy.returncode == 0, nocopy.stderr
    assert set(nocopy.stdout.split()) == {"lost+found", "hostname", "hosts", "resolv.conf"}, nocopy.stdout


def test_anonymous_volumes_go_with_rm_v(hyper: Hyper) -> None:
    name = unique("anon")
    got = hyper("run", "--name", name, "-v", "/scratch", "busybox", "sh", "-c", "echo x > /scratch/x && cat /scratch/x")
    assert got.returncode == 0 and got.stdout == "x\n", got.stderr
    (mount,) = inspect(hyper, name)["Mounts"]
    assert mount["Type"] == "volume" and mount["Destination"] == "/scratch" and len(mount["Name"]) == 64
    assert mount["Name"] in hyper.volumes()
    assert hyper("rm", "-v", name).returncode == 0
    assert mount["Name"] not in hyper.volumes()
    # --rm removes them too, as docker's does.
    before = hyper.volumes()
    assert hyper("run", "--rm", "-v", "/scratch", "busybox", "true").returncode == 0
    assert hyper.volumes() == before


def test_a_volume_is_attached_to_one_running_pod_at_a_time(hyper: Hyper) -> None:
    volume, holder = unique("busy"), unique("holder")
    started = hyper("run", "-d", "--name", holder, "-v", f"{volume}:/data", "busybox", "sleep", "600")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: inspect(hyper, holder)["State"]["Running"], RUNNING_TIMEOUT, "the holder to run")
    second = hyper("run", "--rm", "-v", f"{volume}:/data", "busybox", "true")
    assert second.returncode == 125, second.stderr
    assert f"volume {volume} is in use by running container {holder}" in second.stderr, second.stderr
    assert inspect(hyper, holder)["State"]["Running"]  # the first pod is unharmed
    assert hyper("rm", "-f", holder).returncode == 0
    assert hyper("run", "--rm", "-v", f"{volume}:/data", "busybox", "true").returncode == 0


def test_volume_prune_removes_only_unused_anonymous_volumes_unless_all(hyper: Hyper) -> None:
    named, kept = unique("named"), unique("kept")
    assert hyper("volume", "create", named).returncode == 0
    assert hyper("create", "--name", kept, "-v", "/data", "busybox", "true").returncode == 0
    (used,) = [m["Name"] for m in inspect(hyper, kept)["Mounts"]]
    orphan = unique("orphan")
    assert hyper("create", "--name", orphan, "-v", "/data", "busybox", "true").returncode == 0
    (unused,) = [m["Name"] for m in inspect(hyper, orphan)["Mounts"]]
    assert hyper("rm", orphan).returncode == 0  # without -v: the anonymous volume stays, unused
    assert unused in hyper.volumes()
    pruned = hyper("volume", "prune", "-f")
    assert pruned.returncode == 0 and unused in pruned.stdout and named not in pruned.stdout, pruned.stdout
    assert {named, used} <= set(hyper.volumes()) and unused not in hyper.volumes()
    pruned = hyper("volume", "prune", "-f", "-a")
    assert named in pruned.stdout and used not in pruned.stdout, pruned.stdout


def test_a_bind_mount_sees_host_changes_at_once(hyper: Hyper, tmp_path: Path) -> None:
    shared = tmp_path / "live"
    shared.mkdir()
    name = unique("watcher")
    started = hyper("run", "-d", "--name", name, "-v", f"{shared}:/live", "busybox", "sh", "-c",
                    "touch /live/ready; while [ ! -e /live/go ]; do sleep 0.1; done; cat /live/go")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: (shared / "ready").exists(), RUNNING_TIMEOUT, "the container to start")
    (shared / "go").write_text("seen\n")
    wait_for(lambda: not inspect(hyper, name)["State"]["Running"], RUNNING_TIMEOUT, "the container to see it")
    assert hyper("logs", name).stdout == "seen\n"


def test_volume_records_survive_a_daemon_restart(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    volume = unique("kept")
    assert daemon.hyper("volume", "create", volume).returncode == 0
    assert daemon.hyper("run", "--rm", "-v", f"{volume}:/v", "busybox", "sh", "-c", "echo 1 > /v/one").returncode == 0
    # A create cut short by a crash leaves a directory without a record: reclaimed at start.
    leftover = daemon.root / "volumes" / "half-made"
    leftover.mkdir()
    daemon.stop()
    daemon.start()
    assert not leftover.exists()
    assert daemon.hyper("volume", "ls", "-q").stdout.split() == [volume]
    got = daemon.hyper("run", "--rm", "-v", f"{volume}:/v", "busybox", "cat", "/v/one")
    assert got.stdout == "1\n", got.stderr
    assert daemon.hyper("volume", "rm", volume).returncode == 0
    assert not (daemon.root / "volumes" / volume).exists()

