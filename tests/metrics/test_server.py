"""The HTTP routes: JSON documents, errors, Prometheus text, the UI's files
and the live stream, served by aiohttp's test server on loopback."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from broker.layout import FIRST_NET_SLOT, METRICS_SLOT
from metrics.api import BadRequestError, MetricsApi, parse_seconds
from metrics.prometheus import RingbusCollector, registry_for
from metrics.sampler import Sampler
from metrics.server import MAX_STREAMS, STATIC_DIR, MetricsServer
from tests.metrics.support import FakeBroker

Check = Callable[[TestClient, MetricsServer], Awaitable[None]]


def serve(broker: FakeBroker, check: Check) -> None:
    """Run ``check`` against a server for ``broker`` on 127.0.0.1."""
    own = broker.memory.counters.slot(METRICS_SLOT)
    sampler = Sampler(broker.reader, broker.group_snapshot, own, capacity=900)
    api = MetricsApi(broker.reader, sampler, broker.group_snapshot, broker.settings)
    collector = RingbusCollector(broker.reader, broker.group_snapshot)
    server = MetricsServer(api, registry_for(collector), own)

    async def main() -> None:
        client = TestClient(TestServer(server.app, host="127.0.0.1"))
        await client.start_server()
        try:
            async with asyncio.timeout(30):
                await check(client, server)
        finally:
            await server.stop()
            await client.close()

    asyncio.run(main())


async def get_json(client: TestClient, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "seconds='abc' is not a whole number"),
        ("0", "seconds=0 is outside 1..900"),
        ("901", "seconds=901 is outside 1..900"),
        ("1.5", "is not a whole number"),
    ],
)
def test_parse_seconds_refuses_bad_values_with_the_rule(
    text: str, message: str
) -> None:
    with pytest.raises(BadRequestError, match=re.escape(message)):
        parse_seconds(text)


def test_parse_seconds_defaults_to_five_minutes() -> None:
    assert parse_seconds(None) == 300
    assert parse_seconds("900") == 900


def test_server_answers_topics_with_partition_offsets(broker: FakeBroker) -> None:
    indexes = broker.create_topic("orders", 2)
    broker.set_partition(
        indexes[0],
        log_start_offset=3,
        log_end_offset=50,
        high_watermark=40,
        size_bytes=777,
    )

    async def check(client: TestClient, _: MetricsServer) -> None:
        document = await get_json(client, "/api/v1/topics")
        (topic,) = document["topics"]
        assert topic["name"] == "orders"
        assert topic["partition_count"] == 2
        assert topic["records"] == 37
        assert topic["size_bytes"] == 777
        assert topic["partitions"][0] == {
            "partition": 0,
            "index": indexes[0],
            "log_start_offset": 3,
            "log_end_offset": 50,
            "high_watermark": 40,
            "size_bytes": 777,
            "state": "online",
        }
        one = await get_json(client, "/api/v1/topics/orders")
        assert one["name"] == "orders"
        missing = await get_json(client, "/api/v1/topics/nope", status=404)
        assert missing == {"error": "topic 'nope' does not exist"}

    serve(broker, check)


def test_server_answers_groups_with_lag_per_partition(broker: FakeBroker) -> None:
    (index,) = broker.create_topic("events", 1)
    broker.set_partition(index, log_end_offset=90, high_watermark=90)
    broker.set_group("readers", {("events", 0): 30}, members=2)

    async def check(client: TestClient, _: MetricsServer) -> None:
        document = await get_json(client, "/api/v1/groups")
        (group,) = document["groups"]
        assert group["group_id"] == "readers"
        assert group["state"] == "Stable"
        assert group["lag"] == 60
        assert len(group["members"]) == 2
        assert group["partitions"] == [
            {
                "topic": "events",
                "partition": 0,
                "committed_offset": 30,
                "high_watermark": 90,
                "lag": 60,
            }
        ]

    serve(broker, check)


def test_server_answers_broker_and_processes(broker: FakeBroker) -> None:
    pids = broker.start_processes()
    broker.add(FIRST_NET_SLOT, "produce_records", 12)

    async def check(client: TestClient, _: MetricsServer) -> None:
        document = await get_json(client, "/api/v1/broker")
        assert document["totals"]["produce_records"] == 12
        assert document["net_procs"] == 2
        assert document["processes_running"] == len(pids)
        processes = (await get_json(client, "/api/v1/processes"))["processes"]
        by_name = {p["name"]: p for p in processes}
        assert by_name["net-0"]["pid"] == pids["net-0"]
        assert by_name["net-0"]["counters"] == {"produce_records": 12}
        assert by_name["writer"]["resident_bytes"] == 21 << 20

    serve(broker, check)


def test_server_refuses_a_bad_timeseries_window(broker: FakeBroker) -> None:
    async def check(client: TestClient, _: MetricsServer) -> None:
        error = await get_json(client, "/api/v1/timeseries?seconds=5000", status=400)
        assert "outside 1..900" in error["error"]
        unknown = await get_json(client, "/api/v1/nothing", status=404)
        assert "error" in unknown

    serve(broker, check)


def test_server_answers_the_timeseries_window(broker: FakeBroker) -> None:
    async def check(client: TestClient, server: MetricsServer) -> None:
        sampler = server.api.sampler
        for second in range(5):
            broker.add(FIRST_NET_SLOT, "produce_records", 100)
            sampler.sample(unix_s=1000.0 + second, monotonic=50.0 + second)
        document = await get_json(client, "/api/v1/timeseries?seconds=3")
        assert document["interval_s"] == 1
        assert document["time"] == [1002.0, 1003.0, 1004.0]
        assert document["series"]["records_in_per_s"] == [100.0, 100.0, 100.0]
        assert set(document["series"]["cpu_percent"]) == {
            "supervisor",
            "writer",
            "control",
            "metrics",
            "net-0",
            "net-1",
        }

    serve(broker, check)


def test_server_renders_prometheus_text(broker: FakeBroker) -> None:
    broker.add(FIRST_NET_SLOT, "produce_bytes", 4321)

    async def check(client: TestClient, _: MetricsServer) -> None:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
        assert "ringbus_produce_bytes_total 4321.0" in text

    serve(broker, check)


def test_server_serves_the_ui_without_outside_resources(broker: FakeBroker) -> None:
    async def check(client: TestClient, _: MetricsServer) -> None:
        page = await client.get("/")
        assert page.status == 200
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            response = await client.get(asset)
            assert response.status == 200, asset

    serve(broker, check)
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} refers to another site"


def test_server_streams_one_event_per_sample(broker: FakeBroker) -> None:
    broker.create_topic("live", 1)

    async def check(client: TestClient, server: MetricsServer) -> None:
        sampler = server.api.sampler
        sampler.sample(unix_s=1000.0, monotonic=50.0)
        sampler.sample(unix_s=1001.0, monotonic=51.0)
        response = await client.get("/api/v1/stream")
        assert response.status == 200
        assert response.content_type == "text/event-stream"

        async def next_event() -> dict[str, Any]:
            data = None
            while True:
                line = (await response.content.readline()).decode()
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "\n" and data is not None:
                    return data

        first = await next_event()
        assert first["point"]["time"] == 1001.0
        assert [t["name"] for t in first["topics"]] == ["live"]
        assert server.streams == 1

        broker.add(FIRST_NET_SLOT, "produce_records", 30)
        sampler.sample(unix_s=1002.0, monotonic=52.0)
        server.publish()
        second = await next_event()
        assert second["point"]["time"] == 1002.0
        assert second["point"]["records_in_per_s"] == 30.0
        response.close()

    serve(broker, check)


def test_server_refuses_streams_beyond_the_limit(broker: FakeBroker) -> None:
    async def check(client: TestClient, server: MetricsServer) -> None:
        server.streams = MAX_STREAMS
        error = await get_json(client, "/api/v1/stream", status=503)
        assert "too many stream listeners" in error["error"]
        server.streams = 0

    serve(broker, check)


def test_server_counts_its_requests_in_the_metrics_slot(broker: FakeBroker) -> None:
    async def check(client: TestClient, _: MetricsServer) -> None:
        for _request in range(3):
            await get_json(client, "/api/v1/broker")

    serve(broker, check)
    counters = broker.memory.counters
    column = counters.counter_id("metrics_http_requests")
    assert counters.counters[METRICS_SLOT, column] == 3
