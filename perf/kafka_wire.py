"""The raw Kafka side of the load generators: frames, pipelines, fetch cursors.

Owns what a load generator needs to speak the Kafka protocol on a plain
socket without a client library: record batches built once
(``broker.log.batch.build_batch``), Produce request frames built once
(``net.kafka.codec.encode_request``) and rewritten per send only in their
correlation id, the bookkeeping of requests in flight on one connection, a
receive buffer that cuts response frames, the offsets a pipelined fetcher
asks for, and a small blocking admin client (CreateTopics, DeleteTopics,
ListOffsets).

Invariants:

- A connection has at most ``max_in_flight`` requests outstanding, and its
  responses arrive in the order the requests were sent (Kafka guarantees
  it per connection); ``RequestPipeline.complete`` raises on anything else.
- A pre-built frame is sent whole; only bytes 8..11 (the correlation id)
  change between sends, after the previous ``sendall`` returned (the kernel
  has copied the bytes by then).
- ``FetchCursor`` counts every offset exactly once, however far ahead its
  requests speculate: a response counts only from the cursor's next offset
  on, and a response that starts beyond it rewinds the requests.

Produce request frame (v3..v8, not flexible), as pre-built here::

    0      4        6          8              12
    +------+--------+----------+--------------+-----------+------ - -
    | size | api key| api vers | correlation  | client id | body (acks,
    | int32| int16=0| int16    | id int32     | int16+str | timeout, topics,
    +------+--------+----------+--------------+-----------+ partitions,
                                 rewritten per send          batches)

Imported by the load-generating processes of ``perf`` only. Nothing here is
thread-safe; each process builds its own objects. Record bytes are never
decoded per record: fetch responses are walked batch header by batch header.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from broker.log.batch import build_batch, iter_batch_bounds, parse_header
from net.kafka import codec
from net.kafka.schema import ApiKey

PRODUCE_VERSION = 8
FETCH_VERSION = 11
LIST_OFFSETS_VERSION = 5
CREATE_TOPICS_VERSION = 4
DELETE_TOPICS_VERSION = 3
CLIENT_ID = "ringbus-perf"

# Frame size prefix and correlation id position in a request frame.
_INT32 = struct.Struct(">i")
CORRELATION_ID_POSITION = 8
_MAX_CORRELATION_ID = 0x7FFFFFFF

# A response larger than this is a protocol fault, not data: the broker's
# own default request limit (RINGBUS_MAX_REQUEST_BYTES) is 100 MiB, and a
# fetch here asks for at most --fetch-max-bytes (64 MiB by default).
MAX_RESPONSE_BYTES = 256 * 1024 * 1024

# Kafka error codes a load generator must tell apart.
NO_ERROR = 0
TOPIC_ALREADY_EXISTS = 36


class WireError(RuntimeError):
    """The broker broke the protocol or refused a request; the message says
    which request and what came back."""


# -- record batches ----------------------------------------------------------


def _varint_size(value: int) -> int:
    """Bytes of ``value`` as a zig-zag varint."""
    zigzag = (value << 1) ^ (value >> 63)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def records_per_batch(batch_bytes: int, record_bytes: int) -> int:
    """How many records of ``record_bytes`` fit a batch of at most
    ``batch_bytes`` (at least one record).

    Per record: the value, its length, and the record framing: length,
    attributes, timestamp delta (0), offset delta (counted as 3 bytes, up
    to 2**20 records), null key length, header count.
    """
    body = 1 + 1 + 3 + 1 + _varint_size(record_bytes) + record_bytes + 1
    per_record = body + _varint_size(body)
    return max(1, (batch_bytes - 61) // per_record)


def make_batch(
    record_bytes: int, count: int, timestamp_ms: int | None = None
) -> bytearray:
    """One uncompressed v2 batch of ``count`` records with random values of
    ``record_bytes`` each and no keys, CRC filled in."""
    if record_bytes < 1 or count < 1:
        raise ValueError(
            f"a batch needs records of >= 1 byte and >= 1 record, "
            f"got {record_bytes} B x {count}"
        )
    timestamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms

    # Random values, so no layer can compress its way to a better figure;
    # one random block sliced per record keeps the build fast.
    pool = os.urandom(record_bytes * min(count, 64))
    slots = len(pool) // record_bytes
    records = [
        (
            None,
            pool[(i % slots) * record_bytes : (i % slots + 1) * record_bytes],
            (),
            timestamp,
        )
        for i in range(count)
    ]
    return build_batch(records)


# -- produce frames ----------------------------------------------------------


@dataclass(frozen=True)
class ProduceFrame:
    """A whole Produce request frame, and what it carries."""

    frame: bytearray
    partitions: tuple[int, ...]
    records: int
    value_bytes: int


def build_produce_frames(
    topic: str,
    partitions: Sequence[int],
    batch: bytes | bytearray,
    records_in_batch: int,
    record_bytes: int,
    batches_per_request: int,
    acks: int,
    timeout_ms: int = 30_000,
) -> list[ProduceFrame]:
    """Produce frames covering ``partitions``, ``batches_per_request``
    partitions (one batch each) per frame; the last frame may hold fewer.

    Sending the frames in turn writes the same number of batches to every
    partition. The batch is not idempotent (producer id -1), so sending it
    again appends it again.
    """
    if not partitions:
        raise ValueError("a produce frame needs at least one partition")
    if batches_per_request < 1:
        raise ValueError(f"batches_per_request must be >= 1, got {batches_per_request}")
    records_bytes = bytes(batch)
    frames = []
    for first in range(0, len(partitions), batches_per_request):
        group = tuple(partitions[first : first + batches_per_request])
        body = {
            "transactional_id": None,
            "acks": acks,
            "timeout_ms": timeout_ms,
            "topic_data": [
                {
                    "name": topic,
                    "partition_data": [
                        {"index": index, "records": records_bytes} for index in group
                    ],
                }
            ],
        }
        encoded = codec.encode_request(
            ApiKey.PRODUCE, PRODUCE_VERSION, 0, CLIENT_ID, body
        )
        frames.append(
            ProduceFrame(
                frame=bytearray(encoded),
                partitions=group,
                records=records_in_batch * len(group),
                value_bytes=records_in_batch * len(group) * record_bytes,
            )
        )
    return frames


def set_correlation_id(frame: bytearray, correlation_id: int) -> None:
    """Rewrite a request frame's correlation id in place."""
    _INT32.pack_into(frame, CORRELATION_ID_POSITION, correlation_id)


def produce_errors(response: dict[str, Any]) -> list[str]:
    """``topic[partition]: error code`` for every failed partition of a
    decoded Produce response."""
    failed = []
    for topic in response["responses"]:
        for partition in topic["partition_responses"]:
            if partition["error_code"] != NO_ERROR:
                failed.append(
                    f"{topic['name']}[{partition['index']}]: "
                    f"error {partition['error_code']}"
                )
    return failed


# -- the pipeline of one connection -------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """One request sent and not answered yet."""

    correlation_id: int
    intended_ns: int
    records: int
    value_bytes: int
    tag: Any = None


class PipelineError(WireError):
    """A response did not match the oldest request in flight."""


class RequestPipeline:
    """Requests in flight on one connection, oldest first.

    ``start`` hands out the next correlation id and refuses to go beyond
    ``max_in_flight``; ``complete`` takes the oldest request and checks the
    response's correlation id against it.
    """

    def __init__(self, max_in_flight: int, first_correlation_id: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if not 0 <= first_correlation_id <= _MAX_CORRELATION_ID:
            raise ValueError(f"correlation id out of range: {first_correlation_id}")
        self.max_in_flight = max_in_flight
        self._next_id = first_correlation_id
        self._waiting: deque[InFlight] = deque()
        self.started = 0
        self.completed = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def has_room(self) -> bool:
        return len(self._waiting) < self.max_in_flight

    def start(
        self, intended_ns: int, records: int, value_bytes: int, tag: Any = None
    ) -> int:
        """Register one request about to be sent; returns its correlation id."""
        if not self.has_room():
            raise PipelineError(
                f"pipeline full: {len(self._waiting)} requests in flight, "
                f"bound {self.max_in_flight}"
            )
        correlation_id = self._next_id
        self._next_id = (
            0 if correlation_id == _MAX_CORRELATION_ID else correlation_id + 1
        )
        self._waiting.append(
            InFlight(correlation_id, intended_ns, records, value_bytes, tag)
        )
        self.started += 1
        return correlation_id

    def complete(self, correlation_id: int) -> InFlight:
        """The oldest request, answered by the response ``correlation_id``."""
        if not self._waiting:
            raise PipelineError(
                f"response with correlation id {correlation_id} while no "
                "request is in flight"
            )
        oldest = self._waiting[0]
        if oldest.correlation_id != correlation_id:
            raise PipelineError(
                f"response correlation id {correlation_id}, expected "
                f"{oldest.correlation_id} (the oldest of {len(self._waiting)} "
                "in flight): responses out of order"
            )
        self._waiting.popleft()
        self.completed += 1
        return oldest


# -- receiving frames -----------------------------------------------------------


class FrameReader:
    """A receive buffer that cuts size-prefixed frames, one copy from the kernel.

    ``receive`` reads into the free tail of the buffer; ``next_frame``
    returns a memoryview of the next whole frame (size prefix removed).
    A frame view is valid only until the next ``receive`` or ``feed``,
    which may move the buffered bytes: process a frame, drop the view, then
    receive again. The buffer grows (by replacement) to hold the largest
    frame seen.
    """

    def __init__(
        self, initial_bytes: int = 1 << 20, max_frame_bytes: int = MAX_RESPONSE_BYTES
    ) -> None:
        self._buffer = bytearray(initial_bytes)
        self._start = 0
        self._end = 0
        self._wanted = 4
        self.max_frame_bytes = max_frame_bytes

    def buffered(self) -> int:
        return self._end - self._start

    def capacity(self) -> int:
        return len(self._buffer)

    def _make_room(self, needed: int) -> None:
        """Make at least ``needed`` free bytes after the buffered ones."""
        if len(self._buffer) - self._end >= needed:
            return
        buffered = self.buffered()
        if len(self._buffer) - buffered >= needed:
            # Move the partial frame to the front (same size: no resize).
            self._buffer[:buffered] = self._buffer[self._start : self._end]
        else:
            size = len(self._buffer)
            while size - buffered < needed:
                size *= 2
            fresh = bytearray(size)
            fresh[:buffered] = memoryview(self._buffer)[self._start : self._end]
            self._buffer = fresh
        self._start = 0
        self._end = buffered

    def receive(self, sock: socket.socket) -> int:
        """One ``recv_into``; returns the bytes read (0: the peer closed)."""
        # Room for the rest of the frame being read, and a useful read size.
        self._make_room(max(self._wanted - self.buffered(), 64 * 1024))
        count = sock.recv_into(memoryview(self._buffer)[self._end :])
        self._end += count
        return count

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes (tests, or data read elsewhere)."""
        self._make_room(len(data))
        self._buffer[self._end : self._end + len(data)] = data
        self._end += len(data)

    def next_frame(self) -> memoryview | None:
        """The next whole frame without its size prefix, or None."""
        available = self._end - self._start
        if available < 4:
            self._wanted = 4
            return None
        (size,) = _INT32.unpack_from(self._buffer, self._start)
        if size < 4 or size > self.max_frame_bytes:
            raise WireError(
                f"response frame size {size} outside 4..{self.max_frame_bytes} "
                "bytes: the stream is out of step"
            )
        if available < 4 + size:
            self._wanted = 4 + size
            return None
        begin = self._start + 4
        self._start = begin + size
        self._wanted = 4
        return memoryview(self._buffer)[begin : begin + size]


def frame_correlation_id(frame: memoryview) -> int:
    """The correlation id at the start of a response frame (header v0)."""
    (correlation_id,) = _INT32.unpack_from(frame, 0)
    return int(correlation_id)


# -- fetching -------------------------------------------------------------------


def fetch_frame(
    correlation_id: int,
    topic: str,
    partition: int,
    offset: int,
    partition_max_bytes: int,
    max_bytes: int,
    max_wait_ms: int = 500,
    min_bytes: int = 1,
) -> bytes:
    """A Fetch v11 request for one partition from ``offset``."""
    body = {
        "replica_id": -1,
        "max_wait_ms": max_wait_ms,
        "min_bytes": min_bytes,
        "max_bytes": max_bytes,
        "isolation_level": 0,
        "session_id": 0,
        "session_epoch": -1,
        "topics": [
            {
                "topic": topic,
                "partitions": [
                    {
                        "partition": partition,
                        "current_leader_epoch": -1,
                        "fetch_offset": offset,
                        "log_start_offset": -1,
                        "partition_max_bytes": partition_max_bytes,
                    }
                ],
            }
        ],
        "forgotten_topics_data": [],
        "rack_id": "",
    }
    return codec.encode_request(
        ApiKey.FETCH, FETCH_VERSION, correlation_id, CLIENT_ID, body
    )


def batch_offsets(records: memoryview | bytes) -> Iterator[tuple[int, int, int]]:
    """``(base offset, last offset, size)`` of each whole batch in a fetched
    range; a trailing partial batch is left out (a fetch may end mid-batch)."""
    for position, size in iter_batch_bounds(records):
        header = parse_header(records, position)
        yield header.base_offset, header.last_offset, size


class FetchCursor:
    """The offsets one partition's pipelined fetches ask for, and what counts.

    LIMITATION: each Fetch names one partition; a consumer of many small
    partitions pays one request per partition per step.

    Requests run ahead of the responses by a step learned from the last
    response (the records its whole batches held). A response counts only
    the offsets from ``next_offset`` on; one that starts beyond
    ``next_offset`` (the step overshot) counts nothing and rewinds the
    requests to ``next_offset``, and so does the last response in flight
    when it stops short. Done when ``next_offset`` reaches ``end``.
    """

    def __init__(self, start: int, end: int) -> None:
        if end < start:
            raise ValueError(f"end offset {end} is before start offset {start}")
        self.next_offset = start
        self.end = end
        self._request_offset = start
        self._step: int | None = None
        self._last_covered = 0
        self.in_flight = 0
        self.wasted_responses = 0

    @property
    def done(self) -> bool:
        return self.next_offset >= self.end

    def next_request(self) -> int | None:
        """The offset of the next request, or None when none should go now
        (done, past the end, or the step is not known yet)."""
        if self.done or self._request_offset >= self.end:
            return None
        if self._step is None and self.in_flight > 0:
            return None
        offset = self._request_offset
        self.in_flight += 1
        if self._step is not None:
            self._request_offset += self._step
        return offset

    def on_response(
        self, requested: int, batches: Sequence[tuple[int, int, int]]
    ) -> tuple[int, int]:
        """Count a response to the request at ``requested``: returns
        ``(records, bytes)`` newly counted (bytes of the whole batches)."""
        self.in_flight -= 1
        records = 0
        nbytes = 0
        overshot = False
        for base, last, size in batches:
            if last < self.next_offset:
                continue
            if base > self.next_offset:
                overshot = True
                break
            records += last - self.next_offset + 1
            nbytes += size
            self.next_offset = last + 1

        if batches and not overshot:
            covered = batches[-1][1] + 1 - requested
            if covered > 0:
                # Same coverage twice: the batches are uniform and the step
                # is exact. Otherwise aim a little short: an overlap costs
                # bytes, an overshoot costs a rewind.
                exact = covered == self._last_covered
                self._step = covered if exact else max(1, covered * 7 // 8)
                self._last_covered = covered
        if overshot or not batches:
            self.wasted_responses += 1
        # Rewind when the requests ran past what was counted and no response
        # in flight can fill the gap: an overshoot, an empty response, or the
        # last response stopping short (at a segment end or a byte limit)
        # while the next request offset is already at or past the end.
        if (
            overshot
            or not batches
            or self._request_offset < self.next_offset
            or self.in_flight == 0
        ):
            self._request_offset = self.next_offset
        return records, nbytes


# -- a blocking admin connection ---------------------------------------------------


class AdminClient:
    """One blocking connection for the few control requests a run makes."""

    def __init__(self, host: str, port: int, timeout_s: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self._reader = FrameReader(64 * 1024)
        self._correlation_id = 0

    def call(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        self._correlation_id += 1
        self.sock.sendall(
            codec.encode_request(
                api_key, version, self._correlation_id, CLIENT_ID, body
            )
        )
        while True:
            frame = self._reader.next_frame()
            if frame is not None:
                break
            if self._reader.receive(self.sock) == 0:
                raise WireError(f"broker closed the connection (api key {api_key})")
        correlation_id, response = codec.decode_response(api_key, version, frame)
        if correlation_id != self._correlation_id:
            raise WireError(
                f"response correlation id {correlation_id}, "
                f"expected {self._correlation_id}"
            )
        return response

    def create_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic``; an existing topic with the same partition count
        is accepted, any other outcome raises."""
        response = self.call(
            ApiKey.CREATE_TOPICS,
            CREATE_TOPICS_VERSION,
            {
                "topics": [
                    {
                        "name": topic,
                        "num_partitions": partitions,
                        "replication_factor": 1,
                        "assignments": [],
                        "configs": [],
                    }
                ],
                "timeout_ms": 30_000,
                "validate_only": False,
            },
        )
        result = response["topics"][0]
        code = result["error_code"]
        if code == TOPIC_ALREADY_EXISTS:
            existing = len(self.end_offsets(topic, range(partitions)))
            if existing == partitions:
                return
        if code != NO_ERROR:
            raise WireError(
                f"CreateTopics {topic} ({partitions} partitions) failed: error "
                f"{code} {result.get('error_message') or ''}".rstrip()
            )

    def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` (DeleteTopics v3); raises unless it is gone."""
        response = self.call(
            ApiKey.DELETE_TOPICS,
            DELETE_TOPICS_VERSION,
            {"topic_names": [topic], "timeout_ms": 30_000},
        )
        code = response["responses"][0]["error_code"]
        if code != NO_ERROR:
            raise WireError(f"DeleteTopics {topic} failed: error {code}")

    def end_offsets(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The log end offset of each partition (ListOffsets, latest)."""
        response = self.call(
            ApiKey.LIST_OFFSETS,
            LIST_OFFSETS_VERSION,
            {
                "replica_id": -1,
                "isolation_level": 0,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [
                            {
                                "partition_index": p,
                                "current_leader_epoch": -1,
                                "timestamp": -1,
                            }
                            for p in partitions
                        ],
                    }
                ],
            },
        )
        offsets = {}
        for partition in response["topics"][0]["partitions"]:
            if partition["error_code"] != NO_ERROR:
                raise WireError(
                    f"ListOffsets {topic}[{partition['partition_index']}]: "
                    f"error {partition['error_code']}"
                )
            offsets[int(partition["partition_index"])] = int(partition["offset"])
        return offsets

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
