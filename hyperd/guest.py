"""hyperd's end of the agent channel.

The guest is untrusted: every frame is size-bounded by the decoder, every message is
checked against the shape hyperd expects before anything acts on it, and a stream
may not carry more than the window hyperd granted.  The first violation ends the
session (``GuestError``) and the pod with it; nothing from the guest is ever
evaluated, only validated copies of plain values leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyperd.errors import GuestError, StartFailed
from hyperstart.protocol import (
    DATA_CHUNK,
    INITIAL_WINDOW,
    VERSIONS,
    Decoder,
    Frame,
    Kind,
    decode_credit,
    decode_message,
    encode,
    encode_message,
    encode_window,
)

MAX_TEXT = 4096
READ_SIZE = 1 << 20
"""Bytes read off the agent's channel at a time: a whole DATA frame of the largest size in few reads."""
MAX_LIST = 64
REQUEST_TIMEOUT = 60.0
"""Seconds the agent has to answer a request; a guest that stops answering is ended."""


def _text(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise GuestError(f"agent sent an invalid {what}")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GuestError(f"agent sent an invalid {what}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise GuestError(f"agent sent an invalid {what}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e7:
        raise GuestError(f"agent sent an invalid {what}")
    return float(value)


@dataclass(frozen=True)
class AgentInfo:
    version: int
    capabilities: frozenset[str]
    agent: str
    init_started: float
    """Guest seconds from kernel start to /init's first statement (its interpreter is up)."""
    agent_startup: float
    """Guest seconds from /init's first statement (imports included) to the ready event."""


@dataclass(frozen=True)
class ExitEvent:
    container: str
    status: int
    process: str = ""
    """The exec'd process that exited; empty for the container's own command."""
    oom: bool = False
    """The kernel killed a process of the container for memory (its cgroup's limit)."""


@dataclass(frozen=True)
class ProcessInfo:
    """One process of a container, as ``top`` shows it (pids as the container sees them)."""

    pid: int
    ppid: int
    uid: int
    start: float
    """Guest seconds since boot when it started."""
    cpu: float
    """CPU seconds used."""
    rss: int
    command: str


@dataclass(frozen=True)
class GuestStats:
    """A container's usage as the guest counts it, and its VM's memory and network counters."""

    cpu_ns: int
    memory: int
    pids: int
    block_read: int
    block_write: int
    memory_total: int
    memory_available: int
    net_rx: int
    net_tx: int


MAX_PROCESSES = 4096
BIG = 2**63
"""Upper bound of a counter from the guest."""


class Stream:
    """Output of one guest process stream; ``read()`` returns b"" at EOF."""

    def __init__(self, client: AgentClient, stream_id: int) -> None:
        self.id = stream_id
        self._client = client
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.window = INITIAL_WINDOW
        self.eof = False
        self._unacked = 0

    def _deliver(self, data: bytes) -> None:
        if len(data) > self.window:
            raise GuestError(f"agent overran the flow-control window of stream {self.id}")
        self.window -= len(data)
        self._chunks.put_nowait(data)

    def _finish(self) -> None:
        self.eof = True
        self._chunks.put_nowait(b"")

    async def read(self) -> bytes:
        data = await self._chunks.get()
        if data:
            # Grant credit back in batches: fewer WINDOW frames, the pipe stays full.
            self._unacked += len(data)
            if self._unacked >= INITIAL_WINDOW // 4:
                self.window += self._unacked
                self._client.send_raw(encode_window(self.id, self._unacked))
                self._unacked = 0
        return data


class Input:
    """A process's stdin: hyperd writes, the agent grants credit as the process reads.

    The agent's grants are checked: it may never hand back more than was sent, so a
    hostile guest cannot make hyperd send without bound.
    """

    def __init__(self, client: AgentClient, stream_id: int) -> None:
        self.id = stream_id
        self._client = client
        self.window = INITIAL_WINDOW
        self._outstanding = 0
        self._credit = asyncio.Event()
        self._credit.set()
        self.closed = False

    def _grant(self, credit: int) -> None:
        if credit > self._outstanding:
            raise GuestError(f"agent granted more credit than it was sent on stream {self.id}")
        self._outstanding -= credit
        self.window += credit
        self._credit.set()

    async def write(self, data: bytes) -> None:
        """Send ``data``, waiting for credit as needed; after the agent or the session is gone, drop it."""
        view = memoryview(data)
        while view and not self.closed:
            if self.window <= 0:
                self._credit.clear()
                await self._credit.wait()
                continue
            chunk = view[: min(self.window, DATA_CHUNK)]
            self.window -= len(chunk)
            self._outstanding += len(chunk)
            self._client.send_raw(encode(Kind.DATA, self.id, bytes(chunk)))
            view = view[len(chunk):]

    def close(self) -> None:
        """End of input: the process reads EOF (on a pipe; a terminal stays open)."""
        if not self.closed:
            self.closed = True
            self._client.send_raw(encode(Kind.EOF, self.id))
            self._credit.set()

    def _abort(self) -> None:
        self.closed = True
        self._credit.set()


class AgentClient:
    def __init__(self, sock: socket.socket, on_exit: Callable[[ExitEvent], None]) -> None:
        self._sock = sock
        self._on_exit = on_exit
        self._decoder = Decoder()
        self._ids = itertools.count(1)
        self._stream_ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._streams: dict[int, Stream] = {}
        self._inputs: dict[int, Input] = {}
        self._ready: asyncio.Future[AgentInfo] = asyncio.get_running_loop().create_future()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.error: Exception | None = None
        self.info: AgentInfo | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def ready(self) -> AgentInfo:
        return await asyncio.shield(self._ready)

    @property
    def closed(self) -> asyncio.Task[None]:
        assert self._reader_task is not None
        return self._reader_task

    def send_raw(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def open_stream(self) -> Stream:
        stream = Stream(self, next(self._stream_ids))
        self._streams[stream.id] = stream
        return stream

    def open_input(self) -> Input:
        """A stream from hyperd to a process's stdin (capability ``stdin``)."""
        stream = Input(self, next(self._stream_ids))
        self._inputs[stream.id] = stream
        return stream

    async def request(self, op: str, args: dict[str, Any] | None = None,
                      timeout: float | None = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send a request and wait for its reply (``timeout`` None: for as long as it takes).

        An error reply of ``container.start`` is ``StartFailed`` (it carries the exit code
        docker would give); of any other operation, ``GuestError``.
        """
        if self.error is not None:
            raise GuestError(f"agent connection is down: {self.error}")
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (op, future)
        self.send_raw(encode_message(Kind.REQUEST, {"id": request_id, "op": op, "args": args or {}}))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise GuestError(f"the guest agent did not answer {op} within {timeout:.0f}s") from None
        finally:
            self._pending.pop(request_id, None)

    async def top(self, container_id: str) -> tuple[list[ProcessInfo], float]:
        """The container's processes, and the guest's uptime to place their start times."""
        result = await self.request("container.top", {"id": container_id})
        rows = result.get("processes")
        if not isinstance(rows, list) or len(rows) > MAX_PROCESSES:
            raise GuestError("agent sent an invalid process list")
        processes = []
        for row in rows:
            if not isinstance(row, dict):
                raise GuestError("agent sent an invalid process")
            processes.append(ProcessInfo(
                _int(row.get("pid"), "pid", 1, 2**22), _int(row.get("ppid"), "pid", 0, 2**22),
                _int(row.get("uid"), "uid", 0, 2**32), _number(row.get("start"), "start time"),
                _number(row.get("cpu"), "CPU time"), _int(row.get("rss"), "memory size", 0, BIG),
                _text(row.get("command"), "command")))
        return processes, _number(result.get("uptime"), "uptime")

    async def stats(self, container_id: str) -> GuestStats:
        result = await self.request("container.stats", {"id": container_id})
        return GuestStats(**{name: _int(result.get(name), name.replace("_", " "), 0, BIG)
                             for name in GuestStats.__dataclass_fields__})

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task

    # -- inbound ----------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
            raise GuestError("agent channel closed")
        except asyncio.CancelledError:
            raise
        except Exception as err:  # whatever the guest did, the session ends cleanly
            self._fail(err if isinstance(err, GuestError) else GuestError(f"agent protocol violation: {err}"))

    def _fail(self, err: GuestError) -> None:
        self.error = err
        if not self._ready.done():
            self._ready.set_exception(err)
            self._ready.exception()  # nobody may be waiting any more (a boot that timed out): not an error
        for _op, future in self._pending.values():
            if not future.done():
                future.set_exception(err)
        for stream in self._streams.values():
            if not stream.eof:
                stream._finish()
        for stdin in self._inputs.values():
            stdin._abort()
        if self._writer is not None:
            self._writer.close()

    def _dispatch(self, frame: Frame) -> None:
        if frame.kind == Kind.DATA or frame.kind == Kind.EOF:
            stream = self._streams.get(frame.stream)
            if stream is None or stream.eof:
                raise GuestError(f"agent wrote to unknown or closed stream {frame.stream}")
            if frame.kind == Kind.DATA:
                stream._deliver(frame.payload)
            else:
                stream._finish()
                del self._streams[frame.stream]
        elif frame.kind == Kind.WINDOW and frame.stream in self._inputs:
            self._inputs[frame.stream]._grant(decode_credit(frame))
        elif frame.kind == Kind.REPLY:
            self._reply(decode_message(frame))
        elif frame.kind == Kind.EVENT:
            self._event(decode_message(frame))
        else:
            raise GuestError(f"agent sent a {frame.kind.name} frame, which only hyperd may send")

    def _reply(self, message: dict[str, Any]) -> None:
        request_id = _int(message.get("id"), "reply id", 1, 2**53)
        pending = self._pending.get(request_id)
        if pending is None:
            raise GuestError(f"agent replied to request {request_id}, which is not pending")
        op, future = pending
        if "error" in message:
            error = message["error"]
            if not isinstance(error, dict):
                raise GuestError("agent sent an invalid error reply")
            code = _int(error.get("code"), "error code", 1, 255)
            text = _text(error.get("message"), "error message")
            starting = op in ("container.start", "process.start")
            future.set_exception(StartFailed(text, code) if starting else GuestError(f"{op}: {text}"))
        else:
            result = message.get("result")
            if not isinstance(result, dict):
                raise GuestError("agent sent an invalid reply")
            future.set_result(result)

    def _event(self, message: dict[str, Any]) -> None:
        name = message.get("event")
        if name == "ready" and not self._ready.done():
            self._ready.set_result(self._negotiate(message))
        elif name == "exit":
            event = ExitEvent(_text(message.get("container"), "container id", 128),
                              _int(message.get("status"), "exit status", 0, 255),
                              _text(message.get("process", ""), "process id", 128),
                              _bool(message.get("oom", False), "oom flag"))
            self._on_exit(event)
        else:
            raise GuestError(f"agent sent an unexpected event {str(name)[:64]!r}")

    def _negotiate(self, message: dict[str, Any]) -> AgentInfo:
        versions = message.get("versions")
        capabilities = message.get("capabilities")
        boot = message.get("boot")
        if not isinstance(versions, list) or len(versions) > MAX_LIST:
            raise GuestError("agent sent an invalid version list")
        if not isinstance(capabilities, list) or len(capabilities) > MAX_LIST or not isinstance(boot, dict):
            raise GuestError("agent sent an invalid ready event")
        common = set(VERSIONS) & {_int(v, "protocol version", 1, 2**16) for v in versions}
        if not common:
            raise GuestError(f"agent speaks protocol versions {versions}, hyperd speaks {list(VERSIONS)}")
        start = _number(boot.get("init_start"), "boot time")
        ready = _number(boot.get("agent_ready"), "boot time")
        info = AgentInfo(
            version=max(common),
            capabilities=frozenset(_text(c, "capability", 64) for c in capabilities),
            agent=_text(message.get("agent"), "agent version", 64),
            init_started=start,
            agent_startup=max(0.0, ready - start),
        )
        self.info = info
        return info
