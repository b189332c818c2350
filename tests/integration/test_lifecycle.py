"""Detached containers through ps, logs, stop and rm; Ctrl-C on a foreground run."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time

from tests.integration.conftest import CLI_TIMEOUT, DaemonFactory, Hyper, lines, ps_row, wait_for

INTERRUPT_TIMEOUT = 30.0
"""Ctrl-C stops the container with SIGTERM; it traps it and exits at once."""


def test_detached_container_through_ps_logs_stop_and_rm(hyper: Hyper) -> None:
    started = hyper("run", "-d", "--name", "web", "busybox", "sh", "-c", "echo one; echo two; exec sleep 1000")
    assert started.returncode == 0, started.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", started.stdout), started.stdout
    cid = started.stdout.strip()

    ps = hyper("ps")
    assert ps.returncode == 0, ps.stderr
    row = ps_row(ps.stdout, "web")
    assert row.startswith(cid[:12])
    assert " Up " in row
    assert hyper("ps", "-q").stdout == f"{cid[:12]}\n"
    assert hyper("ps", "-q", "--no-trunc").stdout == f"{cid}\n"

    wait_for(lambda: hyper("logs", "web").stdout == "one\ntwo\n", 10, "the running container's logs")

    refused = hyper("rm", "web")
    assert refused.returncode == 125
    [line] = lines(refused.stderr)
    assert line.startswith("hyper: ") and "web" in line
    assert hyper("ps", "-q").stdout == f"{cid[:12]}\n"

    stopped = hyper("stop", "web")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "web\n", "")
    assert hyper("ps", "-q").stdout == ""
    row = ps_row(hyper("ps", "-a").stdout, "web")
    assert " Exited (143) " in row, row
    hyper.daemon.assert_no_qemu("after stop")

    # The logs outlive the container's run.
    logs = hyper("logs", "web")
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "one\ntwo\n", "")
    tail = hyper("logs", "--tail", "1", "web")
    assert (tail.returncode, tail.stdout) == (0, "two\n"), tail.stderr

    removed = hyper("rm", "web")
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, "web\n", "")
    assert hyper("ps", "-aq").stdout == ""
    gone = hyper("logs", "web")
    assert gone.returncode == 125
    assert "No such container" in gone.stderr


def test_stop_of_an_exited_container_is_fine(hyper: Hyper) -> None:
    done = hyper("run", "--name", "done", "busybox", "true")
    assert done.returncode == 0, done.stderr
    stopped = hyper("stop", "done")
    assert (stopped.returncode, stopped.stdout) == (0, "done\n"), stopped.stderr
    assert " Exited (0) " in ps_row(hyper("ps", "-a").stdout, "done")


def test_rm_force_removes_a_running_container_and_its_vm(hyper: Hyper) -> None:
    started = hyper("run", "-d", "--name", "victim", "busybox", "sleep", "1000")
    assert started.returncode == 0, started.stderr
    assert hyper.daemon.qemus(), "no QEMU for the running container"
    removed = hyper("rm", "-f", "victim")
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, "victim\n", "")
    assert hyper("ps", "-aq").stdout == ""
    hyper.daemon.assert_no_qemu("after rm -f")


def _read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What ``process`` printed on stdout up to and including ``marker``; fails after ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no {marker!r} within {timeout:.0f}s; got {seen!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"stdout closed before {marker!r}; got {seen!r}")
        seen += chunk
    return seen


def test_ctrl_c_stops_the_container_and_reports_its_status(hyper: Hyper) -> None:
    script = 'trap "exit 3" TERM; echo ready; while true; do sleep 0.1; done'
    process = subprocess.Popen(
        [hyper.daemon.cli, "run", "--name", "ctrlc", "busybox", "sh", "-c", script],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=hyper.daemon.cli_env(),
    )
    try:
        assert _read_until(process, b"ready\n", CLI_TIMEOUT) == b"ready\n"
        process.send_signal(signal.SIGINT)
        status = process.wait(INTERRUPT_TIMEOUT)
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 3, stderr.decode(errors="replace")
    assert (stdout, stderr) == (b"", b"")
    assert " Exited (3) " in ps_row(hyper("ps", "-a").stdout, "ctrlc")
    hyper.daemon.assert_no_qemu("after Ctrl-C")


def test_restart_runs_the_container_again_in_a_new_vm(hyper: Hyper) -> None:
    started = hyper("run", "-d", "--name", "again", "busybox", "sh", "-c", "echo run; sleep 600")
    assert started.returncode == 0, started.stderr
    fmt = "{{.State.Status}} {{.State.Pid}}"
    wait_for(lambda: hyper("inspect", "--format", fmt, "again").stdout.startswith("running"), 60, "the first run")
    first_pid = hyper("inspect", "--format", fmt, "again").stdout.split()[1]
    restarted = hyper("restart", "-t", "1", "again")
    assert (restarted.returncode, restarted.stdout) == (0, "again\n"), restarted.stderr
    status, pid = hyper("inspect", "--format", fmt, "again").stdout.split()
    assert status == "running" and pid != first_pid  # another QEMU: a new VM
    wait_for(lambda: hyper("logs", "again").stdout == "run\nrun\n", 60, "the second run's output")
    listed = hyper("ps", "--filter", "name=again", "--format", "{{.Names}} {{.State}}")
    assert listed.stdout == "again running\n"
    assert hyper("rm", "-f", "again").returncode == 0


def test_create_rename_and_container_prune(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()  # a daemon of its own: prune removes every stopped container it has
    created = daemon.hyper("create", "--name", "made", "busybox", "echo", "hello")
    assert created.returncode == 0, created.stderr
    assert ps_row(daemon.hyper("ps", "-a").stdout, "made").split()[-2] == "Created"
    assert daemon.hyper("rename", "made", "renamed").returncode == 0
    started = daemon.hyper("start", "renamed")
    assert (started.returncode, started.stdout) == (0, "renamed\n"), started.stderr
    assert daemon.hyper("wait", "renamed").stdout == "0\n"
    assert daemon.hyper("logs", "renamed").stdout == "hello\n"
    running = daemon.hyper("run", "-d", "--name", "busy", "busybox", "sleep", "600")
    assert running.returncode == 0, running.stderr
    pruned = daemon.hyper("container", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert lines(pruned.stdout)[:2] == ["Deleted Containers:", created.stdout.strip()]
    assert daemon.hyper("ps", "-a", "--format", "{{.Names}}").stdout == "busy\n"  # the running one stays
    assert daemon.hyper("rm", "-f", "busy").returncode == 0


def test_start_attached(hyper: Hyper) -> None:
    assert hyper("create", "--name", "again", "busybox", "sh", "-c", "echo run; exit 4").returncode == 0
    for _ in range(2):  # created, then exited: each start -a sees its own run
        got = hyper("start", "-a", "again")
        assert (got.returncode, got.stdout) == (4, "run\n"), got.stderr
    assert hyper("create", "-i", "--name", "echoer", "busybox", "cat").returncode == 0
    piped = subprocess.run([hyper.daemon.cli, "start", "-a", "-i", "echoer"], input=b"hello\n", capture_output=True,
                           env=hyper.daemon.cli_env(), timeout=CLI_TIMEOUT, check=False)
    assert (piped.returncode, piped.stdout) == (0, b"hello\n"), piped.stderr


def test_logs_since_and_until(hyper: Hyper) -> None:
    result = hyper("run", "--name", "talker", "busybox", "sh", "-c", "echo early; sleep 3; echo late >&2")
    assert result.returncode == 0, result.stderr
    stamps = [line.split()[0] for line in hyper("logs", "-t", "talker").stderr.splitlines() +
              hyper("logs", "-t", "talker").stdout.splitlines()]
    assert len(stamps) == 2
    late = hyper("logs", "-t", "talker").stderr.split()[0]
    got = hyper("logs", "--since", late, "talker")
    assert (got.stdout, got.stderr) == ("", "late\n")
    got = hyper("logs", "--until", late.replace("Z", "").rsplit(".", 1)[0] + "Z", "talker")
    assert (got.stdout, got.stderr) == ("early\n", "")
