"""The registry client against small aiohttp registries served on loopback (no VM)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hyperd.image import ImageError, ImageNotFound, ManifestUnknown, RegistryError
from hyperd.image.registry import Platform, is_loopback, locate, parse_challenge, pull, select_platform
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


@dataclass
class FakeRegistry:
    """Manifests and blobs by digest, tags to digests; ``token`` makes it demand that Bearer token."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    token: str | None = None
    token_requests: list[dict[str, str]] = field(default_factory=list)
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
        plain = io.BytesIO()
        with tarfile.open(fileobj=plain, mode="w") as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        config = json.dumps({"architecture": architecture, "os": "linux", "created": "2024-05-06T07:08:09Z",
                             "config": {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [_digest(plain.getvalue())]}}).encode()
        return self.manifest({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **self.blob(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        **self.blob(gzip.compress(plain.getvalue()))}],
        }, tag)

    def _authorized(self, request: web.Request) -> None:
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": (
                f'Bearer realm="http://{self.address}/token",service="fake",'
                f'scope="repository:{request.match_info["name"]}:pull"')})

    async def get_base(self, _request: web.Request) -> web.Response:
        return web.json_response({})

    async def get_manifest(self, request: web.Request) -> web.Response:
        self._authorized(request)
        reference = request.match_info["reference"]
        found = self.manifests.get(self.tags.get(reference, reference))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                     status=404)
        return web.Response(body=found[1], content_type=found[0])

    async def get_blob(self, request: web.Request) -> web.Response:
        self._authorized(request)
        digest = request.match_info["digest"]
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return web.Response(body=data)

    async def get_token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        return web.json_response({"token": self.token})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/v2/", self.get_base),
            web.get("/v2/{name:.+}/manifests/{reference}", self.get_manifest),
            web.get("/v2/{name:.+}/blobs/{digest}", self.get_blob),
            web.get("/token", self.get_token),
        ])
        return app


@pytest.fixture
async def fake() -> AsyncIterator[FakeRegistry]:
    registry = FakeRegistry()
    server = TestServer(registry.app(), host="127.0.0.1")
    await server.start_server()
    registry.address = f"127.0.0.1:{server.port}"
    try:
        yield registry
    finally:
        await server.close()


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
