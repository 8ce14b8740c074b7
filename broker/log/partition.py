"""The log of one topic-partition: segments, offsets, rolls, retention, recovery.

Directory ``<data>/<topic>-<partition>/``::

    00000000000000000000.log / .index / .timeindex    sealed segments
    00000000000000081920.log / .index / .timeindex    the active segment
    log-state.json                                     clean point, log start

Invariants:
- Offsets are contiguous: the writer assigns each batch baseOffset = the
  log end offset, and the next batch starts at baseOffset +
  lastOffsetDelta + 1. Segments are contiguous too: a segment's base offset
  is the previous segment's end, so a sealed segment's end is the next
  segment's base offset.
- Only the last (active) segment takes appends. Retention and DeleteRecords
  delete whole segments from the front, never the active one, and move the
  log start offset.

Appends: :meth:`PartitionLog.append` takes one memoryview per batch, reads
each header and rewrites each baseOffset itself; the writer process uses
:meth:`PartitionLog.append_assigned`, which takes runs of batches with
their baseOffsets already set and their header fields as numpy columns, so
a loop turn costs no Python work per batch. Both write with writev calls of
at most ``WRITE_BYTES`` (``broker.log.segment``). A LogAppendTime log
(``LogConfig.log_append_time``) first stamps every batch with the append
time and a new CRC, one CRC per batch; CreateTime logs skip that.

The clean point (``log-state.json``): a (segment base offset, position)
below which every byte was fdatasync'ed, with the indexes msync'ed. It is
written atomically (temporary file, fsync, rename, fsync of the directory)
by :meth:`PartitionLog.checkpoint` (the periodic flush and a clean close)
and after truncations. On open, segments before the clean point are adopted
with O(1) checks; only the clean point's segment (from its last index entry
below the clean position) and the segments after it are validated, so
recovery time depends on the unflushed data, not on the total. Without a
state file every segment is validated. The file also keeps the log start
offset that DeleteRecords set (a retention move needs no record: it follows
from the first segment's base offset).

Failure: an append whose write fails (ENOSPC, EIO, ...) is undone (every
segment cut back to its size before the call, segments rolled during the
call deleted), then the log refuses appends with the same
:class:`LogStorageError` until it is reopened, which runs recovery. A failed
fdatasync is sticky the same way, since the kernel may have dropped the
dirty pages.

Periodic checkpoint off the append loop: the writer's main thread takes a
:class:`CheckpointJob` (:meth:`PartitionLog.prepare_checkpoint`: the
segments appended to since their last sync, and the log end as the clean
point to record) and a flusher thread runs it
(:meth:`PartitionLog.run_checkpoint`: fdatasync, then the state file). The
clean point is taken before the sync starts, so it never covers bytes that
sync did not see. A per-log sync lock is held around every sync and state
write and around every change that closes, remaps or removes files (roll,
truncation, retention, undo, close), never around an append; a job taken
before a truncation or close records nothing (the state-file generation
changed).

Imported by: the writer process only (one PartitionLog per partition).
Only the writer's main thread calls the methods that change the log;
:meth:`PartitionLog.run_checkpoint` may run in another thread, and
:meth:`PartitionLog.flush` in another thread while the main thread waits
for it. Other processes read segments through ``SegmentReader``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from broker.log.batch import (
    APPEND_FIELDS,
    BASE_OFFSET_FIELD,
    BATCH_LENGTH,
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAGIC_V2,
    stamp_log_append_time,
    stamp_log_append_times,
)
from broker.log.index import INT32_MAX
from broker.log.records import find_record_in_file
from broker.log.segment import (
    META_BASE_OFFSET,
    META_LAST_OFFSET,
    META_SIZE,
    SUFFIXES,
    BatchColumns,
    BatchMeta,
    Int64s,
    Segment,
    list_segment_base_offsets,
    segment_path,
)
from broker.logs import event
from broker.settings import Settings

logger = logging.getLogger(__name__)

STATE_FILE = "log-state.json"

# Kafka's default segment.index.bytes (10 MiB) in 8-byte entries; a segment
# whose index fills up rolls early.
MAX_INDEX_ENTRIES = (10 << 20) // 8
STATE_FORMAT = 1

# Kafka's rule for topic names; also keeps a name from leaving the data dir.
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

# baseOffset and batchLength, the first 12 bytes of a batch.
_OFFSET_AND_LENGTH = struct.Struct(">qi")


@dataclass(frozen=True)
class LogConfig:
    """The storage settings one partition log obeys."""

    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * 24 * 3600 * 1000
    index_interval_bytes: int = 4096
    retention_ms: int = 7 * 24 * 3600 * 1000  # -1: keep forever
    retention_bytes: int = -1  # -1: no size limit
    # message.timestamp.type=LogAppendTime: every appended batch is stamped
    # with the append time (attributes bit 3, maxTimestamp, a new CRC).
    log_append_time: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LogConfig:
        return cls(
            segment_bytes=settings.segment_bytes,
            segment_ms=settings.segment_ms,
            index_interval_bytes=settings.index_interval_bytes,
            retention_ms=settings.retention_ms,
            retention_bytes=settings.retention_bytes,
        )

    @property
    def index_capacity(self) -> int:
        """Entries one segment's offset index can need: one per interval of
        a full segment, and never more than one per batch (a batch is at
        least a header), plus slack for the batch that crosses the limit;
        at most MAX_INDEX_ENTRIES."""
        step = max(self.index_interval_bytes, HEADER_SIZE)
        return min(self.segment_bytes // step + 2, MAX_INDEX_ENTRIES)


class LogStorageError(Exception):
    """A write or sync of a partition's files failed; the log refuses
    appends until reopened. Carries the topic-partition and the OSError."""

    def __init__(self, topic_partition: str, operation: str, cause: OSError) -> None:
        self.topic_partition = topic_partition
        self.operation = operation
        self.cause = cause
        super().__init__(
            f"{topic_partition}: {operation} failed: {cause}; the log refuses "
            "appends until it is reopened (reopening runs recovery)"
        )


class OffsetOutOfRangeError(ValueError):
    """An offset outside [log start offset, log end offset]."""

    def __init__(self, topic_partition: str, offset: int, start: int, end: int) -> None:
        self.topic_partition = topic_partition
        self.offset = offset
        self.log_start_offset = start
        self.log_end_offset = end
        super().__init__(
            f"{topic_partition}: offset {offset} outside the log [{start}, {end}]"
        )


class ReadPosition(NamedTuple):
    """Where a reader starts: the batch holding the offset asked for."""

    segment_base_offset: int
    position: int
    path: Path


@dataclass(frozen=True)
class RemovedTail:
    """Bytes that recovery cut from the end of a segment, and why."""

    segment_base_offset: int
    position: int
    bytes: int
    reason: str


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the log did, so the caller can log or assert on it."""

    clean_point: tuple[int, int] | None
    segments_scanned: tuple[int, ...]
    bytes_scanned: int
    removed: tuple[RemovedTail, ...]
    indexes_rebuilt: tuple[int, ...]
    segments_deleted: tuple[int, ...]


@dataclass(frozen=True)
class PartitionLogStatistics:
    log_start_offset: int
    log_end_offset: int
    segments: int
    size_bytes: int
    active_segment_base_offset: int
    active_segment_bytes: int


@dataclass(frozen=True)
class CheckpointJob:
    """What one periodic checkpoint of a log syncs and records, taken by
    :meth:`PartitionLog.prepare_checkpoint` on the writer's main thread and
    run by :meth:`PartitionLog.run_checkpoint` in the flusher thread."""

    segments: tuple[Segment, ...]
    # The log end when the job was taken: every byte below it is either in
    # ``segments`` or was synced before.
    clean_point: tuple[int, int]
    # The log's state-file generation when the job was taken (see
    # PartitionLog._epoch).
    epoch: int


@dataclass(frozen=True)
class _State:
    clean_segment_base_offset: int
    clean_position: int
    log_start_offset: int


class _BufferCursor:
    """Hands out the bytes of a list of buffers front to back, as views."""

    def __init__(self, buffers: Sequence[memoryview]) -> None:
        self._buffers = buffers
        self._index = 0
        self._offset = 0  # bytes of buffers[_index] already handed out

    def take(self, nbytes: int) -> list[memoryview]:
        """The next ``nbytes`` bytes; whole buffers stay the same objects.
        Raises IndexError past the end."""
        taken: list[memoryview] = []
        # Each pass hands out the rest of one buffer or ends the loop.
        while nbytes > 0:
            buffer = self._buffers[self._index]
            left = len(buffer) - self._offset
            if left > nbytes:
                taken.append(buffer[self._offset : self._offset + nbytes])
                self._offset += nbytes
                return taken
            taken.append(buffer[self._offset :] if self._offset else buffer)
            nbytes -= left
            self._index += 1
            self._offset = 0
        return taken


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartitionLog:
    """The append-only log of one topic-partition, owned by the writer."""

    def __init__(
        self,
        directory: Path,
        topic_partition: str,
        config: LogConfig,
        segments: list[Segment],
        log_start_offset: int,
        clean_point: tuple[int, int] | None,
        recovery: RecoveryReport,
    ) -> None:
        """Use :meth:`open`."""
        self.directory = directory
        self.topic_partition = topic_partition
        self.config = config
        self._segments = segments
        self._bases = [segment.base_offset for segment in segments]
        self._log_start_offset = log_start_offset
        self._clean_point = clean_point
        self._persisted_log_start_offset = log_start_offset
        # Segments appended to since they were last synced (main thread).
        self._unflushed: dict[int, Segment] = {}
        # Segments handed to a checkpoint job that has not synced them yet.
        self._syncing: dict[int, Segment] = {}
        # Held around every sync and every change that closes, remaps or
        # removes files (roll, truncation, deletion, close, undo) and around
        # state-file writes, so a flusher thread never syncs a file being
        # changed under it. Appends do not take it.
        self._sync_lock = threading.RLock()
        # Bumped by every state-file write: a checkpoint job taken before
        # another write (a truncation, a close) records nothing.
        self._epoch = 0
        self._failure: LogStorageError | None = None
        self.recovery = recovery
        self.segments_version = 0

    # -- opening and recovery -------------------------------------------------

    @classmethod
    def open(
        cls, data_dir: Path, topic: str, partition: int, config: LogConfig
    ) -> PartitionLog:
        """Open or create ``<data_dir>/<topic>-<partition>/`` and recover it."""
        if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
            raise ValueError(
                f"topic name {topic!r}: use 1-249 characters of A-Z a-z 0-9 . _ -"
            )
        if partition < 0:
            raise ValueError(f"partition {partition}: must be >= 0")
        topic_partition = f"{topic}-{partition}"
        directory = data_dir / topic_partition
        directory.mkdir(parents=True, exist_ok=True)

        # Left by an interrupted rename or a crash mid-trim; never needed.
        for leftover in directory.glob("*.tmp"):
            leftover.unlink()
        state = cls._read_state(directory, topic_partition)
        bases = list_segment_base_offsets(directory)
        cls._remove_orphan_indexes(directory, bases)

        segments, report = cls._recover_segments(
            directory, topic_partition, config, bases, state
        )
        log_start_offset = segments[0].base_offset
        if state is not None:
            log_start_offset = max(log_start_offset, state.log_start_offset)
        log_start_offset = min(log_start_offset, segments[-1].next_offset)

        log = cls(
            directory,
            topic_partition,
            config,
            segments,
            log_start_offset,
            None
            if state is None
            else (state.clean_segment_base_offset, state.clean_position),
            report,
        )
        # Recovered bytes may sit only in the page cache: make them durable
        # before the clean point moves past them.
        for segment in segments:
            if segment.base_offset in report.segments_scanned:
                log._unflushed[segment.base_offset] = segment
        if report.segments_scanned or state is None:
            log._checkpoint_or_fail()

        level = (
            logging.WARNING
            if report.removed or report.indexes_rebuilt
            else logging.INFO
        )
        event(
            logger,
            level,
            "log.recovered",
            topic_partition=topic_partition,
            clean_point=report.clean_point,
            segments=len(segments),
            segments_scanned=len(report.segments_scanned),
            bytes_scanned=report.bytes_scanned,
            bytes_removed=sum(removed.bytes for removed in report.removed),
            indexes_rebuilt=len(report.indexes_rebuilt),
            segments_deleted=len(report.segments_deleted),
            log_start_offset=log.log_start_offset,
            log_end_offset=log.log_end_offset,
        )
        return log

    @staticmethod
    def _read_state(directory: Path, topic_partition: str) -> _State | None:
        path = directory / STATE_FILE
        try:
            data = json.loads(path.read_text())
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return _State(
                clean_segment_base_offset=int(data["clean_segment_base_offset"]),
                clean_position=int(data["clean_position"]),
                log_start_offset=int(data["log_start_offset"]),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            event(
                logger,
                logging.WARNING,
                "log.state_unreadable",
                topic_partition=topic_partition,
                path=path,
                error=exc,
                action="validating every segment",
            )
            return None

    @staticmethod
    def _remove_orphan_indexes(directory: Path, bases: list[int]) -> None:
        present = set(bases)
        for suffix in SUFFIXES[1:]:
            for path in directory.glob("*" + suffix):
                stem = path.name[: -len(suffix)]
                if len(stem) == 20 and stem.isdigit() and int(stem) not in present:
                    path.unlink()

    @staticmethod
    def _recover_segments(
        directory: Path,
        topic_partition: str,
        config: LogConfig,
        bases: list[int],
        state: _State | None,
    ) -> tuple[list[Segment], RecoveryReport]:
        """Open every segment: adopt those before the clean point, validate
        the clean point's segment from the clean position and all later
        ones from their start. After a segment whose tail had to be cut, the
        later segments cannot follow it and are deleted."""
        if not bases:
            start = 0 if state is None else state.log_start_offset
            segment = Segment(
                directory,
                start,
                index_interval_bytes=config.index_interval_bytes,
                index_capacity=config.index_capacity,
            )
            report = RecoveryReport(None, (), 0, (), (), ())
            return [segment], report

        clean = (
            None
            if state is None
            else (state.clean_segment_base_offset, state.clean_position)
        )
        segments: list[Segment] = []
        scanned: list[int] = []
        removed: list[RemovedTail] = []
        rebuilt: list[int] = []
        deleted: list[int] = []
        bytes_scanned = 0

        for number, base in enumerate(bases):
            is_last = number == len(bases) - 1
            if removed:
                # An earlier segment lost its tail: offsets would not connect.
                Segment(
                    directory, base, index_interval_bytes=1, index_capacity=0
                ).delete()
                deleted.append(base)
                event(
                    logger,
                    logging.WARNING,
                    "segment.deleted",
                    topic_partition=topic_partition,
                    base_offset=base,
                    reason="follows_truncated_segment",
                )
                continue

            trusted = clean is not None and (base < clean[0])
            segment = Segment(
                directory,
                base,
                index_interval_bytes=config.index_interval_bytes,
                index_capacity=0 if trusted and not is_last else config.index_capacity,
            )
            from_position = 0
            problem = None
            if trusted and not is_last:
                problem = segment.restore_sealed(bases[number + 1])
                if problem is None:
                    segments.append(segment)
                    continue
                segment.unseal(config.index_capacity)
            elif trusted:
                from_position = segment.size
            elif clean is not None and base == clean[0]:
                from_position = clean[1]

            previous_end = segments[-1].next_offset if segments else base
            result = segment.recover(
                from_position, min_base_offset=previous_end, rebuild_reason=problem
            )
            scanned.append(base)
            bytes_scanned += result.bytes_scanned
            if result.index_rebuilt_reason is not None:
                rebuilt.append(base)
                event(
                    logger,
                    logging.WARNING,
                    "segment.index_rebuilt",
                    topic_partition=topic_partition,
                    base_offset=base,
                    reason=result.index_rebuilt_reason,
                )
            if result.bytes_removed:
                tail = RemovedTail(
                    base,
                    segment.size,
                    result.bytes_removed,
                    result.removed_reason or "",
                )
                removed.append(tail)
                event(
                    logger,
                    logging.WARNING,
                    "log.truncated",
                    topic_partition=topic_partition,
                    cause="recovery",
                    segment_base_offset=base,
                    position=tail.position,
                    bytes_removed=tail.bytes,
                    reason=tail.reason,
                )
            if not is_last and not removed:
                segment.seal()
            segments.append(segment)

        active = segments[-1]
        if active.sealed:
            active.unseal(config.index_capacity)
        elif active.size:
            active.first_append_ms = active.first_batch_timestamp()
        report = RecoveryReport(
            clean_point=clean,
            segments_scanned=tuple(scanned),
            bytes_scanned=bytes_scanned,
            removed=tuple(removed),
            indexes_rebuilt=tuple(rebuilt),
            segments_deleted=tuple(deleted),
        )
        return segments, report

    # -- offsets --------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._segments[-1].next_offset

    @property
    def active_segment_base_offset(self) -> int:
        return self._segments[-1].base_offset

    @property
    def end_position(self) -> int:
        """Byte position of the end of the active segment (the next append)."""
        return self._segments[-1].size

    def segment_base_offsets(self) -> list[int]:
        return list(self._bases)

    def statistics(self) -> PartitionLogStatistics:
        active = self._segments[-1]
        return PartitionLogStatistics(
            log_start_offset=self._log_start_offset,
            log_end_offset=active.next_offset,
            segments=len(self._segments),
            size_bytes=sum(segment.size for segment in self._segments),
            active_segment_base_offset=active.base_offset,
            active_segment_bytes=active.size,
        )

    # -- append ---------------------------------------------------------------

    def append(self, batches: Sequence[memoryview], now_ms: int) -> tuple[int, int]:
        """Assign offsets to ``batches`` (rewriting each baseOffset in place)
        and append them; returns (first base offset, last offset).

        ``batches`` are writable memoryviews of unsigned bytes, each holding
        exactly one batch already checked by ``validate_batch``; all of one
        call go to the file with as few writev calls as WRITE_BYTES allows.
        A malformed batch raises ValueError before anything is changed. A
        failed write raises LogStorageError and leaves the log as it was
        before the call.
        """
        if self._failure is not None:
            raise self._failure
        if not batches:
            raise ValueError(f"{self.topic_partition}: append needs at least one batch")

        metas = self._assign_offsets(batches)
        if self.config.log_append_time:
            for view in batches:
                stamp_log_append_time(view, now_ms)
            metas = [(base, last, now_ms, size) for base, last, _, size in metas]
        total = sum([meta[META_SIZE] for meta in metas])
        self._append_or_undo(batches, metas, None, total, now_ms)
        return metas[0][META_BASE_OFFSET], metas[-1][META_LAST_OFFSET]

    def append_assigned(
        self, buffers: Sequence[memoryview], columns: BatchColumns, now_ms: int
    ) -> int:
        """Append batches whose baseOffsets the caller has already set, as
        ``columns`` describes them; returns the writev calls made.

        The writer process's path: it reads the header fields of a whole
        loop turn with numpy and rewrites the baseOffsets in its ring, so
        nothing here touches a batch one by one. ``buffers`` hold the
        batches back to back, each buffer one or more whole batches (the
        ring's contiguous runs). ``columns.base_offset`` must start at the
        log end offset and continue each previous batch's last offset + 1
        (``next_base_offsets`` computes them); the columns and the bytes
        are checked for that, for their totals and for the first batch's
        baseOffset and batchLength, and ValueError is raised before
        anything changes if they disagree. The records are not checked
        again (the caller checked each batch's framing). A failed write
        raises LogStorageError and leaves the log as it was.

        Under LogAppendTime (``config.log_append_time``) every batch is
        stamped with ``now_ms`` in ``buffers`` (attributes bit 3,
        maxTimestamp, CRC; one CRC per batch), and the indexes and retention
        use ``now_ms``; CreateTime logs skip this.
        """
        if self._failure is not None:
            raise self._failure
        total = self._check_columns(buffers, columns)
        # LIMITATION: on a CreateTime log, a batch its producer flagged
        # LogAppendTime keeps the flag and its maxTimestamp (Kafka resets
        # both); clients do not send such batches.
        if self.config.log_append_time:
            stamp_log_append_times(buffers, columns.size.tolist(), now_ms)
            columns = BatchColumns(
                base_offset=columns.base_offset,
                last_offset=columns.last_offset,
                max_timestamp=np.full(len(columns), now_ms, np.int64),
                size=columns.size,
            )
        return self._append_or_undo(buffers, None, columns, total, now_ms)

    def next_base_offsets(self, last_offset_deltas: npt.NDArray[np.int64]) -> Int64s:
        """The base offsets batches with these lastOffsetDeltas get when
        appended now, in order: the log end offset, then each previous
        batch's last offset + 1."""
        counts = np.add(last_offset_deltas, 1, dtype=np.int64)
        # The method skips np.cumsum's Python-level dispatch (about 1 us).
        bases: Int64s = counts.cumsum()
        bases += self.log_end_offset
        bases -= counts
        return bases

    def _check_columns(
        self, buffers: Sequence[memoryview], columns: BatchColumns
    ) -> int:
        """Total bytes of ``columns``; ValueError unless they describe
        contiguous offsets from the log end and match the buffers' length
        and the first batch's header."""
        name = self.topic_partition
        count = len(columns)
        if not count or not buffers:
            raise ValueError(f"{name}: append needs at least one batch")
        bases = columns.base_offset
        lasts = columns.last_offset
        sizes = columns.size
        if not len(bases) == len(lasts) == len(columns.max_timestamp) == count:
            raise ValueError(f"{name}: batch columns of different lengths")
        if int(bases[0]) != self.log_end_offset:
            raise ValueError(
                f"{name}: first base offset {int(bases[0])}, log end offset "
                f"{self.log_end_offset}"
            )
        # count_nonzero of the failures: the cheapest numpy form of these
        # tests for the few batches of a small turn.
        if (
            np.count_nonzero(lasts < bases)
            or np.count_nonzero(bases[1:] != lasts[:-1] + 1)
            or np.count_nonzero(sizes < HEADER_SIZE)
        ):
            raise ValueError(
                f"{name}: batch columns are not contiguous offsets of whole "
                "batches (last offset >= base offset, base offset = previous "
                f"last offset + 1, size >= {HEADER_SIZE})"
            )
        total = int(sizes.sum())
        buffered = sum([len(buffer) for buffer in buffers])
        if buffered != total:
            raise ValueError(
                f"{name}: buffers hold {buffered} bytes, the batches {total}"
            )
        first = buffers[0]
        if len(first) < LOG_OVERHEAD or _OFFSET_AND_LENGTH.unpack_from(first, 0) != (
            int(bases[0]),
            int(sizes[0]) - LOG_OVERHEAD,
        ):
            raise ValueError(
                f"{name}: the first buffer does not start with a batch of base "
                f"offset {int(bases[0])} and {int(sizes[0])} bytes"
            )
        return total

    def _assign_offsets(self, batches: Sequence[memoryview]) -> list[BatchMeta]:
        """Check every batch's framing, then rewrite baseOffsets; nothing is
        rewritten unless all batches pass."""
        metas: list[BatchMeta] = []
        next_offset = self._segments[-1].next_offset
        unpack = APPEND_FIELDS.unpack_from
        for view in batches:
            try:
                batch_length, magic, last_delta, max_timestamp = unpack(
                    view, BATCH_LENGTH
                )
            except (struct.error, TypeError) as exc:
                raise ValueError(
                    f"{self.topic_partition}: batch {len(metas)} ({len(view)} bytes) "
                    "is shorter than a batch header"
                ) from exc
            size = batch_length + LOG_OVERHEAD
            if (
                magic != MAGIC_V2
                or size != len(view)
                or last_delta < 0
                or view.readonly
            ):
                raise ValueError(
                    f"{self.topic_partition}: batch {len(metas)} is malformed or "
                    f"read-only: magic {magic}, batchLength {batch_length} for "
                    f"{len(view)} bytes, lastOffsetDelta {last_delta}, "
                    f"read-only {view.readonly}"
                )
            last_offset = next_offset + last_delta
            metas.append((next_offset, last_offset, max_timestamp, size))
            next_offset = last_offset + 1

        pack = BASE_OFFSET_FIELD.pack_into
        for view, meta in zip(batches, metas, strict=True):
            pack(view, 0, meta[META_BASE_OFFSET])
        return metas

    def _roll_reason(
        self, active: Segment, pending: int, meta: BatchMeta, now_ms: int
    ) -> str | None:
        if active.size + pending == 0:
            return None  # an empty segment takes any batch, however large
        if active.size + pending + meta[META_SIZE] > self.config.segment_bytes:
            return "segment_bytes"
        if meta[META_LAST_OFFSET] - active.base_offset >= INT32_MAX:
            return "offset_range"
        if pending:
            return None
        if active.index_full:
            return "index_full"
        if (
            active.first_append_ms is not None
            and now_ms - active.first_append_ms >= self.config.segment_ms
        ):
            return "segment_ms"
        return None

    def _append_or_undo(
        self,
        buffers: Sequence[memoryview],
        metas: list[BatchMeta] | None,
        columns: BatchColumns | None,
        total: int,
        now_ms: int,
    ) -> int:
        """Write batches described by ``metas`` or ``columns`` (``total``
        bytes), undoing everything on a failed write; returns writev calls."""
        segments_before = len(self._segments)
        size_before = self._segments[-1].size
        try:
            return self._write_groups(buffers, metas, columns, total, now_ms)
        except OSError as exc:
            self._failure = LogStorageError(self.topic_partition, "append", exc)
            self._undo_append(segments_before, size_before, exc)
            raise self._failure from exc

    def _write_groups(
        self,
        buffers: Sequence[memoryview],
        metas: list[BatchMeta] | None,
        columns: BatchColumns | None,
        total: int,
        now_ms: int,
    ) -> int:
        """Write in groups, one per segment, rolling between groups."""
        active = self._segments[-1]

        # The common case, checked once for the whole call: everything fits.
        if columns is not None:
            last_offset = int(columns.last_offset[-1])
        else:
            assert metas is not None
            last_offset = metas[-1][META_LAST_OFFSET]
        if (
            active.size + total <= self.config.segment_bytes
            and last_offset - active.base_offset < INT32_MAX
            and not active.index_full
            and (
                active.first_append_ms is None
                or now_ms - active.first_append_ms < self.config.segment_ms
            )
        ):
            if columns is not None:
                calls = active.append_columns(buffers, columns, now_ms)
            else:
                assert metas is not None
                calls = active.append(buffers, metas, now_ms)
            self._unflushed[active.base_offset] = active
            return calls

        # A roll within the call (once per segment): batch by batch.
        if metas is None:
            assert columns is not None
            metas = columns.metas()
        cursor = _BufferCursor(buffers)
        calls = 0
        start = 0
        pending = 0
        for number, meta in enumerate(metas):
            reason = self._roll_reason(active, pending, meta, now_ms)
            if reason is not None:
                if number > start:
                    calls += active.append(
                        cursor.take(pending), metas[start:number], now_ms
                    )
                    self._unflushed[active.base_offset] = active
                active = self._roll(reason)
                start = number
                pending = 0
            pending += meta[META_SIZE]
        calls += active.append(cursor.take(pending), metas[start:], now_ms)
        self._unflushed[active.base_offset] = active
        return calls

    def _roll(self, reason: str) -> Segment:
        previous = self._segments[-1]
        # Sealing trims the index files (new files, new mappings).
        with self._sync_lock:
            previous.seal()
        segment = Segment(
            self.directory,
            previous.next_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            index_capacity=self.config.index_capacity,
        )
        self._segments.append(segment)
        self._bases.append(segment.base_offset)
        self.segments_version += 1
        event(
            logger,
            logging.INFO,
            "segment.rolled",
            topic_partition=self.topic_partition,
            base_offset=segment.base_offset,
            previous_base_offset=previous.base_offset,
            previous_bytes=previous.size,
            reason=reason,
        )
        return segment

    def _undo_append(
        self, segments_before: int, size_before: int, cause: OSError
    ) -> None:
        """Put the log back as it was before a failed append. If this fails
        too, the failure stays sticky and recovery on reopen repairs it."""
        with self._sync_lock:
            try:
                while len(self._segments) > segments_before:
                    rolled = self._segments.pop()
                    self._bases.pop()
                    self._unflushed.pop(rolled.base_offset, None)
                    self._syncing.pop(rolled.base_offset, None)
                    rolled.delete()
                active = self._segments[-1]
                if active.sealed:
                    active.unseal(self.config.index_capacity)
                active.truncate_to_position(size_before)
            except OSError as undo:
                cause.add_note(f"undoing the append failed: {undo}")
            self.segments_version += 1

    # -- durability -----------------------------------------------------------

    def flush(self) -> None:
        """fdatasync every segment appended to since the last flush (the
        acks=-1 group commit: one call covers a whole loop turn). Safe from
        another thread while the writer's main thread waits for it; waits
        for a checkpoint job syncing this log, so a sync error that job met
        is seen here too."""
        with self._sync_lock:
            if self._failure is not None:
                raise self._failure
            if not self._unflushed:
                return
            self._sync_or_fail(list(self._unflushed.values()))
            self._unflushed.clear()

    def _sync_or_fail(self, segments: Sequence[Segment]) -> None:
        """fdatasync ``segments``; a failure is sticky (the kernel may have
        dropped the dirty pages, so a later sync could not prove them)."""
        try:
            for segment in segments:
                segment.flush()
        except OSError as exc:
            self._failure = LogStorageError(self.topic_partition, "fdatasync", exc)
            raise self._failure from exc

    def checkpoint(self) -> None:
        """Flush, then record the clean point, in the calling thread."""
        if self._failure is not None:
            raise self._failure
        self._checkpoint_or_fail()

    def _checkpoint_or_fail(self) -> None:
        with self._sync_lock:
            # Segments a pending job holds are synced here too: the clean
            # point recorded below covers them.
            pending = {**self._syncing, **self._unflushed}
            self._sync_or_fail(list(pending.values()))
            self._unflushed.clear()
            self._syncing.clear()
            active = self._segments[-1]
            clean_point = (active.base_offset, active.size)
            if (
                clean_point == self._clean_point
                and self._log_start_offset == self._persisted_log_start_offset
            ):
                return
            self._record_or_fail(clean_point)

    def _record_or_fail(self, clean_point: tuple[int, int]) -> None:
        try:
            self._write_state(clean_point)
        except OSError as exc:
            self._failure = LogStorageError(
                self.topic_partition, "writing the clean point", exc
            )
            raise self._failure from exc

    def prepare_checkpoint(self) -> CheckpointJob | None:
        """The periodic checkpoint, first half (writer main thread, between
        turns): hand the segments appended to since the last sync to a job
        whose clean point is the log end now. None when there is nothing
        to record.

        Run the job with :meth:`run_checkpoint`, in another thread if need
        be, and take no other job of this log until that returned: then no
        other thread holds the sync lock here and this does not wait.
        """
        if self._failure is not None:
            raise self._failure
        with self._sync_lock:
            active = self._segments[-1]
            clean_point = (active.base_offset, active.size)
            if (
                not self._unflushed
                and not self._syncing
                and clean_point == self._clean_point
                and self._log_start_offset == self._persisted_log_start_offset
            ):
                return None
            self._syncing.update(self._unflushed)
            self._unflushed.clear()
            return CheckpointJob(
                tuple(self._syncing.values()), clean_point, self._epoch
            )

    def run_checkpoint(self, job: CheckpointJob) -> bool:
        """The periodic checkpoint, second half (any thread): fdatasync the
        job's segments, then record its clean point. False when the log
        failed, or a state file was written since the job was taken (a
        truncation or close: its clean point may no longer hold); then
        nothing is recorded. A failed sync or write raises LogStorageError
        and is sticky, as in :meth:`flush`.

        The lock is dropped between the sync and the state write so a
        group commit of this log waits for one of them only.
        """
        with self._sync_lock:
            if self._failure is not None or job.epoch != self._epoch:
                return False
            self._sync_or_fail(job.segments)
            for segment in job.segments:
                if self._syncing.get(segment.base_offset) is segment:
                    del self._syncing[segment.base_offset]
        with self._sync_lock:
            if self._failure is not None or job.epoch != self._epoch:
                return False
            if (
                job.clean_point != self._clean_point
                or self._log_start_offset != self._persisted_log_start_offset
            ):
                self._record_or_fail(job.clean_point)
        return True

    def _write_state(self, clean_point: tuple[int, int] | None) -> None:
        """Write log-state.json atomically: temp file, fsync, rename, fsync
        dir. The caller holds the sync lock."""
        if clean_point is None:
            clean_point = self._clean_point or (self._segments[0].base_offset, 0)
        # Read once: the main thread may move it while a flusher writes.
        log_start_offset = self._log_start_offset
        data = json.dumps(
            {
                "format": STATE_FORMAT,
                "clean_segment_base_offset": clean_point[0],
                "clean_position": clean_point[1],
                "log_start_offset": log_start_offset,
            }
        ).encode()
        temporary = self.directory / (STATE_FILE + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.directory / STATE_FILE)
        _fsync_directory(self.directory)
        self._clean_point = clean_point
        self._persisted_log_start_offset = log_start_offset
        self._epoch += 1

    # -- retention and deletion -----------------------------------------------

    def _delete_oldest(self, reason: str) -> int:
        with self._sync_lock:
            segment = self._segments.pop(0)
            self._bases.pop(0)
            self._unflushed.pop(segment.base_offset, None)
            self._syncing.pop(segment.base_offset, None)
            size = segment.size
            max_timestamp = segment.max_timestamp
            segment.delete()
        self.segments_version += 1
        self._log_start_offset = max(
            self._log_start_offset, self._segments[0].base_offset
        )
        event(
            logger,
            logging.INFO,
            "segment.deleted",
            topic_partition=self.topic_partition,
            base_offset=segment.base_offset,
            bytes=size,
            max_timestamp=max_timestamp,
            reason=reason,
            log_start_offset=self._log_start_offset,
        )
        return segment.base_offset

    def enforce_retention(self, now_ms: int) -> list[int]:
        """Delete the oldest sealed segments whose largest timestamp is older
        than retention_ms, then the oldest while the log is larger than
        retention_bytes; never the active segment. Returns the base offsets
        deleted.

        Only a prefix of the log goes, as in Kafka: a segment that has not
        expired keeps every later one, so the log never gets a hole.
        """
        deleted: list[int] = []
        retention_ms = self.config.retention_ms
        if retention_ms >= 0:
            while (
                len(self._segments) > 1
                and now_ms - self._segments[0].max_timestamp > retention_ms
            ):
                deleted.append(self._delete_oldest("retention_ms"))

        retention_bytes = self.config.retention_bytes
        if retention_bytes >= 0:
            total = sum(segment.size for segment in self._segments)
            while len(self._segments) > 1 and total > retention_bytes:
                total -= self._segments[0].size
                deleted.append(self._delete_oldest("retention_bytes"))
        return deleted

    def delete_records_before(self, offset: int) -> int:
        """DeleteRecords: move the log start offset up to ``offset`` (kept
        on disk at once) and delete the sealed segments wholly below it.
        Returns the new log start offset."""
        if offset > self.log_end_offset or offset < 0:
            raise OffsetOutOfRangeError(
                self.topic_partition,
                offset,
                self._log_start_offset,
                self.log_end_offset,
            )
        if offset <= self._log_start_offset:
            return self._log_start_offset

        self._log_start_offset = offset
        while len(self._segments) > 1 and self._segments[1].base_offset <= offset:
            self._delete_oldest("log_start_offset")
        try:
            with self._sync_lock:
                self._write_state(None)
        except OSError as exc:
            raise LogStorageError(
                self.topic_partition, "writing the log start offset", exc
            ) from exc
        return self._log_start_offset

    def truncate_to(self, offset: int) -> int:
        """Remove every batch holding an offset >= ``offset`` (a batch that
        straddles it goes whole), then record the clean point. Returns the
        new log end offset, which is <= ``offset``. Below the log start
        offset the log is emptied and restarts at ``offset``."""
        if self._failure is not None:
            raise self._failure
        end_before = self.log_end_offset
        if offset >= end_before:
            return end_before
        if offset < 0:
            raise ValueError(
                f"{self.topic_partition}: cannot truncate to offset {offset}"
            )

        bytes_before = sum(segment.size for segment in self._segments)
        try:
            with self._sync_lock:
                # A pending checkpoint job's clean point may lie past the cut.
                self._epoch += 1
                if (
                    offset <= self._segments[0].base_offset
                    or offset < self._log_start_offset
                ):
                    self._truncate_fully(offset)
                else:
                    while self._segments[-1].base_offset >= offset:
                        segment = self._segments.pop()
                        self._bases.pop()
                        self._unflushed.pop(segment.base_offset, None)
                        self._syncing.pop(segment.base_offset, None)
                        segment.delete()
                    active = self._segments[-1]
                    if active.sealed:
                        active.unseal(self.config.index_capacity)
                    active.truncate_to_offset(offset)
                    self._unflushed[active.base_offset] = active
                self.segments_version += 1
                self._checkpoint_or_fail()
        except OSError as exc:
            self._failure = LogStorageError(self.topic_partition, "truncate", exc)
            raise self._failure from exc

        event(
            logger,
            logging.INFO,
            "log.truncated",
            topic_partition=self.topic_partition,
            cause="truncate_to",
            offset=offset,
            log_end_offset=self.log_end_offset,
            bytes_removed=bytes_before
            - sum(segment.size for segment in self._segments),
        )
        return self.log_end_offset

    def _truncate_fully(self, offset: int) -> None:
        for segment in self._segments:
            segment.delete()
        self._unflushed.clear()
        self._syncing.clear()
        segment = Segment(
            self.directory,
            offset,
            index_interval_bytes=self.config.index_interval_bytes,
            index_capacity=self.config.index_capacity,
        )
        self._segments = [segment]
        self._bases = [offset]
        self._log_start_offset = offset
        self._unflushed[offset] = segment

    # -- read side ------------------------------------------------------------

    def read_position(self, offset: int) -> ReadPosition:
        """The segment, byte position and file of the batch holding
        ``offset``; at the log end offset, the end of the active segment.
        Raises OffsetOutOfRangeError outside [log start, log end]."""
        end = self.log_end_offset
        if offset < self._log_start_offset or offset > end:
            raise OffsetOutOfRangeError(
                self.topic_partition, offset, self._log_start_offset, end
            )

        first = max(bisect.bisect_right(self._bases, offset) - 1, 0)
        for segment in self._segments[first:]:
            found = segment.find_position(offset)
            if found is not None:
                return ReadPosition(segment.base_offset, found[0], segment.log_path)
        active = self._segments[-1]
        return ReadPosition(active.base_offset, active.size, active.log_path)

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """Offset of the first record whose timestamp >= ``timestamp``, at
        or after the log start offset; None when no record is that late.

        The time index and a header scan find the first batch whose
        maxTimestamp reaches ``timestamp``; that batch is read (and
        decompressed) to find the record (``broker.log.records``). Raises
        RecordsError when a batch's records cannot be read.
        """
        for segment in self._segments:
            if segment.max_timestamp < timestamp:
                continue
            found = segment.find_timestamp(timestamp)
            if found is None:
                continue
            fd = os.open(segment.log_path, os.O_RDONLY)
            try:
                record = find_record_in_file(
                    fd,
                    segment.log_path,
                    found[0],
                    segment.size,
                    timestamp,
                    self._log_start_offset,
                )
            finally:
                os.close(fd)
            if record is not None:
                return record.offset
        return None

    def segment_path(self, base_offset: int, suffix: str) -> Path:
        return segment_path(self.directory, base_offset, suffix)

    # -- closing --------------------------------------------------------------

    def close(self, *, checkpoint: bool = True) -> None:
        """Clean close: seal the active segment's indexes, checkpoint, close
        the files. After a failure, or with ``checkpoint=False``, nothing is
        recorded: the files are left as a crash would leave them and the
        next open recovers from the last clean point."""
        with self._sync_lock:
            # A checkpoint job still pending records nothing after this.
            self._epoch += 1
            try:
                if checkpoint and self._failure is None:
                    self._segments[-1].seal()
                    self._checkpoint_or_fail()
            finally:
                for segment in self._segments:
                    segment.close()
