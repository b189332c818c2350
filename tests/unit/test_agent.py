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
from hyperstart.agent import Agent
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
