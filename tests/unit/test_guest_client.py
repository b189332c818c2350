"""hyperd treats the guest as untrusted: a fake agent on a socketpair misbehaves (no VM)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from hyperd.errors import GuestError, StartFailed
from hyperd.guest import AgentClient, ExitEvent
from hyperstart import protocol
from hyperstart.protocol import Kind

READY = {"event": "ready", "versions": [1, 7], "capabilities": ["containers"], "agent": "t",
         "boot": {"init_start": 1.5, "agent_ready": 1.75}}


async def session(*frames: bytes, then: Any = None) -> tuple[AgentClient, socket.socket, list[ExitEvent]]:
    host, guest = socket.socketpair()
    exits: list[ExitEvent] = []
    client = AgentClient(host, exits.append)
    await client.start()
    guest.sendall(b"".join(frames))
    return client, guest, exits


def event(message: dict[str, Any]) -> bytes:
    return protocol.encode_message(Kind.EVENT, message)


async def test_negotiates_the_highest_common_version() -> None:
    client, guest, _ = await session(event(READY))
    info = await asyncio.wait_for(client.ready(), 5)
    assert info.version == 1 and info.capabilities == {"containers"}
    assert info.init_started == 1.5 and info.agent_startup == 0.25
    await client.close()
    guest.close()


async def test_no_common_version_is_refused() -> None:
    client, guest, _ = await session(event({**READY, "versions": [2, 3]}))
    with pytest.raises(GuestError, match="protocol versions"):
        await asyncio.wait_for(client.ready(), 5)
    guest.close()


async def test_replies_and_errors_reach_the_caller() -> None:
    client, guest, _ = await session(event(READY))
    await client.ready()
    pending = asyncio.ensure_future(client.request("container.start", {}))
    await asyncio.sleep(0.05)
    guest.sendall(protocol.encode_message(Kind.REPLY, {"id": 1, "error": {"code": 127, "message": "nope"}}))
    with pytest.raises(StartFailed) as caught:
        await asyncio.wait_for(pending, 5)
    assert caught.value.exit_code == 127 and str(caught.value) == "nope"
    await client.close()
    guest.close()


async def test_output_then_exit_in_order() -> None:
    client, guest, exits = await session(event(READY))
    await client.ready()
    stream = client.open_stream()
    guest.sendall(protocol.encode(Kind.DATA, stream.id, b"hello ") + protocol.encode(Kind.DATA, stream.id, b"vm")
                  + protocol.encode(Kind.EOF, stream.id) + event({"event": "exit", "container": "c", "status": 7}))
    data = b""
    while chunk := await asyncio.wait_for(stream.read(), 5):
        data += chunk
    assert data == b"hello vm"
    await asyncio.sleep(0.05)
    assert exits == [ExitEvent("c", 7)]
    await client.close()
    guest.close()


@pytest.mark.parametrize("bad, message", [
    (protocol.encode(Kind.DATA, 99, b"x"), "unknown or closed stream"),
    (protocol.encode_message(Kind.REQUEST, {"id": 1, "op": "x"}), "only hyperd may send"),
    (protocol.encode_message(Kind.REPLY, {"id": 42, "result": {}}), "not pending"),
    (event({"event": "exit", "container": "c", "status": 999}), "exit status"),
    (event({"event": "exit", "container": "x" * 5000, "status": 0}), "container id"),
    (event({"event": "surprise"}), "unexpected event"),
    (b"\x63" + b"\0" * 11, "protocol violation"),
])
async def test_misbehaving_guest_ends_the_session(bad: bytes, message: str) -> None:
    client, guest, _ = await session(event(READY))
    await client.ready()
    pending = asyncio.ensure_future(client.request("init"))
    guest.sendall(bad)
    with pytest.raises(GuestError, match=message):
        await asyncio.wait_for(pending, 5)
    assert client.error is not None
    guest.close()


async def test_window_overrun_is_a_violation() -> None:
    client, guest, _ = await session(event(READY))
    await client.ready()
    stream = client.open_stream()
    chunk = b"x" * protocol.DATA_CHUNK
    flood = b"".join(protocol.encode(Kind.DATA, stream.id, chunk)
                     for _ in range(protocol.INITIAL_WINDOW // protocol.DATA_CHUNK + 1))
    # From a thread: the client reads on this loop, and a megabyte does not fit a socket buffer.
    sender = asyncio.ensure_future(asyncio.to_thread(guest.sendall, flood))
    await asyncio.wait_for(client.closed, 5)
    guest.close()
    await asyncio.gather(sender, return_exceptions=True)
    assert isinstance(client.error, GuestError) and "window" in str(client.error)
    guest.close()


async def test_deeply_nested_json_ends_the_session_instead_of_hanging() -> None:
    client, guest, _ = await session(event(READY))
    await client.ready()
    pending = asyncio.ensure_future(client.request("init"))
    guest.sendall(protocol.encode(Kind.REPLY, 0, b"[" * 100000))
    with pytest.raises(GuestError, match="protocol violation"):
        await asyncio.wait_for(pending, 5)
    guest.close()


async def test_a_silent_agent_times_out() -> None:
    client, guest, _ = await session(event(READY))
    await client.ready()
    with pytest.raises(GuestError, match="did not answer init"):
        await client.request("init", timeout=0.2)
    await client.close()
    guest.close()


async def test_only_start_failures_carry_an_exit_code() -> None:
    client, guest, _ = await session(event(READY))
    await client.ready()
    pending = asyncio.ensure_future(client.request("signal", {}))
    await asyncio.sleep(0.05)
    guest.sendall(protocol.encode_message(Kind.REPLY, {"id": 1, "error": {"code": 125, "message": "no such"}}))
    with pytest.raises(GuestError, match="signal: no such"):
        await asyncio.wait_for(pending, 5)
    await client.close()
    guest.close()
