"""Apply OCI layer tarballs onto a directory, never writing outside it.

A layer is a tar changeset: regular files, directories, symlinks, hard links, device
nodes and fifos with numeric ownership, modes, mtimes and ``SCHILY.xattr.*`` PAX
headers, plus whiteouts: ``.wh.NAME`` deletes NAME coming from lower layers and
``.wh..wh..opq`` empties its directory of lower content.  ``tarfile.extractall`` knows
none of that and resolves paths through symlinks, so every entry is applied here by hand.

Safety does not rely on checking paths and then using them.  Names are normalized
lexically (absolute names and ``..`` leaving the root are refused); the parent directory
is then reached one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` from a
descriptor on the target, so a symlink anywhere on the way, from this layer or a lower
one (``etc -> /`` then ``etc/passwd``), is refused instead of followed.  Everything after
that is relative to the parent's descriptor and never follows the final component, so
the kernel never resolves a name outside the target whatever the layer holds.  Docker
follows in-root symlinks inside a chroot instead; layers produced by diffing a
filesystem never contain such paths, so refusing them costs nothing in practice.

Both functions stream: member data is copied in chunks and the ``TarInfo`` objects read
so far are dropped, so memory does not grow with the layer (only a set of its paths does).
"""

from __future__ import annotations

import bz2
import contextlib
import enum
import errno
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

import zstandard

from hyperd.image import InvalidLayer

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs) found in very old layers; never image content.
AUFS_META = ".wh..wh."

_COPY_CHUNK = 1 << 20
# Parent directories are walked from a stack of open descriptors shared by consecutive
# entries; deeper levels are opened transiently so a pathological depth cannot exhaust fds.
_CACHED_DEPTH = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_NS = (1 << 63) - 1
# Errors of a malformed or truncated archive, as raised by tarfile and the decompressors.
MALFORMED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, zstandard.ZstdError)
# Compressed bytes handed to the zstd decompressor at a time.  A zstd block may expand 32768-fold
# (an RLE block), so this bounds what one call can produce to 32 MiB whatever the layer holds.
_ZSTD_INPUT = 1 << 10


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class DigestReader(io.RawIOBase):
    """Reads ``source`` through, hashing every byte (sha256) and passing it to ``copy``.

    Wrap it in ``io.BufferedReader`` to hand it to tarfile; call ``drain`` afterwards so
    the digest covers what tarfile left unread (the end-of-archive padding).
    """

    def __init__(self, source: Readable, copy: Callable[[bytes], object] | None = None) -> None:
        super().__init__()
        self._source = source
        self._copy = copy
        self._hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._source.read(len(view))
        view[: len(data)] = data
        self._hash.update(data)
        self.size += len(data)
        if self._copy is not None and data:
            self._copy(data)
        return len(data)

    def drain(self) -> None:
        buffer = bytearray(_COPY_CHUNK)
        while self.readinto(buffer):
            pass

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


class _Prefixed(io.RawIOBase):
    """``head`` (already read off ``rest``) followed by the rest of the stream."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            data, self._head = self._head[: len(view)], self._head[len(view):]
        else:
            data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


class Compression(enum.Enum):
    """How a layer stream is compressed, told by its magic number."""

    NONE = b""
    GZIP = b"\x1f\x8b"
    BZIP2 = b"BZh"
    XZ = b"\xfd7zXZ\x00"
    ZSTD = b"\x28\xb5\x2f\xfd"

    @classmethod
    def sniff(cls, stream: Readable) -> tuple[Compression, BinaryIO]:
        """The compression of ``stream``, and the stream itself still whole."""
        head = b""
        while len(head) < 6 and (more := stream.read(6 - len(head))):
            head += more
        whole = io.BufferedReader(_Prefixed(head, stream), _COPY_CHUNK)
        for kind in (cls.GZIP, cls.BZIP2, cls.XZ, cls.ZSTD):
            if head.startswith(kind.value):
                return kind, whole
        return cls.NONE, whole

    def open(self, stream: Readable) -> Readable:
        """The uncompressed content of ``stream``."""
        if self is Compression.GZIP:
            return _Gzip(stream)
        # bz2 and lzma only ever call read(), whatever file protocol their stubs ask for.
        if self is Compression.BZIP2:
            return bz2.BZ2File(cast(BinaryIO, stream))
        if self is Compression.XZ:
            return lzma.LZMAFile(cast(BinaryIO, stream))
        if self is Compression.ZSTD:
            return io.BufferedReader(_Zstd(stream), _COPY_CHUNK)
        return stream


class _Gzip(io.RawIOBase):
    """gzip decompression of one or more members, refusing a truncated one.

    ``gzip.GzipFile`` reads its input 8 KiB at a time, with a Python call per piece for the
    CRC; this drives zlib (which checks the CRC itself) over 1 MiB reads, which is most of
    what a pull's checker thread spends on a gzip layer.  ``read`` hands out zlib's output
    as it is, without a copy.  Output per call is bounded, so a gzip bomb costs memory in
    chunks, never at once.
    """

    def __init__(self, source: Readable) -> None:
        super().__init__()
        self._source = source
        self._member = zlib.decompressobj(wbits=31)
        self._started = False                 # the current member has had input
        self._pending = b""                   # compressed bytes not yet given to zlib

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        plain = self.read(len(view))
        view[: len(plain)] = plain
        return len(plain)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return self.readall()
        if not size:
            return b""  # zlib reads a max_length of 0 as no limit at all
        while True:
            if not self._pending:
                self._pending = self._source.read(_COPY_CHUNK)
                if not self._pending:
                    if self._started and not self._member.eof:
                        raise EOFError("gzip stream ends inside a member")
                    return b""
            if self._member.eof:
                # The next member: concatenated gzip is valid, and some tools write it.
                self._member, self._started = zlib.decompressobj(wbits=31), False
            self._started = True
            plain = self._member.decompress(self._pending, size)
            self._pending = self._member.unconsumed_tail or self._member.unused_data
            if plain:
                return plain


class _Zstd(io.RawIOBase):
    """zstd decompression of a stream of one or more frames, refusing a truncated one.

    zstandard's ``stream_reader`` returns a short result instead of failing when its input
    ends inside a frame, so this reader drives a ``decompressobj`` per frame itself.
    """

    def __init__(self, source: Readable) -> None:
        super().__init__()
        self._source = source
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._started = False                 # the current frame has had input
        self._pending = memoryview(b"")       # compressed bytes not yet given to the decompressor
        self._output: deque[memoryview] = deque()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        while not self._output:
            if not self._pending:
                self._pending = memoryview(self._source.read(_COPY_CHUNK))
                if not self._pending:
                    if self._started:
                        raise EOFError("zstd stream ends inside a frame")
                    return 0
            piece, self._pending = self._pending[:_ZSTD_INPUT], self._pending[_ZSTD_INPUT:]
            self._started = True
            if plain := self._frame.decompress(piece):
                self._output.append(memoryview(plain))
            if self._frame.eof:
                # The next frame: a zstd stream may concatenate any number of them.
                self._pending = memoryview(self._frame.unused_data + self._pending)
                self._frame, self._started = self._decompressor.decompressobj(), False
        data = self._output.popleft()
        size = min(len(view), len(data))
        view[:size] = data[:size]
        if size < len(data):
            self._output.appendleft(data[size:])
        return size


def check_layer(stream: Readable, compression: Compression, *, base: bool,
                copy: Callable[[bytes], object] | None = None) -> DigestReader:
    """Read a layer to its very end, its tar validated (``validate_layer``) on the way.

    The returned reader holds the uncompressed tar's digest (the diff_id, which covers what
    follows the end-of-archive marker too) and size; ``copy`` gets the uncompressed bytes.
    A tar or compression that is malformed is InvalidLayer, like an unsafe entry.
    """
    try:
        plain = DigestReader(compression.open(stream), copy=copy)
        validate_layer(io.BufferedReader(plain, _COPY_CHUNK), base=base)
        plain.drain()
    except MALFORMED as err:
        raise InvalidLayer(f"not a valid tar archive: {err}") from err
    return plain


def decompress(stream: Readable) -> Readable:
    """The tar inside ``stream``: plain, gzip, bzip2, xz or zstd."""
    kind, whole = Compression.sniff(stream)
    return kind.open(whole)


class Kind(enum.Enum):
    FILE = "file"
    DIR = "directory"
    SYMLINK = "symlink"
    LINK = "hard link"
    CHAR = "character device"
    BLOCK = "block device"
    FIFO = "fifo"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque whiteout"


@dataclass(frozen=True)
class Entry:
    """One tar member, classified and with its path normalized.

    For a whiteout ``parts`` is the path it hides; for an opaque marker, its directory.
    """

    member: tarfile.TarInfo
    kind: Kind
    parts: tuple[str, ...]
    link: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    @property
    def mode(self) -> int:
        return self.member.mode & 0o7777

    @property
    def mtime_ns(self) -> int:
        """The entry's mtime in ns, exact when a PAX header gives a fraction; clamped to [0, 2**63)."""
        value = self.member.pax_headers.get("mtime")
        try:
            ns = int(Decimal(value) * 1_000_000_000) if value else int(self.member.mtime) * 1_000_000_000
        except (InvalidOperation, ValueError, OverflowError):
            ns = 0
        # erofs stores unsigned times; a negative mtime would come back as a date in the far future.
        return min(max(ns, 0), _MAX_NS)

    def xattrs(self) -> list[tuple[str, bytes]]:
        """The PAX xattrs worth keeping, sorted by name.

        ``trusted.overlay.*``/``user.overlay.*`` would steer the guest's overlayfs (opaque
        markers, redirects) from inside an image, and ``security.*`` labels other than file
        capabilities belong to the host's LSM policy, so those are dropped.
        """
        kept = []
        for key, value in self.member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            if name.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            if name.startswith("security.") and name != "security.capability":
                continue
            # tarfile decodes PAX values as UTF-8 with surrogateescape; binary values
            # (security.capability) come back byte for byte this way.
            kept.append((name, value.encode("utf-8", "surrogateescape")))
        return sorted(kept)


def _normalize(name: str, entry: str, what: str = "") -> tuple[str, ...]:
    """Split a member or link name into components, refusing any that leave the root."""
    subject = f'{what} "{name}" ' if what else ""
    if name.startswith("/"):
        raise InvalidLayer(f"{subject}is an absolute path", entry)
    parts: list[str] = []
    for component in name.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            if not parts:
                raise InvalidLayer(f"{subject}escapes the root", entry)
            parts.pop()
        else:
            parts.append(component)
    return tuple(parts)


def classify(member: tarfile.TarInfo, whiteouts: bool = True) -> Entry | None:
    """Classify a member and check everything about it that needs no filesystem.

    Returns None for aufs metadata, which is skipped.  Raises InvalidLayer otherwise.
    Without ``whiteouts`` (a plain archive, not a layer) ``.wh.`` names are ordinary.
    """
    name = member.name
    parts = _normalize(name, name)
    if whiteouts and any(part.startswith(WHITEOUT) for part in parts):
        return _whiteout(member, parts)
    link: tuple[str, ...] = ()
    if member.isreg():
        kind = Kind.FILE
    elif member.isdir():
        kind = Kind.DIR
    elif member.issym():
        kind = Kind.SYMLINK
        if not member.linkname or "\0" in member.linkname:
            raise InvalidLayer("is a symlink with an invalid target", name)
    elif member.islnk():
        kind = Kind.LINK
        link = _normalize(member.linkname, name, "hard link target")
        if not link:
            raise InvalidLayer("is a hard link to the root directory", name)
        if whiteouts and any(part.startswith(WHITEOUT) for part in link):
            raise InvalidLayer(f'is a hard link to whiteout metadata "{member.linkname}" (aufs layers '
                               "are not supported)", name)
    elif member.ischr():
        kind = Kind.CHAR
    elif member.isblk():
        kind = Kind.BLOCK
    elif member.isfifo():
        kind = Kind.FIFO
    else:
        raise InvalidLayer(f"has unsupported tar type {member.type!r}", name)
    if not parts and kind is not Kind.DIR:
        raise InvalidLayer(f"replaces the root directory with a {kind.value}", name)
    return Entry(member, kind, parts, link)


def _whiteout(member: tarfile.TarInfo, parts: tuple[str, ...]) -> Entry | None:
    """A layer's member with a ``.wh.`` name: a whiteout, an opaque marker or aufs metadata (None)."""
    name = member.name
    if any(part.startswith(AUFS_META) for part in parts):
        if parts[-1] == OPAQUE and not any(part.startswith(AUFS_META) for part in parts[:-1]):
            return Entry(member, Kind.OPAQUE, parts[:-1])
        return None
    if any(part.startswith(WHITEOUT) for part in parts[:-1]):
        raise InvalidLayer("has a whiteout as a parent directory", name)
    hidden = parts[-1][len(WHITEOUT):]
    if hidden in ("", ".", ".."):
        raise InvalidLayer("is not a valid whiteout", name)
    return Entry(member, Kind.WHITEOUT, (*parts[:-1], hidden))


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        # A TarFile keeps every member it has read (an attribute typeshed omits); a layer may have millions.
        tar.members.clear()  # type: ignore[attr-defined]
        yield member


@contextlib.contextmanager
def _reading(layer: tarfile.TarFile | BinaryIO) -> Iterator[tarfile.TarFile]:
    """The layer as a TarFile, with every archive format error turned into InvalidLayer."""
    try:
        if isinstance(layer, tarfile.TarFile):
            yield layer
        else:
            # Streaming mode: the layer is read once, front to back; gzip, bzip2, xz detected.
            with tarfile.open(fileobj=layer, mode="r|*") as tar:
                yield tar
    except MALFORMED as err:
        raise InvalidLayer(f"not a valid tar archive: {err}") from err


def validate_layer(layer: tarfile.TarFile | BinaryIO, *, base: bool = False) -> None:
    """Check a whole layer without writing anything, as far as the layer alone allows.

    Refuses what ``apply_layer`` would refuse about names, types, whiteouts and this
    layer's own symlinks; paths through a lower layer's symlinks can only be caught when
    applying.  With ``base`` the layer has no parent (an imported rootfs), so hard links
    must point at an earlier entry of the layer itself.  Reads the layer to the end.
    """
    model = _Model(base)
    with _reading(layer) as tar:
        for member in _members(tar):
            entry = classify(member)
            if entry is not None:
                model.add(entry)


class _Model:
    """What a layer has put where so far: enough to judge its later entries."""

    def __init__(self, base: bool) -> None:
        self.base = base
        self.kinds: dict[str, Kind] = {}

    def _check_parents(self, parts: tuple[str, ...], entry: str, what: str = "") -> None:
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = self.kinds.get(parent)
            if kind is Kind.SYMLINK:
                raise InvalidLayer(f'{what}traverses the symlink "{parent}"', entry)
            if kind is not None and kind is not Kind.DIR:
                raise InvalidLayer(f'{what}has a parent "{parent}" that is not a directory', entry)

    def add(self, entry: Entry) -> None:
        if entry.kind is Kind.OPAQUE:
            # The marker lives inside the directory: every component of it is a parent.
            self._check_parents((*entry.parts, OPAQUE), entry.name)
            return
        self._check_parents(entry.parts, entry.name)
        if entry.kind is Kind.WHITEOUT:
            # Whiteouts hide lower layers only: this layer's own entries stay.
            return
        if entry.kind is Kind.LINK:
            target = "/".join(entry.link)
            self._check_parents(entry.link, entry.name, f'hard link target "{entry.member.linkname}" ')
            kind = self.kinds.get(target)
            if kind is Kind.DIR:
                raise InvalidLayer(f'hard link target "{entry.member.linkname}" is a directory', entry.name)
            if kind is None and self.base:
                raise InvalidLayer(f'hard link target "{entry.member.linkname}" does not exist', entry.name)
        path = entry.path
        if self.kinds.get(path) is Kind.DIR and entry.kind is not Kind.DIR:
            # Replacing a directory takes its subtree with it.
            prefix = path + "/"
            for key in [key for key in self.kinds if key.startswith(prefix)]:
                del self.kinds[key]
        if entry.parts:
            self.kinds[path] = entry.kind


def apply_layer(layer: tarfile.TarFile | BinaryIO, target: Path) -> None:
    """Apply one layer onto ``target`` (a directory holding the layers below it).

    Needs root for ownership, device nodes and ``trusted.*`` xattrs.  On InvalidLayer the
    target is left partly written (nothing outside it ever is): callers build into a
    scratch directory and discard it on failure.
    """
    with _reading(layer) as tar, _Applier(target) as applier:
        for member in _members(tar):
            entry = classify(member)
            if entry is not None:
                applier.apply(entry, tar)
        applier.finish()


def extract(archive: BinaryIO, target: Path, rename: tuple[str, str] | None = None) -> None:
    """Unpack a plain tar (``hyper cp`` from a container) into the directory ``target``, as
    safely as a layer: nothing lands outside it and no symlink on the way is followed.

    Unlike a layer's, ``.wh.`` names are files like any other.  ``rename`` (old, new) gives
    the archive's top-level entry ``old`` the name ``new`` ("." puts its content straight
    into ``target``); an entry outside ``old`` is refused.
    """
    with _reading(archive) as tar, _Applier(target) as applier:
        for member in _members(tar):
            if rename is not None:
                member.name = _renamed(member.name, *rename)
                if member.islnk():
                    member.linkname = _renamed(member.linkname, *rename)
            entry = classify(member, whiteouts=False)
            assert entry is not None  # only aufs metadata is skipped, and there is none without whiteouts
            applier.apply(entry, tar)
        applier.finish()


def _renamed(name: str, old: str, new: str) -> str:
    parts = _normalize(name, name)
    if not parts or parts[0] != old:
        raise InvalidLayer(f'is not under "{old}"', name)
    return "/".join((new, *parts[1:]))


class _Applier:
    def __init__(self, target: Path) -> None:
        self.root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Open descriptors on the chain of directories leading to the last parent used.
        self.stack: list[tuple[str, int]] = []
        self.scratch: int | None = None
        # Paths this layer has put content at, with their ancestors: whiteouts and opaque
        # markers spare them (OCI: a whiteout only hides lower layers).
        self.written: set[str] = set()
        # Directory mtimes to set once the layer is done, since adding entries changes them:
        # the layer's own for its directories, the previous one for any other it modified.
        self.times: dict[str, int] = {}

    def __enter__(self) -> _Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release(0)
        os.close(self.root)

    def _release(self, keep: int) -> None:
        if self.scratch is not None:
            os.close(self.scratch)
            self.scratch = None
        for _, fd in self.stack[keep:]:
            os.close(fd)
        del self.stack[keep:]

    def _dir(self, parts: tuple[str, ...], entry: str, create_ns: int | None) -> int | None:
        """A descriptor on directory ``parts``, valid until the next call.

        Missing directories are created (mode 0755, mtime ``create_ns``) unless
        ``create_ns`` is None, in which case None is returned.  A symlink or non-directory
        on the way raises InvalidLayer naming ``entry``.
        """
        keep = 0
        while keep < min(len(self.stack), len(parts)) and self.stack[keep][0] == parts[keep]:
            keep += 1
        self._release(keep)
        fd = self.stack[-1][1] if self.stack else self.root
        for depth in range(keep, len(parts)):
            child = self._open_child(fd, parts[: depth + 1], entry, create_ns)
            if child is None:
                return None
            if depth == len(self.stack) and depth < _CACHED_DEPTH:
                self.stack.append((parts[depth], child))
            else:
                if self.scratch is not None:
                    os.close(self.scratch)
                self.scratch = child
            fd = child
        return fd

    def _open_child(self, fd: int, parts: tuple[str, ...], entry: str, create_ns: int | None) -> int | None:
        name = parts[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if create_ns is None:
                return None
            return self._mkdir(fd, parts, create_ns)
        except OSError as err:
            if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            raise InvalidLayer(_not_a_dir(fd, parts), entry) from None

    def _mkdir(self, fd: int, parts: tuple[str, ...], create_ns: int) -> int:
        """Create a parent the layer does not list (OCI allows that), as Docker does."""
        name = parts[-1]
        self._touch(parts[:-1], fd)
        os.mkdir(name, 0o700, dir_fd=fd)
        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        os.fchmod(child, 0o755)
        self.times["/".join(parts)] = create_ns
        return child

    def _touch(self, parts: tuple[str, ...], fd: int) -> None:
        """Remember a directory's mtime before changing its content, to restore it at the end."""
        self.times.setdefault("/".join(parts), os.fstat(fd).st_mtime_ns)

    def _mark(self, parts: tuple[str, ...]) -> None:
        for depth in range(len(parts), 0, -1):
            path = "/".join(parts[:depth])
            if path in self.written:
                break
            self.written.add(path)

    def apply(self, entry: Entry, tar: tarfile.TarFile) -> None:
        if entry.kind is Kind.WHITEOUT:
            self._whiteout(entry)
        elif entry.kind is Kind.OPAQUE:
            self._opaque(entry)
        elif not entry.parts:
            self._metadata_fd(self.root, entry)
            self.times[""] = entry.mtime_ns
        else:
            self._create(entry, tar)
            self._mark(entry.parts)

    def _create(self, entry: Entry, tar: tarfile.TarFile) -> None:
        parents = entry.parts[:-1]
        fd = self._dir(parents, entry.name, entry.mtime_ns)
        assert fd is not None  # created on demand
        name = entry.parts[-1]
        link_source: tuple[int, str] | None = None
        if entry.kind is Kind.LINK:
            link_source = self._link_source(entry)
        try:
            existing = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        try:
            merge = existing is not None and entry.kind is Kind.DIR and stat.S_ISDIR(existing.st_mode)
            if not merge:
                self._touch(parents, fd)
                if existing is not None:
                    _remove(fd, name, existing.st_mode)
            self._write(fd, name, entry, tar, merge, link_source)
        finally:
            if link_source is not None:
                os.close(link_source[0])

    def _link_source(self, entry: Entry) -> tuple[int, str]:
        """The hard link target's parent descriptor (owned by the caller) and name."""
        what = f'hard link target "{entry.member.linkname}" '
        fd = os.dup(self.root)
        try:
            for depth in range(len(entry.link) - 1):
                try:
                    child = os.open(entry.link[depth], _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise InvalidLayer(f"{what}does not exist", entry.name) from None
                except OSError as err:
                    if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    raise InvalidLayer(what + _not_a_dir(fd, entry.link[: depth + 1]), entry.name) from None
                os.close(fd)
                fd = child
            try:
                source = os.stat(entry.link[-1], dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidLayer(f"{what}does not exist", entry.name) from None
            if stat.S_ISDIR(source.st_mode):
                raise InvalidLayer(f"{what}is a directory", entry.name)
        except BaseException:
            os.close(fd)
            raise
        return fd, entry.link[-1]

    def _write(self, fd: int, name: str, entry: Entry, tar: tarfile.TarFile, merge: bool,
               link_source: tuple[int, str] | None) -> None:
        kind = entry.kind
        if kind is Kind.FILE:
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=fd)
            try:
                source = tar.extractfile(entry.member)
                assert source is not None  # regular members always have data
                with source, open(out, "wb", closefd=False) as sink:
                    shutil.copyfileobj(source, sink, _COPY_CHUNK)
                self._metadata_fd(out, entry)
                os.utime(out, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(out)
        elif kind is Kind.DIR:
            if not merge:
                os.mkdir(name, 0o700, dir_fd=fd)
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                self._metadata_fd(child, entry)
            finally:
                os.close(child)
            self.times[entry.path] = entry.mtime_ns
        elif kind is Kind.LINK:
            assert link_source is not None
            # Never AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, as GNU tar does.
            try:
                os.link(link_source[1], name, src_dir_fd=link_source[0], dst_dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise InvalidLayer(f'hard link target "{entry.member.linkname}" does not exist', entry.name) from None
            # The inode is the target's: its metadata is the target's, not this header's.
        else:
            if kind is Kind.SYMLINK:
                os.symlink(entry.member.linkname, name, dir_fd=fd)
            elif kind is Kind.FIFO:
                os.mkfifo(name, 0o600, dir_fd=fd)
            else:
                device = os.makedev(entry.member.devmajor, entry.member.devminor)
                node = stat.S_IFCHR if kind is Kind.CHAR else stat.S_IFBLK
                os.mknod(name, node | 0o600, device, dir_fd=fd)
            self._metadata_at(fd, name, entry)

    def _metadata_fd(self, fd: int, entry: Entry) -> None:
        # chown first: it clears setuid/setgid bits and file capabilities.
        os.fchown(fd, entry.member.uid, entry.member.gid)
        for key, value in entry.xattrs():
            _setxattr(fd, key, value, entry, follow=True)
        os.fchmod(fd, entry.mode)

    def _metadata_at(self, fd: int, name: str, entry: Entry) -> None:
        os.chown(name, entry.member.uid, entry.member.gid, dir_fd=fd, follow_symlinks=False)
        # setxattr has no *at form; the /proc link resolves to the parent we hold, the name is not followed.
        for key, value in entry.xattrs():
            _setxattr(f"/proc/self/fd/{fd}/{name}", key, value, entry, follow=False)
        if entry.kind is not Kind.SYMLINK:
            # This node was just created by us in a tree no one else writes: it is not a symlink.
            os.chmod(name, entry.mode, dir_fd=fd)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=fd, follow_symlinks=False)

    def _whiteout(self, entry: Entry) -> None:
        if entry.path in self.written:
            return
        parents = entry.parts[:-1]
        fd = self._dir(parents, entry.name, None)
        if fd is None:
            return
        try:
            existing = os.stat(entry.parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        self._touch(parents, fd)
        _remove(fd, entry.parts[-1], existing.st_mode)

    def _opaque(self, entry: Entry) -> None:
        fd = self._dir(entry.parts, entry.name, entry.mtime_ns)
        assert fd is not None
        self._mark(entry.parts)
        # Walk only what this layer wrote below the directory; everything else is lower content.
        pending: list[tuple[tuple[str, ...], int]] = [(entry.parts, os.dup(fd))]
        while pending:
            parts, dir_fd = pending.pop()
            try:
                for child in sorted(os.listdir(dir_fd)):
                    path = "/".join((*parts, child))
                    mode = os.stat(child, dir_fd=dir_fd, follow_symlinks=False).st_mode
                    if path not in self.written:
                        self._touch(parts, dir_fd)
                        _remove(dir_fd, child, mode)
                    elif stat.S_ISDIR(mode):
                        pending.append(((*parts, child), os.open(child, _DIR_FLAGS, dir_fd=dir_fd)))
            finally:
                os.close(dir_fd)

    def finish(self) -> None:
        """Set directory mtimes now that their content is final."""
        for path, mtime in sorted(self.times.items()):
            parts = tuple(path.split("/")) if path else ()
            try:
                fd = self._dir(parts, path, None)
            except InvalidLayer:
                # Replaced by a symlink or file later in the layer: that entry has its own mtime.
                continue
            if fd is not None:
                os.utime(fd, ns=(mtime, mtime))


def _not_a_dir(fd: int, parts: tuple[str, ...]) -> str:
    """Why ``parts`` (in directory ``fd``) could not be walked through."""
    path = "/".join(parts)
    # O_NOFOLLOW | O_DIRECTORY fails alike on a symlink and on a file; tell them apart.
    if stat.S_ISLNK(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
        return f'traverses the symlink "{path}"'
    return f'has a parent "{path}" that is not a directory'


def _remove(fd: int, name: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        # rmtree with dir_fd works on descriptors and never follows symlinks.
        shutil.rmtree(name, dir_fd=fd)
    else:
        os.unlink(name, dir_fd=fd)


def _setxattr(path: int | str, key: str, value: bytes, entry: Entry, *, follow: bool) -> None:
    try:
        os.setxattr(path, key, value, follow_symlinks=follow)
    except OSError as err:
        regular = entry.kind in (Kind.FILE, Kind.DIR)
        if not regular and key.startswith("user.") and err.errno in (errno.EPERM, errno.ENOTSUP):
            # The kernel keeps user.* xattrs on files and directories only.
            return
        raise InvalidLayer(f"cannot set xattr {key}: {err.strerror}", entry.name) from err
