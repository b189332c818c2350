"""Data that lives outside the VM: named volumes and bind mounts.

A named volume is a sparse ext4 image file under the daemon's root, ``volumes/NAME/disk.ext4``
next to its ``volume.json``.  The record is written at ``volume create`` (or by the run that
names it first); the disk is made the first time a pod uses it.  hyperd attaches it to that
pod's VM as a read-write disk, and hyperstart mounts it and binds it at the container's path,
filling an empty volume from the image's content there first, as docker does.  Two kernels
writing one ext4 would corrupt it, so a volume is attached to one running pod at a time.  The
host never mounts a volume: the guest that wrote it is untrusted.

A bind mount shares a host directory into the VM over virtio-9p (QEMU's ``local`` backend);
a read-only one is read-only in QEMU, on the host side, and mounted read-only in the guest.
A single file cannot be shared over 9p without its whole directory, so binding a file is
refused rather than exposing its neighbours to the guest.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hyperd import storage
from hyperd.errors import InvalidArgument, NotFound, StorageError

NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
DEFAULT_SIZE = 16 << 30
"""Bytes of a volume's disk unless ``--opt size=`` says otherwise; sparse, so free until written."""
BIND_OPTIONS = {"ro", "rw", "z", "Z", "private", "rprivate"}
VOLUME_OPTIONS = {"ro", "rw", "nocopy", "z", "Z", "private", "rprivate"}


@dataclass(frozen=True)
class Mount:
    """A volume or bind mount of a container, as docker's ``-v`` and ``--mount`` give it."""

    type: str
    """``bind`` or ``volume``."""
    source: str
    """The host directory, or the volume's name ("" in a request: a new anonymous volume)."""
    target: str
    readonly: bool = False
    nocopy: bool = False
    """A volume is not filled from the image (``nocopy``, ``volume-nocopy``)."""
    create_source: bool = False
    """A missing bind source is made (``-v``) rather than refused (``--mount``)."""
    anonymous: bool = False


def parse_bind(text: str) -> Mount:
    """Docker's ``-v [SOURCE:]TARGET[:OPTIONS]``: a host directory when SOURCE is absolute, else a volume."""
    parts = text.split(":")
    if len(parts) == 2 and not parts[1].startswith("/"):
        parts = ["", *parts]  # TARGET:OPTIONS
    if len(parts) == 1:
        parts = ["", parts[0], ""]
    if len(parts) == 2:
        parts.append("")
    if len(parts) != 3 or not parts[1]:
        raise InvalidArgument(f"invalid volume specification: {text!r}")
    source, target, options = parts
    flags = [flag for flag in options.split(",") if flag]
    kind = "bind" if source.startswith("/") else "volume"
    allowed = BIND_OPTIONS if kind == "bind" else VOLUME_OPTIONS
    for flag in flags:
        if flag not in allowed:
            raise InvalidArgument(f"invalid mode {flag!r} in volume specification {text!r}")
    if "ro" in flags and "rw" in flags:
        raise InvalidArgument(f"invalid mode in volume specification {text!r}: both ro and rw")
    return checked(Mount(kind, source, target, readonly="ro" in flags, nocopy="nocopy" in flags,
                         create_source=True, anonymous=kind == "volume" and not source))


def parse_mount(fields: dict[str, Any]) -> Mount:
    """One of docker's HostConfig.Mounts: ``{"Type", "Source", "Target", "ReadOnly", "VolumeOptions"}``."""
    kind = fields.get("Type") or "volume"
    if kind not in ("bind", "volume"):
        raise InvalidArgument(f"mount type {kind!r} is not supported here: bind or volume (tmpfs is --tmpfs)")
    source, target = str(fields.get("Source") or ""), str(fields.get("Target") or "")
    if not target:
        raise InvalidArgument("invalid mount config: a mount needs a target")
    if kind == "bind" and not source:
        raise InvalidArgument("invalid mount config for type \"bind\": field Source must not be empty")
    options = fields.get("VolumeOptions") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("invalid mount config: VolumeOptions must be an object")
    return checked(Mount(kind, source, target, readonly=bool(fields.get("ReadOnly")),
                         nocopy=bool(options.get("NoCopy")), anonymous=kind == "volume" and not source))


def checked(mount: Mount) -> Mount:
    """``mount`` with its paths normalised, or InvalidArgument naming what is wrong with it."""
    if not mount.target.startswith("/") or "\0" in mount.target:
        raise InvalidArgument(f"invalid mount target {mount.target!r}: it must be an absolute path")
    target = os.path.normpath(mount.target)
    if target == "/":
        raise InvalidArgument("invalid mount target '/': a volume cannot replace the container's root")
    if mount.type == "bind":
        if not mount.source.startswith("/") or "\0" in mount.source:
            raise InvalidArgument(f"invalid bind source {mount.source!r}: it must be an absolute path")
        return Mount("bind", os.path.normpath(mount.source), target, mount.readonly,
                     create_source=mount.create_source)
    if mount.source and not NAME.fullmatch(mount.source):
        raise InvalidArgument(
            f"{mount.source!r} includes invalid characters for a local volume name, only "
            f"{NAME.pattern!r} are allowed; if you intended to pass a host directory, use an absolute path")
    return Mount("volume", mount.source, target, mount.readonly, mount.nocopy, anonymous=mount.anonymous)


def prepare_bind(mount: Mount) -> Path:
    """The host directory of a bind mount, made if ``-v`` asked for it; InvalidArgument if unusable."""
    path = Path(mount.source)
    if not path.exists() and mount.create_source:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidArgument(f"cannot create bind source {path}: {err.strerror or err}") from err
    if not path.exists():
        raise InvalidArgument(f"invalid mount config for type \"bind\": bind source path does not exist: {path}")
    if not path.is_dir():
        raise InvalidArgument(f"bind source {path} is not a directory: only directories can be shared with a "
                              "pod's VM (bind its directory, or copy the file in with a volume)")
    return path


@dataclass(frozen=True)
class Volume:
    name: str
    created: float
    size: int
    labels: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def describe(self, directory: Path) -> dict[str, Any]:
        """Docker's volume object."""
        created = datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"Name": self.name, "Driver": "local", "Mountpoint": str(directory / "disk.ext4"),
                "CreatedAt": created, "Labels": self.labels, "Scope": "local",
                "Options": {"size": str(self.size)}, "Status": {"Size": self.size}}


class Volumes:
    """The daemon's named volumes: a directory per volume under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def reclaim(self) -> None:
        """At start-up: remove what a crash left half-made (a directory with no record)."""
        if self.root.is_dir():
            for directory in self.root.iterdir():
                if not (directory / "volume.json").exists():
                    shutil.rmtree(directory, ignore_errors=True)

    def directory(self, name: str) -> Path:
        return self.root / name

    def get(self, name: str) -> Volume:
        try:
            record = json.loads((self.directory(name) / "volume.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such volume: {name}") from None
        return Volume(record["name"], record["created"], record["size"], record.get("labels", {}),
                      record.get("anonymous", False))

    def list(self) -> list[Volume]:
        if not self.root.is_dir():
            return []
        found = [self.get(d.name) for d in sorted(self.root.iterdir()) if (d / "volume.json").exists()]
        return sorted(found, key=lambda v: v.name)

    def create(self, name: str = "", labels: dict[str, str] | None = None, options: dict[str, str] | None = None,
               ) -> Volume:
        """The volume ``name``, recorded now if new (docker's create is idempotent); "" names an anonymous one."""
        options = dict(options or {})
        size = storage.parse_size(options.pop("size"), "volume") if "size" in options else DEFAULT_SIZE
        if options:
            raise InvalidArgument(f"unknown volume option {sorted(options)[0]!r}: only size=SIZE is supported")
        anonymous = not name
        name = name or secrets.token_hex(32)
        if not NAME.fullmatch(name):
            raise InvalidArgument(f"invalid volume name {name!r}: only {NAME.pattern!r} are allowed")
        try:
            return self.get(name)
        except NotFound:
            pass
        volume = Volume(name, time.time(), size, dict(labels or {}), anonymous)
        directory = self.directory(name)
        record = {"name": name, "created": volume.created, "size": size, "labels": volume.labels,
                  "anonymous": anonymous}
        scratch = directory / ".volume.json"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with scratch.open("w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            scratch.replace(directory / "volume.json")
        except OSError as err:
            shutil.rmtree(directory, ignore_errors=True)
            raise StorageError(f"cannot create volume {name}: {err.strerror or err}") from err
        return volume

    async def disk(self, volume: Volume) -> Path:
        """The volume's disk, made on its first use."""
        path = self.directory(volume.name) / "disk.ext4"
        if not path.exists():
            await storage.create(path, volume.size)
        return path

    def remove(self, name: str) -> None:
        self.get(name)
        shutil.rmtree(self.directory(name), ignore_errors=True)
