"""Record timestamps with real clients: ListOffsets by timestamp answers at
record granularity inside one batch (every codec), and a topic with
message.timestamp.type=LogAppendTime stamps batches with the broker's
append time, reported in the produce response and seen by consumers.

One broker for the module, over loopback; each test uses its own topic.
"""

from __future__ import annotations

import struct
import time
import uuid
from typing import Any

import crc32c
import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from broker.log.batch import build_batch, iter_batch_bounds, parse_header
from net.kafka.schema import ApiKey
from tests.conftest import BrokerProcess
from tests.integration.fuzzing import Wire

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BASE = 1_700_000_000_000
# Distinct, out of order on purpose: the first record at or after a time
# is not the one with the nearest time.
OFFSETS_TO_TIMES = [BASE + 1_000 * n for n in (0, 3, 1, 5, 4, 9, 7, 8, 2, 12, 11, 10)]
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stored_batches(broker: BrokerProcess, topic: str) -> list[Any]:
    """Every batch header of partition 0, read from the segment files."""
    headers = []
    for path in sorted((broker.data_dir / f"{topic}-0").glob("*.log")):
        data = path.read_bytes()
        headers += [parse_header(data, at) for at, _ in iter_batch_bounds(data)]
    return headers


def produce(
    broker: BrokerProcess,
    topic: str,
    values: list[bytes],
    timestamps: list[int],
    **config: Any,
) -> list[tuple[int, int]]:
    """Produce in one batch (a long linger, one flush); returns each
    delivery report's (timestamp type, timestamp)."""
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 1_000, **config}
    )
    # Known partitions first: records queued before the metadata arrives
    # may be sent in a batch of their own.
    producer.list_topics(topic, timeout=30)
    reports: list[Any] = []

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        reports.append(message.timestamp())

    for value, timestamp in zip(values, timestamps, strict=True):
        producer.produce(topic, value=value, timestamp=timestamp, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert len(reports) == len(values)
    return reports


def consume_timestamps(
    broker: BrokerProcess, topic: str, start: int, count: int
) -> list[tuple[int, int, tuple[int, int]]]:
    """(offset, value, (timestamp type, timestamp)) of ``count`` records
    from offset ``start``."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, start)])
    found: list[Any] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            found.append((message.offset(), message.value(), message.timestamp()))
    finally:
        consumer.close()
    assert len(found) == count, found
    return found


def create_topic(broker: BrokerProcess, topic: str, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    new = NewTopic(topic, num_partitions=1, config=config)
    for future in admin.create_topics([new]).values():
        future.result(30)


def first_at_or_after(timestamp: int) -> tuple[int, int]:
    """Brute force over OFFSETS_TO_TIMES: (offset, timestamp) or (-1, -1)."""
    for offset, record_time in enumerate(OFFSETS_TO_TIMES):
        if record_time >= timestamp:
            return offset, record_time
    return -1, -1


@pytest.mark.parametrize("codec", CODECS)
def test_offsets_for_times_finds_first_record_inside_one_batch(
    module_broker: BrokerProcess, codec: str
) -> None:
    topic = unique_topic(f"times-{codec}")
    create_topic(module_broker, topic)
    values = [(f"value-{n}-".encode() * 40) for n in range(len(OFFSETS_TO_TIMES))]
    produce(
        module_broker, topic, values, OFFSETS_TO_TIMES, **{"compression.type": codec}
    )
    [batch] = stored_batches(module_broker, topic)
    assert batch.records_count == len(OFFSETS_TO_TIMES)
    assert batch.compression == CODECS[codec]

    probes = [BASE - 1, BASE, BASE + 500, BASE + 3_500, BASE + 6_000, BASE + 9_000]
    probes += [BASE + 10_500, BASE + 12_000, BASE + 12_001]

    # librdkafka: offsets only.
    consumer = Consumer(
        {"bootstrap.servers": module_broker.bootstrap, "group.id": "times"}
    )
    try:
        answers = [
            consumer.offsets_for_times([TopicPartition(topic, 0, t)], timeout=30)[
                0
            ].offset
            for t in probes
        ]
    finally:
        consumer.close()
    assert answers == [first_at_or_after(t)[0] for t in probes]
    # Inside the batch, not at its start: the answer is the record itself.
    assert answers[probes.index(BASE + 6_000)] == 5

    # kafka-python reads the timestamp of the answer too.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    reader = KafkaConsumer(bootstrap_servers=module_broker.bootstrap)
    try:
        partition = KpTopicPartition(topic, 0)
        for probe in probes:
            found = reader.offsets_for_times({partition: probe})[partition]
            expected = first_at_or_after(probe)
            if expected == (-1, -1):
                assert found is None, probe
            else:
                assert (found.offset, found.timestamp) == expected, probe
    finally:
        reader.close()

    # A consumer seeked there reads that very record first.
    [(offset, value, (kind, timestamp))] = consume_timestamps(
        module_broker, topic, 5, 1
    )
    assert (offset, value) == (5, values[5])
    assert (kind, timestamp) == (TIMESTAMP_CREATE_TIME, BASE + 9_000)


def test_log_append_time_topic_reports_and_stores_the_append_time(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("append-time")
    create_topic(module_broker, topic, **{"message.timestamp.type": "LogAppendTime"})

    old = [BASE + n for n in range(5)]
    before = int(time.time() * 1000)
    reports = produce(
        module_broker, topic, [b"a", b"b", b"c", b"d", b"e"], old, **{"acks": -1}
    )
    after = int(time.time() * 1000)

    # The produce response's log_append_time reaches the delivery report.
    kinds = {kind for kind, _ in reports}
    stamps = {timestamp for _, timestamp in reports}
    assert kinds == {TIMESTAMP_LOG_APPEND_TIME}
    [stamp] = stamps
    assert before <= stamp <= after

    [batch] = stored_batches(module_broker, topic)
    assert batch.attributes & 0x08
    assert batch.max_timestamp == stamp
    assert batch.base_timestamp == BASE  # the producer's, as sent

    consumed = consume_timestamps(module_broker, topic, 0, 5)
    assert [t for _, _, t in consumed] == [(TIMESTAMP_LOG_APPEND_TIME, stamp)] * 5

    # ListOffsets goes by the append time: the producer's times are gone.
    consumer = Consumer(
        {"bootstrap.servers": module_broker.bootstrap, "group.id": "append-time"}
    )
    try:
        for probe, expected in ((BASE + 3, 0), (stamp, 0), (stamp + 1, -1)):
            [answer] = consumer.offsets_for_times(
                [TopicPartition(topic, 0, probe)], timeout=30
            )
            assert answer.offset == expected, probe
    finally:
        consumer.close()


def test_alter_configs_to_log_append_time_stamps_later_batches(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("altered")
    create_topic(module_broker, topic)
    admin = AdminClient({"bootstrap.servers": module_broker.bootstrap})
    [(kind, timestamp)] = produce(module_broker, topic, [b"before"], [BASE])
    assert (kind, timestamp) == (TIMESTAMP_CREATE_TIME, BASE)

    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "message.timestamp.type",
                "LogAppendTime",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)

    # The writer follows the metadata change within its poll interval; one
    # record at a time until a batch comes back stamped (bounded).
    deadline = time.monotonic() + 20
    while True:
        [(kind, timestamp)] = produce(module_broker, topic, [b"after"], [BASE + 1])
        if kind == TIMESTAMP_LOG_APPEND_TIME:
            break
        assert kind == TIMESTAMP_CREATE_TIME
        assert time.monotonic() < deadline, "the writer never stamped a batch"
        time.sleep(0.05)
    assert abs(timestamp - time.time() * 1000) < 60_000

    consumed = consume_timestamps(module_broker, topic, 0, 2)
    assert consumed[0][2] == (TIMESTAMP_CREATE_TIME, BASE)
    last = stored_batches(module_broker, topic)[-1]
    assert last.max_timestamp == timestamp
    final = consume_timestamps(module_broker, topic, last.base_offset, 1)
    assert final[0][2] == (TIMESTAMP_LOG_APPEND_TIME, timestamp)


def list_offsets_at(wire: Wire, topic: str, timestamp: int) -> tuple[int, int, int]:
    """ListOffsets v5 for partition 0: (error code, offset, timestamp)."""
    body = {
        "replica_id": -1,
        "isolation_level": 0,
        "topics": [
            {
                "name": topic,
                "partitions": [
                    {
                        "partition_index": 0,
                        "timestamp": timestamp,
                        "current_leader_epoch": -1,
                    }
                ],
            }
        ],
    }
    [topic_out] = wire.request(ApiKey.LIST_OFFSETS, 5, body)["topics"]
    [answer] = topic_out["partitions"]
    return answer["error_code"], answer["offset"], answer["timestamp"]


def produce_raw(wire: Wire, topic: str, batch: bytes) -> dict[str, Any]:
    body = {
        "transactional_id": None,
        "acks": -1,
        "timeout_ms": 10_000,
        "topic_data": [
            {"name": topic, "partition_data": [{"index": 0, "records": batch}]}
        ],
    }
    [topic_out] = wire.request(ApiKey.PRODUCE, 8, body)["responses"]
    [answer] = topic_out["partition_responses"]
    return dict(answer)


def test_list_offsets_answers_batch_start_when_records_do_not_decode(
    module_broker: BrokerProcess,
) -> None:
    """The broker stores a compressed batch without decoding it; if its
    records turn out unreadable, ListOffsets answers that batch's first
    offset (consumers start early, nothing skipped) and logs a warning."""
    topic = unique_topic("garbled")
    create_topic(module_broker, topic)
    records = [(None, b"x" * 50, [], BASE + 10 * n) for n in range(4)]
    middle = [(None, b"x" * 50, [], BASE + 40 + 10 * n) for n in range(4)]
    garbled = bytearray(build_batch(middle))
    garbled[61:] = bytes(range(len(garbled) - 61))  # not a gzip stream
    struct.pack_into(">h", garbled, 21, 1)  # gzip
    struct.pack_into(">I", garbled, 17, crc32c.crc32c(memoryview(garbled)[21:]))
    later = [(None, b"y" * 50, [], BASE + 100 + 10 * n) for n in range(4)]

    with Wire(module_broker.kafka_port) as wire:
        first = produce_raw(wire, topic, bytes(build_batch(records)))
        second = produce_raw(wire, topic, bytes(garbled))
        third = produce_raw(wire, topic, bytes(build_batch(later)))
        assert [a["base_offset"] for a in (first, second, third)] == [0, 4, 8]
        # A CreateTime topic answers log_append_time_ms -1.
        assert {a["log_append_time_ms"] for a in (first, second, third)} == {-1}

        assert list_offsets_at(wire, topic, BASE + 15) == (0, 2, BASE + 20)
        # Inside the garbled batch: its first offset and baseTimestamp.
        assert list_offsets_at(wire, topic, BASE + 55) == (0, 4, BASE + 40)
        assert list_offsets_at(wire, topic, BASE + 115) == (0, 10, BASE + 120)
        assert list_offsets_at(wire, topic, BASE + 131) == (0, -1, -1)

    deadline = time.monotonic() + 10
    while "list_offsets.records_unreadable" not in module_broker.log_text():
        assert time.monotonic() < deadline, "no warning logged"
        time.sleep(0.05)


def test_produce_response_carries_log_append_time(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("raw-append-time")
    create_topic(module_broker, topic, **{"message.timestamp.type": "LogAppendTime"})
    records = [(None, b"z", [], BASE + n) for n in range(3)]

    with Wire(module_broker.kafka_port) as wire:
        before = int(time.time() * 1000)
        answer = produce_raw(wire, topic, bytes(build_batch(records)))
        after = int(time.time() * 1000)
        assert answer["error_code"] == 0
        assert before <= answer["log_append_time_ms"] <= after
        assert list_offsets_at(wire, topic, BASE) == (
            0,
            0,
            answer["log_append_time_ms"],
        )
