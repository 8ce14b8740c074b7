"""The records inside one batch: decompression and the timestamp walk.

The broker stores and serves batches without looking inside them; this
module is the one place that reads records, for ListOffsets by timestamp
(Kafka answers with the first RECORD at or after a time, not the first
batch). It is never on the produce or fetch path: one call reads one
batch, record by record, in Python.

Record, all varints zig-zag (NOTES 3.2)::

    length          VARINT   bytes that follow in this record
    attributes      INT8
    timestampDelta  VARLONG  record timestamp = baseTimestamp + delta
    offsetDelta     VARINT   record offset = baseOffset + delta
    ...             key, value, headers: skipped by ``length``

When the batch is compressed (attributes bits 0-2), bytes 61.. of the batch
are one compressed stream of the concatenated records:

    1 gzip     RFC 1952 stream (zlib)
    2 snappy   either raw snappy (librdkafka) or the "xerial" framing that
               the Java client writes: an 8-byte magic ``\\x82SNAPPY\\x00``,
               two INT32 (version, compatible version), then blocks of
               INT32 compressed length + raw snappy bytes
    3 lz4      LZ4 frame format
    4 zstd     one or more zstd frames

Under LogAppendTime (attributes bit 3) every record's timestamp is the
batch's maxTimestamp, so nothing needs decoding.

Bounds: decompressed records may take at most ``MAX_RECORDS_BYTES``; the
walk visits at most recordsCount records and checks every length against
the bytes present. Any violation raises :class:`RecordsError` (a producer
can store a batch whose records do not decode: the broker checks only the
header and CRC on produce).

Imported by net processes (ListOffsets) and the writer's log (tests'
lookups). Pure functions over buffers; safe anywhere.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import cramjam
import numpy as np

from broker.log.batch import (
    COMPRESSION_MASK,
    HEADER_SIZE,
    MAGIC_V2,
    MIN_BATCH_LENGTH,
    TIMESTAMP_TYPE_BIT,
    BatchHeader,
    parse_header,
)
from broker.log.segment import CorruptSegmentError

# Decompressed bytes one batch may expand to. A guess: 64 times Kafka's
# default max.message.bytes (1 MiB), far above what producers batch, and
# decompressed in well under a second.
MAX_RECORDS_BYTES = 64 << 20

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4

# The xerial snappy framing (snappy-java's SnappyOutputStream).
XERIAL_MAGIC = b"\x82SNAPPY\x00"
XERIAL_HEADER = struct.Struct(
    ">"
    "8s"  # magic
    "i"  # version
    "i"  # compatible version
)
_XERIAL_BLOCK_LENGTH = struct.Struct(">i")

# gzip only (16 + the largest window).
_GZIP_WBITS = 16 + zlib.MAX_WBITS

# A varint takes at most 5 bytes, a varlong at most 10.
_VARINT_BYTES = 5
_VARLONG_BYTES = 10
_MIN_RECORD_BYTES = 6


class RecordsError(ValueError):
    """The records of a batch cannot be read: bad compression, a record
    running past the end, or more decompressed bytes than allowed.
    ``header`` is the batch's header."""

    def __init__(self, header: BatchHeader, message: str) -> None:
        self.header = header
        super().__init__(f"batch at base offset {header.base_offset}: {message}")


class RecordTime(NamedTuple):
    """One record's offset and timestamp."""

    offset: int
    timestamp: int


def decompress(
    codec: int,
    data: bytes | bytearray | memoryview,
    limit: int = MAX_RECORDS_BYTES,
) -> memoryview:
    """The records held in ``data``, compressed with ``codec`` (1-4).

    Raises ValueError when the stream is malformed, uses an unknown codec
    or expands to more than ``limit`` bytes.
    """
    if codec == CODEC_GZIP:
        return memoryview(_gunzip(data, limit))
    if codec == CODEC_SNAPPY:
        return memoryview(_unsnappy(data, limit))
    if codec in (CODEC_LZ4, CODEC_ZSTD):
        module = cramjam.lz4 if codec == CODEC_LZ4 else cramjam.zstd
        # np.empty maps the pages lazily: only what the codec writes is
        # touched, so the limit costs no memory up front.
        output = np.empty(limit, dtype=np.uint8)
        try:
            size = int(module.decompress_into(bytes(data), output))
        except cramjam.DecompressionError as exc:
            raise ValueError(
                f"codec {codec}: {exc} (malformed, or more than {limit} bytes)"
            ) from exc
        return output.data[:size]
    raise ValueError(f"unknown compression codec {codec}")


def _gunzip(data: bytes | bytearray | memoryview, limit: int) -> bytes:
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        output = decompressor.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"gzip: {exc}") from exc
    if len(output) > limit:
        raise ValueError(f"gzip: expands to more than {limit} bytes")
    if not decompressor.eof:
        raise ValueError("gzip: the stream ends early")
    return output


def _unsnappy(data: bytes | bytearray | memoryview, limit: int) -> bytes:
    view = memoryview(data)
    if bytes(view[: len(XERIAL_MAGIC)]) != XERIAL_MAGIC:
        return _snappy_block(view, limit)

    if len(view) < XERIAL_HEADER.size:
        raise ValueError("snappy: xerial header cut short")
    output = bytearray()
    position = XERIAL_HEADER.size
    # Each pass consumes at least the 4-byte length.
    while position < len(view):
        if position + _XERIAL_BLOCK_LENGTH.size > len(view):
            raise ValueError(f"snappy: xerial block length cut short at {position}")
        (length,) = _XERIAL_BLOCK_LENGTH.unpack_from(view, position)
        position += _XERIAL_BLOCK_LENGTH.size
        if length < 0 or position + length > len(view):
            raise ValueError(
                f"snappy: xerial block of {length} bytes at {position} runs past "
                f"the {len(view)} bytes present"
            )
        output += _snappy_block(view[position : position + length], limit - len(output))
        position += length
    return bytes(output)


def _snappy_block(block: memoryview, limit: int) -> bytes:
    """One raw snappy block; its preamble states the decompressed size,
    which is checked against ``limit`` before decompressing."""
    try:
        size = int(cramjam.snappy.decompress_raw_len(bytes(block)))
        if size > limit:
            raise ValueError(f"snappy: expands to more than {limit} bytes")
        return bytes(cramjam.snappy.decompress_raw(bytes(block)))
    except cramjam.DecompressionError as exc:
        raise ValueError(f"snappy: {exc}") from exc


def records_bytes(
    batch: bytes | bytearray | memoryview, limit: int = MAX_RECORDS_BYTES
) -> tuple[BatchHeader, memoryview]:
    """The header and the (decompressed) record bytes of one whole batch.
    Raises RecordsError when they cannot be had."""
    header = parse_header(batch)
    if len(batch) < header.size:
        raise RecordsError(
            header, f"{len(batch)} bytes present, batchLength says {header.size}"
        )
    body = memoryview(batch)[HEADER_SIZE : header.size]
    codec = header.attributes & COMPRESSION_MASK
    if codec == CODEC_NONE:
        return header, body
    try:
        return header, decompress(codec, body, limit)
    except ValueError as exc:
        raise RecordsError(header, str(exc)) from exc


def _varint(data: memoryview, position: int, most: int) -> tuple[int, int]:
    """A zig-zag varint of at most ``most`` bytes at ``position``: (value,
    position after it). IndexError past the end, ValueError when too long."""
    result = 0
    shift = 0
    for _ in range(most):
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7
    raise ValueError(f"varint longer than {most} bytes")


def _walk(
    header: BatchHeader,
    records: memoryview,
    timestamp: int | None,
    min_offset: int,
) -> tuple[RecordTime | None, list[RecordTime]]:
    """Walk the records: with ``timestamp``, stop at the first record at or
    after it (and at or after ``min_offset``); without, list them all."""
    found: list[RecordTime] = []
    position = 0
    end = len(records)
    base_offset = header.base_offset
    base_timestamp = header.base_timestamp
    for number in range(max(header.records_count, 0)):
        try:
            length, body = _varint(records, position, _VARINT_BYTES)
            delta, after = _varint(records, body + 1, _VARLONG_BYTES)
            offset_delta, _ = _varint(records, after, _VARINT_BYTES)
        except (IndexError, ValueError) as exc:
            raise RecordsError(
                header, f"record {number} at byte {position} is malformed: {exc}"
            ) from exc
        position = body + length
        # attributes, timestampDelta, offsetDelta, keyLength, valueLength
        # and headerCount take a byte each at least.
        if length < _MIN_RECORD_BYTES or position > end:
            raise RecordsError(
                header,
                f"record {number} claims {length} bytes at byte {body}, "
                f"{end - body} present",
            )

        record = RecordTime(base_offset + offset_delta, base_timestamp + delta)
        if timestamp is None:
            found.append(record)
        elif record.timestamp >= timestamp and record.offset >= min_offset:
            return record, found
    return None, found


def record_times(
    batch: bytes | bytearray | memoryview, limit: int = MAX_RECORDS_BYTES
) -> list[RecordTime]:
    """Offset and timestamp of every record of one whole batch, in order
    (under LogAppendTime, every timestamp is the maxTimestamp)."""
    header = parse_header(batch)
    if header.attributes & TIMESTAMP_TYPE_BIT:
        return [
            RecordTime(offset, header.max_timestamp)
            for offset in range(header.base_offset, header.last_offset + 1)
        ]
    _, records = records_bytes(batch, limit)
    return _walk(header, records, None, 0)[1]


def first_record_at_or_after(
    batch: bytes | bytearray | memoryview,
    timestamp: int,
    min_offset: int = 0,
    limit: int = MAX_RECORDS_BYTES,
) -> RecordTime | None:
    """The first record of one whole batch whose timestamp >= ``timestamp``
    and whose offset >= ``min_offset`` (the log start offset); None when no
    record qualifies. Raises RecordsError when the records cannot be read.

    Reads nothing past the header when the batch cannot hold the answer
    (maxTimestamp below it) or under LogAppendTime.
    """
    header = parse_header(batch)
    if header.max_timestamp < timestamp or header.last_offset < min_offset:
        return None
    if header.attributes & TIMESTAMP_TYPE_BIT:
        return RecordTime(max(header.base_offset, min_offset), header.max_timestamp)
    _, records = records_bytes(batch, limit)
    return _walk(header, records, timestamp, min_offset)[0]


def find_record_in_file(
    fd: int,
    path: Path,
    position: int,
    end_position: int,
    timestamp: int,
    min_offset: int = 0,
    limit: int = MAX_RECORDS_BYTES,
) -> RecordTime | None:
    """The first record at or after ``timestamp`` (and ``min_offset``) in
    the batches of a segment file from ``position`` (a batch start, usually
    what the time index found) up to ``end_position``; None when none of
    them holds one.

    Only batches whose maxTimestamp reaches ``timestamp`` are read whole;
    the first of them holds the answer unless the log start offset cuts
    into it or a producer wrote a maxTimestamp above its records'. Raises
    RecordsError at a batch whose records cannot be read and
    CorruptSegmentError (``path`` names the file) where no batch header is.
    """
    # Every batch is at least HEADER_SIZE bytes: bounded by the range.
    while position + HEADER_SIZE <= end_position:
        data = os.pread(fd, HEADER_SIZE, position)
        if len(data) < HEADER_SIZE:
            return None  # the file was cut shorter (a truncation raced us)
        header = parse_header(data)
        if header.magic != MAGIC_V2 or header.batch_length < MIN_BATCH_LENGTH:
            raise CorruptSegmentError(
                path,
                position,
                f"magic {header.magic}, batchLength {header.batch_length}",
            )
        if position + header.size > end_position:
            return None
        if header.max_timestamp >= timestamp and header.last_offset >= min_offset:
            if header.attributes & TIMESTAMP_TYPE_BIT:
                # LogAppendTime: every record has the maxTimestamp.
                offset = max(header.base_offset, min_offset)
                return RecordTime(offset, header.max_timestamp)
            batch = os.pread(fd, header.size, position)
            if len(batch) < header.size:
                return None
            found = first_record_at_or_after(batch, timestamp, min_offset, limit)
            if found is not None:
                return found
        position += header.size
    return None
