"""The image store: OCI blobs on disk, an index in SQLite, erofs disks built on demand.

Layout under the daemon's root directory::

    hyper.db                        SQLite shared with the daemon; this module owns the image_* tables
    images/blobs/sha256/<hex>       content-addressed blobs: layer tarballs, configs, manifests
    images/disks/<chain-hex>.erofs  one flattened read-only disk per layer stack, shared by pods
    images/tmp/<pid>-...            scratch space for disk builds, on the same filesystem
    images/store.lock               held shared by every open store (see "Removal" below)

Images are OCI through and through (manifest, config, gzip layers, diff_ids), so that
pulling from a registry, ``save``/``load`` and reference-counted removal can be added on
top without converting anything.  An image's id is the digest of its config, as in Docker.

Blobs (``blobs.py``) are committed crash-safely and report whether they are new, so an
import that fails removes exactly the blobs it created.  The database
rows are written in one transaction after the blobs, so a row never names a missing blob.

Removal follows ``docker rmi``: names go first, the image goes with its last name unless a
container uses it.  Files are reference-counted through the rows: deleting an image's rows
(one transaction) is followed by unlinking those of its blobs and its disk that no remaining
image names.  A crash in between leaves files no row names; they are collected when a store
opens with ``images/store.lock`` to itself.  Only then: while another store is open (the
daemon), a pull's blobs are committed before its rows exist and would look unreferenced.

Thread-safety: one ImageStore per daemon.  Its methods may be called from several
threads (the daemon runs them under ``asyncio.to_thread``): database access and blob
commits are serialized by a lock, and each disk is built once however many pods ask.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import itertools
import json
import os
import platform
import re
import sqlite3
import threading
import types
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from hyperd.image import CorruptBlob, ImageError, ImageInUse, ImageNotFound, InvalidReference
from hyperd.image import disk as disks
from hyperd.image.blobs import Blobs, Staged, remove_stale
from hyperd.image.layers import Compression, DigestReader, check_layer

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Go's default gzip level, as Docker uses: level 9 costs several times the CPU for ~1%.
GZIP_LEVEL = 6
DB_BUSY_MS = 5000
# remove()'s default: no container uses any image (read-only, unlike a {} default).
_NO_USERS: Mapping[str, bool] = types.MappingProxyType({})

_HEX = re.compile(r"[0-9a-f]{64}")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?", re.IGNORECASE)
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
                  "s390x": "s390x", "riscv64": "riscv64"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_images (
    id TEXT PRIMARY KEY,                 -- config digest, sha256:...
    manifest_digest TEXT NOT NULL,
    created INTEGER NOT NULL,            -- unix seconds, from the config
    size INTEGER NOT NULL,               -- bytes of the uncompressed layers
    config TEXT NOT NULL                 -- the config blob's JSON, verbatim
);
CREATE TABLE IF NOT EXISTS image_tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    image_id TEXT NOT NULL REFERENCES image_images(id) ON DELETE CASCADE,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX IF NOT EXISTS image_tags_image ON image_tags(image_id);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES image_images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,                -- 0 is the bottom layer
    diff_id TEXT NOT NULL,
    digest TEXT NOT NULL,                -- the layer blob
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,               -- bytes of the blob
    PRIMARY KEY (image_id, idx)
);
CREATE INDEX IF NOT EXISTS image_layers_digest ON image_layers(digest);
CREATE TABLE IF NOT EXISTS image_digests (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,                -- what a pull resolved: the index digest for a multi-platform image
    image_id TEXT NOT NULL REFERENCES image_images(id) ON DELETE CASCADE,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX IF NOT EXISTS image_digests_image ON image_digests(image_id);
"""
# Columns added after databases existed on users' machines: added when missing, old rows read NULL.
ADDED_COLUMNS = (
    ("image_layers", "content_size", "INTEGER"),  # bytes of the uncompressed layer
)


# ---------------------------------------------------------------------------------------------
# References


_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    """``name[:tag][@digest]`` as Docker parses it; the tag defaults to ``latest``."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse and normalize a reference (``busybox`` -> ``busybox:latest``); no registry prefix is added."""
    match = _REFERENCE.fullmatch(text) if len(text) <= 512 else None
    if match is None:
        lowered = _REFERENCE.fullmatch(text.lower()) if len(text) <= 512 else None
        if lowered is not None:
            raise InvalidReference(text, f"repository name ({text.partition(':')[0]}) must be lowercase")
        raise InvalidReference(text)
    name, tag, digest = match.group("name", "tag", "digest")
    if len(name) > _MAX_NAME:
        raise InvalidReference(text, f"repository name must not be more than {_MAX_NAME} characters")
    if re.fullmatch(r"[0-9a-f]{64}", name):
        # It would be indistinguishable from an image id.
        raise InvalidReference(text, f"invalid repository name ({name}), cannot specify 64-byte hexadecimal strings")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(name, tag, digest)


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageConfig:
    """The runtime defaults an image carries (the ``config`` object of an OCI image config).

    ``entrypoint``/``cmd`` are None when unset, which differs from set-but-empty for Docker.
    """

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""

    def to_oci(self) -> dict[str, Any]:
        env = list(self.env)
        if not any(item.startswith("PATH=") for item in env):
            # Docker's default, so that commands resolve the same way in every image.
            env.insert(0, f"PATH={DEFAULT_PATH}")
        out: dict[str, Any] = {"Env": env}
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(sorted(self.labels.items()))
        if self.exposed_ports:
            out["ExposedPorts"] = {_port(port): {} for port in sorted(self.exposed_ports)}
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out

    @classmethod
    def from_oci(cls, data: object) -> ImageConfig:
        """Read a config object; anything of the wrong type raises ImageError (configs will come from registries)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ImageError("image config: config is not an object")
        labels = data.get("Labels") or {}
        ports = data.get("ExposedPorts") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ImageError("image config: Labels is not an object of strings")
        if not isinstance(ports, dict):
            raise ImageError("image config: ExposedPorts is not an object")
        return cls(
            entrypoint=_strings(data.get("Entrypoint"), "Entrypoint"),
            cmd=_strings(data.get("Cmd"), "Cmd"),
            env=_strings(data.get("Env"), "Env") or (),
            working_dir=_string(data.get("WorkingDir"), "WorkingDir"),
            user=_string(data.get("User"), "User"),
            labels=dict(labels),
            exposed_ports=tuple(sorted(str(port) for port in ports)),
            stop_signal=_string(data.get("StopSignal"), "StopSignal"),
        )


def _port(port: str) -> str:
    return port if "/" in port else f"{port}/tcp"


def _strings(value: object, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImageError(f"image config: {name} is not a list of strings")
    return tuple(value)


def _string(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"image config: {name} is not a string")
    return value


@dataclass(frozen=True)
class Layer:
    diff_id: str      # sha256 of the uncompressed tar
    digest: str       # the blob, as stored and as a registry serves it
    media_type: str
    size: int         # bytes of the blob
    content_size: int | None = None  # bytes of the uncompressed tar; None in rows older than the column


@dataclass(frozen=True)
class Image:
    id: str                          # config digest, sha256:...
    manifest_digest: str
    created: int                     # unix seconds, as Docker's API reports it
    size: int                        # bytes of the uncompressed layers
    references: tuple[str, ...]      # repository:tag, sorted
    repo_digests: tuple[str, ...]    # repository@digest, sorted: what pulls resolved
    config: ImageConfig
    layers: tuple[Layer, ...]

    @property
    def dangling(self) -> bool:
        """No tag: ``<none>:<none>`` to ``docker images``, and what ``prune`` removes by default."""
        return not self.references

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, UTC)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    @property
    def chain_id(self) -> str:
        return disks.chain_id(self.diff_ids)


# ---------------------------------------------------------------------------------------------
# The store


class ImageStore:
    """Images under a daemon root directory; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        images = self.root / "images"
        self.blobs = Blobs(images / "blobs")
        self.disks_dir = images / "disks"
        self.tmp_dir = images / "tmp"
        for directory in (self.disks_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # One connection used from several threads, always under self._lock.
        self._db = sqlite3.connect(self.root / "hyper.db", isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._disk_locks: dict[str, threading.Lock] = {}
        self._store_lock = -1
        try:
            self._store_lock = os.open(images / "store.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._store_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            remove_stale(self.tmp_dir, "")
            remove_stale(self.blobs.dir, ".tmp-")
            with self._lock:
                self._db.execute(f"PRAGMA busy_timeout = {DB_BUSY_MS}")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA foreign_keys = ON")
                with self._transaction():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    for table, column, kind in ADDED_COLUMNS:
                        if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if alone:
                    self._collect()
            # Shared from now on: later opens (python3 -m hyperd.image.busybox beside the daemon) must not collect.
            fcntl.flock(self._store_lock, fcntl.LOCK_SH)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the database and release ``store.lock``; safe to call twice."""
        with self._lock:
            self._db.close()
            if self._store_lock >= 0:
                os.close(self._store_lock)
                self._store_lock = -1

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: no deadlock upgrading a read later.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- import ---------------------------------------------------------------------------------

    def import_rootfs(self, tar: BinaryIO, reference: str | None, *, config: ImageConfig | None = None,
                      created: datetime | None = None, comment: str = "") -> Image:
        """Import a root filesystem tarball (plain, gzip, bzip2 or xz) as a one-layer image.

        A gzip tarball becomes the layer blob as it is; any other is stored gzip-compressed.

        The tarball is validated entirely before anything is stored (InvalidLayer names
        the first unsafe entry) and on any failure nothing is left behind.  ``created``
        defaults to now; giving it (with the same content and config) makes the import
        reproducible: the same image id, and importing it again only retags it.
        """
        target = parse_reference(reference) if reference is not None else None
        if target is not None and target.digest is not None:
            raise InvalidReference(reference or "", "cannot import to a digest reference")
        created = (created or datetime.now(UTC)).astimezone(UTC)
        with self.blobs.staging() as layer_blob:
            layer, size = self._stage_layer(layer_blob, tar, base=True)
            config_json = canonical_json({
                "architecture": _ARCHITECTURES.get(platform.machine(), platform.machine()),
                "os": "linux",
                "created": _timestamp(created),
                # Docker's import puts the message both here (inspect's Comment) and in the history.
                **({"comment": comment} if comment else {}),
                "config": (config or ImageConfig()).to_oci(),
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                "history": [{"created": _timestamp(created), "created_by": "hyper import",
                             **({"comment": comment} if comment else {})}],
            })
            return self._store_image(config_json, layer_blob, [layer], size, created, target)

    def commit_layer(self, parent: Image, tar: BinaryIO, reference: str | None, *, config: ImageConfig,
                     comment: str = "", author: str = "") -> Image:
        """``parent`` with one more layer, the tar ``tar`` (whiteouts for deletions): docker's commit.

        The parent's config document is kept (fields hyper does not model included), with
        ``config``'s runtime settings over it, the new diff_id and a history entry.  The layer
        is validated before anything is stored; on any failure nothing is left behind.
        """
        target = parse_reference(reference) if reference is not None else None
        if target is not None and target.digest is not None:
            raise InvalidReference(reference or "", "cannot commit to a digest reference")
        created = datetime.now(UTC)
        document = self._document(parent.id)
        with self.blobs.staging() as layer_blob:
            layer, size = self._stage_layer(layer_blob, tar, base=False)
            extra = {**({"author": author} if author else {}), **({"comment": comment} if comment else {})}
            history = document.get("history")
            config_json = canonical_json({
                **document,
                "created": _timestamp(created),
                **extra,
                "config": {**(document.get("config") or {}), **config.to_oci()},
                "rootfs": {"type": "layers", "diff_ids": [*parent.diff_ids, layer.diff_id]},
                "history": [*(history if isinstance(history, list) else []),
                            {"created": _timestamp(created), "created_by": "hyper commit", **extra}],
            })
            return self._store_image(config_json, layer_blob, [*parent.layers, layer], parent.size + size,
                                     created, target)

    def _stage_layer(self, layer_blob: Staged, tar: BinaryIO, *, base: bool) -> tuple[Layer, int]:
        """Validate a layer tar while writing it gzip-compressed (a gzip one as given) to ``layer_blob``;
        the layer and the bytes of its content.  ``base``: it has no parent layer."""
        # One pass over the input: validate the tar while hashing it and writing the blob.
        compression, whole = Compression.sniff(tar)
        if compression is Compression.GZIP:
            # Already gzip: store it as given; recompressing would cost most of the import's time.
            given = DigestReader(whole, copy=layer_blob.write)
            plain = check_layer(io.BufferedReader(given, 1 << 16), compression, base=base)
            given.drain()
        else:
            with gzip.GzipFile(fileobj=layer_blob, mode="wb", compresslevel=GZIP_LEVEL, mtime=0,
                               filename="") as compressed:
                plain = check_layer(whole, compression, base=base, copy=compressed.write)
        return Layer(plain.digest, layer_blob.digest, LAYER_GZIP, layer_blob.size, plain.size), plain.size

    def _store_image(self, config_json: bytes, layer_blob: Staged, layers: list[Layer], size: int,
                     created: datetime, target: Reference | None) -> Image:
        """Record an image whose top layer is ``layer_blob`` (the others stored already), tagged ``target``."""
        config_digest = digest_of(config_json)
        manifest_json = canonical_json({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_json)},
            "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                       for layer in layers],
        })
        with self._lock:
            if self._exists(config_digest):
                # Same config, hence the same diff_ids: the image is already here.
                if target is not None:
                    self._set_reference(config_digest, target)
                return self._load(config_digest)
            created_blobs: list[str] = []
            try:
                if self.blobs.commit(layer_blob):
                    created_blobs.append(layers[-1].digest)
                for data in (config_json, manifest_json):
                    digest, new = self.blobs.put(data)
                    if new:
                        created_blobs.append(digest)
                with self._transaction():
                    self._insert(config_digest, digest_of(manifest_json), int(created.timestamp()), size,
                                 config_json, layers)
                    if target is not None:
                        self._set_reference(config_digest, target)
            except BaseException:
                # Only what this created: an existing blob may belong to another image.
                for digest in created_blobs:
                    self.blobs.remove(digest)
                raise
            return self._load(config_digest)

    def record(self, manifest: bytes, config: bytes, layers: Sequence[Layer], size: int,
               reference: str | None, *, repo_digest: str | None = None) -> Image:
        """Record an image whose layer blobs are already committed (a pull), exactly as an import is recorded.

        ``layers`` are the manifest's, bottom first, with the diff_ids their content was checked against;
        ``size`` is the bytes of their uncompressed content.  ``repo_digest`` (``name@sha256:...``) is
        the digest the pull resolved, the index's for a multi-platform image; ``resolve`` finds it.
        The config and manifest become blobs; the rows are written in one transaction, so on failure
        the store has no trace of the image but verified content-addressed blobs.  An image already
        present is only (re)tagged and given the repo digest.
        """
        target = parse_reference(reference) if reference is not None else None
        if target is not None and target.digest is not None:
            target = None  # pulled by digest: Docker records no tag
        names = [target] if target is not None else []
        if repo_digest is not None:
            pinned = parse_reference(repo_digest)
            if pinned.digest is None:
                raise InvalidReference(repo_digest, "a repo digest must name a digest")
            names.append(Reference(pinned.repository, digest=pinned.digest))
        try:
            document = json.loads(config)
        except ValueError as err:
            raise ImageError(f"image config is not JSON: {err}") from err
        if not isinstance(document, dict):
            raise ImageError("image config is not a JSON object")
        ImageConfig.from_oci(document.get("config"))  # refuse a malformed config before storing anything
        rootfs = document.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if diff_ids != [layer.diff_id for layer in layers]:
            raise ImageError("image config: rootfs.diff_ids do not match the layers' content")
        config_digest = digest_of(config)
        created = _parse_timestamp(document.get("created"))
        with self._lock:
            # Checked under the lock: a removal unlinks blobs no row names, as these are until the rows exist.
            for layer in layers:
                if layer.digest not in self.blobs:
                    raise CorruptBlob(layer.digest, "it is missing")
            new = not self._exists(config_digest)
            if new:
                self.blobs.put(config)
                self.blobs.put(manifest)
            with self._transaction():
                if new:
                    self._insert(config_digest, digest_of(manifest), created, size, config, layers)
                for name in names:
                    self._set_reference(config_digest, name)
            return self._load(config_digest)

    # -- lookups --------------------------------------------------------------------------------

    def resolve(self, reference: str) -> Image:
        """The image named by ``name[:tag]``, ``name@digest``, a full id or a unique id prefix (>= 4 hex).

        ``name@digest`` is a repo digest recorded by a pull or any image's manifest digest.
        Like Docker, a name wins over an id prefix it also spells (``beef``).
        """
        with self._lock:
            return self._find(reference)[0]

    def tag(self, image: Image, reference: str) -> Image:
        """Point ``reference`` at ``image`` (moving it off any other image); returns the image as now tagged."""
        target = parse_reference(reference)
        if target.digest is not None:
            raise InvalidReference(reference, "refusing to create a tag with a digest reference")
        with self._lock:
            if not self._exists(image.id):
                raise ImageNotFound(image.id)
            with self._transaction():
                self._set_reference(image.id, target)
            return self._load(image.id)

    def inspect(self, image: Image) -> dict[str, Any]:
        """Docker's ``GET /images/{name}/json`` for ``image``, read from its stored config.

        The config came from a registry: a field of the wrong type shows as empty rather than
        making the image uninspectable.
        """
        document = self._document(image.id)
        created = document.get("created")
        config = document.get("config")
        out: dict[str, Any] = {
            "Id": image.id,
            "RepoTags": list(image.references),
            "RepoDigests": list(image.repo_digests),
            "Parent": "",
            "Comment": _text(document.get("comment")),
            # The config's own text keeps Go's nanoseconds, as Docker shows them.
            "Created": (created.strip() if isinstance(created, str) and _parse_time(created) is not None
                        else _timestamp(image.created_at)),
            "Author": _text(document.get("author")),
            "Config": config if isinstance(config, dict) else None,
            "Architecture": _text(document.get("architecture")),
            "Os": _text(document.get("os")),
            "Size": image.size,
            "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        }
        if variant := _text(document.get("variant")):
            out["Variant"] = variant
        return out

    def history(self, image: Image) -> list[dict[str, Any]]:
        """Docker's ``GET /images/{name}/history``: the config's history, newest first.

        As for a pulled image in Docker, only the top entry has an id (the image's) and tags.
        ``Size`` is the uncompressed size of the entry's layer; rows stored before that was
        recorded have only the compressed blob's size, which is shown instead.
        """
        entries = self._document(image.id).get("history")
        layers = iter(image.layers)
        out: list[dict[str, Any]] = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            size = 0
            if entry.get("empty_layer") is not True and (layer := next(layers, None)) is not None:
                size = layer.content_size if layer.content_size is not None else layer.size
            out.append({"Id": "<missing>", "Created": _parse_timestamp(entry.get("created")),
                        "CreatedBy": _text(entry.get("created_by")), "Tags": None, "Size": size,
                        "Comment": _text(entry.get("comment"))})
        out.reverse()
        if out:
            # Go's nil slice: null when the image has no tag.
            out[0].update(Id=image.id, Tags=list(image.references) or None)
        return out

    # -- removal --------------------------------------------------------------------------------

    def remove(self, reference: str, *, force: bool = False,
               users: Mapping[str, bool] = _NO_USERS) -> list[dict[str, str]]:
        """``docker rmi``: Docker's list of ``{"Untagged": name}`` and ``{"Deleted": id}`` records.

        ``users`` maps the id of each image a container uses to whether one of those is running.
        A name (tag or repo digest) is untagged; the image goes with its last name unless a
        container uses it.  An id removes every name and the image: refused without ``force``
        if the image has several tags or repositories or a stopped container uses it.  With
        ``force`` an image only stopped containers use is untagged but kept (dangling), since
        they need it to start again; one a running container uses is never removed (ImageInUse).
        """
        with self._lock:
            image, named = self._find(reference)
            names = self._names(image.id)
            used = users.get(image.id)  # None: no container; False: only stopped ones
            single = _single_name(names)
            if named is not None:
                if single and used is not None:
                    # Untagging the last name would leave an image a container uses dangling.
                    if used:
                        raise _running(image)
                    if not force:
                        raise ImageInUse(f'unable to remove repository reference "{named}" (must force) - '
                                         f"a stopped container is using its referenced image {image.short_id}",
                                         image.id, forceable=True)
                untag = [named]
                if named.tag is not None and not any(name.tag is not None and name.repository == named.repository
                                                     and name != named for name in names):
                    # As Docker: a repository's digests go with its last tag.
                    untag += [name for name in names if name.digest is not None and name.repository == named.repository]
            else:
                if used:
                    raise _running(image)
                if not force and names and not single:
                    raise ImageInUse(f"unable to delete {image.short_id} (must be forced) - "
                                     "image is referenced in multiple repositories", image.id, forceable=True)
                if not force and used is not None:
                    raise ImageInUse(f"unable to delete {image.short_id} (must be forced) - "
                                     "image is being used by a stopped container", image.id, forceable=True)
                untag = names
            return self._drop(image, untag, delete=used is None and len(untag) == len(names))[0]

    def prune(self, *, all: bool = False, users: Collection[str] = ()) -> tuple[list[dict[str, str]], int]:
        """``docker image prune``: remove dangling images (every image with ``all``) no container uses.

        ``users`` are the ids of images containers use, running or not.  Returns Docker's
        ``ImagesDeleted`` records and ``SpaceReclaimed``: the bytes of the blobs and disks unlinked,
        including partial downloads that no pull is resuming.
        """
        records: list[dict[str, str]] = []
        reclaimed = self.blobs.prune_partials()
        with self._lock:
            for image in self.list():
                if image.id in users or not (all or image.dangling):
                    continue
                dropped, freed = self._drop(image, self._names(image.id), delete=True)
                records += dropped
                reclaimed += freed
        return records, reclaimed

    def _drop(self, image: Image, untag: Sequence[Reference], *, delete: bool) -> tuple[list[dict[str, str]], int]:
        """Remove the names ``untag`` and, with ``delete``, the image and the files only it used.

        Returns Docker's records and the bytes unlinked.
        """
        with self._transaction() as db:
            for name in untag:
                if name.digest is not None:
                    db.execute("DELETE FROM image_digests WHERE repository = ? AND digest = ?",
                               (name.repository, name.digest))
                else:
                    db.execute("DELETE FROM image_tags WHERE repository = ? AND tag = ?", (name.repository, name.tag))
            if delete:
                db.execute("DELETE FROM image_images WHERE id = ?", (image.id,))
        records = [{"Untagged": str(name)} for name in untag]
        if not delete:
            return records, 0
        # After the commit: a crash here leaves files no row names, which the next exclusive open collects.
        unused = {image.id, image.manifest_digest, *(layer.digest for layer in image.layers)} - self._referenced()
        freed = sum(_unlink(self.blobs.path(digest)) for digest in sorted(unused))
        if image.chain_id not in self._chains():
            freed += _unlink(self.disk_path(image))
        return [*records, {"Deleted": image.id}], freed

    def _collect(self) -> None:
        """Unlink the blobs and disks no image names (run only with ``store.lock`` held exclusively)."""
        referenced = {digest.removeprefix("sha256:") for digest in self._referenced()}
        for entry in self.blobs.dir.iterdir():
            # Other names (.tmp-*, .partial-*) belong to blobs.py.
            if _HEX.fullmatch(entry.name) and entry.name not in referenced:
                _unlink(entry)
        chains = {f"{chain.removeprefix('sha256:')}.erofs" for chain in self._chains()}
        for entry in self.disks_dir.iterdir():
            if _HEX.fullmatch(entry.name.removesuffix(".erofs")) and entry.name not in chains:
                _unlink(entry)

    def _referenced(self) -> set[str]:
        """Every blob an image names: configs, manifests, layers."""
        rows = self._db.execute("SELECT id FROM image_images UNION SELECT manifest_digest FROM image_images "
                                "UNION SELECT digest FROM image_layers").fetchall()
        return {str(digest) for (digest,) in rows}

    def _chains(self) -> set[str]:
        """The chain id of every image: the disks still wanted."""
        rows = self._db.execute("SELECT image_id, diff_id FROM image_layers ORDER BY image_id, idx").fetchall()
        return {disks.chain_id([str(row[1]) for row in group])
                for _, group in itertools.groupby(rows, key=lambda row: row[0])}

    # -- disks ----------------------------------------------------------------------------------

    def disk_path(self, image: Image) -> Path:
        return self.disks_dir / f"{image.chain_id.removeprefix('sha256:')}.erofs"

    def disk(self, image: Image) -> Path:
        """The image's erofs disk, built on first use and then shared (blocking: run it in a thread)."""
        path = self.disk_path(image)
        if path.exists():
            return path
        with self._lock:
            lock = self._disk_locks.setdefault(image.chain_id, threading.Lock())
        with lock:
            if not path.exists():
                layers = [disks.LayerBlob(self.blobs.path(layer.digest), layer.digest, layer.diff_id)
                          for layer in image.layers]
                disks.build(layers, path, self.tmp_dir)
        return path

    # -- rows -----------------------------------------------------------------------------------

    def _exists(self, image_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM image_images WHERE id = ?", (image_id,)).fetchone() is not None

    def _insert(self, image_id: str, manifest_digest: str, created: int, size: int, config: bytes,
                layers: Sequence[Layer]) -> None:
        self._db.execute("INSERT INTO image_images (id, manifest_digest, created, size, config) VALUES (?, ?, ?, ?, ?)",
                         (image_id, manifest_digest, created, size, config.decode()))
        self._db.executemany(
            "INSERT INTO image_layers (image_id, idx, diff_id, digest, media_type, size, content_size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(image_id, idx, layer.diff_id, layer.digest, layer.media_type, layer.size, layer.content_size)
             for idx, layer in enumerate(layers)])

    def _set_reference(self, image_id: str, name: Reference) -> None:
        """Point a tag or a repo digest at the image, moving it off any other."""
        if name.digest is not None:
            self._db.execute("INSERT OR REPLACE INTO image_digests (repository, digest, image_id) VALUES (?, ?, ?)",
                             (name.repository, name.digest, image_id))
        else:
            self._db.execute("INSERT OR REPLACE INTO image_tags (repository, tag, image_id) VALUES (?, ?, ?)",
                             (name.repository, name.tag, image_id))

    def _names(self, image_id: str) -> list[Reference]:
        """The image's tags then its repo digests, each sorted."""
        tags = self._db.execute("SELECT repository, tag FROM image_tags WHERE image_id = ? ORDER BY repository, tag",
                                (image_id,)).fetchall()
        digests = self._db.execute("SELECT repository, digest FROM image_digests WHERE image_id = ? "
                                   "ORDER BY repository, digest", (image_id,)).fetchall()
        return ([Reference(repository, tag=tag) for repository, tag in tags]
                + [Reference(repository, digest=digest) for repository, digest in digests])

    def _find(self, reference: str) -> tuple[Image, Reference | None]:
        """The image ``reference`` names and, if that is by one of its names (tag, repo digest), the name."""
        if reference.startswith("sha256:"):
            found = self._by_id_prefix(reference[7:])
            if found is None:
                raise ImageNotFound(reference)
            return found, None
        if _HEX.fullmatch(reference):
            found = self._by_id_prefix(reference)
            if found is None:
                raise ImageNotFound(reference)
            return found, None
        try:
            parsed: Reference | None = parse_reference(reference)
        except InvalidReference:
            if not re.fullmatch(r"[0-9a-f]{4,63}", reference):
                raise
            parsed = None
        if parsed is not None:
            by_name = self._by_reference(parsed)
            if by_name is not None:
                return self._load(by_name[0]), by_name[1]
        found = self._by_id_prefix(reference)
        if found is None:
            raise ImageNotFound(str(parsed) if parsed is not None else reference)
        return found, None

    def _by_reference(self, reference: Reference) -> tuple[str, Reference | None] | None:
        """The image id and the stored name matched; no name when a digest matched only a manifest."""
        if reference.digest is not None:
            name = Reference(reference.repository, digest=reference.digest)
            row = self._db.execute("SELECT image_id FROM image_digests WHERE repository = ? AND digest = ?",
                                   (name.repository, name.digest)).fetchone()
            if row is not None:
                return str(row[0]), name
            row = self._db.execute(
                "SELECT id FROM image_images WHERE manifest_digest = ? ORDER BY id LIMIT 1", (reference.digest,)
            ).fetchone()
            return None if row is None else (str(row[0]), None)
        row = self._db.execute("SELECT image_id FROM image_tags WHERE repository = ? AND tag = ?",
                               (reference.repository, reference.tag)).fetchone()
        return None if row is None else (str(row[0]), reference)

    def _by_id_prefix(self, prefix: str) -> Image | None:
        if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
            return None
        # Hex digits are no LIKE wildcards; two matches are ambiguous, which Docker reports as not found.
        rows = self._db.execute("SELECT id FROM image_images WHERE id LIKE ? LIMIT 2",
                                (f"sha256:{prefix}%",)).fetchall()
        return self._load(rows[0][0]) if len(rows) == 1 else None

    def _document(self, image_id: str) -> dict[str, Any]:
        """The image's config, as stored."""
        with self._lock:
            row = self._db.execute("SELECT config FROM image_images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise ImageNotFound(image_id)
        return _parse_config(image_id, row[0])

    def _load(self, image_id: str) -> Image:
        row = self._db.execute("SELECT manifest_digest, created, size, config FROM image_images WHERE id = ?",
                               (image_id,)).fetchone()
        if row is None:
            raise ImageNotFound(image_id)
        manifest_digest, created, size, config_text = row
        names = self._names(image_id)
        layers = self._db.execute("SELECT diff_id, digest, media_type, size, content_size FROM image_layers "
                                  "WHERE image_id = ? ORDER BY idx", (image_id,)).fetchall()
        return Image(
            id=image_id,
            manifest_digest=manifest_digest,
            created=int(created),
            size=size,
            references=tuple(str(name) for name in names if name.digest is None),
            repo_digests=tuple(str(name) for name in names if name.digest is not None),
            config=ImageConfig.from_oci(_parse_config(image_id, config_text).get("config")),
            layers=tuple(Layer(*layer) for layer in layers),
        )

    # Last in the class: a method named list shadows the builtin in the annotations after it.
    def list(self) -> list[Image]:
        """Every image, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM image_images ORDER BY created DESC, id").fetchall()
            return [self._load(image_id) for (image_id,) in rows]


def _parse_config(image_id: str, text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ImageError(f"image {image_id}: stored config is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise ImageError(f"image {image_id}: stored config is not a JSON object")
    return document


def _single_name(names: Sequence[Reference]) -> bool:
    """Docker's "isSingleReference": one repository and at most one tag, so removing one name may orphan the image."""
    return len({name.repository for name in names}) == 1 and sum(name.tag is not None for name in names) <= 1


def _running(image: Image) -> ImageInUse:
    return ImageInUse(f"unable to delete {image.short_id} (cannot be forced) - "
                      "image is being used by a running container", image.id, forceable=False)


def _unlink(path: Path) -> int:
    """Remove a file; the bytes it held (0 if it was already gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def canonical_json(document: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Deterministic JSON: the same image always has the same digests."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(data: bytes) -> str:
    """The sha256 digest of ``data``, as OCI writes it."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as OCI configs write it."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _parse_time(value: object) -> datetime | None:
    """An RFC 3339 time (Go writes nanoseconds, Python reads at most micro); None if ``value`` is not one."""
    match = _RFC3339.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    zone = match.group(2) or "Z"
    try:
        return datetime.fromisoformat(match.group(1) + ("+00:00" if zone.upper() == "Z" else zone))
    except ValueError:  # well-formed but impossible: month 13
        return None


def _parse_timestamp(value: object) -> int:
    """Unix seconds of an RFC 3339 ``created``; 0 if absent or invalid."""
    moment = _parse_time(value)
    return 0 if moment is None else int(moment.timestamp())


__all__ = ["Image", "ImageConfig", "ImageStore", "Layer", "Reference", "canonical_json", "digest_of", "parse_reference"]
