"""The group coordinator state machine, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import logging

import pytest

from broker.control.groups import (
    GroupConfig,
    GroupCoordinator,
    GroupState,
    JoinRequest,
    JoinResult,
    SyncResult,
)
from net.kafka.codec import encode_consumer_protocol
from net.kafka.errors import ErrorCode

SESSION_MS = 10_000
REBALANCE_MS = 30_000
RANGE = (("range", b"range-meta"),)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A coordinator with a fake clock and helpers that collect replies."""

    def __init__(self, **config: int) -> None:
        config.setdefault("initial_rebalance_delay_ms", 0)
        self.clock = FakeClock()
        self.coordinator = GroupCoordinator(self.clock, GroupConfig(**config))

    def join(
        self,
        member_id: str = "",
        *,
        group: str = "g",
        instance: str | None = None,
        protocols: tuple[tuple[str, bytes], ...] = RANGE,
        session_ms: int = SESSION_MS,
        rebalance_ms: int = REBALANCE_MS,
        require_known_member_id: bool = False,
        protocol_type: str = "consumer",
    ) -> list[JoinResult]:
        replies: list[JoinResult] = []
        request = JoinRequest(
            group_id=group,
            member_id=member_id,
            group_instance_id=instance,
            session_timeout_ms=session_ms,
            rebalance_timeout_ms=rebalance_ms,
            protocol_type=protocol_type,
            protocols=protocols,
            client_id="client",
            require_known_member_id=require_known_member_id,
        )
        self.coordinator.join(request, replies.append)
        return replies

    def sync(
        self,
        member_id: str,
        generation: int,
        assignments: dict[str, bytes] | None = None,
        *,
        group: str = "g",
        instance: str | None = None,
    ) -> list[SyncResult]:
        replies: list[SyncResult] = []
        self.coordinator.sync(
            group, generation, member_id, instance, assignments or {}, replies.append
        )
        return replies

    def heartbeat(
        self, member_id: str, generation: int, instance: str | None = None
    ) -> ErrorCode:
        return self.coordinator.heartbeat("g", generation, member_id, instance)

    def advance(self, ms: float) -> None:
        self.clock.now += ms
        self.coordinator.tick()

    def state(self, group: str = "g") -> GroupState | None:
        return self.coordinator.state_of(group)

    def stable_pair(self) -> tuple[str, str, int]:
        """Two members in a Stable group: (leader, follower, generation)."""
        first = self.join()
        assert first and first[0].error is ErrorCode.NONE
        leader = first[0].member_id
        generation = first[0].generation_id
        assert self.sync(leader, generation, {leader: b"a"})[0].error is ErrorCode.NONE

        # The second member starts a rebalance; the leader learns of it by
        # heartbeat and rejoins.
        second = self.join()
        assert not second
        assert self.heartbeat(leader, generation) is ErrorCode.REBALANCE_IN_PROGRESS
        rejoin = self.join(leader)
        assert rejoin and second
        generation = rejoin[0].generation_id
        follower = second[0].member_id
        parked = self.sync(follower, generation)
        assert not parked
        done = self.sync(leader, generation, {leader: b"A", follower: b"B"})
        assert done[0].assignment == b"A" and parked[0].assignment == b"B"
        assert self.state() is GroupState.STABLE
        return leader, follower, generation


# -- join and sync --------------------------------------------------------------


def test_join_completes_at_once_for_a_lone_member_without_initial_delay() -> None:
    harness = Harness()
    replies = harness.join()
    assert len(replies) == 1
    result = replies[0]
    assert result.error is ErrorCode.NONE
    assert result.generation_id == 1
    assert result.leader_id == result.member_id
    assert result.member_id.startswith("client-")
    assert result.protocol_name == "range"
    assert [m.metadata for m in result.members] == [b"range-meta"]
    assert harness.state() is GroupState.COMPLETING_REBALANCE


def test_join_waits_initial_delay_and_collects_members_when_group_is_empty() -> None:
    harness = Harness(initial_rebalance_delay_ms=3_000)
    first = harness.join()
    harness.advance(2_000)
    second = harness.join()
    # Each newcomer extends the delay: nothing before 2000 + 3000.
    harness.advance(2_999)
    assert not first and not second
    harness.advance(1)
    assert first[0].error is ErrorCode.NONE and second[0].error is ErrorCode.NONE
    assert first[0].generation_id == second[0].generation_id == 1
    leader = first[0]
    assert leader.leader_id == leader.member_id
    assert len(leader.members) == 2
    assert second[0].members == ()


def test_join_initial_delay_is_bounded_by_rebalance_timeout() -> None:
    harness = Harness(initial_rebalance_delay_ms=3_000)
    first = harness.join(rebalance_ms=5_000)
    for _ in range(4):
        harness.advance(1_000)
        harness.join(rebalance_ms=5_000)
    assert not first
    harness.advance(1_000)
    assert first and first[0].generation_id == 1
    assert len(first[0].members) == 5


def test_join_returns_member_id_required_then_accepts_the_id() -> None:
    harness = Harness()
    first = harness.join(require_known_member_id=True)
    assert first[0].error is ErrorCode.MEMBER_ID_REQUIRED
    member_id = first[0].member_id
    assert member_id
    assert harness.state() is GroupState.EMPTY

    second = harness.join(member_id, require_known_member_id=True)
    assert second[0].error is ErrorCode.NONE
    assert second[0].member_id == member_id


def test_join_rejects_unknown_member_id_when_group_is_unknown() -> None:
    harness = Harness()
    replies = harness.join("ghost")
    assert replies[0].error is ErrorCode.UNKNOWN_MEMBER_ID
    assert replies[0].member_id == "ghost"


@pytest.mark.parametrize(
    ("group", "session_ms", "error"),
    [
        ("", SESSION_MS, ErrorCode.INVALID_GROUP_ID),
        ("g", 5_999, ErrorCode.INVALID_SESSION_TIMEOUT),
        ("g", 1_800_001, ErrorCode.INVALID_SESSION_TIMEOUT),
    ],
)
def test_join_rejects_bad_request_when_group_or_timeout_invalid(
    group: str, session_ms: int, error: ErrorCode
) -> None:
    harness = Harness()
    assert harness.join(group=group, session_ms=session_ms)[0].error is error


def test_join_rejects_protocols_no_member_shares() -> None:
    harness = Harness()
    harness.join(protocols=(("range", b""),))
    replies = harness.join(protocols=(("roundrobin", b""),))
    assert replies[0].error is ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    other_type = harness.join(protocols=(("range", b""),), protocol_type="connect")
    assert other_type[0].error is ErrorCode.INCONSISTENT_GROUP_PROTOCOL
    assert harness.join(protocols=())[0].error is ErrorCode.INCONSISTENT_GROUP_PROTOCOL


def test_join_elects_protocol_by_votes() -> None:
    harness = Harness(initial_rebalance_delay_ms=1_000)
    prefers_range = (("range", b"r1"), ("roundrobin", b"rr1"), ("sticky", b"s1"))
    prefers_rr = (("roundrobin", b"rr"), ("range", b"r"))
    a = harness.join(protocols=prefers_range)
    b = harness.join(protocols=prefers_rr)
    c = harness.join(protocols=prefers_rr)
    harness.advance(1_000)
    # sticky is not shared by all; roundrobin has two votes to one.
    assert {r[0].protocol_name for r in (a, b, c)} == {"roundrobin"}
    leader = a[0]
    assert sorted(m.metadata for m in leader.members) == [b"rr", b"rr", b"rr1"]


def test_join_election_tie_goes_to_first_members_preference() -> None:
    harness = Harness(initial_rebalance_delay_ms=1_000)
    a = harness.join(protocols=(("range", b""), ("roundrobin", b"")))
    harness.join(protocols=(("roundrobin", b""), ("range", b"")))
    harness.advance(1_000)
    assert a[0].protocol_name == "range"


def test_sync_parks_followers_until_leader_assigns() -> None:
    harness = Harness()
    leader, follower, generation = harness.stable_pair()
    assert harness.sync(follower, generation)[0].assignment == b"B"
    description = harness.coordinator.describe("g")
    assert description is not None
    assert {m.member_id: m.assignment for m in description.members} == {
        leader: b"A",
        follower: b"B",
    }


def test_sync_rejects_stale_generation_and_unknown_member() -> None:
    harness = Harness()
    leader, _, generation = harness.stable_pair()
    stale = harness.sync(leader, generation - 1)
    assert stale[0].error is ErrorCode.ILLEGAL_GENERATION
    assert harness.sync("nobody", generation)[0].error is ErrorCode.UNKNOWN_MEMBER_ID
    unknown_group = harness.sync(leader, generation, group="other")
    assert unknown_group[0].error is ErrorCode.UNKNOWN_MEMBER_ID


def test_sync_rejects_protocol_name_of_another_protocol() -> None:
    harness = Harness()
    result = harness.join()[0]
    replies: list[SyncResult] = []
    harness.coordinator.sync(
        "g",
        result.generation_id,
        result.member_id,
        None,
        {},
        replies.append,
        protocol_type="consumer",
        protocol_name="roundrobin",
    )
    assert replies[0].error is ErrorCode.INCONSISTENT_GROUP_PROTOCOL


def test_sync_during_rebalance_answers_rebalance_in_progress() -> None:
    harness = Harness()
    leader, _, generation = harness.stable_pair()
    harness.join()
    assert harness.sync(leader, generation)[0].error is ErrorCode.REBALANCE_IN_PROGRESS


# -- heartbeats and expiry ------------------------------------------------------


def test_heartbeat_errors_follow_state_and_generation() -> None:
    harness = Harness()
    leader, follower, generation = harness.stable_pair()
    assert harness.heartbeat(leader, generation) is ErrorCode.NONE
    assert harness.heartbeat(leader, generation + 1) is ErrorCode.ILLEGAL_GENERATION
    assert harness.heartbeat("nobody", generation) is ErrorCode.UNKNOWN_MEMBER_ID
    assert harness.coordinator.heartbeat("", 1, leader, None) is (
        ErrorCode.INVALID_GROUP_ID
    )
    harness.join()
    assert harness.heartbeat(follower, generation) is ErrorCode.REBALANCE_IN_PROGRESS


def test_session_expiry_removes_silent_member_and_rebalances(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="broker.control.groups")
    harness = Harness()
    leader, follower, generation = harness.stable_pair()

    # The leader keeps beating; the follower falls silent.
    for _ in range(3):
        harness.advance(SESSION_MS / 3)
        harness.heartbeat(leader, generation)
    assert harness.state() is GroupState.PREPARING_REBALANCE
    assert harness.heartbeat(follower, generation) is ErrorCode.UNKNOWN_MEMBER_ID
    assert harness.heartbeat(leader, generation) is ErrorCode.REBALANCE_IN_PROGRESS

    rejoin = harness.join(leader)
    assert rejoin[0].generation_id == generation + 1
    assert [m.member_id for m in rejoin[0].members] == [leader]
    removed = [
        r.fields  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "group.member_removed"
    ]
    assert removed and removed[0]["reason"] == "session_timeout"
    assert removed[0]["member"] == follower
    started = [r.getMessage() for r in caplog.records]
    assert "group.rebalance_started" in started and "group.stable" in started


def test_session_expiry_not_applied_while_join_is_parked() -> None:
    harness = Harness()
    leader, follower, _ = harness.stable_pair()
    harness.join()  # a third member starts a rebalance
    parked = harness.join(leader)
    assert not parked
    # The follower never rejoins; the leader's parked join keeps it alive
    # past its session timeout until the follower's own session expires.
    harness.advance(SESSION_MS + 1)
    assert parked and parked[0].error is ErrorCode.NONE
    assert follower not in {m.member_id for m in parked[0].members}


def test_rebalance_stalls_no_longer_than_silent_members_session_timeout() -> None:
    harness = Harness()
    leader, _, generation = harness.stable_pair()
    harness.advance(SESSION_MS / 2)
    harness.heartbeat(leader, generation)

    # A newcomer triggers a rebalance; the follower's client has vanished.
    newcomer = harness.join()
    rejoined = harness.join(leader)
    harness.advance(SESSION_MS / 2 - 1)
    assert not newcomer and not rejoined
    harness.advance(1)
    # Completed at the follower's session deadline, long before the
    # 30 s rebalance timeout.
    assert newcomer[0].error is ErrorCode.NONE
    assert len(rejoined[0].members) == 2


def test_rebalance_timeout_removes_member_that_beats_but_never_rejoins() -> None:
    harness = Harness()
    leader, follower, generation = harness.stable_pair()
    harness.join()
    rejoined = harness.join(leader)
    # The follower heartbeats (REBALANCE_IN_PROGRESS) but never rejoins.
    for _ in range(int(REBALANCE_MS / 2_000)):
        harness.advance(2_000)
        assert harness.heartbeat(follower, generation) in (
            ErrorCode.REBALANCE_IN_PROGRESS,
            ErrorCode.UNKNOWN_MEMBER_ID,
        )
    assert rejoined and rejoined[0].generation_id == generation + 1
    assert follower not in {m.member_id for m in rejoined[0].members}


def test_leader_vanishing_after_join_releases_parked_syncs_at_session_end() -> None:
    harness = Harness()
    leader, follower, generation = harness.stable_pair()
    harness.join()
    a = harness.join(leader)
    b = harness.join(follower)
    assert a and b
    generation = a[0].generation_id

    # The follower syncs and keeps beating; the leader never syncs.
    parked = harness.sync(follower, generation)
    for _ in range(6):
        harness.advance(SESSION_MS / 5)
        harness.heartbeat(follower, generation)
    assert parked and parked[0].error is ErrorCode.REBALANCE_IN_PROGRESS
    assert leader not in harness.coordinator._groups["g"].members


def test_pending_member_id_expires_after_session_timeout() -> None:
    harness = Harness()
    leader, follower, _ = harness.stable_pair()
    required = harness.join(require_known_member_id=True)
    assert required[0].error is ErrorCode.MEMBER_ID_REQUIRED
    harness.join(leader, protocols=(("range", b"new"),))
    harness.join(follower)
    # Everyone known rejoined, but the pending id holds the join open ...
    assert harness.state() is GroupState.PREPARING_REBALANCE
    harness.advance(SESSION_MS)
    # ... until it expires.
    assert harness.state() is GroupState.COMPLETING_REBALANCE


# -- rejoin, leave, static members ---------------------------------------------


def test_follower_repeating_join_in_stable_gets_current_generation() -> None:
    harness = Harness()
    _, follower, generation = harness.stable_pair()
    again = harness.join(follower)
    assert again[0].generation_id == generation
    assert harness.state() is GroupState.STABLE


def test_leader_rejoining_in_stable_starts_a_rebalance() -> None:
    harness = Harness()
    leader, follower, generation = harness.stable_pair()
    assert not harness.join(leader)
    assert harness.state() is GroupState.PREPARING_REBALANCE
    assert harness.join(follower)[0].generation_id == generation + 1


def test_leave_of_last_member_empties_group_and_keeps_generation_count() -> None:
    harness = Harness()
    result = harness.join()[0]
    error, member_errors = harness.coordinator.leave("g", [(result.member_id, None)])
    assert error is ErrorCode.NONE and member_errors == [ErrorCode.NONE]
    assert harness.state() is GroupState.EMPTY
    assert harness.coordinator._groups["g"].generation_id == 2


def test_leave_batched_reports_each_member() -> None:
    harness = Harness()
    leader, follower, generation = harness.stable_pair()
    _, member_errors = harness.coordinator.leave(
        "g", [(follower, None), ("ghost", None)]
    )
    assert member_errors == [ErrorCode.NONE, ErrorCode.UNKNOWN_MEMBER_ID]
    assert harness.state() is GroupState.PREPARING_REBALANCE
    assert harness.join(leader)[0].generation_id == generation + 1
    missing = harness.coordinator.leave("none", [("x", None)])
    assert missing == (ErrorCode.NONE, [ErrorCode.UNKNOWN_MEMBER_ID])


def test_static_member_rejoin_in_stable_keeps_generation_and_fences_old_id() -> None:
    harness = Harness(initial_rebalance_delay_ms=1_000)
    a = harness.join(instance="i-a")
    b = harness.join(instance="i-b")
    harness.advance(1_000)
    generation = a[0].generation_id
    leader, old_b = a[0].member_id, b[0].member_id
    assert old_b.startswith("i-b-")
    harness.sync(old_b, generation, instance="i-b")
    harness.sync(leader, generation, {leader: b"A", old_b: b"B"}, instance="i-a")

    # i-b restarts and joins with an empty member id.
    again = harness.join(instance="i-b")
    new_b = again[0].member_id
    assert again[0].error is ErrorCode.NONE
    assert again[0].generation_id == generation
    assert new_b != old_b
    assert harness.state() is GroupState.STABLE
    assert harness.sync(new_b, generation, instance="i-b")[0].assignment == b"B"

    # The old id is fenced everywhere.
    assert harness.heartbeat(old_b, generation, "i-b") is ErrorCode.FENCED_INSTANCE_ID
    assert harness.join(old_b, instance="i-b")[0].error is ErrorCode.FENCED_INSTANCE_ID
    fenced = harness.coordinator.validate_commit("g", generation, old_b, "i-b")
    assert fenced is ErrorCode.FENCED_INSTANCE_ID
    assert harness.coordinator.leave("g", [(old_b, "i-b")])[1] == [
        ErrorCode.FENCED_INSTANCE_ID
    ]


def test_static_leader_rejoin_triggers_rebalance() -> None:
    harness = Harness()
    first = harness.join(instance="i-a")[0]
    harness.sync(first.member_id, first.generation_id, {}, instance="i-a")
    again = harness.join(instance="i-a")
    # A lone leader rejoining completes the new generation at once.
    assert again[0].generation_id == first.generation_id + 1
    assert again[0].leader_id == again[0].member_id != first.member_id


def test_static_member_parked_join_is_fenced_when_replaced() -> None:
    harness = Harness()
    leader, _, _ = harness.stable_pair()
    static = harness.join(instance="i-s")
    parked_leader = harness.join(leader)
    assert not static and not parked_leader
    replacement = harness.join(instance="i-s")
    assert static[0].error is ErrorCode.FENCED_INSTANCE_ID
    assert not replacement  # waits in the rebalance like any member


# -- offsets and admin ----------------------------------------------------------


def test_validate_commit_accepts_manual_assignment_when_group_has_no_members() -> None:
    harness = Harness()
    assert harness.coordinator.validate_commit("solo", -1, "", None) is ErrorCode.NONE
    assert harness.coordinator.validate_commit("solo", 3, "m", None) is (
        ErrorCode.ILLEGAL_GENERATION
    )
    result = harness.join()[0]
    harness.coordinator.leave("g", [(result.member_id, None)])
    assert harness.coordinator.validate_commit("g", -1, "", None) is ErrorCode.NONE


def test_validate_commit_checks_member_generation_and_state() -> None:
    harness = Harness()
    result = harness.join()[0]
    member, generation = result.member_id, result.generation_id
    check = harness.coordinator.validate_commit
    assert check("g", generation, member, None) is ErrorCode.REBALANCE_IN_PROGRESS
    harness.sync(member, generation)
    assert check("g", generation, member, None) is ErrorCode.NONE
    assert check("g", generation - 1, member, None) is ErrorCode.ILLEGAL_GENERATION
    assert check("g", -1, "", None) is ErrorCode.UNKNOWN_MEMBER_ID
    assert check("", generation, member, None) is ErrorCode.INVALID_GROUP_ID


def test_commit_counts_as_heartbeat() -> None:
    harness = Harness()
    result = harness.join()[0]
    harness.sync(result.member_id, result.generation_id)
    for _ in range(5):
        harness.advance(SESSION_MS / 2)
        harness.coordinator.validate_commit(
            "g", result.generation_id, result.member_id, None
        )
    assert harness.state() is GroupState.STABLE


def test_delete_requires_empty_group() -> None:
    harness = Harness()
    result = harness.join()[0]
    assert harness.coordinator.delete("g") is ErrorCode.NON_EMPTY_GROUP
    assert harness.coordinator.delete("none") is ErrorCode.GROUP_ID_NOT_FOUND
    harness.coordinator.leave("g", [(result.member_id, None)])
    assert harness.coordinator.delete("g") is ErrorCode.NONE
    assert harness.state() is None


def test_subscribed_topics_come_from_consumer_metadata() -> None:
    harness = Harness()
    metadata = encode_consumer_protocol(
        "ConsumerProtocolSubscription", 0, {"topics": ["orders", "audit"]}
    )
    harness.join(protocols=(("range", metadata),))
    assert harness.coordinator.subscribed_topics("g") == {"orders", "audit"}
    harness.join(group="raw", protocols=(("range", b"\xff"),))
    assert harness.coordinator.subscribed_topics("raw") is None


def test_describe_hides_metadata_until_stable() -> None:
    harness = Harness()
    result = harness.join()[0]
    description = harness.coordinator.describe("g")
    assert description is not None
    assert description.state is GroupState.COMPLETING_REBALANCE
    assert description.protocol_name == ""
    assert description.members[0].metadata == b""
    harness.sync(result.member_id, result.generation_id, {result.member_id: b"x"})
    description = harness.coordinator.describe("g")
    assert description is not None
    assert description.protocol_name == "range"
    assert description.members[0].metadata == b"range-meta"
    assert description.members[0].assignment == b"x"


def test_shutdown_answers_parked_requests_with_coordinator_not_available() -> None:
    harness = Harness(initial_rebalance_delay_ms=3_000)
    parked = harness.join()
    harness.coordinator.shutdown()
    assert parked[0].error is ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert harness.coordinator.list_groups() == []


def test_callback_may_reenter_coordinator() -> None:
    harness = Harness()
    syncs: list[SyncResult] = []

    def on_join(result: JoinResult) -> None:
        harness.coordinator.sync(
            "g", result.generation_id, result.member_id, None, {}, syncs.append
        )

    request = JoinRequest("g", "", None, SESSION_MS, REBALANCE_MS, "consumer", RANGE)
    harness.coordinator.join(request, on_join)
    assert syncs and syncs[0].error is ErrorCode.NONE
    assert harness.state() is GroupState.STABLE


def test_next_deadline_tracks_earliest_session() -> None:
    harness = Harness()
    assert harness.coordinator.next_deadline() is None
    harness.join()
    deadline = harness.coordinator.next_deadline()
    assert deadline == harness.clock.now + SESSION_MS
    statistics = harness.coordinator.statistics()
    assert statistics.groups == 1 and statistics.members == 1
