"""The forwarding envelope codec (pure bytes)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.control.forwarding import (
    ForwardingError,
    Message,
    MessageReader,
    encode_message,
    encode_reply,
    encode_request,
)


def frame(body: bytes) -> bytes:
    """A size-prefixed frame around ``body``."""
    return struct.pack(">i", len(body)) + body


def test_encode_request_lays_out_length_tag_and_frame() -> None:
    payload = frame(b"\x00\x0c\x00\x01hello")
    message = encode_request(-7, payload)
    assert message[:4] == struct.pack(">i", 8 + len(payload))
    assert message[4:12] == struct.pack(">q", -7)
    assert message[12:] == payload


def test_encode_reply_without_response_is_tag_only() -> None:
    assert encode_reply(2**63 - 1, None) == struct.pack(">iq", 8, 2**63 - 1)


def test_encode_request_rejects_frame_with_wrong_size_prefix() -> None:
    with pytest.raises(ForwardingError, match="size prefix says 9 bytes but 2 follow"):
        encode_request(1, struct.pack(">i", 9) + b"ab")
    with pytest.raises(ForwardingError, match="no size prefix"):
        encode_request(1, b"ab")


def test_reader_reassembles_messages_fed_byte_by_byte() -> None:
    messages = [(1, frame(b"one")), (2, frame(b"")), (3, frame(b"three" * 50))]
    stream = b"".join(encode_request(tag, payload) for tag, payload in messages)
    reader = MessageReader(1024, frames_required=True)
    seen: list[Message] = []
    for index in range(len(stream)):
        seen += reader.feed(stream[index : index + 1])
    assert [(m.tag, m.payload) for m in seen] == messages
    assert reader.buffered == 0


def test_reader_accepts_empty_payload_only_on_reply_streams() -> None:
    reply = encode_reply(5, None)
    assert MessageReader(64, frames_required=False).feed(reply) == [Message(5, b"")]
    with pytest.raises(ForwardingError, match="no size prefix"):
        MessageReader(64, frames_required=True).feed(reply)


@pytest.mark.parametrize("length", [7, -1, 8 + 65])
def test_reader_rejects_impossible_length_and_stays_failed(length: int) -> None:
    reader = MessageReader(64, frames_required=False)
    with pytest.raises(ForwardingError, match=f"message length {length} outside"):
        reader.feed(struct.pack(">iq", length, 1))
    with pytest.raises(ForwardingError):
        reader.feed(encode_reply(1, None))


def test_reader_rejects_payload_whose_frame_size_disagrees() -> None:
    bad = encode_message(1, struct.pack(">i", 100) + b"x")
    with pytest.raises(ForwardingError, match="size prefix says 100 bytes"):
        MessageReader(1024, frames_required=True).feed(bad)


@given(
    messages=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.binary(max_size=40)), max_size=6
    ),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_reader_yields_same_messages_for_any_split(
    messages: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_reply(tag, frame(body)) for tag, body in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = MessageReader(1024, frames_required=False)
    seen: list[Message] = []
    for start, end in itertools.pairwise(points):
        seen += reader.feed(stream[start:end])
    assert [(m.tag, m.payload) for m in seen] == [
        (tag, frame(body)) for tag, body in messages
    ]
