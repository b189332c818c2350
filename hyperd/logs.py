"""The json-file log driver: each line a container writes, with its stream and time.

Same format as docker's json-file driver (``{"log": ..., "stream": ..., "time": ...}``
per line), so existing tooling can read it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

STREAMS = {1: "stdout", 2: "stderr"}


@dataclass(frozen=True)
class Entry:
    stream: int
    data: bytes
    time: str


def timestamp() -> str:
    now = time.time_ns()
    return datetime.fromtimestamp(now // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{now % 10**9:09d}Z"


class JsonFileLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: each chunk is one write(2) that lands or fails (ENOSPC) as a whole,
        # leaving nothing half-buffered to fail again later.
        self._file = path.open("ab", buffering=0)

    def write(self, stream: int, data: bytes) -> None:
        """Append ``data`` as one entry per line (a trailing partial line is an entry too)."""
        self._file.write(encode(stream, data, timestamp()))

    def close(self) -> None:
        self._file.close()


def encode(stream: int, data: bytes, now: str) -> bytes:
    """``data`` as json-file entries, one per line, each with its newline, and a trailing partial
    line as an entry of its own.

    The whole chunk is escaped in one call and cut at its escaped newlines, so that the cost
    does not grow with the number of lines: a pod printing short lines is written as fast as
    one printing long ones.  An escaped backslash is set aside first (as a NUL, which JSON
    escaping never leaves raw), so that a backslash followed by ``n`` in the output is not
    taken for a newline.
    """
    escaped = json.dumps(data.decode(errors="replace"), ensure_ascii=False)[1:-1]
    # Each pass is skipped when a fast scan finds nothing for it to do (most chunks).
    backslashes = "\\\\" in escaped
    if backslashes:
        escaped = escaped.replace("\\\\", "\0")
    lines = escaped.split("\\n") if "\\n" in escaped else [escaped]
    partial = lines.pop()
    tail = f'","stream":"{STREAMS[stream]}","time":"{now}"}}\n'
    entries = "".join((f'{{"log":"', f'\\n{tail}{{"log":"'.join(lines), f"\\n{tail}")) if lines else ""
    if partial:
        entries += f'{{"log":"{partial}{tail}'
    return (entries.replace("\0", "\\\\") if backslashes else entries).encode()


def read(path: Path, limit: int | None = None) -> Iterator[Entry]:
    """The entries in the first ``limit`` bytes of the log (all of it by default)."""
    streams = {name: number for number, name in STREAMS.items()}
    try:
        with path.open("rb") as f:
            for line in f.read(limit if limit is not None else -1).splitlines():
                try:
                    record = json.loads(line)
                    yield Entry(streams[record["stream"]], record["log"].encode(), record["time"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
    except FileNotFoundError:
        return
