"""hyperstart: PID 1 of every pod VM.

Mounts the basics, then serves hyperd over one virtio-serial port with the protocol
in ``hyperstart.protocol``: requests in, replies and events out, container output
multiplexed as flow-controlled streams.  One thread and one ``selectors`` loop:
Python's start-up under TCG is slow, so this imports as little as it can.
"""

from __future__ import annotations

import binascii
import contextlib
import fcntl
import json
import os
import selectors
import signal
import struct
import sys
import time

from hyperstart import cgroup, container, devcg, network, proc, seccomp, syscalls, volumes
from hyperstart.protocol import (
    DATA_CHUNK,
    INITIAL_WINDOW,
    PORT_NAME,
    VERSIONS,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    decode_credit,
    decode_message,
    encode,
    encode_message,
    encode_window,
    exit_status,
    header,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # the guest pays for every import: typing only for the checker
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[[dict[str, Any], "Reply"], None]

AGENT_VERSION = "0.1.0"
MAX_ERROR = 2048
"""Characters of an error message sent to the host (which refuses longer ones)."""
CAPABILITIES = ("containers", "signals", "stdio", "export", "network", "stdin", "tty", "exec", "stats", "limits",
                "seccomp-filter", "changes", "tools", "devices")
TAR = (container.TOOL, "tar")
TIOCSWINSZ = 0x5414
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
"""Bytes an output pipe holds (the kernel's default limit for an unprivileged pipe)."""
OUTPUT_CHUNK = 256 << 10
"""Bytes of output read, and sent as one frame, at a time."""
CREDIT_BATCH = 64 << 10
"""Bytes of stdin written before the host is granted them back (fewer WINDOW frames)."""


def mount_basics() -> None:
    plain = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    for source, target, fstype, flags, data in (
        ("proc", "/proc", "proc", plain, None),
        ("sysfs", "/sys", "sysfs", plain, None),
        ("devtmpfs", "/dev", "devtmpfs", syscalls.MS_NOSUID, "mode=0755"),
        ("tmpfs", "/run", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777"),
        # favordynmods: moving a process into a cgroup (every container start and exec) otherwise
        # waits for an RCU grace period, about 30 ms of each exec in this guest under TCG.
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", plain, "favordynmods"),
    ):
        syscalls.mount(source, target, fstype, flags, data)


def find_port() -> str:
    base = "/sys/class/virtio-ports"
    for _ in range(500):
        for name in os.listdir(base) if os.path.isdir(base) else ():
            with open(f"{base}/{name}/name") as f:
                if f.read().strip() == PORT_NAME:
                    return f"/dev/{name}"
        time.sleep(0.01)
    raise SystemExit(f"hyperstart: virtio port {PORT_NAME} not found")


def uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Reply:
    """The one answer a request gets, now or later."""

    def __init__(self, agent: Agent, request_id: Any) -> None:
        self.agent = agent
        self.request_id = request_id

    def ok(self, result: dict[str, Any]) -> None:
        self.agent.send(encode_message(Kind.REPLY, {"id": self.request_id, "result": result}))

    def fail(self, code: int, message: str) -> None:
        error = {"code": code, "message": message[:MAX_ERROR]}
        self.agent.send(encode_message(Kind.REPLY, {"id": self.request_id, "error": error}))


class Output:
    """One output of a container process (a pipe, or a pty master), sent to the host as a stream."""

    def __init__(self, fd: int, stream: int) -> None:
        self.fd = fd
        self.stream = stream
        self.window = INITIAL_WINDOW
        self.open = True
        self.pipe = False
        with contextlib.suppress(OSError):  # a pipe: a bigger one, sent in fewer, larger frames, by splice
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            self.pipe = True


class Input:
    """A process's stdin, written from the host's stream as fast as the process reads it; the
    host gets its credit back for what was written (or dropped, once the process closed it)."""

    def __init__(self, fd: int, stream: int, tty: bool) -> None:
        self.fd = fd
        self.stream = stream
        self.tty = tty
        self.pending = bytearray()
        self.eof = False
        self.unacked = 0
        self.waiting = False


class Stdio:
    """One process's descriptors: the three its child gets, and what the agent keeps of them."""

    def __init__(self) -> None:
        self.child: list[int] = []
        self.outputs: list[Output] = []
        self.input: Input | None = None
        self.terminal = -1
        """The pty master (a descriptor of its own), for window sizes; -1 without a tty."""

    @classmethod
    def open(cls, args: dict[str, Any], box: container.Container) -> Stdio:
        """Pipes, or a pty (in the container's devpts) with ``tty``; a stdin pipe only when the
        host names a ``stdin`` stream."""
        made = cls()
        opened: list[int] = []
        try:
            if args.get("tty"):
                master, slave = container.open_terminal(box)
                opened += [master, slave]
                made.terminal = os.dup(master)
                opened.append(made.terminal)
                set_size(made.terminal, args.get("size"))
                made.child = [slave, slave, slave]
                made.outputs = [Output(master, int(args["stdout"]))]
                if args.get("stdin"):
                    made.input = Input(made.terminal, int(args["stdin"]), True)
                return made
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            opened += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            opened += [err_r, err_w]
            if args.get("stdin"):
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                opened += [in_r, in_w]
                made.input = Input(in_w, int(args["stdin"]), False)
            else:
                in_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                opened.append(in_r)
            made.child = [in_r, out_w, err_w]
            made.outputs = [Output(out_r, int(args["stdout"])), Output(err_r, int(args["stderr"]))]
            return made
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise

    def close_child(self) -> None:
        """After the fork: the child's ends are the child's alone."""
        for fd in set(self.child):
            os.close(fd)
        self.child = []

    def close(self) -> None:
        """Everything the agent kept (the outputs close themselves at their end)."""
        if self.input is not None and self.input.fd >= 0 and self.input.fd != self.terminal:
            os.close(self.input.fd)
        if self.terminal >= 0:
            os.close(self.terminal)
        self.terminal = -1
        if self.input is not None:
            self.input.fd = -1


def set_size(terminal: int, size: Any) -> None:
    if isinstance(size, dict):
        rows, cols = int(size.get("rows", 0)), int(size.get("cols", 0))
        if 0 < rows < 65536 and 0 < cols < 65536:
            fcntl.ioctl(terminal, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Process:
    """A container's PID 1, or a process exec'd in it, as the agent tracks it until it has
    exited and said all."""

    def __init__(self, container_id: str, stdio: Stdio, errors: int, exec_id: str = "") -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.stdio = stdio
        self.outputs = stdio.outputs
        self.errors = errors
        self.error = bytearray()
        self.status: int | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None and self.errors < 0 and not any(out.open for out in self.outputs)


class Export:
    """A helper's output (a tar of a container's root or changes) on its way to the host;
    answered once it has all gone."""

    def __init__(self, box: container.Container, what: str, reply: Reply, output: Output, errors: int,
                 thaw: bool) -> None:
        self.box = box
        self.what = what
        self.thaw = thaw
        """Whether the container's cgroup was frozen for this, to thaw at the end."""
        self.reply = reply
        self.output = output
        self.errors = errors
        self.error = bytearray()
        self.status: int | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None and self.errors < 0 and not self.output.open


class Agent:
    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.decoder = Decoder()
        self.pending = bytearray()
        self.running = True
        self.host_seen = False
        self.version = 1
        self.capabilities: set[str] = set()
        self.images = container.Images()
        self.containers: dict[str, container.Container] = {}
        self.shared: container.Shared | None = None
        """The namespaces the pod's containers share, made for the first container that asks."""
        self.processes: dict[int, Process] = {}
        self.exports: dict[int, Export] = {}
        self.outputs: dict[int, Output] = {}
        self.inputs: dict[int, Input] = {}
        self.terminals: dict[tuple[str, str], int] = {}
        """(container id, exec id or "") -> its pty's master, for ``resize``."""
        self.handlers: dict[str, Handler] = {
            "init": self.init,
            "container.start": self.start_container,
            "container.export": self.export_container,
            "container.changes": self.container_changes,
            "process.start": self.start_process,
            "resize": self.resize,
            "container.top": self.top,
            "container.stats": self.stats,
            "container.update": self.update,
            "network.configure": self.configure_network,
            "signal": self.signal,
            "shutdown": self.shutdown,
        }
        # Output from a pipe goes to the port by splice(2), through this pipe of the agent's own:
        # the port's splice must empty the pipe it takes from, or the 6.1 guest kernel crashes
        # (virtio_console marks its scatterlist's end at the pipe's occupancy, past what it filled),
        # and a frame's length must be known before its bytes leave.
        self.relay_r, self.relay_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(self.relay_r, F_SETPIPE_SZ, PIPE_SIZE)
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(wake_read, selectors.EVENT_READ, lambda _mask: self.on_signal(wake_read))
        self.selector.register(port, selectors.EVENT_READ, self.on_port)

    def serve(self, started: float) -> None:
        self.event("ready", versions=list(VERSIONS), capabilities=list(CAPABILITIES), agent=AGENT_VERSION,
                   boot={"init_start": started, "agent_ready": uptime()})
        while self.running or self.pending:
            for key, mask in self.selector.select():
                key.data(mask)

    # -- the wire ---------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if not self.pending:
            # Straight to the port, as far as it takes it: no copy into the queue, and no moving
            # the queue's rest down after each (at most 32 KiB) write the port driver accepts.
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.port, view):]
            except BlockingIOError:
                pass
            data = view.tobytes()
            if not data:
                return
        self.pending += data
        self.flush()

    def flush(self) -> None:
        sent = 0
        view = memoryview(self.pending)
        try:
            while sent < len(view):
                sent += os.write(self.port, view[sent:])
        except BlockingIOError:
            pass
        finally:
            view.release()
        del self.pending[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.pending else 0)
        self.selector.modify(self.port, events, self.on_port)

    def send_relayed(self, size: int) -> None:
        """Send the ``size`` bytes the relay pipe holds: spliced to the port (its pages handed to the
        device, no copy), or read and queued behind what the port has not taken yet."""
        try:
            while size and not self.pending:
                size -= os.splice(self.relay_r, self.port, size, flags=os.SPLICE_F_NONBLOCK)
        except OSError:  # the port is full (EAGAIN), or the guest short of memory for its list (ENOMEM)
            pass
        if size:
            self.send(os.read(self.relay_r, size))

    def event(self, name: str, **fields: Any) -> None:
        self.send(encode_message(Kind.EVENT, {"event": name, **fields}))

    def on_port(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ:
            try:
                data = os.read(self.port, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                if not self.host_seen:  # the port polls as hung up until the host side opens
                    time.sleep(0.005)
                    return
                self.running = False  # hyperd went away: nobody is left to serve
                self.pending.clear()
                return
            self.host_seen = True
            for frame in self.decoder.feed(data):
                self.dispatch(frame)

    def dispatch(self, frame: Frame) -> None:
        if frame.kind == Kind.REQUEST:
            message = decode_message(frame)
            reply = Reply(self, message.get("id"))
            handler = self.handlers.get(str(message.get("op")))
            if handler is None:
                reply.fail(125, f"unknown operation {message.get('op')!r}")
                return
            try:
                handler(message.get("args") or {}, reply)
            except container.StartError as err:
                reply.fail(err.code, str(err)[:MAX_ERROR])
            except Exception as err:  # a bad request must not end the agent
                reply.fail(125, f"{message.get('op')}: {err}"[:MAX_ERROR])
        elif frame.kind in (Kind.DATA, Kind.EOF):
            inp = self.inputs.get(frame.stream)
            if inp is None:
                return  # the process ended, and its stdin with it: what the host still sent is moot
            if frame.kind == Kind.DATA:
                inp.pending += frame.payload
            else:
                inp.eof = True
            self.feed(inp)
        elif frame.kind == Kind.WINDOW:
            out = self.outputs.get(frame.stream)
            if out is not None and out.open:
                was_blocked = out.window <= 0
                out.window += decode_credit(frame)
                if was_blocked and out.window > 0:
                    self.selector.register(out.fd, selectors.EVENT_READ, self.reader(out))
        else:
            raise ProtocolError(f"unexpected {frame.kind.name} frame from the host")

    # -- container processes ----------------------------------------------------------

    def feed(self, inp: Input) -> None:
        """Write what the host sent to the process's stdin, as much as it takes now."""
        while inp.pending and inp.fd >= 0:
            try:
                written = os.write(inp.fd, inp.pending[:DATA_CHUNK])
            except BlockingIOError:
                if not inp.waiting:
                    inp.waiting = True
                    self.selector.register(inp.fd, selectors.EVENT_WRITE, lambda _mask: self.feed(inp))
                return
            except OSError:  # the process closed its stdin (or its terminal went): drop the rest
                written = len(inp.pending)
                self.end_input(inp)
            del inp.pending[:written]
            inp.unacked += written
        if inp.waiting:
            inp.waiting = False
            self.selector.unregister(inp.fd)
        if inp.unacked >= CREDIT_BATCH or (inp.unacked and not inp.pending):
            self.send(encode_window(inp.stream, inp.unacked))
            inp.unacked = 0
        if inp.eof and not inp.pending:
            self.end_input(inp)

    def end_input(self, inp: Input) -> None:
        """The end of stdin: a pipe is closed (the process reads EOF); a terminal stays, it is also the output."""
        if inp.waiting:
            inp.waiting = False
            self.selector.unregister(inp.fd)
        if not inp.tty and inp.fd >= 0:
            os.close(inp.fd)
            inp.fd = -1
        self.inputs.pop(inp.stream, None)

    def reader(self, out: Output) -> Callable[[int], None]:
        def on_readable(_mask: int) -> None:
            want = min(out.window, OUTPUT_CHUNK)
            data = None
            try:
                if out.pipe and not self.pending:
                    size = os.splice(out.fd, self.relay_w, want, flags=os.SPLICE_F_NONBLOCK)
                else:
                    data = os.read(out.fd, want)
                    size = len(data)
            except BlockingIOError:
                return
            except OSError:  # a pty master reads EIO once no process holds the terminal: its end
                size = 0
            if size:
                out.window -= size
                # Header and bytes written apart: joining them would copy every byte once more,
                # and copies are the dearest part of stdio under emulation.
                self.send(header(Kind.DATA, out.stream, size))
                if data is None:
                    self.send_relayed(size)
                else:
                    self.send(data)
                if out.window <= 0:
                    self.selector.unregister(out.fd)
                return
            self.selector.unregister(out.fd)
            os.close(out.fd)
            out.open = False
            del self.outputs[out.stream]
            self.send(encode(Kind.EOF, out.stream))
            self.check_all()

        return on_readable

    def on_signal(self, wake: int) -> None:
        while True:
            try:
                if not os.read(wake, 512):
                    break
            except BlockingIOError:
                break
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self.processes:
                self.processes[pid].status = exit_status(status)
            elif pid in self.exports:
                self.exports[pid].status = exit_status(status)
        self.check_all()

    def check_all(self) -> None:
        """Report each process whose exit is known and whose output has all been sent."""
        for pid, process in list(self.processes.items()):
            if not process.finished:
                continue
            del self.processes[pid]
            if process.stdio.input is not None:
                self.end_input(process.stdio.input)
            process.stdio.close()
            self.terminals.pop((process.container_id, process.exec_id), None)
            if process.exec_id:
                if not process.error:
                    self.event("exit", container=process.container_id, process=process.exec_id,
                               status=process.status)
                continue
            box = self.containers.pop(process.container_id, None)
            oom = False
            if box is not None:
                container.release(box)
                if box.cgroup:
                    oom = cgroup.oom_killed(box.cgroup)
                    cgroup.remove(box.cgroup)
            if not process.error:
                self.event("exit", container=process.container_id, status=process.status, oom=oom)
        for pid, export in list(self.exports.items()):
            if not export.finished:
                continue
            del self.exports[pid]
            if export.thaw:
                with contextlib.suppress(OSError):  # the container may be gone by now
                    cgroup.freeze(export.box.cgroup, False)
            if export.status == 0:
                export.reply.ok({})
            else:
                detail = export.error.decode(errors="replace").strip()
                export.reply.fail(125, f"{export.what} of {export.box.id[:12]} failed: exit status "
                                       f"{export.status}" + (f": {detail}" if detail else ""))

    # -- operations -------------------------------------------------------------------

    def init(self, args: dict[str, Any], reply: Reply) -> None:
        version = int(args.get("version", 1))
        if version not in VERSIONS:
            raise container.StartError(125, f"protocol version {version} is not one this agent speaks")
        self.version = version
        self.capabilities = set(args.get("capabilities", ())) & set(CAPABILITIES)
        if os.getpid() == 1:
            cgroup.enable()
        if "time" in args:
            time.clock_settime(time.CLOCK_REALTIME, float(args["time"]))
        seed = binascii.a2b_base64(args.get("entropy", ""))
        if seed:
            with open("/dev/urandom", "wb") as rnd:
                fcntl.ioctl(rnd, syscalls.RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        reply.ok({})

    def start_container(self, args: dict[str, Any], reply: Reply) -> None:
        cid = str(args["id"])
        if cid in self.containers:
            raise container.StartError(125, f"container {cid} already exists in this pod")
        spec = process_spec(args["process"])
        rootfs = args["rootfs"]
        lower = self.images.mount(str(rootfs["disk"]), str(rootfs.get("fstype", "erofs")))
        upper = rootfs.get("upper")
        box = container.assemble(cid, lower, (str(upper["disk"]), str(upper.get("fstype", "ext4"))) if upper else None)
        box.hostname = str(args.get("hostname") or box.hostname)
        security = args.get("security") or {}
        box.privileged = bool(security.get("privileged"))
        box.read_only = bool(security.get("read_only"))
        box.tmpfs = {str(k): str(v) for k, v in (args.get("tmpfs") or {}).items()}
        box.devices = [(str(d["disk"]), str(d["path"])) for d in rootfs.get("devices", [])]
        share = args.get("share") or {}
        if (share.get("pid") or share.get("ipc")) and self.shared is None:
            self.shared = container.Shared(bool(share.get("pid")), bool(share.get("ipc")))
        box.shared = self.shared if share.get("pid") or share.get("ipc") else None
        self.containers[cid] = box
        try:
            volumes.attach(box, list(rootfs.get("mounts") or []))
            box.cgroup = cgroup.create(cid, args.get("limits") or {})
            if not box.privileged:
                devcg.restrict(box.cgroup, [(devcg.BLOCK, *container.device_numbers(serial), devcg.RWM)
                                            for serial, _ in box.devices])
        except BaseException:
            del self.containers[cid]
            container.release(box)
            raise
        try:
            stdio = Stdio.open(args, box)
        except BaseException:
            del self.containers[cid]
            container.release(box)
            raise

        def spawn(errors: int) -> int:
            container.stage_files(box, args.get("files") or {}, list(args.get("inject") or ()))
            box.pid = container.spawn(box, spec, stdio.child, errors, stdio.terminal >= 0,
                                      {str(k): str(v) for k, v in (args.get("sysctls") or {}).items()})
            return box.pid

        try:
            self.launch(cid, "", stdio, spawn, reply)
        except BaseException:
            del self.containers[cid]
            container.release(box)
            cgroup.remove(box.cgroup)
            raise

    def start_process(self, args: dict[str, Any], reply: Reply) -> None:
        """``exec``: one more process in a running container's namespaces."""
        cid = str(args["container"])
        box = self.containers.get(cid)
        if box is None or not box.pid:
            raise container.StartError(125, f"no running container {cid} in this pod")
        exec_id = str(args["id"])
        if not exec_id or any(p.exec_id == exec_id for p in self.processes.values()):
            raise container.StartError(125, f"process {exec_id!r} is empty or already running")
        spec = process_spec(args["process"])
        stdio = Stdio.open(args, box)
        self.launch(cid, exec_id, stdio,
                    lambda errors: container.enter(box, spec, stdio.child, errors, stdio.terminal >= 0), reply)

    def launch(self, cid: str, exec_id: str, stdio: Stdio, spawn: Callable[[int], int], reply: Reply) -> None:
        """Fork a process with ``spawn`` and track it: its output streams, its stdin, its start's
        outcome (answered on ``reply``), its exit."""
        errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = spawn(errors_w)
        except BaseException:
            os.close(errors_r)
            stdio.close_child()
            for out in stdio.outputs:
                os.close(out.fd)
            stdio.close()
            raise
        finally:
            os.close(errors_w)
        stdio.close_child()
        process = Process(cid, stdio, errors_r, exec_id)
        self.processes[pid] = process
        for out in stdio.outputs:
            os.set_blocking(out.fd, False)
            self.outputs[out.stream] = out
            self.selector.register(out.fd, selectors.EVENT_READ, self.reader(out))
        if stdio.input is not None:
            os.set_blocking(stdio.input.fd, False)
            self.inputs[stdio.input.stream] = stdio.input
        if stdio.terminal >= 0:
            self.terminals[cid, exec_id] = stdio.terminal

        def on_errors(_mask: int) -> None:
            # EOF with nothing said means the process exec'd: the start succeeded.
            chunk = os.read(errors_r, 4096)
            if chunk:
                process.error += chunk[: max(0, 8192 - len(process.error))]
                return
            self.selector.unregister(errors_r)
            os.close(errors_r)
            process.errors = -1
            if process.error:
                try:
                    failure = json.loads(bytes(process.error))
                    reply.fail(int(failure["code"]), str(failure["message"]))
                except (ValueError, KeyError, TypeError):
                    reply.fail(125, "container setup failed: " + process.error.decode(errors="replace"))
            else:
                reply.ok({"pid": pid})
            self.check_all()

        self.selector.register(errors_r, selectors.EVENT_READ, on_errors)

    def _box(self, args: dict[str, Any]) -> container.Container:
        box = self.containers.get(str(args["id"]))
        if box is None or not box.pid:
            raise container.StartError(125, f"no running container {args['id']} in this pod")
        return box

    def top(self, args: dict[str, Any], reply: Reply) -> None:
        reply.ok({"processes": proc.processes(self._box(args).pid), "uptime": uptime()})

    def update(self, args: dict[str, Any], reply: Reply) -> None:
        cgroup.write_limits(self._box(args).cgroup, args.get("limits") or {})
        reply.ok({})

    def stats(self, args: dict[str, Any], reply: Reply) -> None:
        reply.ok(proc.stats(self._box(args).pid))

    def resize(self, args: dict[str, Any], reply: Reply) -> None:
        terminal = self.terminals.get((str(args["id"]), str(args.get("process") or "")))
        if terminal is None:
            raise container.StartError(125, "no such process with a terminal in this pod")
        set_size(terminal, args)
        reply.ok({})

    def export_container(self, args: dict[str, Any], reply: Reply) -> None:
        """Stream a tar of a running container's root filesystem (the image with its changes) on ``stream``.

        tar runs in the agent's mount namespace, where the container's overlay is mounted and
        its /proc, /sys and /dev are not (they are in the container's own namespace).
        """
        box = self.running_box(args)
        self.stream_command(box, "export", [*TAR, "-c", "-f", "-", "-C", box.root, "."], args, reply)

    def container_changes(self, args: dict[str, Any], reply: Reply) -> None:
        """Stream a running container's changes to its image on ``stream``: docker's diff lines
        (``format`` "diff") or an OCI layer tar ("layer"), made by ``hyperstart.changes``.

        With ``pause`` the container's cgroup is frozen until the layer is all out, so that
        it is consistent (docker's commit pauses the container too).
        """
        box = self.running_box(args)
        form = str(args.get("format"))
        if form not in ("diff", "layer"):
            raise container.StartError(125, f"unknown changes format {form!r}")
        command = [sys.executable, "-SsB", "-m", "hyperstart.changes", form, box.upper]
        if form == "diff":
            command += box.lower
        frozen = bool(args.get("pause")) and bool(box.cgroup)
        if frozen:
            cgroup.freeze(box.cgroup, True)
        try:
            self.stream_command(box, f"{form} of the container", command, args, reply, thaw=frozen)
        except BaseException:
            if frozen:
                cgroup.freeze(box.cgroup, False)
            raise

    def running_box(self, args: dict[str, Any]) -> container.Container:
        cid = str(args["id"])
        box = self.containers.get(cid)
        if box is None:
            raise container.StartError(125, f"no running container {cid} in this pod")
        return box

    def stream_command(self, box: container.Container, what: str, command: list[str], args: dict[str, Any],
                       reply: Reply, thaw: bool = False) -> None:
        """Run ``command`` in the agent's namespaces with its stdout on the host's ``stream``;
        the reply comes once every byte is sent and the command has exited."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            pid = os.posix_spawn(command[0], command, {"PATH": "/bin", "PYTHONPATH": "/usr/lib/hyperstart"},
                                 file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                                               (os.POSIX_SPAWN_DUP2, err_w, 2)])
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            for fd in (out_w, err_w, null):
                os.close(fd)
        output = Output(out_r, int(args["stream"]))
        export = Export(box, what, reply, output, err_r, thaw)
        self.exports[pid] = export
        os.set_blocking(out_r, False)
        self.outputs[output.stream] = output
        self.selector.register(out_r, selectors.EVENT_READ, self.reader(output))

        def on_errors(_mask: int) -> None:
            chunk = os.read(err_r, 4096)
            if chunk:
                export.error += chunk[: max(0, MAX_ERROR - len(export.error))]
                return
            self.selector.unregister(err_r)
            os.close(err_r)
            export.errors = -1
            self.check_all()

        self.selector.register(err_r, selectors.EVENT_READ, on_errors)

    def configure_network(self, args: dict[str, Any], reply: Reply) -> None:
        """The pod's interfaces: each found by its MAC, given its address, MTU and (the first) default route."""
        names = []
        for interface in args.get("interfaces", []):
            address, _, prefix = str(interface["address"]).partition("/")
            names.append(network.configure(str(interface["mac"]), address, int(prefix or 24),
                                           int(interface.get("mtu", 1500)), str(interface.get("gateway") or "")))
        reply.ok({"interfaces": names})

    def signal(self, args: dict[str, Any], reply: Reply) -> None:
        box = self.containers.get(str(args["id"]))
        if box is None:
            raise container.StartError(125, f"no running container {args['id']} in this pod")
        exec_id = str(args.get("process") or "")
        targets = [pid for pid, p in self.processes.items() if p.container_id == box.id and p.exec_id == exec_id]
        for pid in targets if exec_id else [box.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, int(args["signal"]))
        reply.ok({})

    def shutdown(self, _args: dict[str, Any], reply: Reply) -> None:
        for box in self.containers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(box.pid, signal.SIGKILL)
        os.sync()
        self.running = False
        reply.ok({})


def process_spec(args: dict[str, Any]) -> container.ProcessSpec:
    return container.ProcessSpec(
        args=[str(a) for a in args["args"]],
        env=[str(e) for e in args.get("env", [])],
        cwd=str(args.get("cwd") or "/"),
        user=str(args.get("user") or ""),
        rlimits=[(int(r), int(soft), int(hard)) for r, soft, hard in args.get("rlimits", [])],
        capabilities=[int(c) for c in args["capabilities"]] if "capabilities" in args else None,
        no_new_privileges=bool(args.get("no_new_privileges")),
        seccomp=seccomp.check(binascii.a2b_base64(args["seccomp"], strict_mode=True)) if "seccomp" in args else None,
        tool=bool(args.get("tool")),
    )


def main(started: float) -> None:
    """Serve until shutdown; ``started`` is the guest uptime at /init's first statement."""
    if os.getpid() == 1:
        mount_basics()
        network.up_loopback()
    port = os.open(find_port(), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        Agent(port).serve(started)
    except ProtocolError as err:
        print(f"hyperstart: protocol error from the host: {err}", file=sys.stderr)
    finally:
        if os.getpid() == 1:
            os.sync()
            syscalls.reboot()
