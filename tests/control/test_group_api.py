"""Group coordinator requests as encoded Kafka frames through
``ControlService.handle``: coordinator lookup, join/sync/heartbeat/leave,
listing, committed offsets."""

from __future__ import annotations

import asyncio
from typing import Any

from broker.control.service import ControlService
from broker.settings import Settings
from net.kafka.codec import encode_consumer_protocol
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.control.support import (
    ADVERTISED_HOST,
    KAFKA_PORT,
    NODE_ID,
    Caller,
    FakeClock,
    make_service,
    run,
)

SUBSCRIPTION = encode_consumer_protocol(
    "ConsumerProtocolSubscription", 0, {"topics": ["orders"]}
)


def join_body(
    member_id: str = "",
    *,
    group: str = "g",
    instance: str | None = None,
    session_ms: int = 10_000,
) -> dict[str, Any]:
    return {
        "group_id": group,
        "session_timeout_ms": session_ms,
        "rebalance_timeout_ms": 30_000,
        "member_id": member_id,
        "group_instance_id": instance,
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": SUBSCRIPTION}],
    }


def commit_body(
    group: str,
    offsets: dict[tuple[str, int], int],
    generation: int = -1,
    member_id: str = "",
    metadata: str | None = "",
) -> dict[str, Any]:
    topics: dict[str, list[dict[str, Any]]] = {}
    for (topic, partition), offset in offsets.items():
        topics.setdefault(topic, []).append(
            {
                "partition_index": partition,
                "committed_offset": offset,
                "committed_metadata": metadata,
            }
        )
    return {
        "group_id": group,
        "generation_id_or_member_epoch": generation,
        "member_id": member_id,
        "topics": [{"name": t, "partitions": p} for t, p in topics.items()],
    }


def partition_errors(response: dict[str, Any]) -> dict[tuple[str, int], int]:
    return {
        (t["name"], p["partition_index"]): p["error_code"]
        for t in response["topics"]
        for p in t["partitions"]
    }


def fetched_offsets(response: dict[str, Any]) -> dict[tuple[str, int], int]:
    return {
        (t["name"], p["partition_index"]): p["committed_offset"]
        for t in response["topics"]
        for p in t["partitions"]
    }


async def with_topic(service: ControlService, name: str = "orders") -> Caller:
    call = Caller(service)
    topic = {
        "name": name,
        "num_partitions": 2,
        "replication_factor": 1,
        "assignments": [],
        "configs": [],
    }
    created = await call(ApiKey.CREATE_TOPICS, 4, {"topics": [topic]})
    assert created["topics"][0]["error_code"] == 0
    return call


async def join_stable(call: Caller, group: str = "g") -> tuple[str, int]:
    """One member joined and synced: (member id, generation)."""
    first = await call(ApiKey.JOIN_GROUP, 4, join_body(group=group))
    assert first["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
    joined = await call(
        ApiKey.JOIN_GROUP, 4, join_body(first["member_id"], group=group)
    )
    member, generation = joined["member_id"], joined["generation_id"]
    sync = {
        "group_id": group,
        "generation_id": generation,
        "member_id": member,
        "assignments": [{"member_id": member, "assignment": b"plan"}],
    }
    synced = await call(ApiKey.SYNC_GROUP, 3, sync)
    assert synced["error_code"] == 0 and synced["assignment"] == b"plan"
    return member, generation


# -- FindCoordinator ------------------------------------------------------------


def test_find_coordinator_names_this_broker_in_every_layout(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        return [
            await call(ApiKey.FIND_COORDINATOR, 0, {"key": "g"}),
            await call(ApiKey.FIND_COORDINATOR, 2, {"key": "g", "key_type": 0}),
            await call(
                ApiKey.FIND_COORDINATOR,
                4,
                {"key_type": 0, "coordinator_keys": ["a", "b"]},
            ),
            await call(ApiKey.FIND_COORDINATOR, 1, {"key": "tx", "key_type": 1}),
        ]

    v0, v2, v4, transaction = run(scenario())
    for single in (v0, v2):
        assert (single["error_code"], single["node_id"]) == (0, NODE_ID)
        assert (single["host"], single["port"]) == (ADVERTISED_HOST, KAFKA_PORT)
    assert [(c["key"], c["node_id"], c["port"]) for c in v4["coordinators"]] == [
        ("a", NODE_ID, KAFKA_PORT),
        ("b", NODE_ID, KAFKA_PORT),
    ]
    assert transaction["error_code"] == ErrorCode.INVALID_REQUEST
    assert "transactions are not supported" in transaction["error_message"]


# -- membership -----------------------------------------------------------------


def test_two_members_rebalance_into_one_generation_on_the_loop_timer(
    settings: Settings,
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        # A real clock: the initial delay completes on the service's timer.
        service = make_service(settings, initial_rebalance_delay_ms=200)
        call = Caller(service)
        a, b = await asyncio.gather(
            call(ApiKey.JOIN_GROUP, 2, join_body()),
            call(ApiKey.JOIN_GROUP, 5, join_body(instance="static-b")),
        )
        generation = a["generation_id"]
        leader = a if a["leader"] == a["member_id"] else b
        follower = b if leader is a else a
        syncs = await asyncio.gather(
            call(
                ApiKey.SYNC_GROUP,
                1,
                {
                    "group_id": "g",
                    "generation_id": generation,
                    "member_id": follower["member_id"],
                    "assignments": [],
                },
            ),
            call(
                ApiKey.SYNC_GROUP,
                3,
                {
                    "group_id": "g",
                    "generation_id": generation,
                    "member_id": leader["member_id"],
                    "group_instance_id": "static-b" if leader is b else None,
                    "assignments": [
                        {"member_id": leader["member_id"], "assignment": b"L"},
                        {"member_id": follower["member_id"], "assignment": b"F"},
                    ],
                },
            ),
        )
        await service.close()
        return leader, follower, list(syncs)

    leader, follower, syncs = run(scenario())
    assert leader["generation_id"] == follower["generation_id"] == 1
    assert len(leader["members"]) == 2 and follower["members"] == []
    assert {m["metadata"] for m in leader["members"]} == {SUBSCRIPTION}
    assert [s["assignment"] for s in syncs] == [b"F", b"L"]


def test_heartbeat_and_leave_through_frames(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        call = Caller(make_service(settings, FakeClock()))
        member, generation = await join_stable(call)
        hb = {"group_id": "g", "generation_id": generation, "member_id": member}
        results = [
            await call(ApiKey.HEARTBEAT, 0, hb),
            await call(ApiKey.HEARTBEAT, 3, {**hb, "generation_id": generation + 5}),
            await call(ApiKey.LEAVE_GROUP, 1, {"group_id": "g", "member_id": "ghost"}),
            await call(
                ApiKey.LEAVE_GROUP,
                3,
                {
                    "group_id": "g",
                    "members": [
                        {"member_id": member, "group_instance_id": None},
                        {"member_id": "ghost", "group_instance_id": None},
                    ],
                },
            ),
            await call(ApiKey.HEARTBEAT, 1, hb),
        ]
        return results

    ok, stale, leave_ghost, leave_batch, after = run(scenario())
    assert ok["error_code"] == 0
    assert stale["error_code"] == ErrorCode.ILLEGAL_GENERATION
    assert leave_ghost["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID
    assert leave_batch["error_code"] == 0
    assert [m["error_code"] for m in leave_batch["members"]] == [
        0,
        ErrorCode.UNKNOWN_MEMBER_ID,
    ]
    assert after["error_code"] == ErrorCode.UNKNOWN_MEMBER_ID


def test_join_v0_uses_session_timeout_as_rebalance_timeout(settings: Settings) -> None:
    async def scenario() -> dict[str, Any]:
        call = Caller(make_service(settings, FakeClock()))
        body = join_body()
        del body["rebalance_timeout_ms"], body["group_instance_id"]
        return await call(ApiKey.JOIN_GROUP, 0, body)

    result = run(scenario())
    assert result["error_code"] == 0 and result["generation_id"] == 1


def test_parked_join_is_answered_when_service_closes(settings: Settings) -> None:
    async def scenario() -> dict[str, Any]:
        service = make_service(settings, initial_rebalance_delay_ms=60_000)
        call = Caller(service)
        parked = asyncio.ensure_future(call(ApiKey.JOIN_GROUP, 2, join_body()))
        await asyncio.sleep(0.05)
        assert not parked.done()
        await service.close()
        return await parked

    assert run(scenario())["error_code"] == ErrorCode.COORDINATOR_NOT_AVAILABLE


# -- listing --------------------------------------------------------------------


def test_describe_and_list_groups_include_offset_only_groups(
    settings: Settings,
) -> None:
    async def scenario() -> list[Any]:
        call = await with_topic(make_service(settings, FakeClock()))
        member, _ = await join_stable(call, "active")
        await call(ApiKey.OFFSET_COMMIT, 2, commit_body("manual", {("orders", 0): 3}))
        describe = {"groups": ["active", "manual", "unknown", ""]}
        return [
            await call(ApiKey.DESCRIBE_GROUPS, 0, describe),
            await call(ApiKey.DESCRIBE_GROUPS, 4, describe),
            await call(ApiKey.LIST_GROUPS, 0, {}),
            await call(ApiKey.LIST_GROUPS, 4, {"states_filter": ["stable"]}),
            await call(
                ApiKey.LIST_GROUPS,
                5,
                {"states_filter": [], "types_filter": ["consumer"]},
            ),
            member,
        ]

    v0, v4, listed, stable, wrong_type, member = run(scenario())
    active, manual, unknown, invalid = v4["groups"]
    assert (active["group_state"], active["protocol_data"]) == ("Stable", "range")
    assert active["members"][0]["member_id"] == member
    assert active["members"][0]["member_assignment"] == b"plan"
    assert active["members"][0]["client_id"] == "tester"
    assert manual["group_state"] == "Empty" and manual["error_code"] == 0
    assert unknown["group_state"] == "Dead"
    assert invalid["error_code"] == ErrorCode.INVALID_GROUP_ID
    assert [g["group_state"] for g in v0["groups"]][:3] == ["Stable", "Empty", "Dead"]
    assert {(g["group_id"], g["protocol_type"]) for g in listed["groups"]} == {
        ("active", "consumer"),
        ("manual", ""),
    }
    assert [g["group_id"] for g in stable["groups"]] == ["active"]
    assert wrong_type["groups"] == []


def test_delete_groups_needs_empty_group_and_drops_its_offsets(
    settings: Settings,
) -> None:
    async def scenario() -> list[Any]:
        call = await with_topic(make_service(settings, FakeClock()))
        await join_stable(call, "active")
        await call(ApiKey.OFFSET_COMMIT, 2, commit_body("manual", {("orders", 0): 3}))
        deleted = await call(
            ApiKey.DELETE_GROUPS, 1, {"groups_names": ["active", "manual", "ghost", ""]}
        )
        fetched = await call(
            ApiKey.OFFSET_FETCH, 5, {"group_id": "manual", "topics": None}
        )
        return [deleted, fetched]

    deleted, fetched = run(scenario())
    assert [(r["group_id"], r["error_code"]) for r in deleted["results"]] == [
        ("active", ErrorCode.NON_EMPTY_GROUP),
        ("manual", 0),
        ("ghost", ErrorCode.GROUP_ID_NOT_FOUND),
        ("", ErrorCode.INVALID_GROUP_ID),
    ]
    assert fetched["topics"] == []


# -- committed offsets ----------------------------------------------------------


def test_offset_commit_and_fetch_round_trip_and_survive_restart(
    settings: Settings,
) -> None:
    async def first_life() -> list[Any]:
        service = make_service(settings, FakeClock())
        call = await with_topic(service)
        committed = await call(
            ApiKey.OFFSET_COMMIT,
            2,
            commit_body("g", {("orders", 0): 42, ("orders", 1): 7, ("ghost", 0): 1}),
        )
        too_big = await call(
            ApiKey.OFFSET_COMMIT,
            7,
            commit_body("g", {("orders", 0): 43}, metadata="x" * 4097),
        )
        await service.close()
        return [committed, too_big]

    async def second_life() -> list[Any]:
        service = make_service(settings, FakeClock())
        call = Caller(service)
        some = await call(
            ApiKey.OFFSET_FETCH,
            1,
            {
                "group_id": "g",
                "topics": [{"name": "orders", "partition_indexes": [0, 1, 5]}],
            },
        )
        everything = await call(
            ApiKey.OFFSET_FETCH, 5, {"group_id": "g", "topics": None}
        )
        none = await call(ApiKey.OFFSET_FETCH, 3, {"group_id": "other", "topics": None})
        await service.close()
        return [some, everything, none]

    committed, too_big = run(first_life())
    assert partition_errors(committed) == {
        ("orders", 0): 0,
        ("orders", 1): 0,
        ("ghost", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    }
    assert partition_errors(too_big) == {
        ("orders", 0): ErrorCode.OFFSET_METADATA_TOO_LARGE
    }

    some, everything, none = run(second_life())
    assert fetched_offsets(some) == {
        ("orders", 0): 42,
        ("orders", 1): 7,
        ("orders", 5): -1,
    }
    assert {p["error_code"] for t in some["topics"] for p in t["partitions"]} == {0}
    assert fetched_offsets(everything) == {("orders", 0): 42, ("orders", 1): 7}
    assert everything["error_code"] == 0
    assert none["topics"] == [] and none["error_code"] == 0


def test_offset_commit_checks_membership_of_active_groups(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        call = await with_topic(make_service(settings, FakeClock()))
        member, generation = await join_stable(call)
        offsets = {("orders", 0): 9}
        return [
            await call(
                ApiKey.OFFSET_COMMIT, 5, commit_body("g", offsets, generation, member)
            ),
            await call(
                ApiKey.OFFSET_COMMIT,
                5,
                commit_body("g", offsets, generation - 1, member),
            ),
            await call(ApiKey.OFFSET_COMMIT, 2, commit_body("g", offsets)),
            await call(ApiKey.OFFSET_COMMIT, 2, commit_body("", offsets)),
        ]

    ok, stale, manual, no_group = run(scenario())
    assert partition_errors(ok) == {("orders", 0): 0}
    assert partition_errors(stale) == {("orders", 0): ErrorCode.ILLEGAL_GENERATION}
    assert partition_errors(manual) == {("orders", 0): ErrorCode.UNKNOWN_MEMBER_ID}
    assert partition_errors(no_group) == {("orders", 0): ErrorCode.INVALID_GROUP_ID}


def test_offset_delete_spares_topics_the_group_consumes(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        service = make_service(settings, FakeClock())
        call = await with_topic(service)
        await with_topic(service, "audit")
        member, generation = await join_stable(call)
        offsets = {("orders", 0): 1, ("audit", 0): 2}
        await call(
            ApiKey.OFFSET_COMMIT, 5, commit_body("g", offsets, generation, member)
        )

        def delete(group: str) -> Any:
            topics = [
                {"name": t, "partitions": [{"partition_index": 0}]}
                for t in ("orders", "audit", "ghost")
            ]
            return call(ApiKey.OFFSET_DELETE, 0, {"group_id": group, "topics": topics})

        deleted = await delete("g")
        fetched = await call(ApiKey.OFFSET_FETCH, 5, {"group_id": "g", "topics": None})
        return [deleted, fetched, await delete("nobody")]

    deleted, fetched, nobody = run(scenario())
    assert deleted["error_code"] == 0
    assert partition_errors(deleted) == {
        ("orders", 0): ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC,
        ("audit", 0): 0,
        ("ghost", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    }
    assert fetched_offsets(fetched) == {("orders", 0): 1}
    assert nobody["error_code"] == ErrorCode.GROUP_ID_NOT_FOUND
