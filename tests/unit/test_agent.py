"""hyperstart's request handling, driven over a socketpair in place of the virtio port (no VM)."""

from __future__ import annotations

import os
import selectors
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from hyperstart import protocol
from hyperstart.agent import OUTPUT_CHUNK, Agent, Output
from hyperstart.protocol import Decoder, Kind


class Host:
    def __init__(self, sock: socket.socket, agent: Agent) -> None:
        self.sock = sock
        self.agent = agent
        self.decoder = Decoder()
        self.ids = 0

    def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        self.sock.sendall(protocol.encode_message(Kind.REQUEST, {"id": self.ids, "op": op, "args": args}))
        self.agent.on_port(selectors.EVENT_READ)
        (frame,) = self.decoder.feed(self.sock.recv(1 << 16))
        reply = protocol.decode_message(frame)
        assert frame.kind == Kind.REPLY and reply["id"] == self.ids
        return reply


@pytest.fixture
def host() -> Iterator[Host]:
    ours, theirs = socket.socketpair()
    previous = signal.getsignal(signal.SIGCHLD)
    theirs.setblocking(False)  # as the agent opens its port
    agent = Agent(os.dup(theirs.fileno()))
    theirs.close()
    try:
        yield Host(ours, agent)
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, previous)
        os.close(agent.port)
        ours.close()


def test_unknown_operations_are_refused_not_fatal(host: Host) -> None:
    assert host.request("frobnicate", {})["error"] == {"code": 125, "message": "unknown operation 'frobnicate'"}
    assert host.request("init", {"version": 1, "capabilities": ["stdio", "teleport"]}) == {"id": 2, "result": {}}
    assert host.agent.capabilities == {"stdio"}


def test_a_version_the_agent_does_not_speak_is_refused(host: Host) -> None:
    reply = host.request("init", {"version": 99})
    assert reply["error"]["code"] == 125 and "protocol version 99" in reply["error"]["message"]


def test_malformed_arguments_get_an_error_reply(host: Host) -> None:
    assert host.request("signal", {})["error"]["code"] == 125
    reply = host.request("signal", {"id": "nope", "signal": 15})
    assert reply["error"] == {"code": 125, "message": "no running container nope in this pod"}
    assert host.request("container.start", {"id": "c", "rootfs": "not an object"})["error"]["code"] == 125


def test_output_reaches_the_host_whole_spliced_or_queued(host: Host) -> None:
    """A pipe's output goes to the port by splice while the port takes it, and is read and
    queued once the port is full (the host not reading): either way, every byte in order."""
    out_r, out_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    output = Output(out_r, 7)
    assert output.pipe
    output.window = 1 << 30  # credit enough: this test is not about flow control
    host.agent.outputs[7] = output
    on_readable = host.agent.reader(output)
    host.agent.selector.register(out_r, selectors.EVENT_READ, on_readable)
    written = bytearray()
    while not host.agent.pending:  # the host reads nothing: the port fills up
        piece = os.urandom(OUTPUT_CHUNK // 2 + len(written) % 4093)
        os.write(out_w, piece)
        written += piece
        on_readable(selectors.EVENT_READ)
    for _ in range(3):  # and output goes on meanwhile, queued
        piece = os.urandom(OUTPUT_CHUNK)
        os.write(out_w, piece)
        written += piece
        on_readable(selectors.EVENT_READ)
    os.close(out_w)
    host.sock.setblocking(False)
    received = bytearray()
    while host.agent.pending or out_r in host.agent.selector.get_map():  # the host reads again
        received += _recv_now(host.sock)
        host.agent.flush()
        if out_r in host.agent.selector.get_map():
            on_readable(selectors.EVENT_READ)
    while chunk := _recv_now(host.sock):
        received += chunk
    frames = host.decoder.feed(bytes(received))
    assert [frame.kind for frame in frames[-1:]] == [Kind.EOF]
    assert {frame.stream for frame in frames} == {7}
    assert b"".join(frame.payload for frame in frames[:-1]) == written
    assert all(0 < len(frame.payload) <= OUTPUT_CHUNK for frame in frames[:-1])


def _recv_now(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""
