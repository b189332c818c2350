"""Log drivers with real containers: json-file rotation, syslog to local sockets, none."""

from __future__ import annotations

import json
import secrets
import socket
from pathlib import Path
from typing import Any

from tests.integration.conftest import Hyper


def inspect(hyper: Hyper, name: str) -> dict[str, Any]:
    got = hyper("inspect", name)
    assert got.returncode == 0, got.stderr
    return dict(json.loads(got.stdout)[0])


def test_json_file_rotation_keeps_max_file_files(hyper: Hyper) -> None:
    name = f"rotated{secrets.token_hex(3)}"
    got = hyper("run", "--name", name, "--log-opt", "max-size=1k", "--log-opt", "max-file=3", "busybox", "sh", "-c",
                "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); done")
    assert got.returncode == 0, got.stderr
    details = inspect(hyper, name)
    assert details["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1k", "max-file": "3"}}
    files = sorted(p.name for p in _container_dir(hyper, details["Id"]).glob("*-json.log*"))
    assert files == [f"{details['Id']}-json.log", f"{details['Id']}-json.log.1", f"{details['Id']}-json.log.2"]
    shown = hyper("logs", name).stdout.splitlines()
    assert shown[-1] == "line 299" and shown == [f"line {n}" for n in range(300 - len(shown), 300)]
    assert len(shown) < 300  # the oldest lines went with the rotation


def _container_dir(hyper: Hyper, container_id: str) -> Path:
    return hyper.daemon.root / "containers" / container_id


def test_syslog_to_a_unix_socket_and_over_udp(hyper: Hyper, tmp_path: Path) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        unix.bind(str(tmp_path / "syslog"))
        udp.bind(("127.0.0.1", 0))
        unix.settimeout(60)
        udp.settimeout(60)
        for address, server in ((f"unixgram://{tmp_path / 'syslog'}", unix),
                                (f"udp://127.0.0.1:{udp.getsockname()[1]}", udp)):
            name = f"sys{secrets.token_hex(3)}"
            got = hyper("run", "--name", name, "--log-driver", "syslog", "--log-opt", f"syslog-address={address}",
                        "--log-opt", "tag={{.Name}}", "busybox", "sh", "-c", "echo out; echo err >&2")
            assert got.returncode == 0 and got.stdout == "out\n" and got.stderr == "err\n", got.stderr
            messages = sorted(server.recv(4096).decode() for _ in range(2))
            # daemon (3) * 8 + err (3) = 27; + info (6) = 30.
            assert messages[0].startswith("<27>") and messages[0].endswith(f" {name}[" + messages[0].split("[")[1])
            assert messages[0].endswith("]: err") and messages[1].startswith("<30>") and messages[1].endswith("]: out")
            # The local cache: hyper logs works with syslog too.
            assert hyper("logs", name).stdout == "out\n"
    finally:
        unix.close()
        udp.close()


def test_an_unreachable_syslog_target_does_not_stop_the_container(hyper: Hyper, tmp_path: Path) -> None:
    name = f"lost{secrets.token_hex(3)}"
    got = hyper("run", "--name", name, "--log-driver", "syslog", "--log-opt",
                f"syslog-address=unix://{tmp_path / 'nobody'}", "busybox", "echo", "still ran")
    assert got.returncode == 0 and got.stdout == "still ran\n", got.stderr
    error = inspect(hyper, name)["State"]["Error"]
    assert error.startswith(f"logging failed: syslog unix://{tmp_path / 'nobody'}: ") and "No such file" in error


def test_no_log(hyper: Hyper) -> None:
    name = f"nolog{secrets.token_hex(3)}"
    got = hyper("run", "--name", name, "--log-driver", "none", "busybox", "echo", "shown")
    assert got.returncode == 0 and got.stdout == "shown\n"  # attached output still flows
    logs = hyper("logs", name)
    assert logs.returncode == 125 and "configured logging driver does not support reading" in logs.stderr
    assert not list(_container_dir(hyper, inspect(hyper, name)["Id"]).glob("*-json.log*"))


def test_bad_log_options(hyper: Hyper) -> None:
    before = hyper.ids()
    for flags, message in ((("--log-driver", "journald"), "unknown log driver 'journald'"),
                           (("--log-opt", "max-file=3"), "max-file is only meaningful with max-size"),
                           (("--log-driver", "syslog", "--log-opt", "syslog-address=http://x"), "invalid syslog")):
        got = hyper("run", "--rm", *flags, "busybox", "true")
        assert got.returncode == 125 and message in got.stderr, got.stderr
    assert hyper.ids() == before
