"""Segment lookups (writer side and SegmentReader) against a brute-force scan
of the files, over many index intervals, batch sizes and segment sizes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.log.batch import build_batch
from broker.log.partition import LogConfig, PartitionLog
from broker.log.segment import (
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


@PROPERTY_SETTINGS
@given(
    shapes=batch_shapes,
    interval=st.sampled_from([1, 64, 300, 1000, 4096]),
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
