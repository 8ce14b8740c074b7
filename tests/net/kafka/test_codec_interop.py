"""Cross-checks of net.kafka.codec against kafka-python 3.x's encoder/decoder.

kafka-python builds its protocol classes from Kafka's JSON definitions (its
4.3-era copy), independently of ours. Requests are encoded by kafka-python and
decoded by us; responses are encoded by us and decoded by kafka-python, for
every API at every version Ringbus advertises.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

import kafka.protocol.admin
import kafka.protocol.consumer
import kafka.protocol.metadata
import kafka.protocol.producer
import kafka.protocol.sasl
import pytest
from kafka.protocol.api_message import ApiMessage
from kafka.protocol.consumer import (
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
    FetchRequest,
)
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse

from net.kafka.codec import (
    FileRange,
    decode_consumer_protocol,
    decode_request,
    encode_consumer_protocol,
    encode_response,
    encode_response_bytes,
    join_chunks,
)
from net.kafka.schema import REQUESTS, RESPONSES, ApiKey, Field, Message
from net.kafka.versions import ADVERTISED, api_versions_response

ADVERTISED_VERSIONS = [
    (row.api_key, version)
    for row in ADVERTISED
    for version in range(row.advertised_min, row.advertised_max + 1)
]


def _kafka_python_classes() -> dict[str, Any]:
    found: dict[str, Any] = {}
    stack = list(ApiMessage.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls._class_version is None:
            found[cls.name] = cls
    return found


KP = _kafka_python_classes()

ALL_VERSIONS = [
    (api_key, version)
    for api_key, message in sorted(REQUESTS.items())
    for version in range(message.min_version, message.max_version + 1)
]


def _to_kafka_python(cls: Any, fields: tuple[Field, ...], obj: dict[str, Any]) -> Any:
    """Build a kafka-python data object from one of our body dicts."""
    kwargs = {}
    for field in fields:
        if field.key not in obj:
            continue
        value = obj[field.key]
        if value is not None and field.is_struct:
            nested = getattr(cls, field.element_type)
            if field.is_array:
                value = [_to_kafka_python(nested, field.fields, v) for v in value]
            else:
                value = _to_kafka_python(nested, field.fields, value)
        kwargs[field.key] = value
    return cls(**kwargs)


def _present(
    fields: tuple[Field, ...], version: int, flexible: bool, obj: dict[str, Any]
) -> dict[str, Any]:
    """Only the fields present in ``version``, with bytes-like made bytes, and a
    tagged struct left at its default as None (kafka-python's view of it)."""
    out: dict[str, Any] = {}
    for field in fields:
        if not field.present(version):
            continue
        value = obj[field.key]
        tagged_struct = field.is_struct and not field.is_array
        if (
            tagged_struct
            and field.tagged(version, flexible)
            and value == field.default_value()
        ):
            out[field.key] = None
            continue
        if value is not None and field.is_struct:
            if field.is_array:
                value = [_present(field.fields, version, flexible, v) for v in value]
            else:
                value = _present(field.fields, version, flexible, value)
        elif isinstance(value, memoryview | bytearray):
            value = bytes(value)
        out[field.key] = value
    return out


_NO_OPERATIONS = -(1 << 31)


def _from_kafka_python(theirs: Any, ours: Any) -> Any:
    """kafka-python's to_dict() in our terms: it reports the authorized-operations
    bitfields as sets of bit numbers (None for "not requested") under the name
    ``authorized_operations``; turn those back into the INT32 on the wire."""
    if isinstance(theirs, list) and isinstance(ours, list):
        return [_from_kafka_python(t, o) for t, o in zip(theirs, ours, strict=False)]
    if not (isinstance(theirs, dict) and isinstance(ours, dict)):
        return theirs
    out = {}
    for key, value in theirs.items():
        if key == "authorized_operations" and key not in ours:
            key = next(k for k in ours if k.endswith("authorized_operations"))
        if key.endswith("authorized_operations"):
            if value is None:
                value = _NO_OPERATIONS
            elif isinstance(value, set):
                bits = sum(1 << bit for bit in value)
                value = bits - (1 << 32) if bits >= 1 << 31 else bits
        out[key] = _from_kafka_python(value, ours.get(key))
    return out


def _sample_for_interop(
    sample_body: Any, message: Message, version: int
) -> dict[str, Any]:
    body: dict[str, Any] = sample_body(message, version, 5)
    if message.api_key == ApiKey.API_VERSIONS and message.type == "response":
        # kafka-python reads any ApiVersions error response as v0 (NOTES 1.4).
        body["error_code"] = 0
    return body


@pytest.mark.parametrize(("api_key", "version"), ALL_VERSIONS)
def test_kafka_python_requests_decode_with_our_codec(
    api_key: int, version: int, sample_body: Any, decoded_form: Any
) -> None:
    message = REQUESTS[api_key]
    body = _sample_for_interop(sample_body, message, version)
    request = _to_kafka_python(KP[message.name], message.fields, body)
    request.API_VERSION = version
    request.with_header(correlation_id=321, client_id="kafka-python")

    frame = request.encode(header=True)
    header, decoded = decode_request(frame)

    assert (header.api_key, header.api_version) == (api_key, version)
    assert header.correlation_id == 321 and header.client_id == "kafka-python"
    expected = decoded_form(message, version, body)
    flexible = message.is_flexible(version)
    assert _present(message.fields, version, flexible, decoded) == _present(
        message.fields, version, flexible, expected
    )


@pytest.mark.parametrize(("api_key", "version"), ALL_VERSIONS)
def test_our_responses_decode_with_kafka_python(
    api_key: int, version: int, sample_body: Any, decoded_form: Any
) -> None:
    message = RESPONSES[api_key]
    body = _sample_for_interop(sample_body, message, version)

    frame = encode_response_bytes(api_key, version, 654, body)
    response = KP[message.name].decode(frame[4:], version=version, header=True)

    assert response.header.correlation_id == 654
    flexible = message.is_flexible(version)
    expected = _present(
        message.fields, version, flexible, decoded_form(message, version, body)
    )
    assert _from_kafka_python(response.to_dict(json=False), expected) == expected


def test_produce_request_with_record_batch_from_kafka_python() -> None:
    batch = b"\x00" * 8 + struct.pack(">i", 49) + b"\xff\xff\xff\xff\x02" + b"b" * 45
    request = ProduceRequest(
        version=7,
        transactional_id="tx",
        acks=-1,
        timeout_ms=30000,
        topic_data=[
            ProduceRequest.TopicProduceData(
                name="orders",
                partition_data=[
                    ProduceRequest.TopicProduceData.PartitionProduceData(
                        index=p, records=batch
                    )
                    for p in range(3)
                ],
            )
        ],
    )
    request.with_header(correlation_id=1, client_id="p")

    header, body = decode_request(request.encode(header=True))

    assert header.api_version == 7
    assert (body["transactional_id"], body["acks"], body["timeout_ms"]) == (
        "tx",
        -1,
        30000,
    )
    partitions = body["topic_data"][0]["partition_data"]
    assert [p["index"] for p in partitions] == [0, 1, 2]
    assert all(p["records"] == batch for p in partitions)


def test_produce_response_v8_decodes_with_kafka_python() -> None:
    body = {
        "responses": [
            {
                "name": "orders",
                "partition_responses": [
                    {
                        "index": 0,
                        "error_code": 0,
                        "base_offset": 1234,
                        "log_append_time_ms": -1,
                        "log_start_offset": 0,
                        "record_errors": [],
                        "error_message": None,
                    }
                ],
            }
        ],
        "throttle_time_ms": 0,
    }

    frame = encode_response_bytes(ApiKey.PRODUCE, 8, 17, body)
    response = ProduceResponse.decode(frame[4:], version=8, header=True)

    partition = response.responses[0].partition_responses[0]
    assert (partition.index, partition.base_offset) == (0, 1234)


@pytest.mark.parametrize("version", [4, 7, 11])
def test_fetch_request_from_kafka_python_and_zero_copy_response(version: int) -> None:
    request = FetchRequest(
        version=version,
        replica_id=-1,
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=1,
        session_id=0,
        session_epoch=-1,
        topics=[
            FetchRequest.FetchTopic(
                topic="t",
                partitions=[
                    FetchRequest.FetchTopic.FetchPartition(
                        partition=p, fetch_offset=100 * p, partition_max_bytes=4096
                    )
                    for p in range(4)
                ],
            )
        ],
        forgotten_topics_data=[],
        rack_id="",
    )
    request.with_header(correlation_id=2, client_id="c")

    header, body = decode_request(request.encode(header=True))

    assert header.api_version == version
    assert body["isolation_level"] == 1
    offsets = [p["fetch_offset"] for p in body["topics"][0]["partitions"]]
    assert offsets == [0, 100, 200, 300]

    # Answer with record data "in files" and let kafka-python read the result.
    segment = bytes(range(256)) * 4
    partitions = [
        {
            "partition_index": p,
            "high_watermark": 10,
            "last_stable_offset": 10,
            "log_start_offset": 0,
            "records": FileRange(11, 64 * p, 64),
        }
        for p in range(4)
    ]
    chunks = encode_response(
        ApiKey.FETCH,
        version,
        2,
        {"responses": [{"topic": "t", "partitions": partitions}]},
    )
    data = join_chunks(chunks, lambda r: segment[r.position : r.position + r.length])
    response = kafka.protocol.consumer.FetchResponse.decode(
        data[4:], version=version, header=True
    )
    got = [p.records for p in response.responses[0].partitions]
    assert got == [segment[64 * p : 64 * p + 64] for p in range(4)]


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_api_versions_request_from_kafka_python_gets_full_answer(version: int) -> None:
    request = ApiVersionsRequest(
        version=version,
        client_software_name="kafka-python",
        client_software_version="3",
    )
    request.with_header(correlation_id=version + 10, client_id="kp")

    header, _body = decode_request(request.encode(header=True))
    frame = api_versions_response(header.correlation_id, header.api_version)
    response = ApiVersionsResponse.decode(frame[4:], version=version, header=True)

    assert response.header.correlation_id == version + 10
    assert response.error_code == 0
    ranges = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert ranges == {
        r.api_key: (r.advertised_min, r.advertised_max) for r in ADVERTISED
    }


def test_api_versions_fallback_is_read_by_kafka_python_as_v0() -> None:
    frame = api_versions_response(31, 5)

    response = ApiVersionsResponse.decode(frame[4:], version=5 - 1, header=True)

    assert response.error_code == 35
    assert [(k.api_key, k.min_version, k.max_version) for k in response.api_keys] == [
        (18, 0, 4)
    ]


def test_consumer_protocol_matches_kafka_python() -> None:
    subscription = ConsumerProtocolSubscription(
        version=1,
        topics=["a", "b"],
        user_data=b"ud",
        owned_partitions=[
            ConsumerProtocolSubscription.TopicPartition(topic="a", partitions=[0, 1])
        ],
    )
    theirs = bytes(subscription.encode(version=1))
    ours = encode_consumer_protocol(
        "ConsumerProtocolSubscription",
        1,
        {
            "topics": ["a", "b"],
            "user_data": b"ud",
            "owned_partitions": [{"topic": "a", "partitions": [0, 1]}],
        },
    )
    assert ours == theirs  # both carry the INT16 version prefix
    version, decoded = decode_consumer_protocol("ConsumerProtocolSubscription", ours)
    assert version == 1 and decoded["owned_partitions"][0]["partitions"] == [0, 1]

    assignment = encode_consumer_protocol(
        "ConsumerProtocolAssignment",
        0,
        {"assigned_partitions": [{"topic": "t", "partitions": [3]}], "user_data": None},
    )
    back = ConsumerProtocolAssignment.decode(assignment)  # reads the prefix
    assert back.assigned_partitions[0].partitions == [3]


def test_uuid_fields_cross_decode() -> None:
    topic_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    body = {"responses": [{"name": "t", "topic_id": topic_id}]}

    frame = encode_response_bytes(ApiKey.DELETE_TOPICS, 6, 1, body)
    response = KP["DeleteTopicsResponse"].decode(frame[4:], version=6, header=True)

    assert response.responses[0].topic_id == topic_id
