"""Consumer groups and committed offsets with real Kafka clients against a
real broker: partition assignment by groups of three (confluent-kafka and
kafka-python), a clean leave, commits, expiry of a killed member, static
membership, a second group reading from earliest, DescribeGroups and
ListGroups, and consumers resuming at their committed offsets through
restarts and kill -9 of the control process and of the whole broker.

The group of 200 groups joining at once is in ``test_groups_scale.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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

# The groups of three share six partitions, two each under range assignment.
GROUP_SIZE = 3
SPLIT_PARTITIONS = 6

Message = tuple[int, int, bytes]
"""One consumed record as (partition, offset, value)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topic(
    broker: BrokerProcess, topic: str, partitions: int = PARTITIONS
) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)])
    futures[topic].result(timeout=30)


def produce(
    broker: BrokerProcess, topic: str, count: int, partitions: int, first: int = 0
) -> list[bytes]:
    """Produce ``record-<first>`` .. round-robin over the partitions; return
    the values."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    values = [f"record-{i}".encode() for i in range(first, first + count)]
    for i, value in enumerate(values, start=first):
        producer.produce(topic, value=value, partition=i % partitions)
    assert producer.flush(60) == 0
    return values


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
        poll_once(consumers, on_message)


def poll_for(
    consumers: list[Consumer],
    seconds: float,
    on_message: Callable[[Consumer, Any], None] | None = None,
) -> None:
    """Keep polling for ``seconds``: records that should not come show up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        poll_once(consumers, on_message)


def poll_once(
    consumers: list[Consumer],
    on_message: Callable[[Consumer, Any], None] | None,
) -> None:
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


def partitions_of(member: Consumer) -> set[int]:
    return {tp.partition for tp in member.assignment()}


def is_split(assignments: list[set[int]], partitions: int) -> bool:
    """Every member holds partitions, none is held twice, all are held."""
    held = [p for assigned in assignments for p in assigned]
    return all(assignments) and sorted(held) == list(range(partitions))


def wait_for_split(
    members: list[Consumer],
    partitions: int,
    timeout_s: float,
    on_message: Callable[[Consumer, Any], None] | None = None,
) -> list[set[int]]:
    """Poll until the members' assignments split the partitions."""
    poll_until(
        members,
        lambda: is_split([partitions_of(m) for m in members], partitions),
        timeout_s,
        on_message,
    )
    return [partitions_of(m) for m in members]


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


def assert_read_once_by_owner(
    received: list[list[Message]],
    assignments: list[set[int]],
    values: list[bytes],
) -> None:
    """Every value was read exactly once, by the member that owns its
    partition."""
    read = [value for each in received for _, _, value in each]
    assert sorted(read) == sorted(values)
    for member_index, messages in enumerate(received):
        foreign = {p for p, _, _ in messages} - assignments[member_index]
        assert not foreign, f"member {member_index} read partitions {foreign}"


# -- one broker for the module ---------------------------------------------------


def test_confluent_group_of_three_splits_six_partitions_and_reads_once(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("split"), unique("g")
    create_topic(module_broker, topic, SPLIT_PARTITIONS)
    members = [consumer(module_broker, group) for _ in range(GROUP_SIZE)]
    for member in members:
        member.subscribe([topic])
    received: list[list[Message]] = [[] for _ in members]
    index = {id(member): i for i, member in enumerate(members)}

    def record(member: Consumer, message: Any) -> None:
        received[index[id(member)]].append(
            (message.partition(), message.offset(), message.value())
        )

    def count() -> int:
        return sum(map(len, received))

    try:
        # Records are produced once the group is stable, so no rebalance
        # can hand a partition over mid-read.
        assignments = wait_for_split(members, SPLIT_PARTITIONS, 60, record)
        values = produce(module_broker, topic, 300, SPLIT_PARTITIONS)
        poll_until(members, lambda: count() >= 300, 90, record)
        poll_for(members, 1.0, record)
        final = [partitions_of(m) for m in members]
        for member in members:
            member.commit(asynchronous=False)
    finally:
        for member in members:
            member.close()

    assert is_split(assignments, SPLIT_PARTITIONS), assignments
    assert final == assignments
    assert_read_once_by_owner(received, assignments, values)
    assert committed_offsets(
        module_broker, group, topic, SPLIT_PARTITIONS
    ) == dict.fromkeys(range(SPLIT_PARTITIONS), 50)


class KafkaPythonMember(threading.Thread):
    """One kafka-python group consumer polled by its own thread (its poll
    runs the join and sync, so members polled in turn by one thread would
    wait on each other's rebalances)."""

    def __init__(self, broker: BrokerProcess, group: str, topic: str) -> None:
        super().__init__(daemon=True)
        kafka = pytest.importorskip("kafka")
        self.consumer = kafka.KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1000,
        )
        self.lock = threading.Lock()
        self.assigned: set[int] = set()
        self.received: list[Message] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        # Bounded: the test stops it long before this.
        deadline = time.monotonic() + 200
        try:
            while not self.stopping.is_set() and time.monotonic() < deadline:
                batches = self.consumer.poll(timeout_ms=100)
                with self.lock:
                    for records in batches.values():
                        self.received.extend(
                            (r.partition, r.offset, r.value) for r in records
                        )
                    self.assigned = {tp.partition for tp in self.consumer.assignment()}
            self.consumer.commit()
        except BaseException as exc:
            self.error = exc
        finally:
            self.consumer.close()

    def snapshot(self) -> tuple[set[int], list[Message]]:
        with self.lock:
            return set(self.assigned), list(self.received)


def test_kafka_python_group_of_three_splits_six_partitions_and_reads_once(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("kp"), unique("g")
    create_topic(module_broker, topic, SPLIT_PARTITIONS)
    members = [KafkaPythonMember(module_broker, group, topic) for _ in range(3)]
    for member in members:
        member.start()

    def wait(done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "condition not reached in time"
            for member in members:
                assert member.is_alive(), member.error
            time.sleep(0.05)

    def assignments() -> list[set[int]]:
        return [member.snapshot()[0] for member in members]

    def count() -> int:
        return sum(len(member.snapshot()[1]) for member in members)

    try:
        wait(lambda: is_split(assignments(), SPLIT_PARTITIONS), 60)
        split = assignments()
        values = produce(module_broker, topic, 300, SPLIT_PARTITIONS)
        wait(lambda: count() >= 300, 90)
        time.sleep(1.0)  # records that should not come show up
    finally:
        for member in members:
            member.stopping.set()
        for member in members:
            member.join(timeout=30)
    for member in members:
        assert not member.is_alive()
        assert member.error is None, member.error

    assert assignments() == split
    assert_read_once_by_owner(
        [member.snapshot()[1] for member in members], split, values
    )
    assert committed_offsets(
        module_broker, group, topic, SPLIT_PARTITIONS
    ) == dict.fromkeys(range(SPLIT_PARTITIONS), 50)


def leader_of(broker: BrokerProcess, group: str) -> str:
    """The leader of the group's latest generation, from the broker's log."""
    completed = [
        line
        for line in broker.run_log().splitlines()
        if "group.join_completed" in line and f"group={group} " in line
    ]
    assert completed, f"no generation of {group} in the log"
    return completed[-1].split(" leader=", 1)[1].split(" ", 1)[0]


@pytest.mark.parametrize("leaver", ["leader", "follower"])
def test_member_leaving_hands_its_partitions_to_the_others(
    module_broker: BrokerProcess, leaver: str
) -> None:
    topic, group = unique("leave"), unique("g")
    create_topic(module_broker, topic, SPLIT_PARTITIONS)

    # A session timeout far above the takeover: only the LeaveGroup can
    # explain a quick one.
    session_ms = 30_000
    members = [
        consumer(module_broker, group, **{"session.timeout.ms": session_ms})
        for _ in range(GROUP_SIZE)
    ]
    for member in members:
        member.subscribe([topic])
    before: list[list[Message]] = [[] for _ in members]
    after: list[list[Message]] = [[] for _ in members]
    index = {id(member): i for i, member in enumerate(members)}
    current = before

    def record(member: Consumer, message: Any) -> None:
        current[index[id(member)]].append(
            (message.partition(), message.offset(), message.value())
        )

    stayers = list(members)
    try:
        split = wait_for_split(members, SPLIT_PARTITIONS, 60, record)
        old_values = produce(module_broker, topic, 60, SPLIT_PARTITIONS)
        poll_until(members, lambda: sum(map(len, before)) >= 60, 60, record)
        for member in members:
            member.commit(asynchronous=False)

        member_ids = [member.memberid() for member in members]
        leader = leader_of(module_broker, group)
        assert leader in member_ids
        leaving_id = next(
            mid for mid in member_ids if (mid == leader) == (leaver == "leader")
        )
        leaving = members[member_ids.index(leaving_id)]
        stayers.remove(leaving)

        # close() sends LeaveGroup. Records are produced after the takeover:
        # ones read before the stayers' revocation would not be committed and
        # would rightly be read again.
        left_at = time.monotonic()
        leaving.close()
        current = after
        takeover = wait_for_split(stayers, SPLIT_PARTITIONS, 60, record)
        took = time.monotonic() - left_at
        new_values = produce(module_broker, topic, 60, SPLIT_PARTITIONS, first=60)
        poll_until(stayers, lambda: sum(map(len, after)) >= 60, 60, record)
        poll_for(stayers, 1.0, record)
        final = [partitions_of(m) for m in stayers]
    finally:
        for member in stayers:
            member.close()

    assert_read_once_by_owner(before, split, old_values)
    assert final == takeover
    assert_read_once_by_owner(
        [after[index[id(member)]] for member in stayers], takeover, new_values
    )
    assert took < session_ms / 1000
    removals = [
        line
        for line in module_broker.run_log().splitlines()
        if "group.member_removed" in line and f"group={group} " in line
    ]
    assert not [line for line in removals if "reason=session_timeout" in line]
    leaves = [line for line in removals if f"member={leaving_id} " in line]
    assert len(leaves) == 1, removals
    assert "reason=left" in leaves[0]
    if leaver == "leader":
        assert leader_of(module_broker, group) != leaving_id


def read_as_group(
    broker: BrokerProcess,
    group: str,
    topic: str,
    partitions: int,
    end: int,
    commit: dict[int, int],
) -> dict[int, list[int]]:
    """One member of ``group`` reads every partition through offset
    ``end - 1``, commits ``commit`` and leaves; returns the offsets it read
    per partition, in order."""
    member = consumer(broker, group)
    member.subscribe([topic])
    offsets: dict[int, list[int]] = {p: [] for p in range(partitions)}

    def record(_: Consumer, message: Any) -> None:
        offsets[message.partition()].append(message.offset())

    def done() -> bool:
        return all(seen and seen[-1] >= end - 1 for seen in offsets.values())

    try:
        poll_until([member], done, 60, record)
        poll_for([member], 0.5, record)
        member.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in commit.items()],
            asynchronous=False,
        )
    finally:
        member.close()
    return offsets


def test_second_group_reads_everything_again_from_earliest(
    module_broker: BrokerProcess,
) -> None:
    topic, first, second = unique("again"), unique("g"), unique("g")
    create_topic(module_broker, topic, 3)
    produce(module_broker, topic, 90, 3)
    everything = {p: list(range(30)) for p in range(3)}
    at_end = dict.fromkeys(range(3), 30)

    assert read_as_group(module_broker, first, topic, 3, 30, at_end) == everything
    assert read_as_group(module_broker, second, topic, 3, 30, at_end) == everything
    assert committed_offsets(module_broker, first, topic, 3) == at_end
    assert committed_offsets(module_broker, second, topic, 3) == at_end


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


def test_describe_and_list_groups_show_the_members(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("admin"), unique("g")
    create_topic(module_broker, topic, 2)
    admin = AdminClient({"bootstrap.servers": module_broker.bootstrap})
    members = [
        consumer(module_broker, group, **{"client.id": f"member-{i}"}) for i in range(2)
    ]
    for member in members:
        member.subscribe([topic])

    try:
        split = wait_for_split(members, 2, 60)
        member_ids = [member.memberid() for member in members]
        for member, assigned in zip(members, split, strict=True):
            (partition,) = assigned
            member.commit(
                offsets=[TopicPartition(topic, partition, 3 + partition)],
                asynchronous=False,
            )
        listed = admin.list_consumer_groups().result(timeout=30)
        described = admin.describe_consumer_groups([group])[group].result(timeout=30)
        refused = admin.delete_consumer_groups([group])[group]
        with pytest.raises(KafkaException, match=r"NON_EMPTY_GROUP|not empty"):
            refused.result(timeout=30)
    finally:
        for member in members:
            member.close()

    # ListGroups v2 (the advertised maximum) has no state; the protocol type
    # tells a consumer group from offsets-only ones.
    assert not {g.group_id: g for g in listed.valid}[group].is_simple_consumer_group
    assert str(described.state).endswith("STABLE")
    assert described.partition_assignor == "range"
    by_id = {m.member_id: m for m in described.members}
    assert sorted(by_id) == sorted(member_ids)
    for i, member_id in enumerate(member_ids):
        shown = by_id[member_id]
        assert shown.client_id == f"member-{i}"
        shown_partitions = {
            (tp.topic, tp.partition) for tp in shown.assignment.topic_partitions
        }
        assert shown_partitions == {(topic, p) for p in split[i]}

    # Both left: an Empty group, still listed (it has committed offsets).
    emptied = admin.describe_consumer_groups([group])[group].result(timeout=30)
    assert str(emptied.state).endswith("EMPTY")
    assert emptied.members == []
    listed = admin.list_consumer_groups().result(timeout=30)
    assert group in {g.group_id for g in listed.valid}
    assert committed_offsets(module_broker, group, topic, 2) == {0: 3, 1: 4}

    admin.delete_consumer_groups([group])[group].result(timeout=30)
    assert committed_offsets(module_broker, group, topic, 2) == {0: -1001, 1: -1001}


def test_group_resumes_at_committed_offsets_after_control_process_kill(
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

    # The supervisor restarts it; the group's consumer finds the coordinator
    # again and starts exactly at the committed offsets.
    resumed = read_as_group(module_broker, group, topic, 2, 10, {0: 10, 1: 10})
    assert resumed == {0: [7, 8, 9], 1: [9]}
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


def test_group_resumes_at_committed_offsets_after_clean_stop_and_broker_kill(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    topic, group = unique("restart"), unique("g")
    first = broker_factory().start()
    create_topic(first, topic, 2)
    produce(first, topic, 100, 2)
    read = read_as_group(first, group, topic, 2, 50, {0: 20, 1: 30})
    assert read == {0: list(range(50)), 1: list(range(50))}
    assert first.stop() == 0

    # Clean stop, then the same data directory again: the group starts
    # exactly at its committed offsets, neither re-reading nor skipping.
    second = broker_factory().start()
    read = read_as_group(second, group, topic, 2, 50, {0: 35, 1: 45})
    assert read == {0: list(range(20, 50)), 1: list(range(30, 50))}

    # kill -9 of the whole process group: every answered commit survives.
    os.killpg(second.pid, signal.SIGKILL)
    second.process.wait(timeout=10)  # type: ignore[union-attr]
    third = broker_factory().start(timeout_s=60)
    read = read_as_group(third, group, topic, 2, 50, {0: 50, 1: 50})
    assert read == {0: list(range(35, 50)), 1: list(range(45, 50))}
    assert third.stop() == 0
