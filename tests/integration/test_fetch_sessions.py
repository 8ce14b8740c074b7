"""Incremental fetch sessions (KIP-227) against a real broker.

On the wire with a raw client: a full fetch with epoch 0 creates a session,
incremental fetches name only the partitions that changed, wrong epochs and
unknown ids get their top-level errors, forgotten partitions leave the
session, epoch -1 closes it, and a session lives in its net process, not in
its connection. Then real consumers read multi-partition topics while they
are produced to: kafka-python, which keeps a session (its own log shows the
incremental responses it accepted), and confluent-kafka, whose librdkafka
sends session-less fetches (id 0, epoch -1), so that path is checked too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from broker.log.batch import build_batch, parse_header
from net.fetch_session import INDEX_MASK
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.conftest import BrokerProcess
from tests.integration.rawclient import RawClient
from tests.integration.test_kafka_clients import unique_topic
from tests.integration.test_protocol import create_topic, produce, records

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FETCH_VERSION = 11


def session_fetch(
    client: RawClient,
    topic: str,
    session_id: int,
    epoch: int,
    offsets: dict[int, int] | None = None,
    *,
    forgotten: list[int] | None = None,
    max_wait_ms: int = 0,
) -> dict[str, Any]:
    """One Fetch v11 naming ``offsets`` ({partition: fetch offset})."""
    partitions = [
        {
            "partition": partition,
            "current_leader_epoch": -1,
            "fetch_offset": offset,
            "log_start_offset": -1,
            "partition_max_bytes": 1024 * 1024,
        }
        for partition, offset in (offsets or {}).items()
    ]
    body = {
        "replica_id": -1,
        "max_wait_ms": max_wait_ms,
        "min_bytes": 1,
        "max_bytes": 50 * 1024 * 1024,
        "isolation_level": 0,
        "session_id": session_id,
        "session_epoch": epoch,
        "topics": [{"topic": topic, "partitions": partitions}] if partitions else [],
        "forgotten_topics_data": (
            [{"topic": topic, "partitions": forgotten}] if forgotten else []
        ),
        "rack_id": "",
    }
    return client.call(ApiKey.FETCH, FETCH_VERSION, body)


def by_partition(response: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {
        partition["partition_index"]: partition
        for topic in response["responses"]
        for partition in topic["partitions"]
    }


def wait_online(client: RawClient, topic: str, partitions: int) -> None:
    """Until a session-less fetch of every partition answers without error
    (a new partition is served once the writer has it; bounded)."""
    deadline = time.monotonic() + 30
    offsets = dict.fromkeys(range(partitions), 0)
    while True:
        response = session_fetch(client, topic, 0, -1, offsets)
        codes = {p["error_code"] for p in by_partition(response).values()}
        if codes == {0}:
            return
        assert time.monotonic() < deadline, f"{topic} not served: {codes}"
        time.sleep(0.05)


def test_a_session_over_three_partitions_on_the_wire(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("session")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic, partitions=3)
        wait_online(client, topic, 3)

        # Full fetch with epoch 0: a new session, every partition named.
        full = session_fetch(client, topic, 0, 0, {0: 0, 1: 0, 2: 0})
        assert full["error_code"] == 0
        session_id = full["session_id"]
        assert session_id > 0
        assert sorted(by_partition(full)) == [0, 1, 2]

        # Nothing changed: an incremental fetch names nothing.
        quiet = session_fetch(client, topic, session_id, 1)
        assert (quiet["error_code"], quiet["session_id"]) == (0, session_id)
        assert quiet["responses"] == []

        # Records in partition 1 only: only partition 1 comes back, read
        # from the offset the session cached (0).
        batch = build_batch(records(4))
        assert produce(client, topic, batch, partition=1)["error_code"] == 0
        changed = session_fetch(client, topic, session_id, 2)
        assert sorted(by_partition(changed)) == [1]
        part = by_partition(changed)[1]
        assert part["high_watermark"] == 4
        data = bytes(part["records"])
        assert len(data) == len(batch) and parse_header(data, 0).base_offset == 0

        # The client sends its new position for partition 1: nothing new
        # anywhere, so nothing is named; a long poll waits, then answers
        # with no partitions.
        started = time.monotonic()
        caught_up = session_fetch(client, topic, session_id, 3, {1: 4}, max_wait_ms=500)
        assert caught_up["error_code"] == 0 and caught_up["responses"] == []
        assert time.monotonic() - started >= 0.4

        # A long poll parked in the session wakes for records in partition
        # 2 and names only it.
        def produce_later() -> None:
            time.sleep(0.3)
            with RawClient(module_broker.bootstrap) as other:
                produce(other, topic, build_batch(records(2)), partition=2)

        producer = threading.Thread(target=produce_later)
        producer.start()
        woken = session_fetch(client, topic, session_id, 4, max_wait_ms=20_000)
        producer.join(10)
        assert sorted(by_partition(woken)) == [2]
        assert by_partition(woken)[2]["high_watermark"] == 2
        assert len(by_partition(woken)[2]["records"]) > 0

        # A wrong epoch is refused with no partitions; the session goes on.
        stale = session_fetch(client, topic, session_id, 4)
        assert stale["error_code"] == ErrorCode.INVALID_FETCH_SESSION_EPOCH
        assert stale["responses"] == []
        assert session_fetch(client, topic, session_id, 5, {2: 2})["error_code"] == 0

        # An id no process of this broker issues (process index 255 with
        # two net processes) is not found.
        unknown = session_fetch(client, topic, session_id | INDEX_MASK, 1)
        assert unknown["error_code"] == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
        assert unknown["responses"] == [] and unknown["session_id"] == 0

        # Forget partition 0: records there are no longer fetched, those of
        # partition 1 still are.
        forgot = session_fetch(client, topic, session_id, 6, forgotten=[0])
        assert forgot["error_code"] == 0 and forgot["responses"] == []
        produce(client, topic, build_batch(records(3)), partition=0)
        produce(client, topic, build_batch(records(3, start=4)), partition=1)
        after = session_fetch(client, topic, session_id, 7)
        assert sorted(by_partition(after)) == [1]
        assert by_partition(after)[1]["high_watermark"] == 7

        # Epoch -1 closes the session and answers as a session-less full
        # fetch; the id is gone afterwards.
        final = session_fetch(client, topic, session_id, -1, {0: 0, 1: 4, 2: 2})
        assert (final["error_code"], final["session_id"]) == (0, 0)
        assert sorted(by_partition(final)) == [0, 1, 2]
        assert by_partition(final)[0]["high_watermark"] == 3
        gone = session_fetch(client, topic, session_id, 8)
        assert gone["error_code"] == ErrorCode.FETCH_SESSION_ID_NOT_FOUND

        # Epoch 0 with an id replaces that session with a new one.
        first = session_fetch(client, topic, 0, 0, {0: 3})["session_id"]
        second = session_fetch(client, topic, first, 0, {0: 3})["session_id"]
        assert second not in (0, first)
        replaced = session_fetch(client, topic, first, 1)
        assert replaced["error_code"] == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
        assert session_fetch(client, topic, second, 1)["error_code"] == 0


@contextmanager
def connection_on(
    broker: BrokerProcess, topic: str, index: int | None, avoid: int | None = None
) -> Iterator[tuple[RawClient, int]]:
    """A connection that landed on net process ``index`` (or on any but
    ``avoid``), found by trying at most 64 connections; the process index
    is read from a session id it issues."""
    for _ in range(64):
        client = RawClient(broker.bootstrap)
        probe = session_fetch(client, topic, 0, 0, {0: 0})
        landed = probe["session_id"] & INDEX_MASK
        # Close the probe session; it is not needed.
        session_fetch(client, topic, probe["session_id"], -1, {0: 0})
        if (index is None or landed == index) and landed != avoid:
            try:
                yield client, landed
            finally:
                client.close()
            return
        client.close()
    pytest.fail(f"no connection landed on net process {index} (avoiding {avoid})")


def test_a_session_belongs_to_its_net_process_not_its_connection(
    module_broker: BrokerProcess,
) -> None:
    topic = unique_topic("where")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic, partitions=2)
        wait_online(client, topic, 2)
        produce(client, topic, build_batch(records(3)), partition=1)

    with connection_on(module_broker, topic, None) as (first, home):
        full = session_fetch(first, topic, 0, 0, {0: 0, 1: 0})
        session_id = full["session_id"]
        assert session_id & INDEX_MASK == home

    # Another process does not know the session.
    with connection_on(module_broker, topic, None, avoid=home) as (elsewhere, _):
        lost = session_fetch(elsewhere, topic, session_id, 1)
        assert lost["error_code"] == ErrorCode.FETCH_SESSION_ID_NOT_FOUND

    # A new connection to the same process goes on with the session (the
    # refused attempt above did not move its epoch).
    with connection_on(module_broker, topic, home) as (again, _):
        resumed = session_fetch(again, topic, session_id, 1, {1: 3})
        assert (resumed["error_code"], resumed["session_id"]) == (0, session_id)
        assert resumed["responses"] == []


def produce_in_background(
    broker: BrokerProcess, topic: str, partitions: int, per_partition: int
) -> tuple[threading.Thread, dict[int, list[bytes]], list[Any]]:
    """A thread producing ``per_partition`` records to each partition in
    small bursts, so consumers fetch while records arrive."""
    sent: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    failures: list[Any] = []

    def run() -> None:
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 2})

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(error)

        burst = 25
        for start in range(0, per_partition, burst):
            for partition in range(partitions):
                for seq in range(start, min(start + burst, per_partition)):
                    value = f"{partition}:{seq}:".encode() + bytes(
                        (seq * 7 + partition + i) % 256 for i in range(40 + seq % 50)
                    )
                    sent[partition].append(value)
                    producer.produce(
                        topic, value=value, partition=partition, on_delivery=delivered
                    )
                    producer.poll(0)
            producer.flush(30)
            time.sleep(0.05)
        remaining = producer.flush(60)
        if remaining:
            failures.append(f"{remaining} records not delivered")

    thread = threading.Thread(target=run)
    thread.start()
    return thread, sent, failures


def check_exactly_once(
    sent: dict[int, list[bytes]], got: dict[int, list[tuple[int, bytes]]]
) -> None:
    for partition, values in sent.items():
        offsets = [offset for offset, _ in got[partition]]
        assert offsets == list(range(len(values))), f"partition {partition}"
        assert [value for _, value in got[partition]] == values


def test_kafka_python_consumes_through_an_incremental_session(
    module_broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KpTopicPartition

    partitions, per_partition = 6, 300
    topic = unique_topic("kp-session")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic, partitions=partitions)
        wait_online(client, topic, partitions)

    caplog.set_level(logging.DEBUG, logger="kafka.consumer.fetcher")
    consumer = KafkaConsumer(
        bootstrap_servers=module_broker.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=300,
    )
    got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    total = partitions * per_partition
    producer, sent, failures = produce_in_background(
        module_broker, topic, partitions, per_partition
    )
    try:
        consumer.assign([KpTopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        count = 0
        deadline = time.monotonic() + 90
        while count < total and time.monotonic() < deadline:
            for tp, messages in consumer.poll(timeout_ms=500).items():
                for message in messages:
                    got[tp.partition].append((message.offset, message.value))
                    count += 1
    finally:
        consumer.close()
        producer.join(60)
    assert not failures, failures
    check_exactly_once(sent, got)

    # The broker answered with a session, and the client accepted
    # incremental responses in it; none was refused as invalid.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("kafka.")]
    assert any("created a new incremental fetch session" in line for line in lines)
    incremental = [
        line
        for line in lines
        if "sent an incremental fetch response for session" in line
    ]
    assert len(incremental) >= 3
    assert not [line for line in lines if "invalid" in line]
    assert not [line for line in lines if "unable to process the fetch" in line]


def test_confluent_consumer_reads_eight_partitions_exactly_once(
    module_broker: BrokerProcess,
) -> None:
    partitions, per_partition = 8, 250
    topic = unique_topic("cf-session")
    with RawClient(module_broker.bootstrap) as client:
        create_topic(client, topic, partitions=partitions)
        wait_online(client, topic, partitions)

    consumer = Consumer(
        {
            "bootstrap.servers": module_broker.bootstrap,
            "group.id": unique_topic("reader"),
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 300,
        }
    )
    got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    total = partitions * per_partition
    producer, sent, failures = produce_in_background(
        module_broker, topic, partitions, per_partition
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        count = 0
        deadline = time.monotonic() + 90
        while count < total and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got[message.partition()].append((message.offset(), message.value()))
            count += 1
    finally:
        consumer.close()
        producer.join(60)
    assert not failures, failures
    check_exactly_once(sent, got)
