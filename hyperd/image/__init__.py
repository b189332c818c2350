"""Container images: OCI blobs, their SQLite index and the read-only disks pods boot from.

``store.ImageStore`` is the entry point; ``layers`` applies OCI layer tarballs safely,
``disk`` flattens an image's layers into the erofs disk hyperstart mounts, and
``busybox`` builds the first image from the host's busybox-static.

Every error raised by this package derives from ``ImageError``:

    ImageError                    root; the daemon will later re-parent it under its own root
    ├── ImageNotFound             no image matches a reference           (.reference)
    ├── ImageInUse                a removal refused: containers or other names use the image   (.image_id, .forceable)
    ├── InvalidReference          a reference that is not name[:tag][@digest] or an id   (.reference, .reason)
    ├── InvalidLayer              a layer tarball that is malformed or unsafe            (.entry, .reason)
    ├── InvalidArchive            a save/load archive that is malformed or inconsistent
    ├── CorruptBlob               stored content that no longer matches its digest       (.digest, .reason)
    ├── RegistryError             a registry refused, failed or sent bad content   (.registry, .reference, .code)
    │   └── ManifestUnknown       the registry has no such repository, tag or digest
    └── DiskError                 the erofs disk could not be built     (.argv, .output of mkfs.erofs)
"""

from __future__ import annotations

from collections.abc import Sequence


class ImageError(Exception):
    """Root of every error raised by ``hyperd.image``."""


class ImageNotFound(ImageError):
    def __init__(self, reference: str) -> None:
        # Docker's wording: users and scripts match on it.
        super().__init__(f"No such image: {reference}")
        self.reference = reference


class ImageInUse(ImageError):
    """Docker's 409 conflict on ``rmi``; ``forceable`` tells whether ``force`` would have lifted it."""

    def __init__(self, message: str, image_id: str, *, forceable: bool) -> None:
        # Docker's wording after "conflict: ": users and scripts match on it.
        super().__init__(f"conflict: {message}")
        self.image_id = image_id
        self.forceable = forceable


class InvalidReference(ImageError):
    def __init__(self, reference: str, reason: str = "") -> None:
        # Docker's wording, with its detail after a colon when there is one.
        super().__init__(f"invalid reference format: {reason}" if reason else "invalid reference format")
        self.reference = reference
        self.reason = reason


class InvalidLayer(ImageError):
    """A layer was refused; ``entry`` is the offending tar member's name, if any."""

    def __init__(self, reason: str, entry: str | None = None) -> None:
        where = f'entry "{entry}" ' if entry is not None else ""
        super().__init__(f"layer rejected: {where}{reason}")
        self.reason = reason
        self.entry = entry


class InvalidArchive(ImageError):
    """An archive given to ``load`` is malformed or contradicts itself; the message names the member."""


class CorruptBlob(ImageError):
    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"blob {digest} is corrupt: {reason}")
        self.digest = digest
        self.reason = reason


class RegistryError(ImageError):
    """A pull failed; ``registry`` is ``host[:port]``, ``code`` the distribution error code when one was sent."""

    def __init__(self, message: str, *, registry: str = "", reference: str = "", code: str = "") -> None:
        super().__init__(message)
        self.registry = registry
        self.reference = reference
        self.code = code


class ManifestUnknown(RegistryError):
    """The registry answered that the repository, tag or digest does not exist."""


class DiskError(ImageError):
    """Building an image disk failed; carries the command and what it printed."""

    def __init__(self, message: str, argv: Sequence[str] = (), output: str = "") -> None:
        super().__init__(f"{message}\n{output.strip()}" if output.strip() else message)
        self.argv = tuple(argv)
        self.output = output


__all__ = ["CorruptBlob", "DiskError", "ImageError", "ImageInUse", "ImageNotFound", "InvalidLayer",
           "InvalidReference", "ManifestUnknown", "RegistryError"]
