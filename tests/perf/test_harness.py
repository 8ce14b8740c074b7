"""The harness's own logic: schedule, bounds, latency from intended time, histogram."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Sequence

import pytest

from perf.harness import (
    NANOS_PER_SECOND,
    Bounds,
    LatencyHistogram,
    ManualClock,
    RateSchedule,
    ThroughputSeries,
    gc_paused,
    make_value,
    parse_size,
    read_stamp,
    run_fixed_rate,
    stamp_value,
)

MS = 1_000_000


def test_rate_schedule_spaces_intended_times_by_the_interval() -> None:
    schedule = RateSchedule(1000.0, start_ns=5 * NANOS_PER_SECOND)

    times = [schedule.intended_ns(i) for i in range(5)]

    assert times[0] == 5 * NANOS_PER_SECOND
    assert [b - a for a, b in itertools.pairwise(times)] == [MS] * 4


@pytest.mark.parametrize("rate", [1.0, 3.0, 7.0, 333.3, 10_000.0, 1e6])
def test_rate_schedule_due_count_agrees_with_intended_times(rate: float) -> None:
    schedule = RateSchedule(rate, start_ns=123_456_789)

    for index in range(200):
        at = schedule.intended_ns(index)
        assert schedule.due_count(at) == index + 1
        assert schedule.due_count(at - 1) <= index
    assert schedule.due_count(schedule.start_ns - 1) == 0


@pytest.mark.parametrize("rate", [0.0, -5.0, float("nan"), float("inf")])
def test_rate_schedule_rejects_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_per_s must be a positive number"):
        RateSchedule(rate, start_ns=0)


def test_run_fixed_rate_sends_each_record_at_its_intended_time_when_on_pace() -> None:
    clock = ManualClock()
    calls: list[tuple[int, list[int]]] = []

    def send(intended: Sequence[int]) -> None:
        calls.append((clock.now_ns(), list(intended)))

    report = run_fixed_rate(500.0, Bounds(10, 60.0), send, clock=clock)

    assert report.records == 10
    assert report.stop_reason == "count"
    assert report.max_lag_ns == 0
    # One record per call, each sent exactly when it was due, 2 ms apart.
    assert [len(batch) for _, batch in calls] == [1] * 10
    assert [at for at, _ in calls] == [batch[0] for _, batch in calls]
    starts = [batch[0] for _, batch in calls]
    assert {b - a for a, b in itertools.pairwise(starts)} == {2 * MS}


def test_run_fixed_rate_measures_from_intended_time_when_sender_falls_behind() -> None:
    clock = ManualClock()
    histogram = LatencyHistogram()
    latencies: list[int] = []

    def send(intended: Sequence[int]) -> None:
        # Every send takes 3 ms while records are due every 1 ms.
        clock.advance(3 * MS)
        latencies.extend(clock.now_ns() - t for t in intended)

    report = run_fixed_rate(
        1000.0, Bounds(20, 60.0), send, clock=clock, max_batch=1, histogram=histogram
    )

    # Record i is intended at i ms and done at 3(i+1) ms: latency 2i+3 ms,
    # growing with the backlog - not a flat 3 ms service time.
    assert report.records == 20
    assert latencies == [(2 * i + 3) * MS for i in range(20)]
    assert histogram.count == 20
    assert histogram.summary().max_us == pytest.approx(41_000, rel=1e-3)
    assert report.max_lag_ns == 2 * 19 * MS


def test_run_fixed_rate_sends_the_backlog_in_one_batch_when_behind() -> None:
    clock = ManualClock()
    batches: list[list[int]] = []

    def send(intended: Sequence[int]) -> None:
        batches.append(list(intended))
        clock.advance(3 * MS)

    run_fixed_rate(1000.0, Bounds(10, 60.0), send, clock=clock, max_batch=100)

    # After the first 3 ms send, three records are due each time.
    assert [len(b) for b in batches] == [1, 3, 3, 3]
    flat = [t for batch in batches for t in batch]
    assert flat == [flat[0] + i * MS for i in range(10)]


def test_run_fixed_rate_stops_at_the_count_bound() -> None:
    clock = ManualClock()
    sent: list[int] = []

    report = run_fixed_rate(
        10_000.0, Bounds(1234, 3600.0), sent.extend, clock=clock, max_batch=50
    )

    assert report.stop_reason == "count"
    assert report.records == 1234 == len(sent)
    assert len(set(sent)) == 1234


def test_run_fixed_rate_stops_at_the_time_bound_and_counts_unsent_records() -> None:
    clock = ManualClock()
    started = clock.now_ns()

    def slow_send(intended: Sequence[int]) -> None:
        clock.advance(10 * MS)

    report = run_fixed_rate(
        1000.0, Bounds(10**9, 0.1), slow_send, clock=clock, max_batch=1
    )

    assert report.stop_reason == "time"
    assert report.finished_ns - started == 100 * MS
    # 10 sends of 10 ms fit in 100 ms; 101 records were due by then.
    assert report.records == 10
    assert report.unsent_due == 91


def test_run_fixed_rate_turns_gc_off_inside_the_loop() -> None:
    states: list[bool] = []
    run_fixed_rate(
        1000.0,
        Bounds(3, 1.0),
        lambda intended: states.append(gc.isenabled()),
        clock=ManualClock(),
    )
    assert states == [False, False, False]
    assert gc.isenabled()


def test_gc_paused_restores_a_disabled_gc_as_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("records", "seconds", "message"),
    [
        (0, 1.0, "max_records must be >= 1"),
        (1, 0.0, "max_seconds must be a positive number"),
        (1, float("inf"), "max_seconds must be a positive number"),
    ],
)
def test_bounds_reject_a_loop_without_both_limits(
    records: int, seconds: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Bounds(records, seconds)


def test_bounded_run_reports_count_before_time() -> None:
    clock = ManualClock()
    run = Bounds(5, 1.0).start(clock)

    assert run.stop_reason(4) is None
    assert run.stop_reason(5) == "count"
    clock.advance(NANOS_PER_SECOND)
    assert run.stop_reason(4) == "time"
    assert run.remaining(3) == 2
    assert run.remaining(9) == 0


def test_latency_histogram_percentiles_on_known_data() -> None:
    histogram = LatencyHistogram()
    # 1 .. 10,000 microseconds, once each.
    for micros in range(1, 10_001):
        histogram.record_ns(micros * 1000)

    summary = histogram.summary()

    assert summary.count == 10_000
    assert summary.min_us == pytest.approx(1, rel=1e-3)
    assert summary.p50_us == pytest.approx(5_000, rel=1e-3)
    assert summary.p90_us == pytest.approx(9_000, rel=1e-3)
    assert summary.p99_us == pytest.approx(9_900, rel=1e-3)
    assert summary.p99_9_us == pytest.approx(9_990, rel=1e-3)
    assert summary.max_us == pytest.approx(10_000, rel=1e-3)
    assert summary.mean_us == pytest.approx(5_000.5, rel=1e-3)
    assert summary.clamped == 0


def test_latency_histogram_counts_values_outside_its_range() -> None:
    histogram = LatencyHistogram(highest_ns=NANOS_PER_SECOND)

    histogram.record_ns(-5)
    histogram.record_ns(5 * NANOS_PER_SECOND)
    histogram.record_ns(1000)

    assert histogram.count == 3
    assert histogram.clamped == 2
    assert histogram.summary().max_us == pytest.approx(1_000_000, rel=1e-3)


def test_latency_histogram_survives_encode_decode_and_merge() -> None:
    first = LatencyHistogram()
    for value in (1000, 2000, 3000):
        first.record_ns(value)
    first.record_ns(-1)
    second = LatencyHistogram.decode(first.encode())

    assert second.summary() == first.summary()

    second.merge(first)
    assert second.count == 8
    assert second.clamped == 2


def test_latency_histogram_summary_is_zero_when_empty() -> None:
    summary = LatencyHistogram().summary()
    assert summary.count == 0
    assert summary.p99_us == 0.0


def test_throughput_series_buckets_records_and_bytes_per_interval() -> None:
    start = 10 * NANOS_PER_SECOND
    series = ThroughputSeries(start, interval_ns=NANOS_PER_SECOND)

    series.add(100, 1000, start + NANOS_PER_SECOND // 2)
    series.add(100, 1000, start + NANOS_PER_SECOND)
    series.add(50, 500, start + 2 * NANOS_PER_SECOND)
    series.add(60, 600, start + 2 * NANOS_PER_SECOND + NANOS_PER_SECOND // 2)

    points = series.points()
    assert [p.records_per_s for p in points[:2]] == [200.0, 50.0]
    assert points[0].bytes_per_s == 2000.0
    # The last interval is partial (0.5 s): its rate is scaled to its length.
    assert points[2].t_s == pytest.approx(2.5)
    assert points[2].records_per_s == pytest.approx(120.0)


def test_throughput_series_spreads_a_batch_over_the_intervals_it_spanned() -> None:
    series = ThroughputSeries(0, interval_ns=NANOS_PER_SECOND)

    # 300 records reported at 3 s, nothing reported before: 100 per second.
    series.add(300, 3000, 3 * NANOS_PER_SECOND)

    assert [p.records_per_s for p in series.points()] == pytest.approx([100.0] * 3)


def test_stamp_value_round_trips_the_intended_time() -> None:
    value = make_value(100)

    stamped = stamp_value(value, 987_654_321_012)

    assert len(stamped) == 100
    assert read_stamp(stamped) == 987_654_321_012
    assert stamped[8:] == bytes(value[8:])


def test_make_value_rejects_a_size_too_small_for_the_stamp() -> None:
    with pytest.raises(ValueError, match="record size must be >= 8 bytes"):
        make_value(7)
    with pytest.raises(ValueError, match="too short to carry a time stamp"):
        read_stamp(b"1234")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100", 100),
        ("1KiB", 1024),
        ("1kb", 1000),
        ("256MiB", 256 * 1024**2),
        ("2GB", 2 * 10**9),
        ("1.5KiB", 1536),
        (" 8 mib ", 8 * 1024**2),
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "1XB", "-1", "1.3B"])
def test_parse_size_rejects_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)
