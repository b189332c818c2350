"""hyperd itself: what it reports, one daemon per root, restarts, and a guest that cannot boot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import QEMU, STOP_TIMEOUT, Daemon, DaemonFactory, lines, ps_row, wait_for


def _fields(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines(text):
        key, sep, value = line.strip().partition(":")
        if sep:
            found.setdefault(key, value.strip())
    return found


def test_info_names_the_accelerator_and_why(daemon: Daemon) -> None:
    result = daemon.hyper("info")
    assert result.returncode == 0, result.stderr
    info = _fields(result.stdout)
    assert info.get("Accelerator") in ("kvm", "tcg"), result.stdout
    assert info.get("AcceleratorReason"), result.stdout
    assert info.get("Root") == str(daemon.root)


def test_version_shows_client_and_server(daemon: Daemon) -> None:
    result = daemon.hyper("version")
    assert result.returncode == 0, result.stderr
    client, sep, server = result.stdout.partition("\nServer:\n")
    assert sep, result.stdout
    assert client.startswith("Client:\n")
    assert re.search(r"^ Version: +\S", client, re.M), client
    assert re.search(r"^ Version: +\S", server, re.M), server
    assert re.search(r"^ Accelerator: +(kvm|tcg)$", server, re.M), server


@pytest.mark.parametrize("same_socket", [False, True], ids=["other-socket", "same-socket"])
def test_second_daemon_on_the_same_root_is_refused(make_daemon: DaemonFactory, same_socket: bool) -> None:
    first = make_daemon()
    host = first.host if same_socket else f"unix://{first.base}/second.sock"
    hyperd = first.argv()[0]
    second = subprocess.run([hyperd, "-H", host, "--root", str(first.root)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=STOP_TIMEOUT, check=False)
    assert second.returncode != 0
    assert "already using" in second.stderr
    assert str(first.pid) in second.stderr
    assert not (first.base / "second.sock").exists()
    # The first daemon is untouched: still on its socket, still serving.
    assert first.hyper("version").returncode == 0


def test_state_survives_a_daemon_restart(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    done = daemon.hyper("run", "--name", "done", "busybox", "sh", "-c", "echo bye; exit 5")
    assert (done.returncode, done.stdout) == (5, "bye\n"), done.stderr
    live = daemon.hyper("run", "-d", "--name", "live", "busybox", "sleep", "1000")
    assert live.returncode == 0, live.stderr
    assert daemon.qemus(), "no QEMU for the running container"

    assert daemon.stop() == 0  # and no QEMU left, the socket removed
    daemon.start()

    ps = daemon.hyper("ps", "-a")
    assert ps.returncode == 0, ps.stderr
    assert " Exited (5) " in ps_row(ps.stdout, "done")
    assert re.search(r" Exited \(\d+\) ", ps_row(ps.stdout, "live"))
    assert daemon.hyper("ps", "-q").stdout == ""
    logs = daemon.hyper("logs", "done")
    assert (logs.returncode, logs.stdout) == (0, "bye\n"), logs.stderr
    # The restarted daemon runs containers, and removes the old ones.
    again = daemon.hyper("run", "--rm", "busybox", "echo", "again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr
    removed = daemon.hyper("rm", "done", "live")
    assert (removed.returncode, removed.stdout) == (0, "done\nlive\n"), removed.stderr
    assert daemon.hyper("ps", "-aq").stdout == ""


def test_vms_of_a_killed_daemon_are_reclaimed_at_its_restart(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    started = daemon.hyper("run", "-d", "--name", "orphan", "busybox", "sleep", "1000")
    assert started.returncode == 0, started.stderr
    assert daemon.qemus(), "no QEMU for the running container"
    assert daemon.process is not None
    daemon.process.kill()  # a crash: no chance to stop its pods
    daemon.process.wait()

    daemon.start()  # over the dead daemon's socket file
    daemon.assert_no_qemu("after the restart of a killed hyperd")
    assert re.search(r" Exited \(\d+\) ", ps_row(daemon.hyper("ps", "-a").stdout, "orphan"))
    removed = daemon.hyper("rm", "orphan")
    assert (removed.returncode, removed.stdout) == (0, "orphan\n"), removed.stderr


def test_a_daemon_on_another_root_does_not_take_a_live_daemons_socket(make_daemon: DaemonFactory) -> None:
    first = make_daemon()
    second = make_daemon(socket=first.socket, start=False)
    process = second.spawn()

    def root_served() -> str | None:
        return _fields(first.hyper("info").stdout).get("Root")

    # Settled: the second daemon gave up, or it answers on the socket in the first's place.
    wait_for(lambda: process.poll() is not None or root_served() != str(first.root), 60,
             "the second hyperd to exit or to serve the socket")
    assert root_served() == str(first.root), "the second hyperd took over the first one's socket"
    assert process.wait(STOP_TIMEOUT) != 0
    assert str(first.socket) in second.log.read_text()


def _qemu_refuses(kernel: Path) -> str:
    """QEMU's own last line when it refuses to load ``kernel`` at all."""
    qemu = shutil.which(QEMU)
    assert qemu is not None
    result = subprocess.run(
        [qemu, "-M", "microvm", "-accel", "tcg", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none",
         "-no-reboot", "-kernel", str(kernel)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode != 0 and result.stderr.strip(), f"QEMU loads {kernel}: {result}"
    return result.stderr.strip().splitlines()[-1].removeprefix(f"{QEMU}: ")


# Each kernel fails differently: QEMU refuses it, the guest CPU faults at its first instruction
# (QEMU exits at once, -no-reboot), or it spins without a word until hyperd's boot timeout.
BAD_KERNELS: dict[str, Callable[[Path], object]] = {
    "not-a-kernel": lambda path: shutil.copy("/bin/true", path),
    "faults-at-once": lambda path: path.write_bytes(b"\xcc" * (1 << 20)),  # int3 without an IDT: triple fault
    "hangs": lambda path: path.write_bytes(b"\xf4" * (1 << 20)),  # hlt, forever
}


@pytest.mark.parametrize("kind", list(BAD_KERNELS))
def test_guest_boot_failure_is_one_clear_error_and_leaks_nothing(
    make_daemon: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    kernel = tmp_path / "vmlinux"
    BAD_KERNELS[kind](kernel)
    # Its own probe cache: these kernels' KVM verdicts must not pile up in /var/cache/hyper.
    daemon = make_daemon(kernel=kernel, env={"HYPER_CACHE": str(tmp_path / "cache")})

    # The daemon survives a failed boot and fails the next one the same way (a hang costs a whole timeout).
    for _ in range(1 if kind == "hangs" else 3):
        result = daemon.hyper("run", "--rm", "busybox", "true")
        assert result.returncode == 125, result.stderr
        assert result.stdout == ""
        first = lines(result.stderr)[0]
        assert first.startswith("hyper: guest boot failed"), result.stderr
        if kind == "not-a-kernel":
            # QEMU refused the kernel before the guest ran: its reason is the user's only clue.
            assert _qemu_refuses(kernel) in result.stderr
        assert daemon.hyper("ps", "-aq").stdout == ""
        daemon.assert_no_qemu("after the failed boot")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: room for busybox and a VM's files, not for much logging."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_log_lines_not_output_or_the_container(small_disk: Path,
                                                                  make_daemon: DaemonFactory) -> None:
    daemon = make_daemon(root=small_disk / "root", start=False)
    daemon.import_busybox()
    daemon.start()
    # ~2.7 MB of output is ~28 MB of json-file log: the disk fills part way through.
    run = daemon.hyper("run", "--name", "chatty", "busybox", "seq", "1", "400000")
    assert run.returncode == 0, run.stderr
    numbers = run.stdout.splitlines()
    assert len(numbers) == 400000 and numbers[-1] == "400000"
    state = json.loads(daemon.hyper("inspect", "chatty").stdout)[0]["State"]
    assert state["ExitCode"] == 0
    assert "logging failed" in state["Error"] and "No space left" in state["Error"]
    assert daemon.hyper("rm", "chatty").returncode == 0
    assert daemon.hyper("run", "--rm", "busybox", "echo", "still here").stdout == "still here\n"
