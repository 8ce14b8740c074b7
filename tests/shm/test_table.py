"""Seqlock table: single-process semantics and a cross-process torn-row hunt."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from shm.region import RegionLayoutError
from shm.table import Table, TableError, TornRowError
from tests.shm.shm_peers import TABLE_FIELDS, TABLE_WIDTH
from tests.shm.support import Peers

STATE_FIELDS = np.dtype(
    [
        ("log_start_offset", np.int64),
        ("log_end_offset", np.int64),
        ("high_watermark", np.int64),
        ("flags", np.int8),
    ]
)


def test_table_read_row_returns_written_values_when_written(prefix: str) -> None:
    table = Table.create(prefix + "t", STATE_FIELDS, rows=4)
    writer = table.writer()

    writer.write_row(2, (5, 10, 8, 1))
    writer.update(2, high_watermark=9)

    assert table.read_row(2) == (5, 10, 9, 1)
    assert table.read_row(0) == (0, 0, 0, 0)
    assert table.sequences[2] == 4
    reader = Table.attach(prefix + "t", STATE_FIELDS)
    assert reader.read_row(2) == (5, 10, 9, 1)
    reader.close()
    table.close()


def test_table_write_rows_updates_each_row_when_vectorised(prefix: str) -> None:
    table = Table.create(prefix + "t", STATE_FIELDS, rows=8)
    writer = table.writer()
    values = np.zeros(3, dtype=table.dtype)
    values["log_end_offset"] = [100, 200, 300]

    writer.write_rows([1, 4, 7], values)

    rows = table.read_rows([7, 4, 1, 0])
    assert rows["log_end_offset"].tolist() == [300, 200, 100, 0]
    assert table.snapshot()["log_end_offset"].tolist() == [0, 100, 0, 0, 200, 0, 0, 300]
    del rows
    table.close()


def test_table_rejects_index_and_fields_when_unknown(prefix: str) -> None:
    table = Table.create(prefix + "t", STATE_FIELDS, rows=2)
    writer = table.writer()
    with pytest.raises(IndexError, match="no row 2"):
        table.read_row(2)
    with pytest.raises(IndexError, match="no row -1"):
        writer.write_row(-1, (0, 0, 0, 0))
    with pytest.raises(TableError, match="no fields \\['offset'\\]"):
        writer.update(0, offset=3)
    with pytest.raises(IndexError, match="out of range"):
        table.read_rows([0, 5])
    table.close()


def test_table_attach_raises_when_fields_differ(prefix: str) -> None:
    table = Table.create(prefix + "t", STATE_FIELDS, rows=2)
    other = np.dtype([("log_start_offset", np.int64), ("log_end_offset", np.int32)])
    with pytest.raises(RegionLayoutError, match="table row is"):
        Table.attach(prefix + "t", other)
    table.close()


def test_table_writer_refused_when_other_live_writer(prefix: str) -> None:
    table = Table.create(prefix + "t", STATE_FIELDS, rows=2)
    table.writer()
    with pytest.raises(TableError, match="already has a writer"):
        table.writer()
    table.close()


def test_table_torn_row_raises_until_rewritten_when_writer_died(prefix: str) -> None:
    table = Table.create(prefix + "t", STATE_FIELDS, rows=3)
    writer = table.writer()
    writer.write_row(1, (1, 2, 3, 0))
    # What a writer killed between its two counter stores leaves behind.
    table.sequences[1] += 1
    table.read_attempts = 50

    with pytest.raises(TornRowError, match="row 1: no consistent copy after 50"):
        table.read_row(1)
    with pytest.raises(TornRowError):
        table.read_rows([0, 1])
    assert writer.torn_rows().tolist() == [1]

    writer.write_row(1, (4, 5, 6, 0))
    assert table.read_row(1) == (4, 5, 6, 0)
    assert writer.torn_rows().tolist() == []
    table.close()


@pytest.mark.timeout(60)
def test_table_reader_never_sees_torn_row_when_writer_hammers(
    prefix: str, peers: Peers
) -> None:
    """Every field of a row is written with the same value; a torn copy
    would mix two values."""
    rows = 8
    table = Table.create(prefix + "t", TABLE_FIELDS, rows=rows)
    writer = peers.start("table-write", prefix + "t", 3.0)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "writing"

    reads = 0
    values_seen: set[int] = set()
    raw_torn = 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        for index in range(rows):
            row = table.read_row(index)
            assert len(set(row)) == 1, f"torn row {index}: {row}"
            values_seen.add(row[0])
            # The same copy without the seqlock, to show the writer overlaps.
            raw = table.table.item(index)
            raw_torn += len(set(raw)) != 1
        batch = table.read_rows(np.arange(rows))
        for field in range(1, TABLE_WIDTH):
            assert np.array_equal(batch["v0"], batch[f"v{field}"]), batch
        reads += rows * 2

    writes = json.loads(peers.finish(writer, timeout=30))["writes"]
    assert writes > 10_000
    assert len(values_seen) > 100
    # Reads did overlap writes: the seqlock had to retry.
    assert table.retries > 0
    print(f"reads={reads} writes={writes} retries={table.retries} raw_torn={raw_torn}")
    del batch
    table.close()
