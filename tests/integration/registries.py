"""Test registries on loopback: Debian's ``docker-registry``, optionally behind auth or a fault proxy.

    with start_registry(base, auth="token", users={"alice": "secret"}) as registry:
        registry.push(layout, "app", "private/app:1", creds=("alice", "secret"))
        ...  # pull from registry.address

``auth`` picks how the registry guards itself:

* ``None`` — anonymous, anyone may pull and push.
* ``"htpasswd"`` — HTTP Basic against an htpasswd file of bcrypt hashes (the only hash
  docker-registry accepts) made from ``users``; the challenge names ``realm``.
* ``"token"`` — docker's token auth: the registry answers ``401`` with
  ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` pointing at ``TokenServer``,
  which runs in this process.  The token server checks HTTP Basic credentials against
  ``users`` and grants what they ask for; a wrong password gets ``401`` (as Docker Hub's
  auth.docker.io does).  Anonymous requests get a token too, as on Docker Hub, granting only
  ``pull`` on the repositories listed in ``public``; everything else anonymous gets a token
  with no access, which the registry then refuses.  Only ``GET`` tokens are served, not the
  OAuth2 ``POST`` form (no client here sends an identity token).

With ``proxy=True`` a ``FaultProxy`` stands between clients and the registry: it forwards
every request and can be told to answer the next requests with ``503`` or to cut one blob's
body short, so a client's retry and resume can be tested end to end.

Everything listens on 127.0.0.1 only.  Every process and thread started here is stopped in
``finally`` (SIGTERM, then SIGKILL); no pytest here, failures raise ``RegistryError``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

REGISTRY_BIN = Path("/usr/bin/docker-registry")
READY_TIMEOUT = 30.0
"""Seconds docker-registry may take to answer ``/v2/``."""
STOP_TIMEOUT = 10.0
PUSH_TIMEOUT = 600.0
"""Seconds one skopeo push may take (the Debian image is ~60 MB)."""
TOKEN_LIFETIME = 300
SERVICE = "hyper-test-registry"
ISSUER = "hyper-test-token-server"
CHUNK = 1 << 16

Auth = Literal["htpasswd", "token"]


class RegistryError(Exception):
    """A test registry could not be started, or a push to it failed."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing_tools() -> str | None:
    """Why the registries cannot run here, or None."""
    if not REGISTRY_BIN.is_file():
        return f"{REGISTRY_BIN} not found (apt-get install docker-registry)"
    if shutil.which("skopeo") is None:
        return "skopeo not found (apt-get install skopeo)"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def _serve(server: _Server, name: str) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread


def _stop(server: _Server, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(STOP_TIMEOUT)


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started, SIGKILL it if it lingers; always reaped."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------------------------
# The token server


@dataclass(frozen=True)
class TokenRequest:
    """What one client asked the token server, and what it got."""

    account: str | None          # None: anonymous
    scopes: tuple[str, ...]
    status: int
    granted: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True)
class _Signer:
    key_pem: bytes
    cert_der: bytes
    cert_pem: bytes


def _make_signer() -> _Signer:
    """A fresh P-256 key and a self-signed certificate for it: the root docker-registry trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return _Signer(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
    )


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class TokenServer:
    """docker's Bearer token server, enough of it for docker-registry 2.8 (see the module docstring)."""

    def __init__(self, users: Mapping[str, str], public: tuple[str, ...] = ()) -> None:
        self.users = dict(users)
        self.public = frozenset(public)
        self.signer = _make_signer()
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = _serve(self._server, "token-server")

    @property
    def realm(self) -> str:
        return f"http://{self.address}/token"

    def close(self) -> None:
        _stop(self._server, self._thread)

    def token(self, account: str | None, access: list[dict[str, object]]) -> str:
        """A JWT docker-registry accepts: ES256, the certificate in ``x5c``, ``aud`` the service."""
        import jwt

        now = int(time.time())
        claims = {"iss": ISSUER, "sub": account or "", "aud": SERVICE, "exp": now + TOKEN_LIFETIME, "nbf": now,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return jwt.encode(claims, self.signer.key_pem, algorithm="ES256",
                          headers={"x5c": [base64.b64encode(self.signer.cert_der).decode()]})

    def _grant(self, account: str | None, scopes: list[str]) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [action for action in actions.split(",") if action]
            allowed = wanted if account is not None else [a for a in wanted if a == "pull" and name in self.public]
            if allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, document: Mapping[str, object]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                scopes = [scope for value in query.get("scope", []) for scope in value.split(" ") if scope]
                header = self.headers.get("Authorization", "")
                creds = _basic(header) if header else None
                account = creds[0] if creds else None
                access: list[dict[str, object]] = []
                document: dict[str, object]
                if url.path != "/token":
                    status, document = 404, {"details": "not found"}
                elif header and (creds is None or server.users.get(creds[0]) != creds[1]):
                    status, document = 401, {"details": "incorrect username or password"}
                else:
                    access = server._grant(account, scopes)
                    token = server.token(account, access)
                    status = 200
                    document = {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME,
                                "issued_at": datetime.datetime.now(datetime.UTC).isoformat()}
                with server._lock:
                    server.requests.append(TokenRequest(account, tuple(scopes), status, tuple(access)))
                self._answer(status, document)

        return Handler


# ---------------------------------------------------------------------------------------------
# The fault proxy


@dataclass(frozen=True)
class Seen:
    """One request the proxy forwarded (or answered itself)."""

    method: str
    path: str
    range: str           # the Range header, "" when none
    status: int
    cut: bool = False    # the body was cut short on purpose


_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                         "transfer-encoding", "upgrade"})


class FaultProxy:
    """A loopback HTTP proxy in front of ``upstream`` that misbehaves when told to."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._fail: list[int] = []          # statuses for the next requests
        self._cuts: dict[str, int] = {}     # blob digest -> bytes to send before hanging up
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = _serve(self._server, "fault-proxy")

    def close(self) -> None:
        _stop(self._server, self._thread)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status`` instead of forwarding them."""
        with self._lock:
            self._fail.extend([status] * count)

    def cut_blob(self, digest: str, after: int) -> None:
        """The next full (``200``) answer for blob ``digest`` hangs up after ``after`` bytes of body."""
        with self._lock:
            self._cuts[digest] = after

    def reset(self) -> None:
        """Drop the faults not yet served and forget the requests seen."""
        with self._lock:
            self._fail.clear()
            self._cuts.clear()
            self.seen.clear()

    def injected(self) -> int:
        """How many requests were answered with an injected error status so far."""
        with self._lock:
            return sum(1 for seen in self.seen if seen.path.startswith("!"))

    def requests(self, digest: str | None = None) -> list[Seen]:
        """The requests forwarded so far; only those for blob ``digest`` when given."""
        with self._lock:
            seen = [s for s in self.seen if not s.path.startswith("!")]
        return [s for s in seen if digest is None or s.path.endswith(f"/blobs/{digest}")]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._fail.pop(0) if self._fail else None

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            for digest, after in self._cuts.items():
                if path.endswith(f"/blobs/{digest}"):
                    del self._cuts[digest]
                    return after
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                failure = proxy._take_failure()
                if failure is not None:
                    # Recorded with a "!" so requests() lists only what reached the registry.
                    proxy._record(Seen(self.command, f"!{self.path}", self.headers.get("Range", ""), failure))
                    message = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault",
                                                      "detail": None}]}).encode()
                    self.send_response(failure)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    self.wfile.write(message)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    cut = proxy._take_cut(self.path) if self.command == "GET" and response.status == 200 else None
                    proxy._record(Seen(self.command, self.path, self.headers.get("Range", ""), response.status,
                                       cut is not None))
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    declared = response.getheader("Content-Length")
                    if self.command == "HEAD" or response.status in (204, 304):
                        if declared is not None:
                            self.send_header("Content-Length", declared)
                        self.end_headers()
                        return
                    if declared is None:
                        data = response.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    self.send_header("Content-Length", declared)
                    self.end_headers()
                    left = int(declared) if cut is None else min(cut, int(declared))
                    while left > 0 and (chunk := response.read(min(CHUNK, left))):
                        self.wfile.write(chunk)
                        left -= len(chunk)
                    if cut is not None:
                        self.wfile.flush()
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                finally:
                    upstream.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler


# ---------------------------------------------------------------------------------------------
# The registry


@dataclass
class RegistryServer:
    """A running docker-registry at ``address``; with ``proxy``, reachable through ``proxy.address`` too."""

    address: str
    base: Path
    process: subprocess.Popen[bytes]
    auth: Auth | None = None
    users: dict[str, str] = field(default_factory=dict)
    token_server: TokenServer | None = None
    proxy: FaultProxy | None = None

    @property
    def log(self) -> Path:
        return self.base / "registry.log"

    def push(self, layout: Path, tag: str, name: str, creds: tuple[str, str] | None = None) -> None:
        """Copy the layout's image ``tag`` (with every platform) to ``name`` (``repo:tag``), straight to the registry.

        Raises ``RegistryError`` with skopeo's message when the registry refuses.
        """
        argv = ["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false"]
        argv += [f"--dest-creds={creds[0]}:{creds[1]}"] if creds is not None else ["--dest-no-creds"]
        argv += [f"oci:{layout}:{tag}", f"docker://{self.address}/{name}"]
        # A private HOME and auth file: no login of whoever runs the tests leaks into the push.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.base), "LC_ALL": "C",
               "REGISTRY_AUTH_FILE": str(self.base / "skopeo-auth.json")}
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                                timeout=PUSH_TIMEOUT, check=False)
        if result.returncode != 0:
            raise RegistryError(f"skopeo push of {name} to {self.address} failed: {result.stderr.strip()}")


def _htpasswd(users: Mapping[str, str]) -> str:
    import bcrypt

    # Cost 4, bcrypt's least: these passwords guard nothing, and each check costs CPU we share.
    return "".join(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                   for user, password in users.items())


def _ready(address: str) -> bool:
    """docker-registry answers ``/v2/``: 200 when open, 401 when it wants credentials."""
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as err:
        return err.code == 401
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def start_registry(base: Path, *, auth: Auth | None = None, users: Mapping[str, str] | None = None,
                   realm: str = "hyper-test", public: tuple[str, ...] = (),
                   proxy: bool = False) -> Iterator[RegistryServer]:
    """Run docker-registry on a free loopback port with its storage under ``base`` (see the module docstring)."""
    if (reason := missing_tools()) is not None:
        raise RegistryError(reason)
    users = dict(users or {})
    base.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_port()}"
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")}, "delete": {"enabled": True}},
        "http": {"addr": address},
    }
    with contextlib.ExitStack() as stack:
        token_server: TokenServer | None = None
        if auth == "htpasswd":
            (base / "htpasswd").write_text(_htpasswd(users))
            config["auth"] = {"htpasswd": {"realm": realm, "path": str(base / "htpasswd")}}
        elif auth == "token":
            token_server = TokenServer(users, public)
            stack.callback(token_server.close)
            (base / "token.crt").write_bytes(token_server.signer.cert_pem)
            config["auth"] = {"token": {"realm": token_server.realm, "service": SERVICE, "issuer": ISSUER,
                                        "rootcertbundle": str(base / "token.crt")}}
        elif auth is not None:
            raise ValueError(f"unknown registry auth {auth!r}")
        (base / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        with (base / "registry.log").open("ab") as log:
            process = subprocess.Popen([str(REGISTRY_BIN), "serve", str(base / "config.yml")],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True)
        stack.callback(_stop_process, process)
        server = RegistryServer(address, base, process, auth, users, token_server)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _ready(address):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RegistryError(f"docker-registry did not come up on {address}:\n"
                                    f"{server.log.read_text(errors='replace')}")
            time.sleep(0.1)
        if proxy:
            server.proxy = FaultProxy(address)
            stack.callback(server.proxy.close)
        yield server


__all__ = ["Auth", "FaultProxy", "RegistryError", "RegistryServer", "Seen", "TokenRequest", "TokenServer", "free_port",
           "missing_tools", "start_registry"]
