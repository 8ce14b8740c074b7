"""Crash tests with real processes and a real client.

An idempotent confluent-kafka producer writes numbered records while the
writer process, or the whole broker, is killed with SIGKILL. Afterwards
every record the producer saw acknowledged is in the log exactly once, the
offsets of each partition run without a gap from the log start, and the
consumer (which checks CRCs) reads no partial batch.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 3


def create_topic(broker: BrokerProcess, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS)]).values():
        future.result(30)


class NumberedLoad:
    """Produces records "<n>" as fast as the broker takes them; remembers
    which were acknowledged."""

    def __init__(self, broker: BrokerProcess, topic: str) -> None:
        self.topic = topic
        # Idempotence (which implies acks=all) makes "exactly once" a fair
        # demand: a retried batch must not be stored twice.
        self.producer = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 120_000,
                "reconnect.backoff.max.ms": 200,
            }
        )
        self.acknowledged: set[int] = set()
        self.failed: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is None:
            self.acknowledged.add(int(message.value()))
        else:
            self.failed.append(str(error))

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.producer.produce(
                    self.topic,
                    value=str(self.sent).encode(),
                    key=str(self.sent % 97).encode(),
                    on_delivery=self._delivered,
                )
                self.sent += 1
            except BufferError:
                self.producer.poll(0.05)
                continue
            if self.sent % 200 == 0:
                self.producer.poll(0)

    def start(self) -> NumberedLoad:
        self._thread.start()
        return self

    def wait_for_acks(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.acknowledged)} of {count} acknowledged; {self.failed[:3]}"
            )
            time.sleep(0.05)

    def stop(self, flush_s: float) -> None:
        self._stop.set()
        self._thread.join(30)
        self.producer.flush(flush_s)
        # Records still queued (the broker is gone) are dropped, so the
        # producer does not keep reconnecting for the rest of the session.
        self.producer.purge()
        self.producer.flush(0)
        # Dropped now, not left to the collector: a delivery callback that
        # librdkafka still holds refers back to this object (a cycle the
        # collector cannot see), and the handle would keep reconnecting to
        # the stopped broker for the rest of the session.
        del self.producer


def read_all(broker: BrokerProcess, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Every (offset, number) per partition, read from the log start."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "crash-reader",
            "enable.auto.commit": False,
            "check.crcs": True,
            "fetch.queue.backoff.ms": 10,
        }
    )
    ends = {}
    for partition in range(PARTITIONS):
        _, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=30
        )
        ends[partition] = high
    consumer.assign(
        [TopicPartition(topic, p, 0) for p in range(PARTITIONS) if ends[p] > 0]
    )
    found: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 90
    try:
        while any(
            (found[p][-1][0] + 1 if found[p] else 0) < ends[p]
            for p in range(PARTITIONS)
        ):
            assert time.monotonic() < deadline, "timed out reading the log back"
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            found[message.partition()].append((message.offset(), int(message.value())))
    finally:
        consumer.close()
    return found


def check_log(found: dict[int, list[tuple[int, int]]], acknowledged: set[int]) -> None:
    numbers = [n for records in found.values() for _, n in records]
    assert len(numbers) == len(set(numbers)), "a record is stored twice"
    missing = acknowledged - set(numbers)
    assert not missing, (
        f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    )
    for partition, records in found.items():
        offsets = [offset for offset, _ in records]
        assert offsets == list(range(len(offsets))), f"partition {partition} has a gap"


def writer_process(broker: BrokerProcess) -> psutil.Process:
    for child in psutil.Process(broker.pid).children():
        try:
            command = child.cmdline()
        except psutil.Error:  # exited (a zombie until reaped)
            continue
        if "broker.writer" in command:
            return child
    raise AssertionError("no writer process")


def test_acknowledged_records_survive_writer_kills(broker_factory: Any) -> None:
    broker = broker_factory().start()
    topic = "crash-writer"
    create_topic(broker, topic)
    load = NumberedLoad(broker, topic).start()

    for round_number in range(3):
        load.wait_for_acks(2000 * (round_number + 1), 60)
        victim = writer_process(broker)
        victim.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while writer_process_or_none(broker) in (None, victim.pid):
            assert time.monotonic() < deadline, "writer not restarted"
            time.sleep(0.05)

    load.wait_for_acks(8000, 60)
    load.stop(flush_s=60)
    assert not load.failed, load.failed[:5]
    check_log(read_all(broker, topic), load.acknowledged)
    assert broker.log_text().count("process.exited process=writer") == 3
    assert broker.stop() == 0


def writer_process_or_none(broker: BrokerProcess) -> int | None:
    try:
        return writer_process(broker).pid
    except AssertionError:
        return None


def test_acknowledged_records_survive_a_broker_kill(broker_factory: Any) -> None:
    first = broker_factory().start()
    topic = "crash-broker"
    create_topic(first, topic)
    load = NumberedLoad(first, topic).start()
    load.wait_for_acks(5000, 60)

    # The whole broker at once, as a power cut would take the processes.
    os.killpg(first.pid, signal.SIGKILL)
    first.process.wait(10)  # type: ignore[union-attr]
    load.stop(flush_s=1)
    acknowledged = set(load.acknowledged)
    assert len(acknowledged) >= 5000

    second = broker_factory(
        first.data_dir.name, kafka_port=first.kafka_port, http_port=first.http_port
    ).start(timeout_s=60)
    check_log(read_all(second, topic), acknowledged)
    assert second.stop() == 0


def test_corrupt_segment_tail_is_truncated_at_start(broker_factory: Any) -> None:
    broker = broker_factory().start()
    topic = "crash-tail"
    create_topic(broker, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
    for number in range(50):
        producer.produce(topic, value=str(number).encode(), partition=0)
        producer.flush(30)  # one batch per record
    assert broker.stop() == 0

    segment: Path = broker.data_dir / f"{topic}-0" / f"{0:020d}.log"
    size = segment.stat().st_size
    with segment.open("r+b") as file:
        file.seek(size - 3)
        file.write(b"\xff\xff\xff")  # the last batch's CRC no longer matches

    restarted = broker_factory(
        broker.data_dir.name, kafka_port=broker.kafka_port, http_port=broker.http_port
    ).start()
    restarted.wait_for_log(f"log.recovered topic_partition={topic}-0", 30)
    truncated = [
        line for line in restarted.run_log().splitlines() if "log.truncated" in line
    ]
    assert len(truncated) == 1 and f"topic_partition={topic}-0" in truncated[0]
    found = read_all(restarted, topic)
    assert [n for _, n in found[0]] == list(range(49))
    assert restarted.stop() == 0
