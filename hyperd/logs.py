"""Log drivers: where each line a container writes goes, with its stream and time.

- ``json-file`` (the default): docker's format, ``{"log": ..., "stream": ..., "time": ...}``
  per line, so existing tooling reads it; rotated at ``max-size`` into at most ``max-file``
  files (``NAME-json.log``, ``.1``, ``.2``...), as docker does.
- ``syslog``: one message per line to a syslog server (a local socket, UDP or TCP), in
  RFC 3164 or 5424 format, stdout at severity info and stderr at err.  As docker (20.10
  and later) does, a rotated json-file cache is kept too, so ``hyper logs`` still works.
- ``none``: nothing is kept; ``hyper logs`` says so.

A driver never holds a container back or ends it: a write that fails (a full disk, an
unreachable syslog server) loses those lines, and the container's ``log_error`` says why.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from hyperd.errors import InvalidArgument

STREAMS = {1: "stdout", 2: "stderr"}
DRIVERS = ("json-file", "syslog", "none")
OPTIONS = {
    "json-file": {"max-size", "max-file"},
    "syslog": {"syslog-address", "syslog-facility", "tag", "syslog-format"},
    "none": set(),
}
FACILITIES = {name: number for number, name in enumerate((
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp"))}
FACILITIES |= {f"local{n}": 16 + n for n in range(8)}
SEVERITY = {1: 6, 2: 3}
"""stdout at info, stderr at err, as docker's syslog driver."""
FORMATS = ("rfc3164", "rfc5424", "rfc5424micro")
CACHE_MAX_SIZE = 20 << 20
CACHE_MAX_FILE = 5
"""The json-file cache kept beside a syslog driver: docker's dual logging defaults."""
MAX_BACKLOG = 1 << 20
"""Bytes waiting for a TCP syslog server; beyond, lines are dropped rather than held."""
ENTRY_MAX = 16 << 10
"""A longer line is written as several entries (the last one ending it), as docker does.  This
also keeps each chunk's escaped text small: binary output escapes to six times its size."""
WRITEBACK_STEP = 8 << 20
"""A json-file log goes to disk and leaves the page cache by steps of this many bytes, behind
the writer: a container's output does not fill the host's memory with dirty pages (nor push
the VMs' image disks out of the cache), and the writes land in pages freed moments before,
which costs far less than fresh ones (a loop writing 3 GiB of escaped NULs took 1.5 s of CPU
instead of 4.9 on the bench's host)."""
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class Entry:
    stream: int
    data: bytes
    time: str


@dataclass(frozen=True)
class LogConfig:
    """``--log-driver`` and its ``--log-opt``s, checked."""

    type: str = "json-file"
    config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, driver: str, options: dict[str, str]) -> LogConfig:
        driver = driver or "json-file"
        if driver not in DRIVERS:
            raise InvalidArgument(f"unknown log driver {driver!r}: json-file, syslog or none")
        unknown = sorted(set(options) - OPTIONS[driver])
        if unknown:
            raise InvalidArgument(f"unknown log opt {unknown[0]!r} for {driver} log driver")
        made = cls(driver, dict(options))
        made.check()
        return made

    def check(self) -> None:
        """InvalidArgument for the first option of this driver that does not parse."""
        parsers = {"json-file": (self.max_size, self.max_file),
                   "syslog": (self.syslog_address, self.facility, self.format)}
        for parse in parsers.get(self.type, ()):
            parse()

    def files(self) -> int:
        """How many json-file files the log may span (0: none is kept)."""
        return {"json-file": self.max_file(), "syslog": CACHE_MAX_FILE}.get(self.type, 0)

    def max_size(self) -> int:
        text = self.config.get("max-size", "")
        if not text:
            return 0
        number, unit = text.rstrip("bBkKmMgG"), text[len(text.rstrip("bBkKmMgG")):].lower().rstrip("b")
        if not number.isdigit() or int(number) < 1 or unit not in _UNITS:
            raise InvalidArgument(f"invalid max-size {text!r}: a positive size such as 10k, 10m or 1g")
        return int(number) * _UNITS[unit]

    def max_file(self) -> int:
        text = self.config.get("max-file", "1")
        if not text.isdigit() or int(text) < 1:
            raise InvalidArgument(f"invalid max-file {text!r}: a positive number")
        if int(text) > 1 and not self.config.get("max-size"):
            raise InvalidArgument("max-file is only meaningful with max-size")
        return int(text)

    def syslog_address(self) -> tuple[str, str]:
        """(scheme, rest): ``unix``/``unixgram`` and a path, or ``udp``/``tcp`` and ``host:port``."""
        text = self.config.get("syslog-address", "unix:///dev/log")
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("unix", "unixgram", "udp", "tcp") or not rest:
            raise InvalidArgument(f"invalid syslog-address {text!r}: unix:///PATH, unixgram:///PATH, "
                                  "udp://HOST:PORT or tcp://HOST:PORT")
        if scheme in ("udp", "tcp"):
            host, colon, port = rest.rpartition(":")
            if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgument(f"invalid syslog-address {text!r}: {scheme}://HOST:PORT")
        return scheme, rest

    def facility(self) -> int:
        name = self.config.get("syslog-facility", "daemon")
        if name not in FACILITIES:
            raise InvalidArgument(f"invalid syslog-facility {name!r}: {', '.join(FACILITIES)}")
        return FACILITIES[name]

    def format(self) -> str:
        name = self.config.get("syslog-format", "rfc3164")
        if name not in FORMATS:
            raise InvalidArgument(f"invalid syslog-format {name!r}: {', '.join(FORMATS)}")
        return name

    @property
    def readable(self) -> bool:
        return self.type != "none"


def timestamp() -> str:
    now = time.time_ns()
    return datetime.fromtimestamp(now // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{now % 10**9:09d}Z"


def cut(data: bytes) -> Iterator[bytes]:
    """``data`` in pieces of at most ENTRY_MAX bytes, cut between UTF-8 characters."""
    start = 0
    while len(data) - start > ENTRY_MAX:
        end = start + ENTRY_MAX
        for _ in range(3):  # a character has at most 3 continuation bytes (10xxxxxx)
            if data[end] & 0xC0 != 0x80:
                break
            end -= 1
        yield data[start:end]
        start = end
    yield data[start:]


def encode(stream: int, data: bytes, now: str) -> bytes:
    """``data`` as json-file entries, one per line, each with its newline, and a trailing partial
    line as an entry of its own.

    The whole chunk is escaped in one call, so that the cost does not grow with the number of
    lines: a pod printing short lines is written as fast as one printing long ones.  A chunk of
    one line, or of part of one (a long output without newlines), is one entry as it is.  Other
    chunks are cut at their escaped newlines; an escaped backslash is set aside first (as a NUL,
    which JSON escaping never leaves raw), so that a backslash followed by ``n`` is not taken
    for a newline.  Whether either is needed is asked of the raw bytes, a fast scan: the
    escaped text of binary output is full of backslashes, slow to search.
    """
    if not data:
        return b""
    quoted = encode_basestring(data.decode(errors="replace"))  # json.dumps of a str, without its set-up
    tail = f',"stream":"{STREAMS[stream]}","time":"{now}"}}\n'
    if data.find(b"\n", 0, len(data) - 1) < 0:
        return f'{{"log":{quoted}{tail}'.encode()
    backslashes = b"\\" in data
    escaped = quoted[1:-1].replace("\\\\", "\0") if backslashes else quoted[1:-1]
    lines = escaped.split("\\n")
    partial = lines.pop()
    entries = "".join(('{"log":"', f'\\n"{tail}{{"log":"'.join(lines), f'\\n"{tail}'))
    if partial:
        entries += f'{{"log":"{partial}"{tail}'
    return (entries.replace("\0", "\\\\") if backslashes else entries).encode()


class JsonFileLog:
    """A container's json-file log, rotated at ``max_size`` into at most ``max_files`` files."""

    def __init__(self, path: Path, max_size: int = 0, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()

    def _open(self) -> Any:
        # Unbuffered: each chunk is one writev(2) that lands or fails (ENOSPC) as a whole,
        # leaving nothing half-buffered to fail again later.
        opened = self.path.open("ab", buffering=0)
        self.size = self._dropped = self._flushing = os.fstat(opened.fileno()).st_size
        return opened

    def write(self, stream: int, data: bytes) -> None:
        """Append ``data`` as one entry per line (a trailing partial line is an entry too)."""
        now = timestamp()
        encoded = [encode(stream, piece, now) for piece in cut(data)]
        if not self.max_size or self.size + sum(map(len, encoded)) <= self.max_size:
            self._append(encoded)
            return
        # Rotate between entries, as docker does: one chunk of output may hold many lines.
        batch = bytearray()
        for entry in (line for chunk in encoded for line in chunk.splitlines(keepends=True)):
            # (JSON escapes every \r and \n inside an entry.)
            if self.size + len(batch) + len(entry) > self.max_size and (self.size or batch):
                self._append([batch])
                batch.clear()
                self._rotate()
            batch += entry
        self._append([batch])

    def _append(self, chunks: list[bytes] | list[bytearray]) -> None:
        if not any(chunks):
            return
        self.size += os.writev(self._file.fileno(), chunks)
        if self.size - self._flushing >= WRITEBACK_STEP:
            # Starts writing out what came since the last step, and drops what the step before
            # started (on disk by now) from the page cache; neither waits for the disk.
            os.posix_fadvise(self._file.fileno(), self._dropped, self.size - self._dropped, os.POSIX_FADV_DONTNEED)
            self._dropped, self._flushing = self._flushing, self.size

    def _rotate(self) -> None:
        """The current file becomes ``.1``, ``.1`` becomes ``.2``...; the oldest beyond ``max_files`` goes."""
        self._file.close()
        names = [self.path, *(rotated(self.path, n) for n in range(1, self.max_files))]
        names[-1].unlink(missing_ok=True)
        for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
            if newer.exists():
                newer.rename(older)
        self._file = self._open()

    def close(self) -> None:
        self._file.close()


def rotated(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


class SyslogLog:
    """Lines sent to a syslog server; a json-file cache of them is the caller's."""

    def __init__(self, config: LogConfig, tag: str, hostname: str) -> None:
        self.scheme, self.address = config.syslog_address()
        self.facility = config.facility()
        self.format = config.format()
        self.tag = tag
        self.hostname = hostname
        self.backlog = bytearray()
        self.error = ""
        self.sock: socket.socket | None = None
        try:
            self.sock = self._connect()
        except OSError as err:
            self.error = f"syslog {self.scheme}://{self.address}: {err.strerror or err}"

    def _connect(self) -> socket.socket:
        if self.scheme in ("udp", "tcp"):
            host, _, port = self.address.rpartition(":")
            kind = socket.SOCK_DGRAM if self.scheme == "udp" else socket.SOCK_STREAM
            info = socket.getaddrinfo(host.strip("[]"), int(port), type=kind)[0]
            sock = socket.socket(info[0], kind)
            target: Any = info[4]
        else:
            kind = socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_UNIX, kind)
            target = self.address
        try:
            sock.settimeout(2.0)  # a connect that hangs would hold the container's start
            try:
                sock.connect(target)
            except OSError as err:
                if self.scheme != "unix" or err.errno != 91:  # EPROTOTYPE: /dev/log is a stream socket here
                    raise
                sock.close()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(2.0)
                sock.connect(target)
                self.scheme = "unixstream"
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def message(self, stream: int, line: bytes) -> bytes:
        """One line as a syslog message in the configured format."""
        priority = self.facility * 8 + SEVERITY[stream]
        now = datetime.now(UTC).astimezone()
        pid = os.getpid()
        if self.format == "rfc3164":
            head = f"<{priority}>{now.strftime('%b %e %H:%M:%S')} {self.hostname} {self.tag}[{pid}]: "
        else:
            stamp = now.isoformat(timespec="microseconds" if self.format == "rfc5424micro" else "seconds")
            head = f"<{priority}>1 {stamp} {self.hostname} {self.tag} {pid} {self.tag} - "
        return head.encode() + line

    def write(self, stream: int, data: bytes) -> None:
        if self.sock is None:
            return
        lines = [line for line in data.split(b"\n") if line]
        stream_socket = self.scheme in ("tcp", "unixstream")
        for line in lines:
            message = self.message(stream, line)
            if stream_socket:
                if len(self.backlog) + len(message) < MAX_BACKLOG:
                    self.backlog += message + b"\n"
            else:
                try:
                    self.sock.send(message)
                except BlockingIOError:
                    continue  # the server's queue is full: this line is lost, as a datagram may be
                except OSError as err:
                    self.error = self.error or f"syslog {self.scheme}://{self.address}: {err.strerror or err}"
        if stream_socket and self.backlog:
            try:
                del self.backlog[:self.sock.send(self.backlog)]
            except BlockingIOError:
                pass
            except OSError as err:
                self.error = self.error or f"syslog {self.scheme}://{self.address}: {err.strerror or err}"
                self.backlog.clear()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class Log:
    """What a container run writes its output to, as its log config says."""

    def __init__(self, config: LogConfig, path: Path, tag: str, hostname: str) -> None:
        self.file: JsonFileLog | None = None
        self.syslog: SyslogLog | None = None
        if config.type == "json-file":
            self.file = JsonFileLog(path, config.max_size(), config.max_file())
        elif config.type == "syslog":
            self.file = JsonFileLog(path, CACHE_MAX_SIZE, CACHE_MAX_FILE)
            self.syslog = SyslogLog(config, tag, hostname)

    @property
    def error(self) -> str:
        return self.syslog.error if self.syslog is not None else ""

    def write(self, stream: int, data: bytes) -> None:
        """OSError when the local file cannot be written (the caller records it); syslog errors are kept."""
        if self.syslog is not None:
            self.syslog.write(stream, data)
        if self.file is not None:
            self.file.write(stream, data)

    def close(self) -> None:
        for part in (self.file, self.syslog):
            if part is not None:
                part.close()


def tag(template: str, container_id: str, name: str, image: str) -> str:
    """docker's ``tag`` log option: a template of {{.ID}}, {{.FullID}}, {{.Name}}, {{.ImageName}}."""
    values = {"{{.ID}}": container_id[:12], "{{.FullID}}": container_id, "{{.Name}}": name,
              "{{.ImageName}}": image}
    for key, value in values.items():
        template = template.replace(key, value)
    return template or container_id[:12]


def read(path: Path, files: int = 1) -> Iterator[Entry]:
    """The entries of the log and its rotated files, oldest first."""
    streams = {name: number for number, name in STREAMS.items()}
    for index in range(files - 1, -1, -1):
        try:
            with (rotated(path, index) if index else path).open("rb") as f:
                content = f.read()
        except FileNotFoundError:
            continue
        for line in content.splitlines():
            try:
                record = json.loads(line)
                yield Entry(streams[record["stream"]], record["log"].encode(), record["time"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash
