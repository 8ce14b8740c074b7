"""Tests of perf.produce helpers (partition split, kcat input file)."""

from __future__ import annotations

from pathlib import Path

from perf.produce import split_partitions, write_line_file


def test_split_partitions_deals_round_robin_when_more_partitions() -> None:
    assert split_partitions(5, 2) == [(0, 2, 4), (1, 3)]
    assert split_partitions(1, 1) == [(0,)]


def test_split_partitions_shares_when_more_processes_than_partitions() -> None:
    assert split_partitions(2, 3) == [(0,), (1,), (0,)]


def test_write_line_file_writes_records_of_exact_size(tmp_path: Path) -> None:
    path = tmp_path / "records.txt"
    write_line_file(path, 100, 25_000)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == 25_000
    assert {len(line) for line in lines[:-1]} == {100}
    assert all(line.isalpha() for line in lines[:10])
