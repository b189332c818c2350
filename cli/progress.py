"""Docker's JSON progress messages (a pull's answer), shown as docker shows them.

On a terminal each layer keeps one line, redrawn in place with its progress bar; otherwise
only status changes are printed, one per line, so logs stay readable.  A message carrying
``error`` ends the stream with that error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import IO, Any

from cli import output
from cli.errors import HyperError

BAR = 50
"""Characters inside a progress bar's brackets, as docker draws it."""
QUIET_STATUSES = {"Downloading", "Extracting", "Waiting", "Verifying Checksum"}
"""Statuses that only move a bar: not worth a line each when output is not a terminal."""


def bar(current: int, total: int) -> str:
    """``[=====>      ]  1.2MB/4.5MB``."""
    if total <= 0:
        return output.size(current)
    filled = min(BAR, BAR * current // total)
    arrow = ("=" * (filled - 1) + ">") if 0 < filled < BAR else "=" * filled
    return f"[{arrow.ljust(BAR)}]  {output.size(current)}/{output.size(total)}"


def messages(lines: Iterable[bytes]) -> Iterable[dict[str, Any]]:
    """Decoded messages; a line that is not a JSON object is a daemon bug worth saying."""
    for line in lines:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as err:
            raise HyperError(f"hyperd sent a malformed progress message: {err}") from err
        if not isinstance(message, dict):
            raise HyperError("hyperd sent a malformed progress message")
        detail = message.get("errorDetail")
        error = message.get("error") or (detail.get("message") if isinstance(detail, dict) else None)
        if error:
            raise HyperError(str(error))
        yield message


class Display:
    """Writes messages to ``out``; ``terminal`` redraws one line per id in place."""

    def __init__(self, out: IO[str], terminal: bool) -> None:
        self.out = out
        self.terminal = terminal
        self.ids: list[str] = []

    def show(self, message: dict[str, Any]) -> None:
        status = str(message.get("status") or "")
        ident = str(message.get("id") or "")
        detail = message.get("progressDetail")
        text = f"{ident}: {status}" if ident else status
        if isinstance(detail, dict) and isinstance(detail.get("current"), int):
            total = detail.get("total")
            text += " " + bar(detail["current"], total if isinstance(total, int) else 0)
        if not self.terminal:
            if status not in QUIET_STATUSES:
                self.out.write(text + "\n")
        elif ident and ident in self.ids:
            # Up to the layer's line, rewrite it, back down: docker's in-place redraw.
            up = len(self.ids) - self.ids.index(ident)
            self.out.write(f"\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r")
        else:
            if ident:
                self.ids.append(ident)
            else:
                # A line of its own moves the layers' lines up out of reach: start a new block, as docker does.
                self.ids.clear()
            self.out.write(text + "\n")
        self.out.flush()


def show(lines: Iterable[bytes], out: IO[str]) -> list[dict[str, Any]]:
    """Display a progress stream to its end; returns the messages without a layer id (the summary)."""
    display = Display(out, out.isatty())
    summary = []
    for message in messages(lines):
        display.show(message)
        if not message.get("id"):
            summary.append(message)
    return summary
