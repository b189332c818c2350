"""Pods: several containers in one VM, from a spec file (``docs/pod-spec.md``).

A pod is one VM: its containers share its kernel and its network (they reach each other on
localhost), and each has its own root filesystem, mount namespace and cgroup.  The spec is
checked against ``pod-spec.schema.json`` (the schema users see is the one hyperd enforces)
and turned into one ``CreateRequest`` per container; hyperd creates them all or none.

A pod's VM is sized from the spec's resources, or from its containers' limits.  Every disk a
container needs (its image, volumes) is attached when the VM boots: microvm has no hotplug,
so ``run --pod`` adds a container to a running pod only when its image's disk is already
there and it asks for no disk or share of its own.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from hyperd.errors import InvalidArgument
from hyperd.isolation import MIN_MEMORY, Resources, parse_size
from hyperd.network import NetworkRequest
from hyperd.network.ports import PortBinding
from hyperd.state import CreateRequest
from hyperd.volumes import Mount, checked

SCHEMA = json.loads(Path(__file__).with_name("pod-spec.schema.json").read_text())
RESTART = {"never": "no", "always": "always", "onFailure": "on-failure", "unlessStopped": "unless-stopped"}
"""The spec's restart policies (Hyper's names) as docker's."""
POD_LABEL = "io.hyper.pod"
"""Set on each container of a pod, so that ``ps --filter label=io.hyper.pod=NAME`` finds them."""


@dataclass
class PodRecord:
    """A pod as hyperd keeps it: its spec and its containers, in the spec's order."""

    id: str
    name: str
    spec: dict[str, Any]
    containers: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def vcpus(self) -> int:
        return int((self.spec.get("resources") or {}).get("vcpus") or 0)

    @property
    def memory_mib(self) -> int:
        memory = (self.spec.get("resources") or {}).get("memory")
        return _bytes(memory, "pod memory") >> 20 if memory is not None else 0

    @property
    def shares(self) -> dict[str, bool]:
        share = self.spec.get("share") or {}
        return {"pid": bool(share.get("pid")), "ipc": bool(share.get("ipc"))}


def validate(spec: Any) -> dict[str, Any]:
    """``spec`` if it follows the schema; InvalidArgument naming the first thing wrong otherwise."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(spec))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the spec"
        raise InvalidArgument(f"invalid pod spec: {where}: {error.message}")
    assert isinstance(spec, dict)
    names = [c["name"] for c in spec["containers"]]
    for name in names:
        if names.count(name) > 1:
            raise InvalidArgument(f"invalid pod spec: duplicate container name {name!r}")
    volumes = {v["name"]: v for v in spec.get("volumes") or ()}
    files = {f["name"] for f in spec.get("files") or ()}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts") or ():
            if mount["name"] not in volumes:
                raise InvalidArgument(f"invalid pod spec: container {container['name']!r} mounts volume "
                                      f"{mount['name']!r}, which the pod does not declare")
        for injected in container.get("files") or ():
            if injected["name"] not in files:
                raise InvalidArgument(f"invalid pod spec: container {container['name']!r} uses file "
                                      f"{injected['name']!r}, which the pod does not declare")
    return spec


def new_record(spec: dict[str, Any]) -> PodRecord:
    return PodRecord(id=secrets.token_hex(32), name=spec["id"], spec=spec)


def container_name(pod: str, container: str) -> str:
    return f"{pod}-{container}"


def requests(record: PodRecord) -> list[tuple[str, CreateRequest]]:
    """(container name, its create request) for each container of the pod."""
    spec = record.spec
    volumes = {v["name"]: v for v in spec.get("volumes") or ()}
    files = {f["name"]: f for f in spec.get("files") or ()}
    made = []
    for container in spec["containers"]:
        resources = container.get("resources") or {}
        memory = resources.get("memory")
        network = NetworkRequest(
            mode=spec.get("network") or "",
            ports=tuple(PortBinding(p["containerPort"], p.get("protocol", "tcp"), p.get("hostIP", ""),
                                    p.get("hostPort", 0)) for p in container.get("ports") or ()),
            hostname=spec.get("hostname") or record.name,
            dns=tuple(spec.get("dns") or ()), dns_search=tuple(spec.get("dnsSearch") or ()),
        )
        request = CreateRequest(
            image=container["image"],
            cmd=list(container["args"]) if "args" in container else None,
            entrypoint=list(container["command"]) if "command" in container else None,
            env=[f"{key}={value}" for key, value in (container.get("env") or {}).items()],
            workdir=container.get("workingDir", ""), user=container.get("user", ""),
            network=network, tty=bool(container.get("tty")),
            restart=RESTART[spec.get("restartPolicy", "never")],
            labels={**(spec.get("labels") or {}), **(container.get("labels") or {}), POD_LABEL: record.name},
            resources=Resources.parse(memory=_bytes(memory, "memory") if memory is not None else 0,
                                      cpus=float(resources.get("cpus") or 0)),
            mounts=tuple(_mount(record.name, volumes[m["name"]], m) for m in container.get("volumeMounts") or ()),
            files=tuple((f["path"], files[f["name"]]["content"], int(files[f["name"]].get("mode", 0o644)))
                        for f in container.get("files") or ()),
            pod=record.id,
        )
        made.append((container_name(record.name, container["name"]), request))
    return made


def _mount(pod: str, volume: dict[str, Any], mount: dict[str, Any]) -> Mount:
    readonly = bool(mount.get("readOnly"))
    if "hostPath" in volume:
        return checked(Mount("bind", volume["hostPath"], mount["mountPath"], readonly))
    return checked(Mount("volume", volume.get("volume") or f"{pod}-{volume['name']}", mount["mountPath"], readonly))


def _bytes(value: int | str, what: str) -> int:
    size = value if isinstance(value, int) else parse_size(str(value).rstrip("bB").rstrip("iI"), what)
    if size < MIN_MEMORY:
        raise InvalidArgument(f"invalid pod spec: {what} {value!r} is below the minimum of {MIN_MEMORY >> 20} MiB")
    return size


def to_record(record: PodRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "spec": record.spec, "containers": record.containers,
            "created": record.created}
