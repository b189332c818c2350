"""A layer blob on its way from a registry into the store, checked in the one pass that writes it.

The registry client's event loop only receives: each layer's bytes go through a bounded
pipe to a thread of that layer's own, which writes them to the staged blob, hashes them,
decompresses them, computes the diff_id and runs ``layers.validate_layer`` over the tar.
A resumed download's earlier bytes are read back from its partial file by that thread, so
the check always covers the whole layer.  ``Progress`` turns what happens into Docker's
JSON progress messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from hyperd.image import ImageError
from hyperd.image.blobs import Staged
from hyperd.image.layers import Compression, check_layer

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 1 << 20
PIPE_CAPACITY = 4 << 20
"""Bytes of a layer downloaded but not yet checked, per download."""
PROGRESS_INTERVAL = 0.1
"""Seconds between two "Downloading" messages of a layer (Docker's rate)."""


def disk_error(err: OSError, digest: str) -> ImageError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    return ImageError(f"{reason[:1].lower()}{reason[1:]} while pulling blob {digest}")


def _inspect(source: BinaryIO, compression: Compression, base: bool) -> tuple[str, int]:
    """(diff_id, size) of a layer's uncompressed tar; InvalidLayer if it is malformed or unsafe.

    ``base``: the layer is the image's bottom one (see ``validate_layer``).
    """
    plain = check_layer(source, compression, base=base)
    return plain.digest, plain.size


def inspect_blob(path: Path, compression: Compression, base: bool) -> tuple[str, int]:
    with path.open("rb") as blob:
        return _inspect(blob, compression, base)


class _Pipe(io.RawIOBase):
    """Bytes from the event loop to a worker thread, at most ``capacity`` of them waiting.

    A resumed download's first ``prefix_size`` bytes are read from its partial file instead.
    Every other byte the reader takes is first given to ``sink`` (the staged blob), in the
    reader's thread.  ``end`` is both the writer's end of data and the reader's giving up:
    the reader then sees the end of the stream once the pipe is empty, and later writes are
    dropped.
    """

    def __init__(self, prefix: Path, prefix_size: int, sink: Callable[[memoryview], object],
                 capacity: int = PIPE_CAPACITY) -> None:
        super().__init__()
        self._sink = sink
        self._prefix = prefix
        self._prefix_left = prefix_size
        self._prefix_file: BinaryIO | None = None
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._capacity = capacity
        self._ended = False
        self._changed = threading.Condition()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix_left:
            if self._prefix_file is None:
                self._prefix_file = self._prefix.open("rb")
            data = self._prefix_file.read(min(len(view), self._prefix_left))
            # A partial cut shorter under us (a restart) ends the stream: this check is being dropped.
            self._prefix_left = self._prefix_left - len(data) if data else 0
            view[: len(data)] = data
            return len(data)
        with self._changed:
            while not self._chunks and not self._ended:
                self._changed.wait()
            if not self._chunks:
                return 0
            chunk = self._chunks.popleft()
            size = min(len(view), len(chunk))
            if size < len(chunk):
                self._chunks.appendleft(chunk[size:])
            self._buffered -= size
            self._changed.notify_all()
        self._sink(chunk[:size])
        view[:size] = chunk[:size]
        return size

    def drain(self) -> None:
        """Take (and so write) everything up to the end of the stream."""
        scratch = bytearray(CHUNK)
        while self.readinto(scratch):
            pass

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
            self._chunks.append(memoryview(data))
            self._buffered += len(data)
            self._changed.notify_all()

    def end(self) -> None:
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def close(self) -> None:
        if self._prefix_file is not None:
            self._prefix_file.close()
        super().close()


class _Content:
    """A layer blob written, hashed, decompressed and validated by one worker thread as it arrives.

    The event loop only receives: one thread per layer does the rest of the work on its
    bytes, in one pass, and the pipe between them is bounded, so a slow disk or check slows
    the download rather than filling memory.  When the check fails, the thread still writes
    (and hashes) the rest, so that the caller can compare the blob with its digest first: a
    corrupt download should say so, not that its (corrupt) tar is malformed.  A failed write
    (``error``) stops everything.
    """

    def __init__(self, compression: Compression, base: bool, staged: Staged, prefix_size: int) -> None:
        self.error: OSError | None = None
        self._pipe = _Pipe(staged.path, prefix_size, staged.write)
        self._loop = asyncio.get_running_loop()
        self._result: asyncio.Future[tuple[str, int]] = self._loop.create_future()
        # When the check is dropped (a restart, a failed pull) nobody awaits it: mark its error seen.
        self._result.add_done_callback(lambda done: done.cancelled() or done.exception())
        # A thread of its own, not the default executor's: ``feed`` may take one of those to wait
        # for room in the pipe, which only this thread can make.  Never joined: ``stop`` ends it.
        threading.Thread(target=self._check, args=(compression, base), name="layer-check", daemon=True).start()

    def _check(self, compression: Compression, base: bool) -> None:
        outcome: tuple[str, int] | BaseException
        try:
            outcome = _inspect(io.BufferedReader(self._pipe, CHUNK), compression, base)
            self._pipe.drain()  # what follows the compressed stream is part of the blob too
        except OSError as err:  # the blob's file could not be written: nothing more will be
            outcome = self.error = err
        except BaseException as err:  # handed to the awaiting task, which re-raises it
            outcome = err
            try:
                self._pipe.drain()
            except OSError as disk:
                outcome = self.error = disk
        finally:
            # A reader that stopped early must not leave the download waiting for room.
            self._pipe.end()
            self._pipe.close()
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is anyone who cared
            self._loop.call_soon_threadsafe(self._settle, outcome)

    def _settle(self, outcome: tuple[str, int] | BaseException) -> None:
        if self._result.done():
            return
        if isinstance(outcome, BaseException):
            self._result.set_exception(outcome)
        else:
            self._result.set_result(outcome)

    async def feed(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if not self._pipe.offer(data):
            await asyncio.to_thread(self._pipe.put, data)

    async def finish(self) -> tuple[str, int]:
        """(diff_id, size of the uncompressed tar) once the whole blob was fed, written and checked."""
        self._pipe.end()
        return await self._result

    async def stop(self) -> None:
        """End the stream and wait until the thread has stopped writing."""
        self._pipe.end()
        with contextlib.suppress(Exception):
            await self._result


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
