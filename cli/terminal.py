"""The user's terminal during an interactive session: raw mode, its size, and its resizes."""

from __future__ import annotations

import contextlib
import os
import signal
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """Raw mode (keys go to the container as typed, Ctrl-C included), restored however we leave."""
    saved = termios.tcgetattr(fd)
    # TCSANOW, not setraw's default TCSAFLUSH: keys typed while the command started are kept
    # and sent, as docker's client keeps them, not discarded.
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def size(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal on ``fd``."""
    columns, rows = os.get_terminal_size(fd)
    return rows, columns


@contextlib.contextmanager
def on_resize(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` (on a thread of its own: it may block on hyperd) after every SIGWINCH."""
    import threading

    def handler(_signum: int, _frame: Any) -> None:
        threading.Thread(target=callback, name="hyper-resize", daemon=True).start()

    previous = signal.signal(signal.SIGWINCH, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def parse_keys(spec: str) -> bytes:
    """Docker's ``--detach-keys``: ``ctrl-p,ctrl-q``, ``a``, ``ctrl-@``...; empty: no detach."""
    keys = bytearray()
    for key in filter(None, (k.strip() for k in spec.split(","))):
        if len(key) == 1:
            keys.append(ord(key))
        elif key.lower().startswith("ctrl-") and len(key) == 6:
            char = key[5].lower()
            codes = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}
            if "a" <= char <= "z":
                keys.append(ord(char) - ord("a") + 1)
            elif char in codes:
                keys.append(codes[char])
            else:
                raise ValueError(f"invalid detach key {key!r}")
        else:
            raise ValueError(f"invalid detach key {key!r}")
    return bytes(keys)
