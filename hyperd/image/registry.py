"""Pulling images from OCI/Docker registries, following the OCI distribution spec.

One ``Registry`` per registry host talks HTTP through aiohttp: manifests by tag or digest
(OCI and Docker schema 2, indexes and manifest lists resolved to one platform) and blobs
streamed into the store.  Every request takes one path (``Registry._call``): the endpoints
in order (Docker Hub's mirrors before the Hub, HTTPS before HTTP for an insecure registry),
bounded retries with backoff on transient failures, then ``Registry._open`` answering the
registry's challenge, HTTP Basic or the Bearer token flow (tokens cached per scope until they
expire).  ``login`` checks credentials through the same path.

Nothing a registry sends is trusted: manifests are size-bounded and, like every blob, checked
against their digest before use; layers are decompressed, hashed against the config's
diff_ids and refused if unsafe (``layers.validate_layer``) while they download (``download.py``).  Plain HTTP is
used only for loopback registries and those the daemon was told are insecure.

Layers download concurrently into ``.partial-<hex>`` files that a failed pull leaves behind and
the next one resumes (``Range``).  ``pull`` records the image with ``ImageStore.record`` once
every layer is in; a failed pull leaves no rows, only verified blobs and partial downloads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from yarl import URL

from hyperd.image import ImageError, ManifestUnknown, RegistryError
from hyperd.image.blobs import DIGEST
from hyperd.image.download import CHUNK, Download, Progress, disk_error, inspect_blob
from hyperd.image.layers import Compression
from hyperd.image.reference import HUB_ALIASES, server_host, split_domain
from hyperd.image.store import Image, ImageStore, Layer, Reference, digest_of, parse_reference

if TYPE_CHECKING:
    pass

log = logging.getLogger("hyperd")
T = TypeVar("T")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
GZIP_LAYERS = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip")
TAR_LAYERS = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar")
ZSTD_LAYERS = ("application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.zstd")
LAYER_COMPRESSION = {**dict.fromkeys(TAR_LAYERS, Compression.NONE), **dict.fromkeys(GZIP_LAYERS, Compression.GZIP),
                     **dict.fromkeys(ZSTD_LAYERS, Compression.ZSTD)}

MAX_MANIFEST = 4 << 20
"""Bytes; as containerd and the distribution spec's recommendation."""
MAX_CONFIG = 8 << 20
MAX_TOKEN = 1 << 20
MAX_ERROR_BODY = 64 << 10
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)

ATTEMPTS = 4
RETRY_DELAY = 0.2
"""Seconds before the second attempt at a request, doubled before each next one."""
TRANSIENT = frozenset({429, 500, 502, 503, 504})
TOKEN_LIFETIME = 60
"""Seconds a token lives when the token server does not say (the token spec's default)."""

DOCKER_HUB_API = "registry-1.docker.io"

_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(?:\d+|\*)")


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


@dataclass(frozen=True)
class Credentials:
    """A registry login: a username and password, or the identity token a login returned."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    @property
    def basic(self) -> str:
        """The ``Authorization`` header value of HTTP Basic."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class RegistryOptions:
    """dockerd's registry settings: ``registry-mirrors``, ``insecure-registries``, ``max-concurrent-downloads``."""

    mirrors: tuple[str, ...] = ()
    """Base URLs (``https://mirror.example``) tried in order before Docker Hub, for its images only."""
    insecure: tuple[str, ...] = ()
    """``host[:port]`` or CIDR: registries reached over HTTPS without a certificate check, else plain HTTP."""
    max_concurrent_downloads: int = 3


@dataclass(frozen=True)
class Endpoint:
    """Where a registry's API is reached; ``base`` ends in ``/v2/``."""

    base: str
    verify: bool = True    # check the TLS certificate
    mirror: bool = False   # any failure moves on to the next endpoint


def endpoints(host: str, options: RegistryOptions, *, mirrors: bool = True) -> tuple[Endpoint, ...]:
    """The endpoints to try for registry ``host``, in order, chosen as dockerd chooses them.

    Docker Hub's images go to the mirrors first, then to the Hub.  An insecure registry is tried
    over HTTPS without checking its certificate, then over plain HTTP; a loopback one over HTTP;
    any other over verified HTTPS only, never downgraded.
    """
    found: list[Endpoint] = []
    if host in HUB_ALIASES:
        if mirrors:
            found += [Endpoint(f"{mirror.rstrip('/')}/v2/", mirror=True,
                               verify=not is_insecure(URL(mirror).host_port_subcomponent or "", options.insecure))
                      for mirror in options.mirrors]
        host = DOCKER_HUB_API
    if is_loopback(host):
        found.append(Endpoint(f"http://{host}/v2/"))
    elif is_insecure(host, options.insecure):
        found += [Endpoint(f"https://{host}/v2/", verify=False), Endpoint(f"http://{host}/v2/")]
    else:
        found.append(Endpoint(f"https://{host}/v2/"))
    return tuple(found)


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
    return split_domain(reference.repository)


def _address(host: str) -> str:
    """The name or IP address of ``host[:port]``, IPv6 without its brackets."""
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine (127.0.0.0/8, ::1, localhost): plain HTTP is allowed there."""
    address = _address(host)
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure: Sequence[str]) -> bool:
    """Whether ``host[:port]`` is listed in ``insecure``, as itself or by a CIDR holding its IP address.

    Unlike dockerd, a name is not resolved to match a CIDR: whether TLS is checked must not
    depend on what a DNS answer says.
    """
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(_address(host))
    except ValueError:
        address = None
    for entry in insecure:
        if entry == host:
            return True
        if address is not None and "/" in entry:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
    return False


def parse_descriptor(value: object, what: str) -> tuple[str, int, str]:
    if not isinstance(value, dict):
        raise ImageError(f"manifest: {what} is not a descriptor")
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ImageError(f"manifest: {what} has an unsupported digest {digest!r} (only sha256)")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"manifest: {what} has no valid size")
    return digest, size, media_type if isinstance(media_type, str) else ""


def _error_message(body: bytes) -> tuple[str, str]:
    """(code, message) of a registry's or token server's error document, empty when there is none."""
    try:
        document = json.loads(body)
    except ValueError:
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    errors = document.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("code") or ""), str(errors[0].get("message") or "")
    # Docker Hub's token server: {"details": "incorrect username or password"}.
    return "", str(document.get("details") or document.get("message") or "")


def _expiry(document: dict[str, Any]) -> float:
    """When a token from the token server's answer expires (``issued_at`` + ``expires_in``), in time.time()."""
    lifetime = document.get("expires_in")
    if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = TOKEN_LIFETIME
    issued = time.time()
    with contextlib.suppress(KeyError, TypeError, ValueError):
        issued = datetime.fromisoformat(document["issued_at"]).timestamp()
    return issued + lifetime


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes, or ``limit + 1`` of them when it is longer."""
    data = b""
    while len(data) <= limit and (more := await response.content.read(limit + 1 - len(data))):
        data += more
    return data


async def _to_thread(function: Callable[..., T], *args: Any) -> T:
    """``asyncio.to_thread`` that a cancelled caller still waits for: the thread writes files the
    caller's cleanup would otherwise close under it."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


# ---------------------------------------------------------------------------------------------
# The client


class _Failure(RegistryError):
    """A failure the request path acts on: a ``transient`` one is tried again after a pause, an
    ``unreachable`` endpoint (no HTTP exchange at all) is left for the next one."""

    def __init__(self, message: str, *, registry: str, transient: bool = True, unreachable: bool = False) -> None:
        super().__init__(message, registry=registry)
        self.transient = transient
        self.unreachable = unreachable


class Registry:
    """One registry host, reached through an aiohttp session owned by the caller.

    ``credentials`` go to the registry and its token server, never to a mirror: a mirror is a
    cache with its own upstream credentials, and a Hub password has no business elsewhere.
    """

    def __init__(self, session: aiohttp.ClientSession, host: str, credentials: Credentials | None = None,
                 options: RegistryOptions = RegistryOptions(), *, mirrors: bool = True) -> None:
        self.session = session
        self.host = host
        self.credentials = credentials
        self.options = options
        self.endpoints = endpoints(host, options, mirrors=mirrors)
        self._current = 0
        self._challenges: dict[str, tuple[str, dict[str, str]]] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._token_lock = asyncio.Lock()

    # -- the request path --------------------------------------------------------------------------

    async def _call(self, operation: Callable[[Endpoint], Awaitable[T]]) -> T:
        """Run ``operation`` against the current endpoint, as its failure says: a mirror's failure, or an
        endpoint that could not be reached, moves on to the next endpoint; a transient one is tried
        again, ``ATTEMPTS`` times at most with exponential backoff; anything else is final."""
        attempt = 1
        while True:
            index = self._current
            endpoint = self.endpoints[index]
            try:
                return await operation(endpoint)
            except RegistryError as err:
                failure = err if isinstance(err, _Failure) else None
                if index + 1 < len(self.endpoints) and (endpoint.mirror or (failure and failure.unreachable)):
                    log.info("%s; trying %s", err, self.endpoints[index + 1].base)
                    # Downloads share the endpoint: only the first to see it fail moves everyone on.
                    if self._current == index:
                        self._current = index + 1
                    attempt = 1
                    continue
                if failure is None or not failure.transient or attempt == ATTEMPTS:
                    raise
            await asyncio.sleep(RETRY_DELAY * 2 ** (attempt - 1))
            attempt += 1

    def _credentials(self, endpoint: Endpoint) -> Credentials | None:
        return None if endpoint.mirror else self.credentials

    async def _open(self, endpoint: Endpoint, path: str, scope: str,
                    headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """GET ``path`` under ``endpoint``, answering one authentication challenge.

        A cached token refused with 401 is fetched again, once.  The caller reads and releases
        the response, whatever its status.
        """
        retried = False
        while True:
            sent = dict(headers or {})
            if authorization := await self._authorization(endpoint, scope):
                sent["Authorization"] = authorization
            response = await self._send(endpoint, path, sent)
            if response.status != 401 or retried:
                return response
            scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            credentials = self._credentials(endpoint)
            if not ((scheme == "bearer" and "realm" in params)
                    or (scheme == "basic" and credentials is not None and credentials.username)):
                return response
            response.release()
            self._challenges[endpoint.base] = (scheme, params)
            self._tokens.pop((endpoint.base, scope), None)
            retried = True

    async def _send(self, endpoint: Endpoint, path: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self.session.get(endpoint.base + path, headers=headers, ssl=endpoint.verify)
        except aiohttp.ClientSSLError as err:
            raise _Failure(f"registry {self.host}: TLS with {URL(endpoint.base).origin()} failed: {err}",
                           registry=self.host, transient=False, unreachable=True) from err
        except aiohttp.ClientConnectorError as err:
            reason = os.strerror(err.os_error.errno) if err.os_error.errno else str(err.os_error)
            raise _Failure(f"cannot reach registry {self.host}: {reason}", registry=self.host,
                           unreachable=True) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _Failure(f"registry {self.host}: {type(err).__name__}: {err}".rstrip(": "), registry=self.host,
                           unreachable=True) from err

    async def _authorization(self, endpoint: Endpoint, scope: str) -> str | None:
        """The ``Authorization`` header for the endpoint's last challenge, fetching a token if need be."""
        challenge = self._challenges.get(endpoint.base)
        if challenge is None:
            return None
        scheme, params = challenge
        credentials = self._credentials(endpoint)
        if scheme == "basic":
            return credentials.basic if credentials is not None else None
        key = (endpoint.base, scope)
        # One token request per scope however many downloads need it at once.
        async with self._token_lock:
            token = self._tokens.get(key)
            if token is None or token[1] <= time.time():
                token = self._tokens[key] = await self._token(params, scope, credentials)
        return f"Bearer {token[0]}"

    async def _token(self, challenge: dict[str, str], scope: str,
                     credentials: Credentials | None) -> tuple[str, float]:
        """(token, expiry) from the challenge's token server, as Docker asks for one."""
        realm = challenge["realm"]
        url = URL(realm)
        insecure = is_insecure(url.host_port_subcomponent or "", self.options.insecure)
        if url.scheme != "https" and not (url.scheme == "http" and (is_loopback(url.host or "") or insecure)):
            raise RegistryError(f"registry {self.host}: refusing token realm {realm} (not HTTPS)", registry=self.host)
        query = {"service": challenge["service"]} if "service" in challenge else {}
        if wanted := challenge.get("scope") or scope:
            query["scope"] = wanted
        if credentials is not None and credentials.identity_token:
            # OAuth2 refresh, as docker does with the identity token a login returned.
            form = {**query, "grant_type": "refresh_token", "refresh_token": credentials.identity_token,
                    "client_id": "hyper"}
            request = self.session.post(realm, data=form, ssl=not insecure)
        elif credentials is not None:
            request = self.session.get(realm, params={**query, "account": credentials.username}, ssl=not insecure,
                                       headers={"Authorization": credentials.basic})
        else:
            request = self.session.get(realm, params=query, ssl=not insecure)
        try:
            async with request as response:
                body = await _read(response, MAX_TOKEN)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _Failure(f"registry {self.host}: cannot get a token from {realm}: {err}",
                           registry=self.host) from err
        if status in (401, 403):
            raise self._refused(_error_message(body)[1], credentials, realm)
        if status != 200:
            raise _Failure(f"registry {self.host}: token server {realm} answered {status}", registry=self.host,
                           transient=status in TRANSIENT)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
        if not isinstance(document, dict) or not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.host}: token server {realm} sent no token", registry=self.host)
        return token, _expiry(document)

    def _refused(self, message: str, credentials: Credentials | None, where: str = "") -> RegistryError:
        # Docker's wording starts with the error code, which scripts match on: "unauthorized: ...".
        message = message if message.lower().startswith("unauthorized") else \
            f"unauthorized: {message}" if message else "unauthorized"
        if credentials is None:
            return RegistryError(f"{message}: registry {self.host} refused access"
                                 + (f" to {where}" if where else ""), registry=self.host, code="UNAUTHORIZED")
        user = f' for user "{credentials.username}"' if credentials.username else ""
        return RegistryError(f"{message}: registry {self.host} refused the credentials{user}",
                             registry=self.host, code="UNAUTHORIZED")

    async def _fail(self, response: aiohttp.ClientResponse, name: str = "") -> RegistryError:
        """The registry's error answer as one line; ``name`` is what was asked for."""
        try:
            body = await _read(response, MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        finally:
            response.release()
        code, message = _error_message(body)
        status = response.status
        if name and (code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN") or (not code and status == 404)):
            return ManifestUnknown(f"{message or code.lower().replace('_', ' ') or 'not found'}: "
                                   f"registry {self.host} has no {name}", registry=self.host, reference=name,
                                   code=code)
        if status == 401 and response.request_info.headers.get("Authorization", "").startswith("Basic "):
            return self._refused(message, self.credentials)
        if status in (401, 403):
            return self._refused(message, None, name)
        text = (f"registry {self.host} answered {status} {response.reason or ''}".rstrip()
                + (f" for {name}" if name else "") + (f": {message}" if message else ""))
        if status in TRANSIENT:
            return _Failure(text, registry=self.host)
        return RegistryError(text, registry=self.host, reference=name, code=code)

    async def _bounded(self, response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        try:
            if response.content_length is not None and response.content_length > limit:
                raise RegistryError(f"registry {self.host}: {what} is {response.content_length} bytes, over the "
                                    f"{limit >> 20} MiB limit", registry=self.host)
            data = await _read(response, limit)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _Failure(f"registry {self.host}: reading {what}: {err}", registry=self.host) from err
        finally:
            response.release()
        if len(data) > limit:
            raise RegistryError(f"registry {self.host}: {what} is over the {limit >> 20} MiB limit",
                                registry=self.host)
        return data

    # -- operations --------------------------------------------------------------------------------

    async def check(self) -> None:
        """``GET /v2/`` with the credentials: what ``docker login`` does to verify them."""
        async def attempt(endpoint: Endpoint) -> None:
            response = await self._open(endpoint, "", "")
            if response.status != 200:
                raise await self._fail(response)
            response.release()
        await self._call(attempt)

    async def manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(content, media type, digest) of a manifest by tag or digest, verified when the digest is known."""
        separator = "@" if reference.startswith("sha256:") else ":"
        name = f"{repository}{separator}{reference}"

        async def attempt(endpoint: Endpoint) -> tuple[bytes, str, str]:
            response = await self._open(endpoint, f"{repository}/manifests/{reference}", _scope(repository),
                                        {"Accept": ACCEPT})
            if response.status != 200:
                raise await self._fail(response, name)
            header_type = response.content_type
            claimed = response.headers.get("Docker-Content-Digest", "")
            data = await self._bounded(response, MAX_MANIFEST, f"manifest {name}")
            digest = digest_of(data)
            expected = reference if reference.startswith("sha256:") else claimed if DIGEST.fullmatch(claimed) else ""
            if expected and digest != expected:
                raise RegistryError(f"registry {self.host} sent a manifest for {repository}@{expected} whose "
                                    f"content hashes to {digest}", registry=self.host,
                                    reference=f"{repository}@{expected}")
            return data, header_type, digest

        data, header_type, digest = await self._call(attempt)
        try:
            document = json.loads(data)
        except ValueError as err:
            raise RegistryError(f"registry {self.host}: manifest {name} is not JSON", registry=self.host) from err
        if not isinstance(document, dict):
            raise RegistryError(f"registry {self.host}: manifest {name} is not a JSON object", registry=self.host)
        media_type = document.get("mediaType") or header_type
        if document.get("schemaVersion") == 1 or media_type in SCHEMA1:
            raise RegistryError(f"{name} on registry {self.host} is a Docker schema 1 image, "
                                "which is not supported: push it again with a current client", registry=self.host)
        if not isinstance(media_type, str):
            media_type = ""
        if media_type not in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST):
            if "manifests" in document:
                media_type = OCI_INDEX
            elif "layers" in document:
                media_type = OCI_MANIFEST
            else:
                raise RegistryError(f"registry {self.host}: {name} has the unsupported manifest "
                                    f"media type {media_type!r}", registry=self.host)
        return data, media_type, digest

    async def small_blob(self, repository: str, digest: str, limit: int) -> bytes:
        """A blob read into memory (a config), verified against its digest."""
        async def attempt(endpoint: Endpoint) -> bytes:
            response = await self._open(endpoint, f"{repository}/blobs/{digest}", _scope(repository))
            if response.status != 200:
                raise await self._fail(response, f"{repository}@{digest}")
            data = await self._bounded(response, limit, f"blob {digest}")
            if digest_of(data) != digest:
                raise RegistryError(f"registry {self.host} sent blob {digest} whose content hashes to "
                                    f"{digest_of(data)}", registry=self.host)
            return data
        return await self._call(attempt)

    async def blob(self, repository: str, download: Download) -> None:
        """Stream a blob into ``download`` (never whole in memory), resuming where it stopped; checks its digest."""
        digest, staged = download.digest, download.staged

        async def attempt(endpoint: Endpoint) -> None:
            if download.received < download.size:
                headers = {"Range": f"bytes={download.received}-"} if download.received else {}
                response = await self._open(endpoint, f"{repository}/blobs/{digest}", _scope(repository), headers)
                try:
                    await self._receive(response, repository, download)
                finally:
                    response.release()
            await download.settle()
            if staged.digest != digest:
                found, resumed = staged.digest, download.resumed
                await download.restart()
                if resumed:
                    # The bytes kept from an earlier pull were damaged (a crash before they reached the disk).
                    raise _Failure(f"registry {self.host}: the partial download of blob {digest} was damaged",
                                   registry=self.host)
                raise RegistryError(f"registry {self.host} sent blob {digest} whose content hashes to {found}",
                                    registry=self.host)

        await self._call(attempt)

    async def _receive(self, response: aiohttp.ClientResponse, repository: str, download: Download) -> None:
        digest, size = download.digest, download.size
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match[1]) != download.received:
                await download.restart()
                raise _Failure(f"registry {self.host} answered a range request for blob {digest} with "
                               f"the wrong range", registry=self.host)
        elif response.status != 200:
            raise await self._fail(response, f"{repository}@{digest}")
        # A 200 to a range request: the registry ignores ranges, the blob comes whole again.  The
        # restart waits for the checker, so it follows the first read: aiohttp drops what it has
        # buffered once the connection fails, and a short body must still leave its bytes behind.
        restart = response.status == 200 and download.received > 0
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                if restart:
                    await download.restart()
                    restart = False
                if download.received + len(chunk) > size:
                    raise RegistryError(f"registry {self.host} sent more than the {size} bytes of blob {digest}",
                                        registry=self.host)
                await download.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _Failure(f"registry {self.host}: blob {digest} cut short at {download.received} of {size} bytes: "
                           f"{type(err).__name__}: {err}".rstrip(": "), registry=self.host) from err
        if download.received != size:
            raise _Failure(f"registry {self.host} sent {download.received} of the {size} bytes of blob {digest}",
                           registry=self.host)


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull"


async def login(host: str, credentials: Credentials, options: RegistryOptions = RegistryOptions(),
                session: aiohttp.ClientSession | None = None) -> None:
    """Check ``credentials`` with registry ``host`` as ``docker login`` does; RegistryError if refused.

    ``host`` may be a URL (``https://index.docker.io/v1/``, as docker clients send for the Hub).
    A registry that lets anyone in accepts any credentials, as with docker.
    """
    registry_host = server_host(host)
    if session is None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as own:
            await Registry(own, registry_host, credentials, options, mirrors=False).check()
    else:
        await Registry(session, registry_host, credentials, options, mirrors=False).check()


# ---------------------------------------------------------------------------------------------
# Pull


@dataclass(frozen=True)
class Pulled:
    image: Image
    digest: str        # of what the reference names: the index when there is one
    new: bool          # False when the reference already named this image


async def pull(store: ImageStore, reference: str, platform: Platform | None = None, *,
               credentials: Credentials | None = None, options: RegistryOptions = RegistryOptions(),
               progress: Callable[[dict[str, Any]], None] | None = None,
               session: aiohttp.ClientSession | None = None) -> Pulled:
    """Pull ``reference`` into ``store`` and tag it (unless it names a digest).

    ``progress`` receives Docker's JSON progress messages (the body of ``POST /images/create``).
    """
    ref = parse_reference(reference)
    host, repository = locate(ref)
    report = Progress(progress)
    if session is None:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as own:
            registry = Registry(own, host, credentials, options)
            return await _pull(store, registry, ref, repository, platform or Platform(), report)
    return await _pull(store, Registry(session, host, credentials, options), ref, repository,
                       platform or Platform(), report)


async def _pull(store: ImageStore, registry: Registry, ref: Reference, repository: str, platform: Platform,
                report: Progress) -> Pulled:
    wanted = ref.digest or ref.tag or "latest"
    tag = None if ref.digest is not None else str(Reference(ref.repository, ref.tag))
    report(f"Pulling from {repository}", wanted)
    data, media_type, top = await registry.manifest(repository, wanted)
    if media_type in (OCI_INDEX, DOCKER_LIST):
        digest, _, _ = parse_descriptor(select_platform(json.loads(data), platform), f"{platform} manifest")
        data, media_type, _ = await registry.manifest(repository, digest)
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise RegistryError(f"registry {registry.host}: {repository}@{digest} is not an image manifest",
                                registry=registry.host)
    manifest = json.loads(data)
    config_digest, _, _ = parse_descriptor(manifest.get("config"), "config")
    descriptors = manifest.get("layers")
    if not isinstance(descriptors, list) or not descriptors:
        raise ImageError(f"manifest of {ref}: no layers")
    wanted_layers = [parse_descriptor(item, f"layer {index}") for index, item in enumerate(descriptors)]
    for _, _, layer_type in wanted_layers:
        if layer_type not in LAYER_COMPRESSION:
            raise ImageError(f"unsupported layer media type {layer_type!r}")
    present = await asyncio.to_thread(_resolved, store, config_digest)
    # What the reference named before: "up to date" only if it already named this image, as in Docker.
    before = await asyncio.to_thread(_resolved, store, tag or f"{ref.repository}@{top}")
    if present is None:
        config = await registry.small_blob(repository, config_digest, MAX_CONFIG)
        layers = await _layers(store, registry, repository, wanted_layers, report)
        size = sum(layer.content_size or 0 for layer in layers)
    else:
        # Present: the manifest named a config we hold, so neither it nor a layer is fetched again.
        config = await asyncio.to_thread(store.blobs.read, config_digest)
        layers, size = list(present.layers), present.size
    image = await asyncio.to_thread(store.record, data, config, layers, size, tag,
                                    repo_digest=f"{ref.repository}@{top}")
    report(f"Digest: {top}")
    new = before is None or before.id != image.id
    outcome = "Downloaded newer image" if new else "Image is up to date"
    report(f"Status: {outcome} for {tag or f'{ref.repository}@{top}'}")
    return Pulled(image, top, new=new)


def _resolved(store: ImageStore, name: str) -> Image | None:
    try:
        return store.resolve(name)
    except ImageError:
        return None


async def _layers(store: ImageStore, registry: Registry, repository: str,
                  descriptors: list[tuple[str, int, str]], report: Progress) -> list[Layer]:
    """The manifest's layers, downloaded concurrently (each blob once) and checked; all or none."""
    limit = asyncio.Semaphore(registry.options.max_concurrent_downloads)
    unique = list(dict.fromkeys(descriptors))
    for digest, _, _ in unique:
        if digest not in store.blobs:
            report("Pulling fs layer", digest[7:19])
    # The bottom layer is validated as a base (it has nothing below it); the same blob higher up
    # passes as well, a base layer's check being the stricter one.
    tasks = {descriptor: asyncio.create_task(_layer(store, registry, repository, descriptor,
                                                    descriptor == descriptors[0], limit, report))
             for descriptor in unique}
    try:
        await asyncio.gather(*tasks.values())
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return [tasks[descriptor].result() for descriptor in descriptors]


async def _layer(store: ImageStore, registry: Registry, repository: str, descriptor: tuple[str, int, str],
                 base: bool, limit: asyncio.Semaphore, report: Progress) -> Layer:
    digest, size, media_type = descriptor
    short = digest[7:19]
    if digest in store.blobs:
        report("Already exists", short)
        diff_id, content_size = await asyncio.to_thread(inspect_blob, store.blobs.path(digest),
                                                        LAYER_COMPRESSION[media_type], base)
        return Layer(diff_id, digest, media_type, size, content_size)
    if limit.locked():
        report("Waiting", short)
    async with contextlib.AsyncExitStack() as cleanup:
        async with limit:
            try:
                staged = await _to_thread(store.blobs.partial, digest, size)
            except OSError as err:
                raise disk_error(err, digest) from err
            download = Download(staged, digest, size, LAYER_COMPRESSION[media_type], base, report)
            cleanup.push_async_callback(download.close)
            await registry.blob(repository, download)
        # The next download starts while this blob reaches the disk (fsync, tens of ms per 50 MB).
        report("Verifying Checksum", short)
        report("Download complete", short)
        if download.refused is not None:
            staged.discard()  # the registry's true content, but never to be used
            raise download.refused
        assert download.checked is not None
        diff_id, content_size = download.checked
        try:
            await _to_thread(store.blobs.commit, staged, digest)
        except OSError as err:
            staged.discard()
            raise disk_error(err, digest) from err
    report("Pull complete", short)
    return Layer(diff_id, digest, media_type, size, content_size)


__all__ = ["Credentials", "Endpoint", "Platform", "Pulled", "Registry", "RegistryOptions", "endpoints",
           "is_insecure", "is_loopback", "locate", "login", "parse_challenge", "pull", "select_platform"]
