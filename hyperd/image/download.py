"""A layer blob on its way from a registry into the store, checked as it is written.

The registry client's event loop only receives: each layer's bytes go through a bounded
pipe to a thread that writes them to the staged blob and hashes them, and from it through
another to a thread that decompresses them, computes the diff_id and runs
``layers.validate_layer`` over the tar.  A resumed download's earlier bytes are read back
from its partial file by the checking thread, so the check always covers the whole layer.
``Progress`` turns what happens into Docker's JSON progress messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from hyperd.image import ImageError
from hyperd.image.blobs import Staged
from hyperd.image.layers import Compression, Readable, check_layer

CHUNK = 1 << 18
"""Bytes read off a blob's response at a time: small enough to stay in the CPU's cache from
one step of the pipeline to the next, big enough for hashlib and zlib to work outside the GIL."""
PIPE_CAPACITY = 2 << 20
"""Bytes waiting in one pipe: a download holds at most twice that, received but not yet checked."""
PROGRESS_INTERVAL = 0.1
"""Seconds between two "Downloading" messages of a layer (Docker's rate)."""


def disk_error(err: OSError, digest: str) -> ImageError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    return ImageError(f"{reason[:1].lower()}{reason[1:]} while pulling blob {digest}")


def _inspect(source: Readable, compression: Compression, base: bool) -> tuple[str, int]:
    """(diff_id, size) of a layer's uncompressed tar; InvalidLayer if it is malformed or unsafe.

    ``base``: the layer is the image's bottom one (see ``validate_layer``).
    """
    plain = check_layer(source, compression, base=base)
    return plain.digest, plain.size


def inspect_blob(path: Path, compression: Compression, base: bool) -> tuple[str, int]:
    with path.open("rb") as blob:
        return _inspect(blob, compression, base)


class _Pipe:
    """Chunks handed from one thread to another, at most ``capacity`` bytes of them waiting.

    ``end`` is both the writer's end of data and the reader's giving up: the reader then sees
    the end of the stream once the pipe is empty, and later chunks are dropped.
    """

    def __init__(self, capacity: int = PIPE_CAPACITY) -> None:
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._capacity = capacity
        self._ended = False
        self._changed = threading.Condition()

    def read(self, size: int = -1) -> bytes:
        """The next chunk, or its first ``size`` bytes, once there is one; b"" at the end."""
        with self._changed:
            while not self._chunks and not self._ended:
                self._changed.wait()
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            if 0 <= size < len(chunk):
                self._chunks.appendleft(chunk[size:])
                chunk = chunk[:size]
            self._buffered -= len(chunk)
            self._changed.notify_all()
        return chunk

    def offer(self, data: bytes) -> bool:
        """Hand ``data`` over unless the pipe is full; False if it is."""
        with self._changed:
            if self._buffered >= self._capacity and not self._ended:
                return False
            self._append(data)
            return True

    def put(self, data: bytes) -> None:
        """Hand ``data`` over, waiting for room (in a thread: this blocks)."""
        with self._changed:
            while self._buffered >= self._capacity and not self._ended:
                self._changed.wait()
            self._append(data)

    def _append(self, data: bytes) -> None:
        if not self._ended:
            self._chunks.append(data)
            self._buffered += len(data)
            self._changed.notify_all()

    def end(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()


class _Resumed:
    """A download's bytes from its first: those an earlier pull left in the partial file, then the pipe's."""

    def __init__(self, prefix: Path, prefix_size: int, rest: _Pipe) -> None:
        self._prefix = prefix
        self._prefix_left = prefix_size
        self._file: BinaryIO | None = None
        self._rest: _Pipe | None = rest

    def read(self, size: int = -1) -> bytes:
        if not size:
            return b""
        if self._prefix_left:
            if self._file is None:
                self._file = self._prefix.open("rb")
            data = self._file.read(min(CHUNK if size < 0 else size, self._prefix_left))
            self._prefix_left -= len(data)
            if not data:
                # A partial cut shorter under us (a restart) ends the stream: this check is being dropped.
                self._prefix_left, self._rest = 0, None
            return data
        return self._rest.read(size) if self._rest is not None else b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Content:
    """A layer blob written and hashed by one thread, decompressed and validated by another, as it arrives.

    The event loop only receives; the two threads overlap (hashlib, zlib and file writes run
    outside the GIL), and the pipes between them are bounded, so a slow disk or check slows
    the download rather than filling memory.  The writer takes every byte whatever the check
    says, so that the caller can compare the blob with its digest first: a corrupt download
    should say so, not that its (corrupt) tar is malformed.  A failed write (``error``) stops
    everything.
    """

    def __init__(self, compression: Compression, base: bool, staged: Staged, prefix_size: int) -> None:
        self.error: OSError | None = None
        self._staged = staged
        self._received = _Pipe()
        self._checking = _Pipe()
        self._loop = asyncio.get_running_loop()
        self._written: asyncio.Future[None] = self._loop.create_future()
        self._checked: asyncio.Future[tuple[str, int]] = self._loop.create_future()
        for future in (self._written, self._checked):
            # When the content is dropped (a restart, a failed pull) nobody awaits it: mark its error seen.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Threads of their own, not the default executor's: ``feed`` may take one of those to wait
        # for room in a pipe, which only these threads can make.  Never joined: ``stop`` ends them.
        threading.Thread(target=self._write, name="layer-write", daemon=True).start()
        source = _Resumed(staged.path, prefix_size, self._checking)
        threading.Thread(target=self._check, args=(source, compression, base), name="layer-check",
                         daemon=True).start()

    def _write(self) -> None:
        outcome: OSError | None = None
        try:
            while chunk := self._received.read():
                self._staged.write(chunk)
                self._checking.put(chunk)
        except OSError as err:  # the blob's file could not be written: nothing more will be
            outcome = self.error = err
        finally:
            # A writer that stopped early must not leave the download waiting for room.
            self._received.end()
            self._checking.end()
        self._settle(self._written, outcome)

    def _check(self, source: _Resumed, compression: Compression, base: bool) -> None:
        outcome: tuple[str, int] | BaseException
        try:
            outcome = _inspect(source, compression, base)
        except BaseException as err:  # handed to the awaiting task, which re-raises it
            outcome = err
        finally:
            # A checker that stopped early must not leave the writer waiting for room.
            self._checking.end()
            source.close()
        self._settle(self._checked, outcome)

    def _settle(self, future: asyncio.Future[Any], outcome: object) -> None:
        def settle() -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is anyone who cared
            self._loop.call_soon_threadsafe(settle)

    async def feed(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if not self._received.offer(data):
            await asyncio.to_thread(self._received.put, data)

    async def finish(self) -> tuple[str, int]:
        """(diff_id, size of the uncompressed tar) once the whole blob was fed, written and checked."""
        self._received.end()
        await self._written
        return await self._checked

    async def stop(self) -> None:
        """End the stream and wait until nothing more is written; the check is dropped."""
        self._received.end()
        self._checking.end()
        with contextlib.suppress(Exception):
            await self._written


class Progress:
    """Docker's JSON progress messages, given to a callback that must never disturb the pull."""

    def __init__(self, callback: Callable[[dict[str, Any]], None] | None) -> None:
        self._callback = callback
        self._last: dict[str, float] = {}

    def __call__(self, status: str, id: str = "", **extra: Any) -> None:
        if self._callback is None:
            return
        message: dict[str, Any] = {"status": status, **({"id": id} if id else {}), **extra}
        # A broken consumer (a client that went away) is its own problem, not the pull's.
        with contextlib.suppress(Exception):
            self._callback(message)

    def downloading(self, id: str, current: int, total: int) -> None:
        now = time.monotonic()
        if current < total and now - self._last.get(id, -math.inf) < PROGRESS_INTERVAL:
            return
        self._last[id] = now
        self("Downloading", id, progressDetail={"current": current, "total": total})


class Download:
    """A layer blob on its way into the store: its partial file and the check of its content."""

    def __init__(self, staged: Staged, digest: str, size: int, compression: Compression, base: bool,
                 progress: Progress) -> None:
        self.staged = staged
        self.digest, self.size = digest, size
        self.id = self.digest[7:19]
        self.received = staged.size      # bytes fed to the checker, which writes them
        self.resumed = staged.size > 0   # holds bytes from an earlier pull
        self.checked: tuple[str, int] | None = None   # (diff_id, uncompressed size) once settled
        self.refused: Exception | None = None         # why the content was refused, once settled
        self._compression = compression
        self._base = base
        self._progress = progress
        self.content = _Content(self._compression, base, staged, staged.size)

    async def write(self, data: bytes) -> None:
        try:
            await self.content.feed(data)
        except OSError as err:
            await self._disk_failed(err)
        self.received += len(data)
        self._progress.downloading(self.id, self.received, self.size)

    async def settle(self) -> None:
        """Wait until every byte received is written and checked; ``staged.digest`` is then the blob's."""
        try:
            self.checked = await self.content.finish()
        except OSError as err:
            await self._disk_failed(err)
        except Exception as err:  # the checker's verdict: reported once the digest is known to match
            self.refused = err

    async def _disk_failed(self, err: OSError) -> NoReturn:
        # What was written is in doubt: nothing of it may be resumed.
        await self.content.stop()
        self.staged.discard()
        raise disk_error(err, self.digest) from err

    async def restart(self) -> None:
        """Drop what was downloaded: the blob comes again from its first byte."""
        await self.content.stop()
        try:
            self.staged.restart()
        except OSError as err:
            self.staged.discard()
            raise disk_error(err, self.digest) from err
        self.received = 0
        self.resumed = False
        self.checked = self.refused = None
        self.content = _Content(self._compression, self._base, self.staged, 0)

    async def close(self) -> None:
        await self.content.stop()
        self.staged.release()


__all__ = ["CHUNK", "Download", "Progress", "disk_error", "inspect_blob"]
