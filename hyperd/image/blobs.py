"""Content-addressed blobs on disk: ``<root>/sha256/<hex>``, written crash-safely.

A blob is written to a temporary file in its final directory (``.tmp-<pid>-<random>``),
hashed as it grows, fsynced, checked against the digest it must have and hard-linked
into place: ``link`` fails rather than overwrite, so a writer knows whether it created
the blob.  A crash leaves only temporaries, which ``remove_stale`` clears once their
process is gone.

Downloads write to ``.partial-<hex>`` instead, named by the digest they must reach and
kept when a pull fails, so that the next pull resumes it; its content is rehashed when
resumed and only the final digest check decides whether it is the blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hyperd.image import CorruptBlob
from hyperd.image.disk import fsync_dir

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""A digest hyper accepts: sha256, lower-case hex."""
_CHUNK = 1 << 20
PARTIAL = ".partial-"


class Staged:
    """A blob being written: a file next to its final place, hashed as it grows.

    A temporary goes when it is released uncommitted; a partial (``keep``) stays to be resumed.
    """

    def __init__(self, path: Path, file: BinaryIO, *, keep: bool = False) -> None:
        self.path = path
        self.keep = keep
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._file.flush()

    def restart(self) -> None:
        """Drop everything written so far."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.size = 0

    def finish(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop writing: a partial with content stays to be resumed, anything else goes."""
        if self.keep and self.size:
            self._file.close()
        else:
            self.discard()

    def _rehash(self, limit: int) -> None:
        """Take the file's content as written so far; emptied if it is longer than ``limit``."""
        self._file.seek(0)
        while chunk := self._file.read(_CHUNK):
            self._hash.update(chunk)
            self.size += len(chunk)
        if self.size > limit:
            self.restart()

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


class Blobs:
    """Content-addressed files under ``blobs/sha256/<hex>``."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)
        for partial in self.dir.glob(f"{PARTIAL}*"):
            # Left by a pull that lost a race to another one: the blob is here, the partial is garbage.
            if (self.dir / partial.name.removeprefix(PARTIAL)).is_file():
                partial.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        # Digests will come from manifests and URLs: never let one name another path.
        if not DIGEST.fullmatch(digest):
            raise CorruptBlob(digest, "not a sha256 digest")
        return self.dir / digest[7:]

    def __contains__(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        """A small blob's content (config, manifest), verified against its digest."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise CorruptBlob(digest, "it is missing") from None
        if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
            raise CorruptBlob(digest, "its content does not match its digest")
        return data

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staged]:
        """A temporary blob, removed on exit unless committed."""
        staged = self._temporary()
        try:
            yield staged
        finally:
            staged.discard()

    def _temporary(self) -> Staged:
        path = self.dir / f".tmp-{os.getpid()}-{secrets.token_hex(8)}"
        return Staged(path, open(path, "xb"))  # closed by commit(), release() or discard()

    def partial(self, digest: str, size: int) -> Staged:
        """The download of ``digest`` (``size`` bytes), resumed from what an earlier pull left.

        The existing bytes are rehashed; a partial longer than the blob starts again, and other
        damage shows as a digest mismatch once complete.  The file is locked while written: a
        concurrent pull of the same blob gets a temporary of its own instead.  The caller ends
        with ``commit``, ``release`` (keeping the partial) or ``discard``.
        """
        path = self.dir / f"{PARTIAL}{self.path(digest).name}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._temporary()
        staged = Staged(path, open(fd, "r+b"), keep=True)  # noqa: SIM115 - the caller ends it
        try:
            staged._rehash(size)
        except BaseException:
            staged.release()
            raise
        return staged

    def prune_partials(self) -> int:
        """Remove the partial downloads no pull is writing (one is locked while written); the bytes freed."""
        freed = 0
        for entry in self.dir.iterdir():
            if not entry.name.startswith(PARTIAL):
                continue
            try:
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a pull is resuming it right now
            else:
                freed += os.fstat(fd).st_size
                entry.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return freed

    def commit(self, staged: Staged, expected: str | None = None) -> bool:
        """Move a staged blob into place; True if it was new, False if the store had it already."""
        staged.finish()
        digest = staged.digest
        if expected is not None and digest != expected:
            raise CorruptBlob(expected, f"received content hashes to {digest}")
        try:
            os.link(staged.path, self.path(digest))
        except FileExistsError:
            return False
        finally:
            staged.path.unlink(missing_ok=True)
        fsync_dir(self.dir)
        return True

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store bytes; their digest and whether the blob is new."""
        with self.staging() as staged:
            staged.write(data)
            return staged.digest, self.commit(staged)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)



def remove_stale(directory: Path, prefix: str) -> None:
    """Remove temporaries named ``<prefix><pid>-...`` whose process is gone (a crash mid-write)."""
    for entry in directory.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].partition("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["DIGEST", "Blobs", "Staged", "remove_stale"]
