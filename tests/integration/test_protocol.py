"""Protocol behaviour checked on the wire with a raw client.

Idempotent duplicates, DeleteRecords, Fetch limits and long polls, the
ApiVersions negotiation: the exact responses clients depend on.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from broker.log.batch import build_batch, iter_batch_bounds, parse_header
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.conftest import BrokerProcess
from tests.integration.rawclient import RawClient
from tests.integration.test_kafka_clients import unique_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def create_topic(client: RawClient, topic: str, partitions: int = 1) -> None:
    response = client.call(
        ApiKey.CREATE_TOPICS,
        4,
        {
            "topics": [
                {
                    "name": topic,
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "assignments": [],
                    "configs": [],
                }
            ],
            "timeout_ms": 10_000,
            "validate_only": False,
        },
    )
    assert response["topics"][0]["error_code"] == 0, response


def produce(
    client: RawClient,
    topic: str,
    batch: bytes | bytearray,
    partition: int = 0,
    version: int = 8,
    acks: int = -1,
) -> dict[str, Any]:
    response = client.call(
        ApiKey.PRODUCE,
        version,
        {
            "transactional_id": None,
            "acks": acks,
            "timeout_ms": 10_000,
            "topic_data": [
                {
                    "name": topic,
                    "partition_data": [{"index": partition, "records": bytes(batch)}],
                }
            ],
        },
    )
    return dict(response["responses"][0]["partition_responses"][0])


def fetch_body(
    topic: str,
    offsets: dict[int, int],
    *,
    max_wait_ms: int = 0,
    min_bytes: int = 1,
    max_bytes: int = 50 * 1024 * 1024,
    partition_max_bytes: int = 1024 * 1024,
) -> dict[str, Any]:
    return {
        "replica_id": -1,
        "max_wait_ms": max_wait_ms,
        "min_bytes": min_bytes,
        "max_bytes": max_bytes,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {
                        "partition": partition,
                        "current_leader_epoch": -1,
                        "fetch_offset": offset,
                        "log_start_offset": -1,
                        "partition_max_bytes": partition_max_bytes,
                    }
                    for partition, offset in offsets.items()
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }


def records(count: int, size: int = 100, start: int = 0) -> list[Any]:
    now = int(time.time() * 1000)
    return [
        (f"k{start + i}".encode(), bytes([i % 256]) * size, [], now)
        for i in range(count)
    ]


def test_duplicate_idempotent_batch_is_stored_once(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("dup")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic)
        init = client.call(
            ApiKey.INIT_PRODUCER_ID,
            1,
            {"transactional_id": None, "transaction_timeout_ms": 60_000},
        )
        assert init["error_code"] == 0
        producer_id, epoch = init["producer_id"], init["producer_epoch"]
        assert producer_id >= 0

        first = build_batch(
            records(5), producer_id=producer_id, producer_epoch=epoch, base_sequence=0
        )
        second = build_batch(
            records(3, start=5),
            producer_id=producer_id,
            producer_epoch=epoch,
            base_sequence=5,
        )
        assert produce(client, topic, first)["base_offset"] == 0
        assert produce(client, topic, second)["base_offset"] == 5

        # The first batch again, as a producer retrying after a lost answer.
        again = produce(client, topic, first)
        assert again["error_code"] == 0
        assert again["base_offset"] == 0

        # A gap in the sequence is refused.
        gap = build_batch(
            records(1), producer_id=producer_id, producer_epoch=epoch, base_sequence=20
        )
        assert (
            produce(client, topic, gap)["error_code"]
            == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        )

        listed = client.call(
            ApiKey.LIST_OFFSETS,
            5,
            {
                "replica_id": -1,
                "isolation_level": 0,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [
                            {
                                "partition_index": 0,
                                "current_leader_epoch": -1,
                                "timestamp": -1,
                            }
                        ],
                    }
                ],
            },
        )
        assert listed["topics"][0]["partitions"][0]["offset"] == 8


def test_delete_records_moves_the_log_start(module_broker: BrokerProcess) -> None:
    topic = unique_topic("delrec")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic)
        for start in range(0, 40, 10):
            produce(client, topic, build_batch(records(10, start=start)))
        response = client.call(
            ApiKey.DELETE_RECORDS,
            1,
            {
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition_index": 0, "offset": 25}],
                    }
                ],
                "timeout_ms": 10_000,
            },
        )
        result = response["topics"][0]["partitions"][0]
        assert result["error_code"] == 0
        assert result["low_watermark"] == 25

        # Below the new log start: out of range; at it: data from its batch.
        stale = client.call(ApiKey.FETCH, 11, fetch_body(topic, {0: 5}))
        assert (
            stale["responses"][0]["partitions"][0]["error_code"]
            == ErrorCode.OFFSET_OUT_OF_RANGE
        )
        fresh = client.call(ApiKey.FETCH, 11, fetch_body(topic, {0: 25}))
        partition = fresh["responses"][0]["partitions"][0]
        assert partition["error_code"] == 0
        assert partition["log_start_offset"] == 25
        assert len(partition["records"]) > 0


def test_fetch_names_every_requested_partition(module_broker: BrokerProcess) -> None:
    topic = unique_topic("every")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic, partitions=3)
        produce(client, topic, build_batch(records(4)), partition=1)
        response = client.call(
            ApiKey.FETCH, 11, fetch_body(topic, {0: 0, 1: 0, 2: 0, 7: 0})
        )
    partitions = {
        p["partition_index"]: p for p in response["responses"][0]["partitions"]
    }
    assert sorted(partitions) == [0, 1, 2, 7]
    assert partitions[1]["high_watermark"] == 4
    assert partitions[1]["last_stable_offset"] == 4
    assert len(partitions[1]["records"]) > 0
    assert partitions[0]["records"] == b"" and partitions[0]["error_code"] == 0
    assert partitions[7]["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_fetch_limits_return_at_least_one_whole_batch(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("limits")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic)
        batches = [build_batch(records(10, size=1000, start=i * 10)) for i in range(5)]
        for batch in batches:
            produce(client, topic, batch)

        # A partition limit below one batch still returns that whole batch.
        tiny = client.call(
            ApiKey.FETCH, 11, fetch_body(topic, {0: 0}, partition_max_bytes=100)
        )
        data = tiny["responses"][0]["partitions"][0]["records"]
        assert len(data) == len(batches[0])

        # A limit of two and a half batches returns at most that many bytes.
        limit = len(batches[0]) * 5 // 2
        some = client.call(
            ApiKey.FETCH, 11, fetch_body(topic, {0: 0}, partition_max_bytes=limit)
        )
        assert len(some["responses"][0]["partitions"][0]["records"]) == limit

        # Everything, from the middle of the third batch: whole batches from
        # the one holding the offset.
        tail = client.call(ApiKey.FETCH, 11, fetch_body(topic, {0: 25}))
        data = bytes(tail["responses"][0]["partitions"][0]["records"])
        assert len(data) == sum(len(b) for b in batches[2:])
        positions = list(iter_batch_bounds(data))
        assert [parse_header(data, p).base_offset for p, _ in positions] == [20, 30, 40]


def test_fetch_long_poll_waits_for_data_or_max_wait(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("poll")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic)

        # Nothing arrives: the fetch returns empty after about max_wait_ms.
        started = time.monotonic()
        empty = client.call(
            ApiKey.FETCH, 11, fetch_body(topic, {0: 0}, max_wait_ms=600, min_bytes=1)
        )
        waited = time.monotonic() - started
        assert empty["responses"][0]["partitions"][0]["records"] == b""
        assert 0.5 <= waited < 5

        # Data arrives while the fetch is parked: it returns with the data,
        # well before max_wait_ms.
        def produce_later() -> None:
            time.sleep(0.3)
            with RawClient(module_broker.bootstrap) as other:
                produce(other, topic, build_batch(records(2)))

        producer = threading.Thread(target=produce_later)
        producer.start()
        started = time.monotonic()
        woken = client.call(
            ApiKey.FETCH, 11, fetch_body(topic, {0: 0}, max_wait_ms=20_000, min_bytes=1)
        )
        waited = time.monotonic() - started
        producer.join(10)
        assert len(woken["responses"][0]["partitions"][0]["records"]) > 0
        assert waited < 10


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_api_versions_answers_every_version(
    module_broker: BrokerProcess, version: int
) -> None:
    body = {"client_software_name": "raw", "client_software_version": "1"}
    with RawClient(module_broker.bootstrap) as client:
        response = client.call(ApiKey.API_VERSIONS, version, body)
    assert response["error_code"] == 0
    keys = {entry["api_key"] for entry in response["api_keys"]}
    assert {0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18, 19, 22} <= keys


def test_pipelined_requests_are_answered_in_order(module_broker: BrokerProcess) -> None:
    topic = unique_topic("order")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic)
        # A parked fetch first, then quick requests behind it: the answers
        # must still come back in request order.
        sent = [
            client.send(ApiKey.FETCH, 11, fetch_body(topic, {0: 0}, max_wait_ms=300))
        ]
        sent.append(
            client.send(
                ApiKey.API_VERSIONS,
                3,
                {"client_software_name": "raw", "client_software_version": "1"},
            )
        )
        sent.append(
            client.send(
                ApiKey.METADATA,
                8,
                {
                    "topics": [{"name": topic}],
                    "allow_auto_topic_creation": False,
                    "include_cluster_authorized_operations": False,
                    "include_topic_authorized_operations": False,
                },
            )
        )
        received = [
            client.receive(ApiKey.FETCH, 11)[0],
            client.receive(ApiKey.API_VERSIONS, 3)[0],
            client.receive(ApiKey.METADATA, 8)[0],
        ]
    assert received == sent
