"""Micro-benchmarks of the codec's hot paths (Produce decode, Fetch decode,
Fetch response encode), 10 partitions each.

Disabled by default (``--benchmark-disable`` in addopts: each runs once as a
plain test). Measure with:

    .venv/bin/python -m pytest tests/net/kafka/test_codec_bench.py \
        --benchmark-enable --benchmark-columns=min,median,mean,ops

kafka-python's decoder of the same Produce frame is measured alongside for a
ratio taken in the same run.
"""

from __future__ import annotations

from typing import Any

from kafka.protocol.producer import ProduceRequest

from net.kafka.codec import (
    FileRange,
    decode_request,
    decode_request_body,
    decode_request_header,
    encode_request,
    encode_response,
)
from net.kafka.schema import ApiKey

PARTITIONS = 10
BATCH = bytes(1024)  # one 1 KiB record batch per partition; its content is opaque


def _produce_frame() -> bytes:
    body = {
        "transactional_id": None,
        "acks": -1,
        "timeout_ms": 30000,
        "topic_data": [
            {
                "name": "bench-topic",
                "partition_data": [
                    {"index": p, "records": BATCH} for p in range(PARTITIONS)
                ],
            }
        ],
    }
    return encode_request(ApiKey.PRODUCE, 8, 1, "bench-client", body)[4:]


def _fetch_frame() -> bytes:
    body = {
        "replica_id": -1,
        "max_wait_ms": 500,
        "min_bytes": 1,
        "max_bytes": 52428800,
        "isolation_level": 1,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": "bench-topic",
                "partitions": [
                    {
                        "partition": p,
                        "current_leader_epoch": -1,
                        "fetch_offset": 1000 * p,
                        "log_start_offset": -1,
                        "partition_max_bytes": 1048576,
                    }
                    for p in range(PARTITIONS)
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }
    return encode_request(ApiKey.FETCH, 11, 1, "bench-client", body)[4:]


def test_produce_request_decode_10_partitions(benchmark: Any) -> None:
    frame = memoryview(_produce_frame())

    header, body = benchmark(decode_request, frame)

    assert header.api_version == 8
    partitions = body["topic_data"][0]["partition_data"]
    assert [p["index"] for p in partitions] == list(range(PARTITIONS))
    assert all(p["records"] == BATCH for p in partitions)


def test_produce_request_body_decode_10_partitions(benchmark: Any) -> None:
    frame = memoryview(_produce_frame())
    header, offset = decode_request_header(frame)

    body = benchmark(decode_request_body, header, frame, offset)

    assert len(body["topic_data"][0]["partition_data"]) == PARTITIONS


def test_produce_request_decode_10_partitions_kafka_python(benchmark: Any) -> None:
    frame = _produce_frame()

    request = benchmark(ProduceRequest.decode, frame, version=8, header=True)

    assert len(request.topic_data[0].partition_data) == PARTITIONS


def test_fetch_request_decode_10_partitions(benchmark: Any) -> None:
    frame = memoryview(_fetch_frame())

    header, body = benchmark(decode_request, frame)

    assert header.api_version == 11
    assert len(body["topics"][0]["partitions"]) == PARTITIONS


def test_fetch_response_encode_10_partitions_file_ranges(benchmark: Any) -> None:
    body = {
        "throttle_time_ms": 0,
        "error_code": 0,
        "session_id": 0,
        "responses": [
            {
                "topic": "bench-topic",
                "partitions": [
                    {
                        "partition_index": p,
                        "error_code": 0,
                        "high_watermark": 5000,
                        "last_stable_offset": 5000,
                        "log_start_offset": 0,
                        "aborted_transactions": None,
                        "preferred_read_replica": -1,
                        "records": FileRange(10 + p, 4096 * p, 65536),
                    }
                    for p in range(PARTITIONS)
                ],
            }
        ],
    }

    chunks = benchmark(encode_response, ApiKey.FETCH, 11, 1, body)

    assert sum(1 for c in chunks if isinstance(c, FileRange)) == PARTITIONS
