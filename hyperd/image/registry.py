"""Pulling images from OCI/Docker registries, following the OCI distribution spec.

One ``Registry`` per registry host talks HTTP through aiohttp: manifests by tag or digest
(OCI and Docker schema 2, indexes and manifest lists resolved to one platform), blobs
streamed into the store's staging files, anonymous access and the Bearer token flow
(a 401 names a token realm; the token is fetched, cached per scope and the request retried).

Nothing a registry sends is trusted: manifests are size-bounded and, like every blob, checked
against their digest before use; layer content is also checked against the config's diff_ids.
Plain HTTP is used only for loopback registries.

``pull`` records the image with ``ImageStore.record``; a failed pull leaves no rows, only
blobs that were verified against their digest (the next pull reuses them).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from hyperd.image import ImageError, ManifestUnknown, RegistryError
from hyperd.image.blobs import Staged
from hyperd.image.store import Image, ImageStore, Layer, Reference, parse_reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
GZIP_LAYERS = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")
TAR_LAYERS = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")

MAX_MANIFEST = 4 << 20
"""Bytes; as containerd and the distribution spec's recommendation."""
MAX_CONFIG = 8 << 20
MAX_TOKEN = 1 << 20
MAX_ERROR_BODY = 64 << 10
CHUNK = 1 << 20
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


# ---------------------------------------------------------------------------------------------
# Pure protocol pieces


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``, matched against an index's descriptors."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(*parts)

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def matches(self, descriptor: dict[str, Any]) -> bool:
        found = descriptor.get("platform")
        if not isinstance(found, dict):
            return False
        if (found.get("os"), found.get("architecture")) != (self.os, self.architecture):
            return False
        return not self.variant or found.get("variant") == self.variant


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate: Bearer realm="...",service="...",scope="..."`` -> ("bearer", {realm: ...}).

    The scheme is lower-cased, parameter names too; quoted values may hold commas and escapes.
    A header that does not parse gives its scheme and no parameters.
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            return scheme.lower(), {}
        name, quoted, bare = match.groups()
        params[name.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        position = match.end()
    return scheme.lower(), params


def select_platform(index: dict[str, Any], platform: Platform) -> dict[str, Any]:
    """The descriptor for ``platform`` in an OCI index or Docker manifest list."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError("manifest index has no manifests list")
    for descriptor in manifests:
        if isinstance(descriptor, dict) and platform.matches(descriptor):
            return descriptor
    offered = sorted({str(Platform(**{key: str(d["platform"].get(key) or "")
                                      for key in ("os", "architecture", "variant")}))
                      for d in manifests if isinstance(d, dict) and isinstance(d.get("platform"), dict)})
    raise ImageError(f"no matching manifest for {platform} in the manifest list entries"
                     f" (it has {', '.join(offered) or 'none'})")


def locate(reference: Reference) -> tuple[str, str]:
    """(registry host[:port], repository path) as Docker splits them: ``busybox`` is ``library/busybox`` on Hub."""
    first, slash, rest = reference.repository.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first, rest
    return DOCKER_HUB, reference.repository if slash else f"library/{reference.repository}"


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine (127.0.0.0/8, ::1, localhost): plain HTTP is allowed only there."""
    if host.startswith("["):
        address = host[1:host.find("]")]
    else:
        address = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _descriptor(value: object, what: str) -> tuple[str, int, str]:
    if not isinstance(value, dict):
        raise ImageError(f"manifest: {what} is not a descriptor")
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(f"manifest: {what} has an unsupported digest {digest!r} (only sha256)")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"manifest: {what} has no valid size")
    return digest, size, media_type if isinstance(media_type, str) else ""


class _Content:
    """The diff_id and uncompressed size of a layer blob, computed as its bytes go by."""

    def __init__(self, media_type: str) -> None:
        if media_type not in GZIP_LAYERS + TAR_LAYERS:
            raise ImageError(f"unsupported layer media type {media_type!r}")
        self.gzip = media_type in GZIP_LAYERS
        self._inflate = zlib.decompressobj(wbits=31) if self.gzip else None
        self._hash = hashlib.sha256()
        self._error: ImageError | None = None
        self.size = 0

    def feed(self, data: bytes) -> None:
        # A bad stream is reported by finish(), after the blob's digest was checked: a corrupt
        # download should say so, not that its (corrupt) gzip is malformed.
        while self._inflate is not None and data and self._error is None:
            if self._inflate.eof:
                # A new gzip member (concatenated gzip is valid and some tools write it).
                self._inflate = zlib.decompressobj(wbits=31)
            try:
                plain = self._inflate.decompress(data)
            except zlib.error as err:
                self._error = ImageError(f"layer is not valid gzip: {err}")
                return
            self._add(plain)
            data = self._inflate.unused_data if self._inflate.eof else b""
        if self._inflate is None:
            self._add(data)

    def _add(self, plain: bytes) -> None:
        self._hash.update(plain)
        self.size += len(plain)

    def finish(self) -> str:
        if self._error is not None:
            raise self._error
        if self._inflate is not None:
            if not self._inflate.eof:
                raise ImageError("layer is truncated gzip")
            self._add(self._inflate.flush())
        return f"sha256:{self._hash.hexdigest()}"


# ---------------------------------------------------------------------------------------------
# The client


class Registry:
    """One registry host, reached through an aiohttp session owned by the caller."""

    def __init__(self, session: aiohttp.ClientSession, host: str) -> None:
        self.session = session
        self.host = host
        endpoint = DOCKER_HUB_API if host == DOCKER_HUB else host
        self.base = f"{'http' if is_loopback(host) else 'https'}://{endpoint}/v2/"
        self._tokens: dict[str, str] = {}

    async def _send(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self.session.get(url, headers=headers)
        except aiohttp.ClientConnectorError as err:
            reason = os.strerror(err.os_error.errno) if err.os_error.errno else str(err.os_error)
            raise RegistryError(f"cannot reach registry {self.host}: {reason}", registry=self.host) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise RegistryError(f"registry {self.host}: {type(err).__name__}: {err}".rstrip(": "),
                                registry=self.host) from err

    async def get(self, path: str, repository: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """GET ``/v2/<path>``, answering one Bearer challenge; the caller reads and releases the response."""
        scope = f"repository:{repository}:pull"
        retried = False
        while True:
            sent = dict(headers or {})
            if scope in self._tokens:
                sent["Authorization"] = f"Bearer {self._tokens[scope]}"
            response = await self._send(self.base + path, sent)
            if response.status != 401 or retried:
                return response
            scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            if scheme != "bearer" or "realm" not in params:
                return response
            response.release()
            self._tokens[scope] = await self._token(params, scope)
            retried = True

    async def _token(self, challenge: dict[str, str], scope: str) -> str:
        realm = challenge["realm"]
        host = URL(realm)
        if host.scheme != "https" and not (host.scheme == "http" and is_loopback(host.host or "")):
            raise RegistryError(f"registry {self.host}: refusing token realm {realm} (not HTTPS)", registry=self.host)
        query = {"scope": challenge.get("scope") or scope}
        if "service" in challenge:
            query["service"] = challenge["service"]
        try:
            async with self.session.get(realm, params=query) as response:
                body = await response.content.read(MAX_TOKEN)
                if response.status != 200:
                    raise RegistryError(f"registry {self.host}: token server {realm} answered {response.status}",
                                        registry=self.host)
        except aiohttp.ClientError as err:
            raise RegistryError(f"registry {self.host}: cannot get a token from {realm}: {err}",
                                registry=self.host) from err
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.host}: token server {realm} sent no token", registry=self.host)
        return token

    async def _fail(self, response: aiohttp.ClientResponse, repository: str, reference: str) -> RegistryError:
        """The registry's error answer as one line."""
        body = await response.content.read(MAX_ERROR_BODY)
        response.release()
        code = message = ""
        try:
            first = json.loads(body)["errors"][0]
            code, message = str(first.get("code") or ""), str(first.get("message") or "")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
        separator = "@" if reference.startswith("sha256:") else ":"
        name = f"{repository}{separator}{reference}"
        kinds = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"}
        if code in kinds or (not code and response.status == 404):
            return ManifestUnknown(f"{message or code.lower().replace('_', ' ') or 'not found'}: "
                                   f"registry {self.host} has no {name}", registry=self.host, reference=name,
                                   code=code)
        if response.status in (401, 403):
            return RegistryError(f"{message or 'unauthorized'}: registry {self.host} refused access to {name}",
                                 registry=self.host, reference=name, code=code)
        detail = f": {message}" if message else ""
        return RegistryError(f"registry {self.host} answered {response.status} {response.reason or ''}".rstrip()
                             + f" for {name}{detail}", registry=self.host, reference=name, code=code)

    async def _bounded(self, response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        if response.content_length is not None and response.content_length > limit:
            response.release()
            raise RegistryError(f"registry {self.host}: {what} is {response.content_length} bytes, over the "
                                f"{limit >> 20} MiB limit", registry=self.host)
        try:
            data = await response.content.read(limit + 1)
            while len(data) <= limit and (more := await response.content.read(limit + 1 - len(data))):
                data += more
        except aiohttp.ClientError as err:
            raise RegistryError(f"registry {self.host}: reading {what}: {err}", registry=self.host) from err
        finally:
            response.release()
        if len(data) > limit:
            raise RegistryError(f"registry {self.host}: {what} is over the {limit >> 20} MiB limit",
                                registry=self.host)
        return data

    async def manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(content, media type, digest) of a manifest by tag or digest, verified when the digest is known."""
        response = await self.get(f"{repository}/manifests/{reference}", repository, {"Accept": ACCEPT})
        if response.status != 200:
            raise await self._fail(response, repository, reference)
        header_type = response.content_type
        claimed = response.headers.get("Docker-Content-Digest", "")
        data = await self._bounded(response, MAX_MANIFEST, f"manifest {repository}:{reference}")
        digest = _digest(data)
        expected = reference if reference.startswith("sha256:") else claimed if _DIGEST.fullmatch(claimed) else ""
        if expected and digest != expected:
            raise RegistryError(f"registry {self.host} sent a manifest for {repository}@{expected} whose content "
                                f"hashes to {digest}", registry=self.host, reference=f"{repository}@{expected}")
        try:
            document = json.loads(data)
        except ValueError as err:
            raise RegistryError(f"registry {self.host}: manifest {repository}:{reference} is not JSON",
                                registry=self.host) from err
        if not isinstance(document, dict):
            raise RegistryError(f"registry {self.host}: manifest {repository}:{reference} is not a JSON object",
                                registry=self.host)
        media_type = document.get("mediaType") or header_type
        if document.get("schemaVersion") == 1 or media_type in SCHEMA1:
            raise RegistryError(f"{repository}:{reference} on registry {self.host} is a Docker schema 1 image, "
                                "which is not supported: push it again with a current client", registry=self.host)
        if not isinstance(media_type, str):
            media_type = ""
        if media_type not in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
            if "manifests" in document:
                media_type = OCI_INDEX
            elif "layers" in document:
                media_type = OCI_MANIFEST
            else:
                raise RegistryError(f"registry {self.host}: {repository}:{reference} has the unsupported manifest "
                                    f"media type {media_type!r}", registry=self.host)
        return data, media_type, digest

    async def small_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A blob read into memory (a config), verified against its digest."""
        response = await self.get(f"{repository}/blobs/{digest}", repository)
        if response.status != 200:
            raise await self._fail(response, repository, digest)
        data = await self._bounded(response, limit, f"blob {digest}")
        if _digest(data) != digest:
            raise RegistryError(f"registry {self.host} sent blob {digest} whose content hashes to {_digest(data)}",
                                registry=self.host)
        return data

    async def blob(self, repository: str, digest: str, size: int, staged: Staged, content: _Content) -> None:
        """Stream a blob into ``staged`` (never whole in memory), feeding ``content``; checks size and digest."""
        response = await self.get(f"{repository}/blobs/{digest}", repository)
        if response.status != 200:
            raise await self._fail(response, repository, digest)
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                if staged.size + len(chunk) > size:
                    raise RegistryError(f"registry {self.host} sent more than the {size} bytes of blob {digest}",
                                        registry=self.host)
                staged.write(chunk)
                content.feed(chunk)
        except aiohttp.ClientError as err:
            raise RegistryError(f"registry {self.host}: downloading blob {digest}: {err}",
                                registry=self.host) from err
        finally:
            response.release()
        if staged.size != size:
            raise RegistryError(f"registry {self.host} sent {staged.size} of the {size} bytes of blob {digest}",
                                registry=self.host)
        if staged.digest != digest:
            raise RegistryError(f"registry {self.host} sent blob {digest} whose content hashes to {staged.digest}",
                                registry=self.host)


# ---------------------------------------------------------------------------------------------
# Pull


@dataclass(frozen=True)
class Pulled:
    image: Image
    digest: str        # of what the reference names: the index when there is one
    new: bool          # False when the store had the image already


async def pull(store: ImageStore, reference: str, platform: Platform | None = None,
               session: aiohttp.ClientSession | None = None) -> Pulled:
    """Pull ``reference`` into ``store`` and tag it (unless it names a digest)."""
    ref = parse_reference(reference)
    host, repository = locate(ref)
    if session is None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as own:
            return await _pull(store, Registry(own, host), ref, repository, platform or Platform())
    return await _pull(store, Registry(session, host), ref, repository, platform or Platform())


async def _pull(store: ImageStore, registry: Registry, ref: Reference, repository: str,
                platform: Platform) -> Pulled:
    wanted = ref.digest or ref.tag or "latest"
    tag = None if ref.digest is not None else str(Reference(ref.repository, ref.tag))
    data, media_type, top = await registry.manifest(repository, wanted)
    if media_type in (OCI_INDEX, DOCKER_LIST):
        digest, _, _ = _descriptor(select_platform(json.loads(data), platform), f"{platform} manifest")
        data, media_type, _ = await registry.manifest(repository, digest)
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise RegistryError(f"registry {registry.host}: {repository}@{digest} is not an image manifest",
                                registry=registry.host)
    manifest = json.loads(data)
    config_digest, _, _ = _descriptor(manifest.get("config"), "config")
    descriptors = manifest.get("layers")
    if not isinstance(descriptors, list) or not descriptors:
        raise ImageError(f"manifest of {ref}: no layers")
    wanted_layers = [_descriptor(item, f"layer {index}") for index, item in enumerate(descriptors)]
    config = await registry.small_blob(repository, config_digest, MAX_CONFIG)
    try:
        present = await asyncio.to_thread(store.resolve, config_digest)
    except ImageError:
        present = None
    if present is not None:
        if tag is not None:
            present = await asyncio.to_thread(store.tag, present, tag)
        return Pulled(present, top, new=False)
    layers: list[Layer] = []
    total = 0
    for digest, size, layer_type in wanted_layers:
        content = _Content(layer_type)
        if digest in store.blobs:
            await asyncio.to_thread(_hash_file, store, digest, content)
        else:
            with store.blobs.staging() as staged:
                await registry.blob(repository, digest, size, staged, content)
                await asyncio.to_thread(store.blobs.commit, staged, digest)
        layers.append(Layer(content.finish(), digest, layer_type, size))
        total += content.size
    image = await asyncio.to_thread(store.record, data, config, layers, total, tag)
    return Pulled(image, top, new=True)


def _hash_file(store: ImageStore, digest: str, content: _Content) -> None:
    with store.blobs.path(digest).open("rb") as blob:
        while chunk := blob.read(CHUNK):
            content.feed(chunk)


__all__ = ["Platform", "Pulled", "Registry", "is_loopback", "locate", "parse_challenge", "pull", "select_platform"]
