"""A small synchronous client for hyperd's REST API over its unix socket.

The standard library's ``http.client`` is enough for a handful of requests per command and
costs a fraction of an HTTP library's import time, which ``hyper run`` pays on every call.
Every request gets its own connection: connecting to a unix socket is cheap, and it lets
``hyper run`` hold the attach stream open while it starts and stops the container.

HTTP status codes become exceptions here and nowhere else (see ``cli.errors``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
from collections.abc import Callable, Iterator
from typing import IO, Any, Self
from urllib.parse import quote, urlencode

from cli.errors import APIError, DaemonUnreachable, HyperError

BLOCK = 64 << 10
"""Read and upload block size; http.client's 8 KiB default makes image imports chatty."""

Query = dict[str, str] | list[tuple[str, str]]
"""Query parameters; a list of pairs repeats a name (``names=a&names=b``)."""

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
"""Content type of an attach or logs stream in stdcopy framing (no TTY)."""


def socket_path(host: str) -> str:
    """The socket path of a ``unix:///path`` host, or ValueError for anything else."""
    scheme, sep, path = host.partition("://")
    if not sep or scheme != "unix":
        raise ValueError(f"only unix:// hosts are supported, not {host!r}")
    if not path:
        raise ValueError(f"no socket path in {host!r}")
    return path


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to a unix socket; blocking, no timeout (waits and streams may be long)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=None, blocksize=BLOCK)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Held:
    """A request whose connection stays open until it is closed (or its ``with`` ends)."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self._conn = conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream(_Held):
    """A streamed response body (attach, logs); closes its connection when done."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        super().__init__(conn)
        self._response = response

    @property
    def multiplexed(self) -> bool:
        """Whether the body is in stdcopy framing rather than a raw TTY stream."""
        return (self._response.getheader("Content-Type") or "").startswith(MULTIPLEXED)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, fewer only at the end of the body."""
        try:
            return self._response.read(size)
        except (http.client.HTTPException, OSError) as err:
            raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err

    def lines(self) -> Iterator[bytes]:
        """The body line by line (a JSON progress stream)."""
        while True:
            try:
                line = self._response.readline()
            except (http.client.HTTPException, OSError) as err:
                raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err
            if not line:
                return
            yield line

    def read1(self, size: int) -> bytes:
        """Whatever is available, up to ``size`` bytes, blocking only when nothing is."""
        try:
            return self._response.read1(size)
        except (http.client.HTTPException, OSError) as err:
            raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err


class Duplex(Stream):
    """A streamed answer while the request's body, the process's stdin, is still being sent
    (HTTP/1.1 chunked, both directions at once on one connection)."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        super().__init__(conn, response)
        assert conn.sock is not None
        self._sock: socket.socket = conn.sock
        self._ended = False

    def send(self, data: bytes) -> None:
        if data and not self._ended:
            try:
                self._sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))
            except OSError as err:
                raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err

    def end_input(self) -> None:
        """The end of stdin: the process reads EOF."""
        if not self._ended:
            self._ended = True
            with contextlib.suppress(OSError):
                self._sock.sendall(b"0\r\n\r\n")

    def abandon(self) -> None:
        """Leave without ending stdin (a detach): the output stops, the process goes on."""
        self._ended = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def _api_error(status: int, reason: str, body: bytes) -> APIError:
    message = ""
    exit_code = None
    try:
        payload = json.loads(body)
    except ValueError:
        message = body.decode(errors="replace").strip()
    else:
        if isinstance(payload, dict):
            message = str(payload.get("message") or "")
            code = payload.get("ExitCode")
            if isinstance(code, int) and not isinstance(code, bool):
                exit_code = code
    return APIError(status, message or f"hyperd answered {status} {reason}", exit_code)


def _answer(conn: http.client.HTTPConnection, ok: tuple[int, ...] = (),
            begin: Callable[[], http.client.HTTPResponse] | None = None) -> http.client.HTTPResponse:
    """The response to the request sent on ``conn`` (read by ``begin``, by default ``getresponse``)
    if it is a success (or in ``ok``), else its APIError."""
    try:
        response = begin() if begin is not None else conn.getresponse()
        if 200 <= response.status < 300 or response.status in ok:
            return response
        error = _api_error(response.status, response.reason, response.read())
    except (http.client.HTTPException, OSError) as err:
        conn.close()
        raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err
    conn.close()
    raise error


def _json_answer(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> Any:
    """The decoded JSON body of a successful response (None if empty); closes the connection."""
    try:
        raw = response.read()
    except (http.client.HTTPException, OSError) as err:
        raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err
    finally:
        conn.close()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as err:
        raise HyperError(f"hyperd sent malformed JSON: {err}") from err


def _url(path: str, query: Query | None) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def _ident(name: str) -> str:
    return quote(name, safe="")


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _path_stat(response: http.client.HTTPResponse) -> Any:
    """The path stat docker sends in a header (base64 JSON)."""
    try:
        stat = json.loads(base64.b64decode(response.getheader("X-Docker-Container-Path-Stat") or ""))
    except ValueError as err:
        raise HyperError("hyperd sent no valid path stat") from err
    if not isinstance(stat, dict) or not isinstance(stat.get("mode"), int):
        raise HyperError("hyperd sent no valid path stat")
    return stat


def _tar_headers(length: int | None) -> dict[str, str]:
    """An upload of a tar; with no ``length`` it goes chunked (a pipe on stdin)."""
    headers = {"Content-Type": "application/x-tar"}
    if length is not None:
        headers["Content-Length"] = str(length)
    return headers


def _registry_auth(auth: dict[str, str] | None) -> dict[str, str]:
    """Docker's ``X-Registry-Auth``: the credentials for one registry, base64url-encoded JSON."""
    if not auth:
        return {}
    return {"X-Registry-Auth": base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()}


class Pending(_Held):
    """A JSON request already sent whose answer is read on demand."""

    def result(self) -> Any:
        """The decoded answer, blocking until it comes."""
        return _json_answer(self._conn, _answer(self._conn))


class Client:
    """hyperd's API, one method per endpoint; ``host`` is a ``unix:///path`` URL."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.path = socket_path(host)

    def _open(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: bytes | IO[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> http.client.HTTPConnection:
        """Connect and send one request, leaving its answer to :func:`_answer`."""
        conn = self._connect()
        try:
            conn.request(method, _url(path, query), body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            # hyperd may refuse an upload before reading all of it; its answer says why.
            pass
        except (http.client.HTTPException, OSError) as err:
            conn.close()
            raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err
        return conn

    def _connect(self) -> UnixHTTPConnection:
        conn = UnixHTTPConnection(self.path)
        try:
            conn.connect()
        except OSError as err:
            raise DaemonUnreachable(self.host, _reason(err)) from err
        return conn

    def _send(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: bytes | IO[bytes] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (),
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._open(method, path, query, body, headers)
        return conn, _answer(conn, ok)

    def call(
        self,
        method: str,
        path: str,
        query: Query | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (),
    ) -> Any:
        """One JSON request and its decoded JSON answer (None for an empty body)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        return _json_answer(*self._send(method, path, query, data, headers, ok))

    def stream(self, method: str, path: str, query: Query | None = None,
               body: bytes | IO[bytes] | None = None, headers: dict[str, str] | None = None) -> Stream:
        """A request whose answer is read as it arrives; the caller closes it."""
        return Stream(*self._send(method, path, query, body, headers))

    def duplex(self, method: str, path: str, query: Query | None = None) -> Duplex:
        """A request whose body is sent as it comes (``Duplex.send``) while its answer streams back."""
        conn = self._connect()
        try:
            conn.putrequest(method, _url(path, query))
            conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Content-Type", "application/octet-stream")
            conn.endheaders()
        except (http.client.HTTPException, OSError) as err:
            conn.close()
            raise HyperError(f"lost the connection to hyperd: {_reason(err)}") from err

        def begin() -> http.client.HTTPResponse:
            # Not conn.getresponse(): that waits for the whole request to have been sent.
            assert conn.sock is not None
            response = http.client.HTTPResponse(conn.sock, method=method)
            response.begin()
            return response

        return Duplex(conn, _answer(conn, (), begin))

    # Containers

    def create_container(self, config: dict[str, Any], name: str | None = None) -> Any:
        query = {"name": name} if name else None
        return self.call("POST", "/containers/create", query, body=config)

    def start(self, container: str) -> None:
        self.call("POST", f"/containers/{_ident(container)}/start")

    def attach(self, container: str, stdin: bool = False) -> Stream:
        """The container's output from now on; with ``stdin``, a Duplex whose body is its stdin."""
        query = {"stream": "1", "stdout": "1", "stderr": "1"}
        path = f"/containers/{_ident(container)}/attach"
        if stdin:
            return self.duplex("POST", path, {**query, "stdin": "1"})
        return self.stream("POST", path, query)

    def resize(self, container: str, rows: int, cols: int, exec_id: str = "") -> None:
        path = f"/exec/{_ident(exec_id)}/resize" if exec_id else f"/containers/{_ident(container)}/resize"
        self.call("POST", path, {"h": str(rows), "w": str(cols)})

    def create_exec(self, container: str, config: dict[str, Any]) -> Any:
        return self.call("POST", f"/containers/{_ident(container)}/exec", body=config)

    def start_exec(self, exec_id: str, stdin: bool = False, detach: bool = False) -> Stream | None:
        """Run an exec instance: its output (a Duplex with ``stdin``), or None with ``detach``."""
        path = f"/exec/{_ident(exec_id)}/start"
        if detach:
            self.call("POST", path, {"detach": "1"})
            return None
        return self.duplex("POST", path) if stdin else self.stream("POST", path)

    def inspect_exec(self, exec_id: str) -> Any:
        return self.call("GET", f"/exec/{_ident(exec_id)}/json")

    def wait(self, container: str) -> Any:
        return self.call("POST", f"/containers/{_ident(container)}/wait")

    def wait_later(self, container: str, next_exit: bool = False) -> Pending:
        """Send a wait now, to read its answer later: sent before the start, it cannot miss
        the exit of a container that is removed as soon as it exits (``AutoRemove``);
        ``next_exit`` waits past a previous run's exit, for the run about to start."""
        query = {"condition": "next-exit"} if next_exit else None
        return Pending(self._open("POST", f"/containers/{_ident(container)}/wait", query))

    def stop(self, container: str, timeout: int | None = None) -> None:
        query = None if timeout is None else {"t": str(timeout)}
        # 304: already stopped, which is what the caller wants.
        self.call("POST", f"/containers/{_ident(container)}/stop", query, ok=(304,))

    def kill(self, container: str, signal: str) -> None:
        self.call("POST", f"/containers/{_ident(container)}/kill", {"signal": signal})

    def top(self, container: str) -> Any:
        return self.call("GET", f"/containers/{_ident(container)}/top")

    def stats(self, container: str, stream: bool) -> Stream:
        return self.stream("GET", f"/containers/{_ident(container)}/stats", {"stream": _flag(stream)})

    def update(self, container: str, changes: dict[str, Any]) -> None:
        self.call("POST", f"/containers/{_ident(container)}/update", body=changes)

    def pause(self, container: str) -> None:
        self.call("POST", f"/containers/{_ident(container)}/pause")

    def unpause(self, container: str) -> None:
        self.call("POST", f"/containers/{_ident(container)}/unpause")

    def remove(self, container: str, force: bool = False, volumes: bool = False) -> None:
        self.call("DELETE", f"/containers/{_ident(container)}", {"force": _flag(force), "v": _flag(volumes)})

    def rename(self, container: str, name: str) -> None:
        self.call("POST", f"/containers/{_ident(container)}/rename", {"name": name})

    def prune_containers(self) -> Any:
        return self.call("POST", "/containers/prune")

    def export(self, container: str) -> Stream:
        return self.stream("GET", f"/containers/{_ident(container)}/export")

    def path_stat(self, container: str, path: str, follow: bool = False) -> Any:
        """docker's stat of a path in a container (``follow``: of a symlink's target); None if it is missing."""
        conn, response = self._send("HEAD", f"/containers/{_ident(container)}/archive",
                                    {"path": path, "follow": _flag(follow)}, ok=(404,))
        conn.close()
        return None if response.status == 404 else _path_stat(response)

    def archive(self, container: str, path: str) -> tuple[Any, Stream]:
        """A tar of a path in a container, with docker's stat of that path."""
        conn, response = self._send("GET", f"/containers/{_ident(container)}/archive", {"path": path})
        return _path_stat(response), Stream(conn, response)

    def extract(self, container: str, path: str, tar: IO[bytes]) -> None:
        """Unpack a tar (sent chunked as it is read) into a directory of a container."""
        _json_answer(*self._send("PUT", f"/containers/{_ident(container)}/archive", {"path": path}, tar,
                                 _tar_headers(None)))

    def changes(self, container: str) -> Any:
        return self.call("GET", f"/containers/{_ident(container)}/changes")

    def commit(self, container: str, repo: str, tag: str, comment: str, author: str, changes: list[str],
               pause: bool) -> Any:
        query = [("container", container), ("comment", comment), ("author", author), ("pause", _flag(pause)),
                 *(("changes", change) for change in changes)]
        query += [(key, value) for key, value in (("repo", repo), ("tag", tag)) if value]
        return self.call("POST", "/commit", query)

    def containers(self, all: bool = False) -> Any:
        return self.call("GET", "/containers/json", {"all": _flag(all)})

    def inspect(self, container: str) -> Any:
        return self.call("GET", f"/containers/{_ident(container)}/json")

    def logs(self, container: str, follow: bool = False, timestamps: bool = False, tail: str = "all",
             since: float | None = None, until: float | None = None) -> Stream:
        query = {
            "stdout": "1",
            "stderr": "1",
            "follow": _flag(follow),
            "timestamps": _flag(timestamps),
            "tail": tail,
            **{key: str(value) for key, value in (("since", since), ("until", until)) if value is not None},
        }
        return self.stream("GET", f"/containers/{_ident(container)}/logs", query)

    def events(self, since: float | None, until: float | None, filters: dict[str, list[str]]) -> Stream:
        query = {key: str(value) for key, value in (("since", since), ("until", until)) if value is not None}
        if filters:
            query["filters"] = json.dumps(filters)
        return self.stream("GET", "/events", query)

    # Images

    def images(self, all: bool = False, dangling: bool | None = None) -> Any:
        query = {"all": _flag(all)}
        if dangling is not None:
            query["filters"] = json.dumps({"dangling": [str(dangling).lower()]})
        return self.call("GET", "/images/json", query)

    def import_image(self, tar: IO[bytes], length: int | None, repo: str = "", tag: str = "") -> Any:
        """Upload a tar; with no ``length`` it goes chunked (a pipe on stdin)."""
        query = {key: value for key, value in (("repo", repo), ("tag", tag)) if value}
        return _json_answer(*self._send("POST", "/images/import", query, tar, _tar_headers(length)))

    def pull(self, reference: str, platform: str = "", auth: dict[str, str] | None = None) -> Stream:
        """Start a pull; its answer is a stream of JSON progress messages."""
        query = {"fromImage": reference}
        if platform:
            query["platform"] = platform
        return self.stream("POST", "/images/create", query, headers=_registry_auth(auth))

    def login(self, username: str, password: str, server: str) -> Any:
        return self.call("POST", "/auth", body={"username": username, "password": password, "serveraddress": server})

    def image(self, name: str) -> Any:
        return self.call("GET", f"/images/{_ident(name)}/json")

    def history(self, name: str) -> Any:
        return self.call("GET", f"/images/{_ident(name)}/history")

    def tag(self, source: str, repo: str, tag: str) -> None:
        query = {"repo": repo}
        if tag:
            query["tag"] = tag
        self.call("POST", f"/images/{_ident(source)}/tag", query)

    def remove_image(self, name: str, force: bool = False) -> Any:
        return self.call("DELETE", f"/images/{_ident(name)}", {"force": _flag(force)})

    def prune_images(self, all: bool = False) -> Any:
        query = {"filters": json.dumps({"dangling": ["false" if all else "true"]})}
        return self.call("POST", "/images/prune", query)

    def save(self, names: list[str]) -> Stream:
        return self.stream("GET", "/images/get", [("names", name) for name in names])

    def load(self, tar: IO[bytes], length: int | None) -> Stream:
        return self.stream("POST", "/images/load", None, tar, _tar_headers(length))

    # System

    # Networks

    def networks(self) -> Any:
        return self.call("GET", "/networks")

    def network(self, name: str) -> Any:
        return self.call("GET", f"/networks/{_ident(name)}")

    def create_network(self, config: dict[str, Any]) -> Any:
        return self.call("POST", "/networks/create", body=config)

    def remove_network(self, name: str) -> None:
        self.call("DELETE", f"/networks/{_ident(name)}")

    def connect_network(self, network: str, container: str, endpoint: dict[str, Any]) -> None:
        self.call("POST", f"/networks/{_ident(network)}/connect",
                  body={"Container": container, "EndpointConfig": endpoint})

    def prune_networks(self) -> Any:
        return self.call("POST", "/networks/prune")

    def disconnect_network(self, network: str, container: str) -> None:
        self.call("POST", f"/networks/{_ident(network)}/disconnect", body={"Container": container})

    def pods(self) -> Any:
        return self.call("GET", "/pods/json")

    def pod(self, name: str) -> Any:
        return self.call("GET", f"/pods/{_ident(name)}/json")

    def create_pod(self, spec: Any) -> Any:
        return self.call("POST", "/pods/create", body=spec)

    def start_pod(self, name: str) -> None:
        self.call("POST", f"/pods/{_ident(name)}/start")

    def stop_pod(self, name: str, timeout: int | None) -> None:
        self.call("POST", f"/pods/{_ident(name)}/stop", {} if timeout is None else {"t": str(timeout)})

    def remove_pod(self, name: str, force: bool) -> None:
        self.call("DELETE", f"/pods/{_ident(name)}", {"force": _flag(force)})

    def volumes(self) -> Any:
        return self.call("GET", "/volumes")

    def volume(self, name: str) -> Any:
        return self.call("GET", f"/volumes/{_ident(name)}")

    def create_volume(self, config: dict[str, Any]) -> Any:
        return self.call("POST", "/volumes/create", body=config)

    def remove_volume(self, name: str) -> None:
        self.call("DELETE", f"/volumes/{_ident(name)}")

    def prune_volumes(self, everything: bool) -> Any:
        return self.call("POST", "/volumes/prune", {"filters": json.dumps({"all": ["true"]} if everything else {})})

    def info(self) -> Any:
        return self.call("GET", "/info")

    def version(self) -> Any:
        return self.call("GET", "/version")
