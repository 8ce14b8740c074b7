"""The produce path of a net process: request -> produce ring -> completion.

For each Produce request:
  1. decode it (record batches stay memoryviews into the receive buffer);
  2. resolve every topic-partition to its dense partition index, creating
     unknown topics through the control process when auto-creation is on;
  3. check each partition's batch (magic, length, CRC-32C, counts) with the
     same code the writer's storage uses; a bad batch gets its error for its
     partition only and never reaches the ring;
  4. copy each good batch into the produce ring with its descriptor (the
     one copy of the data path) and publish them with one head store;
  5. when the writer's completions for every batch have arrived, encode the
     response into the request's slot on the connection (acks=0: none).

A full ring stalls the connection (it stops reading, its frames stay in its
buffer) until the writer frees space; nothing is dropped or copied aside.
A request that waits for auto-created topics stalls it the same way, so
later requests cannot overtake it. Once its batches are in the ring a
request lets go of its views into the receive buffer (a bytearray cannot
grow while views of it are alive).
DeleteRecords uses the same ring with descriptor-only commands, since only
the writer changes a log.

Completions are matched by request id, a counter of this process. A
completion for an unknown id is ignored: after a writer restart the writer
may complete a batch twice (see broker.writer).
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from broker.layout import COMPLETION_FIELDS, KIND_BATCH, KIND_DELETE_RECORDS
from broker.log.batch import RECORDS_COUNT, validate_batch
from broker.logs import event
from net.connection import Connection, ResponseSlot
from net.kafka import codec
from net.kafka.codec import RequestHeader
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from shm.ring import descriptor_dtype, descriptor_struct

if TYPE_CHECKING:
    from net.server import NetProcess
    from shm.ring import RingReceiver, RingSender

logger = logging.getLogger(__name__)

_RECORDS_COUNT = struct.Struct(">i")


def _completion_struct() -> struct.Struct:
    """Unpacks one completion descriptor to a tuple, padding skipped: the
    ring's three fields, then COMPLETION_FIELDS in order."""
    packer = descriptor_struct(descriptor_dtype(COMPLETION_FIELDS))
    if isinstance(packer, str):
        raise TypeError(f"completion descriptor: {packer}")
    return packer


_COMPLETION = _completion_struct()

# Produce v8 introduced INVALID_RECORD; older clients get CORRUPT_MESSAGE.
INVALID_RECORD_SINCE = 8


class PendingRequest:
    """A Produce or DeleteRecords request waiting for the writer."""

    __slots__ = (
        "by_partition",
        "connection",
        "cursor",
        "header",
        "holds_frame",
        "items",
        "remaining",
        "request_id",
        "response",
        "slot",
        "started_ns",
    )

    def __init__(
        self,
        request_id: int,
        connection: Connection,
        header: RequestHeader,
        slot: ResponseSlot | None,
        started_ns: int,
    ) -> None:
        self.request_id = request_id
        self.connection = connection
        self.header = header
        self.slot = slot
        self.started_ns = started_ns
        self.response: dict[str, Any] = {}
        # (partition result, dense index, batch bytes or None, record count,
        # acks or delete offset) still to put on the ring, from ``cursor``.
        self.items: list[tuple[dict[str, Any], int, Any, int, int]] = []
        self.cursor = 0
        self.remaining = 0
        # True while a stalled request's batches are views into the
        # connection's receive buffer (its frame stays unconsumed).
        self.holds_frame = False
        self.by_partition: dict[int, deque[dict[str, Any]]] = {}


class ProducePath:
    """Produce and DeleteRecords for one net process (see module docstring)."""

    def __init__(
        self, process: NetProcess, sender: RingSender, receiver: RingReceiver
    ) -> None:
        self.process = process
        self.sender = sender
        self.receiver = receiver
        self.pending: dict[int, PendingRequest] = {}
        self.next_request_id = 1
        self.stalled: deque[tuple[Connection, PendingRequest]] = deque()
        self.waiting_for_space = False
        # Half the data area: one batch may never need more, so a request
        # always fits once the ring drains.
        self.max_batch_bytes = process.settings.ring_bytes // 2

        counters = process.memory.counters
        self.counters = process.runtime.counters
        self.c_batches = counters.counter_id("produce_batches")
        self.c_records = counters.counter_id("produce_records")
        self.c_bytes = counters.counter_id("produce_bytes")
        self.c_stalls = counters.counter_id("ring_full_stalls")

    # -- requests -------------------------------------------------------------

    def handle_produce(
        self, connection: Connection, header: RequestHeader, body: dict[str, Any]
    ) -> bool:
        """Start a Produce request; False if it stalled on a full ring."""
        acks = body["acks"]
        slot = connection.reserve_slot() if acks != 0 else None
        pending = self._new_request(connection, header, slot)
        topics_out: list[dict[str, Any]] = []
        pending.response = {"responses": topics_out, "throttle_time_ms": 0}

        invalid_code = (
            ErrorCode.INVALID_RECORD
            if header.api_version >= INVALID_RECORD_SINCE
            else ErrorCode.CORRUPT_MESSAGE
        )
        refuse: int | None = None
        if acks not in (-1, 0, 1):
            refuse = ErrorCode.INVALID_REQUIRED_ACKS
        elif body.get("transactional_id") is not None:
            # LIMITATION: transactions are not supported; transactional
            # producers are refused per partition.
            refuse = ErrorCode.INVALID_REQUEST

        missing: list[str] = []
        views = self.process.topics
        for topic in body["topic_data"]:
            name = topic["name"]
            partitions_out: list[dict[str, Any]] = []
            topics_out.append({"name": name, "partition_responses": partitions_out})
            for partition in topic["partition_data"]:
                result = _partition_result(partition["index"])
                partitions_out.append(result)
                if refuse is not None:
                    result["error_code"] = refuse
                    continue
                index = views.partition_index(name, partition["index"])
                if index is None:
                    if views.topic(name) is None and self.process.auto_create:
                        missing.append(name)
                        # Keep the batch: the receive buffer moves on meanwhile.
                        records = partition["records"]
                        pending.items.append(
                            (result, -1, bytes(records or b""), 0, acks)
                        )
                    else:
                        result["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                self._check_batch(pending, result, index, partition, acks, invalid_code)

        if missing:
            # Stall the connection until the topics exist: its later requests
            # must not overtake this one, and the batches already checked are
            # views into the receive buffer, which must not be overwritten.
            task = self.process.loop.create_task(
                self._after_create(connection, pending, set(missing), invalid_code)
            )
            self.process.background.add(task)
            task.add_done_callback(self.process.background.discard)
            pending.holds_frame = True
            return False
        if self._enqueue(connection, pending):
            return True
        pending.holds_frame = True
        return False

    def _check_batch(
        self,
        pending: PendingRequest,
        result: dict[str, Any],
        index: int,
        partition: dict[str, Any],
        acks: int,
        invalid_code: int,
    ) -> None:
        records = partition["records"]
        if not records:
            result["error_code"] = invalid_code
            result["error_message"] = "no record batch"
            return
        if len(records) > self.max_batch_bytes:
            result["error_code"] = ErrorCode.MESSAGE_TOO_LARGE
            return
        problem = validate_batch(records)
        if problem is not None:
            code = problem.kafka_error_code
            if code == ErrorCode.INVALID_RECORD:
                code = invalid_code
            result["error_code"] = code
            result["error_message"] = str(problem)
            event(
                logger,
                logging.DEBUG,
                "produce.batch_rejected",
                peer=pending.connection.peer,
                partition=index,
                reason=str(problem),
            )
            return
        count = _RECORDS_COUNT.unpack_from(records, RECORDS_COUNT)[0]
        pending.items.append((result, index, records, count, acks))

    async def _after_create(
        self,
        connection: Connection,
        pending: PendingRequest,
        names: set[str],
        invalid_code: int,
    ) -> None:
        """Finish a Produce that named unknown topics, once they exist."""
        try:
            await self.process.topics.create(names)
        except Exception:
            event(logger, logging.ERROR, "topic.auto_create_error", exc_info=True)

        self._check_created(pending, invalid_code)

        if connection.closed:
            return
        # Answering at once (no batch to append) may find the peer gone.
        if self._enqueue(connection, pending) and not connection.closed:
            # On a full ring, retry_stalled does this once there is space.
            connection.pending_frames.popleft().release()
            pending.holds_frame = False
            connection.resume()

    def _check_created(self, pending: PendingRequest, invalid_code: int) -> None:
        """Resolve and check the batches of topics that were just created.

        A method of its own so that no local keeps a view into the receive
        buffer alive once the request is in the ring and the connection
        resumes."""
        waiting = pending.items
        pending.items = []
        views = self.process.topics
        for item in waiting:
            result, index, records, _, acks = item
            if index >= 0:
                pending.items.append(item)
                continue
            name = _topic_of(pending.response, result)
            resolved = views.partition_index(name, result["index"])
            if resolved is None:
                result["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            index = resolved
            partition = {"records": memoryview(records)}
            self._check_batch(pending, result, index, partition, acks, invalid_code)

    def handle_delete_records(
        self, connection: Connection, header: RequestHeader, body: dict[str, Any]
    ) -> bool:
        """Start a DeleteRecords request; False if it stalled on a full ring."""
        slot = connection.reserve_slot()
        pending = self._new_request(connection, header, slot)
        topics_out: list[dict[str, Any]] = []
        pending.response = {"topics": topics_out, "throttle_time_ms": 0}
        for topic in body["topics"]:
            partitions_out: list[dict[str, Any]] = []
            topics_out.append({"name": topic["name"], "partitions": partitions_out})
            for partition in topic["partitions"]:
                result = {
                    "partition_index": partition["partition_index"],
                    "low_watermark": -1,
                    "error_code": 0,
                }
                partitions_out.append(result)
                index = self.process.topics.partition_index(
                    topic["name"], partition["partition_index"]
                )
                if index is None:
                    result["error_code"] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                pending.items.append((result, index, None, 0, partition["offset"]))
        if self._enqueue(connection, pending):
            return True
        pending.holds_frame = True
        return False

    def _new_request(
        self, connection: Connection, header: RequestHeader, slot: ResponseSlot | None
    ) -> PendingRequest:
        request_id = self.next_request_id
        self.next_request_id += 1
        return PendingRequest(request_id, connection, header, slot, time.monotonic_ns())

    # -- the ring -------------------------------------------------------------

    def _enqueue(self, connection: Connection, pending: PendingRequest) -> bool:
        """Put the request's remaining batches on the ring; False if it filled."""
        items = pending.items
        if pending.cursor == 0:
            pending.remaining = len(items)
            if not items:
                self._finish(pending)
                return True
            self.pending[pending.request_id] = pending
            by_partition = pending.by_partition
            for result, index, _, _, _ in items:
                by_partition.setdefault(index, deque()).append(result)

        while pending.cursor < len(items):
            placed = self._place(pending, items[pending.cursor :])
            if placed == 0:
                self.counters.add(self.c_stalls)
                self.stalled.append((connection, pending))
                self._arm_for_space()
                return False
            pending.cursor += placed
        _drop_batch_views(pending)
        return True

    def _place(
        self,
        pending: PendingRequest,
        items: list[tuple[dict[str, Any], int, Any, int, int]],
    ) -> int:
        """Copy and describe as many of ``items`` as fit, in order, and
        publish them with one ``head`` store; returns how many."""
        # One put per batch packs its whole descriptor with one struct call:
        # far cheaper than numpy column assignments for the usual one to a
        # few batches per request (see RingSender.put).
        put = self.sender.put
        request_id = pending.request_id
        is_delete = pending.header.api_key == ApiKey.DELETE_RECORDS
        placed = records = nbytes = 0
        for _, index, batch, count, value in items:
            if is_delete:
                # PRODUCE_FIELDS: request_id, base_offset, argument,
                # partition, record_count, acks, kind, error_code.
                fits = put(
                    b"", request_id, -1, value, index, 0, -1, KIND_DELETE_RECORDS, 0
                )
            else:
                fits = put(batch, request_id, -1, 0, index, count, value, KIND_BATCH, 0)
            if not fits:
                break
            placed += 1
            if not is_delete:
                records += count
                nbytes += len(batch)
        if placed == 0:
            return 0

        if not is_delete:
            counters = self.counters
            counters.add(self.c_batches, placed)
            counters.add(self.c_records, records)
            counters.add(self.c_bytes, nbytes)
        self.sender.publish()
        return placed

    def retry_stalled(self) -> None:
        """Called when the writer freed ring space: resume in arrival order."""
        while self.stalled:
            connection, pending = self.stalled[0]
            if connection.closed:
                self.stalled.popleft()
                continue
            if not self._enqueue_more(pending):
                self._arm_for_space()
                return
            self.stalled.popleft()
            if pending.holds_frame:
                connection.pending_frames.popleft().release()
                pending.holds_frame = False
            connection.resume()

    def _enqueue_more(self, pending: PendingRequest) -> bool:
        items = pending.items
        while pending.cursor < len(items):
            placed = self._place(pending, items[pending.cursor :])
            if placed == 0:
                return False
            pending.cursor += placed
        _drop_batch_views(pending)
        return True

    def _arm_for_space(self) -> None:
        if not self.sender.arm_for_space(0, 1):
            self.waiting_for_space = True

    # -- completions ------------------------------------------------------------

    def drain_completions(self) -> int:
        """Take every completion the writer posted; finish whole requests."""
        receiver = self.receiver
        unpack = _COMPLETION.iter_unpack
        pending_by_id = self.pending
        handled = 0
        while True:
            rows = receiver.receive()
            count = len(rows)
            if not count:
                break
            # One tuple per completion from the rows' bytes: cheaper than a
            # numpy column view and tolist per field for a few rows.
            completions = unpack(rows.tobytes())
            receiver.release(count)
            handled += count

            for (
                _,
                _,
                _,
                request_id,
                base_offset,
                append_time,
                log_start,
                partition,
                error_code,
            ) in completions:
                pending = pending_by_id.get(request_id)
                if pending is None:
                    continue
                queue = pending.by_partition.get(partition)
                if not queue:
                    continue
                result = queue.popleft()
                if "base_offset" in result:
                    result["base_offset"] = base_offset
                    result["log_start_offset"] = log_start
                    # -1 (the default) unless the topic uses LogAppendTime.
                    result["log_append_time_ms"] = append_time
                else:
                    result["low_watermark"] = log_start
                result["error_code"] = error_code
                pending.remaining -= 1
                if pending.remaining == 0:
                    del pending_by_id[request_id]
                    self._finish(pending)
        return handled

    def _finish(self, pending: PendingRequest) -> None:
        process = self.process
        header = pending.header
        codes = [
            result["error_code"]
            for topic in pending.response.get(
                "responses", pending.response.get("topics", [])
            )
            for result in topic.get("partition_responses", topic.get("partitions", []))
        ]
        process.request_done(header.api_key, pending.started_ns, codes)
        if pending.slot is None or pending.connection.closed:
            return
        chunks = codec.encode_response(
            header.api_key, header.api_version, header.correlation_id, pending.response
        )
        pending.connection.complete(pending.slot, chunks)

    def connection_closed(self, connection: Connection) -> None:
        """Forget stalled work of a closed connection; its batches already on
        the ring still complete (and are dropped then)."""
        self.stalled = deque((c, p) for c, p in self.stalled if c is not connection)


def _drop_batch_views(pending: PendingRequest) -> None:
    """Every batch is in the ring: let go of the views into the connection's
    receive buffer, which cannot grow while any of them is alive (BufferError)."""
    pending.items = []
    pending.cursor = 0


def _partition_result(index: int) -> dict[str, Any]:
    return {
        "index": index,
        "error_code": 0,
        "base_offset": -1,
        "log_append_time_ms": -1,
        "log_start_offset": -1,
        "record_errors": [],
        "error_message": None,
    }


def _topic_of(response: dict[str, Any], result: dict[str, Any]) -> str:
    for topic in response["responses"]:
        for candidate in topic["partition_responses"]:
            if candidate is result:
                return str(topic["name"])
    raise LookupError("partition result not in its response")
