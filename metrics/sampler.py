"""The once-a-second sample: rates and levels derived from shared memory,
appended to the metrics process's fifteen-minute time series.

Each sample reads the counter totals, the merged request latency buckets,
each process's CPU time and resident memory, each produce ring's fill level
and the consumer lag, and stores per-second values: the difference from the
previous sample divided by the time between the two. Latency percentiles
are taken from the difference of the bucket counts, so p99 is the p99 of
the requests answered in that second (NaN when none were).

Series (``SERIES``; labels per process slot and per produce ring):

    records_in_per_s  records_out_per_s  bytes_in_per_s  bytes_out_per_s
    requests_per_s  request_errors_per_s  latency_p50_ms  latency_p99_ms
    connections  parked_fetches  lag_records  cpu_percent{process}
    rss_bytes{process}
    ring_fill_percent{ring}

Imported by the metrics process; ``sample`` runs on its event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from broker.layout import FIRST_NET_SLOT, ROLE_CODES
from metrics.groups import GroupsSnapshot, partition_lags
from metrics.reader import BrokerReader, PartitionState, ProcessState
from metrics.timeseries import TimeSeries
from shm.counters import CounterSlot, percentile_of

# Fifteen minutes at one sample a second.
HISTORY_SECONDS = 900
SAMPLE_INTERVAL_S = 1.0

SCALAR_SERIES = (
    "records_in_per_s",
    "records_out_per_s",
    "bytes_in_per_s",
    "bytes_out_per_s",
    "requests_per_s",
    "request_errors_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "connections",
    "parked_fetches",
    "lag_records",
)

# Rates: series -> the counter column they are the derivative of.
RATES = {
    "records_in_per_s": "produce_records",
    "records_out_per_s": "fetch_records",
    "bytes_in_per_s": "produce_bytes",
    "bytes_out_per_s": "fetch_bytes",
    "requests_per_s": "requests",
    "request_errors_per_s": "request_errors",
}


def slot_names(slots: int) -> tuple[str, ...]:
    """The process name of each slot (fixed by ``broker.layout``)."""
    fixed = sorted((code, role) for role, code in ROLE_CODES.items() if role != "net")
    names = [role for _, role in fixed][:FIRST_NET_SLOT]
    names += [f"net-{i}" for i in range(slots - FIRST_NET_SLOT)]
    return tuple(names[:slots])


@dataclass
class _Previous:
    monotonic: float
    totals: dict[str, int]
    latency: npt.NDArray[np.int64]
    cpu: dict[int, tuple[int, float]] = field(default_factory=dict)  # slot: pid, s


@dataclass(frozen=True)
class Sample:
    """What one sample read, kept for the API and the live stream."""

    unix_s: float
    processes: list[ProcessState]
    partitions: list[PartitionState]
    groups: GroupsSnapshot
    totals: dict[str, int]


class Sampler:
    """Takes one sample a second into ``series`` (see module docstring)."""

    def __init__(
        self,
        reader: BrokerReader,
        groups: Callable[[], GroupsSnapshot],
        own: CounterSlot | None = None,
        capacity: int = HISTORY_SECONDS,
    ) -> None:
        self.reader = reader
        self.groups = groups
        self.own = own
        self.process_names = slot_names(reader.counters.slots)
        self.ring_names = tuple(
            f"produce-{i}" for i in range(len(reader.memory.produce_rings))
        )
        self.series = TimeSeries(
            capacity,
            {
                **{name: None for name in SCALAR_SERIES},
                "cpu_percent": self.process_names,
                "rss_bytes": self.process_names,
                "ring_fill_percent": self.ring_names,
            },
        )
        self.latest: Sample | None = None
        self._previous: _Previous | None = None
        counters = reader.counters
        self._samples_column = counters.counter_id("metrics_samples")
        self._sample_histogram = counters.histogram_id("metrics_sample_us")

    def sample(
        self, unix_s: float | None = None, monotonic: float | None = None
    ) -> Sample:
        """Read everything once; append a point (from the second sample on)."""
        started_ns = time.monotonic_ns()
        unix_s = time.time() if unix_s is None else unix_s
        monotonic = time.monotonic() if monotonic is None else monotonic
        reader = self.reader

        totals = reader.counter_totals()
        latency = reader.histogram("request_latency_us").buckets
        processes = reader.processes()
        partitions = reader.partitions()
        groups = self.groups()
        rings = [ring for ring in reader.rings() if ring.kind == "produce"]
        lag = sum(row.lag for row in partition_lags(groups.groups, partitions))
        cpu_now = {
            p.slot: (p.pid, p.cpu_seconds)
            for p in processes
            if p.cpu_seconds is not None
        }

        previous = self._previous
        if previous is not None and monotonic > previous.monotonic:
            elapsed = monotonic - previous.monotonic
            values: dict[str, float | list[float | None] | None] = {
                name: _rate(totals[column], previous.totals[column], elapsed)
                for name, column in RATES.items()
            }
            values["latency_p50_ms"], values["latency_p99_ms"] = _percentiles_ms(
                latency - previous.latency
            )
            values["connections"] = float(totals["connections_active_gauge"])
            values["parked_fetches"] = float(totals["parked_fetches_gauge"])
            values["lag_records"] = float(lag) if groups.refreshed_unix_ms else None
            values["cpu_percent"] = self._cpu(previous.cpu, cpu_now, elapsed)
            rss: list[float | None] = [None] * len(self.process_names)
            for process in processes:
                if process.resident_bytes is not None and process.slot < len(rss):
                    rss[process.slot] = float(process.resident_bytes)
            values["rss_bytes"] = rss
            values["ring_fill_percent"] = [ring.fill_ratio * 100 for ring in rings]
            self.series.append(unix_s, values)

        self._previous = _Previous(monotonic, totals, latency, cpu_now)
        self.latest = Sample(unix_s, processes, partitions, groups, totals)
        if self.own is not None:
            self.own.add(self._samples_column)
            self.own.observe(
                self._sample_histogram, (time.monotonic_ns() - started_ns) // 1000
            )
        return self.latest

    def _cpu(
        self,
        before: dict[int, tuple[int, float]],
        now: dict[int, tuple[int, float]],
        elapsed: float,
    ) -> list[float | None]:
        percent: list[float | None] = [None] * len(self.process_names)
        for slot, (pid, seconds) in now.items():
            old = before.get(slot)
            # A restarted process (new pid) has no rate until its second sample.
            if old is None or old[0] != pid or slot >= len(percent):
                continue
            percent[slot] = max(0.0, (seconds - old[1]) / elapsed * 100)
        return percent


def _rate(now: int, before: int, elapsed: float) -> float | None:
    if now < before:
        return None
    return (now - before) / elapsed


def _percentiles_ms(
    buckets: npt.NDArray[np.int64],
) -> tuple[float | None, float | None]:
    if int(buckets.sum()) <= 0 or (buckets < 0).any():
        return None, None
    p50, p99 = percentile_of(buckets, 50), percentile_of(buckets, 99)
    return (
        None if p50 is None else p50 / 1000,
        None if p99 is None else p99 / 1000,
    )
