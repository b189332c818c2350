"""Containers: their frozen specs, their lifecycle states, and their rows on disk.

State lives in SQLite (``ROOT/hyper.db``) so that ``hyper ps -a`` survives a daemon
restart; every change is written before the API answers.
"""

from __future__ import annotations

import enum
import json
import signal
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hyperd.errors import InvalidArgument, StateError, StorageError
from hyperd.isolation import Device, Resources, Security
from hyperd.logs import LogConfig
from hyperd.network import Endpoint, NetworkRequest
from hyperd.network.ports import PortBinding
from hyperd.restart import Policy, RestartPolicy
from hyperd.volumes import Mount


class ContainerState(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    REMOVING = "removing"

    def allows(self, target: ContainerState) -> bool:
        return target in _TRANSITIONS[self]


_TRANSITIONS = {
    ContainerState.CREATED: {ContainerState.RUNNING, ContainerState.REMOVING},
    ContainerState.RUNNING: {ContainerState.EXITED, ContainerState.CREATED},
    ContainerState.EXITED: {ContainerState.RUNNING, ContainerState.REMOVING},
    ContainerState.REMOVING: set(),
}


@dataclass(frozen=True)
class ContainerSpec:
    """What ``hyper run``/``create`` asked for, resolved against the image."""

    image: str
    image_id: str
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    autoremove: bool = False
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    storage_size: int = 0
    """Bytes of the container's own writable disk (``--storage-opt size=``); 0: the daemon's default size
    (a tmpfs in the guest for ``--rm`` and for a container joining a running pod)."""
    hostname: str = ""
    network_mode: str = "none"
    """``none``, ``user``, or the name of the bridge network the container joins first."""
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    publish_all: bool = False
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    tty: bool = False
    open_stdin: bool = False
    """Whether the command gets a stdin a client can write to (``-i``)."""
    stdin_once: bool = False
    """Whether that stdin ends when the first attached client's input ends (``run -i``)."""
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    stop_timeout: int | None = None
    """Seconds ``stop`` waits before SIGKILL (``--stop-timeout``); None: the daemon's default."""
    ulimits: tuple[tuple[str, int, int], ...] = ()
    """(name, soft, hard) resource limits of the container's processes."""
    sysctls: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    security: Security = field(default_factory=Security)
    devices: tuple[Device, ...] = ()
    mounts: tuple[Mount, ...] = ()
    """Volumes (by name) and bind mounts (host directories)."""
    files: tuple[tuple[str, str, int], ...] = ()
    """(path, content, mode) of files injected read-only (a pod spec's ``files``)."""
    pod: str = ""
    """The id of the pod the container belongs to; empty for a pod of its own."""
    log: LogConfig = field(default_factory=LogConfig)


@dataclass(frozen=True)
class CreateRequest:
    """What ``docker create`` sends, before it is checked and resolved against the image."""

    image: str
    cmd: list[str] | None = None
    """None: the image's; [] clears it only with an explicit entrypoint."""
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    autoremove: bool = False
    storage_opt: dict[str, str] = field(default_factory=dict)
    network: NetworkRequest = field(default_factory=NetworkRequest)
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    restart: str = "no"
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    stop_timeout: int | None = None
    ulimits: tuple[str, ...] = ()
    """``name=soft[:hard]``, as ``--ulimit`` takes them."""
    sysctls: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    security: Security = field(default_factory=Security)
    devices: tuple[Device, ...] = ()
    mounts: tuple[Mount, ...] = ()
    """``-v`` and ``--mount``, parsed; anonymous volumes are made at create."""
    files: tuple[tuple[str, str, int], ...] = ()
    """(path, content, mode) of files injected read-only (a pod spec's ``files``)."""
    pod: str = ""
    """The id of the pod the container belongs to; empty for a pod of its own."""
    log: LogConfig = field(default_factory=LogConfig)
    """``--log-driver`` and ``--log-opt``, checked."""


def parse_signal(name: str) -> int:
    """``SIGTERM``, ``term``, ``15`` or ``SIGRTMIN+3`` as a signal number; InvalidArgument otherwise."""
    text = name.strip().upper()
    text = text if text.startswith("SIG") or text.isdigit() else f"SIG{text}"
    try:
        if text.isdigit():
            number = int(text)
        elif text.startswith(("SIGRTMIN+", "SIGRTMAX-")):
            base, offset = text[:8], int(text[9:])
            number = signal.SIGRTMIN + offset if base == "SIGRTMIN" else signal.SIGRTMAX - offset
        else:
            number = signal.Signals[text]
    except (KeyError, ValueError):
        raise InvalidArgument(f"invalid signal: {name}") from None
    if not 1 <= number <= signal.SIGRTMAX:
        raise InvalidArgument(f"invalid signal: {name}")
    return int(number)


def signal_name(number: int) -> str:
    """``SIGTERM`` for 15; real-time signals, which have no name, as their number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


@dataclass
class Container:
    """A container's lifecycle; ``transition`` refuses moves its state does not allow."""

    id: str
    name: str
    spec: ContainerSpec
    state: ContainerState = ContainerState.CREATED
    exit_code: int = 0
    error: str = ""
    """Why the run failed, when it was not the command's own doing (the VM died, ...)."""
    log_error: str = ""
    """Why some of the output is missing from the log (a full disk, ...); the run itself went on."""
    created: float = field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    vm_pid: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    ports: list[dict[str, Any]] = field(default_factory=list)
    """The ports published for this run, as docker lists them (IP, PrivatePort, PublicPort, Type)."""
    networks: dict[str, Any] = field(default_factory=dict)
    """The addresses of this run by network name, as docker's NetworkSettings.Networks."""
    restart_count: int = 0
    """Restarts by the restart policy since the user last started the container."""
    stopped_by_user: bool = False
    """Stopped or killed by the user: the restart policy leaves it be (until the daemon starts again)."""
    stopped_by_daemon: bool = False
    """It was running when hyperd went (a shutdown or a crash)."""
    restarting: bool = False
    """Exited, with a restart by its policy pending."""
    paused: bool = False
    """Running, with its whole VM frozen (``pause``)."""
    oom_killed: bool = False
    """The last run's end: the guest kernel killed in its cgroup for memory."""
    restart_delay: float = 0.0

    def transition(self, target: ContainerState, action: str) -> None:
        if not self.state.allows(target):
            raise StateError(f"cannot {action} container {self.name}: it is {self.state}")
        self.state = target


class Database:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS containers (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, "
            "record TEXT NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS pods (id TEXT PRIMARY KEY, record TEXT NOT NULL)")

    def save(self, container: Container) -> None:
        record = asdict(container)
        record["state"] = str(container.state)
        try:
            self._db.execute(
                "INSERT INTO containers (id, name, record) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name, record = excluded.record",
                (container.id, container.name, json.dumps(record)),
            )
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as err:
            raise StorageError(f"cannot record container {container.name}: {err}") from err

    def delete(self, container_id: str) -> None:
        try:
            self._db.execute("DELETE FROM containers WHERE id = ?", (container_id,))
        except sqlite3.Error as err:
            raise StorageError(f"cannot forget container {container_id[:12]}: {err}") from err

    def load(self) -> list[Container]:
        rows = self._db.execute("SELECT record FROM containers").fetchall()
        return [_from_record(json.loads(row[0])) for row in rows]

    def save_pod(self, pod_id: str, record: dict[str, Any]) -> None:
        try:
            self._db.execute("INSERT INTO pods (id, record) VALUES (?, ?) "
                             "ON CONFLICT(id) DO UPDATE SET record = excluded.record", (pod_id, json.dumps(record)))
        except sqlite3.Error as err:
            raise StorageError(f"cannot record pod {record.get('name', pod_id)}: {err}") from err

    def delete_pod(self, pod_id: str) -> None:
        try:
            self._db.execute("DELETE FROM pods WHERE id = ?", (pod_id,))
        except sqlite3.Error as err:
            raise StorageError(f"cannot forget pod {pod_id[:12]}: {err}") from err

    def load_pods(self) -> list[dict[str, Any]]:
        return [json.loads(row[0]) for row in self._db.execute("SELECT record FROM pods").fetchall()]

    def close(self) -> None:
        self._db.close()


def _from_record(record: dict[str, Any]) -> Container:
    spec = record.pop("spec")
    for key in ("args", "env", "cmd", "entrypoint", "exposed_ports", "dns", "dns_search", "dns_options",
                "extra_hosts"):
        spec[key] = tuple(spec.get(key, ()))
    spec["endpoints"] = tuple(Endpoint(**{**e, "aliases": tuple(e["aliases"])}) for e in spec.get("endpoints", ()))
    spec["ports"] = tuple(PortBinding(**p) for p in spec.get("ports", ()))
    spec["ulimits"] = tuple(tuple(u) for u in spec.get("ulimits", ()))
    spec["resources"] = Resources(**spec.get("resources", {}))
    spec["devices"] = tuple(Device(**d) for d in spec.get("devices", ()))
    spec["mounts"] = tuple(Mount(**m) for m in spec.get("mounts", ()))
    spec["files"] = tuple(tuple(f) for f in spec.get("files", ()))
    spec["log"] = LogConfig(**spec.get("log", {}))
    security = spec.get("security", {})
    spec["security"] = Security(**{**security, "cap_add": tuple(security.get("cap_add", ())),
                                   "cap_drop": tuple(security.get("cap_drop", ()))})
    restart = spec.get("restart") or {}
    spec["restart"] = RestartPolicy(Policy(restart.get("policy", "no")), int(restart.get("max_retries", 0)))
    record["state"] = ContainerState(record["state"])
    return Container(spec=ContainerSpec(**spec), **record)
