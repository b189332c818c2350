"""Interactive I/O as a user has it: a terminal session through a pseudo-terminal of the
test's own (prompt, window size and its changes, Ctrl-C, exit status, detach and attach),
stdin piped byte for byte, and exec into a running container."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pty
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import CLI_TIMEOUT, Hyper, wait_for

PROMPT = b"# "
SESSION_TIMEOUT = 90.0
"""Seconds a terminal session may wait for an answer (a boot is ~2.5 s under TCG)."""


class Terminal:
    """``hyper ARGS`` on a pseudo-terminal: the user's side of an interactive session."""

    def __init__(self, hyper: Hyper, *args: str, rows: int = 30, cols: int = 100) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes hyper, the pty its controlling terminal
            os.execve(hyper.daemon.cli, ["hyper", *args], hyper.daemon.cli_env())
        self.resize(rows, cols)
        self.seen = b""
        self.status: int | None = None

    def resize(self, rows: int, cols: int) -> None:
        # The kernel sends SIGWINCH to hyper, the terminal's foreground process.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, pattern: bytes, timeout: float = SESSION_TIMEOUT) -> bytes:
        """Everything up to and including ``pattern``; fails with what was seen instead."""
        deadline = time.monotonic() + timeout
        while pattern not in self.seen:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"no {pattern!r} within {timeout:.0f}s; the terminal showed {self.seen[-500:]!r}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                pytest.fail(f"the session ended before {pattern!r}; it showed {self.seen[-500:]!r}")
            self.seen += chunk
        end = self.seen.index(pattern) + len(pattern)
        before, self.seen = self.seen[:end], self.seen[end:]
        return before

    def wait(self, timeout: float = SESSION_TIMEOUT) -> int:
        """hyper's exit status, reading (and keeping) what it still prints."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                pytest.fail(f"hyper did not exit within {timeout:.0f}s; it showed {self.seen[-500:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.fd, 4096)
        return self.status

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for terminal in made:
        terminal.close()


def test_terminal_session(hyper: Hyper, terminals: list[Terminal]) -> None:
    term = Terminal(hyper, "run", "-it", "--rm", "busybox", "sh")
    terminals.append(term)
    term.expect(PROMPT)
    term.send(b"stty size; tty\n")
    assert b"30 100\r\n/dev/pts/0\r\n" in term.expect(PROMPT)
    term.resize(40, 132)

    def resized() -> bool:
        term.send(b"stty size\n")
        return b"40 132" in term.expect(PROMPT)

    wait_for(resized, 30, "the new window size")
    # Ctrl-C reaches the shell's foreground job, not hyper: the shell goes on.
    term.send(b"sleep 600\n")
    time.sleep(1)
    term.send(b"\x03")
    term.expect(PROMPT, timeout=30)
    term.send(b"echo $((6 * 7)); exit 3\n")
    assert term.wait() == 3
    assert b"42" in term.seen


def test_detach_and_attach(hyper: Hyper, terminals: list[Terminal]) -> None:
    first = Terminal(hyper, "run", "-it", "--name", "detachable", "busybox", "sh")
    terminals.append(first)
    first.expect(PROMPT)
    first.send(b"export MARK=kept\n")
    first.expect(PROMPT)
    first.send(b"\x10\x11")  # Ctrl-P Ctrl-Q
    assert first.wait() == 0
    assert hyper("inspect", "-f", "{{.State.Status}}", "detachable").stdout == "running\n"
    again = Terminal(hyper, "attach", "detachable")
    terminals.append(again)
    again.send(b"echo mark=$MARK\n")
    again.expect(b"mark=kept")
    again.send(b"exit 4\n")
    assert again.wait() == 4
    wait_for(lambda: hyper("inspect", "-f", "{{.State.Status}}", "detachable").stdout == "exited\n", 30,
             "the container to exit")


def test_piped_stdin(hyper: Hyper) -> None:
    run = subprocess.run([hyper.daemon.cli, "run", "-i", "--rm", "busybox", "cat"], input=b"hi\n",
                         capture_output=True, env=hyper.daemon.cli_env(), timeout=CLI_TIMEOUT, check=False)
    assert (run.returncode, run.stdout) == (0, b"hi\n"), run.stderr


def test_ten_megabytes_of_stdin_byte_for_byte(hyper: Hyper) -> None:
    data = os.urandom(10 << 20)
    run = subprocess.run([hyper.daemon.cli, "run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done >&2"],
                         input=data, capture_output=True, env=hyper.daemon.cli_env(), timeout=CLI_TIMEOUT * 2,
                         check=False)
    assert run.returncode == 0, run.stderr[-500:]
    assert len(run.stdout) == len(data)
    assert hashlib.sha256(run.stdout).digest() == hashlib.sha256(data).digest()
    assert run.stderr == b"done\n"


def test_tty_needs_a_terminal(hyper: Hyper) -> None:
    got = hyper("run", "-it", "--rm", "busybox", "true")
    assert (got.returncode, got.stderr) == (125, "hyper: the input device is not a TTY\n")
    assert hyper("run", "-t", "--rm", "busybox", "sh", "-c", "test -t 1 && echo terminal").stdout.strip() == "terminal"


def test_exec(hyper: Hyper, terminals: list[Terminal]) -> None:
    result = hyper("run", "-d", "--name", "target", "-e", "FROM_RUN=1", "busybox", "sleep", "600")
    assert result.returncode == 0, result.stderr
    # The container's environment, and its PID namespace: its sleep is visible, the VM's agent is not.
    got = hyper("exec", "target", "sh", "-c", "echo $FROM_RUN; pidof sleep >/dev/null && echo sleep; "
                "ls /proc | grep -c '^[0-9]'")
    assert got.stdout.split("\n")[:2] == ["1", "sleep"], got.stderr
    assert int(got.stdout.split()[2]) < 10, got.stdout  # the VM's own namespace has dozens (kernel threads)
    assert hyper("exec", "target", "sh", "-c", "exit 5").returncode == 5
    missing = hyper("exec", "target", "nosuchcommand")
    assert missing.returncode == 127 and "executable file not found" in missing.stderr
    got = hyper("exec", "-e", "A=b", "-w", "/tmp", "-u", "nobody", "target", "sh", "-c", 'echo $A $(pwd) $(id -u)')
    assert got.stdout == "b /tmp 65534\n", got.stderr
    piped = subprocess.run([hyper.daemon.cli, "exec", "-i", "target", "sh", "-c", "cat > /tmp/in; wc -c < /tmp/in"],
                           input=b"x" * 100000, capture_output=True, env=hyper.daemon.cli_env(),
                           timeout=CLI_TIMEOUT, check=False)
    assert piped.stdout.strip() == b"100000", piped.stderr
    assert hyper("exec", "-d", "target", "touch", "/tmp/detached").returncode == 0
    wait_for(lambda: hyper("exec", "target", "ls", "/tmp/detached").returncode == 0, 30, "the detached exec")
    term = Terminal(hyper, "exec", "-it", "target", "sh")
    terminals.append(term)
    term.expect(PROMPT)
    term.send(b"tty; exit 6\n")
    assert term.wait() == 6
    assert b"/dev/pts/" in term.seen
    assert hyper("stop", "-t", "0", "target").returncode == 0
    stopped = hyper("exec", "target", "true")
    assert stopped.returncode == 125 and "is not running" in stopped.stderr


def test_a_client_that_goes_away_leaves_the_container_running(hyper: Hyper) -> None:
    # As with docker: the container runs on without its client, and hyperd takes the closed
    # connection in its stride (no error logged for it).
    logged = hyper.daemon.log.stat().st_size
    client = subprocess.Popen([hyper.daemon.cli, "run", "--name", "orphaned", "busybox", "sh", "-c",
                               "while :; do echo tick; done"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=hyper.daemon.cli_env())
    assert client.stdout is not None
    try:
        assert client.stdout.read(4096).startswith(b"tick")
    finally:
        client.kill()
        client.wait()
    cid = hyper("inspect", "--format", "{{.Id}}", "orphaned").stdout.strip()
    log = hyper.daemon.root / "containers" / cid / f"{cid}-json.log"
    size = log.stat().st_size
    wait_for(lambda: log.stat().st_size > size + (256 << 10), 60, "more output after the client went away")
    assert hyper("inspect", "--format", "{{.State.Status}}", "orphaned").stdout == "running\n"
    with hyper.daemon.log.open("rb") as daemon_log:
        daemon_log.seek(logged)
        assert b"Traceback" not in daemon_log.read()
