"""PartitionLog: offsets across rolls, retention, DeleteRecords, truncation,
recovery from torn or corrupt files, and write failures."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker.log.batch import TIMESTAMP_TYPE_BIT, parse_header, validate_batch
from broker.log.index import INT32_MAX
from broker.log.partition import (
    STATE_FILE,
    LogConfig,
    LogStorageError,
    OffsetOutOfRangeError,
    PartitionLog,
)
from broker.log.segment import SUFFIXES, BatchColumns

from .support import make_batch, scan_directory


def _open(data_dir: Path, **config: int) -> PartitionLog:
    return PartitionLog.open(data_dir, "orders", 3, LogConfig(**config))


def _append(log: PartitionLog, *batches: bytearray, now_ms: int = 0) -> tuple[int, int]:
    return log.append([memoryview(batch) for batch in batches], now_ms)


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        getattr(record, "fields", {}) | {"level": record.levelno}
        for record in caplog.records
        if record.getMessage() == name
    ]


def _payloads(directory: Path) -> list[bytes]:
    """Batch bytes in offset order, with baseOffset masked out."""
    return [batch.data[8:] for batch in scan_directory(directory)]


# -- offsets and rolls --------------------------------------------------------


@pytest.mark.parametrize("segment_bytes", [100, 300, 1_000, 4_096, 1 << 20])
@pytest.mark.parametrize("group", [1, 4])
def test_append_assigns_contiguous_offsets_across_rolls(
    tmp_path: Path, segment_bytes: int, group: int
) -> None:
    log = _open(tmp_path, segment_bytes=segment_bytes, index_interval_bytes=128)
    shapes = [(1 + n % 5, (n * 37) % 200) for n in range(60)]
    batches = [make_batch(records=r, value_size=v) for r, v in shapes]

    results = []
    for start in range(0, len(batches), group):
        results.append(_append(log, *batches[start : start + group]))

    scanned = scan_directory(tmp_path / "orders-3")
    expected_next = 0
    for batch, (records, _) in zip(scanned, shapes, strict=True):
        assert batch.base_offset == expected_next
        assert batch.last_offset == expected_next + records - 1
        expected_next = batch.last_offset + 1
    assert log.log_end_offset == expected_next == sum(r for r, _ in shapes)
    assert [first for first, _ in results] == [
        scanned[start].base_offset for start in range(0, len(batches), group)
    ]
    # Each segment's name is its first batch's base offset, and no segment
    # but a single-batch one exceeds segment_bytes.
    for base in log.segment_base_offsets():
        in_segment = [b for b in scanned if b.segment_base_offset == base]
        assert in_segment[0].base_offset == base
        assert (
            sum(len(b.data) for b in in_segment) <= segment_bytes
            or len(in_segment) == 1
        )
    log.close()


def test_append_puts_batch_larger_than_segment_bytes_alone_in_fresh_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.log")
    log = _open(tmp_path, segment_bytes=1_024)
    _append(log, make_batch(value_size=100))

    _append(log, make_batch(records=2, value_size=3_000), make_batch(value_size=100))

    assert log.segment_base_offsets() == [0, 1, 3]
    scanned = scan_directory(tmp_path / "orders-3")
    assert [b.segment_base_offset for b in scanned] == [0, 1, 3]
    assert [e["reason"] for e in _events(caplog, "segment.rolled")] == [
        "segment_bytes",
        "segment_bytes",
    ]
    log.close()


def test_append_rolls_when_segment_is_older_than_segment_ms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.log")
    log = _open(tmp_path, segment_ms=1_000)
    _append(log, make_batch(), now_ms=5_000)
    _append(log, make_batch(), now_ms=5_999)
    assert log.segment_base_offsets() == [0]

    _append(log, make_batch(), now_ms=6_000)

    assert log.segment_base_offsets() == [0, 2]
    rolled = _events(caplog, "segment.rolled")
    assert rolled[0]["reason"] == "segment_ms"
    assert rolled[0]["topic_partition"] == "orders-3"
    log.close()


def test_append_rolls_before_relative_offset_leaves_int32(tmp_path: Path) -> None:
    log = _open(tmp_path)
    huge = make_batch()
    # A batch claiming a huge lastOffsetDelta (framing only; the CRC is not
    # checked on append) stretches the segment's offset range.
    huge[23:27] = (INT32_MAX - 1).to_bytes(4, "big")
    _append(log, huge)

    # Offset INT32_MAX is not a valid relative offset in segment 0.
    _append(log, make_batch())

    assert log.segment_base_offsets() == [0, INT32_MAX]
    log.close()


def test_append_rejects_malformed_batch_before_changing_anything(
    tmp_path: Path,
) -> None:
    log = _open(tmp_path)
    good = make_batch()
    bad = make_batch()[:-5]

    with pytest.raises(ValueError, match="batch 1 is malformed"):
        _append(log, good, bad)
    with pytest.raises(ValueError, match="read-only"):
        log.append([memoryview(bytes(make_batch()))], 0)

    assert log.log_end_offset == 0
    assert good[0:8] == bytes(8)
    assert (tmp_path / "orders-3" / f"{0:020d}.log").stat().st_size == 0
    log.close()


# -- appends with assigned offsets (the writer process's path) -----------------


def _assign(
    log: PartitionLog, batches: list[bytearray], runs: int
) -> tuple[list[memoryview], BatchColumns]:
    """What the writer does for one partition: take the header fields,
    rewrite the baseOffsets and hand over ``runs`` runs of whole batches."""
    deltas = np.array([struct.unpack_from(">i", b, 23)[0] for b in batches])
    bases = log.next_base_offsets(deltas)
    for batch, base in zip(batches, bases.tolist(), strict=True):
        batch[0:8] = base.to_bytes(8, "big")
    columns = BatchColumns(
        base_offset=bases,
        last_offset=bases + deltas,
        max_timestamp=np.array([struct.unpack_from(">q", b, 35)[0] for b in batches]),
        size=np.array([len(b) for b in batches], dtype=np.int64),
    )
    joined = memoryview(bytearray(b"".join(batches)))
    cuts = np.cumsum([0, *columns.size.tolist()])
    edges = [int(cuts[len(batches) * n // runs]) for n in range(runs + 1)]
    buffers = [joined[a:b] for a, b in itertools.pairwise(edges)]
    return buffers, columns


def _files(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.suffix in SUFFIXES
    }


@pytest.mark.parametrize("segment_bytes", [300, 5_000, 60_000, 1 << 20])
@pytest.mark.parametrize("calls", [1, 3])
def test_append_assigned_writes_what_append_writes_across_rolls(
    tmp_path: Path, segment_bytes: int, calls: int
) -> None:
    """Same files (batches, indexes), offsets and rolls whether batches come
    one view each or as runs described by columns."""
    shapes = [(1 + n % 5, (n * 37) % 1_500, n % 90) for n in range(240)]

    def batches() -> list[bytearray]:
        return [make_batch(r, v, timestamp=t) for r, v, t in shapes]

    config = {"segment_bytes": segment_bytes, "index_interval_bytes": 700}
    by_view = PartitionLog.open(tmp_path / "a", "orders", 3, LogConfig(**config))
    by_column = PartitionLog.open(tmp_path / "b", "orders", 3, LogConfig(**config))
    every = batches()
    for start in range(0, len(every), 7):
        by_view.append([memoryview(b) for b in every[start : start + 7]], 0)
    every = batches()
    per_call = -(-len(every) // calls)
    for start in range(0, len(every), per_call):
        part = every[start : start + per_call]
        buffers, columns = _assign(by_column, part, runs=4)
        writes = by_column.append_assigned(buffers, columns, 0)
        assert writes >= 1

    assert by_column.log_end_offset == by_view.log_end_offset
    assert by_column.segment_base_offsets() == by_view.segment_base_offsets()
    by_view.close()
    by_column.close()
    assert _files(tmp_path / "b" / "orders-3") == _files(tmp_path / "a" / "orders-3")


@pytest.mark.parametrize("segment_bytes", [300, 1 << 20])
def test_log_append_time_stamps_every_batch_on_both_append_paths(
    tmp_path: Path, segment_bytes: int
) -> None:
    """Same files either way; every batch carries bit 3, maxTimestamp = the
    append time and a valid CRC; the time index and retention use it."""
    shapes = [(1 + n % 4, (n * 37) % 400, 1_000 + n) for n in range(40)]

    def batches() -> list[bytearray]:
        return [make_batch(r, v, timestamp=t) for r, v, t in shapes]

    config = LogConfig(segment_bytes=segment_bytes, log_append_time=True)
    by_view = PartitionLog.open(tmp_path / "a", "orders", 3, config)
    by_column = PartitionLog.open(tmp_path / "b", "orders", 3, config)
    every = batches()
    for start in range(0, len(every), 10):
        now_ms = 50_000 + start
        by_view.append([memoryview(b) for b in every[start : start + 10]], now_ms)
    every = batches()
    for start in range(0, len(every), 10):
        buffers, columns = _assign(by_column, every[start : start + 10], runs=3)
        by_column.append_assigned(buffers, columns, 50_000 + start)

    for log in (by_view, by_column):
        assert log.offset_for_timestamp(0) == 0
        # The producer's times are gone; the append times rule.
        assert log.offset_for_timestamp(50_001) == _first_offset_of(shapes, 10)
        assert log.offset_for_timestamp(50_031) is None
    scanned = scan_directory(tmp_path / "b" / "orders-3")
    for number, batch in enumerate(scanned):
        header = parse_header(batch.data)
        assert validate_batch(batch.data) is None
        assert header.attributes & TIMESTAMP_TYPE_BIT
        assert header.max_timestamp == 50_000 + number // 10 * 10
    by_view.close()
    by_column.close()
    assert _files(tmp_path / "b" / "orders-3") == _files(tmp_path / "a" / "orders-3")

    # Retention goes by the append time, not the producer's 1_000 + n.
    if segment_bytes == 300:
        log = PartitionLog.open(
            tmp_path / "b",
            "orders",
            3,
            LogConfig(segment_bytes=300, retention_ms=1_000, log_append_time=True),
        )
        assert log.enforce_retention(50_000 + 1_000) == []
        assert log.enforce_retention(50_031 + 1_001) != []
        log.close()


def _first_offset_of(shapes: list[tuple[int, int, int]], batches: int) -> int:
    """The first offset of batch number ``batches``."""
    return sum(records for records, _, _ in shapes[:batches])


def test_create_time_append_keeps_batches_as_sent(tmp_path: Path) -> None:
    log = _open(tmp_path)
    sent = [make_batch(3, 20, timestamp=1_000 + n) for n in range(5)]
    _append(log, *[bytearray(b) for b in sent], now_ms=99_999)

    assert [b.data[8:] for b in scan_directory(tmp_path / "orders-3")] == [
        bytes(b[8:]) for b in sent
    ]
    # Batch n holds offsets 3n.. with times 1_000 + n + i: 1_003 is the
    # last record of batch 1.
    assert log.offset_for_timestamp(1_003) == 5
    log.close()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("first_base", "first base offset 5, log end offset 1"),
        ("gap", "not contiguous offsets"),
        ("short_buffers", "buffers hold"),
        ("not_rewritten", "does not start with a batch of base offset 1"),
        ("lengths", "different lengths"),
    ],
)
def test_append_assigned_rejects_inconsistent_columns_before_changing_anything(
    tmp_path: Path, spoil: str, message: str
) -> None:
    log = _open(tmp_path)
    _append(log, make_batch())
    before = _files(tmp_path / "orders-3")
    batches = [make_batch(records=2), make_batch(records=3)]
    buffers, columns = _assign(log, batches, runs=2)
    if spoil == "first_base":
        columns = BatchColumns(
            columns.base_offset + 4,
            columns.last_offset + 4,
            columns.max_timestamp,
            columns.size,
        )
    elif spoil == "gap":
        base = columns.base_offset.copy()
        base[1] += 1
        columns = BatchColumns(
            base, columns.last_offset, columns.max_timestamp, columns.size
        )
    elif spoil == "short_buffers":
        buffers = buffers[:1]
    elif spoil == "not_rewritten":
        buffers[0][0:8] = bytes(8)
    else:
        columns = BatchColumns(
            columns.base_offset,
            columns.last_offset[:1],
            columns.max_timestamp,
            columns.size,
        )

    with pytest.raises(ValueError, match=message):
        log.append_assigned(buffers, columns, 0)

    assert log.log_end_offset == 1
    assert _files(tmp_path / "orders-3") == before
    # Not sticky: a correct call goes through.
    buffers, columns = _assign(log, [make_batch(records=2)], runs=1)
    log.append_assigned(buffers, columns, 0)
    assert log.log_end_offset == 3
    log.close()


def test_read_position_raises_outside_log_and_returns_end_at_log_end(
    tmp_path: Path,
) -> None:
    log = _open(tmp_path)
    _append(log, make_batch(records=3))

    end = log.read_position(3)
    assert (end.segment_base_offset, end.position) == (0, log.end_position)
    with pytest.raises(
        OffsetOutOfRangeError, match=r"offset 4 outside the log \[0, 3\]"
    ):
        log.read_position(4)
    with pytest.raises(OffsetOutOfRangeError):
        log.read_position(-1)
    log.close()


# -- retention, DeleteRecords, truncation --------------------------------------


def _three_segments_by_time(data_dir: Path, **config: int) -> PartitionLog:
    """Segments [0, 1] ts 1000, [2, 3] ts 2000, [4, 5] ts 3000 (active)."""
    log = _open(data_dir, segment_ms=10, **config)
    for number, timestamp in enumerate([1_000, 2_000, 3_000]):
        now = number * 100
        _append(log, make_batch(timestamp=timestamp), now_ms=now)
        _append(log, make_batch(timestamp=timestamp), now_ms=now)
    assert log.segment_base_offsets() == [0, 2, 4]
    return log


def test_retention_ms_deletes_only_expired_whole_segments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.log")
    log = _three_segments_by_time(tmp_path, retention_ms=1_500)

    assert log.enforce_retention(now_ms=2_500) == []
    assert log.enforce_retention(now_ms=2_501) == [0]
    assert log.log_start_offset == 2
    assert log.segment_base_offsets() == [2, 4]
    assert not (tmp_path / "orders-3" / f"{0:020d}.log").exists()
    deleted = _events(caplog, "segment.deleted")
    assert deleted == [
        {
            "topic_partition": "orders-3",
            "base_offset": 0,
            "bytes": deleted[0]["bytes"],
            "max_timestamp": 1_000,
            "reason": "retention_ms",
            "log_start_offset": 2,
            "level": logging.INFO,
        }
    ]
    with pytest.raises(OffsetOutOfRangeError):
        log.read_position(1)

    # Everything expired: the active segment still stays.
    assert log.enforce_retention(now_ms=10**9) == [2]
    assert log.segment_base_offsets() == [4]
    assert log.log_start_offset == 4
    assert log.read_position(5).segment_base_offset == 4
    log.close()


def test_retention_ms_keeps_expired_segment_behind_a_newer_one(tmp_path: Path) -> None:
    log = _open(tmp_path, segment_ms=10, retention_ms=1_000)
    for number, timestamp in enumerate([5_000, 1_000, 6_000]):
        _append(log, make_batch(timestamp=timestamp), now_ms=number * 100)
    assert log.segment_base_offsets() == [0, 1, 2]

    # Segment 1 expired but segment 0 did not: only a prefix may go.
    assert log.enforce_retention(now_ms=5_500) == []
    log.close()


def test_retention_bytes_deletes_oldest_until_within_limit(tmp_path: Path) -> None:
    log = _three_segments_by_time(tmp_path)
    sizes = [p.stat().st_size for p in sorted((tmp_path / "orders-3").glob("*.log"))]
    total = sum(sizes)
    log = _reconfigured(log, tmp_path, retention_bytes=total)
    assert log.enforce_retention(now_ms=0) == []

    log = _reconfigured(log, tmp_path, retention_bytes=total - 1)
    assert log.enforce_retention(now_ms=0) == [0]
    assert log.log_start_offset == 2

    log = _reconfigured(log, tmp_path, retention_bytes=1)
    assert log.enforce_retention(now_ms=0) == [2]  # never the active segment
    assert log.segment_base_offsets() == [4]
    assert log.log_start_offset == 4
    log.close()


def _reconfigured(log: PartitionLog, data_dir: Path, **config: int) -> PartitionLog:
    log.close()
    return _open(data_dir, segment_ms=10, **config)


def test_delete_records_before_moves_log_start_and_persists_it(tmp_path: Path) -> None:
    log = _three_segments_by_time(tmp_path)

    assert log.delete_records_before(3) == 3
    assert log.segment_base_offsets() == [2, 4]
    assert log.delete_records_before(1) == 3  # never moves back
    with pytest.raises(OffsetOutOfRangeError):
        log.delete_records_before(7)
    with pytest.raises(OffsetOutOfRangeError):
        log.read_position(2)
    log.close(checkpoint=False)

    reopened = _open(tmp_path)
    assert reopened.log_start_offset == 3
    assert reopened.read_position(3).segment_base_offset == 2
    reopened.close()


def test_truncate_to_removes_later_segments_and_straddling_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.log")
    log = _open(tmp_path, segment_bytes=400, index_interval_bytes=1)
    for _ in range(12):
        _append(log, make_batch(records=3, value_size=30))
    before = scan_directory(tmp_path / "orders-3")
    straddled = next(b for b in before if b.base_offset < 10 <= b.last_offset)

    assert log.truncate_to(10) == straddled.base_offset == 9

    after = scan_directory(tmp_path / "orders-3")
    assert after == [b for b in before if b.last_offset < 9]
    assert log.segment_base_offsets()[-1] == straddled.segment_base_offset
    assert _events(caplog, "log.truncated")[-1]["log_end_offset"] == 9

    # Appends continue contiguously from the new end, into the same segment.
    assert _append(log, make_batch(records=2)) == (9, 10)
    log.close()
    reopened = _open(tmp_path, segment_bytes=400, index_interval_bytes=1)
    assert reopened.log_end_offset == 11
    assert reopened.recovery.removed == ()
    reopened.close()


def test_truncate_to_below_log_start_empties_log_at_offset(tmp_path: Path) -> None:
    log = _three_segments_by_time(tmp_path)
    log.delete_records_before(3)

    assert log.truncate_to(2) == 2

    assert log.segment_base_offsets() == [2]
    assert log.log_start_offset == log.log_end_offset == 2
    assert scan_directory(tmp_path / "orders-3") == []
    assert _append(log, make_batch()) == (2, 2)
    log.close()


# -- recovery -------------------------------------------------------------------


def _crashed_log(data_dir: Path, **config: int) -> tuple[list[bytes], int]:
    """20 batches over several segments: a checkpoint after 12 of them, then
    8 more and a stop without checkpoint. Returns the batch payloads and
    the last segment's base offset."""
    config = {"segment_bytes": 1_500, "index_interval_bytes": 200} | config
    log = _open(data_dir, **config)
    for number in range(20):
        _append(log, make_batch(records=2, value_size=90 + number, timestamp=number))
        if number == 11:
            log.checkpoint()
    last_base = log.active_segment_base_offset
    log.close(checkpoint=False)
    return _payloads(data_dir / "orders-3"), last_base


def _active_log(data_dir: Path, base: int) -> Path:
    return data_dir / "orders-3" / f"{base:020d}.log"


def _assert_readable(log: PartitionLog, directory: Path) -> None:
    scanned = scan_directory(directory)
    for batch in scanned:
        for offset in (batch.base_offset, batch.last_offset):
            found = log.read_position(offset)
            assert (found.segment_base_offset, found.position) == (
                batch.segment_base_offset,
                batch.position,
            )


def test_recovery_truncates_torn_batch_at_segment_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads, last_base = _crashed_log(tmp_path)
    path = _active_log(tmp_path, last_base)
    size = path.stat().st_size
    last_batch_size = len(payloads[-1]) + 8
    os.truncate(path, size - 20)
    caplog.set_level(logging.INFO, logger="broker.log")
    caplog.clear()  # only the reopen's events count

    log = _open(tmp_path, segment_bytes=1_500, index_interval_bytes=200)

    assert _payloads(tmp_path / "orders-3") == payloads[:-1]
    assert log.log_end_offset == 38
    (removed,) = log.recovery.removed
    assert removed.bytes == last_batch_size - 20
    assert removed.position == size - last_batch_size
    assert removed.reason.startswith("torn batch")
    (truncated,) = _events(caplog, "log.truncated")
    assert truncated["level"] == logging.WARNING
    assert truncated["cause"] == "recovery"
    assert truncated["bytes_removed"] == last_batch_size - 20
    assert truncated["segment_base_offset"] == last_base
    assert "torn batch" in truncated["reason"]
    assert _events(caplog, "log.recovered")[0]["level"] == logging.WARNING
    _assert_readable(log, tmp_path / "orders-3")
    assert _append(log, make_batch()) == (38, 38)
    log.close()


def test_recovery_cuts_last_batch_when_its_crc_is_wrong(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    payloads, last_base = _crashed_log(tmp_path)
    path = _active_log(tmp_path, last_base)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55
    path.write_bytes(data)
    caplog.set_level(logging.INFO, logger="broker.log")

    log = _open(tmp_path, segment_bytes=1_500, index_interval_bytes=200)

    assert _payloads(tmp_path / "orders-3") == payloads[:-1]
    (removed,) = log.recovery.removed
    assert "CRC_MISMATCH" in removed.reason
    assert removed.bytes == len(payloads[-1]) + 8
    assert "CRC_MISMATCH" in _events(caplog, "log.truncated")[0]["reason"]
    _assert_readable(log, tmp_path / "orders-3")
    log.close()


def test_recovery_removes_junk_appended_after_clean_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = _open(tmp_path, segment_bytes=1_500)
    for number in range(10):
        _append(log, make_batch(records=2, value_size=100, timestamp=number))
    last_base = log.active_segment_base_offset
    log.close()
    payloads = _payloads(tmp_path / "orders-3")
    with _active_log(tmp_path, last_base).open("ab") as file:
        file.write(os.urandom(333))
    caplog.set_level(logging.INFO, logger="broker.log")

    reopened = _open(tmp_path, segment_bytes=1_500)

    assert _payloads(tmp_path / "orders-3") == payloads
    (removed,) = reopened.recovery.removed
    assert removed.bytes == 333
    assert _events(caplog, "log.truncated")[0]["bytes_removed"] == 333
    assert reopened.log_end_offset == 20
    reopened.close()


@pytest.mark.parametrize(
    "damage",
    [
        "active_index_junk",
        "sealed_index_odd_length",
        "sealed_index_bad_entry",
        "timeindex_junk",
    ],
)
def test_recovery_rebuilds_index_when_index_file_holds_junk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    payloads, last_base = _crashed_log(tmp_path, index_interval_bytes=100)
    directory = tmp_path / "orders-3"
    first_sealed = directory / f"{0:020d}.index"
    if damage == "active_index_junk":
        path = directory / f"{last_base:020d}.index"
        data = bytearray(path.read_bytes())
        data[0:24] = os.urandom(24)
        path.write_bytes(data)
    elif damage == "sealed_index_odd_length":
        with first_sealed.open("ab") as file:
            file.write(b"\x07\x07\x07")
    elif damage == "sealed_index_bad_entry":
        data = bytearray(first_sealed.read_bytes())
        data[-4:] = (10**6).to_bytes(4, "little")  # position past the file
        first_sealed.write_bytes(data)
    else:
        path = directory / f"{last_base:020d}.timeindex"
        path.write_bytes(os.urandom(path.stat().st_size))
    caplog.set_level(logging.INFO, logger="broker.log")

    log = _open(tmp_path, segment_bytes=1_500, index_interval_bytes=100)

    assert log.recovery.removed == ()
    rebuilt_base = 0 if damage.startswith("sealed") else last_base
    assert log.recovery.indexes_rebuilt == (rebuilt_base,)
    assert _events(caplog, "segment.index_rebuilt")[0]["base_offset"] == rebuilt_base
    assert _payloads(directory) == payloads
    _assert_readable(log, directory)
    # Batch n holds offsets 2n and 2n + 1 with timestamps n and n + 1: the
    # first record at or after t is the second one of batch t - 1.
    for timestamp in range(21):
        assert log.offset_for_timestamp(timestamp) == max(2 * timestamp - 1, 0)
    assert log.offset_for_timestamp(21) is None
    log.close()


def test_recovery_scans_only_segments_after_clean_point(tmp_path: Path) -> None:
    config = {"segment_bytes": 1_000, "index_interval_bytes": 100}
    log = _open(tmp_path, **config)
    for _ in range(30):
        _append(log, make_batch(records=2, value_size=150))
    log.checkpoint()
    clean_base, clean_position = log.active_segment_base_offset, log.end_position
    bases_at_checkpoint = log.segment_base_offsets()
    for _ in range(12):
        _append(log, make_batch(records=2, value_size=150))
    later = [b for b in log.segment_base_offsets() if b > clean_base]
    end_bytes = (
        sum(_active_log(tmp_path, b).stat().st_size for b in later)
        + _active_log(tmp_path, clean_base).stat().st_size
        - clean_position
    )
    log.close(checkpoint=False)
    state = json.loads((tmp_path / "orders-3" / STATE_FILE).read_text())
    assert (state["clean_segment_base_offset"], state["clean_position"]) == (
        clean_base,
        clean_position,
    )

    # Damage inside a segment before the clean point goes unseen: proof
    # that recovery does not read those segments.
    early = _active_log(tmp_path, bases_at_checkpoint[1])
    data = bytearray(early.read_bytes())
    data[-3] ^= 0xFF
    early.write_bytes(data)

    reopened = _open(tmp_path, **config)

    report = reopened.recovery
    assert len(bases_at_checkpoint) >= 4 and len(later) >= 2
    assert report.clean_point == (clean_base, clean_position)
    assert report.segments_scanned == (clean_base, *later)
    # From the clean point's last index entry: at most one interval and
    # one batch before the clean position.
    assert end_bytes <= report.bytes_scanned <= end_bytes + 100 + 300
    assert report.removed == ()
    assert reopened.log_end_offset == 84
    reopened.close()


def test_recovery_without_state_file_scans_every_segment(tmp_path: Path) -> None:
    _crashed_log(tmp_path)
    (tmp_path / "orders-3" / STATE_FILE).unlink()

    log = _open(tmp_path, segment_bytes=1_500, index_interval_bytes=200)

    assert log.recovery.clean_point is None
    assert log.recovery.segments_scanned == tuple(log.segment_base_offsets())
    assert log.recovery.bytes_scanned == sum(
        p.stat().st_size for p in (tmp_path / "orders-3").glob("*.log")
    )
    log.close()


def test_recovery_deletes_segments_after_a_cut_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"segment_bytes": 700, "index_interval_bytes": 100}
    log = _open(tmp_path, **config)
    _append(log, make_batch(value_size=100))
    log.checkpoint()
    for _ in range(15):
        _append(log, make_batch(value_size=300))
    bases = log.segment_base_offsets()
    log.close(checkpoint=False)
    assert len(bases) >= 4
    middle = _active_log(tmp_path, bases[1])
    data = bytearray(middle.read_bytes())
    data[-3] ^= 0xFF
    middle.write_bytes(data)
    caplog.set_level(logging.INFO, logger="broker.log")

    reopened = _open(tmp_path, **config)

    assert reopened.recovery.segments_deleted == tuple(bases[2:])
    # Segment 1 held one batch, the corrupt one: it stays, empty.
    assert reopened.segment_base_offsets() == bases[:2]
    assert reopened.log_end_offset == bases[1]
    scanned = scan_directory(tmp_path / "orders-3")
    assert {b.segment_base_offset for b in scanned} == {0}
    deleted = _events(caplog, "segment.deleted")
    assert [e["base_offset"] for e in deleted] == bases[2:]
    assert _append(reopened, make_batch())[0] == reopened.log_end_offset - 1
    reopened.close()


# -- write failures --------------------------------------------------------------


def _failing_writev(partial: bool) -> Callable[[int, Any], int]:
    real_write = os.write

    def writev(fd: int, buffers: Any) -> int:
        if partial:
            first = memoryview(buffers[0])
            real_write(fd, first[: len(first) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return writev


@pytest.mark.parametrize(
    "partial", [False, True], ids=["nothing_written", "half_written"]
)
def test_write_failure_keeps_earlier_data_and_refuses_further_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partial: bool
) -> None:
    log = _open(tmp_path, segment_bytes=2_000)
    for _ in range(8):
        _append(log, make_batch(records=2, value_size=100))
    payloads = _payloads(tmp_path / "orders-3")
    end = log.log_end_offset
    monkeypatch.setattr(os, "writev", _failing_writev(partial))

    with pytest.raises(LogStorageError, match="orders-3: append failed") as failure:
        _append(log, make_batch(), make_batch())

    assert failure.value.topic_partition == "orders-3"
    assert failure.value.cause.errno == errno.ENOSPC
    assert _payloads(tmp_path / "orders-3") == payloads
    assert log.log_end_offset == end

    # Sticky: even with the disk healthy again, the stored error comes back.
    monkeypatch.undo()
    with pytest.raises(LogStorageError) as again:
        _append(log, make_batch())
    assert again.value is failure.value
    with pytest.raises(LogStorageError):
        log.checkpoint()
    log.close()

    reopened = _open(tmp_path, segment_bytes=2_000)
    assert reopened.recovery.removed == ()
    assert _append(reopened, make_batch()) == (end, end)
    reopened.close()


def test_write_failure_after_roll_undoes_the_whole_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(tmp_path, segment_bytes=1_000)
    _append(log, make_batch(value_size=300))
    payloads = _payloads(tmp_path / "orders-3")
    real_writev = os.writev
    calls = []

    def second_call_fails(fd: int, buffers: Any) -> int:
        calls.append(len(buffers))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", second_call_fails)

    # The first batch fits in segment 0; the second needs a roll.
    with pytest.raises(LogStorageError, match="Input/output error"):
        _append(log, make_batch(value_size=300), make_batch(value_size=600))

    assert calls == [1, 1]
    assert log.segment_base_offsets() == [0]
    assert sorted(p.name for p in (tmp_path / "orders-3").glob("*.log")) == [
        f"{0:020d}.log"
    ]
    assert _payloads(tmp_path / "orders-3") == payloads
    assert log.log_end_offset == 1
    log.close()


def test_append_assigned_write_failure_after_roll_undoes_the_whole_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(tmp_path, segment_bytes=3_000)
    _append(log, make_batch(value_size=300))
    before = _files(tmp_path / "orders-3")
    real_writev = os.writev
    calls = []

    def third_call_fails(fd: int, buffers: Any) -> int:
        calls.append(sum(len(b) for b in buffers))
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", third_call_fails)
    # Six 1 KiB batches in one run: two rolls, so three writev calls.
    buffers, columns = _assign(
        log, [make_batch(value_size=1_000) for _ in range(6)], runs=1
    )
    with pytest.raises(LogStorageError, match="Input/output error"):
        log.append_assigned(buffers, columns, 0)

    assert len(calls) == 3
    assert log.segment_base_offsets() == [0]
    assert log.log_end_offset == 1
    monkeypatch.undo()
    log.close()
    assert _files(tmp_path / "orders-3") == before


def test_fdatasync_failure_is_sticky(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(tmp_path)
    _append(log, make_batch())

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(LogStorageError, match="fdatasync failed"):
        log.flush()
    monkeypatch.undo()

    with pytest.raises(LogStorageError, match="fdatasync failed"):
        _append(log, make_batch())
    log.close()


def test_checkpoint_writes_state_file_atomically(tmp_path: Path) -> None:
    log = _open(tmp_path)
    _append(log, make_batch(records=4))

    log.checkpoint()

    directory = tmp_path / "orders-3"
    state = json.loads((directory / STATE_FILE).read_text())
    assert state == {
        "format": 1,
        "clean_segment_base_offset": 0,
        "clean_position": log.end_position,
        "log_start_offset": 0,
    }
    assert not list(directory.glob("*.tmp"))
    log.close()


def test_open_rejects_topic_name_that_could_leave_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"topic name '\.\./x'"):
        PartitionLog.open(tmp_path, "../x", 0, LogConfig())


# -- checkpoints off the append loop ------------------------------------------


def _state(directory: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads((directory / STATE_FILE).read_text())
    return data


def test_run_checkpoint_records_the_log_end_taken_at_prepare(tmp_path: Path) -> None:
    log = _open(tmp_path)
    _append(log, make_batch(records=3))
    job = log.prepare_checkpoint()
    assert job is not None
    taken = log.end_position

    # Appended after the job was taken: not covered by its sync.
    _append(log, make_batch(records=2))
    assert log.run_checkpoint(job)

    state = _state(tmp_path / "orders-3")
    assert (state["clean_segment_base_offset"], state["clean_position"]) == (0, taken)
    assert taken < log.end_position
    log.close()


def test_prepare_checkpoint_returns_none_when_nothing_changed(tmp_path: Path) -> None:
    log = _open(tmp_path)
    _append(log, make_batch())
    job = log.prepare_checkpoint()
    assert job is not None and log.run_checkpoint(job)

    assert log.prepare_checkpoint() is None
    log.close()


@pytest.mark.parametrize("change", ["truncate", "close"])
def test_run_checkpoint_records_nothing_after_truncation_or_close(
    tmp_path: Path, change: str
) -> None:
    log = _open(tmp_path)
    for _ in range(3):
        _append(log, make_batch(records=2))
    job = log.prepare_checkpoint()
    assert job is not None
    if change == "truncate":
        log.truncate_to(2)
    else:
        log.close()
    recorded = _state(tmp_path / "orders-3")

    # The job's clean point lies past the cut (or the files are closed).
    assert not log.run_checkpoint(job)
    assert _state(tmp_path / "orders-3") == recorded
    if change == "truncate":
        assert recorded["clean_position"] == log.end_position
        log.close()


def test_checkpoint_syncs_segments_a_pending_job_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(tmp_path)
    _append(log, make_batch(records=2))
    job = log.prepare_checkpoint()
    assert job is not None
    synced: list[str] = []
    original = os.fdatasync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        original(fd)

    monkeypatch.setattr(os, "fdatasync", recording)

    # The job has not run: the synchronous checkpoint must sync its segment
    # before its clean point covers those bytes.
    log.checkpoint()

    assert any(path.endswith(f"{0:020d}.log") for path in synced)
    assert _state(tmp_path / "orders-3")["clean_position"] == log.end_position
    assert not log.run_checkpoint(job)  # superseded by the checkpoint
    log.close()


def test_run_checkpoint_fdatasync_failure_is_sticky(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(tmp_path)
    _append(log, make_batch())
    recorded = _state(tmp_path / "orders-3")
    job = log.prepare_checkpoint()
    assert job is not None

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(LogStorageError, match="fdatasync failed"):
        log.run_checkpoint(job)
    monkeypatch.undo()

    assert _state(tmp_path / "orders-3") == recorded
    with pytest.raises(LogStorageError, match="fdatasync failed"):
        log.flush()
    with pytest.raises(LogStorageError, match="fdatasync failed"):
        _append(log, make_batch())
    log.close()


def test_flush_skips_index_files_without_new_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _open(tmp_path, index_interval_bytes=1 << 20)
    _append(log, make_batch())
    log.flush()
    synced: list[str] = []
    original = os.fdatasync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        original(fd)

    monkeypatch.setattr(os, "fdatasync", recording)

    # No index entry: only the .log is synced.
    _append(log, make_batch())
    log.flush()
    assert [Path(path).suffix for path in synced] == [".log"]
    log.close()


def test_checkpoints_in_another_thread_keep_rolls_and_retention_safe(
    tmp_path: Path,
) -> None:
    """A thread runs checkpoint jobs while this one appends, rolls and
    deletes segments; every job ends without error and recovery after the
    last clean point finds every batch."""
    import threading

    log = _open(tmp_path, segment_bytes=2_000, index_interval_bytes=100)
    jobs: list[Any] = []
    errors: list[BaseException] = []
    ready = threading.Event()
    stop = threading.Event()

    def flusher() -> None:
        # Bounded by stop (set below) and by 20 s.
        deadline = 20.0
        while not stop.is_set() and deadline > 0:
            if not ready.wait(0.01):
                deadline -= 0.01
                continue
            ready.clear()
            try:
                log.run_checkpoint(jobs[-1])
            except BaseException as exc:  # reported to the test thread
                errors.append(exc)
            jobs.append(None)

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for number in range(300):
            _append(log, make_batch(records=1 + number % 3, value_size=40))
            if number % 7 == 0 and (not jobs or jobs[-1] is None):
                job = log.prepare_checkpoint()
                if job is not None:
                    jobs.append(job)
                    ready.set()
            if number % 50 == 49:
                log.enforce_retention(now_ms=1 << 60)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert errors == []
    end = log.log_end_offset
    start = log.log_start_offset
    log.close(checkpoint=False)

    reopened = _open(tmp_path, segment_bytes=2_000, index_interval_bytes=100)
    assert reopened.recovery.removed == ()
    assert (reopened.log_start_offset, reopened.log_end_offset) == (start, end)
    reopened.close()
