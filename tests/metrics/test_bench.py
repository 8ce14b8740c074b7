"""Benchmarks of the metrics process's periodic work on a broker with 1024
partitions in 16 topics and two groups committed on every partition: one
sample (the once-a-second read), one /metrics render (each scrape) and one
live stream event (once a second while a UI is open).

Disabled by default (``--benchmark-disable`` in addopts: each runs once as a
plain test). Measure with:

    .venv/bin/python -m pytest tests/metrics/test_bench.py \
        --benchmark-enable --benchmark-columns=min,median,mean,ops
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from broker.layout import FIRST_NET_SLOT, METRICS_SLOT
from metrics.api import MetricsApi
from metrics.prometheus import RingbusCollector, registry_for
from metrics.sampler import Sampler
from shm.region import unlink_stale
from tests.metrics.support import FakeBroker

TOPICS = 16
PARTITIONS = 1024


@pytest.fixture
def big_broker(tmp_path: Path) -> Iterator[FakeBroker]:
    prefix = f"rbt{secrets.token_hex(5)}_"
    fake = FakeBroker(tmp_path / "data", prefix, max_partitions=PARTITIONS)
    try:
        yield fake
    finally:
        fake.close()
        unlink_stale(prefix, include_live_owners=True)


def loaded(broker: FakeBroker) -> None:
    """Processes, partitions with offsets, traffic and two groups."""
    broker.start_processes()
    per_topic = PARTITIONS // TOPICS
    committed: dict[tuple[str, int], int] = {}
    for topic in range(TOPICS):
        name = f"topic-{topic}"
        for partition, index in enumerate(broker.create_topic(name, per_topic)):
            broker.set_partition(
                index, log_end_offset=1000, high_watermark=1000, size_bytes=1 << 20
            )
            committed[(name, partition)] = 500
    broker.set_group("a", committed)
    broker.set_group("b", committed)
    for slot in (FIRST_NET_SLOT, FIRST_NET_SLOT + 1):
        broker.add(slot, "produce_records", 1000)
        broker.observe(slot, "request_latency_us", list(range(100, 100_000, 97)))
        broker.observe(slot, "request_latency_us_produce", [500] * 100)


def test_bench_one_sample(big_broker: FakeBroker, benchmark: Any) -> None:
    broker = big_broker
    loaded(broker)
    own = broker.memory.counters.slot(METRICS_SLOT)
    sampler = Sampler(broker.reader, broker.group_snapshot, own)
    sampler.sample()

    benchmark(sampler.sample)

    assert len(sampler.series) >= 1


def test_bench_one_scrape(big_broker: FakeBroker, benchmark: Any) -> None:
    broker = big_broker
    loaded(broker)
    registry = registry_for(RingbusCollector(broker.reader, broker.group_snapshot))

    text = benchmark(generate_latest, registry)

    assert b"ringbus_consumer_group_lag_records" in text


def test_bench_one_stream_event(big_broker: FakeBroker, benchmark: Any) -> None:
    broker = big_broker
    loaded(broker)
    sampler = Sampler(broker.reader, broker.group_snapshot)
    api = MetricsApi(broker.reader, sampler, broker.group_snapshot, broker.settings)
    sampler.sample()
    sampler.sample()

    document = benchmark(api.stream_event)

    assert document is not None and document["topics_total"] == TOPICS
