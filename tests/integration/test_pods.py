"""Pods: several containers in one VM, from a spec file, talking over localhost."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from tests.integration.conftest import DaemonFactory, Hyper, lines, ps_row, wait_for

PAGE = "<h1>served from a pod</h1>\n"


def inspect(hyper: Hyper, *args: str) -> list[dict[str, Any]]:
    got = hyper(*args)
    assert got.returncode == 0, got.stderr
    return list(json.loads(got.stdout))


def write_spec(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(spec))
    return path


def three_tier(name: str) -> dict[str, Any]:
    """A web server, a sink and a client that fetches from the one and sends to the other, all on localhost."""
    fetch = ("i=0; until wget -q -O /tmp/page http://localhost:8080/; do i=$((i+1)); [ $i -lt 600 ] || exit 9; "
             "sleep 0.1; done; i=0; until nc localhost 9000 < /tmp/page; do i=$((i+1)); [ $i -lt 600 ] || exit 8; "
             "sleep 0.1; done")
    return {
        "id": name,
        "hostname": "shop",
        "resources": {"vcpus": 1, "memory": "384m"},
        "files": [{"name": "index", "content": PAGE}],
        "containers": [
            {"name": "web", "image": "busybox", "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
             "files": [{"name": "index", "path": "/www/index.html"}]},
            {"name": "sink", "image": "busybox", "command": ["sh", "-c", "nc -l -p 9000"]},
            {"name": "client", "image": "busybox", "command": ["sh", "-c", fetch]},
        ],
    }


def test_a_pod_of_three_containers_talks_over_localhost(hyper: Hyper, tmp_path: Path) -> None:
    name = f"shop{secrets.token_hex(3)}"
    created = hyper("pod", "create", "-f", str(write_spec(tmp_path, three_tier(name))))
    assert created.returncode == 0, created.stderr
    pod_id = created.stdout.strip()
    try:
        rows = [json.loads(line) for line in hyper("pod", "ls", "--format", "json").stdout.splitlines()]
        (listed,) = [p for p in rows if p["ID"] == pod_id[:12]]
        assert (listed["Name"], listed["Status"], listed["Containers"]) == (name, "created", "3")
        assert hyper("pod", "start", name).returncode == 0
        assert hyper("wait", f"{name}-client").stdout == "0\n"
        assert hyper("wait", f"{name}-sink").stdout == "0\n"
        assert hyper("logs", f"{name}-sink").stdout == PAGE
        # One VM for the three, each container with its own root and cgroup.
        web = inspect(hyper, "inspect", f"{name}-web")[0]
        assert web["State"]["Running"] and web["Config"]["Hostname"] == "shop"
        (details,) = inspect(hyper, "pod", "inspect", name)
        assert details["Status"] == "running" and details["VMPid"] == web["State"]["Pid"]
        assert sorted(c["Name"] for c in details["Containers"]) == [f"{name}-{c}" for c in ("client", "sink", "web")]
        # Its own cgroup, the root of its cgroup namespace; a process there from another PID
        # namespace (another container's) would be listed as 0.
        seen = hyper("exec", f"{name}-web", "sh", "-c", "cat /www/index.html; ls /tmp; cat /proc/self/cgroup; "
                     "grep -cx 0 /sys/fs/cgroup/cgroup.procs; echo x > /www/index.html")
        assert seen.stdout.startswith(PAGE) and "page" not in seen.stdout, seen.stdout
        assert seen.stdout[len(PAGE):] == "0::/\n0\n", seen.stdout
        assert "Read-only file system" in seen.stderr  # an injected file is read-only
        ps = hyper("ps")
        assert ps.stdout.splitlines()[0].split()[-2:] == ["POD", "NAMES"], ps.stdout
        assert ps_row(ps.stdout, f"{name}-web").split()[-2] == name
        assert hyper("pod", "stop", "-t", "1", name).returncode == 0
        assert inspect(hyper, "pod", "inspect", name)[0]["Status"] == "exited"
        hyper.daemon.wait_no_qemu()
    finally:
        removed = hyper("pod", "rm", "-f", name)
    assert removed.returncode == 0, removed.stderr
    assert all(f"{name}-" not in line for line in hyper("ps", "-a").stdout.splitlines())
    assert hyper("pod", "inspect", name).returncode == 125


def test_run_pod_joins_a_running_pod(hyper: Hyper, tmp_path: Path) -> None:
    name = f"joined{secrets.token_hex(3)}"
    spec = {"id": name, "containers": [{"name": "web", "image": "busybox",
                                        "command": ["sh", "-c", "echo hello > /tmp/i; httpd -f -p 80 -h /tmp"]}]}
    assert hyper("pod", "create", "--start", "-f", str(write_spec(tmp_path, spec))).returncode == 0
    try:
        got = hyper("run", "--rm", "--pod", name, "busybox", "sh", "-c",
                    "i=0; until wget -q -O - http://localhost/i; do i=$((i+1)); [ $i -lt 600 ] || exit 9; "
                    "sleep 0.1; done")
        assert got.returncode == 0 and got.stdout == "hello\n", got.stderr
        # The pod's VM cannot take a disk while it runs.
        refused = hyper("run", "--rm", "--pod", name, "-v", "/data", "busybox", "true")
        assert refused.returncode == 125 and "(no hotplug)" in refused.stderr, refused.stderr
        conflict = hyper("run", "--rm", "--pod", name, "-p", "8080:80", "busybox", "true")
        assert conflict.returncode == 125 and "--pod and port publishing" in conflict.stderr
    finally:
        assert hyper("pod", "rm", "-f", name).returncode == 0


def test_bad_pod_specs_leave_nothing(hyper: Hyper, tmp_path: Path) -> None:
    before = hyper.ids()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"id": "p1", "containers": [{"name": "a", "image": "busybox", "colour": "red"}]},
         "Additional properties are not allowed ('colour' was unexpected)"),
        ({"id": "p2", "containers": [{"name": "a", "image": "busybox"}, {"name": "a", "image": "busybox"}]},
         "duplicate container name 'a'"),
        ({"id": "p3", "containers": [{"name": "a", "image": "busybox", "volumeMounts": [
            {"name": "nope", "mountPath": "/x"}]}]}, "mounts volume 'nope', which the pod does not declare"),
        ({"id": "p4", "containers": []}, "containers"),
        ({"id": "p5", "containers": [{"name": "a", "image": "busybox"},
                                     {"name": "b", "image": "127.0.0.1:1/missing:1"}]}, "127.0.0.1:1"),
    ]
    for spec, message in cases:
        got = hyper("pod", "create", "-f", str(write_spec(tmp_path, spec)))
        # One line says what is wrong (a pull's progress may come first, as with run).
        assert got.returncode == 125 and message in got.stderr.splitlines()[-1], (spec, got.stderr)
    (tmp_path / "bad.yaml").write_text("id: [unclosed\n")
    got = hyper("pod", "create", "-f", str(tmp_path / "bad.yaml"))
    assert got.returncode == 125 and "is not YAML or JSON" in got.stderr, got.stderr
    assert hyper.ids() == before and hyper("pod", "ls", "-q").stdout == ""


def test_shared_namespaces(hyper: Hyper, tmp_path: Path) -> None:
    script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc"
    # b looks for a's sleep for a while (a may not have reached it yet), then counts what it sees.
    look = ("i=0; while [ $i -lt 100 ] && ! ps -o args | grep -q '^sleep 30$'; do sleep 0.1; i=$((i+1)); done; "
            "ps -o args | grep -c '^sleep 30$'")
    for share in ({"pid": True, "ipc": True}, {}):
        name = f"ns{secrets.token_hex(3)}"
        spec = {"id": name, "share": share, "containers": [
            {"name": "a", "image": "busybox", "command": ["sh", "-c", f"{script}; exec sleep 30"]},
            {"name": "b", "image": "busybox", "command": ["sh", "-c", f"{script}; {look}"]}]}
        assert hyper("pod", "create", "--start", "-f", str(write_spec(tmp_path, spec))).returncode == 0
        try:
            hyper("wait", f"{name}-b")
            a, b = hyper("logs", f"{name}-a").stdout.split(), hyper("logs", f"{name}-b").stdout.split()
            if share:  # one PID and IPC namespace: b sees a's process
                assert a[:2] == b[:2] and b[2] == "1", (a, b)
            else:
                assert a[0] != b[0] and a[1] != b[1] and b[2] == "0", (a, b)
        finally:
            assert hyper("pod", "rm", "-f", name).returncode == 0


def test_a_container_restarts_inside_its_running_pod(hyper: Hyper, tmp_path: Path) -> None:
    name = f"restarts{secrets.token_hex(3)}"
    count = "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; echo run $n; [ $n -ge 2 ]"
    spec = {"id": name, "restartPolicy": "onFailure", "volumes": [{"name": "data"}], "containers": [
        {"name": "keeper", "image": "busybox", "command": ["sleep", "600"]},
        {"name": "flaky", "image": "busybox", "command": ["sh", "-c", count],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}
    assert hyper("pod", "create", "--start", "-f", str(write_spec(tmp_path, spec))).returncode == 0
    try:
        vm = inspect(hyper, "inspect", f"{name}-keeper")[0]["State"]["Pid"]
        wait_for(lambda: inspect(hyper, "inspect", f"{name}-flaky")[0]["RestartCount"] == 2 and not
                 inspect(hyper, "inspect", f"{name}-flaky")[0]["State"]["Running"], 300, "two restarts")
        flaky = inspect(hyper, "inspect", f"{name}-flaky")[0]
        assert flaky["State"]["ExitCode"] == 0 and flaky["State"]["Pid"] == 0
        assert hyper("logs", f"{name}-flaky").stdout == "run 0\nrun 1\nrun 2\n"
        keeper = inspect(hyper, "inspect", f"{name}-keeper")[0]["State"]
        assert keeper["Running"] and keeper["Pid"] == vm  # the same VM all along
    finally:
        assert hyper("pod", "rm", "-f", name).returncode == 0
    assert hyper("volume", "rm", f"{name}-data").returncode == 0


def test_pods_survive_a_daemon_restart(make_daemon: DaemonFactory, tmp_path: Path) -> None:
    daemon = make_daemon()
    spec = {"id": "kept", "containers": [{"name": "a", "image": "busybox", "command": ["echo", "hello"]},
                                         {"name": "b", "image": "busybox", "command": ["sleep", "600"]}]}
    assert daemon.hyper("pod", "create", "--start", "-f", str(write_spec(tmp_path, spec))).returncode == 0
    daemon.stop()
    daemon.start()
    (details,) = json.loads(daemon.hyper("pod", "inspect", "kept").stdout)
    assert details["Status"] == "exited" and len(details["Containers"]) == 2
    assert daemon.hyper("pod", "start", "kept").returncode == 0
    assert daemon.hyper("wait", "kept-a").stdout == "0\n"
    assert daemon.hyper("logs", "kept-a").stdout == "hello\nhello\n"
    assert daemon.hyper("pod", "rm", "-f", "kept").returncode == 0
    assert daemon.hyper("pod", "ls", "-q").stdout == "" and daemon.hyper("ps", "-aq").stdout == ""


def test_a_stopped_container_of_a_running_pod_keeps_its_files(hyper: Hyper, tmp_path: Path) -> None:
    # Its writable disk stays attached to the pod's VM, which runs on: it is reached again by
    # starting the container there, not by a VM of its own (two VMs never hold one disk).
    name = f"keep{secrets.token_hex(3)}"
    spec = {"id": name, "containers": [
        {"name": "main", "image": "busybox", "command": ["sleep", "600"]},
        {"name": "job", "image": "busybox", "command": ["sh", "-c", "cat /count 2>/dev/null; echo x >> /count"]}]}
    assert hyper("pod", "create", "--start", "-f", str(write_spec(tmp_path, spec))).returncode == 0
    try:
        assert hyper("wait", f"{name}-job").stdout == "0\n"
        refused = hyper("cp", f"{name}-job:/count", str(tmp_path / "count"))
        assert (refused.returncode, lines(refused.stderr)) == (125, [
            f"hyper: cannot stat container {name}-job: the running VM of its pod holds its disk; start the "
            "container, or stop the pod, first"])
        again = hyper("start", "-a", f"{name}-job")
        assert (again.returncode, again.stdout) == (0, "x\n"), again.stderr
        assert hyper("exec", f"{name}-main", "true").returncode == 0  # the pod lived on throughout
    finally:
        assert hyper("pod", "rm", "-f", name).returncode == 0
