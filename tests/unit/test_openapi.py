"""hyperd/openapi.yaml describes the API hyperd serves: the same routes, and bodies of the documented shapes (no VM)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import hyperd
from hyperd import api, errors
from hyperd.config import Config
from hyperd.daemon import Daemon
from hyperd.image.store import ImageStore
from hyperd.vm import VMSpec
from hyperd.vm.qemu import Qemu

SPEC = Path(hyperd.__file__).with_name("openapi.yaml")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR = "#/components/schemas/Error"

Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document = yaml.safe_load(SPEC.read_text())
    assert isinstance(document, dict)
    return document


def served() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> handler name, from the router the daemon builds."""
    app = web.Application()
    app.add_routes(api.routes())
    table: dict[tuple[str, str], str] = {}
    for route in app.router.routes():
        assert route.resource is not None
        table[route.method, route.resource.canonical] = getattr(route.handler, "__name__", "")
    # aiohttp answers HEAD for every GET by itself (with the GET's handler); the document says so
    # once, in its description.  A HEAD with a handler of its own is an operation of its own.
    gets = {path: name for (method, path), name in table.items() if method == "GET"}
    heads = {path for method, path in table if method == "HEAD"}
    assert heads == set(gets)
    return {key: name for key, name in table.items() if key[0] != "HEAD" or name != gets[key[1]]}


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def conforms(spec: dict[str, Any], value: Any, schema: Any, where: str = "$") -> list[str]:
    """Where ``value`` strays from ``schema`` (the JSON Schema subset used here); undocumented members stray too."""
    schema = resolve(spec, schema)
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        numeric_bool = isinstance(value, bool) and not {"boolean"} & set(kinds)
        if numeric_bool or not any(isinstance(value, TYPES[kind]) for kind in kinds):
            return [f"{where}: {value!r} is not {'/'.join(kinds)}"]
    problems = []
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        declared = schema.get("properties", {})
        problems += [f"{where}: {name} is missing" for name in schema.get("required", []) if name not in value]
        for name, member in value.items():
            if name in declared:
                problems += conforms(spec, member, declared[name], f"{where}.{name}")
            elif "additionalProperties" in schema:
                problems += conforms(spec, member, schema["additionalProperties"], f"{where}.{name}")
            else:
                problems.append(f"{where}: {name} is not documented")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += conforms(spec, item, schema["items"], f"{where}[{index}]")
    return problems


def response_schema(spec: dict[str, Any], method: str, path: str, status: int) -> Any:
    response = resolve(spec, spec["paths"][path][method.lower()]["responses"][str(status)])
    return response["content"]["application/json"]["schema"]


# -- the document against the router -----------------------------------------------------


def test_every_route_is_documented_and_nothing_else(spec: dict[str, Any]) -> None:
    routes = set(served())
    documented = {(method, path) for method, path, _ in operations(spec)}
    assert not routes - documented, f"served but not documented: {sorted(routes - documented)}"
    assert not documented - routes, f"documented but not served: {sorted(documented - routes)}"


def test_operation_ids_name_the_handlers(spec: dict[str, Any]) -> None:
    handlers = served()
    for method, path, operation in operations(spec):
        assert operation.get("operationId") == handlers[method, path], (method, path)


def test_every_operation_documents_a_success(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        statuses = [int(status) for status in operation["responses"]]
        assert any(200 <= status < 300 for status in statuses), (method, path)


def test_error_responses_are_error_objects_with_statuses_hyperd_uses(spec: dict[str, Any]) -> None:
    mapped = {status for _, status in api.STATUS}
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            assert int(status) in mapped, (method, path, status)
            content = resolve(spec, response).get("content", {})
            assert list(content) == ["application/json"], (method, path, status)
            assert content["application/json"]["schema"] == {"$ref": ERROR}, (method, path, status)


def test_output_streams_use_docker_media_types(spec: dict[str, Any]) -> None:
    for path, types in (("/containers/{id}/attach", [api.STREAM_TYPE, api.RAW_TYPE]),
                        ("/exec/{id}/start", [api.STREAM_TYPE, api.RAW_TYPE]),
                        ("/containers/{id}/logs", [api.STREAM_TYPE])):
        item = spec["paths"][path]
        (operation,) = (item[method] for method in METHODS if method in item)
        assert list(operation["responses"]["200"]["content"]) == types, path


def test_path_parameters_are_declared(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        params = [resolve(spec, p) for p in operation.get("parameters", [])]
        declared = {p["name"] for p in params if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_references_resolve_and_versions_agree(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["version"] == api.API_VERSION
    for ref in refs(spec):
        assert isinstance(resolve(spec, {"$ref": ref}), dict), ref


# -- bodies the daemon produces against the document's schemas ------------------------------


class FakeHypervisor:
    """Describes itself like QEMU; cannot boot anything."""

    def describe(self) -> dict[str, str]:
        return {"Hypervisor": "qemu", "HypervisorVersion": "7.2.0", "HypervisorBinary": "/usr/bin/qemu-system-x86_64",
                "Accelerator": "tcg", "AcceleratorReason": "/dev/kvm is missing or not accessible"}

    async def launch(self, spec: VMSpec) -> None:
        raise errors.HypervisorMissing("no QEMU in unit tests")


def rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("bin", "etc"):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        entry = tarfile.TarInfo("bin/true")
        entry.mode, entry.size = 0o755, 4
        tar.addfile(entry, io.BytesIO(b"#!/\n"))
    return buffer.getvalue()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    config = Config(root=tmp_path, socket=tmp_path / "hyperd.sock", kernel=tmp_path / "vmlinux",
                    guest_disk=tmp_path / "guest.erofs", cache=tmp_path / "cache")
    images = ImageStore(tmp_path)
    daemon = Daemon(config, cast(Qemu, FakeHypervisor()), images)
    async with TestClient(TestServer(api.application(daemon))) as test_client:
        yield test_client
    await daemon.shutdown()
    images.close()


async def check(spec: dict[str, Any], response: Any, method: str, path: str) -> Any:
    body = await response.json()
    schema = response_schema(spec, method, path, response.status)
    assert conforms(spec, body, schema) == [], body
    return body


async def test_bodies_match_their_schemas(spec: dict[str, Any], client: Client) -> None:
    response = await client.post("/images/import", params={"repo": "tiny", "tag": "1"}, data=rootfs())
    assert response.status == 200
    image = await check(spec, response, "POST", "/images/import")

    response = await client.post("/containers/create", params={"name": "one"},
                                 json={"Image": "tiny:1", "Cmd": ["/bin/true", "-x"], "Env": ["A=b"]})
    assert response.status == 201
    created = await check(spec, response, "POST", "/containers/create")

    for path in ("/version", "/info", "/containers/json?all=1", "/containers/one/json", "/images/json"):
        response = await client.get(path)
        assert response.status == 200, path
        await check(spec, response, "GET", path.split("?")[0].replace("/one/", "/{id}/"))

    inspected = await (await client.get(f"/containers/{created['Id'][:8]}/json")).json()
    assert inspected["Path"] == "/bin/true" and inspected["Args"] == ["-x"] and inspected["Image"] == image["Id"]


async def test_errors_match_the_error_schema(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    cases: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("POST", "/containers/create", {}, {"Cmd": ["true"]}, 400),
        ("POST", "/containers/create", {}, {"Image": "missing"}, 404),
        ("POST", "/containers/create", {"name": "one"}, {"Image": "tiny", "Cmd": ["true"]}, 201),
        ("POST", "/containers/create", {"name": "one"}, {"Image": "tiny", "Cmd": ["true"]}, 409),
        ("POST", "/containers/create", {"name": "fleeting"},
         {"Image": "tiny", "Cmd": ["true"], "AutoRemove": True}, 201),
        ("GET", "/containers/{id}/json", {}, None, 404),
        ("POST", "/containers/{id}/kill", {"signal": "NOPE"}, None, 400),
        ("POST", "/containers/{id}/kill", {}, None, 409),
        ("POST", "/containers/{id}/start", {}, None, 500),
        ("POST", "/images/import", {"repo": "Not/Lowercase"}, b"", 400),
        ("GET", "/containers/{id}/export", {}, None, 409),
        ("POST", "/containers/{id}/rename", {}, None, 400),
        ("POST", "/containers/{id}/rename", {"name": "bad name"}, None, 400),
    ]
    for method, path, params, body, status in cases:
        # A --rm container that is not running has no files to export: 409.
        ref = "nobody" if status == 404 and "{id}" in path else "fleeting" if path.endswith("/export") else "one"
        url = path.replace("{id}", ref)
        if isinstance(body, bytes):
            response = await client.request(method, url, params=params, data=body)
        else:
            response = await client.request(method, url, params=params, json=body)
        assert response.status == status, (method, path, params, await response.text())
        await check(spec, response, method, path)


async def test_a_failed_start_is_reported_by_wait(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    await client.post("/containers/create", params={"name": "one"}, json={"Image": "tiny", "Cmd": ["true"]})
    assert (await client.post("/containers/one/start")).status == 500
    response = await client.post("/containers/one/wait")
    assert response.status == 200
    waited = await check(spec, response, "POST", "/containers/{id}/wait")
    assert waited["Error"] is not None


async def test_statuses_without_bodies(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    await client.post("/containers/create", params={"name": "one"}, json={"Image": "tiny", "Cmd": ["true"]})
    assert (await client.get("/_ping")).status == 200
    assert (await client.post("/containers/one/stop")).status == 304
    logs = await client.get("/containers/one/logs", params={"tail": "all"})
    assert logs.status == 200 and logs.content_type == api.STREAM_TYPE
    assert await logs.read() == b""
    assert (await client.delete("/containers/one")).status == 204
    for method, path, status in (("GET", "/_ping", 200), ("POST", "/containers/{id}/stop", 304),
                                 ("DELETE", "/containers/{id}", 204)):
        assert str(status) in spec["paths"][path][method.lower()]["responses"]


async def test_image_bodies_match_their_schemas(spec: dict[str, Any], client: Client) -> None:
    imported = await (await client.post("/images/import", params={"repo": "tiny", "tag": "1"}, data=rootfs())).json()
    assert (await client.post("/images/tiny:1/tag", params={"repo": "tiny", "tag": "2"})).status == 201

    for path, template in (("/images/tiny:1/json", "/images/{name}/json"),
                           ("/images/tiny:1/history", "/images/{name}/history"),
                           ("/images/json?filters=%7B%22dangling%22%3A%5B%22false%22%5D%7D", "/images/json")):
        response = await client.get(path)
        assert response.status == 200, (path, await response.text())
        await check(spec, response, "GET", template)

    saved = await client.get("/images/get", params=[("names", "tiny:1"), ("names", "tiny:2")])
    assert saved.status == 200 and saved.content_type == "application/x-tar"
    archive = await saved.read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"manifest.json", "index.json", "oci-layout"} <= set(tar.getnames())

    removed = await client.delete("/images/tiny:2")
    assert await check(spec, removed, "DELETE", "/images/{name}") == [{"Untagged": "tiny:2"}]
    removed = await client.delete(f"/images/{imported['Id']}")
    assert await check(spec, removed, "DELETE", "/images/{name}") == [{"Untagged": "tiny:1"},
                                                                      {"Deleted": imported["Id"]}]
    loaded = await client.post("/images/load", data=archive)
    assert loaded.status == 200
    assert [json.loads(line) for line in (await loaded.text()).splitlines()] == [
        {"stream": "Loaded image: tiny:1\n"}, {"stream": "Loaded image: tiny:2\n"}]

    pruned = await client.post("/images/prune", params={"filters": '{"dangling": ["true"]}'})
    assert await check(spec, pruned, "POST", "/images/prune") == {"ImagesDeleted": [], "SpaceReclaimed": 0}


async def test_image_errors_match_the_error_schema(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    await client.post("/containers/create", params={"name": "user"}, json={"Image": "tiny", "Cmd": ["true"]})
    cases: list[tuple[str, str, str, dict[str, str], int]] = [
        ("GET", "/images/nosuch/json", "/images/{name}/json", {}, 404),
        ("GET", "/images/nosuch/history", "/images/{name}/history", {}, 404),
        ("DELETE", "/images/nosuch", "/images/{name}", {}, 404),
        ("DELETE", "/images/tiny", "/images/{name}", {}, 409),
        ("POST", "/images/tiny/tag", "/images/{name}/tag", {"repo": "Not/Lowercase"}, 400),
        ("GET", "/images/get", "/images/get", {"names": "nosuch"}, 404),
        ("GET", "/images/get", "/images/get", {}, 400),
        ("POST", "/images/prune", "/images/prune", {"filters": '{"label": ["x"]}'}, 400),
        ("POST", "/images/create", "/images/create", {"fromImage": "tiny", "platform": "nope"}, 400),
        ("POST", "/auth", "/auth", {}, 400),
    ]
    for method, url, template, params, status in cases:
        response = await client.request(method, url, params=params)
        assert response.status == status, (method, url, params, await response.text())
        await check(spec, response, method, template)
    response = await client.post("/images/load", data=b"not a tar archive")
    assert response.status == 400, await response.text()
    await check(spec, response, "POST", "/images/load")


async def test_rename_and_prune(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    created = await (await client.post("/containers/create", params={"name": "old"},
                                       json={"Image": "tiny", "Cmd": ["true"]})).json()
    await client.post("/containers/create", params={"name": "taken"}, json={"Image": "tiny", "Cmd": ["true"]})
    assert (await client.post("/containers/old/rename", params={"name": "new"})).status == 204
    assert (await (await client.get("/containers/new/json")).json())["Name"] == "/new"
    conflict = await client.post("/containers/new/rename", params={"name": "taken"})
    assert conflict.status == 409
    await check(spec, conflict, "POST", "/containers/{id}/rename")
    pruned = await client.post("/containers/prune")
    body = await check(spec, pruned, "POST", "/containers/prune")
    assert created["Id"] in body["ContainersDeleted"] and len(body["ContainersDeleted"]) == 2
    assert await (await client.get("/containers/json", params={"all": "1"})).json() == []


# -- networks --------------------------------------------------------------------------------

BACKEND = {"Name": "backend", "IPAM": {"Config": [{"Subnet": "10.77.0.0/24"}]}, "Labels": {"team": "a"}}


async def test_network_bodies_match_their_schemas(spec: dict[str, Any], client: Client) -> None:
    listed = await check(spec, await client.get("/networks"), "GET", "/networks")
    assert [(n["Name"], n["Driver"]) for n in listed] == [("bridge", "bridge"), ("none", "null"), ("user", "user")]

    response = await client.post("/networks/create", json=BACKEND)
    assert response.status == 201, await response.text()
    created = await check(spec, response, "POST", "/networks/create")
    for ref in ("backend", created["Id"], created["Id"][:12]):
        response = await client.get(f"/networks/{ref}")
        assert response.status == 200, ref
        network = await check(spec, response, "GET", "/networks/{id}")
        assert network["Id"] == created["Id"] and network["Driver"] == "bridge"
        assert network["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"}]
        assert network["Labels"] == {"team": "a"} and network["Containers"] == {}
    response = await client.post("/networks/create", json={"Name": "front"})  # a free subnet is picked
    assert response.status == 201, await response.text()
    listed = await check(spec, await client.get("/networks"), "GET", "/networks")
    assert [n["Name"] for n in listed] == ["bridge", "none", "user", "backend", "front"]

    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    response = await client.post("/containers/create", params={"name": "one"}, json={"Image": "tiny", "Cmd": ["true"]})
    assert response.status == 201
    for url, template, body in (
            ("/networks/front/connect", "/networks/{id}/connect",
             {"Container": "one", "EndpointConfig": {"Aliases": ["web"]}}),
            ("/networks/bridge/disconnect", "/networks/{id}/disconnect", {"Container": "one"})):
        response = await client.post(url, json=body)
        assert response.status == 200, (url, await response.text())
        assert "200" in spec["paths"][template]["post"]["responses"]
    inspected = await check(spec, await client.get("/containers/one/json"), "GET", "/containers/{id}/json")
    assert inspected["HostConfig"]["NetworkMode"] == "bridge", "docker keeps the mode it was created with"

    pruned = await client.post("/networks/prune")
    assert await check(spec, pruned, "POST", "/networks/prune") == {"NetworksDeleted": ["backend"]}
    assert (await client.delete("/containers/one")).status == 204
    assert (await client.delete("/networks/front")).status == 204
    assert "204" in spec["paths"]["/networks/{id}"]["delete"]["responses"]
    assert await check(spec, await client.post("/networks/prune"), "POST", "/networks/prune") == {
        "NetworksDeleted": []}
    listed = await check(spec, await client.get("/networks"), "GET", "/networks")
    assert [n["Name"] for n in listed] == ["bridge", "none", "user"]


async def test_create_with_networking_is_shown_by_inspect(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    assert (await client.post("/networks/create", json=BACKEND)).status == 201
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": "8080"}], "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    response = await client.post("/containers/create", params={"name": "web"}, json={
        "Image": "tiny", "Cmd": ["true"], "Hostname": "www", "NetworkMode": "backend", "PortBindings": bindings,
        "ExposedPorts": {"9000/tcp": {}}, "Dns": ["10.77.0.53"], "DnsSearch": ["example.org"],
        "DnsOptions": ["ndots:2"], "ExtraHosts": ["db:10.77.0.9"], "MacAddress": "02:42:0a:4d:00:07",
        "NetworkingConfig": {"EndpointsConfig": {"backend": {"Aliases": ["api"],
                                                             "IPAMConfig": {"IPv4Address": "10.77.0.7"}}}},
    })
    assert response.status == 201, await response.text()
    await check(spec, response, "POST", "/containers/create")

    inspected = await check(spec, await client.get("/containers/web/json"), "GET", "/containers/{id}/json")
    assert inspected["Config"]["Hostname"] == "www"
    assert inspected["Config"]["ExposedPorts"] == {"9000/tcp": {}, "80/tcp": {}, "53/udp": {}}, "-p exposes too"
    host = inspected["HostConfig"]
    assert host["NetworkMode"] == "backend" and host["PortBindings"] == bindings and host["PublishAllPorts"] is False
    assert (host["Dns"], host["DnsSearch"], host["DnsOptions"], host["ExtraHosts"]) == (
        ["10.77.0.53"], ["example.org"], ["ndots:2"], ["db:10.77.0.9"])
    # Not running: nothing published and no address yet.
    assert inspected["NetworkSettings"] == {"Ports": {"9000/tcp": None, "80/tcp": None, "53/udp": None},
                                           "Networks": {}, "IPAddress": "",
                                           "IPPrefixLen": 0, "Gateway": "", "MacAddress": ""}
    (summary,) = await check(spec, await client.get("/containers/json", params={"all": "1"}),
                             "GET", "/containers/json")
    assert summary["HostConfig"] == {"NetworkMode": "backend"} and summary["Ports"] == []

    response = await client.post("/containers/create", json={"Image": "tiny", "Cmd": ["true"], "NetworkMode": "user",
                                                             "PublishAllPorts": True,
                                                             "ExposedPorts": {"80/tcp": {}}})
    assert response.status == 201, await response.text()
    inspected = await (await client.get(f"/containers/{(await response.json())['Id']}/json")).json()
    assert conforms(spec, inspected, response_schema(spec, "GET", "/containers/{id}/json", 200)) == []
    assert inspected["HostConfig"]["NetworkMode"] == "user" and inspected["HostConfig"]["PublishAllPorts"] is True
    assert inspected["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": ""}]}

    response = await client.post("/containers/create", json={"Image": "tiny", "Cmd": ["true"]})
    inspected = await (await client.get(f"/containers/{(await response.json())['Id']}/json")).json()
    assert inspected["HostConfig"]["NetworkMode"] == "bridge", "the daemon's default"


async def test_network_errors_match_the_error_schema(spec: dict[str, Any], client: Client) -> None:
    await client.post("/images/import", params={"repo": "tiny"}, data=rootfs())
    await client.post("/containers/create", params={"name": "one"}, json={"Image": "tiny", "Cmd": ["true"]})
    await client.post("/networks/create", json=BACKEND)
    tiny = {"Image": "tiny", "Cmd": ["true"]}
    cases: list[tuple[str, str, str, Any, int]] = [
        ("POST", "/networks/create", "/networks/create", {}, 400),
        ("POST", "/networks/create", "/networks/create", [], 400),
        ("POST", "/networks/create", "/networks/create", {"Name": "bad name"}, 400),
        ("POST", "/networks/create", "/networks/create", {"Name": "x", "Driver": "overlay"}, 400),
        ("POST", "/networks/create", "/networks/create",
         {"Name": "x", "IPAM": {"Config": [{"Subnet": "10.1/33"}]}}, 400),
        ("POST", "/networks/create", "/networks/create",
         {"Name": "x", "IPAM": {"Config": [{"Subnet": "10.78.0.0/24", "Gateway": "10.79.0.1"}]}}, 400),
        ("POST", "/networks/create", "/networks/create", {"Name": "backend"}, 409),
        ("POST", "/networks/create", "/networks/create", {"Name": "bridge"}, 409),
        ("POST", "/networks/create", "/networks/create",
         {"Name": "x", "IPAM": {"Config": [{"Subnet": "10.77.0.0/16"}]}}, 409),
        ("GET", "/networks/nosuch", "/networks/{id}", None, 404),
        ("DELETE", "/networks/nosuch", "/networks/{id}", None, 404),
        ("DELETE", "/networks/bridge", "/networks/{id}", None, 400),
        ("POST", "/networks/nosuch/connect", "/networks/{id}/connect", {"Container": "one"}, 404),
        ("POST", "/networks/backend/connect", "/networks/{id}/connect", {"Container": "nobody"}, 404),
        ("POST", "/networks/backend/connect", "/networks/{id}/connect", [], 400),
        ("POST", "/networks/none/connect", "/networks/{id}/connect", {"Container": "one"}, 400),
        ("POST", "/networks/backend/connect", "/networks/{id}/connect",
         {"Container": "one", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.1.0.1"}}}, 400),
        ("POST", "/networks/bridge/connect", "/networks/{id}/connect", {"Container": "one"}, 409),
        ("POST", "/networks/backend/disconnect", "/networks/{id}/disconnect", {"Container": "one"}, 404),
        ("POST", "/networks/nosuch/disconnect", "/networks/{id}/disconnect", {"Container": "one"}, 404),
        ("POST", "/networks/bridge/disconnect", "/networks/{id}/disconnect", {"Container": "nobody"}, 404),
        ("POST", "/containers/create", "/containers/create", {**tiny, "NetworkMode": "host"}, 400),
        ("POST", "/containers/create", "/containers/create",
         {**tiny, "NetworkMode": "none", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}, 400),
        ("POST", "/containers/create", "/containers/create",
         {**tiny, "PortBindings": {"80/tcp": [{"HostPort": "0x50"}]}}, 400),
        ("POST", "/containers/create", "/containers/create", {**tiny, "PortBindings": {"80/sctp": []}}, 400),
        ("POST", "/containers/create", "/containers/create",
         {**tiny, "NetworkingConfig": {"EndpointsConfig": {"bridge": {"IPAMConfig": {"IPv4Address": "172.31.0.9"}}}}},
         400),
        ("POST", "/containers/create", "/containers/create",
         {**tiny, "NetworkingConfig": {"EndpointsConfig": {"bridge": {}, "backend": {}}}}, 400),
        ("POST", "/containers/create", "/containers/create", {**tiny, "NetworkMode": "nosuch"}, 404),
    ]
    for method, url, template, body, status in cases:
        response = await client.request(method, url, json=body)
        assert response.status == status, (method, url, body, await response.text())
        await check(spec, response, method, template)
