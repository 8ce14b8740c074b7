"""The Prometheus collector: families, values and le buckets, read from a
broker's shared memory that the test writes as the other processes would."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from broker.layout import FIRST_NET_SLOT, REQUEST_APIS, WRITER_SLOT, error_code_counter
from metrics.prometheus import (
    FAMILIES,
    LATENCY_UPPERS_US,
    RingbusCollector,
    exported_name,
    le_buckets,
    registry_for,
)
from metrics.reader import HistogramState
from shm.counters import BUCKETS, buckets_of
from tests.metrics.support import FakeBroker

NET0, NET1 = FIRST_NET_SLOT, FIRST_NET_SLOT + 1


def scrape(broker: FakeBroker) -> dict[str, list[Sample]]:
    """Render /metrics, parse it back, and return samples by family name."""
    collector = RingbusCollector(broker.reader, broker.group_snapshot)
    text = generate_latest(registry_for(collector)).decode()
    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = list(family.samples)
    return families


def value(samples: Sequence[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


def state_of(values: list[int]) -> HistogramState:
    buckets = np.bincount(buckets_of(values), minlength=BUCKETS).astype(np.int64)
    return HistogramState(buckets, sum(values), len(values))


def test_collector_exports_every_declared_family_when_broker_is_idle(
    broker: FakeBroker,
) -> None:
    families = scrape(broker)

    assert set(families) == {exported_name(family) for family in FAMILIES}
    assert all(name.startswith("ringbus_") for name in families)


def test_collector_sums_counters_over_slots_when_processes_write_their_rows(
    broker: FakeBroker,
) -> None:
    broker.add(NET0, "produce_records", 700)
    broker.add(NET1, "produce_records", 300)
    broker.add(NET0, "produce_bytes", 65_536)
    broker.add(NET1, "fetch_bytes", 4096)
    broker.add(WRITER_SLOT, "writer_fsyncs", 9)

    families = scrape(broker)

    records = families["ringbus_produce_records_total"]
    assert value(records, "ringbus_produce_records_total") == 1000
    produced = families["ringbus_produce_bytes_total"]
    assert value(produced, "ringbus_produce_bytes_total") == 65_536
    fetched = families["ringbus_fetch_bytes_total"]
    assert value(fetched, "ringbus_fetch_bytes_total") == 4096
    fsyncs = families["ringbus_writer_fsyncs_total"]
    assert value(fsyncs, "ringbus_writer_fsyncs_total") == 9


def test_collector_exports_gauges_per_process_when_net_processes_set_levels(
    broker: FakeBroker,
) -> None:
    broker.start_processes()
    broker.set_gauge(NET0, "connections_active_gauge", 3)
    broker.set_gauge(NET1, "connections_active_gauge", 4)
    broker.set_gauge(NET1, "parked_fetches_gauge", 2)

    families = scrape(broker)

    active = families["ringbus_connections_active"]
    name = "ringbus_connections_active"
    assert value(active, name, process="net-0", role="net") == 3
    assert value(active, name, process="net-1", role="net") == 4
    assert sum(s.value for s in active) == 7
    parked = families["ringbus_parked_fetches"]
    assert value(parked, "ringbus_parked_fetches", process="net-1", role="net") == 2


def test_collector_exports_latency_histogram_in_seconds_when_observed(
    broker: FakeBroker,
) -> None:
    latencies_us = [40, 90, 150, 150, 900, 2_500, 70_000]
    broker.observe(NET0, "request_latency_us", latencies_us[:4])
    broker.observe(NET1, "request_latency_us", latencies_us[4:])

    samples = scrape(broker)["ringbus_request_latency_seconds"]

    name = "ringbus_request_latency_seconds"
    assert value(samples, name + "_count") == len(latencies_us)
    assert value(samples, name + "_sum") == pytest.approx(sum(latencies_us) / 1e6)
    assert value(samples, name + "_bucket", le="+Inf") == len(latencies_us)
    # 128 us and 1.024 ms are exported boundaries: exact counts below them.
    assert value(samples, name + "_bucket", le="0.000128") == 2
    assert value(samples, name + "_bucket", le="0.001024") == 5
    assert value(samples, name + "_bucket", le="0.065536") == 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1 << 41), max_size=60))
def test_le_buckets_count_exactly_the_values_below_each_bound(
    values: list[int],
) -> None:
    pairs = le_buckets(state_of(values), latency=True)

    assert pairs[-1] == ("+Inf", float(len(values)))
    for (le, count), upper in zip(pairs, LATENCY_UPPERS_US, strict=False):
        assert float(le) == upper / 1e6
        assert count == sum(1 for v in values if v < upper)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1 << 34), max_size=60))
def test_le_buckets_of_counts_include_the_bound_itself(values: list[int]) -> None:
    pairs = le_buckets(state_of(values), latency=False)

    counts = [count for _, count in pairs]
    assert counts == sorted(counts)
    for le, count in pairs[:-1]:
        assert count == sum(1 for v in values if v <= float(le))


def test_collector_exports_requests_by_api_and_errors_by_code(
    broker: FakeBroker,
) -> None:
    broker.add(NET0, "requests_produce", 5)
    broker.add(NET1, "requests_fetch", 7)
    broker.add(NET1, "request_errors_fetch", 2)
    broker.add(NET0, "errors_code_3", 2)
    broker.add(NET0, "errors_code_unknown_server_error", 1)
    broker.observe(NET0, "request_latency_us_produce", [300, 400, 500, 600, 700])

    families = scrape(broker)

    requests = families["ringbus_api_requests_total"]
    assert value(requests, "ringbus_api_requests_total", api="produce") == 5
    assert value(requests, "ringbus_api_requests_total", api="fetch") == 7
    assert value(requests, "ringbus_api_requests_total", api="metadata") == 0
    errors = families["ringbus_api_request_errors_total"]
    assert value(errors, "ringbus_api_request_errors_total", api="fetch") == 2
    codes = families["ringbus_response_errors_total"]
    assert value(codes, "ringbus_response_errors_total", error_code="3") == 2
    assert value(codes, "ringbus_response_errors_total", error_code="-1") == 1
    assert len(codes) == 2  # codes never seen are not exported
    latency = families["ringbus_api_request_latency_seconds"]
    name = "ringbus_api_request_latency_seconds"
    assert value(latency, name + "_count", api="produce") == 5
    assert {s.labels.get("api") for s in latency} == {"produce"}


def test_collector_exports_process_figures_from_psutil_and_supervisor(
    broker: FakeBroker,
) -> None:
    pids = broker.start_processes()
    broker.memory.register_process(NET1, "net", 1, 9999)  # a restart
    broker.probe.set(9999, 2.25, 64 << 20)

    families = scrape(broker)

    cpu = families["ringbus_process_cpu_seconds_total"]
    name = "ringbus_process_cpu_seconds_total"
    assert value(cpu, name, process="net-1", role="net") == 2.25
    assert value(cpu, name, process="writer", role="writer") == 0.5
    assert value(cpu, name, process="supervisor", role="supervisor") == 1.0
    memory = families["ringbus_process_resident_memory_bytes"]
    name = "ringbus_process_resident_memory_bytes"
    assert value(memory, name, process="net-1", role="net") == 64 << 20
    restarts = families["ringbus_process_restarts_total"]
    name = "ringbus_process_restarts_total"
    assert value(restarts, name, process="net-1", role="net") == 1
    assert value(restarts, name, process="net-0", role="net") == 0
    up = families["ringbus_process_up"]
    assert sum(s.value for s in up) == len(pids)


def test_collector_reports_a_process_down_when_its_pid_is_gone(
    broker: FakeBroker,
) -> None:
    pids = broker.start_processes()
    del broker.probe.by_pid[pids["control"]]

    up = scrape(broker)["ringbus_process_up"]

    assert value(up, "ringbus_process_up", process="control", role="control") == 0
    assert value(up, "ringbus_process_up", process="writer", role="writer") == 1


def test_collector_exports_partitions_and_lag_when_a_group_committed(
    broker: FakeBroker,
) -> None:
    indexes = broker.create_topic("orders", 2)
    broker.set_partition(
        indexes[0],
        log_start_offset=10,
        log_end_offset=120,
        high_watermark=100,
        size_bytes=8192,
    )
    broker.set_partition(indexes[1], log_end_offset=5, high_watermark=5, size_bytes=99)
    broker.set_group("billing", {("orders", 0): 60, ("orders", 1): 5, ("gone", 0): 1})

    families = scrape(broker)

    def one(name: str, **labels: str) -> float:
        return value(families[name], name, **labels)

    p0 = {"topic": "orders", "partition": "0"}
    assert one("ringbus_partition_log_start_offset", **p0) == 10
    assert one("ringbus_partition_log_end_offset", **p0) == 120
    assert one("ringbus_partition_high_watermark", **p0) == 100
    assert one("ringbus_partition_size_bytes", **p0) == 8192
    assert one("ringbus_partition_online", **p0) == 1
    assert one("ringbus_topics") == 1
    assert one("ringbus_partitions") == 2
    lag = "ringbus_consumer_group_lag_records"
    assert one(lag, group="billing", topic="orders", partition="0") == 40
    assert one(lag, group="billing", topic="orders", partition="1") == 0
    # A committed offset of a deleted topic has no partition to lag behind.
    assert len(families[lag]) == 2
    committed = "ringbus_consumer_group_committed_offset"
    assert one(committed, group="billing", topic="orders", partition="0") == 60
    assert one("ringbus_consumer_group_members", group="billing") == 1
    assert one("ringbus_consumer_group_state", group="billing", state="Stable") == 1


def test_collector_exports_ring_fill_when_a_sender_holds_bytes(
    broker: FakeBroker,
) -> None:
    memory = broker.memory
    ring = memory.produce_rings[1]
    sender = ring.sender(memory.writer_wake, memory.net_wakes[1])
    for _ in range(2):
        reservation = sender.reserve(256 * 1024)
        assert reservation is not None
    sender.publish()

    families = scrape(broker)

    labels = {"ring": "produce-1", "kind": "produce", "process": "net-1"}
    fill = families["ringbus_ring_fill_ratio"]
    assert value(fill, "ringbus_ring_fill_ratio", **labels) == 0.5
    used = families["ringbus_ring_used_bytes"]
    assert value(used, "ringbus_ring_used_bytes", **labels) == 512 * 1024
    descriptors = families["ringbus_ring_used_descriptors"]
    assert value(descriptors, "ringbus_ring_used_descriptors", **labels) == 2
    idle = {"ring": "produce-0", "kind": "produce", "process": "net-0"}
    assert value(fill, "ringbus_ring_fill_ratio", **idle) == 0


def test_request_apis_match_the_apis_the_broker_advertises() -> None:
    from net.kafka.errors import ErrorCode
    from net.kafka.schema import ApiKey
    from net.kafka.versions import ADVERTISED

    assert {
        row.api_key: ApiKey(row.api_key).name.lower() for row in ADVERTISED
    } == REQUEST_APIS
    columns = {error_code_counter(code) for code in ErrorCode if code != 0}
    # Every error code the broker uses has a column of its own.
    assert len(columns) == len(ErrorCode) - 1
    assert "errors_code_other" not in columns
