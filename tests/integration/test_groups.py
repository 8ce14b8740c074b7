"""Consumer groups and committed offsets with real Kafka clients against a
real broker: partition assignment, commits, expiry of a killed member,
static membership, group admin, and committed offsets through restarts and
kill -9 of the control process and of the whole broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SESSION_TIMEOUT_MS = 6_000  # the coordinator's minimum
PARTITIONS = 4


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(
    broker: BrokerProcess, topic: str, partitions: int = PARTITIONS
) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)])
    futures[topic].result(timeout=30)


def produce(broker: BrokerProcess, topic: str, count: int, partitions: int) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, value=f"record-{i}".encode(), partition=i % partitions)
    assert producer.flush(60) == 0


def consumer(broker: BrokerProcess, group: str, **extra: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 500,
            "fetch.queue.backoff.ms": 10,
            **extra,
        }
    )


def poll_until(
    consumers: list[Consumer],
    done: Callable[[], bool],
    timeout_s: float,
    on_message: Callable[[Consumer, Any], None] | None = None,
) -> None:
    """Poll every consumer in turn until ``done()`` or the bound."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        for each in consumers:
            message = each.poll(0.1)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            if on_message is not None:
                on_message(each, message)


def committed_offsets(
    broker: BrokerProcess, group: str, topic: str, partitions: int = PARTITIONS
) -> dict[int, int]:
    reader = consumer(broker, group)
    try:
        found = reader.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=30
        )
    finally:
        reader.close()
    return {tp.partition: tp.offset for tp in found}


# -- one broker for the module ---------------------------------------------------


def test_group_splits_partitions_and_consumes_each_record_once(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("split"), unique("g")
    create_topic(module_broker, topic)
    produce(module_broker, topic, 200, PARTITIONS)

    members = [consumer(module_broker, group) for _ in range(2)]
    for member in members:
        member.subscribe([topic])
    seen: dict[int, list[bytes]] = {}

    def record(member: Consumer, message: Any) -> None:
        seen.setdefault(id(member), []).append(message.value())

    try:
        poll_until(members, lambda: sum(map(len, seen.values())) >= 200, 90, record)
        assignments = [sorted(tp.partition for tp in m.assignment()) for m in members]
        for member in members:
            member.commit(asynchronous=False)
    finally:
        for member in members:
            member.close()

    values = [v for values in seen.values() for v in values]
    assert sorted(values) == sorted(f"record-{i}".encode() for i in range(200))
    assert sorted(assignments[0] + assignments[1]) == list(range(PARTITIONS))
    assert assignments[0] and assignments[1]
    assert committed_offsets(module_broker, group, topic) == dict.fromkeys(
        range(PARTITIONS), 50
    )


def test_new_member_resumes_from_committed_offsets(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("resume"), unique("g")
    create_topic(module_broker, topic, 1)
    produce(module_broker, topic, 100, 1)

    first = consumer(module_broker, group)
    first.subscribe([topic])
    values: list[bytes] = []
    try:
        poll_until(
            [first],
            lambda: len(values) >= 30,
            60,
            lambda _, m: values.append(m.value()),
        )
        first.commit(offsets=[TopicPartition(topic, 0, 30)], asynchronous=False)
    finally:
        first.close()

    second = consumer(module_broker, group)
    second.subscribe([topic])
    rest: list[bytes] = []
    try:
        poll_until(
            [second], lambda: len(rest) >= 70, 60, lambda _, m: rest.append(m.value())
        )
    finally:
        second.close()
    assert rest[0] == b"record-30"
    assert rest[-1] == b"record-99"


def test_killed_member_is_expired_at_its_session_timeout(
    module_broker: BrokerProcess, tmp_path: Path
) -> None:
    topic, group = unique("expire"), unique("g")
    create_topic(module_broker, topic)

    # The victim runs in its own process so it can be killed without a
    # LeaveGroup, as a crashed client would be.
    script = tmp_path / "victim.py"
    script.write_text(
        "import sys, time\n"
        "from confluent_kafka import Consumer\n"
        "c = Consumer({'bootstrap.servers': sys.argv[1], 'group.id': sys.argv[2],\n"
        f"    'session.timeout.ms': {SESSION_TIMEOUT_MS},\n"
        "    'heartbeat.interval.ms': 500})\n"
        "c.subscribe([sys.argv[3]])\n"
        "deadline = time.monotonic() + 120\n"
        "while time.monotonic() < deadline:\n"
        "    c.poll(0.1)\n"
        "    if c.assignment():\n"
        "        print('assigned', flush=True)\n"
    )
    survivor = consumer(module_broker, group)
    survivor.subscribe([topic])
    victim = subprocess.Popen(
        [sys.executable, str(script), module_broker.bootstrap, group, topic],
        stdout=subprocess.PIPE,
    )
    try:
        # Both members hold partitions.
        assert victim.stdout is not None
        line = victim.stdout.readline()
        assert line.startswith(b"assigned")
        poll_until([survivor], lambda: 0 < len(survivor.assignment()) < PARTITIONS, 60)

        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        poll_until([survivor], lambda: len(survivor.assignment()) == PARTITIONS, 60)
        took = time.monotonic() - killed_at
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=10)
        survivor.close()

    # The session timeout plus a rejoin, not the 300 s rebalance timeout.
    assert took < SESSION_TIMEOUT_MS / 1000 + 15


def test_static_member_rejoins_without_waiting_for_expiry(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("static"), unique("g")
    create_topic(module_broker, topic, 2)
    admin = AdminClient({"bootstrap.servers": module_broker.bootstrap})

    def start() -> Consumer:
        member = consumer(module_broker, group, **{"group.instance.id": "instance-1"})
        member.subscribe([topic])
        poll_until([member], lambda: len(member.assignment()) == 2, 60)
        return member

    start().close()  # a static member leaves no LeaveGroup behind
    again = start()
    try:
        description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    finally:
        again.close()
    assert len(description.members) == 1
    assert description.members[0].group_instance_id == "instance-1"


def test_admin_lists_describes_and_deletes_groups(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("admin"), unique("g")
    create_topic(module_broker, topic, 2)
    produce(module_broker, topic, 10, 2)
    admin = AdminClient({"bootstrap.servers": module_broker.bootstrap})

    member = consumer(module_broker, group)
    member.subscribe([topic])
    try:
        poll_until([member], lambda: len(member.assignment()) == 2, 60)
        member.commit(
            offsets=[TopicPartition(topic, 0, 3), TopicPartition(topic, 1, 4)],
            asynchronous=False,
        )
        listed = admin.list_consumer_groups().result(timeout=30)
        described = admin.describe_consumer_groups([group])[group].result(timeout=30)
        refused = admin.delete_consumer_groups([group])[group]
        with pytest.raises(KafkaException, match=r"NON_EMPTY_GROUP|not empty"):
            refused.result(timeout=30)
    finally:
        member.close()

    assert group in {g.group_id for g in listed.valid}
    assert str(described.state).endswith("STABLE")
    assert described.partition_assignor == "range"
    assert committed_offsets(module_broker, group, topic, 2) == {0: 3, 1: 4}

    admin.delete_consumer_groups([group])[group].result(timeout=30)
    assert committed_offsets(module_broker, group, topic, 2) == {0: -1001, 1: -1001}


def test_kafka_python_group_consumer_commits(module_broker: BrokerProcess) -> None:
    kafka = pytest.importorskip("kafka")
    topic, group = unique("kp"), unique("g")
    create_topic(module_broker, topic, 2)
    produce(module_broker, topic, 40, 2)

    reader = kafka.KafkaConsumer(
        topic,
        bootstrap_servers=module_broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=1000,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + 90
    try:
        while len(values) < 40:
            assert time.monotonic() < deadline
            for records in reader.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
        reader.commit()
    finally:
        reader.close()
    assert sorted(values) == sorted(f"record-{i}".encode() for i in range(40))
    assert committed_offsets(module_broker, group, topic, 2) == {0: 20, 1: 20}


def test_committed_offsets_survive_kill_of_the_control_process(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("ctlkill"), unique("g")
    create_topic(module_broker, topic, 2)
    produce(module_broker, topic, 20, 2)
    member = consumer(module_broker, group)
    member.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    member.commit(
        offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 9)],
        asynchronous=False,
    )
    member.close()

    control = control_process(module_broker)
    control.send_signal(signal.SIGKILL)
    control.wait(timeout=10)

    # The supervisor restarts it; clients find the coordinator again.
    assert committed_offsets(module_broker, group, topic, 2) == {0: 7, 1: 9}
    assert control_process(module_broker).pid != control.pid


def control_process(broker: BrokerProcess) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process(broker.pid).children():
            try:
                if "broker.control" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError("no control process found")


# -- brokers of their own -------------------------------------------------------


def test_committed_offsets_survive_clean_stop_and_broker_kill(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    topic, group = unique("restart"), unique("g")
    first = broker_factory().start()
    create_topic(first, topic, 1)
    member = consumer(first, group)
    member.assign([TopicPartition(topic, 0, 0)])
    member.commit(offsets=[TopicPartition(topic, 0, 11)], asynchronous=False)
    member.close()
    assert first.stop() == 0

    # Clean stop, then the same data directory again.
    second = broker_factory().start()
    assert committed_offsets(second, group, topic, 1) == {0: 11}
    member = consumer(second, group)
    member.assign([TopicPartition(topic, 0, 0)])
    member.commit(offsets=[TopicPartition(topic, 0, 12)], asynchronous=False)
    member.close()

    # kill -9 of the whole process group: every answered commit survives.
    os.killpg(second.pid, signal.SIGKILL)
    second.process.wait(timeout=10)  # type: ignore[union-attr]
    third = broker_factory().start(timeout_s=60)
    assert committed_offsets(third, group, topic, 1) == {0: 12}
    assert third.stop() == 0
