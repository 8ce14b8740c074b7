"""The writer process's commit record: what a restarted writer may trust.

The record lives in the ``commits`` table (``broker.layout``), one row per
partition index, in shared memory the supervisor owns; it outlives a
writer process and is gone after a full broker stop (a new supervisor
creates the table zeroed).

Row layout (``broker.layout.commit_fields``)::

    generation                    int64   0: never committed here;
                                          else the current copy is
                                          generation % 2
    log_end_offset[2]             int64   one per copy
    applied_sequence[2][rings]    int64   one per copy and produce ring:
                                          the ring sequence of the last
                                          descriptor of that ring applied
                                          to this partition (-1: none)

What a commit promises, for its partition: every batch below
``log_end_offset`` is in the partition's segment files (the page cache at
least; a killed process does not lose the page cache), and every
descriptor of ring ``r`` naming this partition with a sequence at or below
``applied_sequence[r]`` has its answer (``base_offset``, ``error_code``)
written into the descriptor in the ring. So a restarted writer truncates
the log back to ``log_end_offset`` (bytes past it belong to a turn that did
not commit), and completes an applied descriptor from its fields instead
of appending it again.

Commit protocol (double buffer): write the copy that is not current, then
store ``generation + 1``. That one aligned 8-byte store is the commit
point. A writer killed at any instant leaves either the old generation
with a complete old copy or the new generation with a complete new copy.
The ``shm.table`` seqlock is not used for these rows: after a kill it would
say that a row is torn, not which values to trust. The order of the stores
is program order, which a killed process keeps on any CPU (every store
before the kill has executed); other processes never read these rows.

Imported by the writer process only. Not thread-safe (one writer thread).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from shm.table import Table, TableWriter

NOTHING_APPLIED = -1


class Committed(NamedTuple):
    """The current copy of one partition's commit record."""

    log_end_offset: int
    applied_sequence: npt.NDArray[np.int64]


class CommitRecord:
    """Read and write the commit record; ``applied`` is the working copy of
    every partition's applied sequences, loaded from the current copies."""

    def __init__(self, table: Table) -> None:
        # Claiming the table's writer side refuses a second live writer.
        self._claim: TableWriter = table.writer()
        rows = table.table
        self._generation: npt.NDArray[np.int64] = rows["generation"]
        self._log_end_offset: npt.NDArray[np.int64] = rows["log_end_offset"]
        self._applied: npt.NDArray[np.int64] = rows["applied_sequence"]
        self.rows = table.rows
        self.rings = int(self._applied.shape[2])

        # Working copy: -1 where nothing was committed.
        self.applied = np.full((self.rows, self.rings), NOTHING_APPLIED, np.int64)
        generations = self._generation.copy()
        committed = np.flatnonzero(generations)
        copies = generations[committed] % 2
        self.applied[committed] = self._applied[committed, copies]

    def committed(self, index: int) -> Committed | None:
        """The current copy for partition ``index``, None if never committed."""
        generation = int(self._generation[index])
        if generation == 0:
            return None
        copy = generation % 2
        return Committed(
            int(self._log_end_offset[index, copy]),
            self._applied[index, copy].copy(),
        )

    def commit(self, index: int, log_end_offset: int) -> None:
        """Record ``log_end_offset`` and the working ``applied[index]``."""
        generation = int(self._generation[index]) + 1
        copy = generation % 2
        self._log_end_offset[index, copy] = log_end_offset
        self._applied[index, copy] = self.applied[index]

        # The commit point: one aligned 8-byte store, after the copy.
        self._generation[index] = generation

    def reset(self, index: int) -> None:
        """Forget partition ``index`` (its topic was deleted or recreated)."""
        self._generation[index] = 0
        self.applied[index] = NOTHING_APPLIED

    def close(self) -> None:
        self._claim.close()
        del self._generation, self._log_end_offset, self._applied
