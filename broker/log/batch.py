"""The record batch v2 (magic 2) header: layout, checks, offset rewrite, builder.

A batch is stored on disk exactly as a client sent it, except for the
8-byte baseOffset, which the writer process rewrites in place. The CRC-32C
starts at ``attributes`` (byte 21), so that rewrite never touches it. A
topic with message.timestamp.type=LogAppendTime also gets attributes bit 3
and maxTimestamp set to the append time, which needs a new CRC
(:func:`stamp_log_append_time`).

Header, 61 bytes, big-endian, offsets from the start of the batch::

     0        8       12         16    17    21    23        27
     +--------+--------+----------+-----+-----+-----+---------+
     |baseOff |batchLen|leaderEpoc|magic| crc |attrs|lastDelta| ...
     +--------+--------+----------+-----+-----+-----+---------+
     27           35           43       51      53       57      61
     +------------+------------+--------+-------+--------+-------+----
     |baseTimestmp|maxTimestamp|producId|prodEpo|baseSeq |count  |records
     +------------+------------+--------+-------+--------+-------+----
                        crc covers bytes 21 .. end of batch

``batchLength`` counts the bytes after itself, so a batch occupies
``batchLength + 12`` bytes.

Checks: :func:`validate_batch` is shared by the net processes (on Produce)
and the writer process (on recovery). It reads only the header and runs one
CRC over the buffer; nothing here decodes records (``broker.log.records``
does, for ListOffsets) except :func:`build_batch`, which exists for tests and
load generators.

Imported by: net processes, the writer process, tests, perf. Pure functions
over buffers; nothing here holds state, so it is safe everywhere.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

# Kafka error codes a batch check can produce (Errors.java). Defined here,
# not imported from net/, because broker/ must not import net/.
CORRUPT_MESSAGE = 2
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
INVALID_RECORD = 87

MAGIC_V2 = 2

# Byte offsets of the header fields, named after the wire fields.
BASE_OFFSET = 0
BATCH_LENGTH = 8
PARTITION_LEADER_EPOCH = 12
MAGIC = 16
CRC = 17
ATTRIBUTES = 21
LAST_OFFSET_DELTA = 23
BASE_TIMESTAMP = 27
MAX_TIMESTAMP = 35
PRODUCER_ID = 43
PRODUCER_EPOCH = 51
BASE_SEQUENCE = 53
RECORDS_COUNT = 57
HEADER_SIZE = 61

# baseOffset + batchLength: the bytes not counted by batchLength.
LOG_OVERHEAD = 12

# Smallest legal batchLength: a header with no records.
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD

# attributes bits (NOTES 3.1).
COMPRESSION_MASK = 0x07
MAX_COMPRESSION_CODEC = 4  # 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd
TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20

NO_TIMESTAMP = -1

HEADER = struct.Struct(
    ">"
    "q"  # 0   baseOffset
    "i"  # 8   batchLength
    "i"  # 12  partitionLeaderEpoch
    "b"  # 16  magic
    "I"  # 17  crc
    "h"  # 21  attributes
    "i"  # 23  lastOffsetDelta
    "q"  # 27  baseTimestamp
    "q"  # 35  maxTimestamp
    "q"  # 43  producerId
    "h"  # 51  producerEpoch
    "i"  # 53  baseSequence
    "i"  # 57  recordsCount
)
assert HEADER.size == HEADER_SIZE

# The fields the append path needs, read with one call starting at byte 8.
APPEND_FIELDS = struct.Struct(
    ">"
    "i"  # 8   batchLength
    "4x"  # 12  partitionLeaderEpoch (not needed)
    "b"  # 16  magic
    "6x"  # 17  crc, attributes (not needed)
    "i"  # 23  lastOffsetDelta
    "8x"  # 27  baseTimestamp (not needed)
    "q"  # 35  maxTimestamp
)
assert APPEND_FIELDS.size == PRODUCER_ID - BATCH_LENGTH

BASE_OFFSET_FIELD = struct.Struct(">q")
_MAGIC_FIELD = struct.Struct(">b")


class BatchHeader(NamedTuple):
    """The 61 header bytes of one batch, field by field (wire names)."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK


def parse_header(
    buffer: memoryview | bytes | bytearray, position: int = 0
) -> BatchHeader:
    """Read the header of the batch at ``position`` without copying the buffer.

    Raises ValueError when fewer than 61 bytes are available there.
    """
    if len(buffer) - position < HEADER_SIZE:
        raise ValueError(
            f"batch header at position {position} needs {HEADER_SIZE} bytes, "
            f"{max(len(buffer) - position, 0)} available"
        )
    return BatchHeader._make(HEADER.unpack_from(buffer, position))


class BatchError(enum.Enum):
    """What a batch check found wrong; each maps to one Kafka error code."""

    TOO_SHORT = "shorter than the 61-byte batch header"
    UNSUPPORTED_MAGIC = "magic is not 2 (only record batch v2 is supported)"
    LENGTH_MISMATCH = "batchLength disagrees with the bytes available"
    CRC_MISMATCH = "CRC-32C over bytes 21..end does not match the crc field"
    UNKNOWN_COMPRESSION = "attributes name a compression codec outside 0..4"
    NO_RECORDS = "recordsCount is below 1"
    COUNT_MISMATCH = "recordsCount differs from lastOffsetDelta + 1"

    @property
    def kafka_error_code(self) -> int:
        return _KAFKA_ERROR_CODES[self]


# An unknown codec is a malformed batch rather than a bad record, so it maps
# to CORRUPT_MESSAGE like the other structural faults.
_KAFKA_ERROR_CODES: dict[BatchError, int] = {
    BatchError.TOO_SHORT: CORRUPT_MESSAGE,
    BatchError.UNSUPPORTED_MAGIC: UNSUPPORTED_FOR_MESSAGE_FORMAT,
    BatchError.LENGTH_MISMATCH: CORRUPT_MESSAGE,
    BatchError.CRC_MISMATCH: CORRUPT_MESSAGE,
    BatchError.UNKNOWN_COMPRESSION: CORRUPT_MESSAGE,
    BatchError.NO_RECORDS: INVALID_RECORD,
    BatchError.COUNT_MISMATCH: INVALID_RECORD,
}


@dataclass(frozen=True)
class InvalidBatch:
    """A failed check: which rule broke and the values seen."""

    error: BatchError
    detail: str

    @property
    def kafka_error_code(self) -> int:
        return self.error.kafka_error_code

    def __str__(self) -> str:
        return f"{self.error.name}: {self.detail}"


def validate_batch(batch: memoryview | bytes | bytearray) -> InvalidBatch | None:
    """Check one batch that fills ``batch`` exactly; None when it is valid.

    Order matters: magic is read before anything after byte 16, and the CRC
    is checked before the counts, since a corrupt batch can hold any value.
    """
    available = len(batch)
    if available < MAGIC + 1:
        return InvalidBatch(BatchError.TOO_SHORT, f"{available} bytes")

    (magic,) = _MAGIC_FIELD.unpack_from(batch, MAGIC)
    if magic != MAGIC_V2:
        return InvalidBatch(BatchError.UNSUPPORTED_MAGIC, f"magic {magic}")

    if available < HEADER_SIZE:
        return InvalidBatch(BatchError.TOO_SHORT, f"{available} bytes")

    header = BatchHeader._make(HEADER.unpack_from(batch, 0))
    if header.batch_length < MIN_BATCH_LENGTH or header.size != available:
        return InvalidBatch(
            BatchError.LENGTH_MISMATCH,
            f"batchLength {header.batch_length} means {header.size} bytes, "
            f"{available} available",
        )

    computed = crc32c.crc32c(memoryview(batch)[ATTRIBUTES:])
    if computed != header.crc:
        return InvalidBatch(
            BatchError.CRC_MISMATCH,
            f"crc field {header.crc:#010x}, computed {computed:#010x}",
        )

    if header.compression > MAX_COMPRESSION_CODEC:
        return InvalidBatch(
            BatchError.UNKNOWN_COMPRESSION, f"codec {header.compression}"
        )

    if header.records_count < 1:
        return InvalidBatch(
            BatchError.NO_RECORDS, f"recordsCount {header.records_count}"
        )
    if header.records_count != header.last_offset_delta + 1:
        return InvalidBatch(
            BatchError.COUNT_MISMATCH,
            f"recordsCount {header.records_count}, "
            f"lastOffsetDelta {header.last_offset_delta}",
        )
    return None


def iter_batch_bounds(
    buffer: memoryview | bytes | bytearray, position: int = 0
) -> Iterator[tuple[int, int]]:
    """Yield ``(position, size)`` of each whole batch from ``position`` on.

    Reads only baseOffset and batchLength of each batch. Stops at the first
    batch that is not whole in the buffer (a fetch may end mid-batch).
    Raises ValueError at a batchLength too small to hold a header, since
    nothing after it can be framed.
    """
    end = len(buffer)
    while end - position >= LOG_OVERHEAD:
        (batch_length,) = struct.unpack_from(">i", buffer, position + BATCH_LENGTH)
        if batch_length < MIN_BATCH_LENGTH:
            raise ValueError(
                f"batchLength {batch_length} at position {position} is below "
                f"the minimum {MIN_BATCH_LENGTH}"
            )
        size = batch_length + LOG_OVERHEAD
        if end - position < size:
            return
        yield position, size
        position += size


def rewrite_base_offset(batch: memoryview | bytearray, base_offset: int) -> None:
    """Set baseOffset (bytes 0..7) in place; the CRC does not cover it."""
    BASE_OFFSET_FIELD.pack_into(batch, BASE_OFFSET, base_offset)


_ATTRIBUTES_FIELD = struct.Struct(">h")
_MAX_TIMESTAMP_FIELD = struct.Struct(">q")
_CRC_FIELD = struct.Struct(">I")


def stamp_log_append_time(batch: memoryview | bytearray, timestamp: int) -> None:
    """LogAppendTime, in place: set the timestamp-type bit (attributes bit
    3) and maxTimestamp = ``timestamp``, then recompute the CRC, which
    covers both (bytes 21 .. end). ``batch`` holds exactly one batch.

    Consumers then report ``timestamp`` for every record of the batch; the
    records' own timestamp deltas are left as they are (Kafka's
    ``setMaxTimestamp`` does the same).
    """
    (attributes,) = _ATTRIBUTES_FIELD.unpack_from(batch, ATTRIBUTES)
    _ATTRIBUTES_FIELD.pack_into(batch, ATTRIBUTES, attributes | TIMESTAMP_TYPE_BIT)
    _MAX_TIMESTAMP_FIELD.pack_into(batch, MAX_TIMESTAMP, timestamp)
    _CRC_FIELD.pack_into(batch, CRC, crc32c.crc32c(memoryview(batch)[ATTRIBUTES:]))


def stamp_log_append_times(
    buffers: Sequence[memoryview], sizes: Sequence[int], timestamp: int
) -> None:
    """:func:`stamp_log_append_time` for batches lying back to back in
    ``buffers`` (each buffer whole batches), of ``sizes`` bytes in order.
    Raises ValueError, before stamping anything, when the sizes do not
    divide the buffers into whole batches."""
    bounds: list[tuple[memoryview, int, int]] = []
    sizes_left = iter(sizes)
    for buffer in buffers:
        position = 0
        # One pass per batch of this buffer; each size is >= HEADER_SIZE.
        while position < len(buffer):
            size = next(sizes_left, 0)
            if size < HEADER_SIZE or position + size > len(buffer):
                raise ValueError(
                    f"batch size {size} at position {position} does not fit "
                    f"a buffer of {len(buffer)} bytes"
                )
            bounds.append((buffer, position, size))
            position += size
    if next(sizes_left, None) is not None:
        raise ValueError(f"{len(sizes)} batch sizes for {len(bounds)} batches")
    for buffer, position, size in bounds:
        stamp_log_append_time(buffer[position : position + size], timestamp)


# ---------------------------------------------------------------------------
# Builder for tests and load generators (loops per record; never on a broker
# hot path).

Header = tuple[str, bytes | None]
Record = tuple[bytes | None, bytes | None, Sequence[Header], int]


def _varint(value: int, out: bytearray) -> None:
    """Append ``value`` as a zig-zag varint (64-bit range)."""
    zigzag = (value << 1) ^ (value >> 63)
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)


def _varint_bytes(data: bytes | None, out: bytearray) -> None:
    if data is None:
        _varint(-1, out)
    else:
        _varint(len(data), out)
        out += data


def build_batch(
    records: Sequence[Record],
    *,
    base_offset: int = 0,
    partition_leader_epoch: int = -1,
    attributes: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytearray:
    """An uncompressed v2 batch holding ``records`` = (key, value, headers,
    timestamp) tuples, with a correct CRC.

    baseTimestamp is the first record's timestamp (later records store
    deltas, which may be negative); maxTimestamp is the largest one.
    """
    if not records:
        raise ValueError("a batch holds at least one record")
    if attributes & COMPRESSION_MASK:
        raise ValueError("build_batch writes uncompressed batches only")

    base_timestamp = records[0][3]
    body = bytearray()
    for offset_delta, (key, value, headers, timestamp) in enumerate(records):
        record = bytearray()
        record.append(0)  # attributes, unused
        _varint(timestamp - base_timestamp, record)  # timestampDelta
        _varint(offset_delta, record)  # offsetDelta
        _varint_bytes(key, record)  # keyLength, key
        _varint_bytes(value, record)  # valueLength, value
        _varint(len(headers), record)  # headerCount
        for header_key, header_value in headers:
            encoded_key = header_key.encode()
            _varint(len(encoded_key), record)  # headerKeyLength
            record += encoded_key  # headerKey
            _varint_bytes(header_value, record)  # headerValueLength, headerValue
        _varint(len(record), body)  # length
        body += record

    batch = bytearray(HEADER_SIZE) + body
    HEADER.pack_into(
        batch,
        0,
        base_offset,
        len(batch) - LOG_OVERHEAD,
        partition_leader_epoch,
        MAGIC_V2,
        0,  # crc, filled in below
        attributes,
        len(records) - 1,
        base_timestamp,
        max(record[3] for record in records),
        producer_id,
        producer_epoch,
        base_sequence,
        len(records),
    )
    struct.pack_into(">I", batch, CRC, crc32c.crc32c(memoryview(batch)[ATTRIBUTES:]))
    return batch
