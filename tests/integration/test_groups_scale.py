"""Many consumer groups joining one broker at once: 200 groups of two
aiokafka consumers each (400 members in one asyncio loop) on one topic.

Each group must reach Stable, its two members holding disjoint assignments
that cover the topic, within its rebalance timeout. A consumer's
``on_partitions_assigned`` runs after its SyncGroup answer, which the
coordinator sends only once the group is Stable, so the last such callback
of a group's members is an upper bound of when the group became Stable (a
later rebalance would call it again). The time is measured from just before
the members' ``start()`` (bootstrap, metadata, then their first JoinGroup),
which is earlier than their first JoinGroup: the measure errs long, never
short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.coordinator.assignors.range import (  # type: ignore[import-untyped]
    RangePartitionAssignor,
)

from net.kafka import codec
from net.kafka.schema import ApiKey
from tests.conftest import BrokerProcess
from tests.integration.rawclient import RawClient
from tests.integration.test_groups import create_topic, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GROUPS = 200
MEMBERS = 2
PARTITIONS = 4

# Far below aiokafka's default (the 300 s max poll interval), so a group
# held up until its rebalance deadline fails the test.
REBALANCE_TIMEOUT_MS = 30_000
SESSION_TIMEOUT_MS = 30_000
HEARTBEAT_INTERVAL_MS = 3_000

# Bounds of the whole join and of the shutdown; far above what the join
# needs (a few seconds here) and below the test's timeout.
JOIN_BOUND_S = 120
STOP_BOUND_S = 60

DESCRIBE_GROUPS_VERSION = 4  # the advertised maximum


class AssignmentClock(ConsumerRebalanceListener):
    """Notes when its consumer last received an assignment."""

    def __init__(self) -> None:
        self.assigned_at: float | None = None
        self.assignments = 0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned_at = time.monotonic()
        self.assignments += 1


def describe_groups(
    broker: BrokerProcess, group_ids: list[str]
) -> dict[str, tuple[str, dict[str, frozenset[int]]]]:
    """DescribeGroups over the wire: group -> (state, member id -> the
    partitions of its decoded assignment)."""
    with RawClient(broker.bootstrap) as client:
        response = client.call(
            ApiKey.DESCRIBE_GROUPS,
            DESCRIBE_GROUPS_VERSION,
            {"groups": group_ids, "include_authorized_operations": False},
        )
    described = {}
    for group in response["groups"]:
        assert group["error_code"] == 0, group
        members = {}
        for member in group["members"]:
            _, assignment = codec.decode_consumer_protocol(
                "ConsumerProtocolAssignment", member["member_assignment"]
            )
            members[member["member_id"]] = frozenset(
                p for t in assignment["assigned_partitions"] for p in t["partitions"]
            )
        described[group["group_id"]] = (group["group_state"], members)
    return described


def test_200_groups_of_two_joining_at_once_stabilise_within_rebalance_timeout(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    broker = broker_factory().start()
    topic = unique("many")
    create_topic(broker, topic, PARTITIONS)
    group_ids = [unique(f"g{i:03d}") for i in range(GROUPS)]

    async def run() -> tuple[
        dict[str, list[set[int]]],
        dict[str, float],
        dict[str, tuple[str, dict[str, frozenset[int]]]],
    ]:
        consumers: dict[str, list[tuple[AIOKafkaConsumer, AssignmentClock]]] = {}
        for group_id in group_ids:
            consumers[group_id] = []
            for _ in range(MEMBERS):
                member = AIOKafkaConsumer(
                    bootstrap_servers=broker.bootstrap,
                    group_id=group_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    session_timeout_ms=SESSION_TIMEOUT_MS,
                    heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                    rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
                    partition_assignment_strategy=(RangePartitionAssignor,),
                )
                clock = AssignmentClock()
                member.subscribe([topic], listener=clock)
                consumers[group_id].append((member, clock))
        everyone = [pair for pairs in consumers.values() for pair in pairs]

        # All 400 start at once; start() returns once it holds an assignment.
        started_at = time.monotonic()
        try:
            async with asyncio.timeout(JOIN_BOUND_S):
                await asyncio.gather(*(member.start() for member, _ in everyone))

            # Judged now: what the coordinator says, then each client's view.
            described = await asyncio.to_thread(describe_groups, broker, group_ids)
            held = {
                group_id: [
                    {tp.partition for tp in member.assignment()} for member, _ in pairs
                ]
                for group_id, pairs in consumers.items()
            }
            took = {}
            for group_id, pairs in consumers.items():
                stamps = [clock.assigned_at for _, clock in pairs]
                assert None not in stamps, group_id
                took[group_id] = max(s for s in stamps if s is not None) - started_at
        finally:
            async with asyncio.timeout(STOP_BOUND_S):
                await asyncio.gather(
                    *(member.stop() for member, _ in everyone), return_exceptions=True
                )
        return held, took, described

    held, took, described = asyncio.run(run())

    everything = set(range(PARTITIONS))
    for group_id in group_ids:
        state, members = described[group_id]
        assert state == "Stable", (group_id, state)
        assert len(members) == MEMBERS, (group_id, members)
        first, second = members.values()
        assert first and second and not first & second, (group_id, members)
        assert first | second == everything, (group_id, members)
        assert sorted(map(sorted, held[group_id])) == sorted(
            map(sorted, members.values())
        ), group_id
    slowest = max(took, key=took.__getitem__)
    assert took[slowest] < REBALANCE_TIMEOUT_MS / 1000, (slowest, took[slowest])

    # Nobody was dropped on the way (no session or rebalance timeout), and
    # every member's LeaveGroup on stop emptied its group.
    log = broker.run_log()
    assert "reason=session_timeout" not in log
    assert "reason=rebalance_timeout" not in log
    after = describe_groups(broker, group_ids)
    assert {state for state, _ in after.values()} == {"Empty"}
    assert broker.stop() == 0
