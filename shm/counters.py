"""Per-process counters and latency histograms in one shared block.

Every process has a slot (a row index the supervisor assigns). A slot holds
one int64 per counter and, per histogram, a count, a sum and a fixed set of
log-scale buckets. Only the slot's owner writes it, so increments need no
lock: a plain read-add-store of an aligned int64 (atomic to readers on
x86-64, see ``shm.ordering``). The metrics process sums all slots.

Layout of the block body (rows padded to 64 bytes so two processes never
write the same cache line):

    0    control     int64[8]: slots, counters, histograms, buckets
    64   counters    int64[slots][counter_stride]
    ...  histograms  int64[slots][histogram_stride], where each slot holds
                     histograms x (count, sum, buckets[BUCKETS]) then padding

The counter and histogram names are fixed at creation, stored in the header
and compared on attach, so every process agrees what column 3 means.

Buckets (log-linear, like HDR histograms): values 0..7 have a bucket each;
above that every power of two is split into 8 equal buckets, so a bucket is
at most 1/8 = 12.5 % wider than its lower bound and a percentile read from
the buckets is within 12.5 % of the true value. Plain powers of two (up to
100 % error) cannot tell a p99 of 600 us from one of 1000 us. Values are
integers in the caller's unit (the broker uses microseconds); from 2**40 up
(12.7 days in microseconds) they share the last bucket, negatives count as 0.
304 buckets x 8 bytes = 2.4 KiB per histogram per slot.

Restart: a process that restarts in the same slot keeps adding to its old
values, so totals never go backwards (what Prometheus counters expect).

Not safe: two processes writing one slot lose increments. Readers may see a
histogram's count, sum and buckets from slightly different instants (each
value is intact); percentiles use the buckets only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from shm.region import Region, RegionLayoutError, align_up

KIND = "counters"
LAYOUT_VERSION = 1

SLOTS = 0
COUNTERS = 1
HISTOGRAMS = 2
BUCKET_COUNT = 3
CONTROL_SLOTS = 8

SUB_BUCKET_BITS = 3
SUB_BUCKETS = 1 << SUB_BUCKET_BITS
SUB_BUCKET_MASK = SUB_BUCKETS - 1
MAX_EXPONENT = 40
BUCKETS = SUB_BUCKETS * (MAX_EXPONENT - SUB_BUCKET_BITS + 1)
LAST_BUCKET = BUCKETS - 1

# Within one histogram's row: count, sum, then the buckets.
HISTOGRAM_COUNT = 0
HISTOGRAM_SUM = 1
HISTOGRAM_FIRST_BUCKET = 2
HISTOGRAM_WIDTH = HISTOGRAM_FIRST_BUCKET + BUCKETS

NAME_LIMIT = 64


def bucket_of(value: int) -> int:
    """The bucket index of ``value``."""
    if value < SUB_BUCKETS:
        return value if value > 0 else 0
    exponent = value.bit_length() - 1
    # LIMITATION: values from 2**40 up share the last bucket; a percentile
    # that lands there reports only its lower bound.
    if exponent >= MAX_EXPONENT:
        return LAST_BUCKET
    return ((exponent - SUB_BUCKET_BITS + 1) << SUB_BUCKET_BITS) + (
        (value >> (exponent - SUB_BUCKET_BITS)) & SUB_BUCKET_MASK
    )


def buckets_of(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``bucket_of`` for an array of values, vectorised."""
    array = np.maximum(np.asarray(values, dtype=np.int64), 0)
    # frexp is exact for integers below 2**53; clip first.
    clipped = np.minimum(array, (1 << MAX_EXPONENT) - 1)
    _, exponent_plus_one = np.frexp(clipped.astype(np.float64))
    exponent = exponent_plus_one.astype(np.int64) - 1
    shift = np.maximum(exponent - SUB_BUCKET_BITS, 0)
    wide = ((exponent - SUB_BUCKET_BITS + 1) << SUB_BUCKET_BITS) + (
        (clipped >> shift) & SUB_BUCKET_MASK
    )
    buckets = np.where(clipped < SUB_BUCKETS, clipped, wide)
    buckets[array >= (1 << MAX_EXPONENT)] = LAST_BUCKET
    return buckets


def bucket_bounds() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each bucket's lowest value and its exclusive upper bound (the last
    bucket's upper bound is 2**63 - 1: it is open-ended)."""
    index = np.arange(BUCKETS, dtype=np.int64)
    group = index >> SUB_BUCKET_BITS
    offset = index & SUB_BUCKET_MASK
    scale = np.maximum(group - 1, 0)
    lower = np.where(group == 0, index, (SUB_BUCKETS + offset) << scale)
    upper = np.where(group == 0, index + 1, (SUB_BUCKETS + offset + 1) << scale)
    upper[LAST_BUCKET] = np.iinfo(np.int64).max
    return lower, upper


def _check_names(what: str, names: Sequence[str]) -> list[str]:
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names repeat: {names}")
    for name in names:
        if not name or len(name) > NAME_LIMIT or not name.isascii():
            raise ValueError(f"{what} name {name!r} must be 1-{NAME_LIMIT} ASCII chars")
    return names


def _layout(slots: int, counters: int, histograms: int) -> tuple[int, int, int, int]:
    """Counter stride, histogram stride (in int64s), their body offsets."""
    counter_stride = align_up(counters * 8) // 8
    histogram_stride = align_up(histograms * HISTOGRAM_WIDTH * 8) // 8
    counters_offset = align_up(CONTROL_SLOTS * 8)
    histograms_offset = counters_offset + slots * counter_stride * 8
    return counter_stride, histogram_stride, counters_offset, histograms_offset


class Counters:
    """The shared block of every process's counters and histograms."""

    def __init__(self, region: Region) -> None:
        schema = region.schema
        self.region = region
        self.name = region.name
        self.slots = int(schema["slots"])
        self.counter_names: tuple[str, ...] = tuple(schema["counters"])
        self.histogram_names: tuple[str, ...] = tuple(schema["histograms"])
        self._counter_ids = {name: i for i, name in enumerate(self.counter_names)}
        self._histogram_ids = {name: i for i, name in enumerate(self.histogram_names)}

        counters, histograms = len(self.counter_names), len(self.histogram_names)
        counter_stride, histogram_stride, counters_offset, histograms_offset = _layout(
            self.slots, counters, histograms
        )
        body = region.body
        self.control: npt.NDArray[np.int64] = np.ndarray(
            (CONTROL_SLOTS,), dtype=np.int64, buffer=body, offset=0
        )
        self._counter_rows: npt.NDArray[np.int64] = np.ndarray(
            (self.slots, counter_stride),
            dtype=np.int64,
            buffer=body,
            offset=counters_offset,
        )
        self._histogram_rows: npt.NDArray[np.int64] = np.ndarray(
            (self.slots, histogram_stride),
            dtype=np.int64,
            buffer=body,
            offset=histograms_offset,
        )
        # Views without the padding: [slot, counter], [slot, histogram, field].
        self.counters = self._counter_rows[:, :counters]
        self.histograms = self._histogram_rows[
            :, : histograms * HISTOGRAM_WIDTH
        ].reshape(self.slots, histograms, HISTOGRAM_WIDTH)
        # Splitting the contiguous last axis must stay a view, never a copy.
        assert histograms == 0 or np.shares_memory(
            self.histograms, self._histogram_rows
        )
        self._slots: dict[int, CounterSlot] = {}

    @classmethod
    def create(
        cls,
        name: str,
        slots: int,
        counter_names: Sequence[str],
        histogram_names: Sequence[str] = (),
    ) -> Counters:
        """Create zeroed counters for ``slots`` processes."""
        if not 1 <= slots <= 65536:
            raise ValueError(f"counters {name!r}: slots {slots} must be 1..65536")
        counters = _check_names("counter", counter_names)
        histograms = _check_names("histogram", histogram_names)

        _, histogram_stride, _, histograms_offset = _layout(
            slots, len(counters), len(histograms)
        )
        schema = {
            "slots": slots,
            "counters": counters,
            "histograms": histograms,
            "buckets": BUCKETS,
            "sub_bucket_bits": SUB_BUCKET_BITS,
        }
        region = Region.create(
            name,
            KIND,
            LAYOUT_VERSION,
            schema,
            histograms_offset + slots * histogram_stride * 8,
        )
        block = cls(region)
        block.control[SLOTS] = slots
        block.control[COUNTERS] = len(counters)
        block.control[HISTOGRAMS] = len(histograms)
        block.control[BUCKET_COUNT] = BUCKETS
        region.mark_ready()
        return block

    @classmethod
    def attach(
        cls,
        name: str,
        counter_names: Sequence[str],
        histogram_names: Sequence[str] = (),
    ) -> Counters:
        """Attach, checking the names (and their order) match."""
        region = Region.attach(name, KIND, LAYOUT_VERSION)
        try:
            region.expect("counters", list(counter_names))
            region.expect("histograms", list(histogram_names))
            region.expect("buckets", BUCKETS)
            region.expect("sub_bucket_bits", SUB_BUCKET_BITS)
            slots = region.schema.get("slots")
            if not isinstance(slots, int) or slots < 1:
                raise RegionLayoutError(name, f"counter slots {slots!r} is invalid")
            _, histogram_stride, _, histograms_offset = _layout(
                slots, len(counter_names), len(histogram_names)
            )
            if histograms_offset + slots * histogram_stride * 8 > len(region.body):
                raise RegionLayoutError(name, "counter sizes exceed the block size")
            return cls(region)
        except BaseException:
            region.close()
            raise

    def counter_id(self, name: str) -> int:
        try:
            return self._counter_ids[name]
        except KeyError:
            raise KeyError(f"counters {self.name!r} have no counter {name!r}") from None

    def histogram_id(self, name: str) -> int:
        try:
            return self._histogram_ids[name]
        except KeyError:
            raise KeyError(
                f"counters {self.name!r} have no histogram {name!r}"
            ) from None

    def slot(self, index: int) -> CounterSlot:
        """The writing handle of slot ``index`` (use only in its owner)."""
        if not 0 <= index < self.slots:
            raise IndexError(
                f"counters {self.name!r} have {self.slots} slots, no {index}"
            )
        handle = self._slots.get(index)
        if handle is None:
            handle = self._slots[index] = CounterSlot(self, index)
        return handle

    # -- reading ------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        """Every counter summed over all slots."""
        sums = self.counters.sum(axis=0).tolist()
        return dict(zip(self.counter_names, sums, strict=True))

    def per_slot(self) -> npt.NDArray[np.int64]:
        """A copy of the counters, [slot, counter]."""
        return self.counters.copy()

    def merged_buckets(self, histogram: int | str) -> npt.NDArray[np.int64]:
        """One histogram's bucket counts summed over all slots."""
        column = self._histogram_index(histogram)
        merged: npt.NDArray[np.int64] = self.histograms[
            :, column, HISTOGRAM_FIRST_BUCKET:
        ].sum(axis=0)
        return merged

    def histogram_sum(self, histogram: int | str) -> int:
        """The sum of every observed value of one histogram."""
        column = self._histogram_index(histogram)
        return int(self.histograms[:, column, HISTOGRAM_SUM].sum())

    def percentile(self, histogram: int | str, percent: float) -> int | None:
        """The ``percent`` percentile (nearest rank) over all slots.

        Returns the largest value of the bucket holding that rank, which is
        at least the true percentile and at most 12.5 % above it (values
        below 16 are exact); for the open last bucket, its lower bound. None if
        nothing was observed.
        """
        return percentile_of(self.merged_buckets(histogram), percent)

    def _histogram_index(self, histogram: int | str) -> int:
        if isinstance(histogram, str):
            return self.histogram_id(histogram)
        if not 0 <= histogram < len(self.histogram_names):
            raise IndexError(f"counters {self.name!r} have no histogram {histogram}")
        return histogram

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        for handle in self._slots.values():
            handle._detach()
        self._slots.clear()
        if self.region.closed:
            return
        for attribute in (
            "control",
            "_counter_rows",
            "_histogram_rows",
            "counters",
            "histograms",
        ):
            self.__dict__.pop(attribute, None)
        self.region.close()

    def unlink(self) -> None:
        self.region.unlink()

    def __enter__(self) -> Counters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_LOWER, _UPPER = bucket_bounds()


def percentile_of(buckets: npt.NDArray[np.int64], percent: float) -> int | None:
    """Nearest-rank percentile from bucket counts; see ``Counters.percentile``."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percentile {percent} must be within 0..100")
    cumulative = np.cumsum(buckets)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if total == 0:
        return None
    rank = max(1, math.ceil(percent / 100 * total))
    bucket = int(np.searchsorted(cumulative, rank))
    if bucket == LAST_BUCKET:
        return int(_LOWER[bucket])
    return int(_UPPER[bucket]) - 1


class CounterSlot:
    """One process's row: ``add`` to counters, ``observe`` latencies."""

    def __init__(self, block: Counters, index: int) -> None:
        self.index = index
        self.pid = os.getpid()
        self.row: npt.NDArray[np.int64] = block.counters[index]
        self.histograms: npt.NDArray[np.int64] = block.histograms[index]
        # Per histogram, a 1-D view: count, sum, buckets.
        self._histogram_rows = [
            self.histograms[column] for column in range(len(block.histogram_names))
        ]

    def _detach(self) -> None:
        del self.row, self.histograms, self._histogram_rows

    def add(self, counter: int, amount: int = 1) -> None:
        """Add ``amount`` to counter ``counter`` (an id from ``counter_id``)."""
        self.row[counter] += amount

    def observe(self, histogram: int, value: int) -> None:
        """Record one value (e.g. a latency in microseconds)."""
        if value < 0:
            value = 0
        row = self._histogram_rows[histogram]
        row[HISTOGRAM_FIRST_BUCKET + bucket_of(value)] += 1
        row[HISTOGRAM_SUM] += value
        row[HISTOGRAM_COUNT] += 1

    def observe_many(self, histogram: int, values: npt.ArrayLike) -> None:
        """Record many values at once."""
        array = np.maximum(np.asarray(values, dtype=np.int64), 0)
        if array.size == 0:
            return
        row = self._histogram_rows[histogram]
        counts = np.bincount(buckets_of(array), minlength=BUCKETS)
        row[HISTOGRAM_FIRST_BUCKET:] += counts
        row[HISTOGRAM_SUM] += int(array.sum())
        row[HISTOGRAM_COUNT] += int(array.size)
