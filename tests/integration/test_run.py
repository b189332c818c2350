"""``hyper run`` in the foreground: output, exit statuses, and the options a user passes."""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import Hyper, lines


def test_run_rm_prints_output_and_leaves_nothing(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "busybox", "echo", "hello")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\n", "")
    assert hyper("ps", "-aq").stdout == ""
    assert not hyper.daemon.qemus()


@pytest.mark.parametrize(("command", "status"), [
    pytest.param(["sh", "-c", "exit 7"], 7, id="exit-7"),
    pytest.param(["sh", "-c", "kill -9 $$"], 137, id="sigkill"),
    pytest.param(["sh", "-c", "kill -15 $$"], 143, id="sigterm"),
])
def test_exit_status_is_the_containers(hyper: Hyper, command: list[str], status: int) -> None:
    result = hyper("run", "--rm", "busybox", *command)
    assert (result.returncode, result.stdout, result.stderr) == (status, "", "")
    assert hyper("ps", "-aq").stdout == ""


def test_command_not_found_is_127_with_one_line(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "busybox", "nosuchcmd")
    assert result.returncode == 127
    assert result.stdout == ""
    [line] = lines(result.stderr)
    assert line.startswith("hyper: ")
    assert "nosuchcmd" in line
    assert "executable file not found" in line
    assert hyper("ps", "-aq").stdout == ""
    assert not hyper.daemon.qemus()


def test_command_not_executable_is_126_with_one_line(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "busybox", "/etc/passwd")
    assert result.returncode == 126
    assert result.stdout == ""
    [line] = lines(result.stderr)
    assert line.startswith("hyper: ")
    assert "/etc/passwd" in line
    assert "permission denied" in line
    assert hyper("ps", "-aq").stdout == ""


def test_stdout_and_stderr_are_kept_apart(hyper: Hyper) -> None:
    command = ["sh", "-c", "echo out; echo err >&2; echo out2; echo err2 >&2"]
    result = hyper("run", "--name", "streams", "busybox", *command)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\nout2\n", "err\nerr2\n")
    # The log keeps them apart too.
    logs = hyper("logs", "streams")
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "out\nout2\n", "err\nerr2\n")


def test_long_output_arrives_whole_and_in_order(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "busybox", "seq", "1", "20000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"{n}\n" for n in range(1, 20001))


def test_short_runs_never_lose_their_output(hyper: Hyper) -> None:
    # Hyper (the original) lost the output of ~4% of short runs: the exit raced the output.
    outputs = [hyper("run", "--rm", "busybox", "echo", "x") for _ in range(5)]
    assert [(r.returncode, r.stdout, r.stderr) for r in outputs] == [(0, "x\n", "")] * 5


def test_env_adds_to_the_image_env(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "-e", "FOO=bar", "-e", "FROM_HOST", "busybox", "env",
                   env={"FROM_HOST": "copied"})
    assert result.returncode == 0, result.stderr
    env = lines(result.stdout)
    assert "FOO=bar" in env
    assert "FROM_HOST=copied" in env
    assert any(re.fullmatch(r"PATH=\S*/bin\S*", line) for line in env), env


def test_workdir(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "-w", "/tmp", "busybox", "pwd")
    assert (result.returncode, result.stdout) == (0, "/tmp\n"), result.stderr


def test_entrypoint_replaces_the_images(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "--entrypoint", "echo", "busybox", "hi")
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_user(hyper: Hyper) -> None:
    result = hyper("run", "--rm", "-u", "nobody", "busybox", "id", "-u")
    assert (result.returncode, result.stdout) == (0, "65534\n"), result.stderr


def test_hostname_is_the_short_id(hyper: Hyper) -> None:
    started = hyper("run", "-d", "busybox", "hostname")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), started.stdout
    waited = hyper("wait", cid)
    assert (waited.returncode, waited.stdout) == (0, "0\n"), waited.stderr
    logs = hyper("logs", cid)
    assert (logs.returncode, logs.stdout) == (0, f"{cid[:12]}\n"), logs.stderr
