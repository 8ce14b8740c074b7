"""The metrics process of a real broker: /metrics, the JSON API and the live
stream, checked against a known load produced and consumed with
confluent-kafka over loopback.

One broker serves the module; each test uses its own topic and group and
compares differences of counters, so the tests do not see each other.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from metrics.prometheus import FAMILIES, exported_name
from tests.conftest import BrokerProcess
from tests.metrics.live import (
    create_topic,
    get_json,
    produce,
    sample_value,
    scrape,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PROCESSES = {"supervisor", "writer", "control", "metrics", "net-0", "net-1"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def totals(broker: BrokerProcess, *names: str) -> dict[str, float]:
    families = scrape(broker)
    found = {name: sample_value(families, name) for name in names}
    assert all(value is not None for value in found.values()), found
    return {name: float(value or 0) for name, value in found.items()}


def segment_bytes(broker: BrokerProcess, topic: str, partition: int) -> int:
    directory = broker.data_dir / f"{topic}-{partition}"
    return sum(path.stat().st_size for path in directory.glob("*.log"))


def group_consumer(broker: BrokerProcess, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "fetch.queue.backoff.ms": 10,
        }
    )


def test_metrics_parses_and_has_every_family(module_broker: BrokerProcess) -> None:
    families = scrape(module_broker)

    expected = {exported_name(family) for family in FAMILIES}
    assert expected <= families.keys(), expected - families.keys()
    cpu = families["ringbus_process_cpu_seconds_total"]
    assert {s.labels["process"] for s in cpu} == PROCESSES
    assert all(s.value > 0 for s in cpu)
    memory = families["ringbus_process_resident_memory_bytes"]
    assert all(s.value > 10 << 20 for s in memory)
    up = families["ringbus_process_up"]
    assert {s.labels["process"]: s.value for s in up} == dict.fromkeys(PROCESSES, 1)
    restarts = families["ringbus_process_restarts_total"]
    assert all(s.value == 0 for s in restarts)
    rings = families["ringbus_ring_capacity_bytes"]
    assert {s.labels["ring"] for s in rings} == {"produce-0", "produce-1"}


def test_metrics_counts_exactly_the_records_and_bytes_produced(
    module_broker: BrokerProcess,
) -> None:
    topic = unique("counted")
    create_topic(module_broker, topic, 1)
    names = (
        "ringbus_produce_records_total",
        "ringbus_produce_bytes_total",
        "ringbus_writer_bytes_total",
        "ringbus_requests_total",
    )
    before = totals(module_broker, *names)
    records = 2500

    produce(module_broker, topic, records, size=120)

    # Counters are read at scrape time: the acknowledged load is in them.
    after = totals(module_broker, *names)
    on_disk = segment_bytes(module_broker, topic, 0)
    produced = (
        after["ringbus_produce_bytes_total"] - before["ringbus_produce_bytes_total"]
    )
    assert after["ringbus_produce_records_total"] - before[names[0]] == records
    # Three independent accounts of the same bytes: the net processes' count
    # of batch bytes received, the writer's count of bytes appended, and the
    # segment files.
    assert produced == on_disk > records * 120
    assert after["ringbus_writer_bytes_total"] - before[names[2]] == on_disk
    assert after["ringbus_requests_total"] > before["ringbus_requests_total"]

    families = scrape(module_broker)
    labels = {"topic": topic, "partition": "0"}
    assert (
        sample_value(families, "ringbus_partition_high_watermark", **labels) == records
    )
    assert (
        sample_value(families, "ringbus_partition_log_end_offset", **labels) == records
    )
    assert sample_value(families, "ringbus_partition_log_start_offset", **labels) == 0
    assert sample_value(families, "ringbus_partition_size_bytes", **labels) == on_disk


def test_metrics_counts_fetched_bytes_when_a_consumer_reads_everything(
    module_broker: BrokerProcess,
) -> None:
    topic = unique("fetched")
    create_topic(module_broker, topic, 1)
    produce(module_broker, topic, 800, size=200)
    on_disk = segment_bytes(module_broker, topic, 0)
    before = totals(module_broker, "ringbus_fetch_bytes_total")

    reader = group_consumer(module_broker, unique("fetch-reader"))
    reader.assign([TopicPartition(topic, 0, 0)])
    read = 0
    deadline = time.monotonic() + 60
    try:
        while read < 800 and time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is not None and message.error() is None:
                read += 1
    finally:
        reader.close()

    assert read == 800
    after = totals(module_broker, "ringbus_fetch_bytes_total")
    # Every byte was sent at least once (a fetch may resend a batch).
    assert (
        after["ringbus_fetch_bytes_total"] - before["ringbus_fetch_bytes_total"]
        >= on_disk
    )


def test_json_api_matches_topics_groups_and_lag_after_a_known_workload(
    module_broker: BrokerProcess,
) -> None:
    topic, group = unique("api"), unique("api-group")
    create_topic(module_broker, topic, 3)
    counts = {0: 10, 1: 20, 2: 30}
    for partition, count in counts.items():
        produce(module_broker, topic, count, partition=partition)
    committed = {0: 5, 1: 20, 2: 12}

    member = group_consumer(module_broker, group)
    member.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        while len(member.assignment()) < 3:
            assert time.monotonic() < deadline, "no assignment"
            member.poll(0.2)
        member.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in committed.items()],
            asynchronous=False,
        )

        def group_document() -> dict[str, Any] | None:
            groups = get_json(module_broker, "/api/v1/groups")["groups"]
            return next((g for g in groups if g["group_id"] == group), None)

        live = wait_for(
            group_document,
            lambda g: g is not None and g["state"] == "Stable" and g["partitions"],
            30,
            "group listed as Stable with offsets",
        )
    finally:
        member.close()

    assert live is not None
    assert live["member_count"] == 1
    assert live["members"][0]["client_id"]
    assert live["protocol_type"] == "consumer"
    assert {
        p["partition"]: (p["committed_offset"], p["high_watermark"], p["lag"])
        for p in live["partitions"]
    } == {p: (committed[p], counts[p], counts[p] - committed[p]) for p in counts}
    assert live["lag"] == sum(counts[p] - committed[p] for p in counts)

    # After the member leaves, the offsets and lag stay; the group is Empty.
    empty = wait_for(
        group_document,
        lambda g: g is not None and g["state"] == "Empty",
        30,
        "group Empty after the member left",
    )
    assert empty is not None
    assert empty["member_count"] == 0
    assert empty["lag"] == live["lag"]

    document = get_json(module_broker, f"/api/v1/topics/{topic}")
    assert document["partition_count"] == 3
    assert document["records"] == sum(counts.values())
    for entry in document["partitions"]:
        partition = entry["partition"]
        assert entry["high_watermark"] == counts[partition]
        assert entry["log_end_offset"] == counts[partition]
        assert entry["log_start_offset"] == 0
        assert entry["state"] == "online"
        assert entry["size_bytes"] == segment_bytes(module_broker, topic, partition)
    listed = get_json(module_broker, "/api/v1/topics")["topics"]
    assert topic in {t["name"] for t in listed}

    families = scrape(module_broker)
    for partition in counts:
        labels = {"group": group, "topic": topic, "partition": str(partition)}
        lag = sample_value(families, "ringbus_consumer_group_lag_records", **labels)
        assert lag == counts[partition] - committed[partition]


def test_json_api_lists_processes_and_the_broker(module_broker: BrokerProcess) -> None:
    processes = get_json(module_broker, "/api/v1/processes")["processes"]
    broker = get_json(module_broker, "/api/v1/broker")

    assert {p["name"] for p in processes} == PROCESSES
    assert all(p["running"] and p["resident_bytes"] > 0 for p in processes)
    assert {p["pid"] for p in processes if p["name"] == "supervisor"} == {
        module_broker.pid
    }
    assert broker["kafka_port"] == module_broker.kafka_port
    assert broker["processes_running"] == len(PROCESSES)
    assert broker["uptime_s"] > 0
    assert "metrics.serving address=127.0.0.1:" in module_broker.log_text()


def test_timeseries_integrates_back_to_the_records_produced(
    module_broker: BrokerProcess,
) -> None:
    topic = unique("series")
    create_topic(module_broker, topic, 1)
    time.sleep(2.5)  # a quiet second at the start of the window
    started = time.time()

    produce(module_broker, topic, 3000, size=50)
    time.sleep(2.5)  # the samples after the load

    document = get_json(module_broker, "/api/v1/timeseries?seconds=60")
    times = document["time"]
    rates = document["series"]["records_in_per_s"]
    assert len(times) == len(rates) >= 5
    assert all(
        b - a == pytest.approx(1.0, abs=0.5) for a, b in itertools.pairwise(times)
    )
    # Sum of rate x interval over the samples since the load began: the
    # other tests of this module produce nothing meanwhile.
    total = sum(
        rate * (t - previous)
        for (previous, t), rate in zip(
            itertools.pairwise(times), rates[1:], strict=True
        )
        if t > started and rate is not None
    )
    assert total == pytest.approx(3000, rel=0.01)
    cpu = document["series"]["cpu_percent"]
    assert set(cpu) == PROCESSES
    assert any(v for v in cpu["net-0"] + cpu["net-1"] if v)


def test_stream_sends_one_event_per_second(module_broker: BrokerProcess) -> None:
    url = f"http://127.0.0.1:{module_broker.http_port}/api/v1/stream"
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        deadline = time.monotonic() + 15
        while len(events) < 3 and time.monotonic() < deadline:
            line = response.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))

    assert len(events) == 3
    stamps = [event["point"]["time"] for event in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == 3
    assert {p["name"] for p in events[-1]["processes"]} == PROCESSES
    assert events[-1]["broker"]["processes_running"] == len(PROCESSES)
