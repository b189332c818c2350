"""The daemon's operations: containers from create to removal, each in a pod VM.

A ``hyper run`` is a pod of one: starting a container boots its VM, the container's
exit shuts it down.  Background work (output pumps, the per-pod supervisor) never
raises into API callers; what goes wrong is recorded on the container and reported by
``wait``/``inspect``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import math
import os
import posixpath
import secrets
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hyperd import errors, logs, storage
from hyperd import pod as pod_spec
from hyperd.config import Config
from hyperd.events import Events
from hyperd.guest import AgentClient, ExitEvent, Input, ProcessInfo, Stream
from hyperd.image import changes as image_changes
from hyperd.image import registry
from hyperd.image.reference import server_host
from hyperd.image.store import Image, ImageStore
from hyperd.isolation import GUEST_OVERHEAD_MIB, Resources
from hyperd.network import Endpoint, Network, NetworkRequest, ports
from hyperd.network.manager import Attachment, Networks, Wiring
from hyperd.pod import PodRecord
from hyperd.restart import RestartPolicy, next_delay
from hyperd.state import Container, ContainerSpec, ContainerState, CreateRequest, Database, parse_signal
from hyperd.vm import Disk, Share, VMSpec
from hyperd.vm.qemu import Qemu, QemuVM, log_tail
from hyperd.volumes import Mount, Volumes, prepare_bind

log = logging.getLogger("hyperd")

CONSOLE_TAIL = 20
MAX_PROCESS_SPEC = 128 << 10
"""Bytes of command and environment a container may have (the agent's messages are bounded)."""
MAX_INJECTED = 128 << 10
"""Bytes of the files a pod spec injects into one container: they travel in the start request (256 KiB at most)."""
MAX_CHANGES = 64 << 20
"""Bytes of ``diff`` lines taken from a guest."""
MAX_ERROR = 4096
"""Bytes of a tool's stderr kept for its error message."""
CHANGE_KINDS = {"C": 0, "A": 1, "D": 2}
"""docker's change kinds: modified, added, deleted."""
GO_DIR, GO_SYMLINK = 1 << 31, 1 << 27
"""Go's os.FileMode bits, as docker's path stat reports a mode."""
OFFLINE_PROCESS = ("sleep", "2147483647")
"""The agent's busybox applet a stopped container's VM runs while its files are reached."""
OFFLINE_LINGER = 3.0
"""Seconds that VM waits for the next request: ``cp`` asks for a stat, then for the copy."""
SUBSCRIBER_BACKLOG = 64
"""Output chunks a slow attach or logs client may lag behind before the container waits for it."""
SHUTDOWN_TIMEOUT = 5.0
ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble",
              "proud", "quiet", "swift", "tender", "vivid", "witty", "zealous")
NOUNS = ("babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "kepler", "lovelace", "noether",
         "pascal", "ritchie", "shannon", "turing", "wozniak")

Subscriber = asyncio.Queue[tuple[int, bytes] | None]


@dataclass
class Sandbox:
    """A running VM: its hypervisor process, its agent and its network, shared by a pod's containers."""

    vm: QemuVM
    client: AgentClient
    network: Attachment
    exits: dict[str, asyncio.Future[ExitEvent]]
    """By container id: resolved when the agent reports the container's exit."""
    attached: set[str] = field(default_factory=set)
    """Serials of the disks and tags of the shares the VM has."""
    members: set[str] = field(default_factory=set)
    """The containers running in it; the VM goes when the last one has."""
    pod: str = ""
    """The id of the pod it runs, for a pod of several containers."""
    shared: dict[str, bool] = field(default_factory=dict)
    """The namespaces its containers share besides the network (a pod spec's ``share``)."""


@dataclass
class Pod:
    """A container running in a VM, and its live state."""

    sandbox: Sandbox
    exited: asyncio.Future[ExitEvent]
    stopping: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    stdin: Input | None = None
    log: logs.Log | None = None

    @property
    def vm(self) -> QemuVM:
        return self.sandbox.vm

    @property
    def client(self) -> AgentClient:
        return self.sandbox.client

    @property
    def network(self) -> Attachment:
        return self.sandbox.network


@dataclass
class Exec:
    """A process exec'd in a running container: docker's exec instance."""

    id: str
    container: Container
    args: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    tty: bool
    open_stdin: bool
    running: bool = False
    exit_code: int | None = None
    stdin: Input | None = None
    output: asyncio.Queue[tuple[int, bytes] | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_BACKLOG))
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    on_exit: Callable[[Exec, int], None] = lambda _ex, _status: None
    tool: bool = False
    """hyperd's own (``cp``): the agent's busybox, no events."""


class Daemon:
    def __init__(self, config: Config, hypervisor: Qemu, images: ImageStore) -> None:
        self.config = config
        self.hypervisor = hypervisor
        self.images = images
        self.db = Database(config.root / "hyper.db")
        self.networks = Networks(config.root / "hyper.db", config.bip, config.bridge)
        self.volumes = Volumes(config.root / "volumes")
        self.attached: dict[str, str] = {}
        """Volume name -> the container whose pod has its disk (one pod at a time)."""
        self.containers: dict[str, Container] = {}
        self.pods: dict[str, Pod] = {}
        """By container id: the running containers."""
        self.sandboxes: dict[str, Sandbox] = {}
        """By pod id: the VMs of running pods of several containers."""
        self.pod_records: dict[str, PodRecord] = {}
        self.subscribers: dict[str, list[Subscriber]] = {}
        self.finished: dict[str, asyncio.Event] = {}
        self.removed: dict[str, asyncio.Event] = {}
        self.booted: dict[str, asyncio.Event] = {}
        self.next_exit: dict[str, asyncio.Future[None]] = {}
        """Resolved at the container's next exit (docker's wait condition next-exit)."""
        """Set while the container's pod runs: where stdin that arrived early waits."""
        self.execs: dict[str, Exec] = {}
        self.offline: dict[str, asyncio.Lock] = {}
        """By container id: held while a stopped container's files are reached in a VM of their own."""
        self.lingering: dict[str, tuple[Pod, asyncio.TimerHandle]] = {}
        """By container id: such a VM, between two requests."""
        self.restarts: dict[str, asyncio.Task[None]] = {}
        self.events = Events()
        """Pending restarts by restart policy, by container id."""
        self.supervisors: set[asyncio.Task[None]] = set()
        self.closing = False

    # -- start-up and shutdown ----------------------------------------------------------

    def recover(self) -> None:
        """Load containers from disk; a container left running by a crashed daemon has exited."""
        self.volumes.reclaim()
        for record in self.db.load_pods():
            self.pod_records[record["id"]] = PodRecord(**record)
        for container in self.db.load():
            _reclaim_vm(container)  # a running one's, or one booted to reach a stopped container's files
            if container.state in (ContainerState.RUNNING, ContainerState.REMOVING):
                container.state = ContainerState.EXITED
                container.exit_code = 255
                container.error = "hyperd stopped while the container was running"
                container.stopped_by_daemon = True
                container.finished = container.finished or time.time()
                self.db.save(container)
            self._track(container)
            if container.state == ContainerState.EXITED:
                self.finished[container.id].set()

    async def shutdown(self) -> None:
        """Stop every pod (their containers exit as killed) and wait for the supervisors."""
        self.closing = True
        for task in list(self.restarts.values()):
            task.cancel()
        await asyncio.gather(*(self._stop_pod(cid, 0) for cid in list(self.pods)),
                             *(self._quiesce(self.containers[cid]) for cid in list(self.lingering)),
                             return_exceptions=True)
        if self.supervisors:
            await asyncio.wait(self.supervisors, timeout=SHUTDOWN_TIMEOUT * 2)
        await self.networks.close()
        self.db.close()

    def _track(self, container: Container) -> None:
        self.containers[container.id] = container
        self.finished[container.id] = asyncio.Event()
        self.removed[container.id] = asyncio.Event()
        self.booted[container.id] = asyncio.Event()
        self.next_exit[container.id] = asyncio.get_running_loop().create_future()
        self.subscribers[container.id] = []

    def _emit(self, container: Container, action: str, **extra: str) -> None:
        self.events.emit("container", action, container.id, image=container.spec.image, name=container.name,
                         **container.spec.labels, **extra)

    def container_dir(self, container: Container) -> Path:
        return self.config.root / "containers" / container.id

    # -- lookups ------------------------------------------------------------------------

    def get(self, ref: str) -> Container:
        """By full id, name, or unique id prefix, as docker resolves them."""
        if ref in self.containers:
            return self.containers[ref]
        name = ref.removeprefix("/")
        for container in self.containers.values():
            if container.name == name:
                return container
        matches = [c for c in self.containers.values() if c.id.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise errors.InvalidArgument(f"multiple containers match the prefix {ref}")
        raise errors.NotFound(f"No such container: {ref}")

    def select(self, include_stopped: bool) -> list[Container]:
        found = [c for c in self.containers.values() if include_stopped or c.state == ContainerState.RUNNING]
        return sorted(found, key=lambda c: c.created, reverse=True)

    # -- create -------------------------------------------------------------------------

    def create(self, request: CreateRequest, name: str | None) -> Container:
        storage_size = storage.parse_options(request.storage_opt)
        policy = RestartPolicy.parse(request.restart)
        if policy.enabled and request.autoremove:
            raise errors.InvalidArgument("conflicting options: --restart and --rm")
        image = self.images.resolve(request.image)
        wiring = self._network_spec(request.network, image.config.exposed_ports)
        if name is not None:
            _validate_name(name)
            if any(c.name == name for c in self.containers.values()):
                raise errors.Conflict(f'the container name "/{name}" is already in use')
        for item in request.env:
            if not item.partition("=")[0]:
                raise errors.InvalidArgument(f"invalid environment variable {item!r}")
        ulimits = tuple(_ulimit(text) for text in request.ulimits)
        for key in request.sysctls:
            _check_sysctl(key, wiring["network_mode"])
        base = _resolve_spec(request.image, image, request.cmd, request.entrypoint, request.env, request.workdir,
                             request.user, request.autoremove)
        spec = replace(base, storage_size=storage_size, tty=request.tty, open_stdin=request.open_stdin,
                       stdin_once=request.stdin_once and request.open_stdin, restart=policy,
                       labels={**base.labels, **request.labels},
                       stop_signal=parse_signal(request.stop_signal) if request.stop_signal else base.stop_signal,
                       stop_timeout=request.stop_timeout, ulimits=ulimits, sysctls=dict(request.sysctls),
                       resources=request.resources, security=request.security, devices=request.devices, **wiring)
        if not spec.args:
            raise errors.InvalidArgument("no command specified")
        if len(json.dumps([spec.args, spec.env, spec.workdir, spec.user])) > MAX_PROCESS_SPEC:
            raise errors.InvalidArgument(f"command and environment exceed {MAX_PROCESS_SPEC >> 10} KiB")
        record = self.get_pod(request.pod) if request.pod else None
        spec = replace(spec, files=_injected(request.files), pod=record.id if record else "",
                       labels={**spec.labels, **({pod_spec.POD_LABEL: record.name} if record else {})})
        spec = replace(spec, log=request.log, mounts=self._create_mounts(request.mounts))
        container = Container(id=secrets.token_hex(32), name=name or self._generate_name(), spec=spec)
        self.db.save(container)
        self._track(container)
        if record is not None:
            record.containers.append(container.id)
            self.db.save_pod(record.id, pod_spec.to_record(record))
        self._emit(container, "create")
        return container

    def _create_mounts(self, mounts: tuple[Mount, ...]) -> tuple[Mount, ...]:
        """The container's mounts, checked, with their bind sources and volumes made: the last step of a create."""
        targets = [m.target for m in mounts]
        for target in targets:
            if targets.count(target) > 1:
                raise errors.InvalidArgument(f"duplicate mount point: {target}")
        for mount in mounts:
            if mount.type == "bind":
                prepare_bind(mount)
        made = []
        for mount in mounts:
            if mount.type == "volume":
                made.append(replace(mount, source=self.volumes.create(mount.source).name))
            else:
                made.append(mount)
        return tuple(made)

    def _network_spec(self, request: NetworkRequest, image_exposed: tuple[str, ...]) -> dict[str, Any]:
        """The network fields of a container's spec, checked now so that ``start`` cannot fail on them."""
        mode = request.mode or self.networks.default_mode
        if mode == "default":
            mode = self.networks.default_mode
        if mode == "host":
            raise errors.InvalidArgument("--network host is not possible in hyper: each pod has its own kernel and "
                                         "network stack (publish ports with -p instead)")
        exposed = tuple(dict.fromkeys((*image_exposed, *request.expose)))
        bindings = [*request.ports, *(ports.exposed(exposed) if request.publish_all else [])]
        exposed = tuple(dict.fromkeys((*exposed, *(b.key for b in request.ports))))  # docker exposes what -p names
        endpoints: tuple[Endpoint, ...] = ()
        if mode in ("none", "user"):
            if mode == "none" and bindings:
                raise errors.InvalidArgument("conflicting options: port publishing and the container type "
                                             "network mode (--network none)")
            if request.aliases or request.ip:
                raise errors.InvalidArgument(f"--network-alias and --ip need a bridge network, not {mode}")
        else:
            endpoint = self.networks.endpoint(mode, request.aliases, request.ip, request.mac)
            mode = self.networks.get(endpoint.network).name
            endpoints = (endpoint,)
        hostname = request.hostname
        if hostname and (len(hostname) > 63 or not all(p and p.replace("-", "").isalnum() and p[0] != "-"
                                                         for p in hostname.split("."))):
            raise errors.InvalidArgument(f"invalid hostname {hostname!r}")
        for server in request.dns:
            _check_address(server, "--dns")
        for entry in request.extra_hosts:
            name, colon, address = entry.partition(":")
            if not colon or not name:
                raise errors.InvalidArgument(f"invalid --add-host {entry!r}: use HOST:IP")
            _check_address(address, "--add-host")
        return {"hostname": hostname, "network_mode": mode, "endpoints": endpoints, "ports": tuple(bindings),
                "publish_all": request.publish_all, "exposed_ports": exposed, "dns": request.dns,
                "dns_search": request.dns_search, "dns_options": request.dns_options,
                "extra_hosts": request.extra_hosts}

    def connect(self, network_ref: str, ref: str, aliases: tuple[str, ...], ip: str, mac: str = "") -> None:
        """``network connect``: one more network for a container, from its next start."""
        container = self.get(ref)
        if container.state == ContainerState.RUNNING:
            raise errors.StateError(f"cannot connect running container {container.name}: a pod's network "
                                    "interfaces are fixed when its VM boots; stop it, connect, and start it")
        if container.spec.network_mode in ("none", "user"):
            raise errors.InvalidArgument(f"container {container.name} uses network mode "
                                         f"{container.spec.network_mode}; it cannot join other networks")
        endpoint = self.networks.endpoint(network_ref, aliases, ip, mac)
        if any(e.network == endpoint.network for e in container.spec.endpoints):
            raise errors.Conflict(f"container {container.name} is already connected to network {network_ref}")
        container.spec = replace(container.spec, endpoints=(*container.spec.endpoints, endpoint))
        self.db.save(container)
        self.events.emit("network", "connect", endpoint.network, container=container.id)

    def disconnect(self, network_ref: str, ref: str) -> None:
        container = self.get(ref)
        network = self.networks.get(network_ref)
        if container.state == ContainerState.RUNNING:
            raise errors.StateError(f"cannot disconnect running container {container.name}: a pod's network "
                                    "interfaces are fixed when its VM boots; stop it first")
        kept = tuple(e for e in container.spec.endpoints if e.network != network.id)
        if len(kept) == len(container.spec.endpoints):
            raise errors.NotFound(f"container {container.name} is not connected to network {network.name}")
        # Docker keeps the network mode: a container left with no network can be connected again.
        container.spec = replace(container.spec, endpoints=kept)
        self.db.save(container)
        self.events.emit("network", "disconnect", network.id, container=container.id)

    async def create_network(self, name: str, subnet: str, gateway: str, labels: dict[str, str]) -> Network:
        network = await self.networks.create(name, subnet, gateway, labels)
        self.events.emit("network", "create", network.id, name=network.name, type=str(network.driver))
        return network

    def remove_network(self, ref: str) -> None:
        network = self.networks.get(ref)
        if network.builtin:
            raise errors.InvalidArgument(f"{network.name} is a pre-defined network and cannot be removed")
        users = sorted(c.name for c in self.containers.values() if any(e.network == network.id
                                                                         for e in c.spec.endpoints))
        if users and not self.networks.members(network):
            raise errors.Conflict(f"network {network.name} is used by stopped container {users[0]}: remove it or "
                                  "disconnect it first")
        self.networks.remove(network.id)
        self.events.emit("network", "destroy", network.id, name=network.name, type=str(network.driver))

    def prune_networks(self) -> list[str]:
        """``docker network prune``: remove the user networks no container is connected to; their names."""
        used = {e.network for c in self.containers.values() for e in c.spec.endpoints}
        removed = []
        for network in self.networks.list():
            if not network.builtin and network.id not in used:
                self.remove_network(network.id)
                removed.append(network.name)
        return removed

    def _wiring(self, container: Container) -> Wiring:
        spec = container.spec
        return Wiring(container.id, (container.name, container.id[:12], *([spec.hostname] if spec.hostname else [])),
                      spec.network_mode, spec.endpoints, spec.ports, spec.hostname or container.id[:12],
                      spec.dns, spec.dns_search, spec.dns_options, spec.extra_hosts)

    def rename(self, ref: str, name: str) -> None:
        container = self.get(ref)
        _validate_name(name)
        if any(c.name == name and c.id != container.id for c in self.containers.values()):
            raise errors.Conflict(f'the container name "/{name}" is already in use')
        old, container.name = container.name, name
        self.db.save(container)
        self._emit(container, "rename", oldName=f"/{old}")

    async def prune(self) -> tuple[list[str], int]:
        """``docker container prune``: remove every container that is not running; their ids and the bytes freed."""
        removed, freed = [], 0
        for container in sorted(self.containers.values(), key=lambda c: c.created):
            if container.state not in (ContainerState.CREATED, ContainerState.EXITED) or container.id in self.pods:
                continue
            size = await asyncio.to_thread(_tree_size, self.container_dir(container))
            await self._remove(container)
            removed.append(container.id)
            freed += size
        return removed, freed

    def _generate_name(self) -> str:
        taken = {c.name for c in self.containers.values()}
        while True:
            name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}"
            if name not in taken:
                return name

    # -- start --------------------------------------------------------------------------

    async def start(self, ref: str, by_policy: bool = False) -> Container:
        """Start the container (a new VM, or its pod's); ``by_policy``: a restart its restart policy asked for."""
        container = self.get(ref)
        if self.closing:
            raise errors.Conflict("hyperd is shutting down")
        if container.state == ContainerState.RUNNING:
            return container
        if container.spec.pod and container.spec.pod not in self.sandboxes:
            await self.start_pod(container.spec.pod, by_policy)
            return container
        mark = self._begin(container, by_policy)
        try:
            pod = await (self._join(container, mark) if container.spec.pod else self._boot(container, mark))
        except BaseException as err:
            await self._not_started(container, err)
            raise
        self._started(container, pod, mark)
        return container

    def _begin(self, container: Container, by_policy: bool) -> Callable[[str], None]:
        """The container moves to running (its boot is under way); returns its timing marker."""
        if not by_policy:
            self._cancel_restart(container)
            container.restart_count = 0
            container.restart_delay = 0.0
        container.restarting = container.oom_killed = False
        container.stopped_by_user = container.stopped_by_daemon = False
        container.transition(ContainerState.RUNNING, "start")
        container.error = ""
        container.log_error = ""
        container.timings = {}
        self.finished[container.id].clear()
        begun = time.monotonic()

        def mark(phase: str) -> None:
            container.timings[phase] = round(time.monotonic() - begun, 4)

        return mark

    async def _not_started(self, container: Container, err: BaseException) -> None:
        container.state = ContainerState.CREATED
        container.error = str(err).split("\n")[0]
        if isinstance(err, errors.StartFailed):
            container.exit_code = err.exit_code
        self._finish(container)
        if container.spec.autoremove:
            await self._autoremove(container)

    def _started(self, container: Container, pod: Pod, mark: Callable[[str], None]) -> None:
        container.ports = [{"IP": p.host_ip, "PrivatePort": p.container_port, "PublicPort": p.host_port,
                            "Type": p.protocol} for p in pod.network.published]
        container.networks = pod.network.settings()
        self.pods[container.id] = pod
        container.started = time.time()
        self.db.save(container)
        self.booted[container.id].set()
        self._emit(container, "start")
        task = asyncio.create_task(self._supervise(container, pod, mark))
        self.supervisors.add(task)
        task.add_done_callback(self.supervisors.discard)

    async def _boot(self, container: Container, mark: Callable[[str], None]) -> Pod:
        """Boot a VM of the container's own and start it there; on any failure nothing is left running."""
        pods = await self._boot_sandbox([container], self._wiring(container), None, mark)
        return pods[container.id]

    async def _prepare(self, container: Container, disks: list[Disk], shares: list[Share],
                       joining: bool = False) -> dict[str, Any]:
        """The disks and shares the container needs in its VM (added to ``disks`` and ``shares``, each
        once), and its ``rootfs`` for the agent (``joining``: for a pod's VM that is already running)."""
        image = self.images.resolve(container.spec.image_id)
        disk = await asyncio.to_thread(self.images.disk, image)
        shutil.rmtree(self.container_dir(container) / "vm", ignore_errors=True)
        serial = _image_serial(image)
        if all(d.serial != serial for d in disks):
            disks.append(Disk(disk, serial))
        rootfs: dict[str, Any] = {"disk": serial, "fstype": "erofs"}
        upper = self.container_dir(container) / "upper.ext4"
        if upper.exists() or self._keeps_layer(container, joining):
            if not upper.exists():  # made once: it keeps the container's changes across its runs
                await storage.create(upper, container.spec.storage_size or self.config.writable_size)
            disks.append(Disk(upper, _upper_serial(container), readonly=False))
            rootfs["upper"] = {"disk": disks[-1].serial, "fstype": "ext4"}
        for index, device in enumerate(container.spec.devices):
            disks.append(Disk(Path(device.host), f"dev{index}{container.id[:12]}", readonly=not device.writable))
            rootfs.setdefault("devices", []).append({"disk": disks[-1].serial, "path": device.container})
        rootfs["mounts"] = await self._mounts(container, disks, shares)
        return rootfs

    def _keeps_layer(self, container: Container, joining: bool = False) -> bool:
        """Whether the container's writable layer is a disk of its own: unless it is removed when it exits
        (``--rm``) or joins a running pod's VM (no hotplug) without asking for a size."""
        return bool(container.spec.storage_size) or not (container.spec.autoremove or joining)

    def _claim_volumes(self, container: Container) -> None:
        names = [m.source for m in container.spec.mounts if m.type == "volume"]
        for name in names:
            holder = self.attached.get(name)
            if holder is not None and holder != container.id:
                other = self.containers.get(holder)
                raise errors.Conflict(f"volume {name} is in use by running container "
                                      f"{other.name if other else holder[:12]}: a volume is a disk, attached to "
                                      "one pod at a time")
        for name in names:
            self.attached[name] = container.id

    def _release_volumes(self, container: Container) -> None:
        for name in [name for name, holder in self.attached.items() if holder == container.id]:
            del self.attached[name]

    async def _mounts(self, container: Container, disks: list[Disk], shares: list[Share]) -> list[dict[str, Any]]:
        """The container's volumes as disks and its bind mounts as shares, and how the guest mounts them."""
        entries: list[dict[str, Any]] = []
        for index, mount in enumerate(container.spec.mounts):
            entry: dict[str, Any] = {"target": mount.target, "readonly": mount.readonly}
            if mount.type == "volume":
                volume = self.volumes.get(mount.source)
                disks.append(Disk(await self.volumes.disk(volume), f"vol{index}{container.id[:12]}",
                                  readonly=mount.readonly))
                entry |= {"disk": disks[-1].serial, "populate": not mount.nocopy}
            else:
                shares.append(Share(prepare_bind(mount), f"bind{index}{container.id[:12]}", mount.readonly))
                entry["tag"] = shares[-1].tag
            entries.append(entry)
        return entries

    async def _boot_vm(self, name: str, workdir: Path, memory_mib: int, vcpus: int, attachment: Attachment,
                       disks: list[Disk], shares: list[Share], containers: list[Container],
                       mark: Callable[[str], None]) -> Sandbox:
        """A VM booted to a ready, initialised agent with its network configured; nothing left if it fails."""
        spec = VMSpec(name=name, kernel=self.config.kernel, guest_disk=self.config.guest_disk, workdir=workdir,
                      disks=tuple(disks), memory_mib=memory_mib, vcpus=vcpus, nics=tuple(attachment.nics),
                      shares=tuple(shares))
        vm = await self.hypervisor.launch(spec)
        mark("vm_spawned")
        # Recorded at once: if hyperd dies mid-boot, its next start finds and ends this VM.
        for container in containers:
            container.vm_pid = vm.pid
            self.db.save(container)
        exits: dict[str, asyncio.Future[ExitEvent]] = {}

        def on_exit(event: ExitEvent) -> None:
            if event.process:
                self._exec_exited(event)
            elif (exited := exits.get(event.container)) is not None and not exited.done():
                exited.set_result(event)

        sandbox = Sandbox(vm, AgentClient(vm.agent, on_exit), attachment, exits,
                          attached={d.serial for d in disks} | {s.tag for s in shares})
        try:
            await sandbox.client.start()
            await self._await_ready(sandbox, spec)
            mark("agent_ready")
            info = sandbox.client.info
            assert info is not None
            for container in containers:
                if "agent_ready" in container.timings:  # not when a stopped container's files are reached
                    container.timings["init_started"] = round(container.timings["agent_ready"] - info.agent_startup,
                                                              4)
            await sandbox.client.request("init", {
                "version": info.version, "capabilities": sorted(info.capabilities),
                "time": time.time(), "entropy": base64.b64encode(os.urandom(64)).decode(),
            })
            if attachment.interfaces:
                if "network" not in info.capabilities:
                    raise errors.GuestError("the guest agent cannot configure networks (a guest disk older than "
                                            "this hyperd): run with --network none, or update the guest disk")
                await sandbox.client.request("network.configure", {"interfaces": attachment.interfaces})
        except BaseException:
            await self._teardown(sandbox)
            raise
        return sandbox

    async def _start_in(self, sandbox: Sandbox, container: Container, rootfs: dict[str, Any],
                        mark: Callable[[str], None], offline: bool = False) -> Pod:
        """Start the container in a booted VM; its output streams are pumped into its log.  ``offline``:
        the agent's busybox sleeps in the container instead of its command (no stdin, no log), so that
        its files can be reached."""
        info = sandbox.client.info
        assert info is not None
        spec = container.spec
        wanted = {"stdin"} if spec.open_stdin and not offline else set()
        wanted |= {"tty"} if spec.tty else set()
        wanted |= {"seccomp-filter", "limits", "devices"}  # never run a container less confined than it asked
        wanted |= {"tools"} if offline else set()
        if not wanted <= info.capabilities:
            raise errors.GuestError(f"the guest agent cannot give a container {' or '.join(sorted(wanted))} "
                                    "(a guest disk older than this hyperd): update the guest disk")
        exited: asyncio.Future[ExitEvent] = asyncio.get_running_loop().create_future()
        sandbox.exits[container.id] = exited
        pod = Pod(sandbox, exited)
        try:
            pod.stdin = sandbox.client.open_input() if spec.open_stdin and not offline else None
            stdout = sandbox.client.open_stream()
            stderr = None if spec.tty else sandbox.client.open_stream()
            if not offline:
                pod.log = self._open_log(container)
                pod.tasks = [asyncio.create_task(self._pump(container, 1, stdout, pod.log))]
                if stderr is not None:
                    pod.tasks.append(asyncio.create_task(self._pump(container, 2, stderr, pod.log)))
            process = {**_process(spec, OFFLINE_PROCESS, (), "/", "0:0"), "tool": True} if offline else \
                _process(spec, spec.args, spec.env, spec.workdir, spec.user)
            await sandbox.client.request("container.start", {
                "id": container.id,
                "rootfs": rootfs,
                "hostname": spec.hostname or container.id[:12],
                "files": sandbox.network.files,
                **({"inject": [{"path": path, "content": content, "mode": mode}
                               for path, content, mode in spec.files]} if spec.files else {}),
                "process": process,
                "limits": spec.resources.agent_limits(),
                "security": spec.security.agent_security(),
                "tmpfs": spec.security.tmpfs,
                **({"sysctls": spec.sysctls} if spec.sysctls else {}),
                **({"share": sandbox.shared} if sandbox.shared else {}),
                "stdout": stdout.id, "tty": spec.tty,
                **({"stderr": stderr.id} if stderr is not None else {}),
                **({"stdin": pod.stdin.id} if pod.stdin is not None else {}),
            })
            mark("container_started")
        except BaseException:
            sandbox.exits.pop(container.id, None)
            for task in pod.tasks:
                task.cancel()
            if pod.log is not None:
                pod.log.close()
            raise
        sandbox.members.add(container.id)
        return pod

    async def _join(self, container: Container, mark: Callable[[str], None]) -> Pod:
        """Start a container of a running pod in the pod's VM, which must have every disk and share it needs."""
        sandbox = self.sandboxes[container.spec.pod]
        await self._free_disks(container)
        self._claim_volumes(container)
        try:
            disks: list[Disk] = []
            shares: list[Share] = []
            rootfs = await self._prepare(container, disks, shares, joining=True)
            if ({d.serial for d in disks} | {s.tag for s in shares}) - sandbox.attached:
                raise errors.StateError(
                    f"cannot start {container.name} in its running pod: its image, volumes, bind mounts, devices "
                    "or --storage-opt need a disk or share the pod's VM does not have and cannot take while it runs "
                    "(no hotplug): use an image of the pod's other containers, or add the container to the pod spec")
            mark("vm_spawned")
            mark("agent_ready")
            container.vm_pid = sandbox.vm.pid
            return await self._start_in(sandbox, container, rootfs, mark)
        except BaseException:
            self._release_volumes(container)
            raise

    async def _detach(self, attachment: Attachment) -> None:
        """Give back a pod's network; a failure here is logged, never raised into the pod's end."""
        try:
            await self.networks.detach(attachment)
        except errors.HyperError as err:
            log.warning("%s", err)

    async def _await_ready(self, sandbox: Sandbox, spec: VMSpec) -> None:
        ready = asyncio.ensure_future(sandbox.client.ready())
        died = asyncio.ensure_future(sandbox.vm.child.wait())
        try:
            done, _ = await asyncio.wait({ready, died}, timeout=self.config.boot_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
        if ready in done and ready.exception() is None:
            return
        ready.cancel()
        if ready in done:
            # The channel closing is usually QEMU going: give it a moment to say so.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sandbox.vm.child.wait()), 1.0)
        if sandbox.vm.child.returncode is not None:
            reason = f"the VM exited with status {sandbox.vm.child.returncode} before its agent was ready"
        elif ready in done:
            reason = f"the guest agent failed: {ready.exception()}"
        else:
            reason = f"the guest agent did not answer within {self.config.boot_timeout:.0f}s"
        console = log_tail(spec.console_log, CONSOLE_TAIL) or log_tail(spec.workdir / "qemu.log", CONSOLE_TAIL)
        raise errors.BootFailed(f"guest boot failed: {reason}", console, sandbox.vm.child.argv)

    async def export(self, ref: str) -> AsyncIterator[bytes]:
        """A tar of a running container's root filesystem: its image with its changes, streamed from the guest."""
        container = self.get(ref)
        async for chunk in self._guest_stream(container, "export", "export", "container.export", {}):
            yield chunk

    async def changes(self, ref: str) -> list[dict[str, Any]]:
        """docker's ``GET /containers/{id}/changes``: what the running container changed in its image."""
        container = self.get(ref)
        text = bytearray()
        async for chunk in self._guest_stream(container, "diff", "changes", "container.changes", {"format": "diff"}):
            text += chunk
            if len(text) > MAX_CHANGES:
                raise errors.GuestError(f"the guest's list of changes exceeds {MAX_CHANGES >> 20} MiB")
        out = []
        for line in bytes(text).decode(errors="replace").splitlines():
            kind, _, path = line.partition(" ")
            if kind not in CHANGE_KINDS or not path.startswith("/"):
                raise errors.GuestError(f"the guest sent a malformed change {line[:80]!r}")
            out.append({"Path": path, "Kind": CHANGE_KINDS[kind]})
        return out

    async def commit(self, ref: str, reference: str | None, *, comment: str = "", author: str = "",
                     changes: list[str] | None = None, pause: bool = True) -> Image:
        """A new image: the container's image with its changes as one more layer (docker's commit)."""
        container = self.get(ref)
        base = self.images.resolve(container.spec.image_id)
        config = image_changes.apply(base.config, changes or [])
        with tempfile.TemporaryFile(dir=self.config.root) as spool:
            params = {"format": "layer", "pause": pause}
            async for chunk in self._guest_stream(container, "commit", "changes", "container.changes", params):
                spool.write(chunk)
            spool.seek(0)
            return await asyncio.to_thread(self.images.commit_layer, base, spool, reference, config=config,
                                           comment=comment, author=author)

    @contextlib.asynccontextmanager
    async def _reachable(self, container: Container, what: str) -> AsyncIterator[Pod]:
        """Where the container's files can be reached: its pod while it runs; for a stopped container,
        whose writable layer is a disk of its own, a VM booted for this alone (its root and volumes,
        the agent's busybox sleeping in it, no network, no log, no events), ended afterwards."""
        if container.id in self.pods:
            yield self._running(container, what)
            return
        lock = self.offline.setdefault(container.id, asyncio.Lock())
        async with lock:
            if container.id in self.pods:
                yield self._running(container, what)
                return
            if container.state not in (ContainerState.CREATED, ContainerState.EXITED):
                now = "starting" if container.state == ContainerState.RUNNING else container.state.value
                raise errors.StateError(f"cannot {what} container {container.name}: it is {now}")
            kept = self.lingering.pop(container.id, None)
            pod_vm = self.sandboxes.get(container.spec.pod)
            if kept is not None:
                pod = kept[0]
                kept[1].cancel()
            elif not self._keeps_layer(container):
                raise errors.StateError(f"cannot {what} container {container.name}: it is not running, and its "
                                        "writable layer was a tmpfs in its VM (--rm), gone with it")
            elif pod_vm is not None and _upper_serial(container) in pod_vm.attached:
                raise errors.StateError(f"cannot {what} container {container.name}: the running VM of its pod "
                                        "holds its disk; start the container, or stop the pod, first")
            else:
                wiring = Wiring(container.id, (), "none", (), (), container.spec.hostname or container.id[:12])
                pods = await self._boot_sandbox([container], wiring, None, lambda _phase: None, offline=True)
                pod = pods[container.id]
            try:
                yield pod
            finally:
                timer = asyncio.get_running_loop().call_later(OFFLINE_LINGER, self._end_offline_later, container)
                self.lingering[container.id] = (pod, timer)
                if self.closing or pod.sandbox.vm.child.returncode is not None:
                    await self._end_offline(container)

    def _end_offline_later(self, container: Container) -> None:
        task = asyncio.create_task(self._quiesce(container))
        self.supervisors.add(task)
        task.add_done_callback(self.supervisors.discard)

    async def _end_offline(self, container: Container) -> None:
        """End the VM that reached the stopped container's files, if one is waiting (hold its lock)."""
        kept = self.lingering.pop(container.id, None)
        if kept is None:
            return
        pod, timer = kept
        timer.cancel()
        await self._teardown(pod.sandbox)
        await self._detach(pod.sandbox.network)
        self._release_volumes(container)

    async def _free_disks(self, container: Container, itself: bool = True) -> None:
        """End the VMs reaching stopped containers' files that hold the container's writable disk
        (``itself``) or its volumes: two kernels must never mount one filesystem."""
        if itself:
            await self._quiesce(container)
        for name in (m.source for m in container.spec.mounts if m.type == "volume"):
            holder = self.attached.get(name, "")
            if holder in self.lingering and holder != container.id:  # a finished cp holds it
                await self._quiesce(self.containers[holder])

    async def _quiesce(self, container: Container) -> None:
        """Wait until no VM reaches the stopped container's files (its writable disk is free)."""
        if (busy := self.offline.get(container.id)) is not None:
            async with busy:
                await self._end_offline(container)

    async def _guest_stream(self, container: Container, what: str, capability: str, method: str,
                            params: dict[str, Any]) -> AsyncIterator[bytes]:
        """The data the agent of the container's VM streams back for ``method``; the request's
        refusal is raised before the first byte."""
        async with self._reachable(container, what) as pod:
            async for chunk in self._streamed(pod, container, what, capability, method, params):
                yield chunk

    async def _streamed(self, pod: Pod, container: Container, what: str, capability: str, method: str,
                        params: dict[str, Any]) -> AsyncIterator[bytes]:
        if pod.client.info is None or capability not in pod.client.info.capabilities:
            raise errors.StateError(f"cannot {what} container {container.name}: its guest agent does not offer "
                                    f"{what} (a guest disk older than this hyperd)")
        stream = pod.client.open_stream()
        # No deadline: the reply comes once the whole tree has been sent, however big it is.
        done = asyncio.ensure_future(pod.client.request(method, {"id": container.id, "stream": stream.id, **params},
                                                        timeout=None))
        try:
            first = await _first(stream, done)
            if first:
                yield first
                while data := await stream.read():
                    yield data
            await done
        finally:
            if not done.done():
                # The reader went away: drain the rest, or the guest would wait for credit forever.
                pod.tasks.append(asyncio.create_task(_drain(stream, done)))

    # -- hyper cp: busybox of the agent, run inside the container -------------------------

    async def path_stat(self, ref: str, path: str, follow: bool = False) -> dict[str, Any]:
        """docker's stat of a path in a running container: name, size, mode (Go's bits), mtime, linkTarget;
        NotFound when it does not exist.  ``follow`` stats a symlink's target."""
        container = self.get(ref)
        path = _container_path(path)
        out = bytearray()
        async for chunk in self._tool(container, "stat", ["stat", *(["-L"] if follow else []), "-c", "%f %s %Y",
                                                          "--", path], missing=path):
            out += chunk
        try:
            raw, size, mtime = (int(out.split()[0], 16), int(out.split()[1]), int(out.split()[2]))
        except (ValueError, IndexError):
            raise errors.GuestError(f"the guest sent a malformed stat {bytes(out[:80])!r}") from None
        target = ""
        if stat.S_ISLNK(raw):
            link = bytearray()
            async for chunk in self._tool(container, "stat", ["readlink", "--", path], missing=path):
                link += chunk
            target = bytes(link[:4096]).decode(errors="replace").rstrip("\n")
        mode = stat.S_IMODE(raw) | (GO_DIR if stat.S_ISDIR(raw) else 0) | (GO_SYMLINK if stat.S_ISLNK(raw) else 0)
        return {"name": posixpath.basename(path) or "/", "size": size, "mode": mode,
                "mtime": datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z"),
                "linkTarget": target}

    async def archive(self, ref: str, path: str) -> AsyncIterator[bytes]:
        """A tar of ``path`` in a running container, named by its last component (docker's archive)."""
        container = self.get(ref)
        path = _container_path(path)
        parent, name = posixpath.split(path)
        self._emit(container, "archive-path")
        async for chunk in self._tool(container, "copy from", ["tar", "-c", "-f", "-", "-C", parent or "/", "--",
                                                              name or "."], missing=path):
            yield chunk

    async def extract(self, ref: str, path: str, body: AsyncIterator[bytes]) -> None:
        """Unpack the tar ``body`` into the directory ``path`` of a running container, as root, inside its
        root (its symlinks cannot lead out of it), with the container's confinement."""
        container = self.get(ref)
        path = _container_path(path)
        self._emit(container, "extract-to-dir")
        async for _ in self._tool(container, "copy to", ["tar", "-x", "--numeric-owner", "-f", "-", "-C", path],
                                  body, missing=path):
            pass

    async def _tool(self, container: Container, what: str, args: list[str], body: AsyncIterator[bytes] | None = None,
                    missing: str = "") -> AsyncIterator[bytes]:
        """Run an applet of the agent's busybox as root in the container's namespaces, with ``body`` as its
        stdin; its stdout.  A failure raises its first line of stderr (NotFound when it says ``missing``
        does not exist)."""
        async with self._reachable(container, what) as pod:
            async for chunk in self._run_tool(pod, container, what, args, body, missing):
                yield chunk

    async def _run_tool(self, pod: Pod, container: Container, what: str, args: list[str],
                        body: AsyncIterator[bytes] | None, missing: str) -> AsyncIterator[bytes]:
        if pod.client.info is None or "tools" not in pod.client.info.capabilities:
            raise errors.StateError(f"cannot {what} container {container.name}: its guest agent has no tools "
                                    "(a guest disk older than this hyperd)")
        ex = Exec(secrets.token_hex(32), container, tuple(args), (), "/", "0:0", False, body is not None, tool=True)
        self.execs[ex.id] = ex
        feeding: asyncio.Task[None] | None = None
        failure = bytearray()
        try:
            await self._launch_exec(pod, ex, detach=False)
            if body is not None and ex.stdin is not None:
                feeding = asyncio.create_task(_feed(ex.stdin, body))
            while (item := await ex.output.get()) is not None:
                if item[0] == 1:
                    yield item[1]
                elif len(failure) < MAX_ERROR:
                    failure += item[1]
            await ex.done.wait()
            if feeding is not None:
                await feeding
        finally:
            if feeding is not None:
                feeding.cancel()
            if not ex.done.is_set():
                # The reader went away: end the tool, whose output would wait for credit forever.
                with contextlib.suppress(errors.HyperError):
                    await pod.client.request("signal", {"id": container.id, "process": ex.id,
                                                        "signal": int(signal.SIGKILL)})
            self.execs.pop(ex.id, None)
        if ex.exit_code:
            message = bytes(failure[:MAX_ERROR]).decode(errors="replace").strip().splitlines()
            reason = message[0].removeprefix("tar: ").removeprefix("stat: ") if message else f"status {ex.exit_code}"
            if "No such file or directory" in reason or "can't stat" in reason:
                raise errors.NotFound(f"Could not find the file {missing} in container {container.name}")
            raise errors.StateError(f"cannot {what} container {container.name}: {reason}")

    def _open_log(self, container: Container) -> logs.Log:
        """The run's log, by the container's log driver; one that cannot reach its target says why."""
        spec = container.spec
        tag = logs.tag(spec.log.config.get("tag", ""), container.id, container.name, spec.image)
        try:
            log = logs.Log(spec.log, self.log_path(container), tag, spec.hostname or container.id[:12])
        except OSError as err:
            raise errors.StorageError(f"cannot open the log of {container.name}: {err.strerror or err}") from err
        if log.error:
            container.log_error = f"logging failed: {log.error}"
        return log

    async def _pump(self, container: Container, stream_no: int, stream: Stream, log: logs.Log) -> None:
        while data := await stream.read():
            try:
                log.write(stream_no, data)
            except OSError as err:
                # A full disk loses log lines, not the container: keep draining and delivering.
                container.log_error = container.log_error or f"logging failed: {err.strerror or err}"
            if log.error and not container.log_error:
                container.log_error = f"logging failed: {log.error}"
            # A slow client holds the container back (as a full pipe would), never hyperd's memory.
            for queue in list(self.subscribers[container.id]):
                await queue.put((stream_no, data))

    async def _supervise(self, container: Container, pod: Pod, mark: Callable[[str], None]) -> None:
        sandbox = pod.sandbox
        died = asyncio.ensure_future(sandbox.vm.child.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {pod.exited, died, sandbox.client.closed}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if pod.exited.done():
                container.exit_code = pod.exited.result().status
                container.oom_killed = pod.exited.result().oom
                if container.oom_killed:
                    self._emit(container, "oom")
                # The agent reports an exit only after all output went out: drain it all.
                await asyncio.wait(pod.tasks, timeout=SHUTDOWN_TIMEOUT)
            elif pod.stopping:
                container.exit_code = 137
            else:
                # The agent's channel closing is usually QEMU going: let it say how, killed or not.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(died), 1.0)
                container.exit_code = 137 if sandbox.vm.child.returncode in (-9, -15) else 255
                container.error = (sandbox.client.error and str(sandbox.client.error)) or \
                    "the pod's VM exited unexpectedly"
            mark("exited")
            sandbox.members.discard(container.id)
            if not sandbox.members:  # the last container out ends the VM
                await self._teardown(sandbox)
                mark("vm_gone")
        finally:
            died.cancel()
            for task in pod.tasks:
                task.cancel()
            if pod.log is not None:
                pod.log.close()
            sandbox.members.discard(container.id)
            sandbox.exits.pop(container.id, None)
            if not sandbox.members:
                await self._detach(sandbox.network)
                if self.sandboxes.get(sandbox.pod) is sandbox:
                    del self.sandboxes[sandbox.pod]
            container.ports, container.networks, container.paused = [], {}, False
            self.booted[container.id].clear()
            for ex in self.execs.values():
                if ex.container is container and not ex.done.is_set():
                    self._end_exec(ex, 137)  # the pod went with the process in it
            self.pods.pop(container.id, None)
            self._release_volumes(container)
            container.state = ContainerState.EXITED
            container.finished = time.time()
            if self.closing:
                container.stopped_by_daemon = True
            self._emit(container, "die", exitCode=str(container.exit_code))
            self._schedule_restart(container)
            self._finish(container)
            if container.spec.autoremove:
                await self._autoremove(container)

    # -- restart policies ---------------------------------------------------------------

    def _schedule_restart(self, container: Container) -> None:
        """After an exit: a restart later, if the container's policy asks for one."""
        policy = container.spec.restart
        if self.closing or not policy.restarts(container.exit_code, container.restart_count,
                                               container.stopped_by_user):
            return
        container.restart_delay = next_delay(container.restart_delay, container.finished - container.started)
        self._plan_restart(container, container.restart_delay)

    def _plan_restart(self, container: Container, delay: float) -> None:
        container.restarting = True
        task = asyncio.create_task(self._restart_later(container, delay))
        self.restarts[container.id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self.restarts.get(container.id) is done:
                del self.restarts[container.id]

        task.add_done_callback(forget)

    async def _restart_later(self, container: Container, delay: float) -> None:
        await asyncio.sleep(delay)
        container.restart_count += 1
        try:
            await self.start(container.id, by_policy=True)
        except errors.HyperError as err:
            # A start that fails is an exit too: the policy decides again, with the back-off.
            log.warning("restarting %s failed: %s", container.name, str(err).split("\n")[0])
            container.finished = container.started = time.time()
            self._schedule_restart(container)

    def _cancel_restart(self, container: Container) -> None:
        task = self.restarts.pop(container.id, None)
        if task is not None:
            task.cancel()
        container.restarting = False

    def resume(self) -> None:
        """At start-up: start the containers whose restart policy says so after a daemon start."""
        for container in self.containers.values():
            if container.state == ContainerState.EXITED and container.spec.restart.at_daemon_start(
                    container.stopped_by_user, container.stopped_by_daemon):
                self._plan_restart(container, 0)

    def _finish(self, container: Container) -> None:
        """The container is done running (or never got going): record it, end its streams, wake waiters."""
        try:
            self.db.save(container)
        except errors.StorageError as err:
            # The exit is still known here and is reported; only its record on disk is missing.
            log.warning("%s", err)
        for queue in self.subscribers[container.id]:
            _close_stream(queue)
        self.finished[container.id].set()
        self.next_exit[container.id].set_result(None)
        self.next_exit[container.id] = asyncio.get_running_loop().create_future()

    async def _teardown(self, sandbox: Sandbox) -> None:
        """Ask the agent to power off; QMP quit or SIGKILL when it does not."""
        # Only an agent that came up can be asked to shut down; otherwise go straight to QEMU.
        vm, client = sandbox.vm, sandbox.client
        if vm.child.returncode is None and client.error is None and client.info is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.request("shutdown"), SHUTDOWN_TIMEOUT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(vm.child.wait()), SHUTDOWN_TIMEOUT)
        await vm.kill()
        await client.close()

    # -- signals, stop, wait, remove ----------------------------------------------------

    async def pause(self, ref: str) -> None:
        """Freeze the container's whole VM through the hypervisor (docker freezes its cgroup)."""
        container = self.get(ref)
        pod = self._running(container)
        if container.paused:
            raise errors.StateError(f"container {container.name} is already paused")
        await pod.vm.pause()
        container.paused = True
        self.db.save(container)
        self._emit(container, "pause")

    async def unpause(self, ref: str) -> None:
        container = self.get(ref)
        pod = self._running(container)
        if not container.paused:
            raise errors.StateError(f"container {container.name} is not paused")
        await pod.vm.resume()
        container.paused = False
        self.db.save(container)
        self._emit(container, "unpause")

    def _running(self, container: Container, action: str = "") -> Pod:
        """The container's pod; StateError if it is not running (or, for ``action``, paused)."""
        pod = self.pods.get(container.id)
        if pod is None:
            raise errors.StateError(f"container {container.name} is not running")
        if action and container.paused:
            raise errors.StateError(f"cannot {action} container {container.name}: it is paused, unpause it first")
        return pod

    async def kill(self, ref: str, sig: int = signal.SIGKILL) -> None:
        container = self.get(ref)
        if container.paused and sig == signal.SIGKILL:
            await self.unpause(container.id)
        pod = self._running(container, "signal")
        container.stopped_by_user = True
        self._emit(container, "kill", signal=str(sig))
        if sig == signal.SIGKILL:
            pod.stopping = True
        try:
            await pod.client.request("signal", {"id": container.id, "signal": sig})
        except errors.GuestError:
            if sig != signal.SIGKILL:
                raise
            await pod.vm.kill()

    async def stop(self, ref: str, timeout: float | None) -> bool:
        """False when the container was not running (docker's 304)."""
        container = self.get(ref)
        container.stopped_by_user = True
        if container.restarting:
            self._cancel_restart(container)
            self.db.save(container)
            return True
        await self._booted(container)
        if container.id not in self.pods:
            return False
        default = container.spec.stop_timeout if container.spec.stop_timeout is not None else self.config.stop_timeout
        await self._stop_pod(container.id, default if timeout is None else timeout)
        self._emit(container, "stop")
        return True

    async def _booted(self, container: Container) -> None:
        """Until a boot in progress has ended, in a running pod or in failure (stopping needs a pod)."""
        if container.state != ContainerState.RUNNING or container.id in self.pods:
            return
        waits = {asyncio.ensure_future(self.booted[container.id].wait()),
                 asyncio.ensure_future(self.finished[container.id].wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _stop_pod(self, container_id: str, timeout: float) -> None:
        container = self.containers[container_id]
        await self._booted(container)
        pod = self.pods.get(container_id)
        if pod is None:
            return
        if container.paused:  # a frozen guest cannot be asked to stop
            await pod.vm.resume()
            container.paused = False
        pod.stopping = True
        finished = self.finished[container_id]
        if timeout > 0:
            with contextlib.suppress(errors.HyperError):
                signum = self.containers[container_id].spec.stop_signal
                await pod.client.request("signal", {"id": container_id, "signal": signum})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout)
        if not finished.is_set():
            with contextlib.suppress(errors.HyperError):
                await pod.client.request("signal", {"id": container_id, "signal": signal.SIGKILL})
            try:
                await asyncio.wait_for(finished.wait(), SHUTDOWN_TIMEOUT)
            except TimeoutError:
                await pod.vm.kill()
                await finished.wait()

    async def wait(self, ref: str, next_exit: bool = False) -> Container:
        """Until the container is not running (with ``next_exit``: until it next exits, even if it
        has not started yet: what ``start -a`` waits for)."""
        container = self.get(ref)
        if next_exit:
            await asyncio.shield(self.next_exit[container.id])
        await self.finished[container.id].wait()
        if container.spec.autoremove:
            await self.removed[container.id].wait()
        return container

    async def remove(self, ref: str, force: bool, volumes: bool = False) -> None:
        """``docker rm [-f] [-v]``: ``volumes`` removes the container's anonymous volumes too."""
        container = self.get(ref)
        if container.state == ContainerState.RUNNING:
            if not force:
                raise errors.Conflict(
                    f"cannot remove running container {container.name}: stop it first or use rm -f"
                )
            container.stopped_by_user = True
            await self._stop_pod(container.id, 0)
            await self.finished[container.id].wait()
            if container.spec.autoremove:
                await self.removed[container.id].wait()
                return
        await self._remove(container, volumes)

    async def _autoremove(self, container: Container) -> None:
        """``--rm`` after the container is done; a failure is logged, and waiters are released anyway."""
        try:
            await self._remove(container, volumes=True)
        except errors.HyperError as err:
            log.warning("could not remove %s: %s", container.name, err)
            self.removed[container.id].set()

    async def _remove(self, container: Container, volumes: bool = False) -> None:
        await self._quiesce(container)  # a VM reaching its files goes first
        if container.id not in self.containers:
            return
        self._cancel_restart(container)
        container.transition(ContainerState.REMOVING, "remove")
        # Best effort: on a full disk, removing is what frees space, so it must not depend on
        # a write first (after a crash, an unrecorded removal is simply done again).
        with contextlib.suppress(errors.StorageError):
            self.db.save(container)
        await asyncio.to_thread(shutil.rmtree, self.container_dir(container), True)
        self.db.delete(container.id)
        del self.containers[container.id]
        self.offline.pop(container.id, None)
        record = self.pod_records.get(container.spec.pod)
        if record is not None and container.id in record.containers:
            record.containers.remove(container.id)
            with contextlib.suppress(errors.StorageError):
                self.db.save_pod(record.id, pod_spec.to_record(record))
        self._emit(container, "destroy")
        for exec_id in [e.id for e in self.execs.values() if e.container is container]:
            del self.execs[exec_id]
        self.removed[container.id].set()
        for mount in container.spec.mounts if volumes else ():
            if mount.anonymous and not self.volume_users(mount.source):
                await asyncio.to_thread(self.volumes.remove, mount.source)

    # -- pods -----------------------------------------------------------------------------

    def get_pod(self, ref: str) -> PodRecord:
        if ref in self.pod_records:
            return self.pod_records[ref]
        found = [p for p in self.pod_records.values() if p.name == ref or p.id.startswith(ref)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise errors.InvalidArgument(f"multiple pods match {ref}")
        raise errors.NotFound(f"No such pod: {ref}")

    def pod_members(self, record: PodRecord) -> list[Container]:
        return [self.containers[cid] for cid in record.containers if cid in self.containers]

    def pod_status(self, record: PodRecord) -> str:
        states = {c.state for c in self.pod_members(record)}
        if record.id in self.sandboxes:
            return "running"
        return "exited" if ContainerState.EXITED in states else "created"

    async def create_pod(self, spec: Any) -> PodRecord:
        """``hyper pod create``: the pod's containers, all created or none."""
        record = pod_spec.new_record(pod_spec.validate(spec))
        if any(p.name == record.name for p in self.pod_records.values()):
            raise errors.Conflict(f'the pod name "{record.name}" is already in use')
        requests = pod_spec.requests(record)
        for name, request in requests:
            self.images.resolve(request.image)  # every image first: a missing one leaves nothing behind
            if any(c.name == name for c in self.containers.values()):
                raise errors.Conflict(f'the container name "/{name}" is already in use')
        self.pod_records[record.id] = record
        try:
            for name, request in requests:
                self.create(request, name)
        except BaseException:
            for cid in list(record.containers):
                await self._remove(self.containers[cid], volumes=True)
            del self.pod_records[record.id]
            with contextlib.suppress(errors.StorageError):
                self.db.delete_pod(record.id)
            raise
        return record

    async def start_pod(self, ref: str, by_policy: bool = False) -> PodRecord:
        """Boot the pod's VM with every container that is not running; all start, or none does."""
        record = self.get_pod(ref)
        if self.closing:
            raise errors.Conflict("hyperd is shutting down")
        members = self.pod_members(record)
        if not members:
            raise errors.StateError(f"pod {record.name} has no containers")
        if record.id in self.sandboxes:
            for container in members:
                if container.state != ContainerState.RUNNING:
                    await self.start(container.id, by_policy)
            return record
        starting = [c for c in members if c.state != ContainerState.RUNNING]
        marks = {c.id: self._begin(c, by_policy) for c in starting}

        def mark(phase: str) -> None:
            for each in marks.values():
                each(phase)

        try:
            pods = await self._boot_sandbox(starting, self._pod_wiring(record, starting), record, mark)
        except BaseException as err:
            for container in starting:
                await self._not_started(container, err)
            raise
        for container in starting:
            self._started(container, pods[container.id], marks[container.id])
        return record

    async def _boot_sandbox(self, members: list[Container], wiring: Wiring, record: PodRecord | None,
                            mark: Callable[[str], None], offline: bool = False) -> dict[str, Pod]:
        """Boot a VM for ``members`` (the containers of ``record``, or one container of its own) and start
        them in it; all start, or nothing is left running.  ``offline``: see ``_start_in``."""
        claimed: list[Container] = []
        try:
            disks: list[Disk] = []
            shares: list[Share] = []
            roots = {}
            for container in members:
                await self._free_disks(container, itself=not offline)
                self._claim_volumes(container)
                claimed.append(container)
                roots[container.id] = await self._prepare(container, disks, shares)
            attachment = await self.networks.attach(wiring)
            try:
                if record is None:
                    (single,) = members
                    name, workdir = f"hyper-{single.id[:12]}", self.container_dir(single) / "vm"
                    memory = single.spec.resources.vm_memory_mib(self.config.memory_mib)
                else:
                    name, workdir = f"hyper-pod-{record.id[:12]}", self.config.root / "pods" / record.id
                    memory = record.memory_mib or max(self.config.memory_mib, GUEST_OVERHEAD_MIB + sum(
                        math.ceil(c.spec.resources.memory / (1 << 20)) for c in members))
                vcpus = (record and record.vcpus) or max(c.spec.resources.vm_vcpus() for c in members)
                sandbox = await self._boot_vm(name, workdir, memory, vcpus, attachment, disks, shares, members, mark)
                if record is not None:
                    sandbox.pod, sandbox.shared = record.id, record.shares
                try:
                    pods = {c.id: await self._start_in(sandbox, c, roots[c.id], mark, offline) for c in members}
                    await self.networks.serve(attachment)
                except BaseException:
                    await self._teardown(sandbox)
                    raise
            except BaseException:
                await self._detach(attachment)
                raise
        except BaseException:
            for container in claimed:
                self._release_volumes(container)
            raise
        if record is not None:
            self.sandboxes[record.id] = sandbox
        return pods

    def _pod_wiring(self, record: PodRecord, members: list[Container]) -> Wiring:
        """The network of a pod: the first container's settings, every container's ports and names."""
        first = members[0].spec
        return Wiring(members[0].id, (record.name, *(c.name for c in members), *(c.id[:12] for c in members)),
                      first.network_mode, first.endpoints, tuple(p for c in members for p in c.spec.ports),
                      first.hostname, first.dns, first.dns_search, first.dns_options, first.extra_hosts)

    async def stop_pod(self, ref: str, timeout: float | None) -> None:
        record = self.get_pod(ref)
        await asyncio.gather(*(self.stop(c.id, timeout) for c in self.pod_members(record)))

    async def remove_pod(self, ref: str, force: bool) -> None:
        """``hyper pod rm [-f]``: the pod's containers (killed first with ``force``) and its record."""
        record = self.get_pod(ref)
        if record.id in self.sandboxes and not force:
            raise errors.Conflict(f"cannot remove running pod {record.name}: stop it first or use rm -f")
        await asyncio.gather(*(self.remove(c.id, force=True, volumes=True) for c in self.pod_members(record)))
        self.db.delete_pod(record.id)
        self.pod_records.pop(record.id, None)
        shutil.rmtree(self.config.root / "pods" / record.id, ignore_errors=True)

    # -- volumes --------------------------------------------------------------------------

    def volume_users(self, name: str) -> list[Container]:
        return [c for c in self.containers.values()
                if any(m.type == "volume" and m.source == name for m in c.spec.mounts)]

    async def remove_volume(self, name: str) -> None:
        """``docker volume rm``: refused while any container, running or not, names the volume."""
        self.volumes.get(name)
        users = self.volume_users(name)
        if users:
            raise errors.Conflict(f"remove {name}: volume is in use - [{', '.join(c.id for c in users)}]")
        await asyncio.to_thread(self.volumes.remove, name)

    async def prune_volumes(self, everything: bool) -> tuple[list[str], int]:
        """``docker volume prune [-a]``: remove the unused anonymous volumes (every unused one with
        ``everything``); their names and the bytes freed."""
        removed, freed = [], 0
        for volume in self.volumes.list():
            if (everything or volume.anonymous) and not self.volume_users(volume.name):
                freed += await asyncio.to_thread(_tree_size, self.volumes.directory(volume.name))
                await asyncio.to_thread(self.volumes.remove, volume.name)
                removed.append(volume.name)
        return removed, freed

    # -- update ---------------------------------------------------------------------------

    async def update(self, ref: str, changes: dict[str, Any]) -> None:
        """``docker update``: new resource limits (keys of ``Resources.parse``), kept for the
        next runs and, for a running container, written to its cgroup in the guest now (and, in a
        VM of its own, its memory limit to the VM's balloon)."""
        container = self.get(ref)
        old = container.spec.resources
        new = Resources.parse(**{**asdict(old), **changes})
        pod = self.pods.get(container.id)
        if pod is not None:
            memory, vcpus = pod.vm.spec.memory_mib, pod.vm.spec.vcpus
            target, current = new.vm_memory_mib(self.config.memory_mib), old.vm_memory_mib(self.config.memory_mib)
            if target > memory or new.vm_vcpus() > vcpus:
                raise errors.StateError(
                    f"cannot raise the limits of running container {container.name} beyond its VM ({memory} MiB, "
                    f"{vcpus} vCPU{'s' if vcpus > 1 else ''}): no memory or CPU hotplug here; stop it, update "
                    "it and start it again")
            if pod.client.info is None or "limits" not in pod.client.info.capabilities:
                raise errors.StateError("the guest agent cannot change limits (a guest disk older than this hyperd)")
            # A VM of one container follows its limit (the balloon); a pod's VM is sized for all of
            # its containers. The VM grows back first and shrinks last, so that the container's
            # cgroup, not the VM, is what a process meets.
            alone = pod.sandbox.members == {container.id} and not pod.sandbox.pod
            if alone and target > current:
                await pod.vm.set_memory(target)
            await self._running(container, "update").client.request(
                "container.update", {"id": container.id, "limits": new.agent_limits()})
            if alone and target < current:
                await pod.vm.set_memory(target)
        container.spec = replace(container.spec, resources=new)
        self.db.save(container)
        self._emit(container, "update")

    # -- top and stats ------------------------------------------------------------------

    def _observable(self, container: Container) -> Pod:
        pod = self._running(container, "inspect the processes of")
        if pod.client.info is None or "stats" not in pod.client.info.capabilities:
            raise errors.StateError("the guest agent cannot report processes (a guest disk older than this hyperd)")
        return pod

    async def top(self, ref: str) -> tuple[list[ProcessInfo], float]:
        """The container's processes, and when (Unix time) its VM booted."""
        container = self.get(ref)
        processes, uptime = await self._observable(container).client.top(container.id)
        return processes, time.time() - uptime

    async def stats(self, ref: str) -> dict[str, Any]:
        """One sample of the container's usage: the guest's count for its processes, and the
        host's for its whole VM (QEMU's resident memory and CPU time)."""
        container = self.get(ref)
        pod = self._observable(container)
        guest = await pod.client.stats(container.id)
        return {"read": time.time_ns(), "guest": guest, "vm": _host_usage(pod.vm.pid),
                "vcpus": 1, "vm_memory_limit": await pod.vm.memory()}

    # -- stdin, terminals, exec ----------------------------------------------------------

    async def stdin_of(self, container: Container) -> Input | None:
        """The container's stdin once its pod runs (input may arrive before the start); None without one."""
        await self.booted[container.id].wait()
        pod = self.pods.get(container.id)
        return pod.stdin if pod is not None else None

    async def resize(self, ref: str, rows: int, cols: int, exec_id: str = "") -> None:
        """Set the window size of a container's (or an exec's) terminal."""
        container = self.get(ref)
        pod = self.pods.get(container.id)
        if pod is None:
            raise errors.StateError(f"container {container.name} is not running")
        if not 0 < rows < 65536 or not 0 < cols < 65536:
            raise errors.InvalidArgument(f"invalid terminal size {rows}x{cols}")
        tty = self.execs[exec_id].tty if exec_id else container.spec.tty
        if tty:
            await pod.client.request("resize", {"id": container.id, "process": exec_id, "rows": rows, "cols": cols})

    def create_exec(self, ref: str, cmd: list[str], env: list[str], workdir: str, user: str, tty: bool,
                    open_stdin: bool) -> Exec:
        container = self.get(ref)
        self._running(container, "exec in")
        if not cmd:
            raise errors.InvalidArgument("no command specified")
        merged = dict(item.partition("=")[::2] for item in container.spec.env)
        for item in env:
            key, _, value = item.partition("=")
            if not key:
                raise errors.InvalidArgument(f"invalid environment variable {item!r}")
            merged[key] = value
        ex = Exec(secrets.token_hex(32), container, tuple(cmd), tuple(f"{k}={v}" for k, v in merged.items()),
                  workdir or container.spec.workdir, user or container.spec.user, tty, open_stdin,
                  on_exit=lambda done, status: self._emit(done.container, "exec_die", execID=done.id,
                                                           exitCode=str(status)))
        if len(json.dumps([ex.args, ex.env, ex.workdir, ex.user])) > MAX_PROCESS_SPEC:
            raise errors.InvalidArgument(f"command and environment exceed {MAX_PROCESS_SPEC >> 10} KiB")
        self.execs[ex.id] = ex
        self._emit(container, f"exec_create: {' '.join(ex.args)}", execID=ex.id)
        return ex

    def get_exec(self, exec_id: str) -> Exec:
        ex = self.execs.get(exec_id)
        if ex is None:
            raise errors.NotFound(f"No such exec instance: {exec_id}")
        return ex

    async def start_exec(self, exec_id: str, detach: bool) -> Exec:
        """Run an exec instance; its output goes to ``ex.output`` (to nowhere when ``detach``)."""
        ex = self.get_exec(exec_id)
        if ex.running or ex.exit_code is not None:
            raise errors.Conflict(f"exec {exec_id[:12]} has already run")
        return await self._launch_exec(self._running(ex.container, "exec in"), ex, detach)

    async def _launch_exec(self, pod: Pod, ex: Exec, detach: bool) -> Exec:
        if pod.client.info is None or "exec" not in pod.client.info.capabilities:
            raise errors.StateError("the guest agent cannot exec (a guest disk older than this hyperd)")
        ex.running = True
        ex.stdin = pod.client.open_input() if ex.open_stdin else None
        stdout = pod.client.open_stream()
        stderr = None if ex.tty else pod.client.open_stream()
        ex.tasks = [asyncio.create_task(_exec_pump(ex, 1, stdout, detach))]
        if stderr is not None:
            ex.tasks.append(asyncio.create_task(_exec_pump(ex, 2, stderr, detach)))
        try:
            await pod.client.request("process.start", {
                "container": ex.container.id, "id": ex.id, "tty": ex.tty, "stdout": stdout.id,
                **({"stderr": stderr.id} if stderr is not None else {}),
                **({"stdin": ex.stdin.id} if ex.stdin is not None else {}),
                "process": {**_process(ex.container.spec, ex.args, ex.env, ex.workdir, ex.user),
                            **({"tool": True} if ex.tool else {})},
            })
        except errors.StartFailed as err:
            self._end_exec(ex, err.exit_code)
            raise
        except BaseException:
            self._end_exec(ex, 126)
            raise
        if not ex.tool:
            self._emit(ex.container, f"exec_start: {' '.join(ex.args)}", execID=ex.id)
        return ex

    def _exec_exited(self, event: ExitEvent) -> None:
        ex = self.execs.get(event.process)
        if ex is None or ex.container.id != event.container or ex.done.is_set():
            return
        # The agent reports an exit after all output went out: let the pumps deliver it first.
        task = asyncio.create_task(_finish_exec(ex, event.status))
        self.supervisors.add(task)
        task.add_done_callback(self.supervisors.discard)

    def _end_exec(self, ex: Exec, status: int) -> None:
        for task in ex.tasks:
            task.cancel()
        _settle(ex, status)

    # -- output -------------------------------------------------------------------------

    def subscribe(self, container: Container) -> Subscriber:
        """A queue of the output from now on.  The log read before any await after this misses
        and repeats nothing: its writer runs in this event loop too.

        The queue ends when the container's current run ends, or, if it is not running, its
        next run (as docker's attach waits for a start, which ``start -a`` relies on).
        """
        queue: Subscriber = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self.subscribers[container.id].append(queue)
        return queue

    def unsubscribe(self, container: Container, queue: Subscriber) -> None:
        with contextlib.suppress(ValueError, KeyError):
            self.subscribers[container.id].remove(queue)

    def log_path(self, container: Container) -> Path:
        return self.container_dir(container) / f"{container.id}-json.log"

    # -- images -------------------------------------------------------------------------

    def image_users(self) -> dict[str, bool]:
        """Image id -> whether a running container uses it (False: only created or exited ones do)."""
        users: dict[str, bool] = {}
        for container in self.containers.values():
            running = container.state == ContainerState.RUNNING or container.id in self.pods
            users[container.spec.image_id] = users.get(container.spec.image_id, False) or running
        return users

    async def remove_image(self, name: str, force: bool) -> list[dict[str, str]]:
        return await asyncio.to_thread(self.images.remove, name, force=force, users=self.image_users())

    async def prune_images(self, everything: bool) -> tuple[list[dict[str, str]], int]:
        return await asyncio.to_thread(self.images.prune, all=everything, users=set(self.image_users()))

    @property
    def registry_options(self) -> registry.RegistryOptions:
        return registry.RegistryOptions(mirrors=self.config.registry_mirrors,
                                        insecure=self.config.insecure_registries,
                                        max_concurrent_downloads=self.config.max_concurrent_downloads)

    async def pull(self, reference: str, platform: registry.Platform | None,
                   credentials: registry.Credentials | None,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> registry.Pulled:
        return await registry.pull(self.images, reference, platform, credentials=credentials,
                                   options=self.registry_options, progress=progress)

    async def login(self, server: str, credentials: registry.Credentials) -> None:
        await registry.login(server_host(server), credentials, self.registry_options)

    def info(self) -> dict[str, Any]:
        running = sum(c.state == ContainerState.RUNNING for c in self.containers.values())
        return {
            "Containers": len(self.containers),
            "ContainersRunning": running,
            "ContainersStopped": len(self.containers) - running,
            "Images": len(self.images.list()),
            **self.hypervisor.describe(),
            "Kernel": str(self.config.kernel),
            "GuestDisk": str(self.config.guest_disk),
            "Root": str(self.config.root),
            "Socket": str(self.config.socket),
        }


def _resolve_spec(image_ref: str, image: Image, cmd: list[str] | None, entrypoint: list[str] | None,
                  env: list[str], workdir: str, user: str, autoremove: bool) -> ContainerSpec:
    """Docker's rules: --entrypoint replaces the image's and drops its Cmd; -e adds to and overrides Env."""
    config = image.config
    final_entrypoint = list(config.entrypoint or []) if entrypoint is None else entrypoint
    if cmd:
        final_cmd = cmd
    elif entrypoint is not None:
        final_cmd = []
    else:
        final_cmd = list(config.cmd or [])
    merged: dict[str, str] = {}
    for item in [*(config.env or []), *env]:
        key, _, value = item.partition("=")
        merged[key] = value
    return ContainerSpec(
        image=image_ref, image_id=image.id, args=tuple(final_entrypoint + final_cmd),
        env=tuple(f"{k}={v}" for k, v in merged.items()), workdir=workdir or config.working_dir or "",
        user=user or config.user or "", autoremove=autoremove, cmd=tuple(final_cmd),
        entrypoint=tuple(final_entrypoint),
        stop_signal=parse_signal(config.stop_signal) if config.stop_signal else signal.SIGTERM,
        labels=dict(config.labels), exposed_ports=config.exposed_ports,
    )


async def _first(stream: Stream, done: asyncio.Future[Any]) -> bytes:
    """The stream's first chunk, or b"" if the request ends first: a refusal (no such container in
    the guest) is then raised before anything is sent."""
    read = asyncio.ensure_future(stream.read())
    await asyncio.wait({read, done}, return_when=asyncio.FIRST_COMPLETED)
    if read.done():
        return read.result()
    read.cancel()
    await done  # raises the refusal; a success with no byte at all is an empty stream
    return b""


async def _drain(stream: Stream, done: asyncio.Future[Any]) -> None:
    with contextlib.suppress(Exception):
        while await stream.read():
            pass
        await done


async def _feed(stdin: Input, body: AsyncIterator[bytes]) -> None:
    async for chunk in body:
        await stdin.write(chunk)
    stdin.close()


def _container_path(path: str) -> str:
    """A path in a container, absolute and normalized (relative ones are from its root, as docker's are)."""
    if not path or "\0" in path:
        raise errors.InvalidArgument(f"invalid path in the container {path!r}")
    return posixpath.normpath("/" + path.lstrip("/"))


async def _exec_pump(ex: Exec, stream_no: int, stream: Stream, detach: bool) -> None:
    """An exec's output to its attached client (a slow one holds the process back), or nowhere."""
    while data := await stream.read():
        if not detach:
            await ex.output.put((stream_no, data))


async def _finish_exec(ex: Exec, status: int) -> None:
    await asyncio.wait(ex.tasks, timeout=SHUTDOWN_TIMEOUT)
    _settle(ex, status)


def _settle(ex: Exec, status: int) -> None:
    ex.on_exit(ex, status)
    ex.exit_code = status
    ex.running = False
    if ex.stdin is not None:
        ex.stdin.close()
    _close_stream(ex.output)
    ex.done.set()


def _host_usage(pid: int) -> dict[str, int]:
    """A VM's cost on the host: QEMU's resident bytes and CPU nanoseconds (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return {"memory": 0, "cpu_ns": 0}
    rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    ticks = os.sysconf("SC_CLK_TCK")
    return {"memory": rss, "cpu_ns": (int(fields[11]) + int(fields[12])) * 10**9 // ticks}


def _tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (allocated, so a sparse disk counts what it holds)."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def _injected(files: tuple[tuple[str, str, int], ...]) -> tuple[tuple[str, str, int], ...]:
    """Files to inject into a container, checked: absolute paths, bounded contents, file modes."""
    total = 0
    for path, content, mode in files:
        if not path.startswith("/") or "\0" in path or os.path.normpath(path) == "/":
            raise errors.InvalidArgument(f"invalid path {path!r} for an injected file: an absolute file path")
        if not 0 <= mode <= 0o777:
            raise errors.InvalidArgument(f"invalid mode {mode:o} for {path}")
        total += len(content.encode())
    if total > MAX_INJECTED:
        raise errors.InvalidArgument(f"injected files exceed {MAX_INJECTED >> 10} KiB")
    return tuple((os.path.normpath(path), content, mode) for path, content, mode in files)


def _upper_serial(container: Container) -> str:
    """The virtio-blk serial of the container's writable disk."""
    return f"upper{container.id[:12]}"


def _image_serial(image: Image) -> str:
    """The serial the guest finds an image's disk by."""
    return f"img{image.id.removeprefix('sha256:')[:16]}"


def _close_stream(queue: Subscriber) -> None:
    """End a subscriber's stream, dropping its backlog if it is full (it is finished anyway)."""
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            queue.get_nowait()


def _validate_name(name: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    if not name or not name[0].isalnum() or not set(name) <= allowed or len(name) > 128:
        raise errors.InvalidArgument(f'invalid container name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')


def _process(spec: ContainerSpec, args: tuple[str, ...], env: tuple[str, ...], workdir: str,
             user: str) -> dict[str, Any]:
    """A process of the container as the agent's ``container.start`` and ``process.start`` take it:
    with the container's resource limits and privileges, whoever starts it."""
    process: dict[str, Any] = {"args": list(args), "env": list(env), "cwd": workdir or "/", "user": user,
                               "capabilities": spec.security.capabilities(),
                               "no_new_privileges": spec.security.no_new_privileges}
    if spec.ulimits:
        process["rlimits"] = [[RLIMITS[name], soft, hard] for name, soft, hard in spec.ulimits]
    program = spec.security.seccomp_filter()
    if program is not None:
        process["seccomp"] = base64.b64encode(program).decode()
    return process


RLIMITS = {"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7, "memlock": 8,
           "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15}
"""docker's ``--ulimit`` names and their Linux resource numbers."""
NAMESPACED_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                      "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
UNLIMITED = 2**64 - 1


def _ulimit(text: str) -> tuple[str, int, int]:
    """``nofile=1024:2048`` as (name, soft, hard); -1 is unlimited."""
    name, eq, values = text.partition("=")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise errors.InvalidArgument(f"invalid ulimit {text!r}: use NAME=SOFT[:HARD]") from None
    if name not in RLIMITS or not eq:
        raise errors.InvalidArgument(f"invalid ulimit {text!r}: unknown name (one of {', '.join(RLIMITS)})")
    soft, hard = (UNLIMITED if v == -1 else v for v in (soft, hard))
    if min(soft, hard) < 0 or soft > hard:
        raise errors.InvalidArgument(f"invalid ulimit {text!r}: the soft limit must not exceed the hard one")
    return name, soft, hard


def _check_sysctl(key: str, network_mode: str) -> None:
    """Only what the container's own namespaces isolate, as docker allows (net.* is the whole pod's)."""
    if key in NAMESPACED_SYSCTLS or key.startswith("fs.mqueue."):
        return
    if key.startswith("net.") and network_mode != "none":
        return
    raise errors.InvalidArgument(f"sysctl {key!r} is not allowed: only IPC (kernel.shm*, kernel.msg*, kernel.sem, "
                                 "fs.mqueue.*) and network (net.*) settings can be set per container")


def _check_address(text: str, flag: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise errors.InvalidArgument(f"invalid address {text!r} for {flag}") from None


def _reclaim_vm(container: Container) -> None:
    """End a VM a crashed daemon left behind, if that pid is still our QEMU."""
    if not container.vm_pid:
        return
    try:
        cmdline = Path(f"/proc/{container.vm_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if f"hyper-{container.id[:12]}".encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(container.vm_pid, signal.SIGKILL)
