"""The client's configuration directory and the registry credentials ``hyper login`` keeps there.

The directory is ``--config DIR``, else ``$HYPER_CONFIG``, else ``~/.hyper``; its
``config.json`` has Docker's shape (``{"auths": {"registry": {"auth": base64(user:password)}}}``)
so that either tool can read the other's logins.  Credentials are looked up there first and
then in Docker's own file (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``), so
an existing ``docker login`` works; hyper never writes Docker's file.  Credential helpers
(``credsStore``) are not run: their entries are skipped.

The file is written atomically (a temporary file in the same directory, fsynced, renamed)
with mode 0600 in a 0700 directory, since it holds passwords.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.errors import HyperError
from hyperd.image.reference import DOCKER_HUB, server_host

ENV = "HYPER_CONFIG"
FILE = "config.json"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
"""Docker Hub's key in ``auths``: Docker's historical index address, kept for compatibility."""


@dataclass(frozen=True)
class Login:
    username: str
    password: str


def directory(option: str | None) -> Path:
    return Path(option or os.environ.get(ENV) or Path.home() / ".hyper")


def key(registry: str) -> str:
    """The ``auths`` key for a registry named as the user or a reference names it."""
    host = server_host(registry)
    return DOCKER_HUB_KEY if host == DOCKER_HUB else host


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise HyperError(f"cannot read {path}: {(err.strerror or str(err)).lower()}") from err
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError as err:
        raise HyperError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise HyperError(f"{path} is not a JSON object")
    return document


def _decode(entry: object) -> Login | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            username, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Login(username, password) if sep and username else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Login(name, secret)
    return None


def lookup(config_dir: Path, registry: str) -> Login | None:
    """The saved login for ``registry``: ours first, then Docker's."""
    wanted = key(registry)
    docker_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    for path in (config_dir / FILE, docker_dir / FILE):
        auths = _read(path).get("auths")
        if not isinstance(auths, dict):
            continue
        for name, entry in auths.items():
            if isinstance(name, str) and key(name) == wanted and (login := _decode(entry)) is not None:
                return login
    return None


def save(config_dir: Path, registry: str, login: Login) -> Path:
    """Remember ``login`` for ``registry``; other entries and keys of the file are kept."""
    document = _read(config_dir / FILE)
    # An entry under another spelling of the same registry would shadow the new one.
    auths = _without(document, registry)
    token = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
    auths[key(registry)] = {"auth": token}
    return _write(config_dir, document)


def forget(config_dir: Path, registry: str) -> bool:
    """Remove the saved login for ``registry``; False if there was none."""
    document = _read(config_dir / FILE)
    before = document.get("auths")
    count = len(before) if isinstance(before, dict) else 0
    if len(_without(document, registry)) == count:
        return False
    _write(config_dir, document)
    return True


def _without(document: dict[str, Any], registry: str) -> dict[str, Any]:
    """The document's ``auths`` (made if missing) with every entry for ``registry``, however spelled, removed."""
    auths = document.get("auths")
    if not isinstance(auths, dict):
        auths = document["auths"] = {}
    wanted = key(registry)
    for name in [name for name in auths if key(name) == wanted]:
        del auths[name]
    return auths


def _write(config_dir: Path, document: dict[str, Any]) -> Path:
    path = config_dir / FILE
    try:
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{FILE}.", dir=config_dir)  # created 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent="\t")
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as err:
        raise HyperError(f"cannot save {path}: {(err.strerror or str(err)).lower()}") from err
    return path
