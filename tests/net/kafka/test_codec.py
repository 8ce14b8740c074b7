"""Round trips and edge cases of net.kafka.codec (pure bytes, no sockets)."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest

from net.kafka.codec import (
    FileRange,
    RequestHeader,
    chunks_size,
    decode_consumer_protocol,
    decode_data,
    decode_request,
    decode_request_body,
    decode_request_header,
    decode_response,
    encode_consumer_protocol,
    encode_data,
    encode_request,
    encode_response,
    encode_response_bytes,
    join_chunks,
    request_header_version,
    response_header_version,
)
from net.kafka.codec_errors import (
    CodecError,
    EncodeError,
    InvalidLengthError,
    InvalidValueError,
    TruncatedError,
    UnsupportedApiError,
)
from net.kafka.compiler import INLINE_RECORDS_MAX
from net.kafka.schema import MESSAGES, REQUESTS, RESPONSES, ApiKey
from net.kafka.versions import ADVERTISED
from net.kafka.wire import uvarint_bytes

ALL_VERSIONS = [
    (api_key, version)
    for api_key, message in sorted(REQUESTS.items())
    for version in range(message.min_version, message.max_version + 1)
]
ADVERTISED_VERSIONS = [
    (row.api_key, version)
    for row in ADVERTISED
    for version in range(row.advertised_min, row.advertised_max + 1)
]


def plain(value: Any) -> Any:
    """Memoryviews and bytearrays as bytes, recursively (for comparisons)."""
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _frame_payload(frame: bytes) -> memoryview:
    size = struct.unpack_from(">i", frame)[0]
    assert size == len(frame) - 4
    return memoryview(frame)[4:]


def test_advertised_versions_are_inside_the_schemas() -> None:
    assert {row.api_key for row in ADVERTISED} == set(REQUESTS) == set(RESPONSES)
    for api_key, version in ADVERTISED_VERSIONS:
        assert REQUESTS[api_key].is_valid(version)
        assert RESPONSES[api_key].is_valid(version)
    assert set(ApiKey) == set(REQUESTS)


@pytest.mark.parametrize(("api_key", "version"), ALL_VERSIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_request_round_trips_for_every_api_version(
    api_key: int, version: int, seed: int, sample_body: Any, decoded_form: Any
) -> None:
    message = REQUESTS[api_key]
    body = sample_body(message, version, seed)

    frame = encode_request(api_key, version, 1000 + seed, "client-é", body)
    header, decoded = decode_request(_frame_payload(frame))

    assert header == RequestHeader(api_key, version, 1000 + seed, "client-é")
    assert plain(decoded) == decoded_form(message, version, body)


@pytest.mark.parametrize(("api_key", "version"), ALL_VERSIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_response_round_trips_for_every_api_version(
    api_key: int, version: int, seed: int, sample_body: Any, decoded_form: Any
) -> None:
    message = RESPONSES[api_key]
    body = sample_body(message, version, seed)

    frame = encode_response_bytes(api_key, version, 77, body)
    correlation_id, decoded = decode_response(api_key, version, _frame_payload(frame))

    assert correlation_id == 77
    assert plain(decoded) == decoded_form(message, version, body)


def test_header_versions_follow_flexibility_except_api_versions() -> None:
    assert request_header_version(ApiKey.PRODUCE, 8) == 1
    assert request_header_version(ApiKey.PRODUCE, 9) == 2
    assert request_header_version(ApiKey.API_VERSIONS, 3) == 2
    assert request_header_version(ApiKey.API_VERSIONS, 127) == 2
    assert response_header_version(ApiKey.FETCH, 11) == 0
    assert response_header_version(ApiKey.FETCH, 12) == 1
    assert response_header_version(ApiKey.API_VERSIONS, 4) == 0


def test_request_header_reads_null_client_id_as_empty() -> None:
    frame = struct.pack(">hhih", ApiKey.HEARTBEAT, 0, 9, -1)
    frame += struct.pack(">h", 1) + b"g" + struct.pack(">i", 3)
    frame += struct.pack(">h", 1) + b"m"

    header, offset = decode_request_header(frame)

    assert header == RequestHeader(ApiKey.HEARTBEAT, 0, 9, "")
    assert offset == 10
    body = decode_request_body(header, frame, offset)
    assert body["group_id"] == "g" and body["generation_id"] == 3


def test_request_header_v2_keeps_int16_client_id_and_skips_tags() -> None:
    # ApiVersions v3: header v2 with an unknown header tag, then a compact body.
    frame = struct.pack(">hhih", ApiKey.API_VERSIONS, 3, 5, 3) + b"cli"
    frame += b"\x01" + b"\x07\x02zz"  # one unknown tag (7) of 2 bytes
    frame += b"\x02a" + b"\x021" + b"\x00"

    header, decoded = decode_request(frame)

    assert header == RequestHeader(ApiKey.API_VERSIONS, 3, 5, "cli")
    assert decoded == {"client_software_name": "a", "client_software_version": "1"}


def test_request_header_accepts_any_api_versions_version_for_fallback() -> None:
    frame = struct.pack(">hhih", ApiKey.API_VERSIONS, 127, 8, 1) + b"c" + b"\x00"
    frame += b"\x05whatever"

    header, offset = decode_request_header(frame)

    assert header.api_version == 127 and offset == 12
    with pytest.raises(UnsupportedApiError) as info:
        decode_request_body(header, frame, offset)
    assert info.value.header == header


@pytest.mark.parametrize(
    ("api_key", "api_version"),
    [(ApiKey.PRODUCE, 12), (ApiKey.FETCH, -1), (23, 0), (60, 0), (-5, 0), (1000, 1)],
)
def test_request_header_rejects_unknown_api_or_version(
    api_key: int, api_version: int
) -> None:
    frame = struct.pack(">hhih", api_key, api_version, 4, 0) + b"\x00" * 8

    with pytest.raises(UnsupportedApiError, match="unsupported api key") as info:
        decode_request_header(frame)

    assert info.value.header == RequestHeader(api_key, api_version, 4, "")


def test_decode_request_rejects_truncated_header() -> None:
    with pytest.raises(TruncatedError, match="request header"):
        decode_request_header(b"\x00\x00\x00")
    frame = struct.pack(">hhih", ApiKey.METADATA, 0, 1, 10) + b"abc"
    with pytest.raises(TruncatedError, match="client_id"):
        decode_request_header(frame)


def test_decode_request_names_the_truncated_field() -> None:
    partition = {"index": 0, "records": b"r" * 50}
    body = {
        "acks": 1,
        "timeout_ms": 10,
        "topic_data": [{"partition_data": [partition]}],
    }
    frame = encode_request(ApiKey.PRODUCE, 7, 1, "c", body)

    with pytest.raises(TruncatedError, match=r"v7 topic_data\[\].partition_data\[\]"):
        decode_request(memoryview(frame)[4:-2])


def test_decode_request_rejects_bytes_after_the_body() -> None:
    frame = encode_request(ApiKey.HEARTBEAT, 0, 1, "c", {"group_id": "g"})

    with pytest.raises(InvalidLengthError, match="left over after the body"):
        decode_request(bytes(_frame_payload(frame)) + b"\x00")


def test_decode_request_rejects_null_in_non_nullable_string() -> None:
    frame = struct.pack(">hhih", ApiKey.HEARTBEAT, 0, 1, 0) + struct.pack(">h", -1)
    frame += struct.pack(">i", 0) + struct.pack(">h", 0)

    with pytest.raises(InvalidLengthError, match=r"group_id.*non-nullable"):
        decode_request(frame)


def test_decode_request_rejects_invalid_utf8() -> None:
    frame = struct.pack(">hhih", ApiKey.HEARTBEAT, 0, 1, 0) + b"\x00\x02\xff\xfe"
    frame += struct.pack(">i", 0) + struct.pack(">h", 0)

    with pytest.raises(InvalidValueError, match="UTF-8"):
        decode_request(frame)


def test_decode_request_rejects_array_count_larger_than_frame() -> None:
    frame = struct.pack(">hhih", ApiKey.METADATA, 1, 1, 0) + struct.pack(">i", 1 << 30)

    with pytest.raises(InvalidLengthError, match="more elements than the frame"):
        decode_request(frame)


def test_decode_produce_records_are_views_into_the_frame() -> None:
    batch = bytes(range(200))
    body = {
        "transactional_id": None,
        "acks": -1,
        "timeout_ms": 1500,
        "topic_data": [
            {"name": "orders", "partition_data": [{"index": 3, "records": batch}]}
        ],
    }
    frame = bytearray(encode_request(ApiKey.PRODUCE, 8, 42, "p", body))
    payload = memoryview(frame)[4:]

    _header, decoded = decode_request(payload)
    records = decoded["topic_data"][0]["partition_data"][0]["records"]

    assert isinstance(records, memoryview)
    assert records.obj is frame
    assert records == batch
    frame[-1] ^= 0xFF  # the view sees the buffer, proving no copy was made
    assert records[-1] == batch[-1] ^ 0xFF


def test_decode_metadata_v0_fills_defaults_of_later_fields() -> None:
    frame = encode_request(ApiKey.METADATA, 0, 1, "c", {"topics": []})

    _header, decoded = decode_request(_frame_payload(frame))

    assert decoded == {
        "topics": [],
        "allow_auto_topic_creation": True,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    }


def test_encode_fetch_response_puts_file_ranges_in_their_own_chunks() -> None:
    inline_batch = b"x" * 100
    big_batch = memoryview(b"y" * INLINE_RECORDS_MAX)
    body = {
        "responses": [
            {
                "topic": "t",
                "partitions": [
                    {"partition_index": 0, "records": FileRange(7, 4096, 5000)},
                    {"partition_index": 1, "records": inline_batch},
                    {"partition_index": 2, "records": b""},
                    {"partition_index": 3, "records": big_batch},
                    {
                        "partition_index": 4,
                        "records": [FileRange("/seg.log", 0, 10), b"tail"],
                    },
                ],
            }
        ]
    }

    chunks = encode_response(ApiKey.FETCH, 11, 99, body)

    kinds = [type(c).__name__ for c in chunks]
    assert kinds == [
        "bytearray",
        "FileRange",
        "bytearray",
        "memoryview",
        "bytearray",
        "FileRange",
        "bytearray",
    ]
    assert chunks[1] == FileRange(7, 4096, 5000)
    assert chunks[3] is big_batch
    assert struct.unpack_from(">i", chunks[0])[0] == chunks_size(chunks) - 4

    # Reading the ranges back gives exactly the bytes an inline encode would.
    files = {7: b"\x00" * 4096 + b"z" * 5000, "/seg.log": b"0123456789"}

    def read_range(part: FileRange) -> bytes:
        return files[part.file][part.position : part.position + part.length]

    data = join_chunks(chunks, read_range)
    _cid, decoded = decode_response(ApiKey.FETCH, 11, _frame_payload(data))
    got = [plain(p["records"]) for p in decoded["responses"][0]["partitions"]]
    assert got == [b"z" * 5000, inline_batch, b"", bytes(big_batch), b"0123456789tail"]


def test_encode_fetch_response_flexible_uses_compact_records_length() -> None:
    body = {
        "responses": [{"topic": "t", "partitions": [{"records": FileRange(3, 0, 300)}]}]
    }

    chunks = encode_response(ApiKey.FETCH, 12, 1, body)

    head = bytes(chunks[0])
    assert head.endswith(uvarint_bytes(301))
    assert response_header_version(ApiKey.FETCH, 12) == 1
    assert head[8] == 0  # response header v1 tag section


def test_encode_response_without_file_ranges_is_one_chunk() -> None:
    chunks = encode_response(ApiKey.HEARTBEAT, 3, 5, {"error_code": 27})

    assert len(chunks) == 1
    assert bytes(chunks[0]) == struct.pack(">iiih", 10, 5, 0, 27)


def test_encode_response_bytes_refuses_file_ranges() -> None:
    body = {
        "responses": [{"topic": "t", "partitions": [{"records": FileRange(3, 0, 1)}]}]
    }

    with pytest.raises(EncodeError, match="without a reader"):
        encode_response_bytes(ApiKey.FETCH, 4, 1, body)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"error_code": 1 << 20}, "FindCoordinatorResponse v1"),
        ({"host": None}, "host.*non-nullable"),
        ({"error_message": 5}, "FindCoordinatorResponse v1"),
    ],
)
def test_encode_response_raises_encode_error_for_bad_bodies(
    body: dict[str, Any], match: str
) -> None:
    with pytest.raises(EncodeError, match=match):
        encode_response(ApiKey.FIND_COORDINATOR, 1, 1, body)


def test_encode_response_rejects_unknown_version() -> None:
    with pytest.raises(EncodeError, match="no response schema"):
        encode_response(ApiKey.PRODUCE, 99, 1, {})


def test_tagged_fields_known_round_trip_and_unknown_are_skipped() -> None:
    # FetchRequest v15: top-level tags 0 (cluster_id) and 1 (replica_state).
    body = {
        "cluster_id": "c1",
        "replica_state": {"replica_id": 4, "replica_epoch": 9},
        "max_wait_ms": 500,
        "topics": [{"topic_id": uuid.UUID(int=5), "partitions": [{"partition": 2}]}],
    }
    frame = bytearray(encode_request(ApiKey.FETCH, 15, 1, "c", body))
    _header, decoded = decode_request(memoryview(frame)[4:])
    assert decoded["cluster_id"] == "c1"
    assert decoded["replica_state"] == {"replica_id": 4, "replica_epoch": 9}

    # The body ends with its tag section: 2 tags, tag 0 (3 bytes), tag 1 (13).
    tags = b"\x00\x03\x03c1" + b"\x01\x0d" + struct.pack(">iq", 4, 9) + b"\x00"
    assert frame.endswith(b"\x02" + tags)

    # Make it 3 tags by appending an unknown tag 9 of 3 bytes.
    frame[len(frame) - len(tags) - 1] = 3
    frame += b"\x09\x03abc"
    struct.pack_into(">i", frame, 0, len(frame) - 4)

    _header, decoded_again = decode_request(memoryview(frame)[4:])

    assert plain(decoded_again) == plain(decoded)


def test_tagged_field_with_default_value_is_not_written() -> None:
    without = encode_request(ApiKey.FETCH, 12, 1, "c", {})
    with_default = encode_request(ApiKey.FETCH, 12, 1, "c", {"cluster_id": None})
    with_value = encode_request(ApiKey.FETCH, 12, 1, "c", {"cluster_id": "x"})

    assert without == with_default
    assert len(with_value) == len(without) + 4  # tag, size, length, "x"


def test_tagged_field_overrunning_its_size_is_rejected() -> None:
    # SyncGroupResponse v4 has no known tags at the top: make tag 0 claim 9 bytes.
    frame = encode_response_bytes(ApiKey.SYNC_GROUP, 4, 1, {"assignment": b"ab"})
    broken = bytes(_frame_payload(frame))[:-1] + b"\x01\x00\x09ab"

    with pytest.raises(TruncatedError, match="tagged"):
        decode_response(ApiKey.SYNC_GROUP, 4, broken)


def test_consumer_protocol_round_trips_with_version_prefix() -> None:
    subscription = {
        "topics": ["a", "b"],
        "user_data": None,
        "owned_partitions": [{"topic": "a", "partitions": [0, 2]}],
        "generation_id": 7,
        "rack_id": "r1",
    }
    data = encode_consumer_protocol("ConsumerProtocolSubscription", 3, subscription)

    assert data[:2] == b"\x00\x03"
    assert decode_consumer_protocol("ConsumerProtocolSubscription", data) == (
        3,
        subscription,
    )


def test_consumer_protocol_newer_version_reads_known_prefix() -> None:
    assignment = {"assigned_partitions": [{"topic": "t", "partitions": [1]}]}
    data = encode_data(
        "ConsumerProtocolAssignment", 3, {**assignment, "user_data": b"u"}
    )
    newer = struct.pack(">h", 9) + data + b"future fields"

    version, decoded = decode_consumer_protocol("ConsumerProtocolAssignment", newer)

    assert version == 9
    assert decoded == {**assignment, "user_data": b"u"}
    with pytest.raises(InvalidLengthError):
        decode_data("ConsumerProtocolAssignment", 3, data + b"x")


def test_every_decode_error_is_a_codec_error() -> None:
    for cls in (
        TruncatedError,
        InvalidLengthError,
        InvalidValueError,
        UnsupportedApiError,
    ):
        assert issubclass(cls, CodecError)
    assert not issubclass(EncodeError, CodecError)


def test_all_schema_messages_are_loaded() -> None:
    kinds = sorted(m.type for m in MESSAGES.values())
    assert kinds.count("request") == kinds.count("response") == 26
    assert kinds.count("header") == 2 and kinds.count("data") == 2
