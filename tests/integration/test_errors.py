"""What a user sees when a request cannot succeed: exit 125 and one ``hyper: ...`` line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.conftest import Hyper, lines


def _one_line(stderr: str) -> str:
    [line] = lines(stderr)
    assert line.startswith("hyper: "), line
    return line


def test_unknown_image(hyper: Hyper) -> None:
    # --pull never: without it hyper would ask Docker Hub, and tests talk to loopback only.
    result = hyper("run", "--rm", "--pull", "never", "nosuchimage", "true")
    assert result.returncode == 125
    assert "No such image" in _one_line(result.stderr)
    assert "nosuchimage" in result.stderr
    assert hyper("ps", "-aq").stdout == ""


def test_unknown_flag(hyper: Hyper) -> None:
    result = hyper("run", "--bogus", "busybox", "true")
    assert result.returncode == 125
    assert lines(result.stderr)[0] == "hyper: unknown flag: --bogus"
    assert hyper("ps", "-aq").stdout == ""


def test_env_naming_an_unset_variable(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "-e", "HYPER_TEST_UNSET", "busybox", "true", env={"HYPER_TEST_UNSET": None})
    assert result.returncode == 125
    assert "HYPER_TEST_UNSET" in _one_line(result.stderr)
    assert hyper("ps", "-aq").stdout == ""


def test_name_in_use(hyper: Hyper) -> None:
    first = hyper("run", "--name", "taken", "busybox", "true")
    assert first.returncode == 0, first.stderr
    second = hyper("run", "--name", "taken", "busybox", "echo", "not run")
    assert (second.returncode, second.stdout) == (125, "")
    assert "taken" in _one_line(second.stderr)
    assert len(hyper("ps", "-aq").stdout.split()) == 1


@pytest.mark.parametrize("socket_kind", ["missing", "stale"])
def test_daemon_not_running(hyper: Hyper, tmp_path: Path, socket_kind: str) -> None:
    path = tmp_path / "hyperd.sock"
    if socket_kind == "stale":
        # A socket file nobody listens on, as a killed daemon leaves behind.
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    result = hyper("-H", f"unix://{path}", "ps")
    assert (result.returncode, result.stdout) == (125, "")
    line = _one_line(result.stderr)
    assert "is it running" in line
    assert str(path) in line


@pytest.mark.parametrize("command", ["stop", "rm", "logs", "inspect"])
def test_missing_container(hyper: Hyper, command: str) -> None:
    result = hyper(command, "nosuchcontainer")
    assert result.returncode == 125
    # inspect looks for an image of that name too, as docker's does.
    missing = "object" if command == "inspect" else "container"
    assert f"No such {missing}: nosuchcontainer" in result.stderr
    assert sum(line.startswith("hyper: ") for line in lines(result.stderr)) == 1


def test_import_of_a_file_that_is_not_a_tarball(hyper: Hyper) -> None:
    before = hyper("images")
    assert before.returncode == 0, before.stderr
    result = hyper("import", "/etc/hostname", "broken:1")
    assert (result.returncode, result.stdout) == (125, "")
    _one_line(result.stderr)
    after = hyper("images")
    assert (after.returncode, after.stdout) == (0, before.stdout)
    assert "broken" not in after.stdout
