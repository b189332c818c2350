"""hyperd's settings: flags over Docker-style daemon.json keys, and one clear error for a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperd import config
from hyperd.config import Config
from hyperd.errors import InvalidArgument

HOST = "unix:///run/test/hyperd.sock"


def create(tmp_path: Path, settings: object | None = None, **flags: object) -> Config:
    path = None
    if settings is not None:
        path = tmp_path / "daemon.json"
        path.write_text(settings if isinstance(settings, str) else json.dumps(settings))
    return Config.create(HOST, tmp_path, None, None, config_file=path, **flags)  # type: ignore[arg-type]


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", tmp_path / "absent.json")
    made = create(tmp_path)
    assert (made.registry_mirrors, made.insecure_registries, made.max_concurrent_downloads) == ((), (), 3)


def test_the_default_file_is_read_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "daemon.json"
    default.write_text(json.dumps({"max-concurrent-downloads": 5}))
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", default)
    assert create(tmp_path).max_concurrent_downloads == 5


def test_flags_add_to_the_files_lists_and_override_its_scalars(tmp_path: Path) -> None:
    made = create(tmp_path, {"registry-mirrors": ["https://mirror.example"], "insecure-registries": ["10.0.0.0/8"],
                             "max-concurrent-downloads": 2},
                  registry_mirrors=("http://127.0.0.1:5001",), insecure_registries=("reg.lan:5000",),
                  max_concurrent_downloads=6)
    assert made.registry_mirrors == ("https://mirror.example", "http://127.0.0.1:5001")
    assert made.insecure_registries == ("10.0.0.0/8", "reg.lan:5000")
    assert made.max_concurrent_downloads == 6


@pytest.mark.parametrize(("settings", "message"), [
    ("{not json", "is not valid JSON"),
    ([], "must hold a JSON object"),
    ({"registry-mirror": ["x"]}, "unknown setting 'registry-mirror'"),
    ({"registry-mirrors": "https://mirror.example"}, "registry-mirrors must be a list of strings"),
    ({"insecure-registries": [""]}, "insecure-registries must be a list of strings"),
    ({"max-concurrent-downloads": 0}, "from 1 to 64"),
    ({"max-concurrent-downloads": True}, "from 1 to 64"),
    ({"storage-opts": ["size"]}, "storage-opts: expected KEY=VALUE, not 'size'"),
    ({"storage-opts": ["size=1K"]}, "out of range"),
    ({"storage-opts": ["quota=1G"]}, "unknown storage option 'quota'"),
])
def test_a_bad_file_is_one_clear_error(tmp_path: Path, settings: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        create(tmp_path, settings)


def test_the_default_writable_disk_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", tmp_path / "absent.json")
    assert create(tmp_path).writable_size == 10 << 30
    assert create(tmp_path, {"storage-opts": ["size=20G"]}).writable_size == 20 << 30


def test_a_named_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        Config.create(HOST, tmp_path, None, None, config_file=tmp_path / "missing.json")


def test_bridge_settings(tmp_path: Path) -> None:
    made = create(tmp_path, {"bip": "10.99.0.1/24"})
    assert (made.bip, made.bridge) == ("10.99.0.1/24", True)
    assert create(tmp_path, {"bridge": "none"}).bridge is False
    assert create(tmp_path, {"bip": "10.99.0.1/24"}, bip="10.98.0.1/16", bridge="none").bip == "10.98.0.1/16"


@pytest.mark.parametrize(("settings", "message"), [
    ({"bip": "10.99.0.0/24"}, "must be a host address"),
    ({"bip": "10.99.0.1/31"}, "must be a host address"),
    ({"bip": "nonsense"}, "bip must be an IPv4 address"),
    ({"bridge": "br0"}, 'bridge may only be "none"'),
])
def test_bad_bridge_settings(tmp_path: Path, settings: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        create(tmp_path, settings)
