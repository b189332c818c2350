"""``hyper pull``, ``login`` and ``run`` against real registries, driven like a user drives them.

Debian's ``docker-registry`` runs on loopback ports (``registries.py``): an anonymous one behind
a fault proxy, and, for the login tests, one guarded by htpasswd and one by docker's token
auth.  The images are OCI layouts built in Python (``images.py``) and pushed with skopeo.  Every
test pulls repositories of its own, so no test sees another's images.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import images
from tests.integration.conftest import CLI_TIMEOUT, DaemonFactory, Hyper, lines, wait_for
from tests.integration.registries import (
    Auth,
    FaultProxy,
    RegistryError,
    RegistryServer,
    free_port,
    missing_tools,
    start_registry,
)

USER, PASSWORD = "alice", "correct horse battery staple"
RESUME_SIZE = 4 << 20
"""Bytes of the layer the resume test cuts in half: a few chunks, little CPU."""


@contextlib.contextmanager
def _registry(base: Path, auth: Auth | None = None, proxy: bool = False) -> Iterator[RegistryServer]:
    """``start_registry`` for a fixture: skipped without the tools, a failure (not an error) when it breaks."""
    if (reason := missing_tools()) is not None:
        pytest.skip(reason)
    try:
        with start_registry(base, auth=auth, users={USER: PASSWORD}, proxy=proxy) as server:
            yield server
    except RegistryError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every small test image, by tag, in one OCI layout."""
    base = tmp_path_factory.mktemp("layout")
    return images.write_layout(base / "oci", {
        "busybox": images.busybox(base, cmd=("echo", "single")),
        "echo": images.busybox(base, cmd=("echo", "private")),
        "platforms": images.platforms(base),
        "multi-layer": images.multi_layer(base),
        "resume": images.incompressible("resume", RESUME_SIZE),
        # Stopped by SIGUSR1 (its StopSignal), which the trap turns into exit status 42.
        "configured": images.busybox(base, cmd=("sh", "-c", "trap 'exit 42' USR1; pwd; while :; do sleep 1; done"),
                                     config=(("StopSignal", "SIGUSR1"), ("WorkingDir", "/etc"),
                                             ("User", "nobody"), ("Labels", {"team": "images"}),
                                             ("ExposedPorts", {"8080/tcp": {}}))),
        **{f"evil-{name}": images.malicious(name) for name in images.MALICIOUS},
    })


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[RegistryServer]:
    """The anonymous registry with every small image pushed; its fault proxy is the ``proxy`` fixture's."""
    with _registry(tmp_path_factory.mktemp("registry"), proxy=True) as server:
        for tag, name in [("busybox", "test/busybox:1"), ("platforms", "test/platforms:1"),
                          ("platforms", "test/platforms-run:1"), ("multi-layer", "test/multi-layer:1"),
                          ("echo", "test/notpulled:1"), ("echo", "retry/app:1"), ("resume", "resume/big:1"),
                          ("configured", "test/configured:1"),
                          *[(f"evil-{name}", f"evil/{name}:1") for name in images.MALICIOUS]]:
            server.push(layout, tag, name)
        yield server


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """The fault proxy in front of ``registry``, with no fault left pending after the test."""
    assert registry.proxy is not None
    registry.proxy.reset()
    yield registry.proxy
    registry.proxy.reset()


@pytest.fixture(scope="session", params=["htpasswd", "token"])
def private(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            layout: Path) -> Iterator[RegistryServer]:
    """A registry that wants ``USER``'s password (htpasswd, or Bearer tokens), ``private/app:1`` on it."""
    kind = request.param
    with _registry(tmp_path_factory.mktemp(f"registry-{kind}"), auth=kind) as server:
        server.push(layout, "echo", "private/app:1", creds=(USER, PASSWORD))
        yield server


@pytest.fixture(scope="session")
def debian_ref(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``ADDR/debian:bookworm``: a minbase by mmdebstrap (cached across runs) pushed to ``registry``."""
    try:
        tarball = images.debian_tarball("bookworm", "minbase")
    except images.ImageBuildError as err:
        pytest.fail(str(err))
    base = tmp_path_factory.mktemp("debian")
    registry.push(images.write_layout(base / "oci", {"bookworm": images.debian(tarball)}), "bookworm",
                  "debian:bookworm")
    return f"{registry.address}/debian:bookworm"


def _digest(result: subprocess.CompletedProcess[str]) -> str:
    [digest] = [line.removeprefix("Digest: ") for line in lines(result.stdout) if line.startswith("Digest: ")]
    return digest


def _one_line(result: subprocess.CompletedProcess[str], status: int = 125) -> str:
    """The single ``hyper: ...`` line a failed command printed, checking its exit status."""
    assert result.returncode == status, f"status {result.returncode}, stderr: {result.stderr}"
    [line] = lines(result.stderr)
    assert line.startswith("hyper: "), line
    return line


def _image_list(hyper: Hyper) -> list[str]:
    result = hyper("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert result.returncode == 0, result.stderr
    return sorted(lines(result.stdout))


def _architecture(hyper: Hyper, ref: str) -> str:
    result = hyper("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ref)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# ---------------------------------------------------------------------------------------------
# Pull and run


def test_pull_then_images_and_run(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/busybox:1"
    result = hyper("pull", ref)
    assert result.returncode == 0, result.stderr
    assert f"Status: Downloaded newer image for {ref}" in lines(result.stdout)
    assert _digest(result).startswith("sha256:")
    listing = hyper("images")
    assert any(row.split()[:2] == [f"{registry.address}/test/busybox", "1"] for row in lines(listing.stdout))
    run = hyper("run", "--rm", ref)
    assert (run.returncode, run.stdout, run.stderr) == (0, "single\n", "")
    again = hyper("pull", ref)
    assert again.returncode == 0, again.stderr
    assert f"Status: Image is up to date for {ref}" in lines(again.stdout)


def test_pull_by_digest(hyper: Hyper, registry: RegistryServer) -> None:
    tagged = hyper("pull", f"{registry.address}/test/busybox:1")
    assert tagged.returncode == 0, tagged.stderr
    ref = f"{registry.address}/test/busybox@{_digest(tagged)}"
    result = hyper("pull", ref)
    assert result.returncode == 0, result.stderr
    assert _digest(result) == _digest(tagged)
    assert _architecture(hyper, ref) == "linux/amd64"


def test_layers_apply_in_order_with_whiteouts_and_links(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/multi-layer:1"
    pulled = hyper("pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    run = hyper("run", "--rm", ref, "sh", "-c", images.MULTI_LAYER_SCRIPT)
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout == images.MULTI_LAYER_EXPECTED


def test_run_selects_amd64_from_an_index(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/platforms-run:1"
    result = hyper("pull", ref)
    assert result.returncode == 0, result.stderr
    run = hyper("run", "--rm", ref)
    assert (run.returncode, run.stdout) == (0, "amd64\n"), run.stderr


def test_platform_option_picks_the_manifest(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/platforms:1"
    arm = hyper("pull", "--platform", "linux/arm64", ref)
    assert arm.returncode == 0, arm.stderr
    assert _architecture(hyper, ref) == "linux/arm64"
    default = hyper("pull", ref)
    assert default.returncode == 0, default.stderr
    assert _architecture(hyper, ref) == "linux/amd64"


def test_run_pulls_an_image_it_does_not_have(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/notpulled:1"
    run = hyper("run", "--rm", ref, "echo", "hi")
    assert (run.returncode, run.stdout) == (0, "hi\n"), run.stderr
    assert f"Unable to find image '{ref}' locally" in lines(run.stderr)


def test_run_of_an_image_no_registry_has_is_125(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/nosuchimage:1"
    run = hyper("run", "--rm", ref, "echo", "hi")
    assert (run.returncode, run.stdout) == (125, "")
    assert lines(run.stderr)[0] == f"Unable to find image '{ref}' locally"
    assert lines(run.stderr)[-1].startswith("hyper: ") and "test/nosuchimage" in lines(run.stderr)[-1]


def test_run_honours_the_image_config(hyper: Hyper, registry: RegistryServer) -> None:
    ref = f"{registry.address}/test/configured:1"
    started = hyper("run", "-d", "--name", "configured", ref)
    assert started.returncode == 0, started.stderr
    fmt = "{{.Config.WorkingDir}} {{.Config.User}} {{.Config.StopSignal}} {{json .Config.Labels}} " \
          "{{json .Config.ExposedPorts}}"
    inspected = hyper("inspect", "--format", fmt, "configured")
    assert inspected.stdout == '/etc nobody SIGUSR1 {"team":"images"} {"8080/tcp":{}}\n', inspected.stderr
    wait_for(lambda: hyper("logs", "configured").stdout == "/etc\n", 30, "the container to print its directory")
    assert hyper("stop", "configured").returncode == 0
    waited = hyper("wait", "configured")
    assert waited.stdout == "42\n", waited.stderr
    assert hyper("rm", "configured").returncode == 0


def test_debian_minbase_runs(hyper: Hyper, debian_ref: str) -> None:
    pulled = hyper("pull", debian_ref)
    assert pulled.returncode == 0, pulled.stderr
    run = hyper("run", "--rm", debian_ref, "bash", "-c", "cat /etc/os-release && apt-get --version")
    assert run.returncode == 0, run.stderr
    assert 'VERSION_CODENAME=bookworm' in lines(run.stdout)
    assert any(line.startswith("apt ") for line in lines(run.stdout)), run.stdout


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("name", sorted(images.MALICIOUS))
def test_layer_writing_outside_the_root_is_refused(hyper: Hyper, registry: RegistryServer, name: str) -> None:
    entry = images.MALICIOUS[name][0]
    before = _image_list(hyper)
    line = _one_line(hyper("pull", f"{registry.address}/evil/{name}:1"))
    assert entry in line
    assert _image_list(hyper) == before


def test_unknown_tag_is_one_line_naming_it(hyper: Hyper, registry: RegistryServer) -> None:
    line = _one_line(hyper("pull", f"{registry.address}/test/busybox:nosuchtag"))
    assert line == f"hyper: manifest unknown: registry {registry.address} has no test/busybox:nosuchtag"
    assert "nosuchtag" not in hyper("images").stdout


def test_unknown_repository_is_one_line_naming_it(hyper: Hyper, registry: RegistryServer) -> None:
    # docker-registry 2.8 answers MANIFEST_UNKNOWN, not NAME_UNKNOWN, for a repository it never saw.
    line = _one_line(hyper("pull", f"{registry.address}/no/such/repo:1"))
    assert line == f"hyper: manifest unknown: registry {registry.address} has no no/such/repo:1"


def test_registry_not_listening_is_one_line(hyper: Hyper) -> None:
    address = f"127.0.0.1:{free_port()}"
    line = _one_line(hyper("pull", f"{address}/test/busybox:1"))
    assert line == f"hyper: cannot reach registry {address}: Connection refused"


# ---------------------------------------------------------------------------------------------
# Faults on the way


def test_pull_retries_after_503(hyper: Hyper, registry: RegistryServer, proxy: FaultProxy) -> None:
    proxy.fail_next(2)
    result = hyper("pull", f"{proxy.address}/retry/app:1")
    assert result.returncode == 0, result.stderr
    assert proxy.injected() == 2
    assert any(seen.path.startswith("/v2/retry/app/manifests/") for seen in proxy.requests())


def test_pull_resumes_a_cut_layer(hyper: Hyper, registry: RegistryServer, proxy: FaultProxy, layout: Path) -> None:
    [layer] = images.layers_of(layout, "resume")
    digest, size = str(layer["digest"]), int(str(layer["size"]))
    proxy.cut_blob(digest, size // 2)
    result = hyper("pull", f"{proxy.address}/resume/big:1")
    assert result.returncode == 0, result.stderr
    fetches = proxy.requests(digest)
    assert fetches[0].cut, fetches
    resumed = [seen.range for seen in fetches[1:]]
    assert any(r.startswith("bytes=") and not r.startswith("bytes=0-") for r in resumed), fetches


# ---------------------------------------------------------------------------------------------
# Logins


def _login(hyper: Hyper, config: Path, server: str, password: str) -> subprocess.CompletedProcess[str]:
    """``hyper login`` with the password on standard input, as a script would do it."""
    return subprocess.run([hyper.daemon.cli, "login", "--username", USER, "--password-stdin", server],
                          input=f"{password}\n", capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
                          env=hyper.daemon.cli_env({"HYPER_CONFIG": str(config)}))


def test_login_pull_logout(hyper: Hyper, private: RegistryServer, tmp_path: Path) -> None:
    config = tmp_path / "hyper-config"
    env = {"HYPER_CONFIG": str(config)}
    ref = f"{private.address}/private/app:1"

    anonymous = _one_line(hyper("pull", ref, env=env))
    assert "private/app" in anonymous and private.address in anonymous

    wrong = _one_line(_login(hyper, config, private.address, "wrong password"))
    assert "unauthorized" in wrong
    assert not (config / "config.json").exists() or private.address not in (config / "config.json").read_text()

    login = _login(hyper, config, private.address, PASSWORD)
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in lines(login.stdout)
    saved = config / "config.json"
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    assert private.address in saved.read_text()

    pulled = hyper("pull", ref, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Status: Downloaded newer image for {ref}" in lines(pulled.stdout)

    logout = hyper("logout", private.address, env=env)
    assert logout.returncode == 0, logout.stderr
    assert private.address not in saved.read_text()
    after = _one_line(hyper("pull", ref, env=env))
    assert "private/app" in after


def test_registries_refuse_a_wrong_password(private: RegistryServer, layout: Path) -> None:
    """The test registries themselves: skopeo with a wrong password, or none, cannot push."""
    for creds in [(USER, "wrong password"), None]:
        with pytest.raises(RegistryError, match=r"unauthorized|denied"):
            private.push(layout, "echo", "private/refused:1", creds=creds)


# ---------------------------------------------------------------------------------------------
# A full disk


FULL_DISK_SIZE = 24 << 20
"""Bytes of the tmpfs the daemon's root lives on in the full-disk test: room for a small pull, not a big one."""


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A daemon root on a tmpfs of its own, so that a pull can fill it without touching the host's disk."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_SIZE},mode=0700", "tmpfs", str(mountpoint)],
                   check=True, timeout=CLI_TIMEOUT)
    try:
        yield mountpoint / "root"
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=CLI_TIMEOUT)


def test_a_full_disk_fails_the_pull_in_one_line_and_keeps_the_store_whole(
        make_daemon: DaemonFactory, registry: RegistryServer, small_root: Path, tmp_path: Path) -> None:
    base = tmp_path / "big"
    registry.push(images.write_layout(base, {"big": images.incompressible("full-disk", 2 * FULL_DISK_SIZE)}),
                  "big", "full/big:1")
    daemon = make_daemon(root=small_root)
    hyper = Hyper(daemon)
    line = _one_line(hyper("pull", f"{registry.address}/full/big:1"))
    assert "no space left on device" in line, line
    assert hyper("images", "-q").stdout == ""
    blobs = small_root / "images" / "blobs" / "sha256"
    assert not [entry.name for entry in blobs.iterdir() if entry.name.startswith((".partial-", ".tmp-"))]
    # The space is given back: a pull that fits works.
    pulled = hyper("pull", f"{registry.address}/test/busybox:1")
    assert pulled.returncode == 0, pulled.stderr
    run = hyper("run", "--rm", f"{registry.address}/test/busybox:1")
    assert (run.returncode, run.stdout) == (0, "single\n"), run.stderr
