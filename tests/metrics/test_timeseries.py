"""The fifteen-minute history: a numpy ring of samples."""

from __future__ import annotations

import math

import pytest

from metrics.timeseries import TimeSeries, to_json


def series(capacity: int = 5) -> TimeSeries:
    return TimeSeries(capacity, {"rate": None, "cpu": ("writer", "net-0")})


def test_timeseries_window_returns_oldest_first_when_the_ring_wrapped() -> None:
    ring = series(capacity=5)
    for second in range(8):
        ring.append(100.0 + second, {"rate": second, "cpu": [second, -second]})

    window = ring.window(60)

    assert len(ring) == 5
    assert window["time"].tolist() == [103.0, 104.0, 105.0, 106.0, 107.0]
    assert window["rate"][:, 0].tolist() == [3, 4, 5, 6, 7]
    assert window["cpu"][:, 1].tolist() == [-3, -4, -5, -6, -7]


def test_timeseries_window_keeps_only_the_last_seconds_asked_for() -> None:
    ring = series(capacity=900)
    for second in range(900):
        ring.append(float(second), {"rate": 1.0})

    assert len(ring.window(10)["time"]) == 10
    assert ring.window(10)["time"][0] == 890.0
    assert len(ring.window(900)["time"]) == 900


def test_timeseries_window_is_a_copy_when_samples_are_appended_later() -> None:
    ring = series(capacity=2)
    ring.append(1.0, {"rate": 1.0})
    window = ring.window(10)

    ring.append(2.0, {"rate": 2.0})
    ring.append(3.0, {"rate": 3.0})

    assert window["rate"][:, 0].tolist() == [1.0]


def test_timeseries_stores_missing_values_as_nan_and_json_as_null() -> None:
    ring = series()
    ring.append(1.0, {"cpu": [None, 2.5]})

    window = ring.window(10)
    document = to_json(ring.labels, window)

    assert math.isnan(window["rate"][0, 0])
    assert document == {
        "time": [1.0],
        "series": {"rate": [None], "cpu": {"writer": [None], "net-0": [2.5]}},
    }


def test_timeseries_latest_returns_the_newest_sample_by_label() -> None:
    ring = series()
    assert ring.latest() is None
    ring.append(1.0, {"rate": 1.0, "cpu": [1, 2]})
    ring.append(2.0, {"rate": 0.125, "cpu": [3, None]})

    assert ring.latest() == {
        "time": 2.0,
        "rate": 0.125,
        "cpu": {"writer": 3.0, "net-0": None},
    }


def test_timeseries_append_refuses_wrong_labels_and_unknown_series() -> None:
    ring = series()

    with pytest.raises(ValueError, match="series 'cpu' has 2 labels"):
        ring.append(1.0, {"cpu": [1.0]})
    with pytest.raises(KeyError, match="no series"):
        ring.append(1.0, {"disk": 1.0})
    assert len(ring) == 0
