"""The REST API on hyperd's unix socket, described in ``hyperd/openapi.yaml``.

Handlers only translate: query and body in, a call on ``Daemon``, JSON or a stream
out.  ``STATUS`` is the one place where exceptions become HTTP statuses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import platform
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import aiohttp
from aiohttp import web

from hyperd import __version__, errors, logs
from hyperd.daemon import UNLIMITED, Daemon
from hyperd.events import FILTERS, Event
from hyperd.guest import Input
from hyperd.image import (
    ImageError,
    ImageInUse,
    ImageNotFound,
    InvalidArchive,
    InvalidLayer,
    InvalidReference,
    ManifestUnknown,
    archive,
    registry,
)
from hyperd.image.changes import InvalidChange
from hyperd.image.store import Image
from hyperd.isolation import Device, Resources, Security
from hyperd.network import Network, NetworkRequest, ports
from hyperd.network.manager import Member
from hyperd.pod import PodRecord
from hyperd.state import Container, ContainerState, CreateRequest, parse_signal, signal_name
from hyperd.volumes import Mount, Volumes, parse_bind, parse_mount
from hyperstart.protocol import VERSIONS

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("hyperd")

API_VERSION = "1.0"
STREAM_TYPE = "application/vnd.docker.multiplexed-stream"
RAW_TYPE = "application/vnd.docker.raw-stream"
DAEMON = web.AppKey("daemon", Daemon)

STATUS: list[tuple[type[Exception], int]] = [
    (errors.NotFound, 404),
    (ImageNotFound, 404),
    (ManifestUnknown, 404),
    (errors.InvalidArgument, 400),
    (InvalidReference, 400),
    (InvalidLayer, 400),
    (InvalidArchive, 400),
    (InvalidChange, 400),
    (errors.StartFailed, 400),
    (errors.Conflict, 409),
    (ImageInUse, 409),
    (ImageError, 500),
    (errors.HyperError, 500),
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ConnectionResetError:
        # The client went away in the middle of a streamed answer (a CLI killed, a pipe closed):
        # nothing to tell it, and nothing wrong here.  aiohttp finds the connection closed.
        return web.Response(status=204)
    except Exception as err:
        for kind, status in STATUS:
            if isinstance(err, kind):
                body: dict[str, Any] = {"message": str(err)}
                if isinstance(err, errors.StartFailed):
                    body["ExitCode"] = err.exit_code
                return web.json_response(body, status=status)
        raise


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0").lower() in ("1", "true", "yes")


def _streams(request: web.Request) -> set[int]:
    """The output streams asked for (1 stdout, 2 stderr); both when neither is named."""
    return {n for n, key in ((1, "stdout"), (2, "stderr")) if _flag(request, key)} or {1, 2}


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def _iso(timestamp: float) -> str:
    if not timestamp:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _ago(timestamp: float) -> str:
    seconds = max(0, int(datetime.now(UTC).timestamp() - timestamp))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return "Less than a second" if seconds < 1 else f"{seconds} second{'s' if seconds > 1 else ''}"


def _status(container: Container) -> str:
    if container.restarting:
        return f"Restarting ({container.exit_code}) {_ago(container.finished)} ago"
    if container.state == ContainerState.RUNNING:
        return f"Up {_ago(container.started)}" + (" (Paused)" if container.paused else "")
    if container.state == ContainerState.EXITED:
        return f"Exited ({container.exit_code}) {_ago(container.finished)} ago"
    return str(container.state).capitalize()


def _summary(container: Container) -> dict[str, Any]:
    return {
        "Id": container.id,
        "Names": [f"/{container.name}"],
        "Image": container.spec.image,
        "ImageID": container.spec.image_id,
        "Command": " ".join(container.spec.args),
        "Created": int(container.created),
        "State": "paused" if container.paused else str(container.state),
        "Status": _status(container),
        "Ports": container.ports,
        "Labels": dict(container.spec.labels),
        "HostConfig": {"NetworkMode": container.spec.network_mode},
    }


def _inspect(container: Container, volumes: Volumes) -> dict[str, Any]:
    spec = container.spec
    return {
        "Id": container.id,
        "Name": f"/{container.name}",
        "Created": _iso(container.created),
        "Path": spec.args[0] if spec.args else "",
        "Args": list(spec.args[1:]),
        "Image": spec.image_id,
        "RestartCount": container.restart_count,
        "State": {
            "Status": "paused" if container.paused else str(container.state),
            "Running": container.state == ContainerState.RUNNING,
            "Paused": container.paused,
            "ExitCode": container.exit_code,
            "Error": container.error or container.log_error,
            "StartedAt": _iso(container.started),
            "FinishedAt": _iso(container.finished),
            "Pid": container.vm_pid if container.state == ContainerState.RUNNING else 0,
            "Restarting": container.restarting,
            "OOMKilled": container.oom_killed,
            "Timings": container.timings,
        },
        "Config": {
            "Image": spec.image,
            "Cmd": list(spec.cmd),
            "Entrypoint": list(spec.entrypoint),
            "Env": list(spec.env),
            "WorkingDir": spec.workdir,
            "User": spec.user,
            "Labels": dict(spec.labels),
            "StopSignal": signal_name(spec.stop_signal),
            "StopTimeout": spec.stop_timeout,
            "ExposedPorts": {port: {} for port in spec.exposed_ports},
            "Hostname": spec.hostname or container.id[:12],
            "Tty": spec.tty,
            "OpenStdin": spec.open_stdin,
            "StdinOnce": spec.stdin_once,
        },
        "HostConfig": {"AutoRemove": spec.autoremove, "Init": True,
                       "Memory": spec.resources.memory, "MemorySwap": spec.resources.memory_swap,
                       "NanoCpus": round(spec.resources.cpus * 1e9), "CpuShares": spec.resources.cpu_shares,
                       "CpusetCpus": spec.resources.cpuset_cpus, "PidsLimit": spec.resources.pids_limit or None,
                       "CapAdd": list(spec.security.cap_add), "CapDrop": list(spec.security.cap_drop),
                       "Privileged": spec.security.privileged, "ReadonlyRootfs": spec.security.read_only,
                       "SecurityOpt": spec.security.security_opt(),
                       "Tmpfs": dict(spec.security.tmpfs),
                       "LogConfig": {"Type": spec.log.type, "Config": dict(spec.log.config)},
                       "Binds": [f"{m.source}:{m.target}{':ro' if m.readonly else ''}" for m in spec.mounts
                                 if not m.anonymous],
                       "Devices": [{"PathOnHost": d.host, "PathInContainer": d.container,
                                    "CgroupPermissions": d.permissions} for d in spec.devices],
                       "Ulimits": [{"Name": n, "Soft": _limit(soft), "Hard": _limit(hard)}
                                   for n, soft, hard in spec.ulimits],
                       "Sysctls": dict(spec.sysctls),
                       "RestartPolicy": {"Name": str(spec.restart.policy),
                                         "MaximumRetryCount": spec.restart.max_retries},
                       "StorageOpt": {"size": str(spec.storage_size)} if spec.storage_size else {},
                       "NetworkMode": spec.network_mode, "PortBindings": _bindings(spec.ports),
                       "PublishAllPorts": spec.publish_all, "Dns": list(spec.dns), "DnsSearch": list(spec.dns_search),
                       "DnsOptions": list(spec.dns_options), "ExtraHosts": list(spec.extra_hosts)},
        "NetworkSettings": _network_settings(container),
        "Mounts": [_mount(volumes, m) for m in spec.mounts],
    }


def _mount(volumes: Volumes, mount: Mount) -> dict[str, Any]:
    """A mount as docker's inspect shows it."""
    described: dict[str, Any] = {"Type": mount.type, "Destination": mount.target, "Mode": "ro" if mount.readonly
                                 else "", "RW": not mount.readonly, "Propagation": "rprivate"}
    if mount.type == "volume":
        return described | {"Name": mount.source, "Driver": "local",
                            "Source": str(volumes.directory(mount.source) / "disk.ext4")}
    return described | {"Source": mount.source}


def _limit(value: int) -> int:
    """A resource limit as docker shows it: -1 for unlimited."""
    return -1 if value == UNLIMITED else value


def _bindings(bindings: tuple[ports.PortBinding, ...]) -> dict[str, list[dict[str, str]]]:
    """Docker's PortBindings: ``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``."""
    found: dict[str, list[dict[str, str]]] = {}
    for b in bindings:
        host_port = f"{b.host_port}-{b.host_port_end}" if b.host_port_end else str(b.host_port or "")
        found.setdefault(b.key, []).append({"HostIp": b.host_ip, "HostPort": host_port})
    return found


def _network_settings(container: Container) -> dict[str, Any]:
    published: dict[str, list[dict[str, str]] | None] = {port: None for port in container.spec.exposed_ports}
    for port in container.ports:
        key = f"{port['PrivatePort']}/{port['Type']}"
        published[key] = [*(published.get(key) or []), {"HostIp": port["IP"], "HostPort": str(port["PublicPort"])}]
    first: dict[str, Any] = next(iter(container.networks.values()), {})
    return {"Ports": published, "Networks": container.networks, "IPAddress": first.get("IPAddress", ""),
            "IPPrefixLen": first.get("IPPrefixLen", 0), "Gateway": first.get("Gateway", ""),
            "MacAddress": first.get("MacAddress", "")}


def _parse_bindings(value: Any) -> tuple[ports.PortBinding, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise errors.InvalidArgument("PortBindings must be an object of port: [bindings]")
    found: list[ports.PortBinding] = []
    for key, entries in value.items():
        container_port, _, protocol = str(key).partition("/")
        for entry in entries or [{}]:
            if not isinstance(entry, dict):
                raise errors.InvalidArgument(f"PortBindings[{key!r}] must be a list of objects")
            host_ip, host_port = str(entry.get("HostIp") or ""), str(entry.get("HostPort") or "")
            host = f"[{host_ip}]" if ":" in host_ip else host_ip
            spec = f"{host}:{host_port}:{container_port}" if host_ip else f"{host_port}:{container_port}"
            found += ports.parse(f"{spec}/{protocol or 'tcp'}")
    return tuple(found)


def _network_request(body: dict[str, Any]) -> NetworkRequest:
    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.InvalidArgument(f"{key} must be a list of strings")
        return tuple(value)

    mode = str(body.get("NetworkMode") or "")
    endpoints = _object(_object(body.get("NetworkingConfig"), "NetworkingConfig").get("EndpointsConfig"),
                        "NetworkingConfig.EndpointsConfig")
    if len(endpoints) > 1:
        raise errors.InvalidArgument("NetworkingConfig.EndpointsConfig may name one network (connect others "
                                     "with hyper network connect)")
    named, endpoint = next(iter(endpoints.items()), ("", {}))
    endpoint = _object(endpoint, f"EndpointsConfig[{named!r}]")
    if named and named != "default":
        if mode and mode != named:
            raise errors.InvalidArgument(f"NetworkMode {mode!r} and EndpointsConfig's network {named!r} differ")
        mode = named
    aliases, ip, mac = _endpoint_config(endpoint)
    return NetworkRequest(
        mode=mode, aliases=aliases, ip=ip, mac=mac or str(body.get("MacAddress") or ""),
        ports=_parse_bindings(body.get("PortBindings")), publish_all=bool(body.get("PublishAllPorts")),
        expose=tuple(str(k) for k in (body.get("ExposedPorts") or {})), hostname=str(body.get("Hostname") or ""),
        dns=strings("Dns"), dns_search=strings("DnsSearch"), dns_options=strings("DnsOptions"),
        extra_hosts=strings("ExtraHosts"),
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    """An optional JSON object of a request (absent: empty); InvalidArgument if it is something else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"{what} must be an object")
    return value


def _endpoint_config(config: dict[str, Any]) -> tuple[tuple[str, ...], str, str]:
    """Docker's EndpointConfig: (aliases, IPv4 address, MAC address)."""
    aliases = config.get("Aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise errors.InvalidArgument("Aliases must be a list of strings")
    ip = _object(config.get("IPAMConfig"), "IPAMConfig").get("IPv4Address") or ""
    return tuple(aliases), str(ip), str(config.get("MacAddress") or "")


def _network(network: Network, members: dict[str, Member]) -> dict[str, Any]:
    return {
        "Name": network.name, "Id": network.id, "Created": _iso(network.created), "Scope": network.scope,
        "Driver": str(network.driver), "Internal": False, "Labels": network.labels,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": network.subnet, "Gateway": network.gateway}]
                 if network.subnet else []},
        "Options": {"com.docker.network.bridge.name": network.bridge} if network.bridge else {},
        "Containers": {cid: {"Name": m.names[0], "IPv4Address": str(m.address), "MacAddress": m.mac}
                       for cid, m in members.items()},
    }


async def ping(_request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def version(request: web.Request) -> web.Response:
    hypervisor = _daemon(request).hypervisor.describe()
    return web.json_response({
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "ProtocolVersions": list(VERSIONS),
        "Python": platform.python_version(),
        "Os": "linux",
        "Arch": platform.machine(),
        "KernelVersion": platform.release(),
        "Hypervisor": f"qemu {hypervisor['HypervisorVersion']}",
        "Accelerator": hypervisor["Accelerator"],
    })


async def info(request: web.Request) -> web.Response:
    return web.json_response(_daemon(request).info())


async def create_container(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError as err:
        raise errors.InvalidArgument(f"request body is not JSON: {err}") from err
    if not isinstance(body, dict) or not isinstance(body.get("Image"), str) or not body["Image"]:
        raise errors.InvalidArgument("a container needs an Image")

    def strings(key: str) -> list[str] | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.InvalidArgument(f"{key} must be a list of strings")
        return list(value)

    timeout = body.get("StopTimeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0):
        raise errors.InvalidArgument("StopTimeout must be a non-negative number of seconds")
    ulimits = body.get("Ulimits") or []
    if not isinstance(ulimits, list) or not all(isinstance(u, dict) for u in ulimits):
        raise errors.InvalidArgument("Ulimits must be a list of {Name, Soft, Hard}")
    container = _daemon(request).create(CreateRequest(
        image=body["Image"], cmd=strings("Cmd"), entrypoint=strings("Entrypoint"), env=strings("Env") or [],
        workdir=str(body.get("WorkingDir") or ""), user=str(body.get("User") or ""),
        autoremove=bool(body.get("AutoRemove")), storage_opt=_string_map(body, "StorageOpt"),
        network=_network_request(body), tty=bool(body.get("Tty")), open_stdin=bool(body.get("OpenStdin")),
        stdin_once=bool(body.get("StdinOnce")), restart=_restart_policy(body.get("RestartPolicy")),
        labels=_string_map(body, "Labels"), stop_signal=str(body.get("StopSignal") or ""), stop_timeout=timeout,
        ulimits=tuple(f"{u.get('Name')}={u.get('Soft')}:{u.get('Hard')}" for u in ulimits),
        sysctls=_string_map(body, "Sysctls"), resources=_resources(body), security=_security(body),
        devices=_devices(body), mounts=_mounts(body), pod=_pod(body), log=_log_config(body),
    ), request.query.get("name"))
    return web.json_response({"Id": container.id, "Warnings": []}, status=201)


def _number(body: dict[str, Any], key: str) -> int:
    value = body.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidArgument(f"{key} must be an integer")
    return value


async def update_container(request: web.Request) -> web.Response:
    body = await _json_object(request)
    fields = {"Memory": "memory", "MemorySwap": "memory_swap", "CpuShares": "cpu_shares", "PidsLimit": "pids_limit"}
    changes: dict[str, Any] = {name: _number(body, key) for key, name in fields.items() if key in body}
    if "NanoCpus" in body:
        changes["cpus"] = _number(body, "NanoCpus") / 1e9
    if "CpusetCpus" in body:
        changes["cpuset_cpus"] = str(body.get("CpusetCpus") or "")
    await _daemon(request).update(request.match_info["id"], changes)
    return web.json_response({"Warnings": []})


def _resources(body: dict[str, Any]) -> Resources:
    return Resources.parse(memory=_number(body, "Memory"), memory_swap=_number(body, "MemorySwap"),
                           cpus=_number(body, "NanoCpus") / 1e9, cpu_shares=_number(body, "CpuShares"),
                           cpuset_cpus=str(body.get("CpusetCpus") or ""), pids_limit=_number(body, "PidsLimit"))


def _devices(body: dict[str, Any]) -> tuple[Device, ...]:
    """Docker's Devices: ``[{"PathOnHost", "PathInContainer", "CgroupPermissions"}]``."""
    devices = body.get("Devices") or []
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise errors.InvalidArgument("Devices must be a list of objects")
    return tuple(Device.parse(f"{d.get('PathOnHost') or ''}:{d.get('PathInContainer') or ''}:"
                              f"{d.get('CgroupPermissions') or 'rwm'}") for d in devices)


def _log_config(body: dict[str, Any]) -> logs.LogConfig:
    """Docker's LogConfig: ``{"Type": "json-file", "Config": {"max-size": "10m"}}``."""
    config = _object(body.get("LogConfig"), "LogConfig")
    return logs.LogConfig.parse(str(config.get("Type") or ""), _string_map(config, "Config"))


def _pod(body: dict[str, Any]) -> str:
    """hyper's ``Pod`` (``run --pod``): a container added to a pod shares the network its VM booted with."""
    pod = str(body.get("Pod") or "")
    if pod and (body.get("PortBindings") or body.get("PublishAllPorts")):
        raise errors.InvalidArgument("conflicting options: --pod and port publishing (a pod's ports are "
                                     "published by its spec, when its VM boots)")
    if pod and (body.get("NetworkMode") or body.get("NetworkingConfig")):
        raise errors.InvalidArgument("conflicting options: --pod and --network (a container joins its pod's network)")
    return pod


def _mounts(body: dict[str, Any]) -> tuple[Mount, ...]:
    """Docker's Binds (``-v`` strings) and Mounts (``--mount`` objects)."""
    binds, mounts = body.get("Binds") or [], body.get("Mounts") or []
    if not isinstance(binds, list) or not all(isinstance(b, str) for b in binds):
        raise errors.InvalidArgument("Binds must be a list of strings")
    if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
        raise errors.InvalidArgument("Mounts must be a list of objects")
    return (*(parse_bind(b) for b in binds), *(parse_mount(m) for m in mounts))


def _security(body: dict[str, Any]) -> Security:
    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.InvalidArgument(f"{key} must be a list of strings")
        return tuple(value)

    return Security.parse(cap_add=strings("CapAdd"), cap_drop=strings("CapDrop"),
                          privileged=bool(body.get("Privileged")), security_opt=strings("SecurityOpt"),
                          read_only=bool(body.get("ReadonlyRootfs")), tmpfs=_string_map(body, "Tmpfs"))


def _restart_policy(value: Any) -> str:
    """Docker's ``{"Name": "on-failure", "MaximumRetryCount": 3}`` as ``on-failure:3``."""
    if value is None:
        return "no"
    if not isinstance(value, dict) or not isinstance(value.get("Name", ""), str):
        raise errors.InvalidArgument("RestartPolicy must be an object with a Name")
    count = value.get("MaximumRetryCount") or 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise errors.InvalidArgument("RestartPolicy.MaximumRetryCount must be a non-negative integer")
    name = value.get("Name") or "no"
    return f"{name}:{count}" if count else name


def _string_map(body: dict[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise errors.InvalidArgument(f"{key} must be an object of strings")
    return dict(value)


async def start_container(request: web.Request) -> web.Response:
    await _daemon(request).start(request.match_info["id"])
    return web.Response(status=204)


async def attach_container(request: web.Request) -> web.StreamResponse:
    """The container's output from now on; with ``stdin=1`` the request body (chunked, sent while
    the answer streams back) is its stdin.  A tty container's output is raw, not framed."""
    daemon = _daemon(request)
    container = daemon.get(request.match_info["id"])
    wanted = _streams(request)
    queue = daemon.subscribe(container)
    tty = container.spec.tty
    response = web.StreamResponse(headers={"Content-Type": RAW_TYPE if tty else STREAM_TYPE})
    feeding = None
    if _flag(request, "stdin") and container.spec.open_stdin:
        async def stdin() -> Input | None:
            return await daemon.stdin_of(container)

        feeding = asyncio.create_task(_feed(request, stdin, container.spec.stdin_once))
    try:
        await response.prepare(request)
        while (item := await queue.get()) is not None:
            if item[0] in wanted:
                await response.write(item[1] if tty else _frame(*item))
    finally:
        daemon.unsubscribe(container, queue)
        if feeding is not None:
            feeding.cancel()
    await response.write_eof()
    return response


async def _feed(request: web.Request, target: Callable[[], Awaitable[Input | None]], close: bool) -> None:
    """Copy the request body into a process's stdin as it arrives; its end ends stdin when ``close``.
    A client that goes away (a detach) ends nothing."""
    stdin = await target()
    if stdin is None:
        return
    with contextlib.suppress(ConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError):
        while data := await request.content.readany():
            await stdin.write(data)
        if close:
            stdin.close()


async def top_container(request: web.Request) -> web.Response:
    processes, booted = await _daemon(request).top(request.match_info["id"])
    rows = [[str(p.uid), str(p.pid), str(p.ppid),
             datetime.fromtimestamp(booted + p.start).strftime("%H:%M"),
             f"{int(p.cpu) // 3600:02d}:{int(p.cpu) // 60 % 60:02d}:{int(p.cpu) % 60:02d}", p.command]
            for p in processes]
    return web.json_response({"Titles": ["UID", "PID", "PPID", "STIME", "TIME", "CMD"], "Processes": rows})


async def container_stats(request: web.Request) -> web.StreamResponse:
    """Docker's stats: a sample a second (``stream=0``: one, with the one a second before as ``precpu``)."""
    daemon = _daemon(request)
    container = daemon.get(request.match_info["id"])
    previous = await daemon.stats(container.id)
    if request.query.get("stream", "1") in ("0", "false"):
        await asyncio.sleep(1)
        return web.json_response(_stats(container, await daemon.stats(container.id), previous))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    while container.state == ContainerState.RUNNING:
        await asyncio.sleep(1)
        try:
            sample = await daemon.stats(container.id)
        except errors.HyperError:
            break  # it stopped meanwhile
        await response.write(json.dumps(_stats(container, sample, previous)).encode() + b"\n")
        previous = sample
    await response.write_eof()
    return response


def _stats(container: Container, sample: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    def cpu(of: dict[str, Any]) -> dict[str, Any]:
        # system_cpu_usage counts wall time on every vCPU, so docker's formula gives % of one CPU.
        return {"cpu_usage": {"total_usage": of["guest"].cpu_ns}, "online_cpus": of["vcpus"],
                "system_cpu_usage": of["read"] * of["vcpus"]}

    guest = sample["guest"]
    return {
        "id": container.id, "name": f"/{container.name}", "read": _iso(sample["read"] / 1e9),
        "preread": _iso(previous["read"] / 1e9), "cpu_stats": cpu(sample), "precpu_stats": cpu(previous),
        "memory_stats": {"usage": guest.memory, "limit": guest.memory_total},
        "pids_stats": {"current": guest.pids},
        "networks": {"eth0": {"rx_bytes": guest.net_rx, "tx_bytes": guest.net_tx}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": guest.block_read},
                                                       {"op": "write", "value": guest.block_write}]},
        "vm": {"memory": sample["vm"]["memory"], "memory_limit": sample["vm_memory_limit"],
               "cpu_ns": sample["vm"]["cpu_ns"]},
    }


async def resize_container(request: web.Request) -> web.Response:
    rows, cols = _size(request)
    await _daemon(request).resize(request.match_info["id"], rows, cols)
    return web.Response(status=200)


def _size(request: web.Request) -> tuple[int, int]:
    try:
        return int(request.query.get("h", "")), int(request.query.get("w", ""))
    except ValueError:
        raise errors.InvalidArgument("h and w must be numbers of rows and columns") from None


async def create_exec(request: web.Request) -> web.Response:
    body = await _json_object(request)
    cmd = body.get("Cmd") or []
    env = body.get("Env") or []
    for key, value in (("Cmd", cmd), ("Env", env)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.InvalidArgument(f"{key} must be a list of strings")
    ex = _daemon(request).create_exec(request.match_info["id"], cmd, env, str(body.get("WorkingDir") or ""),
                                      str(body.get("User") or ""), bool(body.get("Tty")),
                                      bool(body.get("AttachStdin")))
    return web.json_response({"Id": ex.id}, status=201)


async def start_exec(request: web.Request) -> web.StreamResponse:
    """Run the exec instance; unless ``detach=1``, stream its output (raw with a tty) while the
    request body, if it was created with AttachStdin, is its stdin."""
    daemon = _daemon(request)
    detach = _flag(request, "detach")
    ex = await daemon.start_exec(request.match_info["id"], detach)
    if detach:
        return web.Response(status=200)
    response = web.StreamResponse(headers={"Content-Type": RAW_TYPE if ex.tty else STREAM_TYPE})
    feeding = None
    if ex.stdin is not None:
        async def stdin() -> Input | None:
            return ex.stdin

        feeding = asyncio.create_task(_feed(request, stdin, True))
    try:
        await response.prepare(request)
        while (item := await ex.output.get()) is not None:
            await response.write(item[1] if ex.tty else _frame(*item))
    finally:
        if feeding is not None:
            feeding.cancel()
    await response.write_eof()
    return response


async def inspect_exec(request: web.Request) -> web.Response:
    ex = _daemon(request).get_exec(request.match_info["id"])
    return web.json_response({
        "ID": ex.id, "ContainerID": ex.container.id, "Running": ex.running, "ExitCode": ex.exit_code,
        "OpenStdin": ex.open_stdin,
        "ProcessConfig": {"entrypoint": ex.args[0], "arguments": list(ex.args[1:]), "tty": ex.tty,
                          "user": ex.user, "workingDir": ex.workdir},
    })


async def resize_exec(request: web.Request) -> web.Response:
    ex = _daemon(request).get_exec(request.match_info["id"])
    rows, cols = _size(request)
    await _daemon(request).resize(ex.container.id, rows, cols, ex.id)
    return web.Response(status=200)


async def wait_container(request: web.Request) -> web.Response:
    condition = request.query.get("condition", "not-running")
    if condition not in ("not-running", "next-exit"):
        raise errors.InvalidArgument(f"invalid condition {condition!r}: not-running or next-exit")
    container = await _daemon(request).wait(request.match_info["id"], next_exit=condition == "next-exit")
    error = {"Message": container.error} if container.error else None
    return web.json_response({"StatusCode": container.exit_code, "Error": error})


async def stop_container(request: web.Request) -> web.Response:
    timeout = request.query.get("t")
    try:
        seconds = float(timeout) if timeout is not None else None
    except ValueError as err:
        raise errors.InvalidArgument(f"invalid stop timeout {timeout!r}") from err
    stopped = await _daemon(request).stop(request.match_info["id"], seconds)
    return web.Response(status=204 if stopped else 304)


async def kill_container(request: web.Request) -> web.Response:
    number = parse_signal(request.query.get("signal", "SIGKILL"))
    await _daemon(request).kill(request.match_info["id"], number)
    return web.Response(status=204)


async def pause_container(request: web.Request) -> web.Response:
    await _daemon(request).pause(request.match_info["id"])
    return web.Response(status=204)


async def unpause_container(request: web.Request) -> web.Response:
    await _daemon(request).unpause(request.match_info["id"])
    return web.Response(status=204)


async def remove_container(request: web.Request) -> web.Response:
    await _daemon(request).remove(request.match_info["id"], force=_flag(request, "force"), volumes=_flag(request, "v"))
    return web.Response(status=204)


async def rename_container(request: web.Request) -> web.Response:
    name = request.query.get("name") or ""
    if not name:
        raise errors.InvalidArgument("name is required")
    _daemon(request).rename(request.match_info["id"], name)
    return web.Response(status=204)


async def prune_containers(request: web.Request) -> web.Response:
    removed, freed = await _daemon(request).prune()
    return web.json_response({"ContainersDeleted": removed, "SpaceReclaimed": freed})


async def export_container(request: web.Request) -> web.StreamResponse:
    return await _tar_response(request, _daemon(request).export(request.match_info["id"]))


def _path_query(request: web.Request) -> str:
    path = request.query.get("path")
    if not path:
        raise errors.InvalidArgument("path is required")
    return path


def _path_stat_header(stat: dict[str, Any]) -> dict[str, str]:
    return {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(stat).encode()).decode()}


async def head_archive(request: web.Request) -> web.Response:
    """docker's stat of a path in the container (``follow=1``, hyper's: of a symlink's target)."""
    stat = await _daemon(request).path_stat(request.match_info["id"], _path_query(request), _flag(request, "follow"))
    return web.Response(status=200, headers=_path_stat_header(stat))


async def get_archive(request: web.Request) -> web.StreamResponse:
    daemon, ref, path = _daemon(request), request.match_info["id"], _path_query(request)
    stat = await daemon.path_stat(ref, path)
    return await _tar_response(request, daemon.archive(ref, path), _path_stat_header(stat))


async def put_archive(request: web.Request) -> web.Response:
    await _daemon(request).extract(request.match_info["id"], _path_query(request),
                                   request.content.iter_chunked(1 << 20))
    return web.Response(status=200)


async def container_changes(request: web.Request) -> web.Response:
    return web.json_response(await _daemon(request).changes(request.match_info["id"]))


async def commit_container(request: web.Request) -> web.Response:
    query = request.query
    repo, tag = query.get("repo") or None, query.get("tag") or None
    if tag and not repo:
        raise errors.InvalidArgument("a tag needs a repository")
    image = await _daemon(request).commit(
        query.get("container", ""), f"{repo}:{tag}" if repo and tag else repo, comment=query.get("comment", ""),
        author=query.get("author", ""), changes=query.getall("changes", []), pause=query.get("pause", "1") != "0")
    return web.json_response({"Id": image.id}, status=201)


async def _tar_response(request: web.Request, chunks: AsyncIterator[bytes],
                        headers: dict[str, str] | None = None) -> web.StreamResponse:
    # The first chunk before the headers: a refusal still gets its own status.
    first = await anext(chunks, b"")
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar", **(headers or {})})
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def list_containers(request: web.Request) -> web.Response:
    found = _daemon(request).select(include_stopped=_flag(request, "all"))
    return web.json_response([_summary(c) for c in found])


async def inspect_container(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    return web.json_response(_inspect(daemon.get(request.match_info["id"]), daemon.volumes))


async def container_logs(request: web.Request) -> web.StreamResponse:
    daemon = _daemon(request)
    container = daemon.get(request.match_info["id"])
    wanted = _streams(request)
    stamps = _flag(request, "timestamps")
    tail = request.query.get("tail", "all")
    if tail != "all" and not tail.isdigit():
        raise errors.InvalidArgument(f"invalid tail {tail!r}: a number or 'all'")
    since, until = _moment(request, "since"), _moment(request, "until")
    if not container.spec.log.readable:
        raise errors.InvalidArgument("configured logging driver does not support reading")
    follow = _flag(request, "follow") and container.state == ContainerState.RUNNING
    # Subscribed and read with no await between: nothing is missed or repeated.
    queue = daemon.subscribe(container) if follow else None
    entries = [e for e in logs.read(daemon.log_path(container), container.spec.log.files()) if e.stream in wanted
               and (since is None or _seconds(e.time) >= since) and (until is None or _seconds(e.time) <= until)]
    response = web.StreamResponse(headers={"Content-Type": STREAM_TYPE})
    try:
        await response.prepare(request)
        if tail != "all":
            entries = entries[-int(tail):] if int(tail) > 0 else []
        for entry in entries:
            prefix = f"{entry.time} ".encode() if stamps else b""
            await response.write(_frame(entry.stream, prefix + entry.data))
        while queue is not None and (until is None or time.time() < until):
            try:
                item = await asyncio.wait_for(queue.get(), None if until is None else until - time.time())
            except TimeoutError:
                break
            if item is None:
                break
            if item[0] in wanted:
                prefix = f"{logs.timestamp()} ".encode() if stamps else b""
                await response.write(_frame(item[0], prefix + item[1]))
    finally:
        if queue is not None:
            daemon.unsubscribe(container, queue)
    await response.write_eof()
    return response


def _image_summary(image: Image) -> dict[str, Any]:
    return {"Id": image.id, "RepoTags": list(image.references), "RepoDigests": list(image.repo_digests),
            "Created": int(image.created), "Size": image.size}


def _filters(request: web.Request, known: set[str]) -> dict[str, list[str]]:
    """Docker's ``filters`` query parameter: a JSON object of lists of strings."""
    text = request.query.get("filters") or "{}"
    try:
        filters = json.loads(text)
    except ValueError as err:
        raise errors.InvalidArgument(f"invalid filters: {err}") from err
    if not isinstance(filters, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v)
                                                for v in filters.values()):
        raise errors.InvalidArgument("invalid filters: expected an object of lists of strings")
    unknown = sorted(set(filters) - known)
    if unknown:
        raise errors.InvalidArgument(f"invalid filter '{unknown[0]}'")
    return filters


def _dangling(filters: dict[str, list[str]]) -> bool | None:
    values = filters.get("dangling") or []
    if any(value not in ("true", "false", "1", "0") for value in values):
        raise errors.InvalidArgument(f"invalid filter 'dangling={values[0]}'")
    return values[-1] in ("true", "1") if values else None


async def list_images(request: web.Request) -> web.Response:
    dangling = _dangling(_filters(request, {"dangling"}))
    images = await asyncio.to_thread(_daemon(request).images.list)
    return web.json_response([_image_summary(image) for image in images
                              if dangling is None or dangling == (not image.references)])


async def inspect_image(request: web.Request) -> web.Response:
    store = _daemon(request).images
    image = await asyncio.to_thread(store.resolve, request.match_info["name"])
    return web.json_response(await asyncio.to_thread(store.inspect, image))


async def image_history(request: web.Request) -> web.Response:
    store = _daemon(request).images
    image = await asyncio.to_thread(store.resolve, request.match_info["name"])
    return web.json_response(await asyncio.to_thread(store.history, image))


async def tag_image(request: web.Request) -> web.Response:
    repo = request.query.get("repo") or ""
    if not repo:
        raise errors.InvalidArgument("repo is required")
    tag = request.query.get("tag") or "latest"
    store = _daemon(request).images
    image = await asyncio.to_thread(store.resolve, request.match_info["name"])
    await asyncio.to_thread(store.tag, image, f"{repo}:{tag}")
    return web.Response(status=201)


async def remove_image(request: web.Request) -> web.Response:
    deleted = await _daemon(request).remove_image(request.match_info["name"], force=_flag(request, "force"))
    return web.json_response(deleted)


async def prune_images(request: web.Request) -> web.Response:
    dangling = _dangling(_filters(request, {"dangling"}))
    deleted, reclaimed = await _daemon(request).prune_images(everything=dangling is False)
    return web.json_response({"ImagesDeleted": deleted, "SpaceReclaimed": reclaimed})


@contextlib.asynccontextmanager
async def _spooled(request: web.Request) -> AsyncIterator[BinaryIO]:
    """The request body in a temporary file: it arrives on the event loop, the store reads it in a thread."""
    with tempfile.TemporaryFile(dir=_daemon(request).config.root) as spool:
        async for chunk in request.content.iter_chunked(1 << 20):
            spool.write(chunk)
        spool.seek(0)
        yield cast(BinaryIO, spool)  # typeshed's IO[bytes] for what is a BufferedRandom


async def import_image(request: web.Request) -> web.Response:
    repo = request.query.get("repo") or None
    tag = request.query.get("tag") or None
    reference = f"{repo}:{tag}" if repo and tag else repo
    store = _daemon(request).images
    async with _spooled(request) as spool:
        image = await asyncio.to_thread(store.import_rootfs, spool, reference)
    return web.json_response({"Id": image.id})


async def load_images(request: web.Request) -> web.Response:
    store = _daemon(request).images
    async with _spooled(request) as spool:
        loaded = await asyncio.to_thread(archive.load, store, spool)
    body = "".join(json.dumps({"stream": f"{line}\n"}) + "\n" for line in loaded)
    return web.Response(text=body, content_type="application/json")


async def save_images(request: web.Request) -> web.StreamResponse:
    names = request.query.getall("names", [])
    if not names:
        raise errors.InvalidArgument("names is required")
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
    store = _daemon(request).images
    writer = io.BufferedWriter(_ThreadWriter(request, response), 1 << 20)

    def save() -> None:
        archive.save(store, names, writer)
        writer.flush()

    await asyncio.to_thread(save)
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    return response


class _ThreadWriter(io.RawIOBase):
    """A file a worker thread writes to, whose bytes go out as the response body.

    The response starts with the first write, so an error raised before it (an unknown
    image) is still answered with its own status; each write waits for the event loop to
    send it, which paces the thread to the client.
    """

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.loop = asyncio.get_running_loop()

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer, /) -> int:
        chunk = bytes(data)
        asyncio.run_coroutine_threadsafe(self._send(chunk), self.loop).result()
        return len(chunk)

    async def _send(self, chunk: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(chunk)


def _registry_auth(request: web.Request) -> registry.Credentials | None:
    """Docker's ``X-Registry-Auth`` header: base64url JSON with a username and password (or identity token)."""
    header = request.headers.get("X-Registry-Auth")
    if not header:
        return None
    try:
        document = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error) as err:
        raise errors.InvalidArgument("X-Registry-Auth is not base64url-encoded JSON") from err
    if not isinstance(document, dict):
        raise errors.InvalidArgument("X-Registry-Auth is not a JSON object")
    fields = {key: document.get(key) or "" for key in ("username", "password", "identitytoken")}
    if not all(isinstance(value, str) for value in fields.values()):
        raise errors.InvalidArgument("X-Registry-Auth: username, password and identitytoken must be strings")
    if not any(fields.values()):
        return None
    return registry.Credentials(fields["username"], fields["password"], fields["identitytoken"])


async def pull_image(request: web.Request) -> web.StreamResponse:
    source = request.query.get("fromImage") or ""
    if not source:
        raise errors.InvalidArgument("fromImage is required")
    tag = request.query.get("tag") or ""
    if tag:
        source += f"@{tag}" if tag.startswith("sha256:") else f":{tag}"
    try:
        platform = registry.Platform.parse(request.query["platform"]) if request.query.get("platform") else None
    except ValueError as err:
        raise errors.InvalidArgument(str(err)) from err
    credentials = _registry_auth(request)
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    task = asyncio.create_task(_daemon(request).pull(source, platform, credentials, messages.put_nowait))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        while (message := await messages.get()) is not None:
            if not response.prepared:
                await response.prepare(request)
            await response.write(json.dumps(message).encode() + b"\n")
        await task
    except Exception as err:
        if not response.prepared:
            raise  # nothing sent yet: the error gets its own status
        # Docker's way of failing a progress stream that has begun: a last message with the error.
        if not isinstance(err, ImageError | errors.HyperError):
            log.exception("pull of %s failed", source)
        await response.write(json.dumps({"error": str(err), "errorDetail": {"message": str(err)}}).encode() + b"\n")
    finally:
        task.cancel()
    await response.write_eof()
    return response


async def login(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError as err:
        raise errors.InvalidArgument(f"request body is not JSON: {err}") from err
    if not isinstance(body, dict) or not all(isinstance(body.get(key), str) and body[key]
                                             for key in ("username", "password")):
        raise errors.InvalidArgument("username and password are required")
    server = body.get("serveraddress") if isinstance(body.get("serveraddress"), str) else ""
    await _daemon(request).login(server or "docker.io", registry.Credentials(body["username"], body["password"]))
    return web.json_response({"Status": "Login Succeeded", "IdentityToken": ""})


async def stream_events(request: web.Request) -> web.StreamResponse:
    """``docker events``: what is kept since ``since``, then what happens, until ``until``."""
    since, until = _moment(request, "since"), _moment(request, "until")
    filters = _filters(request, set(FILTERS))
    past, queue = _daemon(request).events.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    try:
        await response.prepare(request)
        for kept in past:
            if since is not None and since <= kept.time_ns / 1e9 <= (until or float("inf")) \
                    and kept.matches(filters):
                await response.write(json.dumps(kept.docker()).encode() + b"\n")
        while until is None or time.time() < until:
            try:
                event: Event | None = await asyncio.wait_for(queue.get(),
                                                             None if until is None else until - time.time())
            except TimeoutError:
                break
            if event is None:
                break  # too slow a reader: cut off
            if event.matches(filters):
                await response.write(json.dumps(event.docker()).encode() + b"\n")
    finally:
        _daemon(request).events.unsubscribe(queue)
    await response.write_eof()
    return response


def _seconds(stamp: str) -> float:
    """A log entry's RFC 3339 time (nanoseconds, UTC) as Unix seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or '0'}")


def _moment(request: web.Request, key: str) -> float | None:
    """A ``since``/``until`` query value: Unix seconds, as docker's client sends them."""
    text = request.query.get(key)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise errors.InvalidArgument(f"invalid {key} {text!r}: expected Unix seconds") from None


async def list_networks(request: web.Request) -> web.Response:
    networks = _daemon(request).networks
    return web.json_response([_network(n, networks.members(n)) for n in networks.list()])


async def inspect_network(request: web.Request) -> web.Response:
    networks = _daemon(request).networks
    network = networks.get(request.match_info["id"])
    return web.json_response(_network(network, networks.members(network)))


async def create_network(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if not isinstance(body.get("Name"), str):
        raise errors.InvalidArgument("a network needs a Name")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise errors.InvalidArgument(f"plugin {driver!r} not found: hyper creates bridge networks only")
    configs = _object(body.get("IPAM"), "IPAM").get("Config") or [{}]
    if not isinstance(configs, list) or len(configs) != 1:
        raise errors.InvalidArgument("IPAM.Config must be a list of one object (one IPv4 subnet)")
    config = _object(configs[0], "IPAM.Config[0]")
    network = await _daemon(request).create_network(
        body["Name"], subnet=str(config.get("Subnet") or ""), gateway=str(config.get("Gateway") or ""),
        labels=_string_map(body, "Labels"))
    return web.json_response({"Id": network.id, "Warning": ""}, status=201)


async def remove_network(request: web.Request) -> web.Response:
    _daemon(request).remove_network(request.match_info["id"])
    return web.Response(status=204)


async def connect_network(request: web.Request) -> web.Response:
    body = await _json_object(request)
    aliases, ip, mac = _endpoint_config(_object(body.get("EndpointConfig"), "EndpointConfig"))
    _daemon(request).connect(request.match_info["id"], str(body.get("Container") or ""), aliases, ip, mac)
    return web.Response(status=200)


async def disconnect_network(request: web.Request) -> web.Response:
    body = await _json_object(request)
    _daemon(request).disconnect(request.match_info["id"], str(body.get("Container") or ""))
    return web.Response(status=200)


async def prune_networks(request: web.Request) -> web.Response:
    return web.json_response({"NetworksDeleted": _daemon(request).prune_networks()})


async def list_volumes(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    filters = _filters(request, {"name", "dangling"})
    names, dangling = filters.get("name", []), filters.get("dangling", [])
    found = [v for v in daemon.volumes.list() if (not names or any(name in v.name for name in names))
             and all((value.lower() in ("1", "true")) == (not daemon.volume_users(v.name)) for value in dangling)]
    return web.json_response({"Volumes": [v.describe(daemon.volumes.directory(v.name)) for v in found],
                              "Warnings": []})


async def inspect_volume(request: web.Request) -> web.Response:
    volumes = _daemon(request).volumes
    volume = volumes.get(request.match_info["name"])
    return web.json_response(volume.describe(volumes.directory(volume.name)))


async def create_volume(request: web.Request) -> web.Response:
    body = await _json_object(request)
    driver = body.get("Driver") or "local"
    if driver != "local":
        raise errors.InvalidArgument(f"plugin {driver!r} not found: hyper creates local volumes only")
    volumes = _daemon(request).volumes
    volume = volumes.create(str(body.get("Name") or ""), _string_map(body, "Labels"), _string_map(body, "DriverOpts"))
    return web.json_response(volume.describe(volumes.directory(volume.name)), status=201)


async def remove_volume(request: web.Request) -> web.Response:
    await _daemon(request).remove_volume(request.match_info["name"])
    return web.Response(status=204)


async def prune_volumes(request: web.Request) -> web.Response:
    everything = [v.lower() in ("1", "true") for v in _filters(request, {"all"}).get("all", [])]
    removed, freed = await _daemon(request).prune_volumes(any(everything))
    return web.json_response({"VolumesDeleted": removed, "SpaceReclaimed": freed})


def _pod_summary(daemon: Daemon, record: PodRecord) -> dict[str, Any]:
    sandbox = daemon.sandboxes.get(record.id)
    return {"Id": record.id, "Name": record.name, "Created": _iso(record.created),
            "Status": daemon.pod_status(record), "VMPid": sandbox.vm.pid if sandbox else 0,
            "Containers": [{"Id": c.id, "Name": c.name, "State": str(c.state)} for c in daemon.pod_members(record)]}


async def list_pods(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    records = sorted(daemon.pod_records.values(), key=lambda r: r.created, reverse=True)
    return web.json_response([_pod_summary(daemon, r) for r in records])


async def inspect_pod(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    record = daemon.get_pod(request.match_info["id"])
    return web.json_response(_pod_summary(daemon, record) | {"Spec": record.spec})


async def create_pod(request: web.Request) -> web.Response:
    try:
        spec = await request.json()
    except ValueError as err:
        raise errors.InvalidArgument(f"request body is not JSON: {err}") from err
    record = await _daemon(request).create_pod(spec)
    return web.json_response({"Id": record.id, "Containers": record.containers}, status=201)


async def start_pod(request: web.Request) -> web.Response:
    await _daemon(request).start_pod(request.match_info["id"])
    return web.Response(status=204)


async def stop_pod(request: web.Request) -> web.Response:
    timeout = request.query.get("t")
    if timeout is not None and not timeout.isdigit():
        raise errors.InvalidArgument(f"invalid timeout {timeout!r}: a number of seconds")
    await _daemon(request).stop_pod(request.match_info["id"], None if timeout is None else int(timeout))
    return web.Response(status=204)


async def remove_pod(request: web.Request) -> web.Response:
    await _daemon(request).remove_pod(request.match_info["id"], force=_flag(request, "force"))
    return web.Response(status=204)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as err:
        raise errors.InvalidArgument(f"request body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise errors.InvalidArgument("request body must be a JSON object")
    return body


def routes() -> list[web.RouteDef]:
    return [
        web.get("/_ping", ping),
        web.get("/version", version),
        web.get("/info", info),
        web.post("/containers/create", create_container),
        web.get("/containers/json", list_containers),
        web.get("/containers/{id}/json", inspect_container),
        web.post("/containers/{id}/start", start_container),
        web.post("/containers/{id}/attach", attach_container),
        web.post("/containers/{id}/resize", resize_container),
        web.get("/containers/{id}/top", top_container),
        web.get("/containers/{id}/stats", container_stats),
        web.post("/containers/{id}/exec", create_exec),
        web.post("/exec/{id}/start", start_exec),
        web.get("/exec/{id}/json", inspect_exec),
        web.post("/exec/{id}/resize", resize_exec),
        web.post("/containers/{id}/wait", wait_container),
        web.post("/containers/{id}/stop", stop_container),
        web.post("/containers/{id}/kill", kill_container),
        web.post("/containers/{id}/pause", pause_container),
        web.post("/containers/{id}/update", update_container),
        web.post("/containers/{id}/unpause", unpause_container),
        web.get("/containers/{id}/logs", container_logs),
        web.get("/containers/{id}/export", export_container),
        web.head("/containers/{id}/archive", head_archive),
        web.get("/containers/{id}/archive", get_archive, allow_head=False),
        web.put("/containers/{id}/archive", put_archive),
        web.get("/containers/{id}/changes", container_changes),
        web.post("/commit", commit_container),
        web.post("/containers/{id}/rename", rename_container),
        web.post("/containers/prune", prune_containers),
        web.delete("/containers/{id}", remove_container),
        web.post("/auth", login),
        web.get("/events", stream_events),
        web.get("/networks", list_networks),
        web.post("/networks/create", create_network),
        web.post("/networks/prune", prune_networks),
        web.get("/networks/{id}", inspect_network),
        web.delete("/networks/{id}", remove_network),
        web.post("/networks/{id}/connect", connect_network),
        web.post("/networks/{id}/disconnect", disconnect_network),
        web.get("/pods/json", list_pods),
        web.post("/pods/create", create_pod),
        web.get("/pods/{id}/json", inspect_pod),
        web.post("/pods/{id}/start", start_pod),
        web.post("/pods/{id}/stop", stop_pod),
        web.delete("/pods/{id}", remove_pod),
        web.get("/volumes", list_volumes),
        web.post("/volumes/create", create_volume),
        web.post("/volumes/prune", prune_volumes),
        web.get("/volumes/{name}", inspect_volume),
        web.delete("/volumes/{name}", remove_volume),
        web.get("/images/json", list_images),
        web.post("/images/import", import_image),
        web.post("/images/create", pull_image),
        web.post("/images/load", load_images),
        web.get("/images/get", save_images),
        web.post("/images/prune", prune_images),
        web.get("/images/{name:.+}/json", inspect_image),
        web.get("/images/{name:.+}/history", image_history),
        web.post("/images/{name:.+}/tag", tag_image),
        web.delete("/images/{name:.+}", remove_image),
    ]


def application(daemon: Daemon) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=0)
    app[DAEMON] = daemon
    app.add_routes(routes())
    return app

