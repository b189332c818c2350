"""Log drivers: json-file entries and rotation, syslog messages, the options each driver takes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from hyperd import logs
from hyperd.errors import InvalidArgument
from hyperd.logs import ENTRY_MAX, JsonFileLog, LogConfig, SyslogLog, encode, read, rotated, tag


@pytest.mark.parametrize("data", [b"hi\n", b"a\nb", b"", b"\n\n", b"back\\nslash\\\\n\n", b'quote"and\\\n',
                                  b"\x00\x01\xff\n", "\u00e9\u20ac\u2028x\n".encode(), b"a\r\nb\r", b"\\",
                                  b"\x00" * 3, b"no\\nnewline", b"one line\n"])
def test_entries_are_docker_json_lines(data: bytes) -> None:
    text, expected = data.decode(errors="replace"), []
    while text:
        end = text.find("\n")
        expected.append(text if end < 0 else text[:end + 1])
        text = "" if end < 0 else text[end + 1:]
    got = [json.loads(line) for line in encode(2, data, "T").decode().split("\n") if line]
    assert [entry["log"] for entry in got] == expected
    assert all(entry["stream"] == "stderr" and entry["time"] == "T" for entry in got)


def test_a_long_line_is_cut_into_entries_between_characters(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "WRITEBACK_STEP", 1 << 16)  # several steps of writeback on the way
    path = tmp_path / "c-json.log"
    log = JsonFileLog(path)
    # The first cut would fall inside the e-acute: it backs off before it.
    line = ("x" * (ENTRY_MAX - 1) + "\u00e9" + "y" * ENTRY_MAX + "\n").encode()
    data = line * 2 + bytes(3 * ENTRY_MAX)
    log.write(1, data)
    log.write(2, b"after\n")
    log.close()
    entries = list(read(path))
    assert b"".join(entry.data for entry in entries[:-1]) == data
    assert entries[0].data == b"x" * (ENTRY_MAX - 1) and all(len(entry.data) <= ENTRY_MAX for entry in entries)
    assert (entries[-1].stream, entries[-1].data) == (2, b"after\n")


def test_rotation_keeps_exactly_max_file_files(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    log = JsonFileLog(path, max_size=1000, max_files=3)
    for number in range(200):
        log.write(1, f"line {number}\n".encode())
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    lines = [entry.data for entry in read(path, 3)]
    assert lines[-1] == b"line 199\n" and lines == [f"line {n}\n".encode() for n in range(200 - len(lines), 200)]
    assert rotated(path, 2).read_bytes().startswith(b'{"log":"line ')
    # Reopened (a restart of the container), it goes on from the current file's size.
    again = JsonFileLog(path, max_size=1000, max_files=3)
    again.write(1, b"after\n")
    again.close()
    assert [entry.data for entry in read(path, 3)][-1] == b"after\n"


def test_a_chunk_of_many_lines_rotates_between_them(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    log = JsonFileLog(path, max_size=1000, max_files=3)
    log.write(1, b"".join(f"line {number}\n".encode() for number in range(200)))  # one read of the output
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    lines = [entry.data for entry in read(path, 3)]
    assert lines[-1] == b"line 199\n" and lines == [f"line {n}\n".encode() for n in range(200 - len(lines), 200)]
    # An entry bigger than max-size gets a file of its own rather than rotating forever.
    big = JsonFileLog(tmp_path / "big-json.log", max_size=10, max_files=2)
    big.write(1, b"a line longer than ten bytes\nand another\n")
    big.close()
    assert [entry.data for entry in read(tmp_path / "big-json.log", 2)] == [b"a line longer than ten bytes\n",
                                                                           b"and another\n"]


def test_one_file_is_cut_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    log = JsonFileLog(path, max_size=100, max_files=1)
    for number in range(50):
        log.write(1, f"{number}\n".encode())
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c-json.log"] and path.stat().st_size <= 100
    assert [entry.data for entry in read(path)][-1] == b"49\n"


@pytest.mark.parametrize(("driver", "options", "message"), [
    ("journald", {}, "unknown log driver 'journald'"),
    ("json-file", {"max-size": "ten"}, "invalid max-size 'ten'"),
    ("json-file", {"max-file": "3"}, "max-file is only meaningful with max-size"),
    ("json-file", {"syslog-address": "udp://x:1"}, "unknown log opt 'syslog-address' for json-file"),
    ("syslog", {"syslog-address": "http://x"}, "invalid syslog-address 'http://x'"),
    ("syslog", {"syslog-address": "udp://host"}, "udp://HOST:PORT"),
    ("syslog", {"syslog-facility": "kitchen"}, "invalid syslog-facility 'kitchen'"),
    ("syslog", {"syslog-format": "xml"}, "invalid syslog-format 'xml'"),
    ("none", {"max-size": "1m"}, "unknown log opt 'max-size' for none"),
])
def test_bad_options_are_refused(driver: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        LogConfig.parse(driver, options)


def test_options() -> None:
    config = LogConfig.parse("", {"max-size": "10k", "max-file": "3"})
    assert (config.type, config.max_size(), config.max_file(), config.files()) == ("json-file", 10240, 3, 3)
    assert LogConfig.parse("json-file", {"max-size": "2m"}).max_size() == 2 << 20
    assert LogConfig.parse("syslog", {}).files() == 5 and LogConfig.parse("none", {}).files() == 0
    assert not LogConfig.parse("none", {}).readable
    assert tag("{{.Name}}/{{.ID}}", "a" * 64, "web", "busybox") == f"web/{'a' * 12}"
    assert tag("", "b" * 64, "web", "busybox") == "b" * 12


def test_syslog_messages_over_a_unix_datagram_socket(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log"))
    try:
        config = LogConfig.parse("syslog", {"syslog-address": f"unixgram://{tmp_path / 'log'}",
                                            "syslog-facility": "local3", "syslog-format": "rfc5424"})
        log = SyslogLog(config, "web", "host")
        assert log.error == ""
        log.write(1, b"one\ntwo\n")
        log.write(2, b"bad\n")
        log.close()
        got = [server.recv(4096).decode() for _ in range(3)]
    finally:
        server.close()
    # local3 is facility 19: info is 19 * 8 + 6, err 19 * 8 + 3.
    assert [m.split(" ", 1)[0] for m in got] == ["<158>1", "<158>1", "<155>1"]
    assert [m.rsplit(" - ", 1)[1] for m in got] == ["one", "two", "bad"]
    assert all(" host web " in m for m in got)


def test_an_unreachable_syslog_server_is_an_error_not_a_failure(tmp_path: Path) -> None:
    log = SyslogLog(LogConfig.parse("syslog", {"syslog-address": f"unix://{tmp_path / 'none'}"}), "t", "h")
    assert log.error.startswith(f"syslog unix://{tmp_path / 'none'}: ") and "No such file" in log.error
    log.write(1, b"dropped\n")  # nothing to send it to: no exception either
    log.close()
