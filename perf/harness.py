"""Load-generation machinery every perf scenario shares: time, rate, bounds, latency.

Owns the clock seam, the fixed-rate schedule of intended send times, run
bounds (a record count and a time limit, whichever comes first), the HDR
latency histogram wrapper, the per-interval throughput series, stamping a
record's value with its intended send time, and pausing the cyclic GC.

Invariants:

- Latency is measured from a record's *intended* send time, never from the
  moment the sender got round to it. When the sender falls behind, the
  backlog is sent at once, each record keeping its own intended time, so the
  delay shows up in the percentiles instead of being hidden (no coordinated
  omission).
- Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC): one clock for every
  process on the host, so a stamp written by a producer process can be
  subtracted in a consumer process.
- Every loop run here stops at its record count or its time limit.

Stamped value layout (the first 8 bytes; the rest is filler)::

    0       8                                   size
    +-------+-----------------------------------+
    | int64 | filler (random, incompressible)   |
    | LE ns |                                   |
    +-------+-----------------------------------+
      intended send time, CLOCK_MONOTONIC

Imported by the scenario modules in the load-generating process and by
their child processes (the consumer side of a latency run). Not thread-safe:
give each thread or process its own histogram and series, and merge them.
"""

from __future__ import annotations

import gc
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

NANOS_PER_SECOND = 1_000_000_000

STAMP = struct.Struct("<q")


class Clock(Protocol):
    """Where the harness reads time and waits; tests pass a fake one."""

    def now_ns(self) -> int: ...

    def sleep_until_ns(self, deadline_ns: int) -> None: ...


class MonotonicClock:
    """The real clock: CLOCK_MONOTONIC, shared by all processes on the host."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep_until_ns(self, deadline_ns: int) -> None:
        delay_ns = deadline_ns - time.monotonic_ns()
        if delay_ns > 0:
            time.sleep(delay_ns / NANOS_PER_SECOND)


class ManualClock:
    """A clock that moves only when told; a sleep jumps to its deadline.

    For testing loops built on the harness without waiting: a ``send``
    callback can ``advance`` it to play a slow sender.
    """

    def __init__(self, start_ns: int = NANOS_PER_SECOND) -> None:
        self.now = start_ns
        self.sleeps: list[int] = []

    def now_ns(self) -> int:
        return self.now

    def sleep_until_ns(self, deadline_ns: int) -> None:
        self.sleeps.append(deadline_ns)
        self.now = max(self.now, deadline_ns)

    def advance(self, nanoseconds: int) -> None:
        self.now += nanoseconds


@contextmanager
def gc_paused() -> Iterator[None]:
    """Turn the cyclic GC off for a timed loop, and back on as it was after.

    A collection in the middle of a timed loop shows up as a latency spike
    that belongs to the load generator, not to the system measured.
    Reference counting still frees memory; only cycle collection waits.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class RateSchedule:
    """Intended send times of a fixed-rate run: record ``i`` is due at
    ``start_ns + i / rate``."""

    rate_per_s: float
    start_ns: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.rate_per_s) or self.rate_per_s <= 0:
            raise ValueError(
                f"rate_per_s must be a positive number, got {self.rate_per_s!r}"
            )

    @property
    def interval_ns(self) -> float:
        return NANOS_PER_SECOND / self.rate_per_s

    def intended_ns(self, index: int) -> int:
        """The intended send time of record ``index`` (0-based)."""
        return self.start_ns + int(index * NANOS_PER_SECOND / self.rate_per_s)

    def due_count(self, now_ns: int) -> int:
        """How many records (from index 0) are due at ``now_ns``."""
        if now_ns < self.start_ns:
            return 0
        count = int((now_ns - self.start_ns) * self.rate_per_s / NANOS_PER_SECOND) + 1

        # The float estimate can be one off at an exact boundary; settle it
        # against intended_ns so both methods always agree.
        while count > 0 and self.intended_ns(count - 1) > now_ns:
            count -= 1
        while self.intended_ns(count) <= now_ns:
            count += 1
        return count


@dataclass(frozen=True)
class Bounds:
    """A run stops after ``max_records`` records or ``max_seconds``, whichever
    comes first. Both are required: no loop here is unbounded."""

    max_records: int
    max_seconds: float

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")
        if not math.isfinite(self.max_seconds) or self.max_seconds <= 0:
            raise ValueError(
                f"max_seconds must be a positive number, got {self.max_seconds!r}"
            )

    def start(self, clock: Clock) -> BoundedRun:
        return BoundedRun(self, clock)


class BoundedRun:
    """One run under ``Bounds``: knows when it started and when it must stop."""

    def __init__(self, bounds: Bounds, clock: Clock) -> None:
        self.bounds = bounds
        self.clock = clock
        self.started_ns = clock.now_ns()
        self.deadline_ns = self.started_ns + int(bounds.max_seconds * NANOS_PER_SECOND)

    def remaining(self, done: int) -> int:
        """Records still allowed by the count bound."""
        return max(0, self.bounds.max_records - done)

    def stop_reason(self, done: int, now_ns: int | None = None) -> str | None:
        """``"count"`` or ``"time"`` once a bound is reached, else ``None``."""
        if done >= self.bounds.max_records:
            return "count"
        if (self.clock.now_ns() if now_ns is None else now_ns) >= self.deadline_ns:
            return "time"
        return None

    def should_stop(self, done: int) -> bool:
        return self.stop_reason(done) is not None

    def elapsed_s(self) -> float:
        return (self.clock.now_ns() - self.started_ns) / NANOS_PER_SECOND


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one latency histogram, in microseconds."""

    count: int
    min_us: float
    mean_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    p99_9_us: float
    max_us: float
    # Values outside the trackable range, recorded at the range's edge.
    clamped: int


class LatencyHistogram:
    """HDR histogram of latencies in nanoseconds (0 to ``highest_ns``).

    Three significant digits: a percentile is exact to 0.1 %. Values outside
    the range are recorded at its edge and counted in ``clamped``, so a
    stray value never aborts a run but is never silent either.
    """

    def __init__(
        self, highest_ns: int = 60 * NANOS_PER_SECOND, significant_digits: int = 3
    ) -> None:
        self.highest_ns = highest_ns
        self.significant_digits = significant_digits
        self._histogram = HdrHistogram(1, highest_ns, significant_digits)
        self.clamped = 0

    @property
    def count(self) -> int:
        return int(self._histogram.get_total_count())

    def record_ns(self, value_ns: int) -> None:
        if value_ns < 0:
            self.clamped += 1
            value_ns = 0
        elif value_ns > self.highest_ns:
            self.clamped += 1
            value_ns = self.highest_ns
        self._histogram.record_value(value_ns)

    def record_since(self, intended_ns: Iterable[int], now_ns: int) -> None:
        """Record ``now_ns - t`` for every intended time ``t``."""
        for started in intended_ns:
            self.record_ns(now_ns - started)

    def merge(self, other: LatencyHistogram) -> None:
        self._histogram.add(other._histogram)
        self.clamped += other.clamped

    def encode(self) -> str:
        """A compact text form (HDR base64) to pass between processes."""
        encoded: bytes = self._histogram.encode()
        return f"{self.clamped}:{encoded.decode('ascii')}"

    @classmethod
    def decode(
        cls, text: str, highest_ns: int = 60 * NANOS_PER_SECOND
    ) -> LatencyHistogram:
        clamped, _, body = text.partition(":")
        histogram = cls(highest_ns)
        histogram._histogram.decode_and_add(body.encode("ascii"))
        histogram.clamped = int(clamped)
        return histogram

    def value_at_percentile_ns(self, percentile: float) -> int:
        return int(self._histogram.get_value_at_percentile(percentile))

    def summary(self) -> LatencySummary:
        """Percentiles in microseconds; all zero for an empty histogram."""
        h = self._histogram
        if self.count == 0:
            return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, self.clamped)
        return LatencySummary(
            count=self.count,
            min_us=h.get_min_value() / 1000,
            mean_us=h.get_mean_value() / 1000,
            p50_us=h.get_value_at_percentile(50) / 1000,
            p90_us=h.get_value_at_percentile(90) / 1000,
            p99_us=h.get_value_at_percentile(99) / 1000,
            p99_9_us=h.get_value_at_percentile(99.9) / 1000,
            max_us=h.get_max_value() / 1000,
            clamped=self.clamped,
        )


@dataclass(frozen=True)
class TimelinePoint:
    """Throughput in one interval of a run; ``t_s`` is the interval's end."""

    t_s: float
    records_per_s: float
    bytes_per_s: float


class ThroughputSeries:
    """Records and bytes per fixed interval since ``start_ns``.

    A batch reported at ``now_ns`` is spread evenly over the time since the
    previous report: a batch of 10,000 records that took 0.3 s counts in
    every interval it spanned, so large batches do not draw a saw-tooth of
    full and empty intervals.
    """

    def __init__(self, start_ns: int, interval_ns: int = NANOS_PER_SECOND // 4) -> None:
        if interval_ns <= 0:
            raise ValueError(f"interval_ns must be > 0, got {interval_ns}")
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        self._records: list[float] = []
        self._bytes: list[float] = []
        self._last_ns = start_ns

    def _grow(self, index: int) -> None:
        while len(self._records) <= index:
            self._records.append(0.0)
            self._bytes.append(0.0)

    def add(self, records: int, nbytes: int, now_ns: int) -> None:
        begin = self._last_ns - self.start_ns
        end = max(now_ns - self.start_ns, 0)
        self._last_ns = max(self._last_ns, now_ns)
        if end <= begin:
            index = end // self.interval_ns
            self._grow(index)
            self._records[index] += records
            self._bytes[index] += nbytes
            return

        # Share the batch among the intervals [begin, end) overlaps.
        first = begin // self.interval_ns
        last = (end - 1) // self.interval_ns
        self._grow(last)
        span = end - begin
        for index in range(first, last + 1):
            low = max(begin, index * self.interval_ns)
            high = min(end, (index + 1) * self.interval_ns)
            share = (high - low) / span
            self._records[index] += records * share
            self._bytes[index] += nbytes * share

    def points(self) -> list[TimelinePoint]:
        """One point per interval; the last, partial interval is scaled by its
        real length so a run's tail does not read as a drop."""
        points = []
        seconds = self.interval_ns / NANOS_PER_SECOND
        for index, (records, nbytes) in enumerate(
            zip(self._records, self._bytes, strict=True)
        ):
            end_ns = self.start_ns + (index + 1) * self.interval_ns
            span_s = seconds
            if index == len(self._records) - 1:
                span_s = max(
                    (self._last_ns - (end_ns - self.interval_ns)) / NANOS_PER_SECOND,
                    seconds / 1000,
                )
                end_ns = self._last_ns
            points.append(
                TimelinePoint(
                    t_s=(end_ns - self.start_ns) / NANOS_PER_SECOND,
                    records_per_s=records / span_s,
                    bytes_per_s=nbytes / span_s,
                )
            )
        return points


@dataclass(frozen=True)
class FixedRateReport:
    """What a fixed-rate run did."""

    records: int
    started_ns: int
    finished_ns: int
    stop_reason: str
    # Worst delay between a record's intended time and the start of the
    # send call that carried it: how far the sender fell behind.
    max_lag_ns: int
    # Records that were due when the time bound hit but never sent.
    unsent_due: int

    @property
    def seconds(self) -> float:
        return (self.finished_ns - self.started_ns) / NANOS_PER_SECOND


SendBatch = Callable[[Sequence[int]], None]


def run_fixed_rate(
    rate_per_s: float,
    bounds: Bounds,
    send: SendBatch,
    *,
    clock: Clock,
    max_batch: int = 1000,
    histogram: LatencyHistogram | None = None,
    series: ThroughputSeries | None = None,
    record_bytes: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> FixedRateReport:
    """Send records at ``rate_per_s`` until ``bounds``.

    ``send`` gets the intended send times of the records it must send now
    (at most ``max_batch``; several when the sender is behind) and returns
    once they are sent - or acknowledged, for a closed-loop measure. With
    ``histogram``, each record's latency is the time ``send`` returned minus
    its intended time. Stamping the times into the values lets a consumer
    measure end to end the same way.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    run = bounds.start(clock)
    schedule = RateSchedule(rate_per_s, run.started_ns)
    sent = 0
    max_lag_ns = 0
    unsent_due = 0
    stop_reason = "count"

    with gc_paused():
        while True:
            now_ns = clock.now_ns()
            reason = run.stop_reason(sent, now_ns)
            if reason is not None:
                stop_reason = reason
                if reason == "time":
                    due = min(schedule.due_count(run.deadline_ns), bounds.max_records)
                    unsent_due = max(0, due - sent)
                break

            # Nothing due yet: wait for the next intended time (or the end).
            due = min(schedule.due_count(now_ns), bounds.max_records) - sent
            if due <= 0:
                clock.sleep_until_ns(min(schedule.intended_ns(sent), run.deadline_ns))
                continue

            # Send what is due, oldest first; each keeps its intended time.
            count = min(due, max_batch)
            intended = [schedule.intended_ns(i) for i in range(sent, sent + count)]
            max_lag_ns = max(max_lag_ns, now_ns - intended[0])
            send(intended)
            sent += count

            if histogram is not None or series is not None:
                done_ns = clock.now_ns()
                if histogram is not None:
                    histogram.record_since(intended, done_ns)
                if series is not None:
                    series.add(count, count * record_bytes, done_ns)
            if on_progress is not None:
                on_progress(count)

    return FixedRateReport(
        records=sent,
        started_ns=run.started_ns,
        finished_ns=clock.now_ns(),
        stop_reason=stop_reason,
        max_lag_ns=max_lag_ns,
        unsent_due=unsent_due,
    )


def make_value(size: int) -> bytearray:
    """A record value of ``size`` random bytes (random, so compression in any
    layer cannot flatter a figure)."""
    if size < STAMP.size:
        raise ValueError(
            f"record size must be >= {STAMP.size} bytes to hold a time stamp, "
            f"got {size}"
        )
    return bytearray(os.urandom(size))


def stamp_value(value: bytearray, intended_ns: int) -> bytes:
    """A copy of ``value`` carrying ``intended_ns`` in its first 8 bytes."""
    STAMP.pack_into(value, 0, intended_ns)
    return bytes(value)


def read_stamp(value: bytes | bytearray | memoryview) -> int:
    """The intended send time a stamped value carries."""
    if len(value) < STAMP.size:
        raise ValueError(
            f"value of {len(value)} bytes is too short to carry a time stamp"
        )
    stamp: int = STAMP.unpack_from(value, 0)[0]
    return stamp


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes from ``"100"``, ``"1KiB"``, ``"256MiB"``, ``"2GB"`` (KiB = 1024,
    KB = 1000)."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"not a size: {text!r} (use a number with an optional unit such as "
            "100, 1KiB, 256MiB, 2GB)"
        )
    value = float(match.group(1)) * _UNITS[unit]
    if value != int(value):
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)
