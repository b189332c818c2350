"""``hyper pull`` from a real registry: Debian's ``docker-registry`` on a loopback port, images pushed with skopeo."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperd.image.busybox import build_rootfs_tar
from tests.integration.conftest import Hyper, lines, terminate

REGISTRY_BIN = Path("/usr/bin/docker-registry")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Registry:
    address: str          # 127.0.0.1:PORT
    log: Path

    def push(self, layout: Path, tag: str, name: str) -> None:
        result = subprocess.run(
            ["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
             f"docker://{self.address}/{name}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"skopeo push of {name} failed:\n{result.stderr}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not REGISTRY_BIN.is_file() or shutil.which("skopeo") is None:
        pytest.skip("needs docker-registry and skopeo (apt-get install docker-registry skopeo)")
    base = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_port()}"
    config = base / "config.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(base / "data")}, "delete": {"enabled": True}},
        "http": {"addr": address},
    }))
    log = base / "registry.log"
    with log.open("ab") as out:
        process = subprocess.Popen([str(REGISTRY_BIN), "serve", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _answers(f"http://{address}/v2/"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not come up on {address}:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield Registry(address, log)
    finally:
        terminate(process)


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _manifest(layout: Path, layer: bytes, diff_id: str, architecture: str, command: str) -> dict[str, object]:
    config = json.dumps({
        "architecture": architecture, "os": "linux", "created": "2024-01-02T03:04:05.123456789Z",
        "config": {"Cmd": ["sh", "-c", command], "Env": ["PATH=/bin:/sbin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(layout, config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(layout, layer)}],
    }).encode()
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(layout, manifest),
            "platform": {"os": "linux", "architecture": architecture}}


@pytest.fixture(scope="session")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """``test/busybox:1`` (one amd64 manifest) and ``test/multi:1`` (an index: arm64 first, then amd64)."""
    base = tmp_path_factory.mktemp("layout")
    plain = build_rootfs_tar(base / "rootfs.tar").read_bytes()
    layer = gzip.compress(plain, mtime=0)
    diff_id = f"sha256:{hashlib.sha256(plain).hexdigest()}"
    layout = base / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    single = _manifest(layout, layer, diff_id, "amd64", "echo single")
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [_manifest(layout, layer, diff_id, "arm64", "echo arm64"),
                      _manifest(layout, layer, diff_id, "amd64", "echo amd64")],
    }).encode()
    ref = "org.opencontainers.image.ref.name"
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {**single, "annotations": {ref: "single"}},
        {"mediaType": "application/vnd.oci.image.index.v1+json", **_blob(layout, index), "annotations": {ref: "multi"}},
    ]}))
    registry.push(layout, "single", "test/busybox:1")
    registry.push(layout, "multi", "test/multi:1")
    return registry


def _digest(result: subprocess.CompletedProcess[str]) -> str:
    [digest] = [line.removeprefix("Digest: ") for line in lines(result.stdout) if line.startswith("Digest: ")]
    return digest


def test_pull_then_images_and_run(hyper: Hyper, pushed: Registry) -> None:
    ref = f"{pushed.address}/test/busybox:1"
    result = hyper("pull", ref)
    assert result.returncode == 0, result.stderr
    assert f"Status: Downloaded newer image for {ref}" in lines(result.stdout)
    assert _digest(result).startswith("sha256:")
    listing = hyper("images")
    assert any(row.split()[:2] == [f"{pushed.address}/test/busybox", "1"] for row in lines(listing.stdout))
    run = hyper("run", "--rm", ref, "echo", "pulled")
    assert (run.returncode, run.stdout, run.stderr) == (0, "pulled\n", "")
    again = hyper("pull", ref)
    assert again.returncode == 0, again.stderr
    assert f"Status: Image is up to date for {ref}" in lines(again.stdout)


def test_pull_by_digest(hyper: Hyper, pushed: Registry) -> None:
    tagged = hyper("pull", f"{pushed.address}/test/busybox:1")
    assert tagged.returncode == 0, tagged.stderr
    ref = f"{pushed.address}/test/busybox@{_digest(tagged)}"
    result = hyper("pull", ref)
    assert result.returncode == 0, result.stderr
    assert _digest(result) == _digest(tagged)
    run = hyper("run", "--rm", ref)
    assert (run.returncode, run.stdout) == (0, "single\n"), run.stderr


def test_pull_selects_amd64_from_an_index(hyper: Hyper, pushed: Registry) -> None:
    ref = f"{pushed.address}/test/multi:1"
    result = hyper("pull", ref)
    assert result.returncode == 0, result.stderr
    run = hyper("run", "--rm", ref)
    assert (run.returncode, run.stdout) == (0, "amd64\n"), run.stderr


def test_unknown_tag_is_one_line_naming_it(hyper: Hyper, pushed: Registry) -> None:
    result = hyper("pull", f"{pushed.address}/test/busybox:nosuchtag")
    assert result.returncode == 125
    [line] = lines(result.stderr)
    assert line == f"hyper: manifest unknown: registry {pushed.address} has no test/busybox:nosuchtag"
    assert "nosuchtag" not in hyper("images").stdout


def test_registry_not_listening_is_one_line(hyper: Hyper) -> None:
    address = f"127.0.0.1:{_free_port()}"
    result = hyper("pull", f"{address}/test/busybox:1")
    assert result.returncode == 125
    [line] = lines(result.stderr)
    assert line == f"hyper: cannot reach registry {address}: Connection refused"
