"""``-v`` and ``--mount`` parsing, the volume records, and ``--mount`` on the client side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import volume as cli_volume
from cli.errors import HyperError
from hyperd.errors import InvalidArgument, NotFound
from hyperd.volumes import DEFAULT_SIZE, Mount, Volumes, parse_bind, parse_mount


@pytest.mark.parametrize(("text", "expected"), [
    ("/host/dir:/data", Mount("bind", "/host/dir", "/data", create_source=True)),
    ("/host//dir/:/data/:ro", Mount("bind", "/host/dir", "/data", readonly=True, create_source=True)),
    ("name:/data", Mount("volume", "name", "/data")),
    ("name:/data:ro,nocopy", Mount("volume", "name", "/data", readonly=True, nocopy=True)),
    ("/data", Mount("volume", "", "/data", anonymous=True)),
    ("/data:ro", Mount("volume", "", "/data", readonly=True, anonymous=True)),
])
def test_parse_bind(text: str, expected: Mount) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("a:b:c:d", "invalid volume specification"),
    ("/h:/d:nocopy", "invalid mode 'nocopy'"),
    ("x/y:/d", "invalid characters for a local volume name"),
    ("name:/", "cannot replace the container's root"),
    ("name:/../", "cannot replace the container's root"),
    ("/h:/d:shared", "invalid mode 'shared'"),
])
def test_parse_bind_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_bind(text)


def test_parse_mount() -> None:
    assert parse_mount({"Type": "bind", "Source": "/h", "Target": "/d", "ReadOnly": True}) == \
        Mount("bind", "/h", "/d", readonly=True)
    assert parse_mount({"Target": "/d", "VolumeOptions": {"NoCopy": True}}) == \
        Mount("volume", "", "/d", nocopy=True, anonymous=True)
    for fields, message in (({"Type": "npipe", "Target": "/d"}, "not supported"),
                            ({"Type": "bind", "Target": "/d"}, "Source must not be empty"),
                            ({"Source": "v"}, "needs a target")):
        with pytest.raises(InvalidArgument, match=message):
            parse_mount(fields)


def test_volume_records(tmp_path: Path) -> None:
    volumes = Volumes(tmp_path / "volumes")
    made = volumes.create("data", {"a": "b"}, {"size": "1G"})
    assert volumes.create("data") == made  # idempotent, as docker's create is
    assert made.size == 1 << 30 and volumes.get("data") == made
    anonymous = volumes.create()
    assert anonymous.anonymous and len(anonymous.name) == 64 and anonymous.size == DEFAULT_SIZE
    assert [v.name for v in volumes.list()] == sorted(["data", anonymous.name])
    assert json.loads((tmp_path / "volumes/data/volume.json").read_text())["labels"] == {"a": "b"}
    with pytest.raises(InvalidArgument, match="unknown volume option 'type'"):
        volumes.create("other", options={"type": "nfs"})
    with pytest.raises(InvalidArgument, match="out of range"):
        volumes.create("other", options={"size": "1k"})
    assert not (tmp_path / "volumes/other").exists()
    (tmp_path / "volumes/half").mkdir()
    volumes.reclaim()
    assert not (tmp_path / "volumes/half").exists() and volumes.get("data") == made
    volumes.remove("data")
    with pytest.raises(NotFound, match="no such volume: data"):
        volumes.get("data")


def test_cli_mount_flag() -> None:
    assert cli_volume.mount("type=bind,src=/h,dst=/d,readonly") == (
        {"Type": "bind", "Source": "/h", "Target": "/d", "ReadOnly": True}, None)
    assert cli_volume.mount("source=v,target=/d,volume-nocopy") == (
        {"Type": "volume", "Source": "v", "Target": "/d", "ReadOnly": False, "VolumeOptions": {"NoCopy": True}},
        None)
    assert cli_volume.mount("type=tmpfs,target=/t,tmpfs-size=64m") == (None, ("/t", "size=64m"))
    with pytest.raises(HyperError, match="target is required"):
        cli_volume.mount("type=bind,source=/h")
    with pytest.raises(HyperError, match="unexpected key 'colour'"):
        cli_volume.mount("target=/d,colour=red")


def test_cli_makes_relative_bind_sources_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_volume.bind("./data:/d:ro") == f"{tmp_path}/data:/d:ro"
    assert cli_volume.bind("name:/d") == "name:/d"
