"""The ``hyper`` client against a canned hyperd on a unix socket.

The fake daemon speaks real HTTP over a real socket and records every request, so these
tests see what a user sees (output, exit status) and what the daemon would receive.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from click.testing import CliRunner, Result

from cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
CID = "4f9a" * 16
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    frames: Iterable[tuple[int, bytes]] | None = None
    """A stdcopy stream sent chunked, frame by frame, as the iterable yields them."""
    raw: bytes | None = None


Route = Reply | Callable[[Request], Reply]


@dataclass
class FakeHyperd:
    """Canned answers by (method, path); unknown routes get hyperd's 404."""

    socket: Path
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Tracebacks of the fake's own failures; a test's teardown fails if there are any."""

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def on(self, method: str, path: str, route: Route) -> None:
        self.routes[method, path] = route

    def seen(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def answer(self, request: Request) -> Reply:
        self.requests.append(request)
        route = self.routes.get((request.method, request.path))
        if route is None:
            return Reply(404, {"message": f"page not found: {request.path}"})
        return route(request) if callable(route) else route


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        url = urlsplit(self.path)
        request = Request(self.command, url.path, dict(parse_qsl(url.query)), self._body(), dict(self.headers))
        reply = self.server.fake.answer(request)
        self.send_response(reply.status)
        self.send_header("Connection", "close")
        if reply.frames is not None:
            self.send_header("Content-Type", MULTIPLEXED)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for stream, data in reply.frames:
                chunk = frame(stream, data)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        payload = reply.raw if reply.raw is not None else b"" if reply.body is None else json.dumps(reply.body).encode()
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _handle


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeHyperd

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away before its answer (a pending wait when run fails to start)
        # is the client's business, not a failure of the fake.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return
        # Not to sys.stderr, which may be CliRunner's capture of the client's stderr.
        self.fake.errors.append(traceback.format_exc())


@pytest.fixture
def hyperd() -> Iterator[FakeHyperd]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="hyper-") as tmp:
        fake = FakeHyperd(Path(tmp) / "hyperd.sock")
        server = Server(str(fake.socket), Handler)
        server.fake = fake
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()
        try:
            yield fake
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
        assert not fake.errors, "\n".join(fake.errors)


def hyper(fake: FakeHyperd | str, *args: str, input: bytes | None = None) -> Result:
    host = fake if isinstance(fake, str) else fake.host
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, ["-H", host, *args], input=input, catch_exceptions=False)


def created(fake: FakeHyperd) -> None:
    fake.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    fake.on("POST", f"/containers/{CID}/start", Reply(204))


# run


def test_run_detached_prints_the_id(hyperd: FakeHyperd) -> None:
    created(hyperd)
    result = hyper(hyperd, "run", "-d", "--name", "web", "busybox", "sleep", "10")
    assert result.exit_code == 0
    assert result.stdout == f"{CID}\n"
    [create] = hyperd.seen("POST", "/containers/create")
    assert create.query == {"name": "web"}
    assert create.json == {
        "Image": "busybox",
        "Cmd": ["sleep", "10"],
        "Entrypoint": None,
        "Env": [],
        "WorkingDir": "",
        "User": "",
        "AutoRemove": False,
        "StorageOpt": {},
        "Hostname": "",
        "NetworkMode": "",
        "PortBindings": {},
        "PublishAllPorts": False,
        "ExposedPorts": {},
        "Dns": [],
        "DnsSearch": [],
        "DnsOptions": [],
        "ExtraHosts": [],
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "Labels": {},
        "StopSignal": "",
        "StopTimeout": None,
        "Init": False,
        "Ulimits": [],
        "Sysctls": {},
        "Memory": 0,
        "MemorySwap": 0,
        "NanoCpus": 0,
        "CpuShares": 0,
        "CpusetCpus": "",
        "PidsLimit": 0,
        "CapAdd": [],
        "CapDrop": [],
        "Privileged": False,
        "SecurityOpt": [],
        "ReadonlyRootfs": False,
        "Tmpfs": {},
        "Devices": [],
        "Binds": [],
        "Pod": "",
        "LogConfig": {"Type": "", "Config": {}},
    }
    assert len(hyperd.seen("POST", f"/containers/{CID}/start")) == 1


def test_run_process_flags(hyperd: FakeHyperd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# settings\nA=1\n\n  B=two words\nFROM_US\nUNSET_HERE\nC=\n")
    monkeypatch.setenv("FROM_US", "ours")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    created(hyperd)
    result = hyper(hyperd, "run", "-d", "--env-file", str(env_file), "-e", "A=override", "-l", "team=db", "-l", "flag",
                   "--stop-signal", "SIGINT", "--stop-timeout", "3", "--init", "--ulimit", "nofile=100:200",
                   "--ulimit", "core=0", "--sysctl", "net.ipv4.ip_forward=1", "--restart", "on-failure:4",
                   "busybox", "true")
    assert result.exit_code == 0, result.stderr
    body = hyperd.seen("POST", "/containers/create")[0].json
    assert body["Env"] == ["A=1", "B=two words", "FROM_US=ours", "C=", "A=override"]
    assert body["Labels"] == {"team": "db", "flag": ""}
    assert (body["StopSignal"], body["StopTimeout"], body["Init"]) == ("SIGINT", 3, True)
    assert body["Ulimits"] == [{"Name": "nofile", "Soft": 100, "Hard": 200}, {"Name": "core", "Soft": 0, "Hard": 0}]
    assert body["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert body["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 4}


@pytest.mark.parametrize(("flags", "message"), [
    (["--env-file", "/nonexistent/env"], "hyper: open /nonexistent/env: no such file or directory\n"),
    (["--ulimit", "nofile=lots"], "hyper: invalid ulimit 'nofile=lots': use NAME=SOFT[:HARD]\n"),
    (["--restart", "on-failure:x"], "hyper: invalid restart policy 'on-failure:x': the maximum retry count must be "
                                     "a number\n"),
    (["--detach-keys", "ctrl-1"], "hyper: invalid detach key 'ctrl-1'\n"),
])
def test_run_bad_process_flags(hyperd: FakeHyperd, flags: list[str], message: str) -> None:
    result = hyper(hyperd, "run", "-d", *flags, "busybox", "true")
    assert (result.exit_code, result.stderr) == (125, message)
    assert not hyperd.seen("POST", "/containers/create")


def test_run_network_flags_become_dockers_fields(hyperd: FakeHyperd) -> None:
    created(hyperd)
    result = hyper(hyperd, "run", "-d", "-p", "8080:80", "-p", "127.0.0.1::53/udp", "-p", "9000-9001:90-91", "-P",
                   "--expose", "7000", "--network", "front", "--network-alias", "db", "--ip", "10.29.0.9",
                   "-h", "box", "--dns", "192.0.2.53", "--add-host", "a:192.0.2.1", "busybox", "true")
    assert result.exit_code == 0, result.stderr
    body = hyperd.seen("POST", "/containers/create")[0].json
    assert body["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                                    "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
                                    "90/tcp": [{"HostIp": "", "HostPort": "9000"}],
                                    "91/tcp": [{"HostIp": "", "HostPort": "9001"}]}
    assert (body["PublishAllPorts"], body["ExposedPorts"]) == (True, {"7000/tcp": {}})
    assert body["NetworkMode"] == "front"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"front": {"Aliases": ["db"],
                                                                      "IPAMConfig": {"IPv4Address": "10.29.0.9"}}}}
    assert (body["Hostname"], body["Dns"], body["ExtraHosts"]) == ("box", ["192.0.2.53"], ["a:192.0.2.1"])


def test_run_bad_port_is_refused_before_anything_is_made(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "run", "-d", "-p", "80:70000", "busybox", "true")
    assert result.exit_code == 125
    assert result.stderr == "hyper: invalid port '70000' in '80:70000': ports are 1-65535\n"
    assert not hyperd.seen("POST", "/containers/create")


def test_run_arguments_after_the_image_are_the_command(hyperd: FakeHyperd) -> None:
    created(hyperd)
    result = hyper(hyperd, "run", "-d", "--rm", "-w", "/tmp", "-u", "1000:1000", "busybox", "ls", "-l", "--rm")
    assert result.exit_code == 0
    body = hyperd.seen("POST", "/containers/create")[0].json
    assert body["Cmd"] == ["ls", "-l", "--rm"]
    assert (body["WorkingDir"], body["User"], body["AutoRemove"]) == ("/tmp", "1000:1000", True)


@pytest.mark.parametrize(
    ("args", "entrypoint", "cmd"),
    [
        (["--entrypoint", "/bin/sh", "busybox"], ["/bin/sh"], None),
        (["--entrypoint", "/bin/sh", "busybox", "-c", "true"], ["/bin/sh"], ["-c", "true"]),
        (["--entrypoint", "", "busybox"], [], None),
    ],
)
def test_run_entrypoint(hyperd: FakeHyperd, args: list[str], entrypoint: list[str], cmd: list[str] | None) -> None:
    created(hyperd)
    assert hyper(hyperd, "run", "-d", *args).exit_code == 0
    body = hyperd.seen("POST", "/containers/create")[0].json
    assert (body["Entrypoint"], body["Cmd"]) == (entrypoint, cmd)


def test_run_env_takes_bare_names_from_our_environment(hyperd: FakeHyperd, monkeypatch: pytest.MonkeyPatch) -> None:
    created(hyperd)
    monkeypatch.setenv("HYPER_TEST_VAR", "from here")
    result = hyper(hyperd, "run", "-d", "-e", "A=1", "-e", "HYPER_TEST_VAR", "--env", "B=x=y", "busybox")
    assert result.exit_code == 0
    assert hyperd.seen("POST", "/containers/create")[0].json["Env"] == ["A=1", "HYPER_TEST_VAR=from here", "B=x=y"]


def test_run_env_unset_name_is_an_error(hyperd: FakeHyperd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYPER_TEST_UNSET", raising=False)
    result = hyper(hyperd, "run", "-e", "HYPER_TEST_UNSET", "busybox")
    assert result.exit_code == 125
    assert result.stderr == "hyper: invalid -e HYPER_TEST_UNSET: HYPER_TEST_UNSET is not set in the environment\n"
    assert hyperd.requests == []


def test_run_env_empty_name_is_an_error(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "run", "-e", "=x", "busybox")
    assert result.exit_code == 125
    assert result.stderr.startswith("hyper: invalid -e =x")
    assert hyperd.requests == []


def test_run_attached_copies_output_live_and_exits_with_the_status(hyperd: FakeHyperd) -> None:
    started = threading.Event()
    exited = threading.Event()

    def start(request: Request) -> Reply:
        started.set()
        return Reply(204)

    def output() -> Iterator[tuple[int, bytes]]:
        # Like hyperd: nothing to send until the container runs.
        assert started.wait(5)
        yield 1, b"out 1\n"
        yield 2, b"err 1\n"
        yield 1, b"out 2\n"
        yield 1, b""
        yield 2, b"x" * 200_000
        exited.set()

    def wait(request: Request) -> Reply:
        assert exited.wait(5)
        return Reply(200, {"StatusCode": 3, "Error": None})

    hyperd.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    hyperd.on("POST", f"/containers/{CID}/attach", lambda request: Reply(frames=output()))
    hyperd.on("POST", f"/containers/{CID}/start", start)
    hyperd.on("POST", f"/containers/{CID}/wait", wait)

    result = hyper(hyperd, "run", "busybox", "sh", "-c", "echo hi")
    assert result.exit_code == 3
    assert result.stdout == "out 1\nout 2\n"
    assert result.stderr == "err 1\n" + "x" * 200_000
    order = [r.path.rsplit("/", 1)[-1] for r in hyperd.requests]
    assert order.index("attach") < order.index("start")
    assert hyperd.seen("POST", f"/containers/{CID}/attach")[0].query == {"stream": "1", "stdout": "1", "stderr": "1"}


def test_run_start_failure_exits_with_the_daemon_exit_code(hyperd: FakeHyperd) -> None:
    message = 'exec: "nosuch": executable file not found in $PATH'
    hyperd.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    hyperd.on("POST", f"/containers/{CID}/attach", Reply(frames=[]))
    hyperd.on("POST", f"/containers/{CID}/start", Reply(400, {"message": message, "ExitCode": 127}))
    hyperd.on("POST", f"/containers/{CID}/wait", Reply(200, {"StatusCode": 127}))
    result = hyper(hyperd, "run", "--rm", "busybox", "nosuch")
    assert result.exit_code == 127
    assert result.stdout == ""
    assert result.stderr == f"hyper: {message}\n"


def test_run_missing_image_is_one_line_and_125(hyperd: FakeHyperd) -> None:
    # --pull never: no pull (test_cli_images.py covers the default, which pulls).
    hyperd.on("POST", "/containers/create", Reply(404, {"message": "No such image: nosuch:latest"}))
    result = hyper(hyperd, "run", "--pull", "never", "nosuch")
    assert (result.exit_code, result.stderr) == (125, "hyper: No such image: nosuch:latest\n")
    assert [r.path for r in hyperd.requests] == ["/containers/create"]


def test_run_wait_error_is_reported(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": ["low memory"]}))
    hyperd.on("POST", f"/containers/{CID}/attach", Reply(frames=[]))
    hyperd.on("POST", f"/containers/{CID}/start", Reply(204))
    hyperd.on("POST", f"/containers/{CID}/wait", Reply(200, {"StatusCode": 137, "Error": {"Message": "VM crashed"}}))
    result = hyper(hyperd, "run", "busybox")
    assert result.exit_code == 125
    assert result.stderr == "WARNING: low memory\nhyper: VM crashed\n"


# Ctrl-C needs a real process to signal.


def _interrupted_run(hyperd: FakeHyperd, stop_blocks: bool) -> tuple[subprocess.Popen[bytes], threading.Event]:
    finished = threading.Event()

    def output() -> Iterator[tuple[int, bytes]]:
        yield 1, b"ready\n"
        assert finished.wait(10)

    def stop(request: Request) -> Reply:
        if stop_blocks:
            assert finished.wait(10)
        finished.set()
        return Reply(204)

    def kill(request: Request) -> Reply:
        finished.set()
        return Reply(204)

    def wait(request: Request) -> Reply:
        assert finished.wait(10)
        return Reply(200, {"StatusCode": 137 if stop_blocks else 143, "Error": None})

    created(hyperd)
    hyperd.on("POST", f"/containers/{CID}/attach", lambda request: Reply(frames=output()))
    hyperd.on("POST", f"/containers/{CID}/stop", stop)
    hyperd.on("POST", f"/containers/{CID}/kill", kill)
    hyperd.on("POST", f"/containers/{CID}/wait", wait)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "-H", hyperd.host, "run", "busybox", "sleep", "1000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    return process, finished


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_run_ctrl_c_stops_the_container(hyperd: FakeHyperd) -> None:
    process, _ = _interrupted_run(hyperd, stop_blocks=False)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 143
    assert stderr == b""
    assert len(hyperd.seen("POST", f"/containers/{CID}/stop")) == 1
    assert hyperd.seen("POST", f"/containers/{CID}/kill") == []


def test_run_second_ctrl_c_kills_the_container(hyperd: FakeHyperd) -> None:
    process, _ = _interrupted_run(hyperd, stop_blocks=True)
    process.send_signal(signal.SIGINT)
    _until(lambda: bool(hyperd.seen("POST", f"/containers/{CID}/stop")))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 137
    assert stderr == b""
    [kill] = hyperd.seen("POST", f"/containers/{CID}/kill")
    assert kill.query == {"signal": "SIGKILL"}


# errors common to every command


def test_unreachable_daemon_is_one_line_with_a_hint(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/missing.sock"
    result = hyper(host, "ps")
    assert result.exit_code == 125
    assert result.stderr == (
        f"hyper: cannot connect to hyperd at {host} (no such file or directory): is it running? "
        "Start it with 'hyper daemon' (or 'hyperd')\n"
    )


def test_daemon_not_listening_is_refused() -> None:
    with tempfile.TemporaryDirectory(prefix="hyper-") as tmp, socket.socket(socket.AF_UNIX) as sock:
        sock.bind(f"{tmp}/dead.sock")  # bound, never listening: a daemon that died
        result = hyper(f"unix://{tmp}/dead.sock", "images")
    assert result.exit_code == 125
    assert "(connection refused): is it running?" in result.stderr


def test_default_host_comes_from_the_environment(hyperd: FakeHyperd, monkeypatch: pytest.MonkeyPatch) -> None:
    hyperd.on("GET", "/containers/json", Reply(200, []))
    monkeypatch.setenv("HYPER_HOST", hyperd.host)
    result = CliRunner().invoke(cli, ["ps", "-q"])
    assert (result.exit_code, result.stdout) == (0, "")
    assert len(hyperd.requests) == 1


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:2375", "unix://", "/run/hyper/hyperd.sock"])
def test_only_unix_hosts(host: str) -> None:
    result = hyper(host, "ps")
    assert result.exit_code == 125
    assert result.stderr.startswith("hyper: ")
    assert "unix://" in result.stderr


def test_unknown_flag_is_a_usage_error_125(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "run", "--bogus", "busybox")
    assert result.exit_code == 125
    assert result.stderr == "hyper: unknown flag: --bogus\nSee 'hyper run --help'.\n"
    assert hyperd.requests == []


def test_unknown_command_and_missing_argument_are_125(hyperd: FakeHyperd) -> None:
    assert hyper(hyperd, "frobnicate").exit_code == 125
    result = hyper(hyperd, "run")
    assert result.exit_code == 125
    assert result.stderr.endswith("See 'hyper run --help'.\n")


def test_no_arguments_prints_help() -> None:
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0
    assert "Commands:" in result.stdout


def test_daemon_error_without_json_body(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(500, raw=b"boom\n"))
    result = hyper(hyperd, "images")
    assert (result.exit_code, result.stderr) == (125, "hyper: boom\n")


def test_debug_shows_the_traceback(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(500, {"message": "store is corrupt"}))
    quiet = hyper(hyperd, "images")
    loud = hyper(hyperd, "--debug", "images")
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr
    assert loud.stderr.endswith("hyper: store is corrupt\n")


# ps


def test_ps_table(hyperd: FakeHyperd) -> None:
    now = int(time.time())
    hyperd.on(
        "GET",
        "/containers/json",
        Reply(
            200,
            [
                {
                    "Id": CID,
                    "Names": ["/web"],
                    "Image": "busybox",
                    "Command": "sh -c 'while true; do date; sleep 1; done'",
                    "Created": now - 5,
                    "State": "running",
                    "Status": "Up 5 seconds",
                    "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                              {"IP": "::1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}],
                },
                {
                    "Id": "0123456789abcdef" * 4,
                    "Names": ["/db"],
                    "Image": "alpine:3.19",
                    "Command": "top",
                    "Created": now - 7200,
                    "State": "exited",
                    "Status": "Exited (0) 1 hour ago",
                },
            ],
        ),
    )
    result = hyper(hyperd, "ps", "-a")
    assert result.exit_code == 0
    assert hyperd.requests[0].query == {"all": "1"}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert lines[1].startswith(CID[:12] + "   busybox       ")
    assert '"sh -c \'while true; …"' in lines[1]
    assert "5 seconds ago" in lines[1]
    assert lines[1].endswith("Up 5 seconds            0.0.0.0:8080->80/tcp, [::1]:5353->53/udp   web")
    assert '"top"' in lines[2]
    assert "2 hours ago" in lines[2]
    # Columns line up.
    assert lines[0].index("STATUS") == lines[1].index("Up 5") == lines[2].index("Exited")


def test_ps_quiet(hyperd: FakeHyperd) -> None:
    listing = [{"Id": CID, "Names": ["/web"], "Image": "busybox", "Command": "", "Created": 0, "Status": "Up"}]
    hyperd.on("GET", "/containers/json", Reply(200, listing))
    result = hyper(hyperd, "ps", "-q")
    assert result.stdout == CID[:12] + "\n"
    assert hyperd.requests[0].query == {"all": "0"}
    assert hyper(hyperd, "ps", "-q", "--no-trunc").stdout == CID + "\n"


# other container commands


def test_rm_sends_force_and_prints_names(hyperd: FakeHyperd) -> None:
    hyperd.on("DELETE", "/containers/web", Reply(204))
    hyperd.on("DELETE", "/containers/db", Reply(204))
    result = hyper(hyperd, "rm", "-f", "web", "db")
    assert (result.exit_code, result.stdout) == (0, "web\ndb\n")
    assert [r.query for r in hyperd.requests] == [{"force": "1", "v": "0"}, {"force": "1", "v": "0"}]
    hyper(hyperd, "rm", "-v", "web")
    assert hyperd.requests[-1].query == {"force": "0", "v": "1"}


def test_rm_carries_on_after_a_failure(hyperd: FakeHyperd) -> None:
    hyperd.on("DELETE", "/containers/web", Reply(409, {"message": "cannot remove running container web"}))
    hyperd.on("DELETE", "/containers/db", Reply(204))
    result = hyper(hyperd, "rm", "web", "db")
    assert result.exit_code == 125
    assert result.stdout == "db\n"
    assert result.stderr == "hyper: cannot remove running container web\n"


def test_stop_and_kill(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/web/stop", Reply(304))  # already stopped is fine
    hyperd.on("POST", "/containers/web/kill", Reply(204))
    result = hyper(hyperd, "stop", "-t", "3", "web")
    assert (result.exit_code, result.stdout) == (0, "web\n")
    assert hyperd.requests[-1].query == {"t": "3"}
    result = hyper(hyperd, "kill", "-s", "HUP", "web")
    assert (result.exit_code, result.stdout) == (0, "web\n")
    assert hyperd.requests[-1].query == {"signal": "HUP"}
    result = hyper(hyperd, "stop", "nosuch")
    assert (result.exit_code, result.stderr) == (125, "hyper: page not found: /containers/nosuch/stop\n")


def test_wait_prints_status_codes(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/a/wait", Reply(200, {"StatusCode": 0, "Error": None}))
    hyperd.on("POST", "/containers/b/wait", Reply(200, {"StatusCode": 42, "Error": None}))
    result = hyper(hyperd, "wait", "a", "b")
    assert (result.exit_code, result.stdout) == (0, "0\n42\n")


def test_inspect_prints_a_json_list(hyperd: FakeHyperd) -> None:
    details = {"Id": CID, "State": {"Status": "running", "Running": True}}
    hyperd.on("GET", "/containers/web/json", Reply(200, details))
    result = hyper(hyperd, "inspect", "web")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [details]
    assert result.stdout.startswith('[\n    {\n        "Id"')


def test_logs_demuxes_and_passes_options(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/containers/web/logs", Reply(frames=[(1, b"one\n"), (2, b"two\n")]))
    result = hyper(hyperd, "logs", "-f", "-t", "--tail", "5", "web")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "one\n", "two\n")
    assert hyperd.requests[0].query == {
        "stdout": "1",
        "stderr": "1",
        "follow": "1",
        "timestamps": "1",
        "tail": "5",
    }


def test_logs_broken_stream_is_an_error(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/containers/web/logs", Reply(frames=[(7, b"?")]))
    result = hyper(hyperd, "logs", "web")
    assert result.exit_code == 125
    assert result.stderr == "hyper: output stream has a frame for unknown stream 7\n"


# images


def test_images_table(hyperd: FakeHyperd) -> None:
    digest = "sha256:" + "ab12" * 16
    listing = [
        {"Id": digest, "RepoTags": ["busybox:latest", "localhost:5000/bb:1"], "Created": 0, "Size": 4_261_550},
        {"Id": "sha256:" + "cd" * 32, "RepoTags": [], "Created": 0, "Size": 512},
    ]
    hyperd.on("GET", "/images/json", Reply(200, listing))
    lines = hyper(hyperd, "images").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:3] == ["busybox", "latest", "ab12ab12ab12"]
    assert lines[1].endswith("4.26MB")
    assert lines[2].split()[:3] == ["localhost:5000/bb", "1", "ab12ab12ab12"]
    assert lines[3].split()[:3] == ["<none>", "<none>", "cdcdcdcdcdcd"]
    assert lines[3].endswith("512B")
    assert hyper(hyperd, "images", "-q").stdout == "ab12ab12ab12\ncdcdcdcdcdcd\n"


def test_import_file(hyperd: FakeHyperd, tmp_path: Path) -> None:
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(os.urandom(300_000))
    hyperd.on("POST", "/images/import", Reply(200, {"Id": "sha256:" + "ef" * 32}))
    result = hyper(hyperd, "import", str(tar), "localhost:5000/mine:v1")
    assert (result.exit_code, result.stdout) == (0, "sha256:" + "ef" * 32 + "\n")
    [request] = hyperd.requests
    assert request.query == {"repo": "localhost:5000/mine", "tag": "v1"}
    assert request.body == tar.read_bytes()


def test_import_stdin_is_chunked(hyperd: FakeHyperd) -> None:
    data = os.urandom(100_000)
    hyperd.on("POST", "/images/import", Reply(200, {"Id": "sha256:" + "ef" * 32}))
    result = hyper(hyperd, "import", "-", "mine", input=data)
    assert result.exit_code == 0
    [request] = hyperd.requests
    assert request.query == {"repo": "mine"}
    assert request.headers["Transfer-Encoding"] == "chunked"
    assert request.body == data


def test_import_missing_file(hyperd: FakeHyperd, tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar"
    result = hyper(hyperd, "import", str(missing))
    assert result.exit_code == 125
    assert result.stderr == f"hyper: open {missing}: no such file or directory\n"
    assert hyperd.requests == []


# system


def test_info_prints_every_key(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/info", Reply(200, {"Containers": 2, "Running": 1, "Hypervisor": {"Name": "qemu"}, "KVM": True}))
    result = hyper(hyperd, "info")
    assert result.stdout == "Containers: 2\nRunning: 1\nHypervisor:\n Name: qemu\nKVM: true\n"


def test_version(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/version", Reply(200, {"Version": "0.1.0", "ApiVersion": "1.0"}))
    result = hyper(hyperd, "version")
    assert result.exit_code == 0
    client, server = result.stdout.split("\n\n")
    assert client.startswith("Client:\n Version:")
    assert "Python:" in client
    assert server.splitlines() == ["Server:", " Version:    0.1.0", " ApiVersion: 1.0"]


def test_version_without_daemon_still_shows_the_client(tmp_path: Path) -> None:
    result = hyper(f"unix://{tmp_path}/missing.sock", "version")
    assert result.exit_code == 125
    assert result.stdout.startswith("Client:\n Version:")
    assert "Server:" not in result.stdout
    assert result.stderr.startswith("hyper: cannot connect to hyperd")


def test_run_storage_opt_is_sent_as_a_mapping(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    hyperd.on("POST", f"/containers/{CID}/start", Reply(204))
    result = hyper(hyperd, "run", "-d", "--storage-opt", "size=2G", "busybox", "true")
    assert result.exit_code == 0, result.stderr
    assert hyperd.seen("POST", "/containers/create")[0].json["StorageOpt"] == {"size": "2G"}
    bad = hyper(hyperd, "run", "-d", "--storage-opt", "size", "busybox", "true")
    assert (bad.exit_code, bad.stderr) == (125, "hyper: invalid --storage-opt 'size': expected KEY=VALUE\n")


def test_start_prints_each_name_and_carries_on_after_a_failure(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/one/start", Reply(204))
    hyperd.on("POST", "/containers/two/start", Reply(404, {"message": "No such container: two"}))
    result = hyper(hyperd, "start", "two", "one")
    assert (result.exit_code, result.stdout, result.stderr) == (125, "one\n", "hyper: No such container: two\n")


def test_export_writes_the_archive_to_a_file(hyperd: FakeHyperd, tmp_path: Path) -> None:
    hyperd.on("GET", f"/containers/{CID}/export", Reply(200, raw=b"tar bytes"))
    target = tmp_path / "rootfs.tar"
    result = hyper(hyperd, "export", "-o", str(target), CID)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert target.read_bytes() == b"tar bytes"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rootfs.tar"]


def test_export_refusal_leaves_no_file(hyperd: FakeHyperd, tmp_path: Path) -> None:
    hyperd.on("GET", f"/containers/{CID}/export",
              Reply(409, {"message": "cannot export container web: it is not running"}))
    result = hyper(hyperd, "export", "-o", str(tmp_path / "rootfs.tar"), CID)
    assert (result.exit_code, result.stderr) == (125, "hyper: cannot export container web: it is not running\n")
    assert list(tmp_path.iterdir()) == []


PS_LISTING = [
    {"Id": CID, "Names": ["/web"], "Image": "busybox", "Command": "sleep 9", "Created": 2, "State": "running",
     "Status": "Up"},
    {"Id": "0123456789abcdef" * 4, "Names": ["/db"], "Image": "alpine", "Command": "top", "Created": 1,
     "State": "exited", "Status": "Exited (0)"},
]


@pytest.mark.parametrize(("args", "shown"), [
    (["-a", "--format", "{{.Names}} {{.State}}"], ["web running", "db exited"]),
    (["-n", "1", "--format", "{{.Names}}"], ["web"]),
    (["-l", "--format", "{{.Names}}"], ["web"]),
    (["--filter", "status=exited", "--format", "{{.Names}}"], ["db"]),
    (["--filter", "name=w", "--filter", "ancestor=busybox", "-q"], [CID[:12]]),
    (["-a", "--filter", "id=0123", "--format", "{{.ID}}"], ["0123456789ab"]),
    (["-a", "--format", "table {{.ID}}\t{{.Names}}"],
     ["CONTAINER ID   NAMES", f"{CID[:12]}   web", "0123456789ab   db"]),
])
def test_ps_format_last_latest_and_filters(hyperd: FakeHyperd, args: list[str], shown: list[str]) -> None:
    hyperd.on("GET", "/containers/json", Reply(200, PS_LISTING))
    result = hyper(hyperd, "ps", *args)
    assert (result.exit_code, result.stdout.splitlines()) == (0, shown), result.stderr
    # -n, -l and filters look at stopped containers too, as docker's do.
    assert hyperd.requests[-1].query == {"all": "1"}


def test_ps_unknown_filter_is_one_line(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "ps", "--filter", "volume=x")
    assert (result.exit_code, result.stderr) == (
        125, "hyper: invalid filter 'volume': use id, name, status, ancestor, label\n")


def test_restart_stops_then_starts(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/web/stop", Reply(204))
    hyperd.on("POST", "/containers/web/start", Reply(204))
    result = hyper(hyperd, "restart", "-t", "3", "web")
    assert (result.exit_code, result.stdout) == (0, "web\n"), result.stderr
    assert [(r.method, r.path, r.query) for r in hyperd.requests] == [
        ("POST", "/containers/web/stop", {"t": "3"}), ("POST", "/containers/web/start", {})]


def test_create_prints_the_id_and_starts_nothing(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    result = hyper(hyperd, "create", "--name", "web", "-e", "A=b", "busybox", "sleep", "9")
    assert (result.exit_code, result.stdout) == (0, f"{CID}\n"), result.stderr
    [create] = hyperd.seen("POST", "/containers/create")
    assert create.query == {"name": "web"} and create.json["Cmd"] == ["sleep", "9"] and create.json["Env"] == ["A=b"]
    assert [r.path for r in hyperd.requests] == ["/containers/create"]


def test_rename_and_container_prune(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/old/rename", Reply(204))
    hyperd.on("POST", "/containers/prune", Reply(200, {"ContainersDeleted": [CID], "SpaceReclaimed": 2048}))
    renamed = hyper(hyperd, "rename", "old", "new")
    assert (renamed.exit_code, renamed.stdout) == (0, ""), renamed.stderr
    assert hyperd.seen("POST", "/containers/old/rename")[0].query == {"name": "new"}
    pruned = hyper(hyperd, "container", "prune", "-f")
    assert (pruned.exit_code, pruned.stdout) == (0, f"Deleted Containers:\n{CID}\n\nTotal reclaimed space: 2.05kB\n")
