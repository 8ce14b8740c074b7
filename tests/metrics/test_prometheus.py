"""The Prometheus collector: families, values and le buckets, read from a
broker's shared memory that the test writes as the other processes would."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from broker.layout import (
    FIRST_NET_SLOT,
    REQUEST_APIS,
    WRITER_SLOT,
    error_code_counter,
)
from metrics.prometheus import (
    FAMILIES,
    LATENCY_UPPERS_US,
    RingbusExposition,
    exported_name,
    integer_text,
    label_text,
    le_buckets,
    number,
)
from metrics.reader import HistogramState
from shm.counters import BUCKETS, buckets_of
from tests.metrics.support import FakeBroker

NET0, NET1 = FIRST_NET_SLOT, FIRST_NET_SLOT + 1


def scrape(
    broker: FakeBroker, exposition: RingbusExposition | None = None
) -> dict[str, list[Sample]]:
    """Render /metrics, parse it back, and return samples by family name."""
    exposition = exposition or RingbusExposition(broker.reader, broker.group_snapshot)
    text = exposition.render().decode()
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


# -- the text itself: what prometheus_client would write -----------------------


class _Parsed:
    """A collector that yields families parsed from a text."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def rewritten(text: bytes) -> bytes:
    """``text`` parsed by prometheus_client and written back by it."""
    families = list(text_string_to_metric_families(text.decode()))
    return generate_latest(_Parsed(families))  # type: ignore[arg-type]


def loaded(broker: FakeBroker) -> None:
    """Every kind of value the text has: large offsets (exponent form),
    integers beyond 2**53, floats, label values that need escaping, a
    committed offset of a deleted topic, histograms with and without labels."""
    broker.start_processes()
    committed: dict[tuple[str, int], int] = {("gone", 0): 3}
    for topic in range(3):
        for partition, index in enumerate(broker.create_topic(f"t-{topic}", 4)):
            broker.set_partition(
                index,
                log_start_offset=partition,
                log_end_offset=12_345_678 * partition + topic,
                high_watermark=12_345_000 * partition + topic,
                size_bytes=(1 << 30) * topic + 999_999,
            )
            if partition != 2:
                committed[(f"t-{topic}", partition)] = 12_000_000 * partition
    broker.set_group('odd"group\\name\nline', committed, state="Empty", members=2)
    broker.set_group("plain", {("t-1", 3): 5})
    broker.add(WRITER_SLOT, "writer_bytes", (1 << 60) + 12_345)
    broker.add(NET0, "produce_records", 1_000_000)
    broker.add(NET1, "errors_code_3", 2)
    broker.observe(NET0, "request_latency_us", list(range(100, 90_000, 97)))
    broker.observe(NET1, "request_latency_us_fetch", [50, 10**9])
    broker.observe(WRITER_SLOT, "writer_writev_bytes", [1, 2, 3, 10**6])
    broker.probe.set(broker.supervisor_pid, 1_234_567.891, 1 << 33)


def test_exposition_is_the_text_prometheus_client_writes_when_loaded(
    broker: FakeBroker,
) -> None:
    loaded(broker)
    exposition = RingbusExposition(broker.reader, broker.group_snapshot)

    first = exposition.render()
    second = exposition.render()  # from the label caches

    assert rewritten(first) == first
    assert rewritten(second) == second
    assert b'group="odd\\"group\\\\name\\nline"' in first
    assert b"ringbus_writer_bytes_total 1.1529215046068593e+18\n" in first
    assert (
        b'ringbus_partition_log_end_offset{partition="1",topic="t-2"} 1.234568e+07'
        in first
    )


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.sampled_from([0, 999_999, 1_000_000, 1_000_001, (1 << 53) - 1, 1 << 53])
)
def test_integer_text_matches_float_to_go_string(value: int) -> None:
    assert integer_text(value) == floatToGoString(value)
    assert number(value) == floatToGoString(value)
    assert number(np.int64(max(min(value, 2**63 - 1), -(2**63)))) == floatToGoString(
        max(min(value, 2**63 - 1), -(2**63))
    )


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_number_of_a_float_matches_float_to_go_string(value: float) -> None:
    assert number(value) == floatToGoString(value)


def test_label_text_sorts_names_and_escapes_values() -> None:
    text = label_text(("topic", "group"), ('a"b', "c\\d\ne"))

    assert text == '{group="c\\\\d\\ne",topic="a\\"b"}'
    assert label_text((), ()) == ""


def test_exposition_follows_new_topics_and_groups_when_label_text_is_cached(
    broker: FakeBroker,
) -> None:
    (index,) = broker.create_topic("first", 1)
    broker.set_partition(index, log_end_offset=7, high_watermark=7)
    broker.set_group("g", {("first", 0): 2})
    exposition = RingbusExposition(broker.reader, broker.group_snapshot)
    scrape(broker, exposition)

    (added,) = broker.create_topic("second", 1)
    broker.set_partition(added, log_end_offset=9, high_watermark=9)
    broker.set_group("g", {("first", 0): 2, ("second", 0): 4})
    broker.set_group("h", {("second", 0): 9})
    families = scrape(broker, exposition)

    lag = families["ringbus_consumer_group_lag_records"]
    name = "ringbus_consumer_group_lag_records"
    assert value(lag, name, group="g", topic="first", partition="0") == 5
    assert value(lag, name, group="g", topic="second", partition="0") == 5
    assert value(lag, name, group="h", topic="second", partition="0") == 0
    end = families["ringbus_partition_log_end_offset"]
    assert (
        value(end, "ringbus_partition_log_end_offset", topic="second", partition="0")
        == 9
    )

    broker.groups = type(broker.groups)(
        groups=tuple(g for g in broker.groups.groups if g.group_id == "h"),
        listed=1,
        refreshed_unix_ms=broker.groups.refreshed_unix_ms,
    )
    families = scrape(broker, exposition)

    assert {s.labels["group"] for s in families[name]} == {"h"}
