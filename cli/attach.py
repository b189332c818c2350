"""Attached sessions: ``hyper run`` in the foreground, ``attach`` and ``exec``.

The attach and the wait requests go out before the start, so that not a byte of output is
missed and the exit status is not lost to a container removed as it exits (``--rm``).
With ``-i`` our stdin goes to the process as the body of the attach request, sent while the
output streams back; its end is the process's EOF. With ``-t`` our terminal is put in raw
mode, its size follows the user's window, and the detach keys (Ctrl-P Ctrl-Q) leave the
process running. Without a terminal, Ctrl-C is turned into requests to hyperd rather than
ending the client: the first stops the container (TERM, then KILL after the daemon's grace
period), the second kills it outright, and either way the client stays to report the
container's exit status. A third leaves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from cli import stdcopy
from cli.client import Duplex
from cli.errors import HyperError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from cli.client import Client, Stream


class Interrupts:
    """SIGINT handler escalating stop, kill, give up. Requests run on a thread: the main
    thread is busy copying output, and must keep doing so while the container shuts down."""

    def __init__(self, client: Client, container: str) -> None:
        self.client = client
        self.container = container
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self._background(self.client.stop, self.container)
        elif self.count == 2:
            self._background(self.client.kill, self.container, "SIGKILL")
        else:
            raise KeyboardInterrupt

    @staticmethod
    def _background(request: Any, *args: Any) -> None:
        import threading

        def send() -> None:
            try:
                request(*args)
            except HyperError as err:
                print(f"hyper: {err.message}", file=sys.stderr, flush=True)

        threading.Thread(target=send, name="hyper-interrupt", daemon=True).start()


def exit_status(result: Any) -> int:
    """The container's exit status from a wait answer; a reported error is a HyperError."""
    if not isinstance(result, dict):
        raise HyperError(f"hyperd sent an unexpected wait answer: {result!r}")
    error = result.get("Error")
    if isinstance(error, dict) and error.get("Message"):
        raise HyperError(str(error["Message"]))
    status = result.get("StatusCode")
    if not isinstance(status, int) or isinstance(status, bool):
        raise HyperError(f"hyperd sent no exit status: {result!r}")
    return status


DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def run(client: Client, container: str, interactive: bool = False, tty: bool = False,
        detach_keys: bytes = b"") -> int:
    """Start a created or exited container attached to our stdio; its exit status (0 after a detach)."""
    check_terminal(interactive, tty)
    # With a terminal, Ctrl-C is a key for the container; without one, it stops the container.
    previous = None if tty else signal.signal(signal.SIGINT, Interrupts(client, container))
    try:
        with client.attach(container, stdin=interactive) as stream, \
                client.wait_later(container, next_exit=True) as waiting:
            client.start(container)
            if session(stream, interactive, tty, lambda rows, cols: client.resize(container, rows, cols),
                       detach_keys):
                return 0
            return exit_status(waiting.result())
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def check_terminal(interactive: bool, tty: bool) -> None:
    if interactive and tty and not _is_terminal(_stdin()):
        raise HyperError("the input device is not a TTY")


def _stdin() -> int:
    """Our stdin's descriptor; -1 when it has none (a test harness's stand-in)."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return -1


def _is_terminal(fd: int) -> bool:
    return fd >= 0 and os.isatty(fd)


def session(stream: Stream, interactive: bool, tty: bool, resize: Callable[[int, int], None],
            detach_keys: bytes) -> bool:
    """Copy the process's output to ours and, when ``interactive``, our stdin to it, until its
    output ends or the detach keys are typed; True after a detach."""
    from cli import terminal

    fd = _stdin()
    term = tty and _is_terminal(fd)
    detached = threading.Event()
    if interactive:
        threading.Thread(target=_pump, args=(stream, fd, detach_keys if term else b"", detached),
                         name="hyper-stdin", daemon=True).start()
    with contextlib.ExitStack() as stack:
        if term:
            stack.enter_context(terminal.raw(fd))

            def send_size() -> None:
                with contextlib.suppress(HyperError, OSError):
                    resize(*terminal.size(fd))

            stack.enter_context(terminal.on_resize(send_size))
            send_size()
        stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            if stream.multiplexed:
                stdcopy.demux(stream, stdout, stderr)
            else:
                stdcopy.copy_raw(stream, stdout)
        except HyperError:
            if not detached.is_set():
                raise
    return detached.is_set()


def _pump(stream: Stream, fd: int, detach_keys: bytes, detached: threading.Event) -> None:
    """Our stdin to the process, until its end (then the process reads EOF) or the detach keys."""
    assert isinstance(stream, Duplex)
    held = b""
    try:
        while data := os.read(fd, 1 << 16):
            if detach_keys:
                data = held + data
                found = data.find(detach_keys)
                if found >= 0:
                    stream.send(data[:found])
                    detached.set()
                    stream.abandon()
                    return
                # Hold back a tail that may be the start of the sequence, until the next key says.
                keep = next((n for n in range(min(len(detach_keys) - 1, len(data)), 0, -1)
                             if data.endswith(detach_keys[:n])), 0)
                data, held = data[:len(data) - keep], data[len(data) - keep:]
            stream.send(data)
        stream.send(held)
        stream.end_input()
    except (HyperError, OSError):
        return  # the output side reports what went wrong
