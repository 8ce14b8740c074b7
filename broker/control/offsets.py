"""Committed offsets: the in-memory table of every group's offsets and the
append-only log that makes it durable.

File ``<data>/__ringbus/offsets/offsets.log``::

    file    := header | record*
    header  := "RBOFFS" | INT16 format version (1)                 8 bytes
    record  := INT32 length | UINT32 crc | body
      length  bytes after the length field (4 + len(body))
      crc     CRC-32C (Castagnoli) of body
    body    := INT8 kind | STRING group | INT32 count | entry * count
      kind 1 COMMIT          entry := STRING topic | INT32 partition
                                      | INT64 offset | INT32 leader epoch
                                      | INT64 commit time (ms since epoch)
                                      | NULLABLE_STRING metadata
      kind 2 DELETE_OFFSETS  entry := STRING topic | INT32 partition
      kind 3 DELETE_GROUP    no entries (count 0)
    STRING := INT16 length | UTF-8;  NULLABLE_STRING: length -1 = null

All integers are big-endian. One OffsetCommit request is one record, so a
commit is applied whole or not at all.

Invariants and crashes:
- The in-memory table is exactly what the file says: a change is applied
  to the table only after its record was written (``os.write`` returned),
  and a record's bytes are never rewritten.
- An OffsetCommit is answered only after the fsync that covers its record
  (``sync``); the control process runs the fsync in a worker thread and
  one fsync covers every record written before it started (group commit).
- Loading reads records until the first one that is incomplete, fails its
  CRC or does not parse, and truncates the file there: after a crash only
  an unanswered tail can be torn.
- Compaction writes the table as one COMMIT record per group (chunked) to
  ``offsets.log.compacting``, fsyncs it, renames it over the log and fsyncs
  the directory, so a crash leaves either the old or the new file. It runs
  on open when the file holds superseded records, and while running when
  the file passes max(``compact_min_bytes``, twice its size right after
  the last compaction), which keeps the cost per committed byte constant.
- A failed write is undone (truncated back); if even that fails, or an
  fsync fails (the kernel may have dropped dirty pages), the log refuses
  every later change with the same OffsetLogError until reopened.

Imported by the control process only. Not thread-safe, except that ``sync``
may run in one worker thread while the event loop thread appends.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import crc32c

from broker.logs import event

logger = logging.getLogger(__name__)

OFFSETS_DIR = Path("__ringbus") / "offsets"
LOG_FILE = "offsets.log"
COMPACTING_SUFFIX = ".compacting"

MAGIC = b"RBOFFS"
FORMAT_VERSION = 1
HEADER = MAGIC + struct.pack(">h", FORMAT_VERSION)
HEADER_SIZE = len(HEADER)

KIND_COMMIT = 1
KIND_DELETE_OFFSETS = 2
KIND_DELETE_GROUP = 3

# INT32 length | UINT32 crc
RECORD_PREFIX = struct.Struct(">iI")
# INT8 kind, then the group string's INT16 length
BODY_KIND = struct.Struct(">b")
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")
# INT32 partition | INT64 offset | INT32 leader epoch | INT64 commit time
COMMIT_FIELDS = struct.Struct(">iqiq")

# Smallest body: kind, empty group, count.
MIN_BODY_SIZE = BODY_KIND.size + INT16.size + INT32.size
# A sanity bound for a record length read from disk; real records are
# bounded by the request size. 1 GiB is a guess well above any commit.
MAX_RECORD_BYTES = 1 << 30

# Compaction starts past this size at the least: a guess that keeps
# rewrites rare (one every 16 MiB of commits) and the file small.
COMPACT_MIN_BYTES = 16 << 20
# Entries per COMMIT record in a compacted file.
COMPACT_CHUNK_ENTRIES = 10_000

# Kafka's offset.metadata.max.bytes default.
MAX_METADATA_BYTES = 4096

TopicPartition = tuple[str, int]


class CommittedOffset(NamedTuple):
    """One partition's committed position for a group."""

    offset: int
    leader_epoch: int
    metadata: str | None
    commit_timestamp_ms: int


class OffsetLogError(Exception):
    """The offsets log cannot be read or written; ``path`` names the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class OffsetStoreStatistics:
    groups: int
    partitions: int
    log_bytes: int
    records_written: int
    compactions: int
    syncs: int


# -- record encoding ------------------------------------------------------------


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return INT16.pack(len(data)) + data


def _nullable_string(text: str | None) -> bytes:
    return INT16.pack(-1) if text is None else _string(text)


def encode_record(body: bytes) -> bytes:
    """Frame ``body`` as a record: length, CRC-32C, body."""
    return RECORD_PREFIX.pack(4 + len(body), crc32c.crc32c(body)) + body


def commit_body(
    group: str, offsets: Iterable[tuple[TopicPartition, CommittedOffset]]
) -> bytes:
    entries = bytearray()
    count = 0
    for (topic, partition), committed in offsets:
        entries += _string(topic)
        entries += COMMIT_FIELDS.pack(
            partition,
            committed.offset,
            committed.leader_epoch,
            committed.commit_timestamp_ms,
        )
        entries += _nullable_string(committed.metadata)
        count += 1
    head = BODY_KIND.pack(KIND_COMMIT) + _string(group) + INT32.pack(count)
    return head + bytes(entries)


def delete_offsets_body(group: str, partitions: Iterable[TopicPartition]) -> bytes:
    entries = bytearray()
    count = 0
    for topic, partition in partitions:
        entries += _string(topic) + INT32.pack(partition)
        count += 1
    head = BODY_KIND.pack(KIND_DELETE_OFFSETS) + _string(group) + INT32.pack(count)
    return head + bytes(entries)


def delete_group_body(group: str) -> bytes:
    return BODY_KIND.pack(KIND_DELETE_GROUP) + _string(group) + INT32.pack(0)


class _Reader:
    """Bounds-checked reads from one record body; raises _Corrupt."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        if self.pos + layout.size > len(self.data):
            raise _Corrupt(f"field at byte {self.pos} runs past the record")
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def string(self, nullable: bool = False) -> str | None:
        (length,) = self.unpack(INT16)
        if length == -1 and nullable:
            return None
        if length < 0 or self.pos + length > len(self.data):
            raise _Corrupt(f"string length {length} at byte {self.pos} is invalid")
        try:
            text = str(self.data[self.pos : self.pos + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise _Corrupt(f"string at byte {self.pos} is not UTF-8") from exc
        self.pos += length
        return text

    def text(self) -> str:
        text = self.string()
        assert text is not None
        return text


class _Change(NamedTuple):
    """One decoded record."""

    kind: int
    group: str
    commits: list[tuple[TopicPartition, CommittedOffset]]
    deletes: list[TopicPartition]


def _decode_body(body: memoryview) -> _Change:
    """The change one record body holds; raises _Corrupt."""
    reader = _Reader(body)
    (kind,) = reader.unpack(BODY_KIND)
    group = reader.text()
    (count,) = reader.unpack(INT32)
    if count < 0 or count > len(body):
        raise _Corrupt(f"entry count {count} is invalid")
    change = _Change(kind, group, [], [])
    if kind == KIND_COMMIT:
        for _ in range(count):
            topic = reader.text()
            partition, offset, epoch, timestamp = reader.unpack(COMMIT_FIELDS)
            metadata = reader.string(nullable=True)
            committed = CommittedOffset(offset, epoch, metadata, timestamp)
            change.commits.append(((topic, partition), committed))
    elif kind == KIND_DELETE_OFFSETS:
        for _ in range(count):
            topic = reader.text()
            (partition,) = reader.unpack(INT32)
            change.deletes.append((topic, partition))
    elif kind != KIND_DELETE_GROUP:
        raise _Corrupt(f"unknown record kind {kind}")
    if reader.pos != len(body):
        raise _Corrupt(f"{len(body) - reader.pos} bytes left over in the record")
    return change


# -- the store ------------------------------------------------------------------


# LIMITATION: committed offsets never expire (Kafka drops an empty group's
# offsets after offsets.retention.minutes); they go only with DeleteGroups,
# OffsetDelete or the deletion of their topic.
class OffsetStore:
    """Every group's committed offsets, persisted in the offsets log (see the
    module docstring). Changes return a sequence number; the change is
    durable once ``synced_sequence`` has reached it."""

    def __init__(
        self, data_dir: Path, *, compact_min_bytes: int = COMPACT_MIN_BYTES
    ) -> None:
        self.directory = data_dir / OFFSETS_DIR
        self.path = self.directory / LOG_FILE
        self.compact_min_bytes = compact_min_bytes
        self._offsets: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        self._fd = -1
        self._size = 0
        self._compacted_size = HEADER_SIZE
        self._written = 0
        self._synced = 0
        self._failed: OffsetLogError | None = None
        self._records_written = 0
        self._compactions = 0
        self._syncs = 0

    @classmethod
    def open(
        cls, data_dir: Path, *, compact_min_bytes: int = COMPACT_MIN_BYTES
    ) -> OffsetStore:
        """Load the log (truncating a torn tail), compact it if it holds
        superseded records, and open it for appends."""
        store = cls(data_dir, compact_min_bytes=compact_min_bytes)
        store._load()
        return store

    # -- reading --------------------------------------------------------------

    def groups(self) -> list[str]:
        """Groups with at least one committed offset."""
        return list(self._offsets)

    def has_group(self, group: str) -> bool:
        return group in self._offsets

    def fetch(
        self, group: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of ``group``: all, or those of ``partitions``
        that have one."""
        committed = self._offsets.get(group, {})
        if partitions is None:
            return dict(committed)
        return {tp: committed[tp] for tp in partitions if tp in committed}

    def topics_of(self, group: str) -> set[str]:
        return {topic for topic, _ in self._offsets.get(group, {})}

    @property
    def written_sequence(self) -> int:
        """Sequence number of the last change written."""
        return self._written

    @property
    def synced_sequence(self) -> int:
        """Every change up to this sequence number is durable."""
        return self._synced

    # -- changes --------------------------------------------------------------

    def commit(
        self, group: str, offsets: Mapping[TopicPartition, CommittedOffset]
    ) -> int:
        """Record one OffsetCommit (all partitions or none)."""
        if not offsets:
            return self._written
        sequence = self._append(commit_body(group, offsets.items()))
        self._offsets.setdefault(group, {}).update(offsets)
        return sequence

    def delete_offsets(self, group: str, partitions: Iterable[TopicPartition]) -> int:
        """Forget the offsets of ``partitions`` (OffsetDelete)."""
        committed = self._offsets.get(group, {})
        present = [tp for tp in partitions if tp in committed]
        if not present:
            return self._written
        sequence = self._append(delete_offsets_body(group, present))
        self._drop(group, present)
        return sequence

    def delete_group(self, group: str) -> int:
        """Forget every offset of ``group`` (DeleteGroups)."""
        if group not in self._offsets:
            return self._written
        sequence = self._append(delete_group_body(group))
        del self._offsets[group]
        return sequence

    def delete_topic(self, topic: str) -> int:
        """Forget every group's offsets of ``topic`` (DeleteTopics)."""
        sequence = self._written
        for group in list(self._offsets):
            partitions = [tp for tp in self._offsets[group] if tp[0] == topic]
            if partitions:
                sequence = self.delete_offsets(group, partitions)
        return sequence

    def _drop(self, group: str, partitions: Iterable[TopicPartition]) -> None:
        committed = self._offsets.get(group)
        if committed is None:
            return
        for tp in partitions:
            committed.pop(tp, None)
        if not committed:
            del self._offsets[group]

    def _append(self, body: bytes) -> int:
        if self._failed is not None:
            raise self._failed
        record = encode_record(body)
        try:
            _write_all(self._fd, record)
        except OSError as exc:
            # Cut a partial record off so the log stays readable.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._failed = OffsetLogError(
                    self.path, f"write failed ({exc.strerror}) and could not be undone"
                )
                raise self._failed from exc
            raise OffsetLogError(self.path, f"write failed: {exc.strerror}") from exc
        self._size += len(record)
        self._written += 1
        self._records_written += 1
        return self._written

    # -- durability -----------------------------------------------------------

    def sync(self, through: int) -> None:
        """fsync the log; afterwards every change up to ``through`` (a value
        of ``written_sequence`` read before the call) is durable. Safe to
        run in a worker thread while the loop thread appends."""
        if self._failed is not None:
            raise self._failed
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._failed = OffsetLogError(self.path, f"fsync failed: {exc.strerror}")
            event(
                logger,
                logging.ERROR,
                "offsets.sync_failed",
                path=self.path,
                error=exc.strerror,
            )
            raise self._failed from exc
        self._syncs += 1
        self._synced = max(self._synced, through)

    @property
    def failed(self) -> OffsetLogError | None:
        return self._failed

    def needs_compaction(self) -> bool:
        return self._size > max(self.compact_min_bytes, 2 * self._compacted_size)

    def compact(self) -> None:
        """Rewrite the log as the current table. Must not run while ``sync``
        runs in another thread. Everything written so far is durable after
        it returns."""
        if self._failed is not None:
            raise self._failed
        image = self._image()
        before = self._size
        temporary = self.path.with_name(LOG_FILE + COMPACTING_SUFFIX)

        # Write and fsync the copy, and open it for appends before the
        # rename, so the descriptor follows the file to its new name.
        fd = -1
        try:
            _write_file_durably(temporary, image)
            fd = os.open(temporary, os.O_WRONLY | os.O_APPEND)
            os.replace(temporary, self.path)
        except OSError as exc:
            # The old log is still in place and still ours. Retry only
            # after the log doubles, not on every flush.
            if fd >= 0:
                os.close(fd)
            temporary.unlink(missing_ok=True)
            self._compacted_size = self._size
            raise OffsetLogError(
                self.path, f"compaction failed: {exc.strerror}"
            ) from exc
        os.close(self._fd)
        self._fd = fd

        # Until the directory is fsynced a power loss may bring the old
        # file back, without what is appended to the new one from now on.
        try:
            _fsync_directory(self.directory)
        except OSError as exc:
            self._failed = OffsetLogError(
                self.path,
                f"fsync of the directory after compaction failed: {exc.strerror}",
            )
            raise self._failed from exc
        self._size = len(image)
        self._compacted_size = len(image)
        self._synced = self._written
        self._compactions += 1
        event(
            logger,
            logging.INFO,
            "offsets.compacted",
            path=self.path,
            bytes_before=before,
            bytes_after=len(image),
            groups=len(self._offsets),
        )

    def _image(self) -> bytes:
        parts = [HEADER]
        for group, committed in self._offsets.items():
            for chunk in _chunks(list(committed.items()), COMPACT_CHUNK_ENTRIES):
                parts.append(encode_record(commit_body(group, chunk)))
        return b"".join(parts)

    def close(self) -> None:
        """Close the file (after a final ``sync`` by the caller)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def statistics(self) -> OffsetStoreStatistics:
        return OffsetStoreStatistics(
            groups=len(self._offsets),
            partitions=sum(len(c) for c in self._offsets.values()),
            log_bytes=self._size,
            records_written=self._records_written,
            compactions=self._compactions,
            syncs=self._syncs,
        )

    # -- loading --------------------------------------------------------------

    def _load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

        # A compaction that did not reach its rename left a partial copy.
        self.path.with_name(LOG_FILE + COMPACTING_SUFFIX).unlink(missing_ok=True)

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        if len(data) < HEADER_SIZE and HEADER.startswith(data):
            # New, or torn while its header was being written.
            _write_file_durably(self.path, HEADER)
            _fsync_directory(self.directory)
            data = HEADER
        if data[: len(MAGIC)] != MAGIC:
            raise OffsetLogError(
                self.path,
                "not a Ringbus offsets log (bad magic); move it away to start"
                " with no committed offsets",
            )
        (version,) = INT16.unpack_from(data, len(MAGIC))
        if version != FORMAT_VERSION:
            raise OffsetLogError(
                self.path,
                f"format version {version} is not supported ({FORMAT_VERSION})",
            )

        end, records = self._replay(memoryview(data))
        if end < len(data):
            self._truncate(end, len(data))
        self._size = end

        # Compact if any record was superseded; otherwise keep the file.
        image = self._image()
        self._compacted_size = len(image)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        if len(image) < self._size:
            try:
                self.compact()
            except OffsetLogError as exc:
                if self._failed is not None:
                    raise
                # The uncompacted log is still valid; carry on with it.
                event(
                    logger,
                    logging.WARNING,
                    "offsets.compaction_failed",
                    path=self.path,
                    error=str(exc),
                )
        event(
            logger,
            logging.INFO,
            "offsets.loaded",
            path=self.path,
            records=records,
            groups=len(self._offsets),
            bytes=self._size,
        )

    def _replay(self, data: memoryview) -> tuple[int, int]:
        """Apply every whole record; return where the valid part ends and how
        many records it holds."""
        pos = HEADER_SIZE
        records = 0
        for body, next_pos in _records(data, pos):
            try:
                change = _decode_body(body)
            except _Corrupt as exc:
                event(
                    logger,
                    logging.WARNING,
                    "offsets.record_invalid",
                    path=self.path,
                    position=pos,
                    reason=str(exc),
                )
                break
            self._apply(change)
            records += 1
            pos = next_pos
        return pos, records

    def _apply(self, change: _Change) -> None:
        if change.kind == KIND_COMMIT:
            committed = self._offsets.setdefault(change.group, {})
            committed.update(change.commits)
            if not committed:
                del self._offsets[change.group]
        elif change.kind == KIND_DELETE_OFFSETS:
            self._drop(change.group, change.deletes)
        else:
            self._offsets.pop(change.group, None)

    def _truncate(self, end: int, size: int) -> None:
        with self.path.open("r+b") as file:
            file.truncate(end)
            file.flush()
            os.fsync(file.fileno())
        event(
            logger,
            logging.WARNING,
            "offsets.tail_truncated",
            path=self.path,
            position=end,
            dropped_bytes=size - end,
            reason="incomplete or corrupt record, e.g. a write cut short by a crash",
        )


def _records(data: memoryview, pos: int) -> Iterator[tuple[memoryview, int]]:
    """Yield (body, position after it) for each record whose length and CRC
    hold, stopping at the first that does not."""
    end = len(data)

    # Each turn consumes at least one record prefix, so the loop runs at most
    # len(data) / RECORD_PREFIX.size times.
    while end - pos >= RECORD_PREFIX.size:
        length, crc = RECORD_PREFIX.unpack_from(data, pos)
        body_size = length - 4
        if body_size < MIN_BODY_SIZE or length > MAX_RECORD_BYTES:
            return
        start = pos + RECORD_PREFIX.size
        if start + body_size > end:
            return
        body = data[start : start + body_size]
        if crc32c.crc32c(body) != crc:
            return
        pos = start + body_size
        yield body, pos


def _chunks(
    items: list[tuple[TopicPartition, CommittedOffset]], size: int
) -> Iterator[list[tuple[TopicPartition, CommittedOffset]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    # A regular file takes the whole write unless the disk is full, which
    # raises; the bound only guards against a zero-length write loop.
    for _ in range(1024):
        if not view:
            return
        written = os.write(fd, view)
        view = view[written:]
    raise OSError(5, "short writes did not finish")


def _write_file_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
