"""A container's files from the host, running or stopped: ``cp`` both ways, ``diff``, ``commit`` and ``export``."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from tests.integration.conftest import Hyper, lines, wait_for


def _running(hyper: Hyper, name: str, script: str = "") -> None:
    """A busybox container that runs ``script``, touches /ready and sleeps."""
    result = hyper("run", "-d", "--name", name, "busybox", "sh", "-c", f"{script} touch /ready && sleep 600")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: hyper("exec", name, "test", "-e", "/ready").returncode == 0, 60, f"{name} to be ready")


def _tree(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under ``root``: its kind, mode and content (a symlink's target)."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            found[relative] = ("dir", info.st_mode & 0o7777, b"")
        else:
            found[relative] = ("file", info.st_mode & 0o7777, path.read_bytes())
    return found


def _make_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o750)
    (root / "sub" / "data.bin").write_bytes(bytes(range(256)) * 300)
    (root / "sub" / "secret").write_bytes(b"private\n")
    (root / "sub" / "secret").chmod(0o600)
    (root / "sub" / "deep").chmod(0o711)
    (root / "sub" / ".wh.not-a-whiteout").write_bytes(b"an ordinary file\n")
    (root / "link-in").symlink_to("sub/data.bin")
    (root / "link-abs").symlink_to("/etc/passwd")


def test_cp_round_trips_a_tree_byte_for_byte(hyper: Hyper, tmp_path: Path) -> None:
    _running(hyper, "copied")
    source = tmp_path / "tree"
    _make_tree(source)
    into = hyper("cp", str(source), "copied:/tmp/tree")
    assert (into.returncode, into.stderr) == (0, ""), into.stderr
    inside = hyper("exec", "copied", "sh", "-c", "stat -c '%a %u %n' /tmp/tree/script.sh /tmp/tree/sub/deep; "
                                                 "readlink /tmp/tree/link-abs; cat /tmp/tree/link-in | wc -c")
    assert lines(inside.stdout) == ["750 0 /tmp/tree/script.sh", "711 0 /tmp/tree/sub/deep", "/etc/passwd", "76800"]

    back = tmp_path / "back"
    out = hyper("cp", "copied:/tmp/tree", str(back))
    assert (out.returncode, out.stderr) == (0, "")
    assert _tree(back) == _tree(source)

    # Into an existing directory the source keeps its name; SRC/. copies the content.
    existing = tmp_path / "existing"
    existing.mkdir()
    assert hyper("cp", "copied:/tmp/tree/sub", str(existing)).returncode == 0
    assert _tree(existing / "sub") == _tree(source / "sub")
    content = tmp_path / "content"
    assert hyper("cp", "copied:/tmp/tree/sub/.", str(content)).returncode == 0
    assert _tree(content) == _tree(source / "sub")

    # A file onto a new name, both ways.
    assert hyper("cp", str(source / "sub" / "secret"), "copied:/root/renamed").returncode == 0
    assert hyper("exec", "copied", "cat", "/root/renamed").stdout == "private\n"
    assert hyper("cp", "copied:/root/renamed", str(tmp_path / "again")).returncode == 0
    assert (tmp_path / "again").read_bytes() == b"private\n"
    assert (tmp_path / "again").stat().st_mode & 0o777 == 0o600


def test_cp_with_tar_on_stdin_and_stdout(hyper: Hyper) -> None:
    _running(hyper, "piped")
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        entry = tarfile.TarInfo("from-stdin/hello.txt")
        entry.size, entry.mode, entry.uid = 6, 0o640, 1234
        tar.addfile(entry, io.BytesIO(b"hello\n"))
    into = subprocess.run([hyper.daemon.cli, "cp", "-", "piped:/tmp"], input=plain.getvalue(), capture_output=True,
                          env=hyper.daemon.cli_env(), check=False, timeout=120)
    assert (into.returncode, into.stderr) == (0, b"")
    assert hyper("exec", "piped", "stat", "-c", "%a %u", "/tmp/from-stdin/hello.txt").stdout == "640 1234\n"

    out = subprocess.run([hyper.daemon.cli, "cp", "piped:/tmp/from-stdin", "-"], capture_output=True,
                         env=hyper.daemon.cli_env(), check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        assert sorted(tar.getnames()) == ["from-stdin", "from-stdin/hello.txt"]
        data = tar.extractfile("from-stdin/hello.txt")
        assert data is not None and data.read() == b"hello\n"


def test_cp_stays_inside_the_container(hyper: Hyper, tmp_path: Path) -> None:
    # A symlink the container made pointing at / must lead to the container's root, not the VM's.
    _running(hyper, "escaper", "ln -s / /escape && ln -s ../../../../ /up && echo inside > /marker &&")
    target = tmp_path / "probe"
    target.write_bytes(b"planted\n")
    for destination in ("escaper:/escape/planted", "escaper:/up/planted", "escaper:../../planted"):
        result = hyper("cp", str(target), destination)
        assert (result.returncode, result.stderr) == (0, ""), destination
    listing = hyper("exec", "escaper", "ls", "/")
    assert "planted" in listing.stdout.split()
    # And reading through them reads the container's own files.
    out = hyper("cp", "escaper:/up/marker", str(tmp_path / "marker"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "marker").read_bytes() == b"inside\n"


def test_cp_from_a_hostile_archive_lands_nowhere_else(hyper: Hyper, tmp_path: Path) -> None:
    # A container's symlink to an absolute host path is copied as a symlink, never followed on the host.
    _running(hyper, "hostile", "mkdir /out && ln -s /etc /out/etc && ")
    destination = tmp_path / "dest"
    result = hyper("cp", "hostile:/out", str(destination))
    assert result.returncode == 0, result.stderr
    assert os.readlink(destination / "etc") == "/etc"


def test_cp_errors_are_one_line(hyper: Hyper, tmp_path: Path) -> None:
    _running(hyper, "errors")
    missing = hyper("cp", "errors:/no/such/file", str(tmp_path / "x"))
    assert (missing.returncode, lines(missing.stderr)) == (
        125, ["hyper: Could not find the file /no/such/file in container errors"])
    both = hyper("cp", str(tmp_path), str(tmp_path / "y"))
    assert both.returncode == 125 and len(lines(both.stderr)) == 1
    no_parent = hyper("cp", "errors:/etc/passwd", str(tmp_path / "none" / "passwd"))
    assert (no_parent.returncode, lines(no_parent.stderr)) == (125, [f"hyper: no such directory: {tmp_path / 'none'}"])
    no_container = hyper("cp", str(tmp_path), "nosuch:/tmp")
    assert (no_container.returncode, lines(no_container.stderr)) == (125, ["hyper: No such container: nosuch"])
    assert hyper("run", "--rm", "-d", "--name", "removed", "busybox", "sleep", "600").returncode == 0
    assert hyper("cp", "removed:/etc/passwd", str(tmp_path / "p")).returncode == 0
    assert not (tmp_path / "x").exists()


def test_diff_and_commit(hyper: Hyper) -> None:
    _running(hyper, "changed", "echo new > /etc/added && echo more >> /etc/profile && rm /etc/group && "
                               "rm -r /home && mkdir /home && echo fresh > /home/file &&")
    diff = hyper("diff", "changed")
    assert diff.returncode == 0, diff.stderr
    changes = set(lines(diff.stdout))
    assert {"C /etc", "A /etc/added", "D /etc/group", "A /ready", "C /home", "A /home/file"} <= changes
    assert not any(line.endswith(("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")) for line in changes)

    committed = hyper("commit", "-m", "a test", "-a", "tester", "-c", "CMD cat /etc/added", "-c", "ENV MARK=yes",
                      "changed", "committed:1")
    assert committed.returncode == 0, committed.stderr
    assert committed.stdout.startswith("sha256:")
    assert hyper("exec", "changed", "true").returncode == 0  # thawed after the commit

    ran = hyper("run", "--rm", "committed:1")
    assert (ran.returncode, ran.stdout) == (0, "new\n")
    shows = hyper("run", "--rm", "committed:1", "sh", "-c",
                  "cat /home/file; ls /home; test -e /etc/group || echo gone; echo $MARK")
    assert lines(shows.stdout) == ["fresh", "file", "gone", "yes"]
    inspect = hyper("image", "inspect", "--format", "{{.Author}}|{{.Comment}}", "committed:1")
    assert inspect.stdout.strip() == "tester|a test"
    assert hyper("rmi", "committed:1").returncode == 0


def test_commit_refuses_bad_changes(hyper: Hyper) -> None:
    _running(hyper, "source")
    bad = hyper("commit", "-c", "RUN rm -rf /", "source", "bad:1")
    assert (bad.returncode, lines(bad.stderr)) == (125, ["hyper: RUN is not a valid change command"])
    assert hyper("images", "-q", "bad:1").stdout == ""
    assert hyper("rm", "-f", "source").returncode == 0


def _vms(hyper: Hyper, cid: str) -> list[str]:
    """The QEMU processes of the container's VMs (named hyper-<short id>)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"hyper-{cid[:12]}" in line and "qemu" in line]


def test_a_stopped_container_s_files_are_still_reachable(hyper: Hyper, tmp_path: Path) -> None:
    # docker's create, cp in, start, cp out: the habit of CI jobs.
    (tmp_path / "input").write_text("from the host\n")
    created = hyper("create", "--name", "job", "-v", "jobvol:/vol", "busybox", "sh", "-c",
                    "mkdir /out && tr a-z A-Z < /input > /out/result && rm /etc/group && echo kept > /vol/x")
    assert created.returncode == 0, created.stderr
    cid = created.stdout.strip()
    copied_in = hyper("cp", str(tmp_path / "input"), "job:/input")
    assert copied_in.returncode == 0, copied_in.stderr
    assert hyper("inspect", "--format", "{{.State.Status}}", "job").stdout == "created\n"
    assert hyper("start", "-a", "job").returncode == 0

    finished = hyper("inspect", "--format", "{{.State.Status}} {{.State.FinishedAt}}", "job").stdout
    copied_out = hyper("cp", "job:/out", str(tmp_path / "out"))
    assert copied_out.returncode == 0, copied_out.stderr
    assert (tmp_path / "out" / "result").read_text() == "FROM THE HOST\n"
    # The VM that reached them waits a moment for the next request, and gives way to a pod wanting the volume.
    assert hyper("run", "--rm", "-v", "jobvol:/vol", "busybox", "cat", "/vol/x").stdout == "kept\n"
    diff = hyper("diff", "job")
    assert {"A /input", "A /out", "A /out/result", "D /etc/group"} <= set(lines(diff.stdout)), diff.stderr
    exported = subprocess.run([hyper.daemon.cli, "export", "job"], capture_output=True, env=hyper.daemon.cli_env(),
                              check=False)
    assert exported.returncode == 0, exported.stderr
    with tarfile.open(fileobj=io.BytesIO(exported.stdout)) as tar:
        names = {name.removeprefix("./") for name in tar.getnames()}
    assert "out/result" in names and "etc/group" not in names and "bin/busybox" in names
    committed = hyper("commit", "-c", "CMD cat /out/result", "job", "job-result:1")
    assert committed.returncode == 0, committed.stderr
    assert hyper("run", "--rm", "job-result:1").stdout == "FROM THE HOST\n"

    # None of it ran the container again.
    assert hyper("inspect", "--format", "{{.State.Status}} {{.State.FinishedAt}}", "job").stdout == finished
    assert "exited" in finished
    # The next run finds what the first one left (its writable layer is a disk of its own), and no VM is left.
    assert hyper("start", "-a", "job").returncode == 1  # mkdir /out: it exists
    wait_for(lambda: _vms(hyper, cid) == [], 30, "the container's VMs to end")
    assert hyper("rmi", "job-result:1").returncode == 0
    assert hyper("rm", "job").returncode == 0
    assert hyper("volume", "rm", "jobvol").returncode == 0


def test_a_removed_containers_layer_is_gone_with_its_vm(hyper: Hyper, tmp_path: Path) -> None:
    created = hyper("create", "--rm", "--name", "fleeting", "busybox", "true")
    assert created.returncode == 0, created.stderr
    refused = hyper("cp", "fleeting:/etc/passwd", str(tmp_path / "p"))
    assert refused.returncode == 125
    [line] = lines(refused.stderr)
    assert line.startswith("hyper: cannot ") and line.endswith(
        " container fleeting: it is not running, and its writable layer was a tmpfs in its VM (--rm), gone with it")
    assert not (tmp_path / "p").exists()
