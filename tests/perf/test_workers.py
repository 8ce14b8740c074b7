"""Tests of perf.workers: merging what several load processes report."""

from __future__ import annotations

from perf.harness import LatencyHistogram
from perf.workers import WorkerResult, merge_results, merge_timelines


def test_merge_timelines_adds_rates_point_by_point_when_lengths_differ() -> None:
    merged = merge_timelines(
        [[(0.25, 10.0, 100.0), (0.5, 20.0, 200.0)], [(0.25, 1.0, 10.0)]]
    )
    assert [(p.t_s, p.records_per_s, p.bytes_per_s) for p in merged] == [
        (0.25, 11.0, 110.0),
        (0.5, 20.0, 200.0),
    ]


def test_merge_results_sums_counts_and_merges_histograms() -> None:
    first = LatencyHistogram()
    first.record_ns(1_000_000)
    second = LatencyHistogram()
    second.record_ns(3_000_000)
    start = 10_000_000_000
    merged = merge_results(
        [
            WorkerResult(
                records=5,
                value_bytes=50,
                finished_ns=start + 1_000_000_000,
                histogram=first.encode(),
                stop_reason="count",
            ),
            WorkerResult(
                records=7,
                value_bytes=70,
                finished_ns=start + 2_000_000_000,
                histogram=second.encode(),
                errors=["boom"],
                stop_reason="time",
            ),
        ],
        start,
    )
    assert (merged.records, merged.value_bytes) == (12, 120)
    # The run lasts until the last process finished.
    assert merged.seconds == 2.0
    assert merged.histogram is not None and merged.histogram.count == 2
    assert merged.histogram.summary().max_us >= 2990
    assert merged.errors == ["boom"]
    assert merged.stop_reasons == ["count", "time"]
