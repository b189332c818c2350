"""The client's config directory and the registry logins kept in its ``config.json``."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from cli import config
from cli.config import Login
from cli.errors import HyperError


@pytest.fixture(autouse=True)
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Docker config dir, so the developer's own ``~/.docker`` never leaks in."""
    docker = tmp_path / "docker"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.delenv(config.ENV, raising=False)
    return docker


def basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def test_directory_option_then_environment_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config.directory(None) == tmp_path / "home" / ".hyper"
    monkeypatch.setenv(config.ENV, str(tmp_path / "env"))
    assert config.directory(None) == tmp_path / "env"
    assert config.directory(str(tmp_path / "option")) == tmp_path / "option"


def test_save_then_lookup(tmp_path: Path) -> None:
    directory = tmp_path / "hyper"
    path = config.save(directory, "127.0.0.1:5000", Login("alice", "s3cr:et"))
    assert path == directory / "config.json"
    assert config.lookup(directory, "127.0.0.1:5000") == Login("alice", "s3cr:et")
    assert config.lookup(directory, "ghcr.io") is None
    # Docker's shape, so docker can read it too.
    assert json.loads(path.read_text()) == {"auths": {"127.0.0.1:5000": {"auth": basic("alice", "s3cr:et")}}}


def test_saved_file_is_private_and_written_atomically(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "hyper"
    config.save(directory, "ghcr.io", Login("alice", "pw"))
    config.save(directory, "127.0.0.1:5000", Login("bob", "pw2"))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "config.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["config.json"]


def test_rewriting_a_world_readable_file_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    path.chmod(0o644)
    config.save(tmp_path, "ghcr.io", Login("alice", "pw"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_forget(tmp_path: Path) -> None:
    config.save(tmp_path, "ghcr.io", Login("alice", "pw"))
    config.save(tmp_path, "127.0.0.1:5000", Login("bob", "pw2"))
    assert config.forget(tmp_path, "ghcr.io") is True
    assert config.lookup(tmp_path, "ghcr.io") is None
    assert config.lookup(tmp_path, "127.0.0.1:5000") == Login("bob", "pw2")
    assert config.forget(tmp_path, "ghcr.io") is False
    assert config.forget(tmp_path / "never-written", "ghcr.io") is False
    assert not (tmp_path / "never-written").exists()


def test_other_keys_and_entries_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "psFormat": "table {{.ID}}",
        "credsStore": "desktop",
        "auths": {"quay.io": {"auth": basic("q", "w")}, "ghcr.io": {}},
    }))
    config.save(tmp_path, "127.0.0.1:5000", Login("alice", "pw"))
    config.forget(tmp_path, "ghcr.io")
    document = json.loads(path.read_text())
    assert document["psFormat"] == "table {{.ID}}"
    assert document["credsStore"] == "desktop"
    assert document["auths"] == {"quay.io": {"auth": basic("q", "w")},
                                 "127.0.0.1:5000": {"auth": basic("alice", "pw")}}


@pytest.mark.parametrize("name", ["docker.io", "index.docker.io", "https://index.docker.io/v1/",
                                  "registry-1.docker.io", ""])
def test_docker_hub_names_share_one_key(name: str) -> None:
    assert config.key(name) == "https://index.docker.io/v1/"


@pytest.mark.parametrize(("name", "expected"), [
    ("127.0.0.1:5000", "127.0.0.1:5000"),
    ("https://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
    ("http://localhost:5000", "localhost:5000"),
    ("ghcr.io", "ghcr.io"),
])
def test_other_registries_are_keyed_by_host(name: str, expected: str) -> None:
    assert config.key(name) == expected


def test_docker_hub_login_is_found_by_any_of_its_names(tmp_path: Path) -> None:
    config.save(tmp_path, "docker.io", Login("alice", "pw"))
    assert json.loads((tmp_path / "config.json").read_text())["auths"].keys() == {"https://index.docker.io/v1/"}
    for name in ("index.docker.io", "https://index.docker.io/v1/", "docker.io"):
        assert config.lookup(tmp_path, name) == Login("alice", "pw")
    assert config.forget(tmp_path, "index.docker.io") is True
    assert config.lookup(tmp_path, "docker.io") is None


def test_lookup_falls_back_to_dockers_config(tmp_path: Path, no_docker_config: Path) -> None:
    (no_docker_config / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": basic("hub", "hubpw")},
        "127.0.0.1:5000": {"username": "local", "password": "localpw"},
        "ghcr.io": {},  # a credential helper's entry: skipped
    }}))
    hyper_dir = tmp_path / "hyper"
    assert config.lookup(hyper_dir, "docker.io") == Login("hub", "hubpw")
    assert config.lookup(hyper_dir, "127.0.0.1:5000") == Login("local", "localpw")
    assert config.lookup(hyper_dir, "ghcr.io") is None
    # Ours first; hyper never writes Docker's file.
    before = (no_docker_config / "config.json").read_text()
    config.save(hyper_dir, "127.0.0.1:5000", Login("mine", "minepw"))
    assert config.lookup(hyper_dir, "127.0.0.1:5000") == Login("mine", "minepw")
    assert (no_docker_config / "config.json").read_text() == before


def test_malformed_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(HyperError) as caught:
        config.lookup(tmp_path, "ghcr.io")
    assert str(tmp_path / "config.json") in caught.value.message
    assert "\n" not in caught.value.message
