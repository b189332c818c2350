"""Pod specs: the schema hyperd enforces, and the containers a spec becomes."""

from __future__ import annotations

from typing import Any

import pytest

from hyperd.errors import InvalidArgument
from hyperd.pod import POD_LABEL, new_record, requests, validate
from hyperd.volumes import Mount


def spec(**extra: Any) -> dict[str, Any]:
    return {"id": "shop", "containers": [{"name": "web", "image": "busybox"}], **extra}


@pytest.mark.parametrize(("bad", "message"), [
    ({"id": "shop"}, "'containers' is a required property"),
    (spec(colour="red"), "the spec: Additional properties are not allowed ('colour' was unexpected)"),
    (spec(containers=[{"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]),
     "containers/0/ports/0/containerPort: 70000 is greater than the maximum of 65535"),
    (spec(id="-bad"), "id: '-bad' does not match"),
    (spec(restartPolicy="sometimes"), "restartPolicy: 'sometimes' is not one of"),
    (spec(containers=[{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]), "duplicate container name 'a'"),
    (spec(containers=[{"name": "a", "image": "x", "files": [{"name": "f", "path": "/f"}]}]),
     "uses file 'f', which the pod does not declare"),
    (spec(share={"net": True}), "share: Additional properties are not allowed"),
    ([1, 2], "the spec: [1, 2] is not of type 'object'"),
])
def test_invalid_specs_name_what_is_wrong(bad: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(bad)
    assert str(caught.value).startswith("invalid pod spec: ") and message in str(caught.value), str(caught.value)


def test_a_spec_becomes_one_create_request_per_container() -> None:
    record = new_record(validate({
        "id": "shop", "hostname": "front", "restartPolicy": "onFailure", "labels": {"team": "a"},
        "dns": ["192.0.2.53"], "network": "backend",
        "volumes": [{"name": "site", "hostPath": "/srv/site"}, {"name": "data"}],
        "files": [{"name": "conf", "content": "x=1\n", "mode": 0o600}],
        "containers": [
            {"name": "web", "image": "busybox", "command": ["httpd"], "args": ["-f"], "env": {"A": "1"},
             "ports": [{"containerPort": 80, "hostPort": 8080}],
             "volumeMounts": [{"name": "site", "mountPath": "/www", "readOnly": True},
                              {"name": "data", "mountPath": "/data"}],
             "files": [{"name": "conf", "path": "/etc/web.conf"}], "resources": {"memory": "64m", "cpus": 0.5}},
            {"name": "cache", "image": "redis:7"},
        ]}))
    (web_name, web), (cache_name, cache) = requests(record)
    assert (web_name, cache_name) == ("shop-web", "shop-cache")
    assert (web.entrypoint, web.cmd, web.env) == (["httpd"], ["-f"], ["A=1"])
    assert (cache.entrypoint, cache.cmd) == (None, None)  # the image's
    assert web.restart == "on-failure" and web.pod == record.id
    assert web.labels == {"team": "a", POD_LABEL: "shop"}
    assert web.network.mode == "backend" and web.network.hostname == "front" and web.network.dns == ("192.0.2.53",)
    assert [(p.container_port, p.host_port) for p in web.network.ports] == [(80, 8080)]
    assert web.mounts == (Mount("bind", "/srv/site", "/www", readonly=True), Mount("volume", "shop-data", "/data"))
    assert web.files == (("/etc/web.conf", "x=1\n", 0o600),)
    assert web.resources.memory == 64 << 20 and web.resources.cpus == 0.5


def test_pod_sizes() -> None:
    record = new_record(validate(spec(resources={"vcpus": 2, "memory": "1g"}, share={"pid": True})))
    assert (record.vcpus, record.memory_mib, record.shares) == (2, 1024, {"pid": True, "ipc": False})
    with pytest.raises(InvalidArgument, match="below the minimum"):
        _ = new_record(validate(spec(resources={"memory": "1k"}))).memory_mib
