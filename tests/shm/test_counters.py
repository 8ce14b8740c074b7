"""Counters and log-scale histograms: bucket maths, percentiles, two writers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shm.counters import (
    BUCKETS,
    LAST_BUCKET,
    Counters,
    bucket_bounds,
    bucket_of,
    buckets_of,
    percentile_of,
)
from shm.region import RegionLayoutError
from tests.shm.shm_peers import COUNTER_NAMES, HISTOGRAM_NAMES
from tests.shm.support import Peers


def _nearest_rank(values: np.ndarray, percent: float) -> int:
    ordered = np.sort(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return int(ordered[rank - 1])


def test_bucket_of_places_value_inside_bounds_when_below_limit() -> None:
    lower, upper = bucket_bounds()
    values = np.concatenate(
        [np.arange(0, 5000), (1 << np.arange(4, 40)) - 1, 1 << np.arange(4, 40)]
    )
    for value in values.tolist():
        bucket = bucket_of(value)
        assert lower[bucket] <= value < upper[bucket], value
        # A bucket is never wider than 1/8 of its lower bound (exact below 16).
        assert upper[bucket] - lower[bucket] <= max(1, lower[bucket] // 8)
    assert np.array_equal(buckets_of(values), [bucket_of(v) for v in values.tolist()])
    assert bucket_of(1 << 40) == bucket_of(1 << 62) == LAST_BUCKET == BUCKETS - 1
    assert bucket_of(-5) == 0


@given(st.lists(st.integers(0, 1 << 45), min_size=1, max_size=200))
def test_buckets_of_matches_bucket_of_when_vectorised(values: list[int]) -> None:
    assert buckets_of(np.array(values)).tolist() == [bucket_of(v) for v in values]


def test_percentile_bounds_true_value_when_data_known(prefix: str) -> None:
    counters = Counters.create(prefix + "c", 3, ["requests"], ["latency_us"])
    rng = np.random.default_rng(7)
    datasets = [
        np.arange(1, 10_001),
        rng.lognormal(mean=7, sigma=1.5, size=50_000).astype(np.int64),
        np.full(1000, 12),
    ]
    for values in datasets:
        counters.histograms[:] = 0
        # Spread over slots as separate processes would.
        for slot, part in enumerate(np.array_split(values, 3)):
            counters.slot(slot).observe_many(0, part)
        for percent in (0, 1, 50, 90, 99, 99.9, 100):
            true = _nearest_rank(values, percent)
            reported = counters.percentile("latency_us", percent)
            assert reported is not None
            assert true <= reported <= true + max(0, true // 8), (percent, true)
            if true < 16:
                assert reported == true
        assert counters.histogram_sum(0) == int(values.sum())
    counters.close()


def test_percentile_exact_when_values_small() -> None:
    buckets = np.zeros(BUCKETS, dtype=np.int64)
    for value in (1, 2, 2, 3, 9):
        buckets[bucket_of(value)] += 1
    assert [percentile_of(buckets, p) for p in (20, 40, 60, 80, 100)] == [1, 2, 2, 3, 9]
    assert percentile_of(np.zeros(BUCKETS, dtype=np.int64), 50) is None
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile_of(buckets, 101)


def test_observe_matches_observe_many_when_same_values(prefix: str) -> None:
    counters = Counters.create(prefix + "c", 2, ["n"], ["a", "b"])
    values = [0, 1, 15, 16, 17, 1000, 123456, 1 << 41, -3]
    for value in values:
        counters.slot(0).observe(1, value)
    counters.slot(1).observe_many(1, values)
    assert np.array_equal(counters.histograms[0], counters.histograms[1])
    assert counters.histograms[0, 1, 0] == len(values)
    assert counters.histograms[0, 0].sum() == 0
    counters.close()


def test_counters_attach_raises_when_names_differ(prefix: str) -> None:
    counters = Counters.create(prefix + "c", 2, ["a", "b"], ["h"])
    with pytest.raises(RegionLayoutError, match="counters is \\['a', 'b'\\]"):
        Counters.attach(prefix + "c", ["b", "a"], ["h"])
    with pytest.raises(RegionLayoutError, match="histograms is"):
        Counters.attach(prefix + "c", ["a", "b"], [])
    with pytest.raises(ValueError, match="repeat"):
        Counters.create(prefix + "d", 2, ["a", "a"])
    with pytest.raises(KeyError, match="no counter 'c'"):
        counters.counter_id("c")
    counters.close()


def test_counter_slots_do_not_share_cache_lines_when_adjacent(prefix: str) -> None:
    counters = Counters.create(prefix + "c", 3, ["a", "b", "c"], ["h"])
    strides = (counters.counters.strides[0], counters.histograms.strides[0])
    assert all(stride % 64 == 0 for stride in strides)
    assert counters.counters.ctypes.data % 64 == 0
    counters.close()


@pytest.mark.timeout(120)
def test_counters_sum_when_two_processes_add(prefix: str, peers: Peers) -> None:
    counters = Counters.create(prefix + "c", 4, COUNTER_NAMES, HISTOGRAM_NAMES)
    per_process = 30_000
    children = [
        peers.start("counters-add", prefix + "c", slot, per_process) for slot in (1, 2)
    ]
    for child in children:
        peers.finish(child, timeout=90)

    totals = counters.totals()
    assert totals == {
        "requests": 2 * per_process,
        "bytes_in": 6 * per_process,
        "errors": 0,
    }
    assert counters.per_slot()[:, 0].tolist() == [0, per_process, per_process, 0]

    observed = np.tile(np.arange(per_process) % 5000, 2)
    assert counters.histograms[:, 0, 0].sum() == 2 * per_process
    assert counters.histogram_sum("latency_us") == int(observed.sum())
    for percent in (50, 99):
        true = _nearest_rank(observed, percent)
        reported = counters.percentile("latency_us", percent)
        assert reported is not None
        assert true <= reported <= true + true // 8
    counters.close()
