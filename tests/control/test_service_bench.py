"""Benchmarks of the control process's busiest requests: OffsetCommit
(10 partitions, fsynced before the answer) one at a time and 64 at once
(group commit: one fsync for all that arrive together), and Heartbeat.

Disabled by default (``--benchmark-disable`` in addopts: each runs once as
a plain test). Measure with:

    .venv/bin/python -m pytest tests/control/test_service_bench.py \
        --benchmark-enable --benchmark-columns=min,median,mean,ops

The one-at-a-time and 64-at-once figures come from the same run, so their
ratio shows what group commit buys on this disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from broker.control.service import ControlService
from broker.settings import Settings
from net.kafka.codec import encode_request
from net.kafka.schema import ApiKey
from tests.control.support import FakeClock, make_service

PARTITIONS = 10
CONCURRENT = 64


def commit_frame(correlation_id: int) -> bytes:
    body = {
        "group_id": "bench",
        "generation_id_or_member_epoch": -1,
        "member_id": "",
        "topics": [
            {
                "name": "orders",
                "partitions": [
                    {"partition_index": p, "committed_offset": correlation_id}
                    for p in range(PARTITIONS)
                ],
            }
        ],
    }
    return encode_request(ApiKey.OFFSET_COMMIT, 7, correlation_id, "bench", body)


def prepared(settings: Settings) -> tuple[asyncio.AbstractEventLoop, ControlService]:
    loop = uvloop.new_event_loop()
    service = make_service(settings, FakeClock())
    topic = {"name": "orders", "num_partitions": PARTITIONS, "replication_factor": 1}
    create = encode_request(ApiKey.CREATE_TOPICS, 4, 1, "bench", {"topics": [topic]})
    assert loop.run_until_complete(service.handle(create)) is not None
    return loop, service


def bench(
    benchmark: BenchmarkFixture,
    settings: Settings,
    make: Callable[[ControlService], Coroutine[Any, Any, None]],
) -> None:
    loop, service = prepared(settings)
    try:
        benchmark(lambda: loop.run_until_complete(make(service)))
    finally:
        loop.run_until_complete(service.close())
        loop.close()


def test_offset_commit_one_at_a_time(
    benchmark: BenchmarkFixture, settings: Settings
) -> None:
    frame = commit_frame(1)

    async def one(service: ControlService) -> None:
        assert await service.handle(frame) is not None

    bench(benchmark, settings, one)


def test_offset_commit_64_concurrent(
    benchmark: BenchmarkFixture, settings: Settings
) -> None:
    frames = [commit_frame(n) for n in range(CONCURRENT)]

    async def many(service: ControlService) -> None:
        responses = await asyncio.gather(*(service.handle(f) for f in frames))
        assert all(r is not None for r in responses)

    bench(benchmark, settings, many)


def test_heartbeat_of_stable_member(
    benchmark: BenchmarkFixture, settings: Settings
) -> None:
    loop, service = prepared(settings)
    join = {
        "group_id": "g",
        "session_timeout_ms": 10_000,
        "rebalance_timeout_ms": 10_000,
        "member_id": "",
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
    }
    joined = loop.run_until_complete(
        service.handle(encode_request(ApiKey.JOIN_GROUP, 2, 1, "bench", join))
    )
    assert joined is not None
    result = service.groups.describe("g")
    assert result is not None
    heartbeat = encode_request(
        ApiKey.HEARTBEAT,
        3,
        2,
        "bench",
        {"group_id": "g", "generation_id": 1, "member_id": result.members[0].member_id},
    )

    async def beat() -> None:
        assert await service.handle(heartbeat) is not None

    try:
        benchmark(lambda: loop.run_until_complete(beat()))
    finally:
        loop.run_until_complete(service.close())
        loop.close()
