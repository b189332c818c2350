"""The host/guest protocol spoken over the agent's virtio-serial port.

Owned by the guest agent; hyperd imports it, never the other way round.  Standard
library only: this module runs inside the VM.  ``docs/protocol.md`` is its prose form.

Every frame is a 12-byte header followed by a payload::

    kind   u8    Kind below
    flags  u8    0 (reserved)
    rsvd   u16   0 (reserved)
    stream u32   stream id for DATA/EOF/WINDOW, 0 otherwise
    length u32   payload length, at most MAX_PAYLOAD

REQUEST, REPLY and EVENT payloads are UTF-8 JSON objects.  DATA payloads are raw
bytes, EOF is empty, WINDOW carries a u32 credit increment.
"""

from __future__ import annotations

import enum
import json
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # the guest pays for every import: typing only for the checker
    from typing import Any

VERSIONS = (1,)
"""Protocol versions this module speaks; the two sides settle on the highest common one."""

PORT_NAME = "sh.hyper.agent.0"
"""Name of the virtio-serial port the agent serves."""

HEADER = struct.Struct("!BBHII")
MAX_PAYLOAD = 1 << 20
"""No frame payload may exceed this; a peer that sends a larger one is cut off."""

DATA_CHUNK = 64 << 10
"""Largest DATA payload a sender produces."""

INITIAL_WINDOW = 1 << 20
"""Bytes a sender may put on a stream before the receiver grants more with WINDOW."""

MAX_MESSAGE = 256 << 10
"""Largest JSON message (REQUEST, REPLY, EVENT) either side accepts."""

CREDIT = struct.Struct("!I")


class Kind(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    EVENT = 3
    DATA = 4
    EOF = 5
    WINDOW = 6

    @property
    def is_message(self) -> bool:
        return self in (Kind.REQUEST, Kind.REPLY, Kind.EVENT)

    @property
    def on_stream(self) -> bool:
        return self in (Kind.DATA, Kind.EOF, Kind.WINDOW)


class ProtocolError(Exception):
    """The peer broke the framing or sent a message that cannot be understood."""


class Frame:
    __slots__ = ("kind", "payload", "stream")

    def __init__(self, kind: Kind, stream: int, payload: bytes) -> None:
        self.kind = kind
        self.stream = stream
        self.payload = payload


def header(kind: Kind, stream: int, length: int) -> bytes:
    """A frame's header alone, for a payload written after it (no copy of the two joined)."""
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, 0, 0, stream, length)


def encode(kind: Kind, stream: int, payload: bytes = b"") -> bytes:
    return header(kind, stream, len(payload)) + payload


def encode_message(kind: Kind, message: dict[str, Any]) -> bytes:
    return encode(kind, 0, json.dumps(message, separators=(",", ":")).encode())


def encode_window(stream: int, credit: int) -> bytes:
    return encode(Kind.WINDOW, stream, CREDIT.pack(credit))


def decode_message(frame: Frame) -> dict[str, Any]:
    if len(frame.payload) > MAX_MESSAGE:
        raise ProtocolError(f"{frame.kind.name} message of {len(frame.payload)} bytes exceeds {MAX_MESSAGE}")
    try:
        message = json.loads(frame.payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ProtocolError(f"{frame.kind.name} message is not JSON: {type(err).__name__}") from err
    if not isinstance(message, dict):
        raise ProtocolError(f"{frame.kind.name} message is not a JSON object")
    return message


def decode_credit(frame: Frame) -> int:
    if len(frame.payload) != CREDIT.size:
        raise ProtocolError(f"WINDOW frame with {len(frame.payload)}-byte payload")
    (credit,) = CREDIT.unpack(frame.payload)
    return int(credit)


class Decoder:
    """Turns a byte stream into frames, rejecting anything malformed before buffering it."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, flags, reserved, stream, length = HEADER.unpack_from(self._buffer)
            try:
                kind = Kind(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind}") from None
            if flags or reserved:
                raise ProtocolError(f"reserved header bits set in {kind.name} frame")
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"{kind.name} frame announces {length} bytes, limit is {MAX_PAYLOAD}")
            if kind.on_stream != (stream != 0):
                raise ProtocolError(f"{kind.name} frame with stream id {stream}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(kind, stream, bytes(self._buffer[HEADER.size:end])))
            del self._buffer[:end]
        return frames


def exit_status(wait_status: int) -> int:
    """Docker's convention: the exit code, or 128 + N for a death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code
