"""Segment lookups (writer side and SegmentReader) against a brute-force scan
of the files, over many index intervals, batch sizes and segment sizes."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import broker.log.segment as segment_module
from broker.log.batch import build_batch
from broker.log.partition import LogConfig, PartitionLog
from broker.log.segment import (
    HEADER_SIZE,
    BatchColumns,
    BatchMeta,
    Segment,
    SegmentReader,
    list_segment_base_offsets,
)

from .support import make_batch, scan_directory

# (records in the batch, value size, timestamp of its records)
batch_shapes = st.lists(
    st.tuples(st.integers(1, 6), st.integers(0, 400), st.integers(0, 5_000)),
    min_size=1,
    max_size=50,
)
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _fill(
    directory: Path,
    shapes: list[tuple[int, int, int]],
    *,
    interval: int,
    segment_bytes: int,
    group: int,
) -> PartitionLog:
    log = PartitionLog.open(
        directory,
        "t",
        0,
        LogConfig(segment_bytes=segment_bytes, index_interval_bytes=interval),
    )
    batches = [
        build_batch([(b"k", bytes(size), [], timestamp)] * records)
        for records, size, timestamp in shapes
    ]
    for start in range(0, len(batches), group):
        log.append([memoryview(b) for b in batches[start : start + group]], now_ms=0)
    return log


def _holding_batch(scanned: list[Any], offset: int) -> Any:
    return next(batch for batch in scanned if batch.last_offset >= offset)


@pytest.mark.parametrize("read_bytes", [HEADER_SIZE, HEADER_SIZE + 7, 1000])
def test_scan_reads_cut_anywhere_find_the_same_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_bytes: int
) -> None:
    # No index entry after the first: every lookup scans from position 0,
    # across reads that end mid-header, mid-batch and exactly on a header.
    shapes = [(1 + i % 3, 20 + 37 * (i % 5), i) for i in range(60)]
    log = _fill(tmp_path, shapes, interval=1 << 30, segment_bytes=1 << 20, group=4)
    scanned = scan_directory(tmp_path / "t-0")
    monkeypatch.setattr(segment_module, "SCAN_READ_BYTES", read_bytes)

    for offset in range(log.log_end_offset):
        assert log.read_position(offset).position == (
            _holding_batch(scanned, offset).position
        )
    log.close()


def test_a_scan_within_one_index_interval_is_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 B values: about 25 batches per 4 KiB index interval.
    shapes = [(1, 100, i) for i in range(400)]
    log = _fill(tmp_path, shapes, interval=4096, segment_bytes=1 << 20, group=1)
    reads = 0
    original = os.pread

    def counting(fd: int, length: int, position: int) -> bytes:
        nonlocal reads
        reads += 1
        return original(fd, length, position)

    monkeypatch.setattr(os, "pread", counting)
    log.read_position(log.log_end_offset - 1)

    assert reads == 1
    log.close()


@PROPERTY_SETTINGS
@given(
    shapes=batch_shapes,
    # Past 4 KiB, a scan from an index entry spans several reads.
    interval=st.sampled_from([1, 64, 300, 1000, 4096, 20_000, 1 << 20]),
    segment_bytes=st.sampled_from([700, 2_000, 1 << 20]),
    group=st.integers(1, 7),
)
def test_read_position_finds_batch_holding_every_offset(
    shapes: list[tuple[int, int, int]], interval: int, segment_bytes: int, group: int
) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        data_dir = Path(temporary)
        log = _fill(
            data_dir,
            shapes,
            interval=interval,
            segment_bytes=segment_bytes,
            group=group,
        )
        directory = data_dir / "t-0"
        scanned = scan_directory(directory)
        assert log.log_end_offset == scanned[-1].last_offset + 1

        readers = {
            base: SegmentReader(directory, base)
            for base in list_segment_base_offsets(directory)
        }
        try:
            for offset in range(log.log_end_offset):
                expected = _holding_batch(scanned, offset)
                found = log.read_position(offset)
                assert (found.segment_base_offset, found.position) == (
                    expected.segment_base_offset,
                    expected.position,
                )
                reader = readers[expected.segment_base_offset]
                size = (
                    (directory / f"{expected.segment_base_offset:020d}.log")
                    .stat()
                    .st_size
                )
                hit = reader.find_position(offset, size)
                assert hit is not None and hit[0] == expected.position
        finally:
            for reader in readers.values():
                reader.close()

        # Sealed, trimmed indexes after a clean close answer the same.
        log.close()
        reopened = PartitionLog.open(
            data_dir,
            "t",
            0,
            LogConfig(segment_bytes=segment_bytes, index_interval_bytes=interval),
        )
        for offset in range(0, reopened.log_end_offset, 3):
            expected = _holding_batch(scanned, offset)
            assert reopened.read_position(offset).position == expected.position
        reopened.close()


@PROPERTY_SETTINGS
@given(
    shapes=batch_shapes,
    interval=st.sampled_from([1, 100, 1000]),
    segment_bytes=st.sampled_from([900, 1 << 20]),
    probes=st.lists(st.integers(-10, 5_100), min_size=1, max_size=20),
)
def test_offset_for_timestamp_matches_first_batch_at_or_after(
    shapes: list[tuple[int, int, int]],
    interval: int,
    segment_bytes: int,
    probes: list[int],
) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        data_dir = Path(temporary)
        log = _fill(
            data_dir, shapes, interval=interval, segment_bytes=segment_bytes, group=3
        )
        scanned = scan_directory(data_dir / "t-0")
        targets = probes + [batch.max_timestamp for batch in scanned]

        def brute_force(target: int) -> int | None:
            first = next((b for b in scanned if b.max_timestamp >= target), None)
            return None if first is None else first.base_offset

        for target in targets:
            assert log.offset_for_timestamp(target) == brute_force(target)

        log.close()
        reopened = PartitionLog.open(
            data_dir,
            "t",
            0,
            LogConfig(segment_bytes=segment_bytes, index_interval_bytes=interval),
        )
        for target in targets:
            assert reopened.offset_for_timestamp(target) == brute_force(target)
        reopened.close()


def test_segment_reader_bounds_lookup_by_end_position(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, "t", 0, LogConfig(index_interval_bytes=1))
    batches = [make_batch(records=2, value_size=100) for _ in range(5)]
    log.append([memoryview(b) for b in batches], now_ms=0)
    scanned = scan_directory(tmp_path / "t-0")
    reader = SegmentReader(tmp_path / "t-0", 0)

    # A reader bounded at the third batch's end must not see the fourth.
    end = scanned[3].position
    assert reader.find_position(5, end)[0] == scanned[2].position  # type: ignore[index]
    assert reader.find_position(6, end) is None
    reader.close()
    log.close()


def test_segment_truncate_to_offset_rebuilds_state_and_index(tmp_path: Path) -> None:
    segment = Segment(tmp_path, 0, index_interval_bytes=1, index_capacity=64)
    batches = [
        make_batch(records=2, value_size=50, timestamp=100 * i) for i in range(6)
    ]
    for number, batch in enumerate(batches):
        batch[0:8] = (number * 2).to_bytes(8, "big")
    metas: list[BatchMeta] = [
        (number * 2, number * 2 + 1, 100 * number + 1, len(batch))
        for number, batch in enumerate(batches)
    ]
    segment.append([memoryview(b) for b in batches], metas, now_ms=0)
    assert segment.offset_index.count == 5

    removed = segment.truncate_to_offset(7)

    scanned = scan_directory(tmp_path)
    assert [b.base_offset for b in scanned] == [0, 2, 4]
    assert removed == sum(len(b) for b in batches[3:])
    assert segment.next_offset == 6
    assert segment.max_timestamp == 201
    assert segment.offset_index.count == 2
    assert segment.find_position(7) is None
    assert segment.find_position(5)[0] == scanned[2].position  # type: ignore[index]
    segment.close()


@pytest.mark.parametrize("interval", [1, 150, 10_000])
def test_segment_recover_from_end_keeps_index_and_state(
    tmp_path: Path, interval: int
) -> None:
    log = PartitionLog.open(tmp_path, "t", 0, LogConfig(index_interval_bytes=interval))
    for number in range(20):
        log.append(
            [memoryview(make_batch(records=3, value_size=40, timestamp=number))], 0
        )
    log.close(checkpoint=False)
    segment = Segment(
        tmp_path / "t-0", 0, index_interval_bytes=interval, index_capacity=100
    )
    entries_before = segment.offset_index.entries().tolist()

    result = segment.recover(segment.size, min_base_offset=0)

    assert result.bytes_removed == 0
    assert result.index_rebuilt_reason is None
    assert segment.offset_index.entries().tolist() == entries_before
    assert segment.next_offset == 60
    assert segment.max_timestamp == 19 + 2
    # Only the tail from the last index entry was read again.
    last_position = entries_before[-1][1] if entries_before else 0
    assert result.scanned_from == last_position
    segment.close()


# -- appends described by columns ---------------------------------------------


def _metas(base_offset: int, shapes: Sequence[tuple[int, int, int]]) -> list[BatchMeta]:
    """Metas of batches (records, size, maxTimestamp) from ``base_offset``."""
    metas = []
    for records, size, max_timestamp in shapes:
        metas.append((base_offset, base_offset + records - 1, max_timestamp, size))
        base_offset += records
    return metas


def _columns(metas: Sequence[BatchMeta]) -> BatchColumns:
    base, last, stamp, size = (
        np.array(c, dtype=np.int64) for c in zip(*metas, strict=True)
    )
    return BatchColumns(base, last, stamp, size)


def _plan_lists(plan: Any) -> tuple[Any, ...]:
    """A plan with its entries as lists of int pairs, whichever planner."""
    tracking, *entries = plan
    return (
        tracking,
        *(
            found
            if isinstance(found, list)
            else list(zip(*map(list, found), strict=True))
            for found in entries
        ),
    )


# (records, size in bytes, maxTimestamp): sizes around every interval below,
# timestamps that repeat, fall and rise.
column_shapes = st.lists(
    st.tuples(
        st.integers(1, 5),
        st.one_of(st.integers(61, 400), st.integers(3_000, 20_000)),
        st.integers(-1, 300),
    ),
    min_size=1,
    max_size=150,
)


@PROPERTY_SETTINGS
@given(
    before=st.lists(
        st.tuples(st.integers(1, 5), st.integers(61, 9_000), st.integers(-1, 300)),
        max_size=12,
    ),
    shapes=column_shapes,
    interval=st.sampled_from([1, 61, 300, 4_096, 20_000]),
    capacity=st.sampled_from([2, 6, 40, 1_000]),
    segment_base=st.sampled_from([0, 7_000]),
)
def test_segment_plan_columns_matches_per_batch_plan(
    before: list[tuple[int, int, int]],
    shapes: list[tuple[int, int, int]],
    interval: int,
    capacity: int,
    segment_base: int,
) -> None:
    """The numpy planner gives the per-batch loop's state and index entries,
    including when an index runs out of room (it defers to the loop)."""
    with (
        tempfile.TemporaryDirectory() as temporary,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(segment_module, "VECTOR_MIN_BATCHES", 1)
        segment = Segment(
            Path(temporary),
            segment_base,
            index_interval_bytes=interval,
            index_capacity=capacity,
        )
        earlier = _metas(segment_base, before)
        if earlier:
            segment.append([memoryview(bytes(m[3])) for m in earlier], earlier, 0)
        metas = _metas(segment.next_offset, shapes)

        expected = segment._plan(metas)
        planned = segment._plan_columns(_columns(metas))

        assert _plan_lists(planned) == _plan_lists(expected)
        segment.close()


@pytest.mark.parametrize("interval", [1, 200, 4_096])
def test_segment_append_columns_writes_what_append_writes(
    tmp_path: Path, interval: int
) -> None:
    """Same bytes, index entries and state through either append, with the
    batches handed over as a few runs instead of one view each."""
    batches = [
        make_batch(records=1 + n % 4, value_size=(n * 173) % 5_000, timestamp=n % 50)
        for n in range(200)
    ]
    metas = _metas(
        0, [(1 + n % 4, len(b), n % 50 + n % 4) for n, b in enumerate(batches)]
    )
    for batch, meta in zip(batches, metas, strict=True):
        batch[0:8] = meta[0].to_bytes(8, "big")
    joined = memoryview(b"".join(batches))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    by_batch = Segment(
        tmp_path / "a", 0, index_interval_bytes=interval, index_capacity=500
    )
    by_column = Segment(
        tmp_path / "b", 0, index_interval_bytes=interval, index_capacity=500
    )

    for part in (slice(0, 70), slice(70, 200)):
        by_batch.append([memoryview(b) for b in batches[part]], metas[part], 0)
    # The second call's runs are cut inside a batch: a segment takes bytes.
    first_bytes = sum(m[3] for m in metas[:70])
    by_column.append_columns([joined[:first_bytes]], _columns(metas[:70]), 0)
    middle = first_bytes + 90_001
    by_column.append_columns(
        [joined[first_bytes:middle], joined[middle:]], _columns(metas[70:]), 0
    )

    assert (tmp_path / "a" / f"{0:020d}.log").read_bytes() == bytes(joined)
    assert (tmp_path / "b" / f"{0:020d}.log").read_bytes() == bytes(joined)
    assert (
        by_column.offset_index.entries().tolist()
        == by_batch.offset_index.entries().tolist()
    )
    assert (
        by_column.time_index.entries().tolist()
        == by_batch.time_index.entries().tolist()
    )
    assert (by_column.size, by_column.next_offset, by_column.max_timestamp) == (
        by_batch.size,
        by_batch.next_offset,
        by_batch.max_timestamp,
    )
    assert by_column.offset_index.count > 0
    for offset in range(0, by_batch.next_offset, 7):
        assert by_column.find_position(offset) == by_batch.find_position(offset)
    by_batch.close()
    by_column.close()


@pytest.mark.parametrize("write_bytes", [1, 100, 16_205, 50_000])
@pytest.mark.parametrize("iov_max", [1, 3, 1_024])
def test_write_all_splits_calls_at_write_bytes_and_iov_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_bytes: int, iov_max: int
) -> None:
    monkeypatch.setattr(segment_module, "WRITE_BYTES", write_bytes)
    monkeypatch.setattr(segment_module, "IOV_MAX", iov_max)
    data = bytes(range(256)) * 700
    cuts = [0, 1, 61, 5_000, 5_000, 40_000, 120_000, len(data)]
    buffers = [memoryview(data)[a:b] for a, b in itertools.pairwise(cuts)]
    calls: list[list[int]] = []
    real_writev = os.writev

    def writev(fd: int, chunk: Any) -> int:
        calls.append([len(buffer) for buffer in chunk])
        return real_writev(fd, chunk)

    monkeypatch.setattr(os, "writev", writev)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        made = segment_module._write_all(fd, buffers, len(data))
    finally:
        os.close(fd)

    assert (tmp_path / "out").read_bytes() == data
    assert made == len(calls)
    assert all(sum(call) <= write_bytes and len(call) <= iov_max for call in calls)
    # Only the last call is short of a limit: no call is cut early.
    for call in calls[:-1]:
        assert sum(call) == write_bytes or len(call) == iov_max


def test_write_all_completes_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_module, "WRITE_BYTES", 10_000)
    data = bytes(range(256)) * 200
    buffers = [memoryview(data)[:3_000], memoryview(data)[3_000:]]
    real_writev = os.writev

    def short_writev(fd: int, chunk: Any) -> int:
        # Write only part of the first buffer, as a signal or a full disk can.
        first = memoryview(chunk[0])
        return real_writev(fd, [first[: max(1, len(first) // 3)]])

    monkeypatch.setattr(os, "writev", short_writev)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        segment_module._write_all(fd, buffers, len(data))
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == data
