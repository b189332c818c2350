"""The client's raw mode, on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import termios

from cli import terminal


def test_raw_mode_keeps_the_keys_typed_before_it() -> None:
    # `hyper attach` typed into before the client is up: the keys reach the container, as with docker.
    master, slave = pty.openpty()
    try:
        os.write(master, b"echo typed early\n")
        assert select.select([slave], [], [], 5)[0]  # the line is in the terminal's input queue
        with terminal.raw(slave):
            assert not termios.tcgetattr(slave)[3] & termios.ICANON
            ready, _, _ = select.select([slave], [], [], 5)
            assert ready and os.read(slave, 100) == b"echo typed early\n"
        assert termios.tcgetattr(slave)[3] & termios.ICANON  # restored
    finally:
        os.close(master)
        os.close(slave)
