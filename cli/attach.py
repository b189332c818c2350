"""``hyper run`` in the foreground: attach, start, copy the output live, wait for the exit status.

The attach and the wait requests go out before the start, so that not a byte of output is
missed and the exit status is not lost to a container removed as it exits (``--rm``). Ctrl-C
is turned into requests to hyperd rather than ending the client: the first stops the
container (TERM, then KILL after the daemon's grace period), the second kills it outright,
and either way the client stays to report the container's exit status. A third leaves.
"""

from __future__ import annotations

import signal
import sys
from typing import TYPE_CHECKING, Any

from cli import stdcopy
from cli.errors import HyperError

if TYPE_CHECKING:
    from types import FrameType

    from cli.client import Client


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


def run(client: Client, container: str) -> int:
    """Run a created container attached to our stdout and stderr; its exit status."""
    previous = signal.signal(signal.SIGINT, Interrupts(client, container))
    try:
        with client.attach(container) as stream, client.wait_later(container) as waiting:
            client.start(container)
            stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
            sys.stdout.flush()
            sys.stderr.flush()
            if stream.multiplexed:
                stdcopy.demux(stream, stdout, stderr)
            else:
                stdcopy.copy_raw(stream, stdout)
            return exit_status(waiting.result())
    finally:
        signal.signal(signal.SIGINT, previous)
