"""Restart policies: after an exit, after the VM is killed, and when the daemon starts again."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from tests.integration.conftest import DaemonFactory, Hyper, wait_for

RESTART_TIMEOUT = 90.0
"""Seconds for a few restarts (a boot is ~2.5 s under TCG, the back-off starts at 0.1 s)."""


def state(hyper: Hyper, name: str) -> dict[str, Any]:
    result = hyper("inspect", name)
    assert result.returncode == 0, result.stderr
    details: dict[str, Any] = json.loads(result.stdout)[0]
    return details


def test_on_failure_gives_up_after_its_count(hyper: Hyper) -> None:
    result = hyper("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3")
    assert result.returncode == 0, result.stderr

    def settled() -> bool:
        details = state(hyper, "flaky")
        return details["RestartCount"] == 2 and details["State"]["Status"] == "exited" \
            and not details["State"]["Restarting"]

    wait_for(settled, RESTART_TIMEOUT, "two restarts, then rest")
    details = state(hyper, "flaky")
    assert details["State"]["ExitCode"] == 3
    assert details["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}


def test_always_restarts_until_stopped(hyper: Hyper) -> None:
    assert hyper("run", "-d", "--name", "loop", "--restart", "always", "busybox", "sh", "-c", "sleep 1").returncode == 0
    wait_for(lambda: state(hyper, "loop")["RestartCount"] >= 2, RESTART_TIMEOUT, "two restarts")
    assert hyper("stop", "loop").returncode == 0
    wait_for(lambda: state(hyper, "loop")["State"]["Status"] == "exited", RESTART_TIMEOUT, "the stop")
    count = state(hyper, "loop")["RestartCount"]
    details = state(hyper, "loop")
    assert not details["State"]["Restarting"] and details["RestartCount"] == count
    assert "Restarting" not in hyper("ps", "-a", "--filter", "name=loop").stdout


def test_a_killed_vm_is_restarted(hyper: Hyper) -> None:
    for name, policy in (("survivor", "unless-stopped"), ("mortal", "no")):
        assert hyper("run", "-d", "--name", name, "--restart", policy, "busybox", "sleep", "600").returncode == 0
    pids = {name: state(hyper, name)["State"]["Pid"] for name in ("survivor", "mortal")}
    for pid in pids.values():
        assert pid > 0
        os.kill(pid, signal.SIGKILL)  # the pod's QEMU, a child of our daemon

    def back() -> bool:
        details = state(hyper, "survivor")
        return details["State"]["Running"] and details["State"]["Pid"] not in (0, pids["survivor"])

    wait_for(back, RESTART_TIMEOUT, "the survivor's new VM")
    assert state(hyper, "survivor")["RestartCount"] == 1
    mortal = state(hyper, "mortal")
    assert (mortal["State"]["Status"], mortal["State"]["ExitCode"], mortal["RestartCount"]) == ("exited", 137, 0)


def test_policies_when_the_daemon_starts_again(make_daemon: DaemonFactory) -> None:
    daemon = make_daemon()
    hyper = Hyper(daemon)
    try:
        for name, policy in (("always", "always"), ("unless", "unless-stopped"), ("stopped", "unless-stopped"),
                             ("failing", "on-failure"), ("never", "no")):
            result = hyper("run", "-d", "--name", name, "--restart", policy, "busybox", "sleep", "600")
            assert result.returncode == 0, result.stderr
        assert hyper("stop", "-t", "0", "stopped").returncode == 0
        daemon.stop()
        daemon.start()

        def resumed() -> bool:
            return all(state(hyper, name)["State"]["Running"] for name in ("always", "unless", "failing"))

        wait_for(resumed, RESTART_TIMEOUT, "the containers whose policy restarts them")
        for name in ("stopped", "never"):
            assert state(hyper, name)["State"]["Status"] == "exited", name
    finally:
        hyper.cleanup()


def test_rm_conflicts_with_a_restart_policy(hyper: Hyper) -> None:
    got = hyper("run", "--rm", "--restart", "always", "busybox", "true")
    assert (got.returncode, got.stderr) == (125, "hyper: conflicting options: --restart and --rm\n")
    bad = hyper("run", "-d", "--restart", "sometimes", "busybox", "true")
    assert bad.returncode == 125 and "invalid restart policy" in bad.stderr
