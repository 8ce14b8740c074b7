"""The forwarding protocol between net processes and the control process:
tagged envelopes around raw Kafka frames, on one Unix stream connection.

Net processes forward control-plane requests (groups, offsets, topic admin,
producer ids) to the control process as the client's Kafka request frame,
unchanged. A JoinGroup or SyncGroup may wait seconds for other members, so
replies come back out of order; each message carries a tag the sender
chose, and the reply repeats it. The net process matches replies by tag
and keeps the client-facing response order itself.

Layout (all integers big-endian)::

    message := INT32 length | INT64 tag | payload
      length  bytes after the length field: 8 + len(payload)
      tag     the sender's id for the request; the reply carries the same
    request payload: the Kafka request frame, its own INT32 size included
    reply payload:   the Kafka response frame, its own INT32 size included,
                     or nothing: "no response"

"No response" is sent only for a request the control process cannot parse
or does not serve (a protocol violation): Kafka closes the connection
then, and so should the net process. Every control-plane API has a
response, so a valid request always gets one.

The tag space belongs to the connection: a net process uses a counter per
connection. Tags are opaque to the control process.

Imported by the control process (server side) and by anything that talks to
it (``broker.control.client``, used by net and metrics processes). Pure
functions and a buffer object; no I/O, not thread-safe.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# INT32 length | INT64 tag.
ENVELOPE = struct.Struct(">iq")
ENVELOPE_SIZE = ENVELOPE.size
TAG_SIZE = 8

# The Kafka frame's own size prefix.
FRAME_SIZE = struct.Struct(">i")


class ForwardingError(Exception):
    """The peer sent bytes that are not a valid forwarding message; the
    connection must be closed (there is no way to resynchronise)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Message(NamedTuple):
    """One decoded message: its tag and its payload (b"" = no response)."""

    tag: int
    payload: bytes


def encode_message(tag: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One message with ``payload`` (a whole Kafka frame, or b"" for a reply
    without response)."""
    return ENVELOPE.pack(TAG_SIZE + len(payload), tag) + bytes(payload)


def encode_request(tag: int, frame: bytes | bytearray | memoryview) -> bytes:
    """A forwarded request; ``frame`` is the Kafka request with its size prefix."""
    check_frame(frame, "request")
    return encode_message(tag, frame)


def encode_reply(tag: int, frame: bytes | bytearray | memoryview | None) -> bytes:
    """A reply; ``frame`` is the Kafka response with its size prefix, or None
    for "no response"."""
    if frame is None:
        return encode_message(tag)
    check_frame(frame, "response")
    return encode_message(tag, frame)


def check_frame(frame: bytes | bytearray | memoryview, what: str) -> None:
    """Raise ForwardingError unless ``frame`` is one whole size-prefixed frame."""
    if len(frame) < FRAME_SIZE.size:
        raise ForwardingError(f"{what} frame of {len(frame)} bytes has no size prefix")
    size = FRAME_SIZE.unpack_from(frame, 0)[0]
    if size != len(frame) - FRAME_SIZE.size:
        raise ForwardingError(
            f"{what} frame size prefix says {size} bytes"
            f" but {len(frame) - FRAME_SIZE.size} follow"
        )


class MessageReader:
    """Reassembles messages from a byte stream (sans-IO).

    ``feed`` takes whatever the socket returned and gives back every message
    completed by it. A length outside [8, 8 + max_payload_bytes] raises
    ForwardingError; the reader is then unusable (the stream has lost
    framing).
    """

    def __init__(self, max_payload_bytes: int, *, frames_required: bool) -> None:
        # frames_required: a request stream (every payload is a frame); a
        # reply stream also allows the empty payload.
        self.max_payload_bytes = max_payload_bytes
        self.frames_required = frames_required
        self._buffer = bytearray()
        self._failed: ForwardingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        messages: list[Message] = []
        view = memoryview(self._buffer)
        pos = 0
        end = len(view)
        try:
            # Each turn takes one whole message, so the loop runs at most
            # len(buffer) / ENVELOPE_SIZE times.
            while end - pos >= ENVELOPE_SIZE:
                length, tag = ENVELOPE.unpack_from(view, pos)
                payload_size = length - TAG_SIZE
                if payload_size < 0 or payload_size > self.max_payload_bytes:
                    self._failed = ForwardingError(
                        f"message length {length} outside"
                        f" [{TAG_SIZE}, {TAG_SIZE + self.max_payload_bytes}]"
                    )
                    raise self._failed
                if end - pos - ENVELOPE_SIZE < payload_size:
                    break
                start = pos + ENVELOPE_SIZE
                payload = bytes(view[start : start + payload_size])
                if payload or self.frames_required:
                    try:
                        check_frame(payload, "forwarded")
                    except ForwardingError as exc:
                        self._failed = exc
                        raise
                messages.append(Message(tag, payload))
                pos = start + payload_size
        finally:
            view.release()
        if pos:
            del self._buffer[:pos]
        return messages
