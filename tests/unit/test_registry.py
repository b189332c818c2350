"""The registry client against small aiohttp registries served on loopback (no VM)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from hyperd.image import ImageError, ImageNotFound, InvalidLayer, ManifestUnknown, RegistryError, registry
from hyperd.image.blobs import Blobs, Staged
from hyperd.image.layers import decompress
from hyperd.image.registry import (
    Credentials,
    Endpoint,
    Platform,
    RegistryOptions,
    endpoints,
    is_loopback,
    locate,
    login,
    parse_challenge,
    pull,
    select_platform,
)
from hyperd.image.store import ImageStore, parse_reference

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def test_challenge_parameters_quoted_and_bare() -> None:
    header = ('Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:team/app:pull,push", error=invalid_token')
    assert parse_challenge(header) == ("bearer", {
        "realm": "https://auth.example/token", "service": "registry.example",
        "scope": "repository:team/app:pull,push", "error": "invalid_token",
    })


def test_challenge_escapes_basic_and_garbage() -> None:
    assert parse_challenge(r'Bearer realm="a\"b"') == ("bearer", {"realm": 'a"b'})
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert parse_challenge("Bearer realm") == ("bearer", {})
    assert parse_challenge("") == ("", {})


def test_platform_selection_from_an_index() -> None:
    index = {"manifests": [
        {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "sha256:" + "b" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:" + "c" * 64, "platform": {"os": "windows", "architecture": "amd64"}},
    ]}
    assert select_platform(index, Platform())["digest"] == "sha256:" + "b" * 64
    assert select_platform(index, Platform.parse("linux/arm64/v8"))["digest"] == "sha256:" + "a" * 64
    with pytest.raises(ImageError, match=r"no matching manifest for linux/s390x .*linux/amd64, linux/arm64/v8"):
        select_platform(index, Platform.parse("linux/s390x"))
    with pytest.raises(ValueError, match="os/arch"):
        Platform.parse("amd64")


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", ("docker.io", "library/busybox")),
    ("team/app", ("docker.io", "team/app")),
    ("127.0.0.1:5000/team/app:1.2", ("127.0.0.1:5000", "team/app")),
    ("localhost/app", ("localhost", "app")),
    ("ghcr.io/owner/app", ("ghcr.io", "owner/app")),
    ("docker.io/busybox", ("docker.io", "library/busybox")),
    ("index.docker.io/team/app", ("docker.io", "team/app")),
])
def test_registry_and_repository_from_a_reference(text: str, expected: tuple[str, str]) -> None:
    assert locate(parse_reference(text)) == expected


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:5000", True), ("127.3.4.5", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("10.0.0.1:5000", False), ("registry.example", False), ("[2001:db8::1]:443", False),
])
def test_plain_http_only_for_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# ---------------------------------------------------------------------------------------------
# A tiny registry


def _tar(files: dict[str, bytes]) -> bytes:
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return plain.getvalue()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class FakeRegistry:
    """Manifests and blobs by digest, tags to digests, and knobs to make it misbehave.

    ``token`` makes it demand that Bearer token (``rotate``: each one works once), ``basic`` HTTP
    Basic with that user and password; ``token_user`` makes its token server demand Basic too.
    ``fail`` holds statuses to answer the next requests with; ``cut`` stops a blob's body after
    that many bytes (``cut_once``: only the next time); ``ranges`` honours Range requests.
    """

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    token: str | None = None
    rotate: bool = False
    token_document: dict[str, Any] = field(default_factory=dict)
    token_user: tuple[str, str] | None = None
    basic: tuple[str, str] | None = None
    token_requests: list[dict[str, str]] = field(default_factory=list)
    refused: int = 0
    fail: list[int] = field(default_factory=list)
    cut: dict[str, int] = field(default_factory=dict)
    cut_once: bool = True
    ranges: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    gated: set[str] = field(default_factory=set)
    gate_at: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    peak: int = 0
    address: str = ""

    def blob(self, data: bytes) -> dict[str, Any]:
        self.blobs[_digest(data)] = data
        return {"digest": _digest(data), "size": len(data)}

    def manifest(self, document: dict[str, Any], tag: str | None = None) -> dict[str, Any]:
        data = json.dumps(document).encode()
        self.manifests[_digest(data)] = (document["mediaType"], data)
        if tag is not None:
            self.tags[tag] = _digest(data)
        return {"mediaType": document["mediaType"], "digest": _digest(data), "size": len(data)}

    def image(self, files: dict[str, bytes], tag: str | None = None, architecture: str = "amd64") -> dict[str, Any]:
        # mtime=0: the same files make the same layer blob whatever second it is built in.
        return self.layered([gzip.compress(_tar(files), mtime=0)], [_tar(files)], tag, architecture=architecture)

    def layered(self, blobs: list[bytes], plains: list[bytes], tag: str | None = None, *,
                media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
                architecture: str = "amd64") -> dict[str, Any]:
        """An image of layer ``blobs`` whose uncompressed content is ``plains``."""
        config = json.dumps({"architecture": architecture, "os": "linux", "created": "2024-05-06T07:08:09Z",
                             "config": {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [_digest(plain) for plain in plains]}}).encode()
        return self.manifest({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **self.blob(config)},
            "layers": [{"mediaType": media_type, **self.blob(blob)} for blob in blobs],
        }, tag)

    def layer_digests(self, top: dict[str, Any]) -> list[str]:
        return [layer["digest"] for layer in json.loads(self.manifests[top["digest"]][1])["layers"]]

    def _authorized(self, request: web.Request) -> None:
        name = request.match_info.get("name")
        if self.basic is not None and request.headers.get("Authorization") != _basic(*self.basic):
            self.refused += 1
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="fake"'},
                                       content_type="application/json", text=json.dumps({"errors": [
                                           {"code": "UNAUTHORIZED", "message": "authentication required"}]}))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.refused += 1
            scope = f',scope="repository:{name}:pull"' if name else ""
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": (
                f'Bearer realm="http://{self.address}/token",service="fake"{scope}')})
        if self.token is not None and self.rotate:
            self.token += "+"

    def _failing(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.path, request.headers.get("Range")))
        if self.fail:
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "try later"}]},
                                     status=self.fail.pop(0))
        return None

    async def get_base(self, request: web.Request) -> web.Response:
        self._authorized(request)
        return web.json_response({})

    async def get_manifest(self, request: web.Request) -> web.Response:
        self._authorized(request)
        if failed := self._failing(request):
            return failed
        reference = request.match_info["reference"]
        found = self.manifests.get(self.tags.get(reference, reference))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                     status=404)
        return web.Response(body=found[1], content_type=found[0])

    async def get_blob(self, request: web.Request) -> web.StreamResponse:
        self._authorized(request)
        if failed := self._failing(request):
            return failed
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]},
                                     status=404)
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        if digest in self.gated:
            return await self._gated(data)
        start = 0
        wanted = request.headers.get("Range", "")
        if self.ranges and wanted.startswith("bytes="):
            start = int(wanted[6:].rstrip("-"))
        response = web.StreamResponse(status=206 if start else 200)
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response.content_length = len(data) - start
        await response.prepare(request)
        if digest in self.cut:
            limit = self.cut.pop(digest) if self.cut_once else self.cut[digest]
            await response.write(data[start:limit])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return response
        await response.write(data[start:])
        await response.write_eof()
        return response

    async def _gated(self, data: bytes) -> web.Response:
        """Hold each download until ``gate_at`` of them are in flight, counting the most at once."""
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.gate_at:
            self.gate.set()
        try:
            # Bounded, so that a client holding fewer downloads at once fails the test instead of hanging it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 5)
        finally:
            self.in_flight -= 1
        return web.Response(body=data)

    async def get_token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        if self.token_user is not None and request.headers.get("Authorization") != _basic(*self.token_user):
            return web.json_response({"details": "incorrect username or password"}, status=401)
        return web.json_response({"token": self.token, **self.token_document})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/v2/", self.get_base),
            web.get("/v2/{name:.+}/manifests/{reference}", self.get_manifest),
            web.get("/v2/{name:.+}/blobs/{digest}", self.get_blob),
            web.get("/token", self.get_token),
        ])
        return app


Serve = Callable[[], Awaitable[FakeRegistry]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts fake registries on loopback; all are stopped after the test."""
    servers: list[TestServer] = []

    async def start() -> FakeRegistry:
        registry = FakeRegistry()
        server = TestServer(registry.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        registry.address = f"127.0.0.1:{server.port}"
        return registry

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def fake(serve: Serve) -> FakeRegistry:
    return await serve()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "RETRY_DELAY", 0.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    with ImageStore(tmp_path) as opened:
        yield opened


def _blob_files(store: ImageStore) -> set[str]:
    return {path.name for path in store.blobs.dir.iterdir()}


async def test_pull_records_the_image_like_an_import(fake: FakeRegistry, store: ImageStore) -> None:
    top = fake.image({"hello": b"world\n"}, tag="1")
    pulled = await pull(store, f"{fake.address}/team/app:1")
    assert pulled.new and pulled.digest == top["digest"]
    image = store.resolve(f"{fake.address}/team/app:1")
    assert image.id == pulled.image.id
    assert image.references == (f"{fake.address}/team/app:1",)
    assert image.manifest_digest == top["digest"]
    assert image.size == tarfile.RECORDSIZE  # the uncompressed layer: Python pads a tar to one record
    assert image.created == 1714979289
    assert store.resolve(f"{fake.address}/team/app@{top['digest']}").id == image.id
    for layer in image.layers:
        assert layer.digest in store.blobs
    again = await pull(store, f"{fake.address}/team/app:1")
    assert not again.new and again.image.id == image.id


async def test_index_resolves_to_amd64(fake: FakeRegistry, store: ImageStore) -> None:
    arm = fake.image({"arch": b"arm64"}, architecture="arm64")
    amd = fake.image({"arch": b"amd64"})
    index = fake.manifest({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {**arm, "platform": {"os": "linux", "architecture": "arm64"}},
        {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}, tag="multi")
    pulled = await pull(store, f"{fake.address}/team/app:multi")
    assert pulled.digest == index["digest"]
    assert pulled.image.manifest_digest == amd["digest"]


async def test_corrupt_blob_is_rejected_and_the_store_unchanged(fake: FakeRegistry, store: ImageStore) -> None:
    top = fake.image({"hello": b"world\n"}, tag="1")
    manifest = json.loads(fake.manifests[top["digest"]][1])
    layer = manifest["layers"][0]["digest"]
    fake.corrupt.add(layer)
    before = _blob_files(store)
    with pytest.raises(RegistryError, match=f"sent blob {layer} whose content hashes to sha256:"):
        await pull(store, f"{fake.address}/team/app:1")
    assert store.list() == []
    assert _blob_files(store) == before
    with pytest.raises(ImageNotFound):
        store.resolve(f"{fake.address}/team/app:1")
    fake.corrupt.clear()
    assert (await pull(store, f"{fake.address}/team/app:1")).new


async def test_corrupt_manifest_by_digest_is_rejected(fake: FakeRegistry, store: ImageStore) -> None:
    top = fake.image({"hello": b"world\n"})
    wrong = "sha256:" + "0" * 64
    fake.manifests[wrong] = fake.manifests[top["digest"]]
    with pytest.raises(RegistryError, match=f"manifest for team/app@{wrong} whose content hashes to"):
        await pull(store, f"{fake.address}/team/app@{wrong}")
    assert store.list() == []


async def test_unknown_tag_and_schema1(fake: FakeRegistry, store: ImageStore) -> None:
    with pytest.raises(ManifestUnknown) as caught:
        await pull(store, f"{fake.address}/team/app:nope")
    assert str(caught.value) == f"manifest unknown: registry {fake.address} has no team/app:nope"
    data = json.dumps({"schemaVersion": 1, "name": "team/app", "tag": "old"}).encode()
    fake.manifests[_digest(data)] = ("application/vnd.docker.distribution.manifest.v1+prettyjws", data)
    fake.tags["old"] = _digest(data)
    with pytest.raises(RegistryError, match="schema 1"):
        await pull(store, f"{fake.address}/team/app:old")


async def test_oversized_manifest_is_refused(fake: FakeRegistry, store: ImageStore) -> None:
    data = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "pad": "x" * (4 << 20)}).encode()
    fake.manifests[_digest(data)] = (MANIFEST, data)
    fake.tags["big"] = _digest(data)
    with pytest.raises(RegistryError, match="over the 4 MiB limit"):
        await pull(store, f"{fake.address}/team/app:big")


async def test_bearer_token_is_fetched_once_and_reused(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.token = "s3cret"
    pulled = await pull(store, f"{fake.address}/team/app:1")
    assert pulled.new
    assert fake.token_requests == [{"scope": "repository:team/app:pull", "service": "fake"}]


def _partials(store: ImageStore) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in store.blobs.dir.glob(".partial-*")}


def _big_image(fake: FakeRegistry) -> tuple[str, int]:
    """``team/app:big``, of one layer of incompressible data: (the layer's digest, its size)."""
    digest = fake.layer_digests(fake.image({"noise": os.urandom(300_000)}, tag="big"))[0]
    return digest, len(fake.blobs[digest])


# -- authentication


async def test_basic_auth_with_credentials(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.basic = ("bob", "s3cret")
    with pytest.raises(RegistryError, match=f"authentication required: registry {fake.address} refused access"):
        await pull(store, f"{fake.address}/team/app:1")
    assert (await pull(store, f"{fake.address}/team/app:1", credentials=Credentials("bob", "s3cret"))).new
    # Basic is sent up front once the registry asked for it: one refusal for the whole pull.
    assert fake.refused == 2


async def test_basic_auth_wrong_password_is_one_clear_line(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.basic = ("bob", "s3cret")
    with pytest.raises(RegistryError) as caught:
        await pull(store, f"{fake.address}/team/app:1", credentials=Credentials("bob", "wrong"))
    assert str(caught.value) == (f'unauthorized: authentication required: registry {fake.address} refused the '
                                 f'credentials for user "bob"')
    assert store.list() == []


async def test_bearer_token_with_credentials(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.token, fake.token_user = "t0ken", ("bob", "s3cret")
    assert (await pull(store, f"{fake.address}/team/app:1", credentials=Credentials("bob", "s3cret"))).new
    assert fake.token_requests == [{"scope": "repository:team/app:pull", "service": "fake", "account": "bob"}]
    with pytest.raises(RegistryError) as caught:
        await pull(store, f"{fake.address}/team/app:1", credentials=Credentials("bob", "nope"))
    assert str(caught.value) == (f'unauthorized: incorrect username or password: registry {fake.address} refused the '
                                 f'credentials for user "bob"')


async def test_expired_tokens_are_fetched_again(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.token = "t0ken"
    fake.token_document = {"issued_at": "2000-01-01T00:00:00Z", "expires_in": 300}
    assert (await pull(store, f"{fake.address}/team/app:1")).new
    # Manifest, config, layer: each finds the cached token expired and gets a new one first.
    assert len(fake.token_requests) == 3
    assert fake.refused == 1


async def test_a_refused_cached_token_is_refreshed_once(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.token, fake.rotate = "t0ken", True
    assert (await pull(store, f"{fake.address}/team/app:1")).new
    assert len(fake.token_requests) == 3 and fake.refused == 3


async def test_login_basic_and_bearer(serve: Serve) -> None:
    basic, bearer = await serve(), await serve()
    basic.basic = ("bob", "s3cret")
    bearer.token, bearer.token_user = "t0ken", ("bob", "s3cret")
    await login(basic.address, Credentials("bob", "s3cret"))
    await login(f"http://{bearer.address}/", Credentials("bob", "s3cret"))
    assert bearer.token_requests == [{"service": "fake", "account": "bob"}]
    with pytest.raises(RegistryError, match=f'registry {basic.address} refused the credentials for user "bob"'):
        await login(basic.address, Credentials("bob", "wrong"))
    with pytest.raises(RegistryError, match=f'registry {bearer.address} refused the credentials for user "bob"'):
        await login(bearer.address, Credentials("bob", "wrong"))


async def test_login_to_an_unreachable_registry(unused_tcp_port: int) -> None:
    with pytest.raises(RegistryError) as caught:
        await login(f"127.0.0.1:{unused_tcp_port}", Credentials("bob", "s3cret"))
    assert str(caught.value) == f"cannot reach registry 127.0.0.1:{unused_tcp_port}: Connection refused"


# -- retries and resumed downloads


async def test_transient_errors_are_retried(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.fail = [503, 429]
    assert (await pull(store, f"{fake.address}/team/app:1")).new
    assert [path for path, _ in fake.requests].count("/v2/team/app/manifests/1") == 3


async def test_not_found_is_not_retried(fake: FakeRegistry, store: ImageStore) -> None:
    top = fake.image({"hello": b"world\n"}, tag="1")
    layer = fake.layer_digests(top)[0]
    del fake.blobs[layer]
    with pytest.raises(ManifestUnknown, match=f"blob unknown: registry {fake.address} has no team/app@{layer}"):
        await pull(store, f"{fake.address}/team/app:1")
    assert [path for path, _ in fake.requests].count(f"/v2/team/app/blobs/{layer}") == 1


async def test_retries_are_bounded(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")
    fake.fail = [503] * 10
    with pytest.raises(RegistryError) as caught:
        await pull(store, f"{fake.address}/team/app:1")
    assert str(caught.value) == f"registry {fake.address} answered 503 Service Unavailable for team/app:1: try later"
    assert len(fake.requests) == 4


async def test_a_cut_download_resumes_with_a_range(fake: FakeRegistry, store: ImageStore) -> None:
    layer, _ = _big_image(fake)
    fake.cut[layer] = 100_000
    pulled = await pull(store, f"{fake.address}/team/app:big")
    assert pulled.new and layer in store.blobs
    assert [wanted for path, wanted in fake.requests if path.endswith(layer)] == [None, "bytes=100000-"]
    assert _partials(store) == {}


async def test_a_registry_ignoring_ranges_restarts_the_download(fake: FakeRegistry, store: ImageStore) -> None:
    layer, _ = _big_image(fake)
    fake.cut[layer], fake.ranges = 100_000, False
    assert (await pull(store, f"{fake.address}/team/app:big")).new  # the diff_id check saw the layer once
    assert [wanted for path, wanted in fake.requests if path.endswith(layer)] == [None, "bytes=100000-"]


async def test_an_interrupted_pull_is_resumed_by_the_next(fake: FakeRegistry, store: ImageStore) -> None:
    layer, size = _big_image(fake)
    fake.cut[layer], fake.cut_once, fake.ranges = 100_000, False, False
    with pytest.raises(RegistryError, match=f"blob {layer} cut short at 100000 of {size} bytes"):
        await pull(store, f"{fake.address}/team/app:big")
    assert len([path for path, _ in fake.requests if path.endswith(layer)]) == 4
    assert _partials(store) == {f".partial-{layer[7:]}": 100_000}
    assert store.list() == []
    fake.cut.clear()
    fake.ranges = True
    fake.requests.clear()
    assert (await pull(store, f"{fake.address}/team/app:big")).new
    assert [wanted for path, wanted in fake.requests if path.endswith(layer)] == ["bytes=100000-"]
    assert _partials(store) == {}


@pytest.mark.parametrize("kept", ["damaged", "too long"])
async def test_a_bad_partial_is_downloaded_again(kept: str, fake: FakeRegistry, store: ImageStore) -> None:
    layer, _ = _big_image(fake)
    partial = store.blobs.dir / f".partial-{layer[7:]}"
    partial.write_bytes(os.urandom(1000) if kept == "damaged" else fake.blobs[layer] + b"more")
    assert (await pull(store, f"{fake.address}/team/app:big")).new
    expected = ["bytes=1000-", None] if kept == "damaged" else [None]
    assert [wanted for path, wanted in fake.requests if path.endswith(layer)] == expected
    assert _partials(store) == {}


def test_partials_of_stored_blobs_are_removed(tmp_path: Path) -> None:
    blobs = Blobs(tmp_path)
    digest, _ = blobs.put(b"content")
    (blobs.dir / f".partial-{digest[7:]}").write_bytes(b"cont")
    (blobs.dir / f".partial-{'0' * 64}").write_bytes(b"other")
    assert sorted(path.name for path in Blobs(tmp_path).dir.glob(".partial-*")) == [f".partial-{'0' * 64}"]


async def test_a_full_disk_fails_the_pull_cleanly(fake: FakeRegistry, store: ImageStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    layer, _ = _big_image(fake)

    def full(self: Staged, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Staged, "write", full)
    with pytest.raises(ImageError) as caught:
        await pull(store, f"{fake.address}/team/app:big")
    assert str(caught.value) == f"no space left on device while pulling blob {layer}"
    assert not isinstance(caught.value, RegistryError)
    assert _partials(store) == {} and store.list() == []


# -- endpoints: mirrors and insecure registries


async def test_mirrors_are_tried_in_order_before_the_hub(serve: Serve, store: ImageStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    broken, mirror, hub = await serve(), await serve(), await serve()
    monkeypatch.setattr(registry, "DOCKER_HUB_API", hub.address)
    broken.fail = [500] * 10
    mirror.image({"hello": b"world\n"}, tag="1")
    options = RegistryOptions(mirrors=(f"http://{broken.address}", f"http://{mirror.address}/"))
    pulled = await pull(store, "team/app:1", options=options)
    assert pulled.new and store.resolve("team/app:1").id == pulled.image.id
    assert len(broken.requests) == 1  # a mirror is not retried: the next one is
    assert hub.requests == [] and len(mirror.requests) == 3


async def test_the_hub_serves_when_every_mirror_fails(serve: Serve, store: ImageStore, unused_tcp_port: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    empty, hub = await serve(), await serve()
    monkeypatch.setattr(registry, "DOCKER_HUB_API", hub.address)
    hub.image({"hello": b"world\n"}, tag="1")
    hub.token = "hub-token"
    options = RegistryOptions(mirrors=(f"http://127.0.0.1:{unused_tcp_port}", f"http://{empty.address}"))
    assert (await pull(store, "team/app:1", options=options, credentials=Credentials("bob", "pw"))).new
    assert empty.requests == [("/v2/team/app/manifests/1", None)]
    assert len(hub.requests) == 3
    # The Hub's token server got the credentials; the mirrors never see them.
    assert hub.token_requests[0]["account"] == "bob"


def test_endpoint_choice() -> None:
    none = RegistryOptions()
    assert endpoints("registry.example", none) == (Endpoint("https://registry.example/v2/"),)
    assert endpoints("10.1.2.3:5000", none) == (Endpoint("https://10.1.2.3:5000/v2/"),)
    assert endpoints("127.0.0.1:5000", none) == (Endpoint("http://127.0.0.1:5000/v2/"),)
    insecure = RegistryOptions(insecure=("10.0.0.0/8", "registry.lan:5000"))
    for host in ("10.1.2.3:5000", "registry.lan:5000"):
        assert endpoints(host, insecure) == (Endpoint(f"https://{host}/v2/", verify=False),
                                             Endpoint(f"http://{host}/v2/"))
    # Listed without its port, or outside the range: never downgraded.
    assert endpoints("registry.lan", insecure) == (Endpoint("https://registry.lan/v2/"),)
    assert endpoints("11.0.0.1", insecure) == (Endpoint("https://11.0.0.1/v2/"),)
    mirrored = RegistryOptions(mirrors=("https://mirror.example", "http://10.9.9.9:5001"), insecure=("10.0.0.0/8",))
    assert endpoints("docker.io", mirrored) == (
        Endpoint("https://mirror.example/v2/", mirror=True), Endpoint("http://10.9.9.9:5001/v2/", mirror=True,
                                                                      verify=False),
        Endpoint("https://registry-1.docker.io/v2/"))
    assert endpoints("docker.io", mirrored, mirrors=False) == (Endpoint("https://registry-1.docker.io/v2/"),)
    assert endpoints("ghcr.io", mirrored) == (Endpoint("https://ghcr.io/v2/"),)


# -- concurrency, progress, layer content


async def test_downloads_are_concurrent_up_to_the_limit(fake: FakeRegistry, store: ImageStore) -> None:
    plains = [_tar({f"file{index}": os.urandom(1000)}) for index in range(5)]
    top = fake.layered([gzip.compress(plain) for plain in plains], plains, tag="5")
    fake.gated, fake.gate_at = set(fake.layer_digests(top)), 2
    messages: list[dict[str, Any]] = []
    pulled = await pull(store, f"{fake.address}/team/app:5", options=RegistryOptions(max_concurrent_downloads=2),
                        progress=messages.append)
    assert pulled.new and len(pulled.image.layers) == 5
    assert fake.peak == 2
    assert sum(message["status"] == "Waiting" for message in messages) == 3


async def test_progress_messages(fake: FakeRegistry, store: ImageStore) -> None:
    top = fake.image({"hello": b"world\n"}, tag="1")
    layer = fake.layer_digests(top)[0][7:19]
    size = len(fake.blobs[fake.layer_digests(top)[0]])
    messages: list[dict[str, Any]] = []
    await pull(store, f"{fake.address}/team/app:1", progress=messages.append)
    assert messages == [
        {"status": "Pulling from team/app", "id": "1"},
        {"status": "Pulling fs layer", "id": layer},
        {"status": "Downloading", "id": layer, "progressDetail": {"current": size, "total": size}},
        {"status": "Verifying Checksum", "id": layer},
        {"status": "Download complete", "id": layer},
        {"status": "Pull complete", "id": layer},
        {"status": f"Digest: {top['digest']}"},
        {"status": f"Status: Downloaded newer image for {fake.address}/team/app:1"},
    ]
    messages.clear()
    await pull(store, f"{fake.address}/team/app:1", progress=messages.append)
    assert messages == [{"status": "Pulling from team/app", "id": "1"}, {"status": f"Digest: {top['digest']}"},
                        {"status": f"Status: Image is up to date for {fake.address}/team/app:1"}]
    # The same layer under another config: already there.
    other = fake.image({"hello": b"world\n"}, tag="arm", architecture="arm64")
    messages.clear()
    await pull(store, f"{fake.address}/team/app:arm", progress=messages.append)
    assert {"status": "Already exists", "id": layer} in messages
    assert store.resolve(f"{fake.address}/team/app@{other['digest']}").references == (f"{fake.address}/team/app:arm",)


async def test_a_failing_progress_callback_does_not_fail_the_pull(fake: FakeRegistry, store: ImageStore) -> None:
    fake.image({"hello": b"world\n"}, tag="1")

    def broken(message: dict[str, Any]) -> None:
        raise ConnectionResetError("client went away")

    assert (await pull(store, f"{fake.address}/team/app:1", progress=broken)).new


async def test_zstd_layers(fake: FakeRegistry, store: ImageStore) -> None:
    plain = _tar({"hello": b"world\n" * 1000})
    compressed = b"".join(zstandard.ZstdCompressor().compress(part) for part in (plain[:2048], plain[2048:]))
    fake.layered([compressed], [plain], tag="zstd", media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    pulled = await pull(store, f"{fake.address}/team/app:zstd")
    (layer,) = pulled.image.layers
    assert layer.diff_id == _digest(plain) and layer.content_size == len(plain)
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    with store.blobs.path(layer.digest).open("rb") as blob:
        assert decompress(blob).read() == plain


async def test_truncated_zstd_layer_is_refused(fake: FakeRegistry, store: ImageStore) -> None:
    plain = _tar({"hello": os.urandom(5000)})
    fake.layered([zstandard.ZstdCompressor().compress(plain)[:-10]], [plain], tag="zstd",
                 media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    with pytest.raises(InvalidLayer, match="not a valid tar archive: zstd stream ends inside a frame"):
        await pull(store, f"{fake.address}/team/app:zstd")
    assert store.list() == []


async def test_an_unsafe_layer_is_refused_naming_the_entry(fake: FakeRegistry, store: ImageStore) -> None:
    safe, evil = _tar({"etc/hostname": b"box\n"}), _tar({"../evil": b"gotcha"})
    top = fake.layered([gzip.compress(safe), gzip.compress(evil)], [safe, evil], tag="evil")
    with pytest.raises(InvalidLayer) as caught:
        await pull(store, f"{fake.address}/team/app:evil")
    assert str(caught.value) == 'layer rejected: entry "../evil" escapes the root'
    assert store.list() == []
    evil_digest = fake.layer_digests(top)[1]
    # The safe layer, cut off by the failure, may stay behind to be resumed; nothing of the evil one does.
    assert evil_digest not in store.blobs and f".partial-{evil_digest[7:]}" not in _partials(store)


async def test_an_unsafe_entry_ahead_of_much_data_is_refused_once_the_blob_is_whole(
        fake: FakeRegistry, store: ImageStore) -> None:
    # The check stops at the first entry while megabytes more than its pipes hold are still to come:
    # every byte must still be written, so that the blob is known to be the registry's before it is refused.
    evil = _tar({"../evil": b"gotcha", "noise": os.urandom(12 << 20)})
    top = fake.layered([gzip.compress(evil, 1)], [evil], tag="evil")
    with pytest.raises(InvalidLayer, match=r'^layer rejected: entry "\.\./evil" escapes the root$'):
        await pull(store, f"{fake.address}/team/app:evil")
    assert fake.layer_digests(top)[0] not in store.blobs and _partials(store) == {}


async def test_a_resumed_download_is_checked_from_its_first_byte(fake: FakeRegistry, store: ImageStore) -> None:
    evil = _tar({"../evil": b"gotcha", "noise": os.urandom(300_000)})
    layer = fake.layer_digests(fake.layered([gzip.compress(evil, 1)], [evil], tag="evil"))[0]
    # The unsafe entry is in the part an earlier pull left behind, not in what is downloaded now.
    (store.blobs.dir / f".partial-{layer[7:]}").write_bytes(fake.blobs[layer][:100_000])
    with pytest.raises(InvalidLayer, match=r'^layer rejected: entry "\.\./evil" escapes the root$'):
        await pull(store, f"{fake.address}/team/app:evil")
    assert [wanted for path, wanted in fake.requests if path.endswith(layer)] == ["bytes=100000-"]
    assert layer not in store.blobs and _partials(store) == {}
