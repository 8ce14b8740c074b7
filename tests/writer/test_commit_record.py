"""The commit record: a copy written without its generation store (a writer
killed mid-commit) leaves the previous commit current."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np
import pytest

from broker.commit_record import NOTHING_APPLIED, CommitRecord
from broker.layout import commit_fields
from shm.region import unlink_stale
from shm.table import Table


@pytest.fixture
def table() -> Iterator[Table]:
    prefix = f"rbt{secrets.token_hex(5)}_"
    made = Table.create(prefix + "commits", commit_fields(3), 8)
    try:
        yield made
    finally:
        made.close()
        made.unlink()
        unlink_stale(prefix, include_live_owners=True)


def test_commit_record_starts_empty_and_commits_both_copies_in_turn(
    table: Table,
) -> None:
    record = CommitRecord(table)
    assert record.committed(2) is None
    assert (record.applied == NOTHING_APPLIED).all()

    for generation in range(1, 5):
        record.applied[2] = [generation, 10 * generation, -1]
        record.commit(2, 100 * generation)
        committed = record.committed(2)
        assert committed is not None
        assert committed.log_end_offset == 100 * generation
        assert committed.applied_sequence.tolist() == [generation, 10 * generation, -1]
    record.close()


def test_commit_record_half_written_copy_keeps_previous_commit(table: Table) -> None:
    record = CommitRecord(table)
    record.applied[5] = [7, 8, 9]
    record.commit(5, 1234)
    record.close()

    # A killed writer wrote the other copy but never stored the generation.
    rows = table.table
    rows["log_end_offset"][5, 0] = 9999
    rows["applied_sequence"][5, 0] = [70, 80, 90]

    reopened = CommitRecord(table)
    committed = reopened.committed(5)
    assert committed is not None
    assert committed.log_end_offset == 1234
    assert reopened.applied[5].tolist() == [7, 8, 9]
    assert np.array_equal(committed.applied_sequence, reopened.applied[5])

    reopened.reset(5)
    assert reopened.committed(5) is None
    assert (reopened.applied[5] == NOTHING_APPLIED).all()
    reopened.close()
