"""Image commands and logins against a canned hyperd, and the pull progress display they use."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from cli import config, progress
from cli.errors import HyperError
from tests.unit import test_cli
from tests.unit.test_cli import CID, FakeHyperd, Reply, Request, hyper

hyperd = test_cli.hyperd
"""The fake daemon fixture, shared with the container commands' tests."""

DIGEST = "sha256:" + "ab12" * 16
LAYER = "5f70bf18a086"
PULL: list[dict[str, Any]] = [
    {"status": "Pulling from app", "id": "1"},
    {"status": "Pulling fs layer", "id": LAYER},
    {"status": "Downloading", "id": LAYER, "progressDetail": {"current": 500, "total": 1000}},
    {"status": "Download complete", "id": LAYER},
    {"status": "Extracting", "id": LAYER, "progressDetail": {"current": 1000, "total": 1000}},
    {"status": "Pull complete", "id": LAYER},
    {"status": f"Digest: {DIGEST}"},
    {"status": "Status: Downloaded newer image for 127.0.0.1:5000/app:1"},
]
PULL_TEXT = (
    "1: Pulling from app\n"
    f"{LAYER}: Pulling fs layer\n"
    f"{LAYER}: Download complete\n"
    f"{LAYER}: Pull complete\n"
    f"Digest: {DIGEST}\n"
    "Status: Downloaded newer image for 127.0.0.1:5000/app:1\n"
)


def json_lines(*messages: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(message).encode() + b"\n" for message in messages)


@pytest.fixture(autouse=True)
def config_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty hyper and Docker config dirs: no test reads or writes the developer's own logins."""
    (tmp_path / "docker").mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv(config.ENV, str(tmp_path / "hyper"))
    return tmp_path / "hyper"


def registry_auth(request: Request) -> Any:
    header = request.headers.get("X-Registry-Auth")
    return None if header is None else json.loads(base64.urlsafe_b64decode(header))


# progress display


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_prints_status_changes_only() -> None:
    out = io.StringIO()
    summary = progress.show(json_lines(*PULL).splitlines(keepends=True), out)
    assert out.getvalue() == PULL_TEXT
    assert summary == PULL[-2:]


def test_progress_on_a_terminal_redraws_a_layers_line_in_place() -> None:
    out = Terminal()
    messages: list[dict[str, Any]] = [
        {"status": "Pulling fs layer", "id": "aaa"},
        {"status": "Pulling fs layer", "id": "bbb"},
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 500, "total": 1000}},
        {"status": "Pull complete", "id": "bbb"},
    ]
    progress.show(json_lines(*messages).splitlines(), out)
    half = "[" + "=" * 24 + ">" + " " * 25 + "]  500B/1kB"
    assert out.getvalue() == (
        "aaa: Pulling fs layer\n"
        "bbb: Pulling fs layer\n"
        f"\x1b[2A\r\x1b[2Kaaa: Downloading {half}\x1b[2B\r"
        "\x1b[1A\r\x1b[2Kbbb: Pull complete\x1b[1B\r"
    )


def test_progress_error_message_is_raised() -> None:
    stream = json_lines(PULL[0], {"error": "unauthorized: authentication required",
                                  "errorDetail": {"message": "unauthorized: authentication required"}})
    out = io.StringIO()
    with pytest.raises(HyperError) as caught:
        progress.show(stream.splitlines(), out)
    assert caught.value.message == "unauthorized: authentication required"
    assert out.getvalue() == "1: Pulling from app\n"


@pytest.mark.parametrize("line", [b"{not json\n", b"[1, 2]\n"])
def test_progress_malformed_line_is_an_error(line: bytes) -> None:
    with pytest.raises(HyperError, match="malformed progress message"):
        list(progress.messages([json_lines(PULL[0]), line]))


def test_progress_bar() -> None:
    assert progress.bar(0, 1000) == "[" + " " * 50 + "]  0B/1kB"
    assert progress.bar(1000, 1000) == "[" + "=" * 50 + "]  1kB/1kB"
    assert progress.bar(2048, 0) == "2.05kB"


# pull


def test_pull_shows_progress_then_the_reference(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/images/create", Reply(raw=json_lines(*PULL)))
    result = hyper(hyperd, "pull", "127.0.0.1:5000/app:1")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == PULL_TEXT + "127.0.0.1:5000/app:1\n"
    [request] = hyperd.requests
    assert request.query == {"fromImage": "127.0.0.1:5000/app:1"}
    assert "X-Registry-Auth" not in request.headers


def test_pull_defaults_to_latest(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/images/create", Reply(raw=json_lines({"status": "Status: Image is up to date for busybox"})))
    result = hyper(hyperd, "image", "pull", "busybox")
    assert result.exit_code == 0
    assert result.stdout == "Using default tag: latest\nStatus: Image is up to date for busybox\nbusybox:latest\n"
    assert hyperd.requests[0].query == {"fromImage": "busybox:latest"}


def test_pull_sends_the_saved_login_for_its_registry(hyperd: FakeHyperd, tmp_path: Path) -> None:
    directory = tmp_path / "elsewhere"
    password = "??>>~~"  # its standard base64 would have + and /
    config.save(directory, "127.0.0.1:5000", config.Login("alice", password))
    config.save(directory, "ghcr.io", config.Login("bob", "other"))
    hyperd.on("POST", "/images/create", Reply(raw=json_lines(*PULL)))
    assert hyper(hyperd, "--config", str(directory), "pull", "127.0.0.1:5000/app:1").exit_code == 0
    assert registry_auth(hyperd.requests[0]) == {
        "username": "alice", "password": password, "serveraddress": "127.0.0.1:5000",
    }
    assert not set(hyperd.requests[0].headers["X-Registry-Auth"]) & {"+", "/"}  # base64url, as docker sends it
    # No login saved for this registry: nothing sent.
    assert hyper(hyperd, "--config", str(directory), "pull", "127.0.0.1:6000/app:1").exit_code == 0
    assert registry_auth(hyperd.requests[1]) is None


def test_pull_uses_a_docker_login(hyperd: FakeHyperd, tmp_path: Path) -> None:
    auth = base64.b64encode(b"carol:pw").decode()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": auth}}}))
    hyperd.on("POST", "/images/create", Reply(raw=json_lines(*PULL)))
    assert hyper(hyperd, "pull", "127.0.0.1:5000/app:1").exit_code == 0
    assert registry_auth(hyperd.requests[0]) == {
        "username": "carol", "password": "pw", "serveraddress": "127.0.0.1:5000",
    }


def test_pull_error_mid_stream_is_one_line_and_125(hyperd: FakeHyperd) -> None:
    message = "127.0.0.1:5000/app:1: blob sha256:0c4f has the wrong digest"
    stream = json_lines(*PULL[:3], {"error": message, "errorDetail": {"message": message}})
    hyperd.on("POST", "/images/create", Reply(raw=stream))
    result = hyper(hyperd, "pull", "127.0.0.1:5000/app:1")
    assert result.exit_code == 125
    assert result.stderr == f"hyper: {message}\n"
    assert result.stdout == f"1: Pulling from app\n{LAYER}: Pulling fs layer\n"


def test_pull_refused_before_the_stream(hyperd: FakeHyperd) -> None:
    message = "manifest unknown: 127.0.0.1:5000/app:nosuch"
    hyperd.on("POST", "/images/create", Reply(404, {"message": message}))
    result = hyper(hyperd, "pull", "127.0.0.1:5000/app:nosuch")
    assert (result.exit_code, result.stdout, result.stderr) == (125, "", f"hyper: {message}\n")


# login, logout


def test_login_posts_auth_and_saves_the_login(hyperd: FakeHyperd, config_dirs: Path) -> None:
    hyperd.on("POST", "/auth", Reply(200, {"Status": "Login Succeeded"}))
    result = hyper(hyperd, "login", "-u", "alice", "--password-stdin", "127.0.0.1:5000", input=b"s3cret\n")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "Login Succeeded\n", "")
    [request] = hyperd.requests
    assert request.json == {"username": "alice", "password": "s3cret", "serveraddress": "127.0.0.1:5000"}
    path = config_dirs / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"alice:s3cret").decode()}},
    }


def test_login_into_the_config_option_dir(hyperd: FakeHyperd, tmp_path: Path, config_dirs: Path) -> None:
    hyperd.on("POST", "/auth", Reply(200, {"Status": "Login Succeeded"}))
    directory = tmp_path / "chosen"
    args = ("--config", str(directory), "login", "-u", "alice", "--password-stdin", "ghcr.io")
    assert hyper(hyperd, *args, input=b"pw\n").exit_code == 0
    assert config.lookup(directory, "ghcr.io") == config.Login("alice", "pw")
    assert not config_dirs.exists()


def test_failed_login_saves_nothing(hyperd: FakeHyperd, config_dirs: Path) -> None:
    message = "login to 127.0.0.1:5000 failed: unauthorized: incorrect username or password"
    hyperd.on("POST", "/auth", Reply(500, {"message": message}))
    result = hyper(hyperd, "login", "-u", "alice", "--password-stdin", "127.0.0.1:5000", input=b"wrong\n")
    assert (result.exit_code, result.stdout, result.stderr) == (125, "", f"hyper: {message}\n")
    assert not (config_dirs / "config.json").exists()


def test_login_without_a_password_does_not_prompt_off_a_terminal(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "login", "-u", "alice", "127.0.0.1:5000", input=b"")
    assert result.exit_code == 125
    assert result.stderr.startswith("hyper: cannot prompt for a password")
    assert hyperd.requests == []


def test_logout(hyperd: FakeHyperd, config_dirs: Path) -> None:
    config.save(config_dirs, "127.0.0.1:5000", config.Login("alice", "pw"))
    config.save(config_dirs, "ghcr.io", config.Login("bob", "pw"))
    result = hyper(hyperd, "logout", "127.0.0.1:5000")
    assert (result.exit_code, result.stdout) == (0, "Removing login credentials for 127.0.0.1:5000\n")
    assert config.lookup(config_dirs, "127.0.0.1:5000") is None
    assert config.lookup(config_dirs, "ghcr.io") == config.Login("bob", "pw")
    result = hyper(hyperd, "logout", "127.0.0.1:5000")
    assert (result.exit_code, result.stdout) == (0, "Not logged in to 127.0.0.1:5000\n")
    assert hyperd.requests == []


# images


LISTING = [
    {"Id": DIGEST, "RepoTags": ["busybox:latest", "localhost:5000/bb:1"],
     "RepoDigests": ["busybox@sha256:" + "d1" * 32], "Created": 0, "Size": 4_261_550},
    {"Id": "sha256:" + "cd" * 32, "RepoTags": [], "Created": 0, "Size": 512},
]


def test_images_format(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(200, LISTING))
    result = hyper(hyperd, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}")
    assert result.exit_code == 0
    assert result.stdout == (
        "busybox:latest ab12ab12ab12 4.26MB\n"
        "localhost:5000/bb:1 ab12ab12ab12 4.26MB\n"
        "<none>:<none> cdcdcdcdcdcd 512B\n"
    )


def test_images_table_format_has_docker_headers(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(200, LISTING))
    lines = hyper(hyperd, "image", "ls", "--format", r"table {{.ID}}\t{{.Repository}}").stdout.splitlines()
    assert lines == ["IMAGE ID       REPOSITORY", "ab12ab12ab12   busybox",
                     "ab12ab12ab12   localhost:5000/bb", "cdcdcdcdcdcd   <none>"]


def test_images_digests(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(200, LISTING))
    lines = hyper(hyperd, "images", "--digests").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[1].split()[:4] == ["busybox", "latest", "sha256:" + "d1" * 32, "ab12ab12ab12"]
    assert lines[2].split()[:4] == ["localhost:5000/bb", "1", "<none>", "ab12ab12ab12"]


def test_images_quiet_prints_each_id_once(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(200, LISTING))
    assert hyper(hyperd, "images", "-q").stdout == "ab12ab12ab12\ncdcdcdcdcdcd\n"


def test_images_dangling_filter_is_sent(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/json", Reply(200, LISTING[1:]))
    result = hyper(hyperd, "images", "--filter", "dangling=true", "-q")
    assert (result.exit_code, result.stdout) == (0, "cdcdcdcdcdcd\n")
    assert json.loads(hyperd.requests[0].query["filters"]) == {"dangling": ["true"]}


def test_images_unsupported_filter_is_refused(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "images", "--filter", "label=a")
    assert result.exit_code == 125
    assert result.stderr.startswith("hyper: invalid filter 'label=a'")
    assert hyperd.requests == []


# tag, rmi


def test_tag_sends_repo_and_tag(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/images/busybox/tag", Reply(201))
    result = hyper(hyperd, "tag", "busybox", "localhost:5000/bb:v1")
    assert (result.exit_code, result.stdout) == (0, "")
    assert hyperd.requests[0].query == {"repo": "localhost:5000/bb", "tag": "v1"}


def test_rmi_prints_what_went_and_carries_on_after_a_failure(hyperd: FakeHyperd) -> None:
    hyperd.on("DELETE", "/images/old", Reply(200, [{"Untagged": "old:latest"}, {"Deleted": DIGEST}]))
    hyperd.on("DELETE", "/images/used", Reply(409, {"message": "conflict: unable to remove used: in use by web"}))
    hyperd.on("DELETE", "/images/other", Reply(200, [{"Untagged": "other:1"}]))
    result = hyper(hyperd, "rmi", "-f", "old", "used", "other")
    assert result.exit_code == 125
    assert result.stdout == f"Untagged: old:latest\nDeleted: {DIGEST}\nUntagged: other:1\n"
    assert result.stderr == "hyper: conflict: unable to remove used: in use by web\n"
    assert [r.query for r in hyperd.requests] == [{"force": "1"}] * 3


# inspect


IMAGE = {"Id": DIGEST, "RepoTags": ["busybox:latest"], "Config": {"Cmd": ["sh"]}}


def test_image_inspect_format(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/images/busybox/json", Reply(200, IMAGE))
    result = hyper(hyperd, "image", "inspect", "--format", "{{.Id}} {{json .Config.Cmd}}", "busybox")
    assert (result.exit_code, result.stdout) == (0, f'{DIGEST} ["sh"]\n')


def test_inspect_falls_back_to_an_image(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/containers/busybox/json", Reply(404, {"message": "No such container: busybox"}))
    hyperd.on("GET", "/images/busybox/json", Reply(200, IMAGE))
    result = hyper(hyperd, "inspect", "busybox")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [IMAGE]


def test_inspect_neither_container_nor_image(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/containers/nosuch/json", Reply(404, {"message": "No such container: nosuch"}))
    hyperd.on("GET", "/images/nosuch/json", Reply(404, {"message": "No such image: nosuch"}))
    result = hyper(hyperd, "inspect", "nosuch")
    assert result.exit_code == 125
    assert result.stderr == "hyper: No such object: nosuch\n"
    assert json.loads(result.stdout) == []


def test_inspect_container_first(hyperd: FakeHyperd) -> None:
    hyperd.on("GET", "/containers/web/json", Reply(200, {"Id": CID}))
    hyperd.on("GET", "/images/web/json", Reply(200, IMAGE))
    result = hyper(hyperd, "inspect", "--format", "{{.Id}}", "web")
    assert (result.exit_code, result.stdout) == (0, f"{CID}\n")
    assert [r.path for r in hyperd.requests] == ["/containers/web/json"]


# prune


def test_image_prune_force(hyperd: FakeHyperd) -> None:
    answer = {"ImagesDeleted": [{"Untagged": "old:1"}, {"Deleted": DIGEST}], "SpaceReclaimed": 4_261_550}
    hyperd.on("POST", "/images/prune", Reply(200, answer))
    result = hyper(hyperd, "image", "prune", "-f")
    assert result.exit_code == 0
    assert result.stdout == f"Deleted Images:\nuntagged: old:1\ndeleted: {DIGEST}\n\nTotal reclaimed space: 4.26MB\n"
    assert json.loads(hyperd.requests[0].query["filters"]) == {"dangling": ["true"]}


def test_image_prune_asks_first(hyperd: FakeHyperd) -> None:
    result = hyper(hyperd, "image", "prune", input=b"n\n")
    assert result.exit_code == 0
    assert result.stdout.startswith("WARNING! This will remove all dangling images.\n")
    assert hyperd.requests == []


# save, load


def test_save_writes_the_archive(hyperd: FakeHyperd, tmp_path: Path) -> None:
    archive = os.urandom(300_000)
    hyperd.on("GET", "/images/get", Reply(raw=archive))
    out = tmp_path / "out"
    out.mkdir()
    result = hyper(hyperd, "save", "-o", str(out / "busybox.tar"), "busybox")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    assert (out / "busybox.tar").read_bytes() == archive
    assert [p.name for p in out.iterdir()] == ["busybox.tar"]
    assert hyperd.requests[0].query == {"names": "busybox"}


def test_failed_save_leaves_no_file(hyperd: FakeHyperd, tmp_path: Path) -> None:
    hyperd.on("GET", "/images/get", Reply(404, {"message": "No such image: nosuch"}))
    result = hyper(hyperd, "save", "-o", str(tmp_path / "nosuch.tar"), "nosuch")
    assert (result.exit_code, result.stderr) == (125, "hyper: No such image: nosuch\n")
    assert list(tmp_path.iterdir()) == [tmp_path / "docker"]


def test_load_uploads_the_file_and_prints_what_it_loaded(hyperd: FakeHyperd, tmp_path: Path) -> None:
    archive = tmp_path / "images.tar"
    archive.write_bytes(os.urandom(200_000))
    answer = json_lines({"stream": "Loaded image: busybox:latest\n"}, {"stream": "Loaded image: bb:1\n"})
    hyperd.on("POST", "/images/load", Reply(raw=answer))
    result = hyper(hyperd, "load", "-i", str(archive))
    assert (result.exit_code, result.stdout) == (0, "Loaded image: busybox:latest\nLoaded image: bb:1\n")
    assert hyperd.requests[0].body == archive.read_bytes()


def test_load_error_is_one_line(hyperd: FakeHyperd, tmp_path: Path) -> None:
    archive = tmp_path / "images.tar"
    archive.write_bytes(b"not a tar")
    hyperd.on("POST", "/images/load", Reply(raw=json_lines({"error": "archive has no manifest.json or index.json"})))
    result = hyper(hyperd, "load", "-i", str(archive))
    assert (result.exit_code, result.stderr) == (125, "hyper: archive has no manifest.json or index.json\n")


# run pulls a missing image


def test_run_pulls_a_missing_image_then_creates(hyperd: FakeHyperd) -> None:
    answers = iter([Reply(404, {"message": "No such image: x:1"}), Reply(201, {"Id": CID, "Warnings": []})])
    hyperd.on("POST", "/containers/create", lambda request: next(answers))
    hyperd.on("POST", f"/containers/{CID}/start", Reply(204))
    hyperd.on("POST", "/images/create", Reply(raw=json_lines(*PULL)))
    result = hyper(hyperd, "run", "-d", "x:1")
    assert (result.exit_code, result.stdout) == (0, f"{CID}\n")
    assert result.stderr == "Unable to find image 'x:1' locally\n" + PULL_TEXT
    assert [r.path for r in hyperd.requests] == [
        "/containers/create", "/images/create", "/containers/create", f"/containers/{CID}/start",
    ]
    assert hyperd.requests[1].query == {"fromImage": "x:1"}


def test_run_failed_pull_is_one_line_and_125(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/create", Reply(404, {"message": "No such image: x:1"}))
    hyperd.on("POST", "/images/create", Reply(404, {"message": "manifest unknown: x:1"}))
    result = hyper(hyperd, "run", "-d", "x:1")
    assert (result.exit_code, result.stdout) == (125, "")
    assert result.stderr == "Unable to find image 'x:1' locally\nhyper: manifest unknown: x:1\n"
    assert len(hyperd.seen("POST", "/containers/create")) == 1


def test_run_other_404_does_not_pull(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/create", Reply(404, {"message": "No such network: nope"}))
    result = hyper(hyperd, "run", "-d", "x:1")
    assert (result.exit_code, result.stderr) == (125, "hyper: No such network: nope\n")
    assert hyperd.seen("POST", "/images/create") == []


def test_run_pull_always_pulls_before_creating(hyperd: FakeHyperd) -> None:
    hyperd.on("POST", "/containers/create", Reply(201, {"Id": CID, "Warnings": []}))
    hyperd.on("POST", f"/containers/{CID}/start", Reply(204))
    hyperd.on("POST", "/images/create", Reply(raw=json_lines(*PULL)))
    result = hyper(hyperd, "run", "-d", "--pull", "always", "127.0.0.1:5000/app:1")
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"{CID}\n", PULL_TEXT)
    assert [r.path for r in hyperd.requests][:2] == ["/images/create", "/containers/create"]
