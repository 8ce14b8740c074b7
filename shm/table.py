"""A shared table of fixed rows: one writer process, many readers, seqlocks.

Rows are a numpy structured array indexed by a dense index (the partition
state table is indexed by partition index, the process table by process
slot). One process writes; any number read. Each row has a sequence
counter: the writer makes it odd, writes the row, makes it even again; a
reader copies the row between two reads of the counter and keeps the copy
only if both reads are equal and even, otherwise it retries a bounded number
of times. Readers never block the writer.

Layout of the block body (offsets relative to the body):

    0    control    int64[8]: rows, row_bytes, writer_pid
    64   sequences  int64[rows], one seqlock counter per row
    ...  rows       rows x the caller's dtype (C alignment), 64-aligned

Why it is consistent on x86-64 (see ``shm.ordering``): the writer's three
steps are stores that TSO keeps in program order; the reader's three steps
are loads that TSO keeps in program order; counters are aligned int64
stored and loaded in one instruction. A reader that sees the same even
value before and after its copy therefore copied no byte of a later write.

Crash behaviour: a writer killed in the middle of a row leaves that row's
counter odd; readers of that row then fail with ``TornRowError`` until the
next writer rewrites it (``TableWriter.torn_rows()`` lists them; any write
of the row makes it readable again). Other rows are unaffected.

Not safe: two writers (claiming the writer side while the recorded writer
process lives raises ``TableError``); reads of a row the writer rewrites
continuously for longer than the retry bound.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from shm.region import Region, RegionLayoutError, align_up, process_alive

KIND = "table"
LAYOUT_VERSION = 1

ROWS = 0
ROW_BYTES = 1
WRITER_PID = 2
CONTROL_SLOTS = 8

# Attempts before a read gives up, and how it waits between them: spin
# first, then yield the CPU (a writer sharing the core can finish its row),
# then sleep with a growing pause. A row write takes microseconds, but on a
# shared virtual machine the writer's CPU can be stolen for milliseconds; a
# bound of 2000 yields (a few ms) failed under that load, so the budget is
# about a quarter second in all before a row is declared torn.
DEFAULT_READ_ATTEMPTS = 500
SPIN_ATTEMPTS = 16
YIELD_ATTEMPTS = 64
BACKOFF_STEP = 0.00001
MAX_BACKOFF = 0.0005


class TableError(Exception):
    """A table was misused (second writer, bad index or values)."""


class TornRowError(TableError):
    """A row could not be read consistently within the retry bound."""

    def __init__(self, table: str, index: int, attempts: int) -> None:
        super().__init__(
            f"table {table!r} row {index}: no consistent copy after {attempts}"
            " attempts (a writer died mid-write, or rewrites it without pause)"
        )
        self.table = table
        self.index = index
        self.attempts = attempts


def _layout(rows: int) -> tuple[int, int]:
    sequences_offset = align_up(CONTROL_SLOTS * 8)
    rows_offset = align_up(sequences_offset + rows * 8)
    return sequences_offset, rows_offset


def _row_dtype(fields: npt.DTypeLike) -> np.dtype[np.void]:
    dtype = np.dtype(fields)
    if dtype.names is None:
        raise ValueError(f"table rows must be a structured dtype, got {dtype}")
    return np.dtype(
        {"names": list(dtype.names), "formats": [dtype[n] for n in dtype.names]},
        align=True,
    )


def _schema(rows: int, dtype: np.dtype[np.void]) -> dict[str, Any]:
    return {
        "rows": rows,
        "row": json.loads(json.dumps(dtype.descr)),
        "row_bytes": dtype.itemsize,
    }


class Table:
    """The shared block of one table; read from any process, write through
    ``writer()`` in exactly one."""

    def __init__(self, region: Region, dtype: np.dtype[np.void]) -> None:
        self.region = region
        self.name = region.name
        self.dtype = dtype
        self.rows = int(region.schema["rows"])
        self.read_attempts = DEFAULT_READ_ATTEMPTS
        self.retries = 0
        self._writer: TableWriter | None = None

        sequences_offset, rows_offset = _layout(self.rows)
        body = region.body
        self.control: npt.NDArray[np.int64] = np.ndarray(
            (CONTROL_SLOTS,), dtype=np.int64, buffer=body, offset=0
        )
        self.sequences: npt.NDArray[np.int64] = np.ndarray(
            (self.rows,), dtype=np.int64, buffer=body, offset=sequences_offset
        )
        self.table: npt.NDArray[np.void] = np.ndarray(
            (self.rows,), dtype=dtype, buffer=body, offset=rows_offset
        )

    @classmethod
    def create(cls, name: str, fields: npt.DTypeLike, rows: int) -> Table:
        """Create a zero-filled table of ``rows`` rows."""
        if not 1 <= rows <= 1 << 31:
            raise ValueError(f"table {name!r}: rows {rows} must be 1..2**31")
        dtype = _row_dtype(fields)
        _, rows_offset = _layout(rows)
        region = Region.create(
            name,
            KIND,
            LAYOUT_VERSION,
            _schema(rows, dtype),
            rows_offset + rows * dtype.itemsize,
        )
        table = cls(region, dtype)
        table.control[ROWS] = rows
        table.control[ROW_BYTES] = dtype.itemsize
        region.mark_ready()
        return table

    @classmethod
    def attach(cls, name: str, fields: npt.DTypeLike) -> Table:
        """Attach, checking the row fields match ``fields``."""
        dtype = _row_dtype(fields)
        region = Region.attach(name, KIND, LAYOUT_VERSION)
        try:
            rows = region.schema.get("rows")
            if not isinstance(rows, int) or rows < 1:
                raise RegionLayoutError(name, f"table rows {rows!r} is invalid")
            region.expect("row", _schema(rows, dtype)["row"])
            _, rows_offset = _layout(rows)
            if rows_offset + rows * dtype.itemsize > len(region.body):
                raise RegionLayoutError(name, "table sizes exceed the block size")
            return cls(region, dtype)
        except BaseException:
            region.close()
            raise

    @property
    def field_names(self) -> tuple[str, ...]:
        assert self.dtype.names is not None
        return self.dtype.names

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.rows:
            raise IndexError(
                f"table {self.name!r} has {self.rows} rows, no row {index}"
            )

    # -- reading ------------------------------------------------------------

    def read_row(self, index: int) -> tuple[Any, ...]:
        """A consistent copy of row ``index`` as a tuple in field order.

        Raises ``TornRowError`` after ``read_attempts`` failed attempts.
        """
        self._check_index(index)
        sequences = self.sequences
        table = self.table
        for attempt in range(self.read_attempts):
            before = sequences.item(index)
            if not before & 1:
                row = cast("tuple[Any, ...]", table.item(index))
                if sequences.item(index) == before:
                    return row
            self.retries += 1
            if attempt >= YIELD_ATTEMPTS:
                time.sleep(min(MAX_BACKOFF, BACKOFF_STEP * (attempt - YIELD_ATTEMPTS)))
            elif attempt >= SPIN_ATTEMPTS:
                os.sched_yield()
        raise TornRowError(self.name, index, self.read_attempts)

    def read_rows(
        self, indices: npt.NDArray[np.integer[Any]] | Sequence[int]
    ) -> npt.NDArray[np.void]:
        """Consistent copies of several rows (each row consistent on its
        own, not a snapshot of the table at one instant)."""
        where = np.asarray(indices, dtype=np.intp)
        if where.size and (int(where.min()) < 0 or int(where.max()) >= self.rows):
            raise IndexError(
                f"table {self.name!r} has {self.rows} rows; indices out of range"
            )

        before = self.sequences[where]
        copies = self.table[where]
        after = self.sequences[where]
        unsettled = np.flatnonzero((before != after) | ((before & 1) != 0))

        # Rows caught mid-write are re-read one by one (rare).
        for position in unsettled.tolist():
            copies[position] = self.read_row(int(where[position]))
        return copies

    def snapshot(self) -> npt.NDArray[np.void]:
        """A consistent copy of every row."""
        return self.read_rows(np.arange(self.rows))

    # -- writing ------------------------------------------------------------

    def writer(self) -> TableWriter:
        """Take the single writer side of this table."""
        if self._writer is not None:
            raise TableError(f"table {self.name!r} already has a writer here")
        self._writer = TableWriter(self)
        return self._writer

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.region.closed:
            return
        for attribute in ("control", "sequences", "table"):
            self.__dict__.pop(attribute, None)
        self.region.close()

    def unlink(self) -> None:
        self.region.unlink()

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TableWriter:
    """The writing side: every write goes through the row's seqlock."""

    def __init__(self, table: Table) -> None:
        control = table.control
        holder = control.item(WRITER_PID)
        if holder != os.getpid() and process_alive(holder):
            raise TableError(
                f"table {table.name!r} already has a writer in live process {holder}"
            )
        control[WRITER_PID] = os.getpid()
        self.table = table
        self._sequences = table.sequences
        self._rows = table.table
        self._columns = {name: table.table[name] for name in table.field_names}

    def torn_rows(self) -> npt.NDArray[np.intp]:
        """Rows a killed writer left mid-write; rewrite them to repair."""
        return np.flatnonzero(self._sequences & 1)

    def write_row(self, index: int, values: tuple[Any, ...] | np.void) -> None:
        """Replace row ``index`` with ``values`` (a tuple in field order)."""
        self.table._check_index(index)
        sequences = self._sequences

        # Odd while writing; a row left odd by a killed writer stays odd
        # until this write completes.
        writing = sequences.item(index) | 1
        sequences[index] = writing
        self._rows[index] = values
        sequences[index] = writing + 1

    def update(self, index: int, **fields: Any) -> None:
        """Change some fields of row ``index``, keeping the others."""
        self.table._check_index(index)
        columns = self._columns
        unknown = fields.keys() - columns.keys()
        if unknown:
            raise TableError(
                f"table {self.table.name!r} has no fields {sorted(unknown)}"
            )
        sequences = self._sequences

        writing = sequences.item(index) | 1
        sequences[index] = writing
        for name, value in fields.items():
            columns[name][index] = value
        sequences[index] = writing + 1

    def write_rows(
        self,
        indices: npt.NDArray[np.integer[Any]] | Sequence[int],
        values: npt.NDArray[np.void],
    ) -> None:
        """Replace several rows at once (distinct indices), vectorised."""
        where = np.asarray(indices, dtype=np.intp)
        if where.size and (int(where.min()) < 0 or int(where.max()) >= self.table.rows):
            raise IndexError(f"table {self.table.name!r}: indices out of range")
        sequences = self._sequences

        writing = sequences[where] | 1
        sequences[where] = writing
        self._rows[where] = values
        sequences[where] = writing + 1

    def close(self) -> None:
        """Give up the writer side (the table stays attached)."""
        table = self.table
        if table._writer is not self:
            return
        if table.control.item(WRITER_PID) == os.getpid():
            table.control[WRITER_PID] = 0
        table._writer = None
        del self._sequences, self._rows, self._columns
