"""Real Kafka clients against a real broker: produce, consume, admin, offsets.

Every test talks to one broker process started for this module over
loopback; each uses its own topic so the tests do not see each other's
records.
"""

from __future__ import annotations

import struct
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from broker.log.batch import iter_batch_bounds
from tests.conftest import BrokerProcess, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_records(count: int, size: int = 64) -> list[Record]:
    """Keys, headers, null keys and null values in a fixed pattern."""
    records: list[Record] = []
    for i in range(count):
        key = None if i % 5 == 0 else f"key-{i}".encode()
        # A record needs a key or a value (kafka-python refuses neither).
        null_value = i % 7 == 3 and key is not None
        value = None if null_value else (f"value-{i}-".encode() * size)[:size]
        headers = [("h", f"{i}".encode()), ("trace", b"\x00\x01")] if i % 3 == 0 else []
        records.append((key, value, headers))
    return records


def confluent_produce(
    broker: BrokerProcess, topic: str, records: list[Record], **config: Any
) -> None:
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "linger.ms": 5,
            **config,
        }
    )
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    for key, value, headers in records:
        producer.produce(
            topic, value=value, key=key, headers=headers, on_delivery=delivered
        )
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} records not delivered"
    assert not failures, failures


def confluent_consume(
    broker: BrokerProcess, topic: str, count: int, partitions: int = 1
) -> list[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: list[Record] = []
    deadline = time.monotonic() + 60
    try:
        while len(found) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            headers = [(k, bytes(v)) for k, v in (message.headers() or [])]
            found.append((message.key(), message.value(), headers))
    finally:
        consumer.close()
    return found


def first_batch_attributes(broker: BrokerProcess, topic: str) -> int:
    segment = broker.data_dir / f"{topic}-0" / f"{0:020d}.log"
    header = segment.read_bytes()[:61]
    return int(struct.unpack_from(">h", header, 21)[0])


@pytest.mark.parametrize("acks", [0, 1, -1])
def test_confluent_round_trip_is_byte_exact(
    module_broker: BrokerProcess, acks: int
) -> None:
    topic = unique_topic(f"acks{acks}")
    records = make_records(500)
    confluent_produce(module_broker, topic, records, acks=acks)
    assert confluent_consume(module_broker, topic, len(records)) == records


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_stored_as_sent(
    module_broker: BrokerProcess, codec: str
) -> None:
    topic = unique_topic(codec)
    records = make_records(300, size=200)
    confluent_produce(module_broker, topic, records, **{"compression.type": codec})
    assert confluent_consume(module_broker, topic, len(records)) == records
    codes = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
    assert first_batch_attributes(module_broker, topic) & 0x7 == codes[codec]


def test_large_value_round_trips(module_broker: BrokerProcess) -> None:
    topic = unique_topic("large")
    value = bytes(range(256)) * (900 * 1024 // 256)
    records: list[Record] = [(b"big", value, []), (None, b"small", [])]
    confluent_produce(
        module_broker, topic, records, **{"message.max.bytes": 2 * 1024 * 1024}
    )
    assert confluent_consume(module_broker, topic, 2) == records


def test_idempotent_confluent_producer_stores_each_record_once(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("idem")
    records = make_records(1000)
    confluent_produce(module_broker, topic, records, **{"enable.idempotence": True})
    assert confluent_consume(module_broker, topic, len(records)) == records


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_round_trip(
    module_broker: BrokerProcess, compression: str | None
) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    topic = unique_topic(f"kp-{compression}")
    records = make_records(200)
    producer = KafkaProducer(
        bootstrap_servers=module_broker.bootstrap,
        compression_type=compression,
        acks="all",
    )
    try:
        futures = [
            producer.send(topic, key=k, value=v, headers=h) for k, v, h in records
        ]
        producer.flush(60)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(10)

    consumer = KafkaConsumer(
        bootstrap_servers=module_broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    try:
        from kafka import TopicPartition as KpTopicPartition

        consumer.assign([KpTopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        found = []
        for message in consumer:
            found.append((message.key, message.value, list(message.headers)))
            if len(found) == len(records):
                break
    finally:
        consumer.close()
    assert found == records


def test_admin_creates_grows_and_deletes_topics(module_broker: BrokerProcess) -> None:
    admin = AdminClient({"bootstrap.servers": module_broker.bootstrap})
    topic = unique_topic("admin")

    for future in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(30)
    metadata = admin.list_topics(timeout=30)
    assert len(metadata.topics[topic].partitions) == 3

    duplicate = admin.create_topics([NewTopic(topic, num_partitions=1)])[topic]
    with pytest.raises(KafkaException, match="TOPIC_ALREADY_EXISTS"):
        duplicate.result(30)

    for future in admin.create_partitions([NewPartitions(topic, 5)]).values():
        future.result(30)
    assert len(admin.list_topics(timeout=30).topics[topic].partitions) == 5
    records = make_records(50)
    confluent_produce(module_broker, topic, records)
    assert sorted(
        confluent_consume(module_broker, topic, len(records), partitions=5), key=repr
    ) == sorted(records, key=repr)

    for future in admin.delete_topics([topic]).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=30).topics:
        assert time.monotonic() < deadline, "deleted topic still listed"
        time.sleep(0.2)
    directory = module_broker.data_dir / f"{topic}-0"
    while directory.exists():
        assert time.monotonic() < deadline, "deleted topic's data still on disk"
        time.sleep(0.2)


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_list_offsets_by_timestamp_answers_at_record_granularity(
    module_broker: BrokerProcess, codec: str
) -> None:
    """Three batches of ten records, one second apart: a time inside a batch
    gets the offset of the first record at or after it, not the batch's."""
    topic = unique_topic(f"times-{codec}")
    producer = Producer(
        {
            "bootstrap.servers": module_broker.bootstrap,
            "linger.ms": 1_000,
            "compression.type": codec,
        }
    )
    producer.list_topics(topic, timeout=30)  # created, partition known
    base = 1_700_000_000_000
    for batch in range(3):
        for i in range(batch * 10, batch * 10 + 10):
            value = f"v{i}".encode() * 20
            producer.produce(topic, value=value, timestamp=base + i * 1000)
        assert producer.flush(30) == 0  # one batch per ten records
    segment = module_broker.data_dir / f"{topic}-0" / f"{0:020d}.log"
    data = segment.read_bytes()
    lasts = [
        struct.unpack_from(">q", data, at)[0]
        + struct.unpack_from(">i", data, at + 23)[0]
        for at, _ in iter_batch_bounds(data)
    ]
    assert lasts == [9, 19, 29]

    consumer = Consumer(
        {"bootstrap.servers": module_broker.bootstrap, "group.id": "times"}
    )
    try:
        asked = [
            TopicPartition(topic, 0, base + 14_500),
            TopicPartition(topic, 0, base + 14_000),
            TopicPartition(topic, 0, base),
            TopicPartition(topic, 0, base + 29_000),
            TopicPartition(topic, 0, base + 10_000_000),
        ]
        answers = [
            consumer.offsets_for_times([tp], timeout=30)[0].offset for tp in asked
        ]
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    finally:
        consumer.close()
    assert answers == [15, 14, 0, 29, -1]
    assert (low, high) == (0, 30)


def test_kcat_produces_and_consumes_a_file(
    module_broker: BrokerProcess, tmp_path: Path
) -> None:
    kcat = require_tool("kcat")
    topic = unique_topic("kcat")
    lines = [f"line {i} " + "x" * (i % 50) for i in range(2000)]
    source = tmp_path / "lines.txt"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [kcat, "-b", module_broker.bootstrap, "-t", topic, "-P", "-l", str(source)],
        check=True,
        timeout=60,
    )
    result = subprocess.run(
        [
            kcat,
            "-b",
            module_broker.bootstrap,
            "-t",
            topic,
            "-C",
            "-e",
            "-o",
            "beginning",
            "-q",
        ],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert result.stdout.splitlines() == lines
