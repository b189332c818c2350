"""Docker's stdcopy framing: demultiplexing a container's stdout and stderr from one stream.

Each frame is an 8-byte header followed by its payload::

    stream u8     0 stdin, 1 stdout, 2 stderr
    pad    3 bytes, zero
    size   u32    payload length, big-endian

A TTY container's stream is not framed at all; :func:`copy_raw` passes it through.
"""

from __future__ import annotations

import struct
from typing import IO, Protocol

from cli.errors import StreamError

HEADER = struct.Struct(">BxxxL")
STDIN, STDOUT, STDERR = 0, 1, 2
CHUNK = 64 << 10
"""Most bytes held at once: a frame may be large, and is copied out piece by piece."""


class Source(Protocol):
    def read(self, size: int) -> bytes: ...

    def read1(self, size: int) -> bytes: ...


def _read_exactly(src: Source, size: int) -> bytes:
    """``size`` bytes, or fewer only if the stream ends first."""
    data = src.read(size)
    while 0 < len(data) < size:
        more = src.read(size - len(data))
        if not more:
            break
        data += more
    return data


def demux(src: Source, stdout: IO[bytes], stderr: IO[bytes]) -> None:
    """Copy each frame to ``stdout`` or ``stderr`` as it arrives, until the stream ends.

    Every write is flushed so output stays live and the two streams keep their relative order.
    """
    while True:
        header = _read_exactly(src, HEADER.size)
        if not header:
            return
        if len(header) < HEADER.size:
            raise StreamError("output stream ended inside a frame header")
        stream, size = HEADER.unpack(header)
        if stream not in (STDIN, STDOUT, STDERR):
            raise StreamError(f"output stream has a frame for unknown stream {stream}")
        # Docker echoes stdin frames on stdout; do the same.
        out = stderr if stream == STDERR else stdout
        while size:
            data = _read_exactly(src, min(size, CHUNK))
            if not data:
                raise StreamError("output stream ended inside a frame")
            out.write(data)
            size -= len(data)
        out.flush()


def copy_raw(src: Source, out: IO[bytes]) -> None:
    """Copy an unframed (TTY) stream to ``out`` as it arrives."""
    while data := src.read1(CHUNK):
        out.write(data)
        out.flush()
