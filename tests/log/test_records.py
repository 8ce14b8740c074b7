"""Records inside a batch: decompression of every codec (including both
snappy framings) and the timestamp walk, checked against batches that
kafka-python's own builder and codecs write and against hand-made ones."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import cramjam
import crc32c
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.codec import snappy_encode
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from broker.log.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    Record,
    build_batch,
    parse_header,
    rewrite_base_offset,
    stamp_log_append_time,
    validate_batch,
)
from broker.log.records import (
    XERIAL_MAGIC,
    RecordsError,
    RecordTime,
    decompress,
    find_record_in_file,
    first_record_at_or_after,
    record_times,
)
from broker.log.segment import CorruptSegmentError

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

BASE_TIME = 1_700_000_000_000
# Out of order on purpose: deltas go negative, maxTimestamp is not the last.
TIMES = [BASE_TIME + delta for delta in (0, 5, 5, -3, 20, 11, 40, 39)]


def _records(times: list[int] = TIMES, value_size: int = 300) -> list[Record]:
    """Compressible values, so kafka-python keeps the batch compressed."""
    return [
        (f"key-{n}".encode(), f"value-{n}-".encode() * value_size, [], t)
        for n, t in enumerate(times)
    ]


def _kafka_python_batch(
    codec: int, records: list[Record], base_offset: int = 0
) -> bytearray:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for offset, (key, value, headers, timestamp) in enumerate(records):
        builder.append(
            offset, timestamp=timestamp, key=key, value=value, headers=headers
        )
    batch = builder.build()
    assert parse_header(batch).compression == codec, "kafka-python did not compress"
    rewrite_base_offset(memoryview(batch), base_offset)
    return batch


def _with_body(batch: bytes | bytearray, codec: int, body: bytes) -> bytearray:
    """``batch``'s header with ``body`` as its records, codec bits set,
    lengths and CRC made consistent (a batch as a producer could send it)."""
    out = bytearray(batch[:HEADER_SIZE]) + body
    struct.pack_into(">i", out, 8, len(out) - LOG_OVERHEAD)
    (attributes,) = struct.unpack_from(">h", out, 21)
    struct.pack_into(">h", out, 21, (attributes & ~0x07) | codec)
    struct.pack_into(">I", out, 17, crc32c.crc32c(memoryview(out)[21:]))
    assert validate_batch(out) is None
    return out


def _expected(records: list[Record], base_offset: int = 0) -> list[RecordTime]:
    return [RecordTime(base_offset + n, r[3]) for n, r in enumerate(records)]


def _brute_force(
    expected: list[RecordTime], timestamp: int, min_offset: int = 0
) -> RecordTime | None:
    return next(
        (r for r in expected if r.timestamp >= timestamp and r.offset >= min_offset),
        None,
    )


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_record_times_match_kafka_python_for_every_codec(codec: int) -> None:
    records = _records()
    batch = _kafka_python_batch(codec, records, base_offset=1_000)

    found = record_times(batch)

    decoded = [(r.offset, r.timestamp) for r in DefaultRecordBatch(bytes(batch))]
    assert [tuple(r) for r in found] == decoded
    assert found == _expected(records, 1_000)


@pytest.mark.parametrize("codec", CODECS.values(), ids=CODECS.keys())
def test_first_record_at_or_after_finds_first_late_record_for_every_codec(
    codec: int,
) -> None:
    records = _records()
    batch = _kafka_python_batch(codec, records, base_offset=500)
    expected = _expected(records, 500)

    for timestamp in range(min(TIMES) - 2, max(TIMES) + 3):
        assert first_record_at_or_after(batch, timestamp) == _brute_force(
            expected, timestamp
        ), timestamp
    # In the middle of the batch: not its first record.
    assert first_record_at_or_after(batch, BASE_TIME + 6) == (504, BASE_TIME + 20)


@pytest.mark.parametrize("block_size", [64, 32 * 1024], ids=["many", "one"])
def test_snappy_xerial_and_raw_framings_decode_alike(block_size: int) -> None:
    records = _records()
    plain = build_batch(records)
    body = bytes(plain[HEADER_SIZE:])
    xerial = snappy_encode(body, xerial_compatible=True, xerial_blocksize=block_size)
    assert xerial.startswith(XERIAL_MAGIC)
    raw = bytes(cramjam.snappy.compress_raw(body))

    assert bytes(decompress(2, xerial)) == body
    assert bytes(decompress(2, raw)) == body
    for framed in (xerial, raw):
        assert record_times(_with_body(plain, 2, framed)) == _expected(records)


def test_lz4_and_zstd_variants_decode() -> None:
    """Linked LZ4 blocks, and zstd as streamed frames without a content
    size, two of them back to back."""
    import lz4.frame

    body = bytes(build_batch(_records())[HEADER_SIZE:])
    linked = lz4.frame.compress(body, block_linked=True, block_size=4)
    assert bytes(decompress(3, linked)) == body

    half = len(body) // 2
    streamed = zstandard.ZstdCompressor(write_content_size=False)
    frames = streamed.compress(body[:half]) + streamed.compress(body[half:])
    assert bytes(decompress(4, frames)) == body

    assert bytes(decompress(1, gzip.compress(body))) == body


def test_first_record_at_or_after_skips_records_below_min_offset() -> None:
    records = _records()
    batch = _kafka_python_batch(4, records, base_offset=10)
    expected = _expected(records, 10)

    for min_offset in range(10, 19):
        for timestamp in (BASE_TIME - 5, BASE_TIME + 5, BASE_TIME + 39):
            assert first_record_at_or_after(
                batch, timestamp, min_offset
            ) == _brute_force(expected, timestamp, min_offset)
    assert first_record_at_or_after(batch, BASE_TIME, min_offset=18) is None


def test_log_append_time_batch_gives_every_record_the_append_time() -> None:
    batch = _kafka_python_batch(1, _records(), base_offset=7)
    stamp_log_append_time(memoryview(batch), BASE_TIME + 1_000)

    assert record_times(batch) == [
        RecordTime(7 + n, BASE_TIME + 1_000) for n in range(len(TIMES))
    ]
    assert first_record_at_or_after(batch, BASE_TIME + 1_000) == (7, BASE_TIME + 1_000)
    assert first_record_at_or_after(batch, BASE_TIME + 1_000, min_offset=9) == (
        9,
        BASE_TIME + 1_000,
    )
    assert first_record_at_or_after(batch, BASE_TIME + 1_001) is None


@settings(max_examples=150, deadline=None)
@given(
    times=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40),
    probes=st.lists(st.integers(-(2**40) - 1, 2**40 + 1), max_size=10),
    base_offset=st.integers(0, 2**40),
)
def test_first_record_at_or_after_matches_brute_force_on_any_timestamps(
    times: list[int], probes: list[int], base_offset: int
) -> None:
    records = _records(times, value_size=1)
    batch = build_batch(records, base_offset=base_offset)
    expected = _expected(records, base_offset)

    assert record_times(batch) == expected
    for timestamp in probes + times:
        assert first_record_at_or_after(batch, timestamp) == _brute_force(
            expected, timestamp
        )


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_records_error_names_batch_when_compressed_records_are_garbage(
    codec: int,
) -> None:
    batch = _with_body(build_batch(_records(), base_offset=0), codec, os.urandom(300))
    rewrite_base_offset(memoryview(batch), 77)

    with pytest.raises(RecordsError, match="batch at base offset 77") as raised:
        first_record_at_or_after(batch, BASE_TIME)
    assert raised.value.header.base_offset == 77


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_records_error_when_records_expand_past_the_limit(codec: int) -> None:
    batch = _kafka_python_batch(codec, _records())
    size = len(bytes(decompress(codec, batch[HEADER_SIZE:])))

    assert len(record_times(batch, limit=size)) == len(TIMES)
    with pytest.raises(RecordsError, match=f"more than {size - 1}"):
        record_times(batch, limit=size - 1)


def test_xerial_block_running_past_the_end_is_refused() -> None:
    body = bytes(build_batch(_records())[HEADER_SIZE:])
    xerial = snappy_encode(body, xerial_compatible=True, xerial_blocksize=1024)

    with pytest.raises(ValueError, match="runs past"):
        decompress(2, xerial[:-10])


@pytest.mark.parametrize(
    ("cut", "message"),
    [(1, "claims"), (40, "claims"), (None, "malformed")],
    ids=["last-byte", "inside-record", "bad-varint"],
)
def test_records_error_when_a_record_runs_past_the_batch(
    cut: int | None, message: str
) -> None:
    plain = build_batch(_records(value_size=2))
    body = bytes(plain[HEADER_SIZE:])
    # None: a varint that never ends.
    body = b"\xff" * 11 if cut is None else body[:-cut]
    batch = _with_body(plain, 0, body)

    with pytest.raises(RecordsError, match=message):
        record_times(batch)


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown compression codec 5"):
        decompress(5, b"")


# -- in a segment file -------------------------------------------------------


def _segment(tmp_path: Path, batches: list[bytearray]) -> tuple[Path, list[int]]:
    path = tmp_path / "00000000000000000000.log"
    positions = []
    data = bytearray()
    for batch in batches:
        positions.append(len(data))
        data += batch
    path.write_bytes(bytes(data))
    return path, positions


def test_find_record_in_file_reads_the_batch_holding_the_answer(
    tmp_path: Path,
) -> None:
    # Three batches of 8 records: offsets 0-7, 8-15, 16-23; the second is
    # zstd, the third LogAppendTime.
    first = _kafka_python_batch(0, _records(), base_offset=0)
    second = _kafka_python_batch(4, _records([t + 100 for t in TIMES]), base_offset=8)
    third = _kafka_python_batch(1, _records(), base_offset=16)
    stamp_log_append_time(memoryview(third), BASE_TIME + 500)
    path, positions = _segment(tmp_path, [first, second, third])
    end = path.stat().st_size

    fd = os.open(path, os.O_RDONLY)
    try:
        assert find_record_in_file(fd, path, 0, end, BASE_TIME + 1) == (
            1,
            BASE_TIME + 5,
        )
        assert find_record_in_file(fd, path, 0, end, BASE_TIME + 41) == (
            8,
            BASE_TIME + 100,
        )
        assert find_record_in_file(fd, path, 0, end, BASE_TIME + 110) == (
            12,
            BASE_TIME + 120,
        )
        # The log start offset cuts into the second batch past its late
        # records: the answer moves on to the next batch.
        assert find_record_in_file(fd, path, 0, end, BASE_TIME + 140, 15) == (
            16,
            BASE_TIME + 500,
        )
        assert find_record_in_file(fd, path, 0, end, BASE_TIME + 501) is None
        # Nothing past end_position is read.
        assert find_record_in_file(fd, path, 0, positions[2], BASE_TIME + 141) is None
        assert (
            find_record_in_file(fd, path, positions[1], end - 1, BASE_TIME + 141)
            is None
        )
    finally:
        os.close(fd)


def test_find_record_in_file_raises_corrupt_segment_at_a_bad_header(
    tmp_path: Path,
) -> None:
    batch = build_batch(_records())
    path, _ = _segment(tmp_path, [batch, bytearray(b"\x00" * HEADER_SIZE)])

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CorruptSegmentError, match=f"position {len(batch)}"):
            find_record_in_file(fd, path, 0, path.stat().st_size, BASE_TIME + 1_000)
    finally:
        os.close(fd)
