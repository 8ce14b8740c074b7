"""The once-a-second sample: per-second rates, latency percentiles of the
last second, CPU per process, ring fill and lag, from a fake clock."""

from __future__ import annotations

import pytest

from broker.layout import FIRST_NET_SLOT, METRICS_SLOT, WRITER_SLOT
from metrics.sampler import Sampler, slot_names
from tests.metrics.support import FakeBroker

NET0 = FIRST_NET_SLOT


def sampler_for(broker: FakeBroker) -> Sampler:
    own = broker.memory.counters.slot(METRICS_SLOT)
    return Sampler(broker.reader, broker.group_snapshot, own, capacity=60)


def test_slot_names_follow_the_layout() -> None:
    assert slot_names(6) == (
        "supervisor",
        "writer",
        "control",
        "metrics",
        "net-0",
        "net-1",
    )


def test_sampler_appends_nothing_on_the_first_sample(broker: FakeBroker) -> None:
    sampler = sampler_for(broker)

    sampler.sample(unix_s=100.0, monotonic=10.0)

    assert len(sampler.series) == 0
    assert sampler.latest is not None


def test_sampler_divides_counter_differences_by_elapsed_time(
    broker: FakeBroker,
) -> None:
    sampler = sampler_for(broker)
    broker.add(NET0, "produce_records", 500)  # before the first sample: not a rate
    sampler.sample(unix_s=100.0, monotonic=10.0)

    broker.add(NET0, "produce_records", 3000)
    broker.add(NET0 + 1, "produce_records", 1000)
    broker.add(NET0, "produce_bytes", 1 << 20)
    broker.add(NET0, "fetch_bytes", 4096)
    broker.add(NET0, "requests", 10)
    sampler.sample(unix_s=102.0, monotonic=12.0)

    point = sampler.series.latest()
    assert point is not None
    assert point["time"] == 102.0
    assert point["records_in_per_s"] == 2000.0
    assert point["bytes_in_per_s"] == (1 << 20) / 2
    assert point["bytes_out_per_s"] == 2048.0
    assert point["requests_per_s"] == 5.0
    assert point["records_out_per_s"] == 0.0


def test_sampler_takes_latency_percentiles_of_the_last_second_only(
    broker: FakeBroker,
) -> None:
    sampler = sampler_for(broker)
    broker.observe(NET0, "request_latency_us", [50_000] * 100)  # an old slow second
    sampler.sample(unix_s=100.0, monotonic=10.0)

    broker.observe(NET0, "request_latency_us", [1000] * 98 + [20_000] * 2)
    sampler.sample(unix_s=101.0, monotonic=11.0)
    sampler.sample(unix_s=102.0, monotonic=12.0)

    window = sampler.series.window(60)
    p50, p99 = window["latency_p50_ms"][:, 0], window["latency_p99_ms"][:, 0]
    # Buckets are at most 12.5 % wide; percentiles read their top value.
    assert 1.0 <= p50[0] <= 1.125
    assert 20.0 <= p99[0] <= 22.5
    # A second without requests has no latency (NaN, null in JSON).
    assert p50[1] != p50[1]


def test_sampler_computes_cpu_percent_and_skips_restarted_processes(
    broker: FakeBroker,
) -> None:
    pids = broker.start_processes()
    sampler = sampler_for(broker)
    sampler.sample(unix_s=100.0, monotonic=10.0)

    broker.probe.set(pids["writer"], 0.5 + 1.0, 30 << 20)  # 1 s of CPU in 2 s
    broker.memory.register_process(NET0, "net", 0, 7777)  # restarted
    broker.probe.set(7777, 0.0, 10 << 20)
    sampler.sample(unix_s=102.0, monotonic=12.0)

    point = sampler.series.latest()
    assert point is not None
    cpu, rss = point["cpu_percent"], point["rss_bytes"]
    assert isinstance(cpu, dict) and isinstance(rss, dict)
    assert cpu["writer"] == 50.0
    assert cpu["control"] == 0.0
    assert cpu["net-0"] is None
    assert rss["writer"] == 30 << 20
    assert rss["net-0"] == 10 << 20


def test_sampler_records_ring_fill_and_total_lag(broker: FakeBroker) -> None:
    (index,) = broker.create_topic("events", 1)
    broker.set_partition(index, log_end_offset=500, high_watermark=500)
    broker.set_group("g1", {("events", 0): 200})
    broker.set_group("g2", {("events", 0): 450})
    memory = broker.memory
    sender = memory.produce_rings[0].sender(memory.writer_wake, memory.net_wakes[0])
    assert sender.reserve(1 << 18) is not None
    sender.publish()
    sampler = sampler_for(broker)

    sampler.sample(unix_s=100.0, monotonic=10.0)
    sampler.sample(unix_s=101.0, monotonic=11.0)

    point = sampler.series.latest()
    assert point is not None
    assert point["lag_records"] == 350.0
    assert point["ring_fill_percent"] == {"produce-0": 25.0, "produce-1": 0.0}


def test_sampler_counts_its_samples_in_its_own_slot(broker: FakeBroker) -> None:
    sampler = sampler_for(broker)

    for second in range(3):
        sampler.sample(unix_s=100.0 + second, monotonic=10.0 + second)

    counters = broker.memory.counters
    row = counters.counters[METRICS_SLOT]
    assert row[counters.counter_id("metrics_samples")] == 3
    assert counters.counters[WRITER_SLOT, counters.counter_id("metrics_samples")] == 0
    assert (
        int(
            counters.histograms[
                METRICS_SLOT, counters.histogram_id("metrics_sample_us"), 0
            ]
        )
        == 3
    )


@pytest.mark.parametrize("elapsed", [0.0, -1.0])
def test_sampler_appends_nothing_when_the_clock_did_not_advance(
    broker: FakeBroker, elapsed: float
) -> None:
    sampler = sampler_for(broker)
    sampler.sample(unix_s=100.0, monotonic=10.0)

    sampler.sample(unix_s=100.0, monotonic=10.0 + elapsed)

    assert len(sampler.series) == 0
