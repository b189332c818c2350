"""The process flags of run (ulimits, sysctls, labels, stop signal and timeout, env files, init)
and pause/unpause, which freezes the whole VM."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.integration.conftest import Hyper, wait_for

TICK = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"


def test_ulimits_and_sysctls(hyper: Hyper) -> None:
    got = hyper("run", "--rm", "--ulimit", "nofile=100:200", "--ulimit", "core=0", "busybox", "sh", "-c",
                "ulimit -n; ulimit -Hn; ulimit -c")
    assert got.stdout.split() == ["100", "200", "0"], got.stderr
    got = hyper("run", "--rm", "--sysctl", "kernel.shmmax=123456", "busybox", "cat", "/proc/sys/kernel/shmmax")
    assert got.stdout == "123456\n", got.stderr
    refused = hyper("run", "--rm", "--sysctl", "kernel.hostname=x", "busybox", "true")
    assert refused.returncode == 125 and "sysctl 'kernel.hostname' is not allowed" in refused.stderr
    bad = hyper("run", "--rm", "--ulimit", "nofiles=1", "busybox", "true")
    assert bad.returncode == 125 and "unknown name" in bad.stderr


def test_labels_env_file_and_init(hyper: Hyper, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nGREETING=hello there\n")
    result = hyper("run", "-d", "--name", "labelled", "-l", "team=db", "--env-file", str(env_file), "--init",
                   "busybox", "sleep", "600")
    assert result.returncode == 0, result.stderr
    details = json.loads(hyper("inspect", "labelled").stdout)[0]
    assert details["Config"]["Labels"]["team"] == "db"
    assert "GREETING=hello there" in details["Config"]["Env"]
    assert details["HostConfig"]["Init"] is True
    assert hyper("ps", "--filter", "label=team=db", "--format", "{{.Names}}").stdout == "labelled\n"
    assert hyper("ps", "--filter", "label=team=web", "--format", "{{.Names}}").stdout == ""
    # PID 1 of the container is the reaper, the command is its child.
    assert hyper("exec", "labelled", "sh", "-c", "cat /proc/1/status | grep PPid; pidof sleep").stdout.split()[1:] \
        == ["0", "2"]


def test_stop_signal_and_timeout(hyper: Hyper) -> None:
    result = hyper("run", "-d", "--name", "polite", "--stop-signal", "SIGUSR1", "busybox", "sh", "-c",
                   "trap 'echo got usr1; exit 0' USR1; while true; do sleep 0.1; done")
    assert result.returncode == 0, result.stderr
    assert hyper("stop", "polite").returncode == 0
    assert hyper("inspect", "-f", "{{.State.ExitCode}}", "polite").stdout == "0\n"
    assert "got usr1" in hyper("logs", "polite").stdout
    result = hyper("run", "-d", "--name", "stubborn", "--stop-timeout", "1", "busybox", "sh", "-c",
                   "trap '' TERM; while true; do sleep 0.1; done")
    assert result.returncode == 0, result.stderr
    assert hyper("inspect", "-f", "{{.Config.StopTimeout}}", "stubborn").stdout == "1\n"
    assert hyper("stop", "stubborn").returncode == 0
    assert hyper("inspect", "-f", "{{.State.ExitCode}}", "stubborn").stdout == "137\n"


def test_pause_freezes_the_vm(hyper: Hyper) -> None:
    assert hyper("run", "-d", "--name", "ticker", "busybox", "sh", "-c", TICK).returncode == 0
    wait_for(lambda: "tick 3" in hyper("logs", "ticker").stdout, 60, "the first ticks")
    assert hyper("pause", "ticker").stdout == "ticker\n"
    details = json.loads(hyper("inspect", "ticker").stdout)[0]
    assert (details["State"]["Status"], details["State"]["Paused"]) == ("paused", True)
    assert "(Paused)" in hyper("ps", "--filter", "name=ticker").stdout
    frozen = hyper("logs", "ticker").stdout
    time.sleep(2)
    assert hyper("logs", "ticker").stdout == frozen
    refused = hyper("exec", "ticker", "true")
    assert refused.returncode == 125 and "paused, unpause it first" in refused.stderr
    again = hyper("pause", "ticker")
    assert again.returncode == 125 and "already paused" in again.stderr
    assert hyper("unpause", "ticker").returncode == 0
    wait_for(lambda: len(hyper("logs", "ticker").stdout) > len(frozen), 30, "ticks after unpause")
    assert hyper("pause", "ticker").returncode == 0
    assert hyper("stop", "-t", "1", "ticker").returncode == 0  # a paused container can be stopped
    assert hyper("inspect", "-f", "{{.State.Status}}", "ticker").stdout == "exited\n"
