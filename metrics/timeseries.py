"""The metrics process's short history: fixed-size numpy rings of samples.

One ``TimeSeries`` holds the last ``capacity`` samples (the metrics process
keeps 900: fifteen minutes at one sample a second) of a fixed set of
series. A series is either one number per sample or one number per label
(per process, per ring); the labels are fixed when the series is built.

Layout (one row per sample, ``capacity`` rows, reused in a circle):

    time      float64[capacity]            unix seconds of each sample
    <series>  float64[capacity, labels]    NaN where a value is unknown

``appended`` counts samples since creation; sample ``n`` lives in row
``n % capacity``. ``window`` copies the rows of the last N seconds out in
time order, so readers never see a row being overwritten.

Used by the metrics process only, from its event loop thread; not safe to
share between threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

Labels = tuple[str, ...] | None
Value = float | None | Sequence[float | None]


class TimeSeries:
    """The last ``capacity`` samples of each series (see module docstring)."""

    def __init__(self, capacity: int, series: Mapping[str, Sequence[str] | None]):
        if capacity < 1:
            raise ValueError(f"time series capacity {capacity} must be >= 1")
        self.capacity = capacity
        self.labels: dict[str, Labels] = {
            name: tuple(labels) if labels is not None else None
            for name, labels in series.items()
        }
        self.time: npt.NDArray[np.float64] = np.full(capacity, np.nan)
        self.values: dict[str, npt.NDArray[np.float64]] = {
            name: np.full((capacity, len(labels) if labels is not None else 1), np.nan)
            for name, labels in self.labels.items()
        }
        self.appended = 0

    def __len__(self) -> int:
        return min(self.appended, self.capacity)

    def append(self, unix_s: float, values: Mapping[str, Value]) -> None:
        """Add one sample; series missing from ``values`` get NaN."""
        unknown = values.keys() - self.values.keys()
        if unknown:
            raise KeyError(f"time series has no series {sorted(unknown)}")
        row = self.appended % self.capacity

        self.time[row] = unix_s
        for name, column in self.values.items():
            value = values.get(name)
            if value is None:
                column[row] = np.nan
            elif isinstance(value, int | float):
                column[row] = value
            else:
                if len(value) != column.shape[1]:
                    raise ValueError(
                        f"series {name!r} has {column.shape[1]} labels,"
                        f" the sample gave {len(value)} values"
                    )
                column[row] = [np.nan if v is None else v for v in value]
        self.appended += 1

    def window(self, seconds: float) -> dict[str, npt.NDArray[np.float64]]:
        """Copies of the samples of the last ``seconds`` (counted back from
        the newest sample), oldest first: ``time`` and every series."""
        count = len(self)
        # Row order oldest..newest: the ring's start is the oldest row.
        start = self.appended % self.capacity if self.appended > self.capacity else 0
        order = (np.arange(count) + start) % self.capacity
        times = self.time[order]
        if count:
            order = order[times > times[-1] - seconds]
        window = {"time": self.time[order].copy()}
        for name, column in self.values.items():
            window[name] = column[order].copy()
        return window

    def latest(self) -> dict[str, object] | None:
        """The newest sample: ``time`` and each series' value (a dict by
        label for labelled series), NaN as None; None before any sample."""
        if not self.appended:
            return None
        row = (self.appended - 1) % self.capacity
        sample: dict[str, object] = {"time": float(self.time[row])}
        for name, labels in self.labels.items():
            values = _plain(self.values[name][row], 6)
            if labels is None:
                sample[name] = values[0]
            else:
                sample[name] = dict(zip(labels, values, strict=True))
        return sample


def _plain(values: npt.NDArray[np.float64], digits: int) -> list[float | None]:
    return [None if math.isnan(v) else round(v, digits) for v in values.tolist()]


def to_json(
    labels: Mapping[str, Labels],
    window: Mapping[str, npt.NDArray[np.float64]],
    digits: int = 3,
) -> dict[str, object]:
    """A window as JSON-ready data: ``{"time": [...], "series": {name:
    [...] or {label: [...]}}}``, NaN as null, values rounded to ``digits``."""
    series: dict[str, object] = {}
    for name, names in labels.items():
        column = window[name]
        if names is None:
            series[name] = _plain(column[:, 0], digits)
        else:
            series[name] = {
                label: _plain(column[:, i], digits) for i, label in enumerate(names)
            }
    return {"time": _plain(window["time"], 3), "series": series}
