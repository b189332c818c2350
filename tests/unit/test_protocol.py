"""Framing and bounds of the host/guest protocol (no VM)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from hyperstart import protocol
from hyperstart.protocol import Decoder, Kind, ProtocolError


def test_frames_survive_arbitrary_splits() -> None:
    wire = (protocol.encode_message(Kind.REQUEST, {"id": 1, "op": "init"})
            + protocol.encode(Kind.DATA, 3, b"x" * 70000)
            + protocol.encode(Kind.EOF, 3)
            + protocol.encode_window(3, 4096))
    for step in (1, 7, 4096, len(wire)):
        decoder = Decoder()
        frames = [f for i in range(0, len(wire), step) for f in decoder.feed(wire[i:i + step])]
        assert [f.kind for f in frames] == [Kind.REQUEST, Kind.DATA, Kind.EOF, Kind.WINDOW]
        assert protocol.decode_message(frames[0]) == {"id": 1, "op": "init"}
        assert frames[1].payload == b"x" * 70000 and frames[1].stream == 3
        assert protocol.decode_credit(frames[3]) == 4096


def test_oversized_frame_is_rejected_from_its_header() -> None:
    header = protocol.HEADER.pack(Kind.DATA, 0, 0, 1, protocol.MAX_PAYLOAD + 1)
    with pytest.raises(ProtocolError, match="limit"):
        Decoder().feed(header)


@pytest.mark.parametrize("header, message", [
    (protocol.HEADER.pack(99, 0, 0, 0, 0), "unknown frame kind"),
    (protocol.HEADER.pack(Kind.EVENT, 1, 0, 0, 0), "reserved"),
    (protocol.HEADER.pack(Kind.DATA, 0, 0, 0, 0), "stream id 0"),
    (protocol.HEADER.pack(Kind.REPLY, 0, 0, 5, 0), "stream id 5"),
])
def test_malformed_headers(header: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Decoder().feed(header)


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe", b"{" * 10])
def test_messages_must_be_json_objects(payload: bytes) -> None:
    (frame,) = Decoder().feed(protocol.encode(Kind.EVENT, 0, payload))
    with pytest.raises(ProtocolError):
        protocol.decode_message(frame)


def test_message_size_is_bounded() -> None:
    big = protocol.encode(Kind.EVENT, 0, b'{"a":"' + b"x" * protocol.MAX_MESSAGE + b'"}')
    (frame,) = Decoder().feed(big)
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode_message(frame)


def test_exit_status_follows_docker() -> None:
    done = subprocess.run(["sh", "-c", "exit 7"], check=False)
    assert done.returncode == 7
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert protocol.exit_status(status) == 137
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert protocol.exit_status(status) == 7
