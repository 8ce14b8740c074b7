"""One loop turn of the writer process, independent of the process around it.

:class:`WriterCore` takes the produce and completion rings (it claims
the receiving side of the former and the sending side of the latter), the
commit record and a :class:`PartitionSet`; the process entry
(``broker.writer``) drives it, and tests drive it in-process. A turn:

  1. receive every available descriptor of every produce ring (numpy views,
     at most MAX_DESCRIPTORS_PER_RING a ring);
  2. read the batch header fields the turn needs for all of them at once
     (one numpy gather from the ring's data area) and group them by
     partition index;
  3. per partition: complete descriptors already applied by a previous
     writer (see below), run DeleteRecords, check idempotent producers,
     rewrite the accepted batches' baseOffsets in the ring (one numpy
     scatter), then ONE ``PartitionLog.append_assigned`` for all of them,
     handing over the ring's contiguous runs of batches and their header
     fields as columns (writev calls of at most ``WRITE_BYTES``);
  4. write each answer (base offset, error code) into its descriptor;
  5. per touched partition: commit (``broker.commit_record``), make the
     staged producer state current, snapshot it if the segment rolled,
     publish the partition's row;
  6. fdatasync once per partition that had an acks=-1 batch (group commit:
     one call covers every batch of the turn; partitions in parallel);
  7. post one completion per descriptor to the completion ring of the net
     process it came from, publish, then release the produce descriptors;
  8. wake net processes with parked fetches if a high watermark moved.

Crash safety (writer killed at any point, supervisor alive): steps 3-4
change nothing a restarted writer trusts until step 5 commits, and a
restarted writer first cuts every log back to its committed log end offset
(``PartitionSet``), then resumes each ring at its ``tail``. A redelivered
descriptor whose sequence is at or below its partition's applied sequence
for that ring was applied: it is completed from the answer stored in it
(after an fdatasync when acks=-1) and not appended again; any other is
processed as new. Completions may therefore be posted twice (the turn that
died may have posted some); net processes ignore a completion whose
request id they do not hold, so a second one is harmless.

Per-descriptor work in Python is limited to batches of idempotent
producers (a dict lookup each), batches of LogAppendTime topics (stamped
with the turn's time and a new CRC each, in the ring, by
``PartitionLog.append_assigned``; the completion carries that time) and
DeleteRecords; everything else is numpy
over the whole turn, plus one memoryview per contiguous run of a
partition's batches in a ring for writev (one per batch only when
partitions interleave in the ring).

LIMITATION: a completion ring that stays full (its net process does not
drain it) stalls every turn, so one stuck net process stops the others'
appends until the supervisor restarts it (its heartbeat stops).

Imported by the writer process (and tests); not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from broker.commit_record import CommitRecord
from broker.layout import (
    CONTROL_SLOT,
    FIRST_NET_SLOT,
    KIND_BATCH,
    KIND_DELETE_RECORDS,
    BrokerMemory,
)
from broker.log.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    MAGIC_V2,
    TIMESTAMP_TYPE_BIT,
)
from broker.log.partition import (
    LogStorageError,
    OffsetOutOfRangeError,
    PartitionLog,
)
from broker.log.segment import BatchColumns
from broker.logs import event
from broker.producer_state import APPEND, DUPLICATE, ProducerTurn
from broker.settings import Settings
from broker.writer_partitions import Partition, PartitionSet
from net.kafka.errors import ErrorCode
from shm.counters import Counters, CounterSlot
from shm.notify import Notifier
from shm.ring import Reservation, Ring, RingSender

logger = logging.getLogger(__name__)

# Descriptors taken from one ring in one turn: bounds a turn's latency;
# 8192 x 16 KiB batches is 128 MiB, more than a ring holds.
MAX_DESCRIPTORS_PER_RING = 8192

# Threads for the fdatasyncs of one turn when several partitions need one;
# a guess: enough to keep an SSD's queue busy, few enough to stay cheap.
SYNC_THREADS = 8

# At shutdown, how long to wait for a net process to make room in its
# completion ring before giving up on those completions (it is stopping or
# gone; its clients get no answer either way).
STOPPING_COMPLETION_WAIT_S = 2.0

# Header bytes 8..60 as read from the ring, one record per descriptor; only
# the fields the turn needs are named (offsets relative to byte 8).
_HEADER_FROM = 8
_HEADER_VIEW = np.dtype(
    {
        "names": [
            "batch_length",
            "magic",
            "attributes",
            "last_offset_delta",
            "max_timestamp",
            "producer_id",
            "producer_epoch",
            "base_sequence",
        ],
        "formats": [">i4", "i1", ">i2", ">i4", ">i8", ">i8", ">i2", ">i4"],
        "offsets": [0, 8, 13, 15, 27, 35, 43, 45],
        "itemsize": HEADER_SIZE - _HEADER_FROM,
    }
)


@dataclass(frozen=True)
class WriterStatistics:
    turns: int
    batches: int
    bytes: int
    writev_calls: int
    fsyncs: int
    redelivered: int
    completions_dropped: int


class _Counters:
    """Column ids of the writer's counters in its CounterSlot (or nothing,
    for tests that run without shared counters)."""

    def __init__(self, block: Counters | None, slot: CounterSlot | None) -> None:
        self.slot = slot
        self.block = block
        if block is not None:
            self.turns = block.counter_id("writer_turns")
            self.batches = block.counter_id("writer_batches")
            self.bytes = block.counter_id("writer_bytes")
            self.writev_calls = block.counter_id("writer_writev_calls")
            self.fsyncs = block.counter_id("writer_fsyncs")
            self.turn_us = block.histogram_id("writer_turn_us")
            self.fsync_us = block.histogram_id("fsync_us")
            self.writev_batches = block.histogram_id("writer_writev_batches")
            self.writev_bytes = block.histogram_id("writer_writev_bytes")
            self.parked = block.counter_id("parked_fetches_gauge")
            self.metadata_version = block.counter_id("metadata_version_gauge")


@dataclass
class _Turn:
    """Everything one turn knows about its descriptors, as parallel arrays
    in ring order (ring 0's descriptors, then ring 1's, ...)."""

    chunks: list[tuple[int, npt.NDArray[np.void], int]]
    ring_bounds: list[tuple[int, int, int]]  # (ring, start, end)
    partition: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int8]
    acks: npt.NDArray[np.int8]
    request_id: npt.NDArray[np.int64]
    argument: npt.NDArray[np.int64]
    ring: npt.NDArray[np.int64]
    sequence: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]
    length: npt.NDArray[np.int64]
    valid: npt.NDArray[np.bool_]
    header: npt.NDArray[np.void]
    already: npt.NDArray[np.bool_]
    base: npt.NDArray[np.int64]
    error: npt.NDArray[np.int16]
    # The log append time answered per descriptor: -1 unless the batch was
    # stamped (LogAppendTime topics).
    append_time: npt.NDArray[np.int64]
    now_ms: int
    # Facts about the whole turn, computed once so that the per-partition
    # steps skip what no descriptor needs (each is a few numpy calls, the
    # main cost of a turn of one batch).
    # Some descriptor may be a redelivered one (``already`` may be set).
    redelivery: bool
    # Every descriptor is a batch whose framing checked out (no DeleteRecords,
    # no unknown kind, nothing CORRUPT_MESSAGE).
    all_valid: bool
    # Some batch carries a producer id (idempotence checks needed).
    producers: bool
    # Every partition index is a row of the commit and partition tables
    # (set by turn(), which has them sorted).
    in_table: bool
    touched: list[Partition] = field(default_factory=list)
    # The descriptors of each touched partition, as in turn() (for _commit).
    touched_groups: list[npt.NDArray[np.int64]] = field(default_factory=list)
    producer_turns: list[tuple[Partition, ProducerTurn]] = field(default_factory=list)
    rolled: list[Partition] = field(default_factory=list)
    # Partition -> indices of its acks=-1 descriptors: flush, then answer.
    flush: dict[Partition, list[npt.NDArray[np.int64]]] = field(default_factory=dict)
    appended: bool = False


def _timed_flush(log: PartitionLog) -> tuple[int, LogStorageError | None]:
    """``log.flush()``: (nanoseconds taken, the failure or None)."""
    started = time.perf_counter_ns()
    try:
        log.flush()
    except LogStorageError as exc:
        return time.perf_counter_ns() - started, exc
    return time.perf_counter_ns() - started, None


class WriterCore:
    """The writer's rings, partitions and loop turn; see the module docstring."""

    def __init__(
        self,
        produce_rings: Sequence[Ring],
        completion_rings: Sequence[Ring],
        partitions: PartitionSet,
        commits: CommitRecord,
        wake: Notifier,
        net_wakes: Sequence[Notifier],
        *,
        counters: Counters | None = None,
        slot: CounterSlot | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        """Take the receiving side of every produce ring and the sending side
        of every completion ring; ``wake`` is what this process sleeps on and
        ``net_wakes[i]`` wakes net process ``i``."""
        if not len(produce_rings) == len(completion_rings) == len(net_wakes):
            raise ValueError(
                f"{len(produce_rings)} produce rings, {len(completion_rings)}"
                f" completion rings and {len(net_wakes)} net wake-ups; each net"
                " process has one of each"
            )
        self.receivers = [
            ring.receiver(wake, net_wakes[number])
            for number, ring in enumerate(produce_rings)
        ]
        self.completion_senders = [
            ring.sender(net_wakes[number], wake)
            for number, ring in enumerate(completion_rings)
        ]
        # Sequence of the next descriptor each ring delivers: a receiver
        # resumes at the stored tail, which only this side writes.
        self._next_sequence = [ring.statistics().tail for ring in produce_rings]
        # Per ring, one past the highest sequence an earlier writer applied
        # to any partition: only descriptors below it can be redelivered
        # ones, since everything this writer applies comes later.
        self._redelivered_below = (
            (commits.applied.max(axis=0) + 1).tolist()
            if commits.rows
            else [0] * commits.rings
        )
        self.partitions = partitions
        self.commits = commits
        # Partition indexes below this are rows of both the commit record
        # and the partition state table.
        self._table_rows = min(commits.rows, len(partitions.log_start_offsets))
        self.wake = wake
        self.net_wakes = list(net_wakes)
        self.should_stop = should_stop
        self.beat = beat
        self._counters = _Counters(counters, slot)

        # The ring data areas: memoryviews for writev, byte arrays, and
        # read-only windows of HEADER_SIZE bytes starting at every position,
        # so one fancy index copies the header bytes of every batch of a
        # turn.
        self._datas = [receiver.data for receiver in self.receivers]
        self._data_bytes: list[npt.NDArray[np.uint8]] = [
            np.frombuffer(data, dtype=np.uint8) for data in self._datas
        ]
        self._header_windows: list[npt.NDArray[np.uint8]] = [
            np.lib.stride_tricks.sliding_window_view(data, HEADER_SIZE)
            for data in self._data_bytes
        ]
        # And a big-endian int64 starting at every position (unaligned;
        # numpy swaps and stores bytewise), so one fancy assignment writes
        # the baseOffsets of a turn's batches.
        self._base_offset_slots: list[npt.NDArray[np.int64]] = []
        for data in self._data_bytes:
            eights = np.lib.stride_tricks.sliding_window_view(data, 8, writeable=True)
            self._base_offset_slots.append(eights.view(">i8")[:, 0])

        self._sync_pool: ThreadPoolExecutor | None = None

        self.turns = 0
        self.batches = 0
        self.bytes = 0
        self.writev_calls = 0
        self.fsyncs = 0
        self.redelivered = 0
        self.completions_dropped = 0

    @classmethod
    def from_memory(
        cls,
        memory: BrokerMemory,
        settings: Settings,
        *,
        slot: CounterSlot | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        beat: Callable[[], None] = lambda: None,
    ) -> WriterCore:
        """The writer over every ring and table of ``memory``."""
        if memory.commits is None:
            raise ValueError("this BrokerMemory has no commits table")
        commits = CommitRecord(memory.commits)
        partitions = PartitionSet(
            settings, memory.partitions.writer(), commits, on_progress=beat
        )
        return cls(
            memory.produce_rings,
            memory.completion_rings,
            partitions,
            commits,
            memory.writer_wake,
            memory.net_wakes,
            counters=memory.counters,
            slot=slot,
            should_stop=should_stop,
            beat=beat,
        )

    # -- life cycle -----------------------------------------------------------

    def start(self) -> int:
        """Open every partition (recovery, cut back to the commit record);
        returns how many."""
        count = self.partitions.start()
        pending = [receiver.available() for receiver in self.receivers]
        event(
            logger,
            logging.INFO,
            "writer.resumed",
            partitions=count,
            ring_tails=self._next_sequence,
            pending_descriptors=pending,
        )
        return count

    def close(self) -> None:
        """Checkpoint and close every log; give up the numpy views of the
        rings so the caller can close the shared memory."""
        if self._sync_pool is not None:
            self._sync_pool.shutdown()
            self._sync_pool = None
        self.partitions.close()
        self.partitions.rows.close()
        self.commits.close()
        self._header_windows.clear()
        self._base_offset_slots.clear()
        self._data_bytes.clear()
        self._datas.clear()

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            self.turns,
            self.batches,
            self.bytes,
            self.writev_calls,
            self.fsyncs,
            self.redelivered,
            self.completions_dropped,
        )

    # -- waiting --------------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """Sleep until a produce ring has descriptors or ``timeout`` passes.

        Every ring's waiting flag is set before the sleep, so a net process
        that publishes meanwhile writes ``writer_wake``.
        """
        armed = []
        ready = False
        for receiver in self.receivers:
            if receiver.arm():
                ready = True
                break
            armed.append(receiver)
        if not ready:
            ready = self.wake.wait(timeout)
        for receiver in armed:
            receiver.disarm()
        return ready

    # -- background -----------------------------------------------------------

    def background(self, now: float | None = None) -> None:
        """Metadata changes, periodic checkpoint (handed to the flusher
        thread; the checkpoints it finished are counted here), retention,
        reopening."""
        if now is None:
            now = time.monotonic()
        partitions = self.partitions
        announced = 0
        counters = self._counters
        if counters.block is not None:
            announced = int(
                counters.block.counters[CONTROL_SLOT, counters.metadata_version]
            )
        partitions.refresh_metadata(announced, now=now)
        checkpointed = partitions.checkpoint_due(now)
        if checkpointed:
            self.fsyncs += checkpointed
            if counters.slot is not None:
                counters.slot.add(counters.fsyncs, checkpointed)
        partitions.retention_due(now, int(time.time() * 1000))
        partitions.reopen_due(now)

    # -- the turn -------------------------------------------------------------

    def turn(self) -> int:
        """Run one loop turn; returns the number of descriptors handled."""
        started = time.perf_counter_ns()
        turn = self._receive()
        if turn is None:
            return 0

        # Methods rather than np.argsort/np.diff/np.flatnonzero: the same
        # results without numpy's Python-level dispatch (a few us a turn).
        order = turn.partition.argsort(kind="stable")
        ordered = turn.partition[order]
        starts = (ordered[1:] != ordered[:-1]).nonzero()[0] + 1
        bounds = [0, *starts.tolist(), len(order)]
        # ordered[bounds[:-1]] without turning a Python list into an index.
        indexes = [*ordered[:1].tolist(), *ordered[starts].tolist()]
        # Sorted: the first and last index bound them all.
        turn.in_table = indexes[0] >= 0 and indexes[-1] < self._table_rows
        self._resolve_partitions(indexes)
        for index, first, end in zip(indexes, bounds[:-1], bounds[1:], strict=True):
            group = order[first:end]
            partition = self.partitions.get(index)
            if partition is None:
                turn.error[group] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            try:
                self._partition_turn(partition, group, turn)
            except Exception as exc:
                self._contain_fault(partition, group, turn, exc)

        self._store_answers(turn)
        self._commit(turn)
        self._flush(turn)
        self._complete(turn)
        self._release(turn)
        if turn.appended:
            self._wake_parked_fetches()

        count = len(turn.partition)
        self.turns += 1
        counters = self._counters
        if counters.slot is not None:
            counters.slot.add(counters.turns)
            counters.slot.observe(
                counters.turn_us, (time.perf_counter_ns() - started) // 1000
            )
        return count

    def _receive(self) -> _Turn | None:
        chunks: list[tuple[int, npt.NDArray[np.void], int]] = []
        ring_bounds: list[tuple[int, int, int]] = []
        total = 0
        for number, receiver in enumerate(self.receivers):
            budget = MAX_DESCRIPTORS_PER_RING
            start = total
            # Two receives at most: the first view stops at the wrap.
            for _ in range(2):
                descriptors = receiver.receive(budget)
                count = len(descriptors)
                if count == 0:
                    break
                chunks.append((number, descriptors, self._next_sequence[number]))
                self._next_sequence[number] += count
                total += count
                budget -= count
                if budget <= 0:
                    break
            if total > start:
                ring_bounds.append((number, start, total))
        if not chunks:
            return None

        def column(name: str) -> npt.NDArray[Any]:
            if len(chunks) == 1:
                return chunks[0][1][name].copy()
            return np.concatenate([chunk[1][name] for chunk in chunks])

        partition = column("partition").astype(np.int64)
        kind = column("kind")
        length = column("data_length")
        position = column("data_position")
        if len(chunks) == 1:
            # One chunk (the usual case): no concatenation, and np.empty +
            # fill rather than np.full (its Python-level overhead).
            number, _, first = chunks[0]
            ring = np.empty(total, np.int64)
            ring.fill(number)
            sequence = np.arange(first, first + total, dtype=np.int64)
        else:
            ring = np.concatenate(
                [np.full(len(chunk[1]), chunk[0], np.int64) for chunk in chunks]
            )
            sequence = np.concatenate(
                [
                    np.arange(chunk[2], chunk[2] + len(chunk[1]), dtype=np.int64)
                    for chunk in chunks
                ]
            )

        # Header fields of every batch, gathered per ring's data area. A
        # payload too short for a header is read at position 0 and marked
        # invalid below.
        is_batch = (kind == KIND_BATCH) & (length >= HEADER_SIZE)
        parts = []
        for number, start, end in ring_bounds:
            # position * is_batch: position where a batch, else 0 (cheaper
            # than np.where).
            where = position[start:end] * is_batch[start:end]
            windows = self._header_windows[number]
            parts.append(windows[where, _HEADER_FROM:])
        raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
        header = np.ascontiguousarray(raw).view(_HEADER_VIEW).reshape(total)
        valid = (
            is_batch
            & (header["batch_length"] + LOG_OVERHEAD == length)
            & (header["magic"] == MAGIC_V2)
            & (header["last_offset_delta"] >= 0)
        )
        # count_nonzero: the cheapest numpy test of a bool array.
        all_valid = np.count_nonzero(valid) == total
        producers = bool(np.count_nonzero(header["producer_id"][valid] >= 0))

        # Applied by a writer that died before releasing them?
        already = np.zeros(total, dtype=bool)
        redelivery = any(
            first < self._redelivered_below[number] for number, _, first in chunks
        )
        if redelivery:
            applied = self.commits.applied
            in_range = (partition >= 0) & (partition < applied.shape[0])
            already[in_range] = (
                sequence[in_range] <= applied[partition[in_range], ring[in_range]]
            )
            redelivery = bool(already.any())
        base = np.empty(total, dtype=np.int64)
        base.fill(-1)
        error = np.zeros(total, dtype=np.int16)
        append_time = np.empty(total, dtype=np.int64)
        append_time.fill(-1)
        if redelivery:
            base[already] = column("base_offset")[already]
            error[already] = column("error_code")[already]
            # A stamped batch still carries its append time in the ring.
            stamped = (
                already
                & is_batch
                & (error == 0)
                & (header["attributes"] & TIMESTAMP_TYPE_BIT != 0)
            )
            append_time[stamped] = header["max_timestamp"][stamped]
            redelivered = int(already.sum())
            self.redelivered += redelivered
            event(
                logger,
                logging.INFO,
                "writer.redelivered",
                descriptors=redelivered,
                action="completing from the stored answers, not appending",
            )

        return _Turn(
            chunks=chunks,
            ring_bounds=ring_bounds,
            partition=partition,
            kind=kind,
            acks=column("acks"),
            request_id=column("request_id"),
            argument=column("argument"),
            ring=ring,
            sequence=sequence,
            position=position,
            length=length,
            valid=valid,
            header=header,
            already=already,
            base=base,
            error=error,
            append_time=append_time,
            now_ms=int(time.time() * 1000),
            redelivery=redelivery,
            all_valid=all_valid,
            producers=producers,
            in_table=False,  # set by turn() from the sorted partition indexes
        )

    def _resolve_partitions(self, indexes: list[int]) -> None:
        """Reload the metadata once if a descriptor names an unknown index
        (``indexes``: each partition index of the turn once)."""
        if any(self.partitions.get(index) is None for index in indexes):
            self.partitions.reload_if_changed()

    # -- per partition --------------------------------------------------------

    def _partition_turn(
        self, partition: Partition, group: npt.NDArray[np.int64], turn: _Turn
    ) -> None:
        """Decide every descriptor of one partition and append its batches."""
        touched_group = group
        if turn.redelivery:
            already = turn.already[group]
            if already.any():
                done = group[already]
                needs_sync = done[turn.acks[done] == -1]
                if len(needs_sync):
                    turn.flush.setdefault(partition, []).append(needs_sync)
                group = group[~already]
                if not len(group):
                    return
        turn.touched.append(partition)
        turn.touched_groups.append(touched_group)

        if turn.all_valid:
            # Only valid batches this turn: nothing to sort out.
            batches = group
            if not partition.online:
                turn.error[batches] = ErrorCode.KAFKA_STORAGE_ERROR
                return
        else:
            kinds = turn.kind[group]
            other = group[(kinds != KIND_BATCH) & (kinds != KIND_DELETE_RECORDS)]
            turn.error[other] = ErrorCode.INVALID_REQUEST
            deletes = group[kinds == KIND_DELETE_RECORDS]
            batches = group[kinds == KIND_BATCH]
            if not partition.online:
                turn.error[deletes] = ErrorCode.KAFKA_STORAGE_ERROR
                turn.error[batches] = ErrorCode.KAFKA_STORAGE_ERROR
                return
            if len(deletes):
                self._delete_records(partition, deletes, turn)
                if not partition.online:
                    turn.error[batches] = ErrorCode.KAFKA_STORAGE_ERROR
                    return
            if not len(batches):
                return

            valid = turn.valid[batches]
            if not valid.all():
                turn.error[batches[~valid]] = ErrorCode.CORRUPT_MESSAGE
                batches = batches[valid]
                if not len(batches):
                    return
        self._append(partition, batches, turn)

    def _contain_fault(
        self,
        partition: Partition,
        group: npt.NDArray[np.int64],
        turn: _Turn,
        exc: Exception,
    ) -> None:
        """An internal fault while handling one partition: answer its new
        descriptors UNKNOWN_SERVER_ERROR and take it offline, so the reopen
        cuts it back to its commit record. The descriptors are still
        committed as applied, so a restart does not meet them again."""
        event(
            logger,
            logging.ERROR,
            "writer.partition_fault",
            exc_info=True,
            topic_partition=partition.topic_partition,
            error=exc,
            action="partition offline until reopened",
        )
        fresh = group[~turn.already[group]]
        turn.error[fresh] = ErrorCode.UNKNOWN_SERVER_ERROR
        turn.base[fresh] = -1
        turn.append_time[fresh] = -1
        turn.flush.pop(partition, None)
        turn.producer_turns = [t for t in turn.producer_turns if t[0] is not partition]
        turn.rolled = [t for t in turn.rolled if t is not partition]
        if partition not in turn.touched:
            turn.touched.append(partition)
            turn.touched_groups.append(group)
        self.partitions.fail(partition, exc)

    def _append(
        self, partition: Partition, batches: npt.NDArray[np.int64], turn: _Turn
    ) -> None:
        log = partition.log
        assert log is not None
        end = log.log_end_offset
        header = turn.header

        pending: npt.NDArray[np.int64] = batches[:0]
        producer_turn: ProducerTurn | None = None
        # Without producer checks every batch here is answered (nothing
        # else sets their error codes).
        answered = batches
        if turn.producers and (header["producer_id"][batches] >= 0).any():
            producer_turn = partition.producers.begin_turn()
            accepted, pending = self._check_producers(producer_turn, batches, end, turn)
            answered = batches[turn.error[batches] == ErrorCode.NONE]
        else:
            accepted = batches
        synced = answered[turn.acks[answered] == -1]
        if not len(accepted):
            if len(synced):
                turn.flush.setdefault(partition, []).append(synced)
            return

        deltas = header["last_offset_delta"][accepted].astype(np.int64)
        bases = log.next_base_offsets(deltas)
        lengths = turn.length[accepted]
        positions = turn.position[accepted]
        rings = turn.ring[accepted]
        columns = BatchColumns(
            base_offset=bases,
            last_offset=bases + deltas,
            max_timestamp=header["max_timestamp"][accepted].astype(np.int64),
            size=lengths,
        )
        active_before = log.active_segment_base_offset
        try:
            buffers = self._set_base_offsets(
                rings, positions, lengths, bases, one_ring=len(turn.ring_bounds) == 1
            )
            writes = log.append_assigned(buffers, columns, turn.now_ms)
        except LogStorageError as exc:
            # The log undid the append (or its reopen will: nothing of this
            # turn is committed).
            turn.error[accepted] = ErrorCode.KAFKA_STORAGE_ERROR
            turn.error[pending] = ErrorCode.KAFKA_STORAGE_ERROR
            turn.base[accepted] = -1
            turn.base[pending] = -1
            self.partitions.fail(partition, exc)
            return

        turn.base[accepted] = bases
        if log.config.log_append_time:
            # append_assigned stamped them with the turn's time.
            turn.append_time[accepted] = turn.now_ms
        turn.appended = True
        partition.written = True
        if producer_turn is not None:
            turn.producer_turns.append((partition, producer_turn))
        if log.active_segment_base_offset != active_before:
            turn.rolled.append(partition)
        if len(synced):
            turn.flush.setdefault(partition, []).append(synced)

        count = len(accepted)
        size = int(lengths.sum())
        self.batches += count
        self.bytes += size
        self.writev_calls += writes
        counters = self._counters
        if counters.slot is not None:
            counters.slot.add(counters.batches, count)
            counters.slot.add(counters.bytes, size)
            counters.slot.add(counters.writev_calls, writes)
            # One observation per partition append: its batches and bytes
            # per writev call (an append is cut into calls of WRITE_BYTES).
            calls = max(writes, 1)
            counters.slot.observe(counters.writev_batches, count // calls)
            counters.slot.observe(counters.writev_bytes, size // calls)

    def _set_base_offsets(
        self,
        rings: npt.NDArray[np.int64],
        positions: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        bases: npt.NDArray[np.int64],
        *,
        one_ring: bool = False,
    ) -> list[memoryview]:
        """Write each batch's baseOffset into the ring (one numpy scatter per
        ring) and return the batches' bytes for writev: one memoryview per
        run of batches that lie back to back in one ring. ``one_ring``: the
        caller knows every batch is in one ring (the turn had one)."""
        ends = positions + lengths
        # Runs break where a batch does not start where the previous ended
        # (a wrap, another partition's batches) or in another ring.
        apart = positions[1:] != ends[:-1]
        first_ring = int(rings[0])
        one_ring = one_ring or (
            first_ring == int(rings[-1]) and np.count_nonzero(rings != first_ring) == 0
        )
        if one_ring:
            self._base_offset_slots[first_ring][positions] = bases
        else:
            apart |= rings[1:] != rings[:-1]
            for ring in np.unique(rings).tolist():
                mine = rings == ring
                self._base_offset_slots[ring][positions[mine]] = bases[mine]

        breaks = apart.nonzero()[0]
        if not len(breaks) and one_ring:
            return [self._datas[first_ring][int(positions[0]) : int(ends[-1])]]
        firsts = [0, *(breaks + 1).tolist()]
        lasts = [*breaks.tolist(), len(positions) - 1]
        datas = self._datas
        return [
            datas[ring][start:end]
            for ring, start, end in zip(
                rings[firsts].tolist(),
                positions[firsts].tolist(),
                ends[lasts].tolist(),
                strict=True,
            )
        ]

    def _check_producers(
        self,
        producer_turn: ProducerTurn,
        batches: npt.NDArray[np.int64],
        end: int,
        turn: _Turn,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Run the idempotence checks in ring order. Returns the batches to
        append and the duplicates of batches staged in this same turn (they
        succeed only if the append does)."""
        header = turn.header[batches]
        accepted: list[int] = []
        pending: list[int] = []
        running = end
        for number, producer_id, epoch, sequence, delta in zip(
            batches.tolist(),
            header["producer_id"].tolist(),
            header["producer_epoch"].tolist(),
            header["base_sequence"].tolist(),
            header["last_offset_delta"].tolist(),
            strict=True,
        ):
            if producer_id < 0:
                accepted.append(number)
                running += delta + 1
                continue
            verdict, value = producer_turn.check(
                producer_id, epoch, sequence, delta, running
            )
            if verdict == APPEND:
                accepted.append(number)
                running += delta + 1
            elif verdict == DUPLICATE:
                turn.base[number] = value
                if value >= end:
                    pending.append(number)
            else:
                turn.error[number] = value
        return (
            np.array(accepted, dtype=np.int64),
            np.array(pending, dtype=np.int64),
        )

    def _delete_records(
        self, partition: Partition, deletes: npt.NDArray[np.int64], turn: _Turn
    ) -> None:
        """DeleteRecords, before this turn's appends: ``-1`` means the high
        watermark, which is then the committed log end offset."""
        log = partition.log
        assert log is not None
        for number in deletes.tolist():
            target = int(turn.argument[number])
            if target == -1:
                target = log.log_end_offset
            try:
                start = log.delete_records_before(target)
            except OffsetOutOfRangeError:
                turn.error[number] = ErrorCode.OFFSET_OUT_OF_RANGE
                continue
            except (LogStorageError, OSError) as exc:
                turn.error[number] = ErrorCode.KAFKA_STORAGE_ERROR
                self.partitions.fail(partition, exc)
                return
            partition.producers.drop_before(start)

    # -- after the appends ----------------------------------------------------

    def _store_answers(self, turn: _Turn) -> None:
        """Answers into the descriptors, before anything is committed."""
        start = 0
        for _, descriptors, _ in turn.chunks:
            end = start + len(descriptors)
            descriptors["base_offset"] = turn.base[start:end]
            descriptors["error_code"] = turn.error[start:end]
            start = end

    def _commit(self, turn: _Turn) -> None:
        if not turn.touched:
            return
        # The descriptors of the touched partitions (each group holds every
        # descriptor of its partition index): their sequences are applied.
        groups = turn.touched_groups
        known = groups[0] if len(groups) == 1 else np.concatenate(groups)
        np.maximum.at(
            self.commits.applied,
            (turn.partition[known], turn.ring[known]),
            turn.sequence[known],
        )

        for touched in turn.touched:
            log = touched.log
            if touched.online and log is not None:
                touched.committed_end = log.log_end_offset
            self.commits.commit(touched.index, touched.committed_end)
        for _, producer_turn in turn.producer_turns:
            producer_turn.commit()
        for touched in turn.rolled:
            self.partitions.snapshot(touched)
        for touched in turn.touched:
            if touched.online:
                self.partitions.publish(touched)

    def _flush(self, turn: _Turn) -> None:
        """One fdatasync per partition with acks=-1 descriptors; several
        partitions sync in parallel threads (fdatasync releases the GIL and
        each log is touched by one pool thread only; a checkpoint job of
        the same log in the flusher thread is kept apart by the log's sync
        lock). The answers go out only after these syncs returned."""
        jobs: list[tuple[Partition, PartitionLog, npt.NDArray[np.int64]]] = []
        for partition, groups in turn.flush.items():
            waiting = groups[0] if len(groups) == 1 else np.concatenate(groups)
            log = partition.log
            if not partition.online or log is None:
                turn.error[waiting] = ErrorCode.KAFKA_STORAGE_ERROR
                continue
            jobs.append((partition, log, waiting))
        if not jobs:
            return

        if len(jobs) == 1:
            outcomes = [_timed_flush(jobs[0][1])]
        else:
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(
                    SYNC_THREADS, thread_name_prefix="fdatasync"
                )
            outcomes = list(self._sync_pool.map(_timed_flush, [j[1] for j in jobs]))

        counters = self._counters
        for (partition, _, waiting), (elapsed_ns, failure) in zip(
            jobs, outcomes, strict=True
        ):
            if failure is not None:
                turn.error[waiting] = ErrorCode.KAFKA_STORAGE_ERROR
                self.partitions.fail(partition, failure)
                continue
            self.fsyncs += 1
            if counters.slot is not None:
                counters.slot.add(counters.fsyncs)
                counters.slot.observe(counters.fsync_us, elapsed_ns // 1000)

    def _complete(self, turn: _Turn) -> None:
        """One completion per descriptor, to the ring it came from."""
        starts = self.partitions.log_start_offsets
        if turn.in_table:
            log_start = starts[turn.partition]
        else:
            in_range = (turn.partition >= 0) & (turn.partition < len(starts))
            log_start = np.where(
                in_range, starts[np.clip(turn.partition, 0, len(starts) - 1)], -1
            )
        base = turn.base
        if not turn.all_valid:
            # DeleteRecords answers carry no base offset.
            base = base.copy()
            base[turn.kind == KIND_DELETE_RECORDS] = -1
        for number, start, end in turn.ring_bounds:
            sender = self.completion_senders[number]
            reservation = self._reserve_completions(sender, end - start)
            if reservation is None:
                self.completions_dropped += end - start
                event(
                    logger,
                    logging.WARNING,
                    "writer.completions_dropped",
                    ring=number,
                    completions=end - start,
                    reason="the net process did not make room while stopping",
                )
                continue
            rows = reservation.descriptors
            rows["request_id"] = turn.request_id[start:end]
            rows["base_offset"] = base[start:end]
            rows["log_append_time"] = turn.append_time[start:end]
            rows["log_start_offset"] = log_start[start:end]
            rows["partition"] = turn.partition[start:end]
            rows["error_code"] = turn.error[start:end]
            sender.publish()

    def _reserve_completions(
        self, sender: RingSender, count: int
    ) -> Reservation | None:
        reservation = sender.reserve_batch(count)
        waited_since: float | None = None
        # Bounded: while running, each pass waits at most 50 ms and beats;
        # while stopping, at most STOPPING_COMPLETION_WAIT_S in all.
        while reservation is None:
            sender.wait_for_space(0, count, timeout=0.05)
            self.beat()
            if self.should_stop():
                now = time.monotonic()
                waited_since = waited_since or now
                if now - waited_since > STOPPING_COMPLETION_WAIT_S:
                    return None
            reservation = sender.reserve_batch(count)
        return reservation

    def _release(self, turn: _Turn) -> None:
        for number, start, end in turn.ring_bounds:
            self.receivers[number].release(end - start)

    def _wake_parked_fetches(self) -> None:
        """One eventfd write per net process that has parked fetches."""
        counters = self._counters
        if counters.block is None:
            return
        column = counters.block.counters[:, counters.parked]
        for number, notifier in enumerate(self.net_wakes):
            if column[FIRST_NET_SLOT + number] > 0:
                notifier.notify()
