"""The request entry point: what it refuses, how it fails, how it batches
fsyncs and drives group timers."""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
import time
from typing import Any

import pytest

from broker.control import offsets as offsets_module
from broker.control.service import ControlService
from broker.settings import Settings
from net.kafka.codec import encode_request
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.control.support import Caller, FakeClock, make_service, run


def offsets_commit(offset: int) -> dict[str, Any]:
    return {
        "group_id": "g",
        "generation_id_or_member_epoch": -1,
        "member_id": "",
        "topics": [
            {
                "name": "orders",
                "partitions": [{"partition_index": 0, "committed_offset": offset}],
            }
        ],
    }


async def with_orders(service: ControlService) -> Caller:
    call = Caller(service)
    topic = {"name": "orders", "num_partitions": 1, "replication_factor": 1}
    await call(ApiKey.CREATE_TOPICS, 4, {"topics": [topic]})
    return call


def test_handle_gives_no_response_to_frames_it_cannot_serve(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    produce = encode_request(ApiKey.PRODUCE, 8, 1, "c", {"acks": 1, "topic_data": []})
    old_commit = encode_request(ApiKey.OFFSET_COMMIT, 0, 2, "c", {"group_id": "g"})
    heartbeat = encode_request(ApiKey.HEARTBEAT, 0, 3, "c", {"group_id": "g"})
    frames = [
        b"",
        struct.pack(">i", 50) + b"short",
        heartbeat + b"\x00",  # one byte more than the size prefix says
        struct.pack(">i", 8) + struct.pack(">hhih", 99, 0, 1, -1),  # unknown api
        produce,
        old_commit,
    ]

    async def scenario() -> list[bytes | None]:
        service = make_service(settings, FakeClock())
        return [await service.handle(frame) for frame in frames]

    caplog.set_level(logging.WARNING, logger="broker.control.service")
    assert run(scenario()) == [None] * len(frames)
    events = [r.getMessage() for r in caplog.records]
    assert events.count("control.request_unsupported") == 2
    assert "control.request_invalid" in events


def test_handler_fault_is_answered_with_unknown_server_error(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> dict[str, Any]:
        service = make_service(settings, FakeClock())

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(service.metadata, "create_topic", broken)
        topics = [
            {"name": name, "num_partitions": 1, "replication_factor": 1}
            for name in ("a", "b")
        ]
        response = await Caller(service)(ApiKey.CREATE_TOPICS, 3, {"topics": topics})
        assert service.statistics().handler_failures == 1
        return response

    caplog.set_level(logging.ERROR, logger="broker.control.service")
    response = run(scenario())
    assert [t["error_code"] for t in response["topics"]] == [-1, -1]
    failed = [r for r in caplog.records if r.getMessage() == "control.handler_failed"]
    assert failed and failed[0].exc_info is not None
    assert "disk on fire" in caplog.text


def test_concurrent_commits_share_one_fsync(settings: Settings) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
        service = make_service(settings, FakeClock())
        call = await with_orders(service)
        before = service.syncer.batches
        responses = await asyncio.gather(
            *(call(ApiKey.OFFSET_COMMIT, 2, offsets_commit(n)) for n in range(20))
        )
        batches = service.syncer.batches - before
        fetched = await call(
            ApiKey.OFFSET_FETCH,
            1,
            {"group_id": "g", "topics": [{"name": "orders", "partition_indexes": [0]}]},
        )
        await service.close()
        return list(responses), batches, fetched

    responses, batches, fetched = run(scenario())
    errors = {
        p["error_code"] for r in responses for t in r["topics"] for p in t["partitions"]
    }
    assert errors == {0}
    # All twenty records were written before the first fsync started.
    assert batches == 1
    assert fetched["topics"][0]["partitions"][0]["committed_offset"] == 19


def test_failed_fsync_fails_commit_and_asks_for_restart(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fatal: list[Exception] = []

    async def scenario() -> list[dict[str, Any]]:
        service = make_service(settings, FakeClock())
        service.on_fatal = fatal.append
        call = await with_orders(service)

        def broken(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(offsets_module.os, "fsync", broken)
        first = await call(ApiKey.OFFSET_COMMIT, 2, offsets_commit(1))
        second = await call(ApiKey.OFFSET_COMMIT, 2, offsets_commit(2))
        monkeypatch.undo()
        return [first, second]

    first, second = run(scenario())
    for response in (first, second):
        code = response["topics"][0]["partitions"][0]["error_code"]
        assert code == ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert len(fatal) == 1 and "fsync failed" in str(fatal[0])


def test_session_expiry_runs_on_the_loop_timer(settings: Settings) -> None:
    async def scenario() -> tuple[int, int, float]:
        service = make_service(settings, min_session_timeout_ms=1)
        call = Caller(service)
        body = {
            "group_id": "g",
            "session_timeout_ms": 150,
            "rebalance_timeout_ms": 150,
            "member_id": "",
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b""}],
        }
        joined = await call(ApiKey.JOIN_GROUP, 1, body)
        started = time.monotonic()
        heartbeat = {
            "group_id": "g",
            "generation_id": joined["generation_id"],
            "member_id": joined["member_id"],
        }
        first = (await call(ApiKey.HEARTBEAT, 1, heartbeat))["error_code"]

        # Nobody calls tick: the service's own timer must expire the member.
        while service.groups.statistics().members and time.monotonic() - started < 5:
            await asyncio.sleep(0.02)
        last = (await call(ApiKey.HEARTBEAT, 1, heartbeat))["error_code"]
        await service.close()
        return first, last, time.monotonic() - started

    first, last, elapsed = run(scenario())
    assert first == ErrorCode.NONE
    assert last == ErrorCode.UNKNOWN_MEMBER_ID
    assert elapsed < 5


def test_statistics_count_requests(settings: Settings) -> None:
    async def scenario() -> ControlService:
        service = make_service(settings, FakeClock())
        call = await with_orders(service)
        await call(ApiKey.OFFSET_COMMIT, 2, offsets_commit(5))
        await service.handle(b"junk")
        await service.close()
        return service

    statistics = run(scenario()).statistics()
    assert statistics.requests == 2
    assert statistics.rejected_requests == 1
    assert statistics.offsets.groups == 1 and statistics.offsets.partitions == 1
    assert statistics.fsync_batches >= 1


def test_metadata_version_is_published_after_each_change(settings: Settings) -> None:
    published: list[int] = []

    async def scenario() -> None:
        service = make_service(settings, FakeClock())
        service.on_metadata_version = published.append
        service.publish_metadata_version()
        call = await with_orders(service)
        await call(ApiKey.OFFSET_COMMIT, 2, offsets_commit(1))  # no metadata change
        await call(ApiKey.DELETE_TOPICS, 1, {"topic_names": ["orders"]})
        await service.close()

    run(scenario())
    assert published == [0, 1, 2]
