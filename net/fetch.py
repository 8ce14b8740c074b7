"""The fetch path of a net process: offsets to file ranges, long polls.

For each requested partition:
  1. read its row of the partition state table (seqlock, written by the
     writer): log start offset, high watermark, the high watermark's segment
     and byte position, segments version;
  2. check the fetch offset: below the log start or above the high
     watermark is OFFSET_OUT_OF_RANGE; at the high watermark there is
     nothing to send yet;
  3. find the segment by base offset (the partition's segment list, re-read
     when its segments version changes) and the batch holding the offset
     (sparse index, then a forward scan of 61-byte headers);
  4. answer with a ``FileRange`` from that position, ending at the high
     watermark's position in its segment (or the end of a sealed segment),
     capped by the partition's and the response's max bytes but never below
     one whole batch (KIP-74). The connection sends the range with
     ``os.sendfile``; record bytes never enter Python.

ListOffsets by timestamp answers with the first record at or after the
time: the time index finds the batch, and that one batch is read (and
decompressed, ``broker.log.records``) in this process, once per request.

LIMITATION: that read and decompression run on this process's event loop
(up to MAX_RECORDS_BYTES of records, milliseconds for usual batches), so a
ListOffsets on a huge compressed batch delays this process's other
connections meanwhile.

A fetch that finds fewer than ``min_bytes`` parks until the writer moves a
high watermark (it wakes this process through its eventfd when the
``parked_fetches_gauge`` of this process is non-zero) or ``max_wait_ms``
passes; it is then evaluated again and answered in its place in the
connection's response order.

Fetch v7+ clients may keep an incremental fetch session (KIP-227): the
request's session id and epoch pick a ``FetchContext`` from this process's
``FetchSessionCache`` (``net.fetch_session``) when the request arrives. The
context says which partitions to read (the request's, or all of the
session's with their cached fetch offsets) and, once, when the answer is
built, which of them the answer names: a full fetch names every requested
partition, an incremental one only those that changed. A parked fetch is
re-evaluated without touching the session; only the answer sent updates it.
A session error (unknown id, wrong epoch) is answered at once with the
top-level error code and no partitions.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.log.batch import TIMESTAMP_TYPE_BIT
from broker.log.records import RecordsError, find_record_in_file
from broker.log.segment import SegmentReader, list_segment_base_offsets
from broker.logs import event
from net.connection import Connection, ResponseSlot
from net.fetch_session import (
    ERROR,
    FINAL_EPOCH,
    INVALID_SESSION_ID,
    CachedPartition,
    FetchContext,
    FetchSessionCache,
)
from net.kafka import codec
from net.kafka.codec import FileRange, RequestHeader
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from shm.table import TornRowError

if TYPE_CHECKING:
    from net.server import NetProcess

logger = logging.getLogger(__name__)

ONLINE = 1

# Readers are kept open per segment; closed when the segment disappears
# from the listing. This bounds open descriptors by the segments fetched.


class PartitionFiles:
    """One partition's segments as seen by this process."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        # "<topic>-<partition>": compared on every fetch, cheaper than a Path.
        self.name = name
        self.bases: list[int] = []
        self.version = -1
        self.readers: dict[int, SegmentReader] = {}
        self.sealed_sizes: dict[int, int] = {}

    def refresh(self, version: int) -> None:
        self.bases = list_segment_base_offsets(self.directory)
        self.version = version
        alive = set(self.bases)
        for base in [b for b in self.readers if b not in alive]:
            self.readers.pop(base).close()
            self.sealed_sizes.pop(base, None)

    def reader(self, base: int) -> SegmentReader:
        reader = self.readers.get(base)
        if reader is None:
            reader = SegmentReader(self.directory, base)
            self.readers[base] = reader
        return reader

    def segment_for(self, offset: int) -> int | None:
        at = bisect.bisect_right(self.bases, offset) - 1
        return self.bases[at] if at >= 0 else None

    def sealed_size(self, base: int) -> int:
        size = self.sealed_sizes.get(base)
        if size is None:
            size = os.fstat(self.reader(base).fd).st_size
            self.sealed_sizes[base] = size
        return size

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


class ParkedFetch:
    __slots__ = (
        "body",
        "connection",
        "context",
        "deadline",
        "header",
        "slot",
        "started_ns",
    )

    def __init__(
        self,
        connection: Connection,
        header: RequestHeader,
        body: dict[str, Any],
        context: FetchContext,
        slot: ResponseSlot,
        deadline: float,
        started_ns: int,
    ) -> None:
        self.connection = connection
        self.header = header
        self.body = body
        self.context = context
        self.slot = slot
        self.deadline = deadline
        self.started_ns = started_ns


class Built:
    """One evaluation of a fetch: the partitions read, one result each, and
    the record bytes and (estimated) records they hold."""

    __slots__ = ("entries", "records", "results", "size")

    def __init__(
        self,
        entries: list[CachedPartition],
        results: list[dict[str, Any]],
        size: int,
        records: int,
    ) -> None:
        self.entries = entries
        self.results = results
        self.size = size
        self.records = records


class FetchPath:
    """Fetch and ListOffsets for one net process (see module docstring)."""

    def __init__(self, process: NetProcess) -> None:
        self.process = process
        self.table = process.memory.partitions
        names = self.table.field_names
        self.f_start = names.index("log_start_offset")
        self.f_hw = names.index("high_watermark")
        self.f_hw_segment = names.index("high_watermark_segment")
        self.f_hw_position = names.index("high_watermark_position")
        self.f_version = names.index("segments_version")
        self.f_state = names.index("state")
        self.files: dict[int, PartitionFiles] = {}
        self.parked: list[ParkedFetch] = []
        self.timer: Any = None
        self.sessions = FetchSessionCache(process.index)

        counters = process.memory.counters
        self.counters = process.runtime.counters
        self.c_fetch_bytes = counters.counter_id("fetch_bytes")
        self.c_fetch_records = counters.counter_id("fetch_records")
        self.parked_gauge = counters.counters[process.runtime.plan.slot]
        self.c_parked = counters.counter_id("parked_fetches_gauge")

    # -- partition state --------------------------------------------------------

    def _row(self, index: int) -> tuple[Any, ...] | None:
        try:
            row = self.table.read_row(index)
        except TornRowError:
            return None
        if row[self.f_state] != ONLINE:
            return None
        return row

    def _files(self, index: int, topic: str, partition: int) -> PartitionFiles:
        files = self.files.get(index)
        name = f"{topic}-{partition}"
        # A row reused for another partition (a topic deleted and created).
        if files is None or files.name != name:
            if files is not None:
                files.close()
            files = PartitionFiles(self.process.settings.data_dir / name, name)
            self.files[index] = files
        return files

    # -- Fetch ------------------------------------------------------------------

    def handle_fetch(
        self, connection: Connection, header: RequestHeader, body: dict[str, Any]
    ) -> None:
        started = time.monotonic_ns()
        slot = connection.reserve_slot()

        # The session is looked up, its epoch checked and moved on, once,
        # here; re-evaluations of a parked fetch reuse this context.
        context = self.sessions.new_context(
            body.get("session_id", INVALID_SESSION_ID),
            body.get("session_epoch", FINAL_EPOCH),
            body["topics"],
            body.get("forgotten_topics_data") or [],
        )
        if context.kind == ERROR:
            nothing = Built([], [], 0, 0)
            self._answer(connection, header, slot, context, nothing, started)
            return

        built = self._build(context, body)
        max_wait = max(0, body["max_wait_ms"])
        if built.size >= body["min_bytes"] or max_wait == 0:
            self._answer(connection, header, slot, context, built, started)
            return
        deadline = time.monotonic() + max_wait / 1000
        self.parked.append(
            ParkedFetch(connection, header, body, context, slot, deadline, started)
        )
        self._publish_parked()
        self._schedule_timer()

    def _answer(
        self,
        connection: Connection,
        header: RequestHeader,
        slot: ResponseSlot,
        context: FetchContext,
        built: Built,
        started_ns: int,
    ) -> None:
        """Send the answer for ``built``: the only place a fetch's session
        is updated and its bytes and records are counted."""
        error_code, session_id, topics_out = context.finish(
            built.entries, built.results
        )
        if built.size:
            self.counters.add(self.c_fetch_bytes, built.size)
            self.counters.add(self.c_fetch_records, built.records)

        response = {
            "throttle_time_ms": 0,
            "error_code": error_code,
            "session_id": session_id,
            "responses": topics_out,
        }
        chunks = codec.encode_response(
            ApiKey.FETCH, header.api_version, header.correlation_id, response
        )
        error_codes = [p["error_code"] for t in topics_out for p in t["partitions"]]
        if error_code:
            error_codes.append(error_code)
        self.process.request_done(ApiKey.FETCH, started_ns, error_codes)
        connection.complete(slot, chunks)

    def _build(self, context: FetchContext, body: dict[str, Any]) -> Built:
        """Read every partition of the fetch for the current state."""
        topics = self.process.topics
        response_budget = body.get("max_bytes", 0x7FFFFFFF)
        if response_budget <= 0:
            response_budget = 0x7FFFFFFF
        entries = context.entries()
        results: list[dict[str, Any]] = []
        total = 0
        records = 0
        for entry in entries:
            name = entry.topic
            partition = entry.partition
            result: dict[str, Any] = {
                "partition_index": partition,
                "error_code": 0,
                "high_watermark": -1,
                "last_stable_offset": -1,
                "log_start_offset": -1,
                "aborted_transactions": None,
                "preferred_read_replica": -1,
                "records": b"",
            }
            results.append(result)
            index = topics.partition_index(name, partition)
            if index is None:
                result["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            limit = min(entry.max_bytes, response_budget - total)
            sent, count = self._read_partition(
                index,
                name,
                partition,
                entry.fetch_offset,
                limit,
                result,
                first=total == 0,
            )
            total += sent
            records += count
        return Built(entries, results, total, records)

    def _read_partition(
        self,
        index: int,
        topic: str,
        partition: int,
        offset: int,
        limit: int,
        result: dict[str, Any],
        first: bool,
    ) -> tuple[int, int]:
        """Fill ``result`` for one partition; the record bytes it returns
        and their estimated record count (counted when answered)."""
        row = self._row(index)
        if row is None:
            result["error_code"] = ErrorCode.NOT_LEADER_OR_FOLLOWER
            return 0, 0
        log_start = int(row[self.f_start])
        high_watermark = int(row[self.f_hw])
        result["high_watermark"] = high_watermark
        result["last_stable_offset"] = high_watermark
        result["log_start_offset"] = log_start
        if offset < log_start or offset > high_watermark:
            result["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
            return 0, 0
        if offset == high_watermark:
            return 0, 0

        files = self._files(index, topic, partition)
        version = int(row[self.f_version])
        hw_segment = int(row[self.f_hw_segment])
        if files.version != version or hw_segment not in files.bases:
            files.refresh(version)
        base = files.segment_for(offset)
        if base is None:
            result["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
            return 0, 0

        try:
            reader = files.reader(base)
            end = (
                int(row[self.f_hw_position])
                if base == hw_segment
                else files.sealed_size(base)
            )
            found = reader.find_position(offset, end)
            if found is None and base != hw_segment:
                # The offset lies past this sealed segment's last batch: the
                # next segment starts with it.
                at = files.bases.index(base) + 1
                if at < len(files.bases):
                    base = files.bases[at]
                    reader = files.reader(base)
                    end = (
                        int(row[self.f_hw_position])
                        if base == hw_segment
                        else files.sealed_size(base)
                    )
                    found = reader.find_position(offset, end)
        except FileNotFoundError:
            # Retention deleted the segment between the listing and now.
            files.refresh(-1)
            result["error_code"] = ErrorCode.OFFSET_OUT_OF_RANGE
            return 0, 0
        if found is None:
            return 0, 0
        position, batch = found

        # At least one whole batch, even above the limits (KIP-74).
        length = min(end - position, max(limit, 0))
        if length < batch.size:
            if not first and limit < batch.size:
                return 0, 0
            length = batch.size
        result["records"] = FileRange(reader.fd, position, length)

        # Offsets are contiguous, so a range that reaches the high watermark
        # holds exactly high watermark - first base offset records.
        # LIMITATION: a range cut by max bytes is counted in proportion to
        # its bytes (reading every batch header would cost a pread each).
        span = high_watermark - batch.base_offset
        if position + length < end:
            span = span * length // max(end - position, 1)
        return length, span

    # -- parking ----------------------------------------------------------------

    def _publish_parked(self) -> None:
        self.parked_gauge[self.c_parked] = len(self.parked)

    def _schedule_timer(self) -> None:
        if not self.parked:
            return
        soonest = min(p.deadline for p in self.parked)
        loop = self.process.loop
        if self.timer is not None:
            self.timer.cancel()
        delay = max(0.0, soonest - time.monotonic())
        self.timer = loop.call_later(delay, self.wake)

    def wake(self) -> None:
        """Re-evaluate parked fetches: answer those now satisfied or expired."""
        if not self.parked:
            return
        now = time.monotonic()
        still: list[ParkedFetch] = []
        for parked in self.parked:
            if parked.connection.closed:
                continue
            try:
                # Re-evaluating reads only; the session changes when answered.
                built = self._build(parked.context, parked.body)
                if built.size >= parked.body["min_bytes"] or now >= parked.deadline:
                    self._answer(
                        parked.connection,
                        parked.header,
                        parked.slot,
                        parked.context,
                        built,
                        parked.started_ns,
                    )
                else:
                    still.append(parked)
            except Exception:
                # An internal fault fails this fetch's connection, as in
                # handle_frame; the other parked fetches are still served.
                event(
                    logger,
                    logging.ERROR,
                    "fetch.failed",
                    exc_info=True,
                    peer=parked.connection.peer,
                )
                parked.connection.close("internal error", level=logging.ERROR)
        self.parked = still
        self._publish_parked()
        self.timer = None
        self._schedule_timer()

    # -- ListOffsets --------------------------------------------------------------

    def handle_list_offsets(
        self, connection: Connection, header: RequestHeader, body: dict[str, Any]
    ) -> None:
        started = time.monotonic_ns()
        topics_out: list[dict[str, Any]] = []
        for topic in body["topics"]:
            partitions_out: list[dict[str, Any]] = []
            topics_out.append({"name": topic["name"], "partitions": partitions_out})
            for request in topic["partitions"]:
                result = {
                    "partition_index": request["partition_index"],
                    "error_code": 0,
                    "old_style_offsets": [],
                    "timestamp": -1,
                    "offset": -1,
                    "leader_epoch": -1,
                }
                partitions_out.append(result)
                self._list_offset(topic["name"], request, result, header.api_version)
        response = {"throttle_time_ms": 0, "topics": topics_out}
        chunks = codec.encode_response(
            ApiKey.LIST_OFFSETS, header.api_version, header.correlation_id, response
        )
        self.process.request_done(
            ApiKey.LIST_OFFSETS,
            started,
            [p["error_code"] for t in topics_out for p in t["partitions"]],
        )
        connection.send_now(chunks)

    def _list_offset(
        self,
        topic: str,
        request: dict[str, Any],
        result: dict[str, Any],
        version: int,
    ) -> None:
        partition = request["partition_index"]
        index = self.process.topics.partition_index(topic, partition)
        row = self._row(index) if index is not None else None
        if index is None or row is None:
            result["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            return
        timestamp = request["timestamp"]
        log_start = int(row[self.f_start])
        high_watermark = int(row[self.f_hw])
        if timestamp == -1:  # latest
            offset = high_watermark
        elif timestamp == -2:  # earliest
            offset = log_start
        else:
            # v1+ clients read the timestamp too; Java refuses a negative one
            # next to a real offset.
            offset, result["timestamp"] = self._offset_for_timestamp(
                index, topic, partition, row, timestamp
            )
        result["offset"] = offset
        if version == 0:
            result["old_style_offsets"] = [offset]

    def _offset_for_timestamp(
        self,
        index: int,
        topic: str,
        partition: int,
        row: tuple[Any, ...],
        timestamp: int,
    ) -> tuple[int, int]:
        """The offset and timestamp of the first record whose timestamp >=
        ``timestamp`` (at or after the log start offset), or (-1, -1) when
        no record is that late (Kafka's answer for a time past the end).

        The time index and a header scan find the first batch whose
        maxTimestamp reaches the time; that batch is read and, if
        compressed, decompressed to find the record (``broker.log.records``;
        once per request, never on the fetch path). Under LogAppendTime
        every record has the batch's maxTimestamp.
        """
        files = self._files(index, topic, partition)
        hw_segment = int(row[self.f_hw_segment])
        log_start = int(row[self.f_start])
        files.refresh(int(row[self.f_version]))
        for base in files.bases:
            if base > hw_segment:
                break
            end = (
                int(row[self.f_hw_position])
                if base == hw_segment
                else files.sealed_size(base)
            )
            try:
                reader = files.reader(base)
                found = reader.find_timestamp(timestamp, end)
                if found is None:
                    continue
                record = find_record_in_file(
                    reader.fd, reader.log_path, found[0], end, timestamp, log_start
                )
            except FileNotFoundError:
                continue
            except RecordsError as exc:
                # LIMITATION: a batch whose records do not decode (stored
                # unchecked on produce) is answered at batch granularity.
                return self._batch_answer(topic, partition, log_start, exc)
            if record is not None:
                return record.offset, record.timestamp
        return -1, -1

    @staticmethod
    def _batch_answer(
        topic: str, partition: int, log_start: int, exc: RecordsError
    ) -> tuple[int, int]:
        """The answer when a batch's records cannot be read (they were
        stored unchecked, or expand past MAX_RECORDS_BYTES): the batch's
        first offset and timestamp, so consumers start early rather than
        late, which skips nothing."""
        batch = exc.header
        event(
            logger,
            logging.WARNING,
            "list_offsets.records_unreadable",
            topic_partition=f"{topic}-{partition}",
            base_offset=batch.base_offset,
            error=exc,
            action="answering with the batch's first offset",
        )
        found_timestamp = batch.base_timestamp
        if batch.attributes & TIMESTAMP_TYPE_BIT or found_timestamp < 0:
            found_timestamp = batch.max_timestamp
        return max(int(batch.base_offset), log_start), int(found_timestamp)

    def close(self) -> None:
        for files in self.files.values():
            files.close()
        self.files.clear()
        if self.timer is not None:
            self.timer.cancel()
