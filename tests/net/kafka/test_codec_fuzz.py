"""Property tests: whatever bytes arrive, decoding raises only the codec's own
exceptions (CodecError subclasses), never IndexError, struct.error, ...."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from net.kafka.codec import (
    decode_consumer_protocol,
    decode_request,
    decode_response,
)
from net.kafka.codec_errors import CodecError
from net.kafka.framing import scan_frames
from net.kafka.schema import RESPONSES

_SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _decode_request_or_codec_error(payload: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_request(memoryview(payload))


@_SETTINGS
@given(st.binary(max_size=300))
def test_decode_request_raises_only_codec_errors_for_random_bytes(data: bytes) -> None:
    _decode_request_or_codec_error(data)


@_SETTINGS
@given(
    api_key=st.sampled_from(sorted(RESPONSES)),
    version=st.integers(0, 17),
    data=st.binary(max_size=300),
)
def test_decode_request_raises_only_codec_errors_for_random_bodies(
    api_key: int, version: int, data: bytes
) -> None:
    # A well-formed header in front of random bytes reaches the body decoders.
    header = struct.pack(">hhih", api_key, version, 1, 1) + b"c"
    _decode_request_or_codec_error(header + b"\x00" + data)
    _decode_request_or_codec_error(header + data)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(
        st.just("int32"),
        st.integers(0, 10_000),
        st.sampled_from([-2, -1, 0, 0x7FFFFFFF, -(1 << 31), 1 << 20]),
    ),
    st.tuples(st.just("varint"), st.integers(0, 10_000), st.just(0)),
)


def _mutate(payload: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(payload)
    for kind, where, value in steps:
        if not data:
            break
        at = where % len(data)
        if kind == "flip":
            data[at] ^= value
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data.insert(at, value)
        elif kind == "delete":
            del data[at : at + value]
        elif kind == "int32" and at + 4 <= len(data):
            struct.pack_into(">i", data, at, value)
        elif kind == "varint":
            data[at:at] = b"\xff\xff\xff\xff\xff\x0f"
    return bytes(data)


@_SETTINGS
@given(index=st.integers(0, 10_000), steps=st.lists(mutation, min_size=1, max_size=4))
def test_decode_request_raises_only_codec_errors_for_mutated_frames(
    valid_request_payloads: list[bytes], index: int, steps: list[tuple[str, int, int]]
) -> None:
    payload = valid_request_payloads[index % len(valid_request_payloads)]
    _decode_request_or_codec_error(_mutate(payload, steps))


@_SETTINGS
@given(
    api_key=st.sampled_from(sorted(RESPONSES)),
    version=st.integers(0, 17),
    data=st.binary(max_size=300),
)
def test_decode_response_raises_only_codec_errors(
    api_key: int, version: int, data: bytes
) -> None:
    with contextlib.suppress(CodecError):
        decode_response(api_key, version, data)


@_SETTINGS
@given(
    name=st.sampled_from(
        ["ConsumerProtocolSubscription", "ConsumerProtocolAssignment"]
    ),
    data=st.binary(max_size=200),
)
def test_decode_consumer_protocol_raises_only_codec_errors(
    name: str, data: bytes
) -> None:
    with contextlib.suppress(CodecError):
        decode_consumer_protocol(name, data)


@_SETTINGS
@given(data=st.binary(max_size=200), limit=st.integers(0, 64))
def test_scan_frames_raises_only_codec_errors(data: bytes, limit: int) -> None:
    try:
        scan = scan_frames(bytearray(data), limit)
    except CodecError:
        return
    assert sum(len(f) + 4 for f in scan.frames) == scan.consumed
