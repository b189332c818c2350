"""Watching containers: top, stats and the event stream."""

from __future__ import annotations

import json
import subprocess
import time

from tests.integration.conftest import CLI_TIMEOUT, Hyper, wait_for

BUSY = "sleep 600 & while true; do :; done"


def test_top_lists_the_containers_processes(hyper: Hyper) -> None:
    assert hyper("run", "-d", "--name", "busy", "busybox", "sh", "-c", BUSY).returncode == 0
    wait_for(lambda: "sleep 600" in hyper("top", "busy").stdout, 60, "the processes to show")
    lines = hyper("top", "busy").stdout.splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "STIME", "TIME", "CMD"]
    rows = {line.split(None, 5)[5]: line.split() for line in lines[1:]}
    assert rows["sleep 600"][1:3] == ["3", "2"]  # pid and parent pid inside the container
    assert rows[f"sh -c {BUSY}"][1:3] == ["2", "1"]
    stopped = hyper("top", "nosuch")
    assert stopped.returncode == 125 and "No such container" in stopped.stderr


def test_stats_count_the_containers_usage(hyper: Hyper) -> None:
    assert hyper("run", "-d", "--name", "burner", "busybox", "sh", "-c", BUSY).returncode == 0
    assert hyper("run", "-d", "--name", "idler", "busybox", "sleep", "600").returncode == 0
    time.sleep(2)
    got = hyper("stats", "--no-stream", "burner", "idler")
    assert got.returncode == 0, got.stderr
    header, *rows = got.stdout.splitlines()
    assert header.split()[:3] == ["CONTAINER", "ID", "NAME"]
    by_name = {row.split()[1]: row.split() for row in rows}
    burner, idler = float(by_name["burner"][2].rstrip("%")), float(by_name["idler"][2].rstrip("%"))
    assert burner > 30 and idler < 10, got.stdout  # a busy loop against a sleep, as the guest counts them
    assert by_name["burner"][-4] == "3" and by_name["idler"][-4] == "2", got.stdout  # PIDS: reaper included


def test_events_stream_and_history(hyper: Hyper) -> None:
    since = time.time()
    follower = subprocess.Popen([hyper.daemon.cli, "events", "--filter", "container=watched", "--format",
                                 "{{.Action}}"], stdout=subprocess.PIPE, text=True, env=hyper.daemon.cli_env())
    try:
        time.sleep(1)
        assert hyper("run", "--name", "watched", "busybox", "sh", "-c", "exit 3").returncode == 3
        assert hyper("rm", "watched").returncode == 0
        seen: list[str] = []
        assert follower.stdout is not None
        while "destroy" not in seen:
            seen.append(follower.stdout.readline().strip())
        assert seen == ["create", "start", "die", "destroy"]
    finally:
        follower.kill()
        follower.wait()
    history = subprocess.run([hyper.daemon.cli, "events", "--since", str(since), "--until", str(time.time() + 1),
                              "--filter", "event=die", "--format", "{{json .}}"], capture_output=True, text=True,
                             env=hyper.daemon.cli_env(), timeout=CLI_TIMEOUT, check=False)
    died = [json.loads(line) for line in history.stdout.splitlines()]
    mine = [e for e in died if e["Actor"]["Attributes"].get("name") == "watched"]
    assert len(mine) == 1 and mine[0]["Actor"]["Attributes"]["exitCode"] == "3", history.stdout
    bad = hyper("events", "--since", "yesterday-ish")
    assert bad.returncode == 125 and "invalid time" in bad.stderr
