"""One segment: a ``.log`` file of batches with its ``.index`` and ``.timeindex``.

Files, in the partition directory, named by the segment's base offset in
twenty digits::

    00000000000000004096.log        batches end to end, Kafka v2 format
    00000000000000004096.index      relative offset -> position (index.py)
    00000000000000004096.timeindex  running max timestamp -> relative offset

Invariants:
- Batches follow each other without gaps; base offsets strictly increase
  and every offset of the segment is >= its base offset and below base
  offset + INT32_MAX (relative offsets are int32).
- ``size`` is both the file length and the position of the next append.
- Index entries are added only after the bytes they point to were written.

Crash behaviour: appends go to the page cache; ``flush`` makes them
durable. After a crash the file may end in a torn batch and the indexes
may hold entries past the durable end; :meth:`Segment.recover` validates
batches (length, CRC-32C, increasing offsets) from a given position,
truncates the tail at the first bad one and rebuilds the indexes.

A failed write is undone (the file is cut back to its previous length)
before the error is raised, so the segment is never left with a partial
batch unless that undo fails too (then recovery fixes it on reopen).

Imported by: the writer process (:class:`Segment`, read-write) and net
processes (:class:`SegmentReader`, read-only). One writer per segment; a
reader never writes. Readers use ``os.pread`` for 61-byte headers only and
never read record bytes into Python; they bound every scan by a position the
writer has published, so they never look at a batch still being written.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from broker.log.batch import (
    BATCH_LENGTH,
    HEADER,
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAGIC_V2,
    MIN_BATCH_LENGTH,
    NO_TIMESTAMP,
    BatchHeader,
    validate_batch,
)
from broker.log.index import INT32_MAX, OffsetIndex, TimeIndex

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX)

# Linux refuses writev with more buffers than this (EINVAL).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024

# Most bytes per writev call; a longer append is cut into calls of this size
# (anywhere, even inside a batch: nothing trusts a partial append, see the
# crash notes above). Measured on the 2-core VM this broker is benchmarked
# on (kernel 6.18, ext4, 16 KiB batches into fresh pages, sizes alternated,
# medians of 29-33 runs): 1 MiB calls cost 0.21-0.27 ms of CPU per MiB,
# 256 KiB calls 0.24-0.27, 64 KiB calls 0.31-0.35 (writev or os.write);
# 4 MiB calls often cost 1-2 ms per MiB and 16 MiB calls ran at 250-370
# MiB/s (the page cache allocating large folios, as far as we can tell).
# LIMITATION: while the VM's memory is slow to touch (seconds after a large
# free), calls of 256 KiB and more stayed at 2.5-2.8 ms per MiB after 64 KiB
# calls were back at 0.3-0.5; appends are then slower than small writes.
WRITE_BYTES = 1 << 20

# From this many batches on, an append's index entries are planned with
# numpy instead of a Python loop. Measured here for 16 KiB batches: loop
# 5 us at 16 batches, 15 at 64, 216 at 1024; numpy 15, 15 and 25 us (for
# 1 KiB batches the break-even is nearer 110).
VECTOR_MIN_BATCHES = 64

_BATCH_LENGTH_FIELD = struct.Struct(">i")


def segment_path(directory: Path, base_offset: int, suffix: str) -> Path:
    """``<directory>/<base offset, 20 digits><suffix>``."""
    return directory / f"{base_offset:020d}{suffix}"


def list_segment_base_offsets(directory: Path) -> list[int]:
    """Base offsets of the ``.log`` files in ``directory``, ascending."""
    bases = []
    for path in directory.glob("*" + LOG_SUFFIX):
        stem = path.name[: -len(LOG_SUFFIX)]
        if len(stem) == 20 and stem.isdigit():
            bases.append(int(stem))
    return sorted(bases)


class CorruptSegmentError(ValueError):
    """A reader met bytes that are not a batch header where one must be."""

    def __init__(self, path: Path, position: int, detail: str) -> None:
        self.path = path
        self.position = position
        super().__init__(
            f"{path}: no valid batch header at position {position}: {detail}"
        )


# What the append path knows about one batch after assigning offsets:
# (base offset, last offset, maxTimestamp, size in bytes). A plain tuple,
# not a NamedTuple: building one per batch is on the append path.
BatchMeta = tuple[int, int, int, int]
META_BASE_OFFSET, META_LAST_OFFSET, META_MAX_TIMESTAMP, META_SIZE = range(4)

Int64s = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BatchColumns:
    """:data:`BatchMeta` of consecutive batches as columns: one int64
    element per batch, in log order. The writer process gathers them for a
    whole loop turn with numpy, so no per-batch Python object is needed."""

    base_offset: Int64s
    last_offset: Int64s
    max_timestamp: Int64s
    size: Int64s

    def __len__(self) -> int:
        return len(self.size)

    def metas(self) -> list[BatchMeta]:
        """The same batches as BatchMeta tuples (for the per-batch paths)."""
        return list(
            zip(
                self.base_offset.tolist(),
                self.last_offset.tolist(),
                self.max_timestamp.tolist(),
                self.size.tolist(),
                strict=True,
            )
        )


@dataclass(frozen=True)
class SegmentRecovery:
    """What :meth:`Segment.recover` did, for the caller to report."""

    base_offset: int
    scanned_from: int
    bytes_scanned: int
    batches_scanned: int
    bytes_removed: int
    removed_reason: str | None
    index_rebuilt_reason: str | None


@dataclass
class _Tracking:
    """The append-side state of a segment (copied, then committed)."""

    size: int
    next_offset: int
    max_timestamp: int
    offset_of_max_timestamp: int  # relative
    last_indexed_timestamp: int
    bytes_since_index_entry: int


# New index entries: (key, value) pairs from the per-batch loop, or two
# columns from numpy. Offset index: (relative offset, position); time
# index: (timestamp, relative offset).
_Entries = list[tuple[int, int]] | tuple[Int64s, Int64s]
# The state and the index entries after an append (see Segment._plan).
_Plan = tuple[_Tracking, _Entries, _Entries]


# Bytes one pread of a header scan takes: the default index interval
# (4 KiB) and room for headers past it, so the scan from an index entry to
# the batch it leads to is usually one read. Page-cache bytes copy at
# several GB/s: reading past the batch sought costs less than a syscall.
SCAN_READ_BYTES = 4096 + 2 * HEADER_SIZE


def _read_header(fd: int, position: int) -> BatchHeader | None:
    data = os.pread(fd, HEADER_SIZE, position)
    if len(data) < HEADER_SIZE:
        return None
    return BatchHeader._make(HEADER.unpack_from(data, 0))


def _scan(
    fd: int,
    path: Path,
    start: int,
    end_position: int,
    *,
    offset: int | None = None,
    timestamp: int | None = None,
    expected_base_offset: int | None = None,
) -> tuple[int, BatchHeader] | None:
    """Walk batch headers from ``start`` to the first batch whose last
    offset >= ``offset`` or whose maxTimestamp >= ``timestamp``; None when
    no batch below ``end_position`` qualifies.

    Reads ``SCAN_READ_BYTES`` at a time and walks the headers inside each
    read, so the few kilobytes between an index entry and the batch sought
    cost one pread, not one per batch (small batches: dozens). A header
    beyond the bytes read starts a new read there. Nothing at or past
    ``end_position`` is read: bytes there may still be being written.

    ``expected_base_offset`` is what an index entry promised for the batch
    at ``start``; a mismatch raises CorruptSegmentError.
    """
    position = start
    chunk = b""
    chunk_start = start
    # Every batch is at least HEADER_SIZE bytes, so this loop is bounded.
    while position + HEADER_SIZE <= end_position:
        at = position - chunk_start
        if at + HEADER_SIZE > len(chunk):
            chunk_start, at = position, 0
            chunk = os.pread(
                fd, min(SCAN_READ_BYTES, end_position - position), position
            )
            if len(chunk) < HEADER_SIZE:
                return None  # the file was cut shorter (a truncation raced us)
        header = BatchHeader._make(HEADER.unpack_from(chunk, at))
        if header.magic != MAGIC_V2 or header.batch_length < MIN_BATCH_LENGTH:
            raise CorruptSegmentError(
                path,
                position,
                f"magic {header.magic}, batchLength {header.batch_length}",
            )
        if (
            expected_base_offset is not None
            and header.base_offset != expected_base_offset
        ):
            raise CorruptSegmentError(
                path,
                position,
                f"index promised base offset {expected_base_offset}, "
                f"found {header.base_offset}",
            )
        expected_base_offset = None
        if position + header.size > end_position:
            return None
        if offset is not None and header.last_offset >= offset:
            return position, header
        if timestamp is not None and header.max_timestamp >= timestamp:
            return position, header
        position += header.size
    return None


def _find_position(
    fd: int,
    path: Path,
    offset_index: OffsetIndex,
    base_offset: int,
    offset: int,
    end_position: int,
) -> tuple[int, BatchHeader] | None:
    """Position and header of the first batch below ``end_position`` whose
    last offset >= ``offset`` (the batch holding it); index lookup, then a
    forward header scan. A wrong index entry falls back to a scan from 0."""
    entry = offset_index.lookup(offset - base_offset, end_position)
    if entry is not None:
        relative, position = entry
        try:
            return _scan(
                fd,
                path,
                position,
                end_position,
                offset=offset,
                expected_base_offset=base_offset + relative,
            )
        except CorruptSegmentError:
            pass  # a stale or junk entry: the scan from 0 below decides
    return _scan(fd, path, 0, end_position, offset=offset)


def _find_timestamp(
    fd: int,
    path: Path,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    base_offset: int,
    timestamp: int,
    end_position: int,
) -> tuple[int, BatchHeader] | None:
    """Position and header of the first batch whose maxTimestamp >=
    ``timestamp``. The time index entry before the first entry >= target
    marks a batch whose running maximum is still below it, so the scan may
    start there."""
    slot = time_index.first_at_or_after(timestamp)
    start = 0
    if slot > 0:
        _, relative = time_index.entry(slot - 1)
        found = _find_position(
            fd, path, offset_index, base_offset, base_offset + relative, end_position
        )
        if found is None:
            return None
        start = found[0]
    return _scan(fd, path, start, end_position, timestamp=timestamp)


def _write_all(fd: int, buffers: Sequence[memoryview], total: int) -> int:
    """Write ``buffers`` (``total`` bytes) at the file position with writev
    calls of at most WRITE_BYTES and IOV_MAX buffers; returns the calls
    made. A short write (rare on regular files) is completed."""
    if total <= WRITE_BYTES and len(buffers) <= IOV_MAX:
        written = os.writev(fd, buffers)
        if written != total:
            _write_rest(fd, buffers, written)
        return 1
    calls = 0
    for chunk, chunk_bytes in _write_chunks(buffers):
        written = os.writev(fd, chunk)
        if written != chunk_bytes:
            _write_rest(fd, chunk, written)
        calls += 1
    return calls


def _write_chunks(
    buffers: Sequence[memoryview],
) -> Iterator[tuple[list[memoryview], int]]:
    """Consecutive (buffers, bytes) groups of at most WRITE_BYTES bytes and
    IOV_MAX buffers; a buffer that crosses WRITE_BYTES is cut there."""
    chunk: list[memoryview] = []
    room = WRITE_BYTES
    for buffer in buffers:
        # Each pass takes ``room`` (> 0) bytes off the buffer.
        while len(buffer) > room:
            chunk.append(buffer[:room])
            yield chunk, WRITE_BYTES
            buffer = buffer[room:]
            chunk = []
            room = WRITE_BYTES
        chunk.append(buffer)
        room -= len(buffer)
        if room == 0 or len(chunk) == IOV_MAX:
            yield chunk, WRITE_BYTES - room
            chunk = []
            room = WRITE_BYTES
    if chunk:
        yield chunk, WRITE_BYTES - room


def _write_rest(fd: int, buffers: Sequence[memoryview], written: int) -> None:
    """Finish a writev that stopped after ``written`` bytes. Each round
    writes at least one byte or raises, so the loop ends."""
    for buffer in buffers:
        if written >= len(buffer):
            written -= len(buffer)
            continue
        rest = buffer[written:]
        written = 0
        while len(rest):
            count = os.write(fd, rest)
            if count <= 0:
                raise OSError(errno.EIO, "write made no progress")
            rest = rest[count:]


class Segment:
    """The writer process's handle on one segment (read-write)."""

    def __init__(
        self,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        index_capacity: int,
    ) -> None:
        """Open (creating when missing) the segment's three files.

        ``index_capacity`` 0 maps the indexes at their length (a sealed
        segment); otherwise they take up to that many entries, their files
        growing as entries arrive. The append
        state is set by :meth:`restore_sealed` or :meth:`recover` for an
        existing segment; a new, empty one is ready as is.
        """
        self.directory = directory
        self.base_offset = base_offset
        self.log_path = segment_path(directory, base_offset, LOG_SUFFIX)
        self.index_interval_bytes = index_interval_bytes
        self._fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.lseek(self._fd, 0, os.SEEK_END)
        self._offset_index = OffsetIndex(
            segment_path(directory, base_offset, INDEX_SUFFIX),
            writable=True,
            capacity=index_capacity,
        )
        # One more slot than the offset index: the final entry on seal.
        self._time_index = TimeIndex(
            segment_path(directory, base_offset, TIME_INDEX_SUFFIX),
            writable=True,
            capacity=index_capacity + 1 if index_capacity else 0,
        )
        self._tracking = _Tracking(
            size=size,
            next_offset=base_offset,
            max_timestamp=NO_TIMESTAMP,
            offset_of_max_timestamp=0,
            last_indexed_timestamp=NO_TIMESTAMP,
            bytes_since_index_entry=0,
        )
        self.first_append_ms: int | None = None
        self.sealed = index_capacity == 0

    # -- state ----------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._tracking.size

    @property
    def next_offset(self) -> int:
        """One past the last offset stored (base offset when empty)."""
        return self._tracking.next_offset

    @property
    def max_timestamp(self) -> int:
        """Largest batch maxTimestamp in the segment (-1 when none)."""
        return self._tracking.max_timestamp

    @property
    def index_full(self) -> bool:
        """True when no index entry can be added (the segment should roll)."""
        return (
            self._offset_index.is_full
            or self._time_index.count >= self._time_index.capacity - 1
        )

    @property
    def offset_index(self) -> OffsetIndex:
        return self._offset_index

    @property
    def time_index(self) -> TimeIndex:
        return self._time_index

    # -- append ---------------------------------------------------------------

    def _plan(self, metas: Sequence[BatchMeta]) -> _Plan:
        """The state and index entries after appending ``metas`` at ``size``.

        Entry rule: before a batch, when at least ``index_interval_bytes``
        were appended since the previous entry, index the batch's base
        offset at its position; add a time entry there too when the running
        max timestamp grew since the last time entry.
        """
        state = self._tracking
        size = state.size
        next_offset = state.next_offset
        max_timestamp = state.max_timestamp
        offset_of_max = state.offset_of_max_timestamp
        last_indexed = state.last_indexed_timestamp
        since_entry = state.bytes_since_index_entry
        offset_entries: list[tuple[int, int]] = []
        time_entries: list[tuple[int, int]] = []
        offset_room = self._offset_index.capacity - self._offset_index.count
        time_room = self._time_index.capacity - 1 - self._time_index.count
        interval = self.index_interval_bytes
        segment_base = self.base_offset

        for base_offset, last_offset, batch_max_timestamp, batch_size in metas:
            relative = base_offset - segment_base
            if batch_max_timestamp > max_timestamp:
                max_timestamp = batch_max_timestamp
                offset_of_max = relative
            if (
                since_entry >= interval
                and len(offset_entries) < offset_room
                and len(time_entries) < time_room
            ):
                offset_entries.append((relative, size))
                since_entry = 0
                if max_timestamp > last_indexed:
                    time_entries.append((max_timestamp, relative))
                    last_indexed = max_timestamp
            since_entry += batch_size
            size += batch_size
            next_offset = last_offset + 1
        tracking = _Tracking(
            size, next_offset, max_timestamp, offset_of_max, last_indexed, since_entry
        )
        return tracking, offset_entries, time_entries

    def _plan_columns(self, columns: BatchColumns) -> _Plan:
        """:meth:`_plan` for columns, in numpy: the same state and entries.

        Falls back to :meth:`_plan` for few batches (cheaper there), when an
        index could run out of room (its exact cut-off is sequential) or a
        position would leave int32 (``_plan`` then fails as it always did).
        """
        count = len(columns)
        if count < VECTOR_MIN_BATCHES:
            return self._plan(columns.metas())
        state = self._tracking
        sizes = columns.size
        ends = np.cumsum(sizes)
        total = int(ends[-1])
        if (
            state.size + total > INT32_MAX
            or int(columns.base_offset[-1]) - self.base_offset >= INT32_MAX
        ):
            return self._plan(columns.metas())
        starts = ends - sizes  # bytes before each batch, from ``size`` on

        # Which batches get an offset entry: the first whose start is
        # index_interval_bytes past the previous entry, then each batch at
        # least that far past the previous entry's start.
        interval = self.index_interval_bytes
        first = int(np.searchsorted(starts, interval - state.bytes_since_index_entry))
        entries: Int64s
        if first >= count:
            entries = np.zeros(0, np.int64)
        elif first == count - 1 or int(sizes[first:-1].min()) >= interval:
            # Every batch is at least an interval long: each one after the
            # first entry gets an entry too (the usual case).
            entries = np.arange(first, count, dtype=np.int64)
        else:
            # Bounded: interval > 0 here (a batch is > 0 bytes and some is
            # shorter than the interval), so each step moves forward.
            following = np.searchsorted(starts, starts + interval).tolist()
            walk = [first]
            while (step := following[walk[-1]]) < count:
                walk.append(step)
            entries = np.array(walk, dtype=np.int64)

        # The running max timestamp: where it last grew, and its value at
        # each entry, which gets a time entry when it grew since the last.
        stamps = columns.max_timestamp
        running = np.maximum.accumulate(stamps)
        np.maximum(running, state.max_timestamp, out=running)
        grew = np.flatnonzero(stamps[1:] > running[:-1]) + 1
        relative = columns.base_offset - self.base_offset
        offset_of_max = state.offset_of_max_timestamp
        if len(grew):
            offset_of_max = int(relative[grew[-1]])
        elif stamps[0] > state.max_timestamp:
            offset_of_max = int(relative[0])
        at_entries = running[entries]
        before = np.empty_like(at_entries)
        before[:1] = state.last_indexed_timestamp
        np.maximum(at_entries[:-1], state.last_indexed_timestamp, out=before[1:])
        timed = at_entries > before
        time_stamps = at_entries[timed]

        offset_room = self._offset_index.capacity - self._offset_index.count
        time_room = self._time_index.capacity - 1 - self._time_index.count
        if len(entries) > offset_room or len(time_stamps) >= time_room:
            return self._plan(columns.metas())

        entry_offsets = relative[entries]
        if len(entries):
            since_entry = total - int(starts[entries[-1]])
        else:
            since_entry = state.bytes_since_index_entry + total
        tracking = _Tracking(
            state.size + total,
            int(columns.last_offset[-1]) + 1,
            int(running[-1]),
            offset_of_max,
            int(time_stamps[-1]) if len(time_stamps) else state.last_indexed_timestamp,
            since_entry,
        )
        return (
            tracking,
            (entry_offsets, starts[entries] + state.size),
            (time_stamps, entry_offsets[timed]),
        )

    def _commit(self, plan: _Plan) -> None:
        tracking, offset_entries, time_entries = plan
        # From the loop, a few entries: one store each is cheaper than
        # making arrays of them.
        if isinstance(offset_entries, list):
            for relative, position in offset_entries:
                self._offset_index.append(relative, position)
        elif len(offset_entries[0]):
            self._offset_index.append_many(*offset_entries)
        if isinstance(time_entries, list):
            for timestamp, relative in time_entries:
                self._time_index.append(timestamp, relative)
        elif len(time_entries[0]):
            self._time_index.append_many(*time_entries)
        self._tracking = tracking

    def append(
        self, batches: Sequence[memoryview], metas: Sequence[BatchMeta], now_ms: int
    ) -> int:
        """Append batches whose baseOffset is already assigned (``metas``
        describes them); returns the writev calls made (see WRITE_BYTES).

        On OSError the file is cut back to its previous length and the error
        re-raised; the segment's state is unchanged.
        """
        return self._write(batches, self._plan(metas), now_ms)

    def append_columns(
        self, buffers: Sequence[memoryview], columns: BatchColumns, now_ms: int
    ) -> int:
        """:meth:`append` for batches described by columns. ``buffers``
        hold exactly their bytes, back to back, cut anywhere (one buffer
        per run of batches, say)."""
        return self._write(buffers, self._plan_columns(columns), now_ms)

    def _write(self, buffers: Sequence[memoryview], plan: _Plan, now_ms: int) -> int:
        before = self._tracking.size
        try:
            calls = _write_all(self._fd, buffers, plan[0].size - before)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, before)
                os.lseek(self._fd, before, os.SEEK_SET)
            except OSError as undo:
                exc.add_note(
                    f"cutting {self.log_path} back to {before} bytes failed: {undo}"
                )
            raise

        self._commit(plan)
        if self.first_append_ms is None:
            self.first_append_ms = now_ms
        return calls

    def flush(self) -> None:
        """Make every appended byte and index entry durable; a closed (or
        deleted) segment has nothing left to flush. Another thread may call
        it while the owner appends, not while it seals, unseals, truncates
        or closes the segment (``PartitionLog`` holds its sync lock for
        those and for every flush)."""
        if self._fd < 0:
            return
        os.fdatasync(self._fd)
        self._offset_index.flush()
        self._time_index.flush()

    # -- life cycle -----------------------------------------------------------

    def seal(self) -> None:
        """The segment stops taking appends (roll or close): add the final
        time entry, so the last one holds the segment's largest timestamp,
        and trim both index files to their entries."""
        tracking = self._tracking
        if tracking.max_timestamp > tracking.last_indexed_timestamp and (
            self._time_index.count < self._time_index.capacity
        ):
            self._time_index.append(
                tracking.max_timestamp, tracking.offset_of_max_timestamp
            )
            tracking.last_indexed_timestamp = tracking.max_timestamp
        self._offset_index.trim()
        self._time_index.trim()
        self.sealed = True

    def unseal(self, index_capacity: int) -> None:
        """Take appends again (a truncation made this the last segment)."""
        self._offset_index.ensure_capacity(index_capacity)
        self._time_index.ensure_capacity(index_capacity + 1)
        self.sealed = False
        if self.first_append_ms is None and self.size:
            self.first_append_ms = self.first_batch_timestamp()

    def first_batch_timestamp(self) -> int | None:
        """maxTimestamp of the first batch (None when empty or negative).

        Stands in for the first append's time after a reopen.
        LIMITATION: it is the producer's clock (CreateTime), so a skewed
        client can make a reopened segment roll by segment_ms early or late.
        """
        header = _read_header(self._fd, 0)
        if header is None or header.max_timestamp < 0:
            return None
        return header.max_timestamp

    def restore_sealed(self, next_offset: int) -> str | None:
        """Adopt a sealed segment that the clean point says was flushed,
        with O(1) checks; returns what looked wrong (then the caller
        rebuilds it with ``recover(0)``), None when it was adopted.

        ``next_offset`` is the next segment's base offset: segments are
        contiguous, so no scan is needed to learn this one's end.
        """
        if self._offset_index.damaged or self._time_index.damaged:
            return "index file length is not a whole number of entries"
        # LIMITATION: only the ends of a sealed segment's index are checked;
        # junk in its middle is met by lookups, which then scan from
        # position 0 (slower, still correct) instead of being rebuilt here.
        relative_end = next_offset - self.base_offset
        problem = self._offset_index.quick_check(self.size, relative_end)
        if problem is not None:
            return problem
        last = self._time_index.last()
        if last is not None and not 0 <= last[1] < relative_end:
            return f"time index entry offset {last[1]} outside the segment"
        if self.size == 0 and relative_end != 0:
            return "empty log file for a segment that holds offsets"

        self._tracking.next_offset = next_offset
        if last is not None:
            self._tracking.max_timestamp = last[0]
            self._tracking.offset_of_max_timestamp = last[1]
            self._tracking.last_indexed_timestamp = last[0]
        self.sealed = True
        return None

    def recover(
        self,
        from_position: int,
        *,
        min_base_offset: int,
        rebuild_reason: str | None = None,
    ) -> SegmentRecovery:
        """Validate the batches from ``from_position`` on, cut the file at
        the first bad one and rebuild the indexes past that point.

        Index entries below ``from_position`` are trusted after a full
        consistency check; the scan restarts at the last of them (so the
        state it rebuilds is exact), or at 0 when the index is inconsistent.
        ``min_base_offset`` is the lowest base offset the segment's first
        batch may have (the previous segment's end). ``rebuild_reason``
        forces a rebuild of the indexes (the caller found them wrong).
        """
        size = os.fstat(self._fd).st_size
        from_position = min(from_position, size)
        rebuilt_reason = rebuild_reason or self._trusted_index_problem()
        resume = 0 if rebuilt_reason else self._keep_index_below(from_position)

        view_map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) if size else None
        try:
            view = memoryview(view_map) if view_map is not None else memoryview(b"")
            try:
                if resume and not self._entry_matches(view, resume):
                    rebuilt_reason = (
                        f"index entry at position {resume} does not start a batch"
                    )
                    resume = 0
                if rebuilt_reason:
                    self._offset_index.truncate(0)
                    self._time_index.truncate(0)
                    self._reset_tracking()
                metas, end, removed_reason = self._walk(
                    view, resume, size, min_base_offset if resume == 0 else -1
                )
            finally:
                view.release()
        finally:
            if view_map is not None:
                view_map.close()

        if end < size:
            os.ftruncate(self._fd, end)
        os.lseek(self._fd, end, os.SEEK_SET)
        self._tracking.size = resume
        self._commit(self._plan(metas))
        return SegmentRecovery(
            base_offset=self.base_offset,
            scanned_from=resume,
            bytes_scanned=end - resume,
            batches_scanned=len(metas),
            bytes_removed=size - end,
            removed_reason=removed_reason,
            index_rebuilt_reason=rebuilt_reason,
        )

    def _trusted_index_problem(self) -> str | None:
        if self._offset_index.damaged or self._time_index.damaged:
            return "index file length is not a whole number of entries"
        return self._offset_index.check() or self._time_index.check(INT32_MAX)

    def _reset_tracking(self) -> None:
        self._tracking = _Tracking(
            size=0,
            next_offset=self.base_offset,
            max_timestamp=NO_TIMESTAMP,
            offset_of_max_timestamp=0,
            last_indexed_timestamp=NO_TIMESTAMP,
            bytes_since_index_entry=0,
        )

    def _keep_index_below(self, position: int) -> int:
        """Drop index entries at or past ``position``; set the tracking state
        to the last kept entry and return its position (0 when none)."""
        self._reset_tracking()
        kept = self._offset_index.count_below(position)
        self._offset_index.truncate(kept)
        if kept == 0:
            self._time_index.truncate(0)
            return 0
        relative, resume = self._offset_index.entries()[kept - 1].tolist()
        self._time_index.truncate(self._time_index.count_through(relative))
        last = self._time_index.last()
        if last is not None:
            self._tracking.max_timestamp = last[0]
            self._tracking.offset_of_max_timestamp = last[1]
            self._tracking.last_indexed_timestamp = last[0]
        self._tracking.next_offset = self.base_offset + relative
        return int(resume)

    def _entry_matches(self, view: memoryview, position: int) -> bool:
        expected = self._tracking.next_offset
        if position + HEADER_SIZE > len(view):
            return False
        header = BatchHeader._make(HEADER.unpack_from(view, position))
        return header.base_offset == expected and header.magic == MAGIC_V2

    def _walk(
        self, view: memoryview, position: int, size: int, min_base_offset: int
    ) -> tuple[list[BatchMeta], int, str | None]:
        """Validate batches from ``position``; return their metas, the end
        of the last good one and why the walk stopped early (None at EOF)."""
        metas: list[BatchMeta] = []
        # Each step advances by at least one whole header, so at most
        # size / HEADER_SIZE steps.
        while position < size:
            reason, header = self._check_batch_at(view, position, size, min_base_offset)
            if header is None:
                return metas, position, reason
            metas.append(
                (
                    header.base_offset,
                    header.last_offset,
                    header.max_timestamp,
                    header.size,
                )
            )
            min_base_offset = header.last_offset + 1
            position += header.size
        return metas, position, None

    def _check_batch_at(
        self, view: memoryview, position: int, size: int, min_base_offset: int
    ) -> tuple[str, BatchHeader | None]:
        """The header of the valid batch at ``position``, or why it is not."""
        remaining = size - position
        if remaining < LOG_OVERHEAD:
            return f"torn batch: {remaining} bytes at the end", None
        (batch_length,) = _BATCH_LENGTH_FIELD.unpack_from(view, position + BATCH_LENGTH)
        total = batch_length + LOG_OVERHEAD
        if batch_length < MIN_BATCH_LENGTH:
            return f"invalid batch: batchLength {batch_length} too small", None
        if total > remaining:
            return f"torn batch: {total} bytes declared, {remaining} in the file", None
        problem = validate_batch(view[position : position + total])
        if problem is not None:
            return f"invalid batch: {problem}", None

        header = BatchHeader._make(HEADER.unpack_from(view, position))
        lowest = max(min_base_offset, self.base_offset)
        if header.base_offset < lowest:
            return (
                f"offsets not increasing: base offset {header.base_offset}, "
                f"expected at least {lowest}"
            ), None
        if header.last_offset - self.base_offset >= INT32_MAX:
            return f"offset {header.last_offset} beyond the segment's range", None
        return "", header

    def truncate_to_position(self, position: int) -> int:
        """Cut the segment to ``position`` (a batch boundary) and rebuild the
        state from the index; returns the bytes removed."""
        size = self.size
        if position >= size:
            return 0
        os.ftruncate(self._fd, position)
        self.recover(position, min_base_offset=self.base_offset)
        return size - self.size

    def truncate_to_offset(self, offset: int) -> int:
        """Remove the batch holding ``offset`` and everything after it;
        returns the bytes removed."""
        found = self.find_position(offset)
        if found is None:
            return 0
        return self.truncate_to_position(found[0])

    # -- read side (the writer's own lookups) ---------------------------------

    def find_position(self, offset: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the batch holding ``offset`` (or the first
        batch after it); None when past the last batch."""
        return _find_position(
            self._fd,
            self.log_path,
            self._offset_index,
            self.base_offset,
            offset,
            self.size,
        )

    def find_timestamp(self, timestamp: int) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch with maxTimestamp >= it."""
        return _find_timestamp(
            self._fd,
            self.log_path,
            self._offset_index,
            self._time_index,
            self.base_offset,
            timestamp,
            self.size,
        )

    def close(self) -> None:
        self._offset_index.close()
        self._time_index.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        """Close and unlink the three files. Readers that still hold them
        open keep reading the old inodes until they close."""
        self.close()
        for suffix in SUFFIXES:
            segment_path(self.directory, self.base_offset, suffix).unlink(
                missing_ok=True
            )


class SegmentReader:
    """A read-only view of one segment for processes other than the writer.

    Maps the index files at their current length and reads the ``.log``
    with pread and (by the caller) sendfile. Every lookup is bounded by an
    ``end_position`` the writer published (the high watermark's position
    for the active segment, the file size for sealed ones).
    """

    def __init__(self, directory: Path, base_offset: int) -> None:
        self.base_offset = base_offset
        self.log_path = segment_path(directory, base_offset, LOG_SUFFIX)
        self.fd = os.open(self.log_path, os.O_RDONLY)
        try:
            self._offset_index = OffsetIndex(
                segment_path(directory, base_offset, INDEX_SUFFIX), writable=False
            )
            self._time_index = TimeIndex(
                segment_path(directory, base_offset, TIME_INDEX_SUFFIX), writable=False
            )
        except OSError:
            os.close(self.fd)
            raise

    def find_position(
        self, offset: int, end_position: int
    ) -> tuple[int, BatchHeader] | None:
        """Position and header of the batch holding ``offset`` (or the first
        after it) below ``end_position``; None when there is none."""
        return _find_position(
            self.fd,
            self.log_path,
            self._offset_index,
            self.base_offset,
            offset,
            end_position,
        )

    def find_timestamp(
        self, timestamp: int, end_position: int
    ) -> tuple[int, BatchHeader] | None:
        """Position and header of the first batch with maxTimestamp >= it."""
        return _find_timestamp(
            self.fd,
            self.log_path,
            self._offset_index,
            self._time_index,
            self.base_offset,
            timestamp,
            end_position,
        )

    def close(self) -> None:
        self._offset_index.close()
        self._time_index.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
