"""Offset and time index tables: lookups, unused slots, trimming, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broker.log.index import (
    GROW_FROM_BYTES,
    INT32_MAX,
    UNUSED_TIMESTAMP,
    OffsetIndex,
    TimeIndex,
)


def _offset_index(
    path: Path, entries: list[tuple[int, int]], capacity: int = 16
) -> OffsetIndex:
    index = OffsetIndex(path, writable=True, capacity=capacity)
    for relative, position in entries:
        index.append(relative, position)
    return index


def test_offset_index_lookup_returns_largest_entry_not_above_target(
    tmp_path: Path,
) -> None:
    index = _offset_index(tmp_path / "a.index", [(10, 100), (20, 250), (35, 400)])

    assert index.lookup(9) is None
    assert index.lookup(10) == (10, 100)
    assert index.lookup(34) == (20, 250)
    assert index.lookup(10**12) == (35, 400)
    assert index.lookup(-1) is None
    index.close()


def test_offset_index_lookup_ignores_entries_past_max_position(tmp_path: Path) -> None:
    index = _offset_index(tmp_path / "a.index", [(10, 100), (20, 250), (35, 400)])

    assert index.lookup(40, max_position=399) == (20, 250)
    assert index.lookup(40, max_position=99) is None
    index.close()


def test_offset_index_file_is_preallocated_with_unused_slots(tmp_path: Path) -> None:
    path = tmp_path / "a.index"
    index = _offset_index(path, [(1, 8)], capacity=16)

    assert path.stat().st_size == 16 * 8
    raw = np.fromfile(path, dtype="<i4").reshape(-1, 2)
    assert raw[0].tolist() == [1, 8]
    assert bool(np.all(raw[1:] == INT32_MAX))
    index.close()


def test_offset_index_reopen_counts_entries_from_unused_slots(tmp_path: Path) -> None:
    path = tmp_path / "a.index"
    _offset_index(path, [(1, 8), (4, 90)]).close()

    reopened = OffsetIndex(path, writable=True, capacity=16)

    assert reopened.count == 2
    assert reopened.entries().tolist() == [(1, 8), (4, 90)]
    reopened.close()


def test_offset_index_reader_sees_appends_after_it_mapped(tmp_path: Path) -> None:
    path = tmp_path / "a.index"
    writer = _offset_index(path, [(1, 8)])
    reader = OffsetIndex(path, writable=False)

    writer.append(5, 300)

    assert reader.lookup(7) == (5, 300)
    writer.close()
    reader.close()


def test_offset_index_reader_maps_again_when_the_file_grew(tmp_path: Path) -> None:
    path = tmp_path / "a.index"
    first_page = GROW_FROM_BYTES // 8
    writer = _offset_index(
        path, [(i, i * 100) for i in range(first_page)], capacity=4 * first_page
    )
    reader = OffsetIndex(path, writable=False)
    assert reader.capacity == first_page  # full: every slot in use

    # The writer grows the file past the reader's mapping.
    writer.append(first_page + 10, first_page * 100 + 50)

    # The lookup runs past the mapping, maps the file again and finds the
    # new entry; the lookups after it use the new mapping.
    assert reader.lookup(10**6) == (first_page + 10, first_page * 100 + 50)
    assert reader.capacity > first_page
    assert reader.lookup(first_page + 9) == (first_page - 1, (first_page - 1) * 100)
    assert reader.lookup(3) == (3, 300)
    writer.close()
    reader.close()


def test_offset_index_survives_a_view_held_across_a_remap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.index"
    first_page = GROW_FROM_BYTES // 8
    writer = _offset_index(
        path, [(i, i * 100) for i in range(first_page)], capacity=4 * first_page
    )
    reader = OffsetIndex(path, writable=False)
    held = reader.entries()  # kept past its use, against the docstring
    writer.append(first_page + 10, first_page * 100 + 50)

    # The old mapping cannot close while the view exists; the lookup still
    # maps the grown file and answers, and so do the lookups after it.
    with caplog.at_level("WARNING"):
        assert reader.lookup(10**6) == (first_page + 10, first_page * 100 + 50)
    assert "index.mapping_still_viewed" in caplog.text
    assert reader.lookup(3) == (3, 300)
    assert held[3].tolist() == (3, 300)  # the old view still reads
    del held
    writer.close()
    reader.close()


def test_offset_index_trim_keeps_old_mappings_readable(tmp_path: Path) -> None:
    path = tmp_path / "a.index"
    writer = _offset_index(path, [(1, 8), (5, 300)], capacity=1024)
    reader = OffsetIndex(path, writable=False)

    writer.trim()

    # The reader's mapping covers the first page of slots of the replaced
    # inode; touching them would be SIGBUS had the file been shrunk in place.
    assert reader.capacity == GROW_FROM_BYTES // 8
    assert reader.lookup(10**6) == (5, 300)
    assert path.stat().st_size == 2 * 8
    assert OffsetIndex(path, writable=False).entries().tolist() == [(1, 8), (5, 300)]
    writer.close()
    reader.close()


def test_offset_index_check_reports_junk(tmp_path: Path) -> None:
    index = _offset_index(tmp_path / "a.index", [(1, 8), (5, 300), (9, 600)])
    assert index.check() is None

    index.entries()["position"][1] = 700
    assert index.check() == "entries not strictly increasing"
    index.close()


def test_offset_index_marks_damaged_when_length_is_not_whole_entries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.index"
    path.write_bytes(b"\x01" * 13)

    index = OffsetIndex(path, writable=True, capacity=4)

    assert index.damaged
    assert index.count == 0
    index.close()


def test_time_index_first_at_or_after_and_unused_tail(tmp_path: Path) -> None:
    path = tmp_path / "a.timeindex"
    index = TimeIndex(path, writable=True, capacity=8)
    for timestamp, relative in [(100, 3), (150, 9), (400, 20)]:
        index.append(timestamp, relative)

    assert index.first_at_or_after(50) == 0
    assert index.first_at_or_after(100) == 0
    assert index.first_at_or_after(101) == 1
    assert index.first_at_or_after(400) == 2
    assert index.first_at_or_after(401) == 3
    assert index.first_at_or_after(UNUSED_TIMESTAMP) == 3
    assert index.entry(1) == (150, 9)
    assert index.count_through(9) == 2
    assert path.stat().st_size == 8 * 16
    assert index.check(relative_end=21) is None
    assert index.check(relative_end=20) is not None
    index.close()


@pytest.mark.parametrize("capacity", [0, 3])
def test_time_index_truncate_makes_slots_unused(tmp_path: Path, capacity: int) -> None:
    index = TimeIndex(tmp_path / "a.timeindex", writable=True, capacity=capacity + 3)
    for timestamp, relative in [(100, 3), (150, 9), (400, 20)]:
        index.append(timestamp, relative)

    index.truncate(1)

    assert index.count == 1
    assert index.first_at_or_after(120) == 1
    assert index.check(relative_end=21) is None
    index.close()
