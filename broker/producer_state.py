"""Idempotent producer state of one partition: epochs, recent batches, snapshots.

Per producer id the writer keeps the producer epoch and, for its last five
batches appended to the partition, (first sequence, last sequence, base
offset, last offset). Five because an idempotent client has at most five
requests in flight per connection (Kafka's limit for
``max.in.flight.requests.per.connection`` with idempotence), so a resend is
always one of the last five.

Checks for a batch whose producerId >= 0 (NOTES.md 3.3), in this order:

    unknown producer id            accept any sequence (see below)
    epoch < known epoch            INVALID_PRODUCER_EPOCH (47)
    epoch > known epoch            accept only at sequence 0, forgetting the
                                   old epoch's batches; else
                                   OUT_OF_ORDER_SEQUENCE_NUMBER (45)
    same epoch, first and last     duplicate: success with that batch's base
    sequence equal one of the      offset, not appended again
    last five batches
    same epoch, first sequence =   accept
    newest last sequence + 1
    anything else                  OUT_OF_ORDER_SEQUENCE_NUMBER (45)

Sequences wrap from 2**31 - 1 to 0, as in Kafka. An unknown producer is
accepted at any sequence, as current Kafka does: its state can be gone for
good reasons (retention deleted its batches, a truncation, a lost
snapshot), and refusing it would wedge a healthy producer. The cost is that
a duplicate of a batch whose state is gone is appended again.

State is dropped for a producer whose newest batch lies wholly below the
log start offset (retention or DeleteRecords removed all of its batches),
as Kafka does; that bounds the state by what the log holds.

Snapshots make the state survive restarts. ``<offset, 20 digits>.snapshot``
in the partition directory holds the state of every batch below
``offset``; the writer writes one when a segment rolls, at the periodic
checkpoint if the state changed since the last one, and on a clean close,
keeping the newest two. So a replay after a crash covers at most one
checkpoint interval or one segment. Loading takes the newest readable snapshot at or
below the log end offset (newer ones describe batches a truncation removed
and are deleted), then replays the batch headers after it: one 61-byte
``pread`` per batch, never record bytes.

Snapshot file, little-endian::

    0   4  magic b"RBPS"
    4   2  format (1)
    6   2  entry size in bytes
    8   8  offset: the state covers every batch below it
    16  4  producers
    20  4  CRC-32C of the entries
    24  producers x ENTRY (below): id, epoch, batch count, then per slot
        first sequence, last sequence, base offset, last offset

Imported by the writer process only; one ProducerState per partition log,
not thread-safe.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from broker.log.batch import HEADER, HEADER_SIZE, MAGIC_V2, MIN_BATCH_LENGTH
from broker.log.partition import PartitionLog
from broker.log.segment import LOG_SUFFIX
from broker.logs import event
from net.kafka.errors import ErrorCode

logger = logging.getLogger(__name__)

RECENT_BATCHES = 5
INT32_MAX = 2**31 - 1

SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOTS_KEPT = 2
SNAPSHOT_MAGIC = b"RBPS"
SNAPSHOT_FORMAT = 1
SNAPSHOT_HEADER = struct.Struct(
    "<"
    "4s"  # 0   magic
    "H"  # 4   format
    "H"  # 6   entry size
    "q"  # 8   offset
    "I"  # 16  producers
    "I"  # 20  crc32c of the entries
)
ENTRY = np.dtype(
    [
        ("producer_id", "<i8"),
        ("epoch", "<i2"),
        ("batches", "<i2"),
        ("first_sequence", "<i4", (RECENT_BATCHES,)),
        ("last_sequence", "<i4", (RECENT_BATCHES,)),
        ("base_offset", "<i8", (RECENT_BATCHES,)),
        ("last_offset", "<i8", (RECENT_BATCHES,)),
    ]
)

# What ``ProducerTurn.check`` decides about one batch.
APPEND = 0
DUPLICATE = 1
REJECT = 2

# (first sequence, last sequence, base offset, last offset)
BatchRecord = tuple[int, int, int, int]


def last_sequence(first_sequence: int, last_offset_delta: int) -> int:
    """The sequence of a batch's last record, wrapping past 2**31 - 1."""
    if first_sequence > INT32_MAX - last_offset_delta:
        return last_offset_delta - (INT32_MAX - first_sequence) - 1
    return first_sequence + last_offset_delta


def next_sequence(sequence: int) -> int:
    return 0 if sequence == INT32_MAX else sequence + 1


class ProducerEntry:
    """One producer id's epoch and its last five batches, oldest first."""

    __slots__ = ("batches", "epoch")

    def __init__(self, epoch: int, batches: list[BatchRecord] | None = None) -> None:
        self.epoch = epoch
        self.batches: list[BatchRecord] = batches if batches is not None else []

    def copy(self) -> ProducerEntry:
        return ProducerEntry(self.epoch, list(self.batches))

    def add(self, epoch: int, record: BatchRecord) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches.clear()
        self.batches.append(record)
        if len(self.batches) > RECENT_BATCHES:
            del self.batches[0]


class ProducerTurn:
    """The checks of one loop turn for one partition. Accepted batches are
    staged; ``commit`` makes them part of the state once the append has
    succeeded (a failed append drops the turn instead)."""

    __slots__ = ("staged", "state")

    def __init__(self, state: ProducerState) -> None:
        self.state = state
        self.staged: dict[int, ProducerEntry] = {}

    def check(
        self,
        producer_id: int,
        epoch: int,
        first_sequence: int,
        last_offset_delta: int,
        base_offset: int,
    ) -> tuple[int, int]:
        """Decide on one batch that would be appended at ``base_offset``.

        Returns ``(APPEND, base_offset)`` (staged), ``(DUPLICATE, original
        base offset)`` or ``(REJECT, Kafka error code)``.
        """
        entry = self.staged.get(producer_id)
        if entry is None:
            entry = self.state.producers.get(producer_id)
        last = last_sequence(first_sequence, last_offset_delta)

        if entry is not None and entry.batches:
            if epoch < entry.epoch:
                return REJECT, ErrorCode.INVALID_PRODUCER_EPOCH
            if epoch > entry.epoch:
                if first_sequence != 0:
                    return REJECT, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
            else:
                for recorded in entry.batches:
                    if recorded[0] == first_sequence and recorded[1] == last:
                        return DUPLICATE, recorded[2]
                if first_sequence != next_sequence(entry.batches[-1][1]):
                    return REJECT, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER

        staged = self.staged.get(producer_id)
        if staged is None:
            staged = entry.copy() if entry is not None else ProducerEntry(epoch)
            self.staged[producer_id] = staged
        staged.add(
            epoch,
            (first_sequence, last, base_offset, base_offset + last_offset_delta),
        )
        return APPEND, base_offset

    def commit(self) -> None:
        if self.staged:
            self.state.producers.update(self.staged)
            self.state.changed = True
            self.staged.clear()


@dataclass(frozen=True)
class LoadReport:
    """What loading a partition's producer state did."""

    snapshot_offset: int | None
    batches_replayed: int
    producers: int
    snapshots_deleted: tuple[int, ...]


class ProducerState:
    """Every producer id's state for one partition."""

    def __init__(self) -> None:
        self.producers: dict[int, ProducerEntry] = {}
        # True when the state differs from the newest snapshot written.
        self.changed = False

    def begin_turn(self) -> ProducerTurn:
        return ProducerTurn(self)

    def replay(
        self,
        producer_id: int,
        epoch: int,
        first_sequence: int,
        last_offset_delta: int,
        base_offset: int,
    ) -> None:
        """Apply a batch read back from the log, without checks."""
        entry = self.producers.get(producer_id)
        if entry is None:
            entry = self.producers[producer_id] = ProducerEntry(epoch)
        entry.add(
            epoch,
            (
                first_sequence,
                last_sequence(first_sequence, last_offset_delta),
                base_offset,
                base_offset + last_offset_delta,
            ),
        )

    def drop_before(self, log_start_offset: int) -> int:
        """Forget producers whose newest batch ends below ``log_start_offset``;
        returns how many."""
        gone = [
            producer_id
            for producer_id, entry in self.producers.items()
            if not entry.batches or entry.batches[-1][3] < log_start_offset
        ]
        for producer_id in gone:
            del self.producers[producer_id]
        if gone:
            self.changed = True
        return len(gone)

    # -- snapshots ------------------------------------------------------------

    def to_bytes(self, offset: int) -> bytes:
        entries = np.zeros(len(self.producers), dtype=ENTRY)
        for row, (producer_id, entry) in enumerate(self.producers.items()):
            count = len(entry.batches)
            entries[row]["producer_id"] = producer_id
            entries[row]["epoch"] = entry.epoch
            entries[row]["batches"] = count
            if count:
                columns = list(zip(*entry.batches, strict=True))
                entries[row]["first_sequence"][:count] = columns[0]
                entries[row]["last_sequence"][:count] = columns[1]
                entries[row]["base_offset"][:count] = columns[2]
                entries[row]["last_offset"][:count] = columns[3]
        body = entries.tobytes()
        header = SNAPSHOT_HEADER.pack(
            SNAPSHOT_MAGIC,
            SNAPSHOT_FORMAT,
            ENTRY.itemsize,
            offset,
            len(entries),
            crc32c.crc32c(body),
        )
        return header + body

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[ProducerState, int]:
        """Parse a snapshot; raises ValueError naming what is wrong."""
        if len(data) < SNAPSHOT_HEADER.size:
            raise ValueError(f"{len(data)} bytes, shorter than the header")
        magic, version, entry_size, offset, count, crc = SNAPSHOT_HEADER.unpack_from(
            data
        )
        if magic != SNAPSHOT_MAGIC or version != SNAPSHOT_FORMAT:
            raise ValueError(f"magic {magic!r} format {version}")
        if entry_size != ENTRY.itemsize:
            raise ValueError(f"entry size {entry_size}, expected {ENTRY.itemsize}")
        body = data[SNAPSHOT_HEADER.size :]
        if len(body) != count * entry_size:
            raise ValueError(f"{len(body)} entry bytes for {count} producers")
        if crc32c.crc32c(body) != crc:
            raise ValueError("CRC-32C mismatch")

        state = cls()
        entries = np.frombuffer(body, dtype=ENTRY)
        for entry in entries.tolist():
            producer_id, epoch, batches, firsts, lasts, bases, ends = entry
            state.producers[producer_id] = ProducerEntry(
                epoch,
                list(zip(firsts, lasts, bases, ends, strict=True))[:batches],
            )
        return state, offset

    def write_snapshot(self, directory: Path, offset: int) -> Path:
        """Write the snapshot for ``offset`` atomically and keep the newest
        SNAPSHOTS_KEPT; raises OSError."""
        path = snapshot_path(directory, offset)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self.to_bytes(offset))
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        for old in list_snapshot_offsets(directory)[:-SNAPSHOTS_KEPT]:
            snapshot_path(directory, old).unlink(missing_ok=True)
        self.changed = False
        return path


def snapshot_path(directory: Path, offset: int) -> Path:
    return directory / f"{offset:020d}{SNAPSHOT_SUFFIX}"


def list_snapshot_offsets(directory: Path) -> list[int]:
    offsets = []
    for path in directory.glob("*" + SNAPSHOT_SUFFIX):
        stem = path.name[: -len(SNAPSHOT_SUFFIX)]
        if len(stem) == 20 and stem.isdigit():
            offsets.append(int(stem))
    return sorted(offsets)


def iter_batch_headers(
    log: PartitionLog, from_offset: int
) -> Iterator[tuple[int, int, int, int, int]]:
    """(base offset, last offset delta, producer id, epoch, base sequence) of
    every batch holding an offset >= ``from_offset``, read with one 61-byte
    pread per batch. Stops at a header that is not a batch (recovery has
    validated what the log holds, so that means a concurrent change)."""
    end = log.log_end_offset
    if from_offset >= end:
        return
    start = log.read_position(max(from_offset, log.log_start_offset))
    bases = log.segment_base_offsets()
    active = log.active_segment_base_offset
    for base in bases[bases.index(start.segment_base_offset) :]:
        path = log.segment_path(base, LOG_SUFFIX)
        fd = os.open(path, os.O_RDONLY)
        try:
            limit = log.end_position if base == active else os.fstat(fd).st_size
            position = start.position if base == start.segment_base_offset else 0
            # Each step moves past a whole header, so at most limit / 61 steps.
            while position + HEADER_SIZE <= limit:
                data = os.pread(fd, HEADER_SIZE, position)
                if len(data) < HEADER_SIZE:
                    return
                header = HEADER.unpack(data)
                base_offset, batch_length, magic = header[0], header[1], header[3]
                if magic != MAGIC_V2 or batch_length < MIN_BATCH_LENGTH:
                    return
                # producerId, producerEpoch, baseSequence are fields 9..11.
                yield base_offset, header[6], header[9], header[10], header[11]
                position += batch_length + 12
        finally:
            os.close(fd)


# Batches replayed between two calls of the progress callback.
PROGRESS_EVERY = 1 << 16


def load_producer_state(
    log: PartitionLog, on_progress: Callable[[], None] = lambda: None
) -> tuple[ProducerState, LoadReport]:
    """The producer state of ``log`` as it is now: newest usable snapshot,
    then a header-only replay of the batches after it. ``on_progress`` is
    called every PROGRESS_EVERY batches (a long replay keeps the heartbeat).

    LIMITATION: without any snapshot (a log written before this writer
    kept producer state) the replay reads every batch header of the log
    once; later opens start from a snapshot.
    """
    directory = log.directory
    end = log.log_end_offset
    offsets = list_snapshot_offsets(directory)

    # Snapshots past the log end describe batches that are gone.
    deleted = tuple(offset for offset in offsets if offset > end)
    for offset in deleted:
        snapshot_path(directory, offset).unlink(missing_ok=True)
    usable = [offset for offset in offsets if offset <= end]

    state = ProducerState()
    snapshot_offset: int | None = None
    for offset in reversed(usable):
        path = snapshot_path(directory, offset)
        try:
            state, snapshot_offset = ProducerState.from_bytes(path.read_bytes())
            break
        except (OSError, ValueError) as exc:
            event(
                logger,
                logging.WARNING,
                "producer_state.snapshot_unreadable",
                topic_partition=log.topic_partition,
                path=path,
                error=exc,
                action="trying an older snapshot or a full replay",
            )
            state = ProducerState()

    replayed = 0
    start = log.log_start_offset if snapshot_offset is None else snapshot_offset
    for base_offset, delta, producer_id, epoch, sequence in iter_batch_headers(
        log, start
    ):
        if base_offset < start:
            continue  # the snapshot already holds it
        if producer_id >= 0:
            state.replay(producer_id, epoch, sequence, delta, base_offset)
        replayed += 1
        if replayed % PROGRESS_EVERY == 0:
            on_progress()
    state.drop_before(log.log_start_offset)
    state.changed = replayed > 0

    report = LoadReport(snapshot_offset, replayed, len(state.producers), deleted)
    event(
        logger,
        logging.INFO,
        "producer_state.loaded",
        topic_partition=log.topic_partition,
        snapshot_offset=snapshot_offset,
        batches_replayed=replayed,
        producers=len(state.producers),
        snapshots_deleted=len(deleted),
    )
    return state, report
