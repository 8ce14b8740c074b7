"""Record batch v2 header parsing, validation, offset rewrite and builder,
cross-checked against kafka-python's own record batch code."""

from __future__ import annotations

import struct
from collections.abc import Callable

import crc32c
import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from broker.log.batch import (
    CORRUPT_MESSAGE,
    HEADER_SIZE,
    INVALID_RECORD,
    TIMESTAMP_TYPE_BIT,
    UNSUPPORTED_FOR_MESSAGE_FORMAT,
    BatchError,
    Record,
    build_batch,
    iter_batch_bounds,
    parse_header,
    rewrite_base_offset,
    stamp_log_append_time,
    stamp_log_append_times,
    validate_batch,
)

RECORDS: list[Record] = [
    (b"key-0", b"value-0", [("h1", b"v1")], 1_700_000_000_000),
    (None, b"value-1", [], 1_700_000_000_005),
    (b"key-2", None, [("h2", None), ("h3", b"")], 1_699_999_999_990),
]


def _reseal(batch: bytearray) -> bytearray:
    """Recompute the CRC after editing bytes it covers."""
    struct.pack_into(">I", batch, 17, crc32c.crc32c(memoryview(batch)[21:]))
    return batch


def test_parse_header_reads_every_field_of_builder_output() -> None:
    batch = build_batch(
        RECORDS, base_offset=42, producer_id=7, producer_epoch=3, base_sequence=11
    )

    header = parse_header(memoryview(batch))

    assert header.base_offset == 42
    assert header.size == len(batch)
    assert header.magic == 2
    assert header.last_offset_delta == 2
    assert header.last_offset == 44
    assert header.base_timestamp == 1_700_000_000_000
    assert header.max_timestamp == 1_700_000_000_005
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (
        7,
        3,
        11,
    )
    assert header.records_count == 3
    assert header.compression == 0


def test_parse_header_raises_when_fewer_than_61_bytes() -> None:
    with pytest.raises(ValueError, match="needs 61 bytes, 60 available"):
        parse_header(bytes(60))


def test_validate_batch_accepts_builder_output() -> None:
    assert validate_batch(memoryview(build_batch(RECORDS))) is None


def _too_short() -> bytearray:
    return build_batch(RECORDS)[:40]


def _bad_magic() -> bytearray:
    batch = build_batch(RECORDS)
    batch[16] = 1
    return batch


def _truncated() -> bytearray:
    return build_batch(RECORDS)[:-1]


def _trailing_bytes() -> bytearray:
    return build_batch(RECORDS) + b"\x00"


def _small_length() -> bytearray:
    batch = build_batch(RECORDS)
    struct.pack_into(">i", batch, 8, 10)
    return batch


def _bad_crc() -> bytearray:
    batch = build_batch(RECORDS)
    batch[-1] ^= 0xFF
    return batch


def _codec(codec: int) -> bytearray:
    batch = build_batch(RECORDS)
    struct.pack_into(">h", batch, 21, codec)
    return _reseal(batch)


def _no_records() -> bytearray:
    batch = build_batch(RECORDS)
    struct.pack_into(">i", batch, 57, 0)
    return _reseal(batch)


def _count_mismatch() -> bytearray:
    batch = build_batch(RECORDS)
    struct.pack_into(">i", batch, 23, 5)
    return _reseal(batch)


@pytest.mark.parametrize(
    ("make", "error", "code", "detail"),
    [
        (_too_short, BatchError.TOO_SHORT, CORRUPT_MESSAGE, "40 bytes"),
        (
            _bad_magic,
            BatchError.UNSUPPORTED_MAGIC,
            UNSUPPORTED_FOR_MESSAGE_FORMAT,
            "magic 1",
        ),
        (_truncated, BatchError.LENGTH_MISMATCH, CORRUPT_MESSAGE, "available"),
        (_trailing_bytes, BatchError.LENGTH_MISMATCH, CORRUPT_MESSAGE, "available"),
        (_small_length, BatchError.LENGTH_MISMATCH, CORRUPT_MESSAGE, "batchLength 10"),
        (_bad_crc, BatchError.CRC_MISMATCH, CORRUPT_MESSAGE, "computed"),
        (lambda: _codec(5), BatchError.UNKNOWN_COMPRESSION, CORRUPT_MESSAGE, "codec 5"),
        (lambda: _codec(7), BatchError.UNKNOWN_COMPRESSION, CORRUPT_MESSAGE, "codec 7"),
        (_no_records, BatchError.NO_RECORDS, INVALID_RECORD, "recordsCount 0"),
        (
            _count_mismatch,
            BatchError.COUNT_MISMATCH,
            INVALID_RECORD,
            "lastOffsetDelta 5",
        ),
    ],
)
def test_validate_batch_names_the_failed_rule_when_batch_is_bad(
    make: object, error: BatchError, code: int, detail: str
) -> None:
    assert callable(make)
    problem = validate_batch(memoryview(make()))

    assert problem is not None
    assert problem.error is error
    assert problem.kafka_error_code == code
    assert detail in problem.detail
    assert str(problem).startswith(error.name)


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_validate_batch_accepts_every_known_codec_when_crc_matches(codec: int) -> None:
    assert validate_batch(_codec(codec)) is None


def _kafka_python_batch(compression: int, records: list[Record] = RECORDS) -> bytearray:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value, headers, timestamp) in enumerate(records):
        builder.append(
            offset, timestamp=timestamp, key=key, value=value, headers=headers
        )
    return builder.build()


@pytest.mark.parametrize("compression", [0, 1], ids=["none", "gzip"])
def test_validate_batch_accepts_kafka_python_batch(compression: int) -> None:
    # Compressible values: kafka-python keeps a batch uncompressed when
    # compression would not make it smaller.
    records: list[Record] = [
        (key, (value or b"") * 200, headers, timestamp)
        for key, value, headers, timestamp in RECORDS
    ]
    batch = _kafka_python_batch(compression, records)

    assert validate_batch(memoryview(batch)) is None
    header = parse_header(batch)
    assert header.compression == compression
    assert header.records_count == len(records)
    assert header.max_timestamp == max(record[3] for record in records)


def test_build_batch_output_decodes_with_kafka_python() -> None:
    batch = build_batch(RECORDS, base_offset=100)

    reader = DefaultRecordBatch(bytes(batch))
    assert reader.validate_crc()
    decoded = list(reader)

    assert [r.offset for r in decoded] == [100, 101, 102]
    assert [r.key for r in decoded] == [record[0] for record in RECORDS]
    assert [r.value for r in decoded] == [record[1] for record in RECORDS]
    assert [r.timestamp for r in decoded] == [record[3] for record in RECORDS]
    assert [list(r.headers) for r in decoded] == [list(record[2]) for record in RECORDS]


def test_build_batch_matches_kafka_python_bytes_for_same_records() -> None:
    # Both encoders follow NOTES 3.2, so identical input gives identical
    # bytes (kafka-python stamps partitionLeaderEpoch 0, producers send -1).
    ours = build_batch(RECORDS, partition_leader_epoch=0)
    assert bytes(ours) == bytes(_kafka_python_batch(0))


def test_rewrite_base_offset_keeps_batch_valid() -> None:
    batch = build_batch(RECORDS)

    rewrite_base_offset(memoryview(batch), 2**40 + 5)

    assert validate_batch(batch) is None
    assert parse_header(batch).base_offset == 2**40 + 5
    assert DefaultRecordBatch(bytes(batch)).validate_crc()
    assert next(iter(DefaultRecordBatch(bytes(batch)))).offset == 2**40 + 5


def test_iter_batch_bounds_yields_whole_batches_and_stops_at_partial_one() -> None:
    first = build_batch(RECORDS)
    second = build_batch(RECORDS[:1])
    buffer = first + second + build_batch(RECORDS)[:70]

    bounds = list(iter_batch_bounds(memoryview(buffer)))

    assert bounds == [(0, len(first)), (len(first), len(second))]


def test_iter_batch_bounds_raises_when_length_cannot_hold_a_header() -> None:
    buffer = build_batch(RECORDS)
    struct.pack_into(">i", buffer, 8, HEADER_SIZE - 13)

    with pytest.raises(ValueError, match="below the minimum 49"):
        list(iter_batch_bounds(buffer))


def test_build_batch_refuses_empty_and_compressed() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        build_batch([])
    with pytest.raises(ValueError, match="uncompressed"):
        build_batch(RECORDS, attributes=1)


@pytest.mark.parametrize("compression", [0, 2], ids=["none", "snappy"])
def test_stamp_log_append_time_sets_bit_and_max_timestamp_with_valid_crc(
    compression: int,
) -> None:
    records: list[Record] = [
        (key, (value or b"") * 200, headers, timestamp)
        for key, value, headers, timestamp in RECORDS
    ]
    original = bytes(_kafka_python_batch(compression, records))
    batch = bytearray(original)

    stamp_log_append_time(memoryview(batch), 1_800_000_000_123)

    assert validate_batch(batch) is None
    header = parse_header(batch)
    assert header.attributes == compression | TIMESTAMP_TYPE_BIT
    assert header.max_timestamp == 1_800_000_000_123
    # Nothing else changes: baseTimestamp, records, producer fields.
    assert batch[:17] == original[:17]
    assert batch[23:35] == original[23:35]
    assert batch[43:] == original[43:]
    # kafka-python agrees: CRC valid, every record reports the append time.
    reader = DefaultRecordBatch(bytes(batch))
    assert reader.validate_crc()
    assert reader.timestamp_type == 1
    assert [r.timestamp for r in reader] == [1_800_000_000_123] * len(records)


def test_stamp_log_append_times_stamps_batches_across_buffers() -> None:
    batches = [build_batch(RECORDS[: n + 1]) for n in range(3)]
    run = bytearray(batches[0] + batches[1])
    alone = bytearray(batches[2])

    stamp_log_append_times(
        [memoryview(run), memoryview(alone)], [len(b) for b in batches], 42
    )

    for batch in (run[: len(batches[0])], run[len(batches[0]) :], alone):
        assert validate_batch(batch) is None
        assert parse_header(batch).max_timestamp == 42
        assert parse_header(batch).attributes & TIMESTAMP_TYPE_BIT


@pytest.mark.parametrize(
    "sizes_of",
    [lambda n: [n - 1], lambda n: [62, 61], lambda n: [n + 1]],
    ids=["short", "misaligned", "too-long"],
)
def test_stamp_log_append_times_refuses_sizes_that_do_not_split_buffers(
    sizes_of: Callable[[int], list[int]],
) -> None:
    batch = build_batch(RECORDS)
    before = bytes(batch)

    with pytest.raises(ValueError, match="batch size"):
        stamp_log_append_times([memoryview(batch)], sizes_of(len(batch)), 42)
    assert bytes(batch) == before


def test_stamp_log_append_times_refuses_extra_sizes() -> None:
    batch = build_batch(RECORDS)
    with pytest.raises(ValueError, match="2 batch sizes for 1 batches"):
        stamp_log_append_times([memoryview(batch)], [len(batch), 61], 42)
