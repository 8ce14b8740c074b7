"""The sparse offset index and time index of one segment, memory-mapped with numpy.

Files, next to the segment's ``.log``:

``.index``: 8-byte entries, little-endian::

    +------------------------+------------------------+
    | relativeOffset int32   | position int32         |
    +------------------------+------------------------+

  ``relativeOffset`` is a batch's base offset minus the segment's base
  offset; ``position`` is that batch's byte position in the ``.log``. An
  entry is added before a batch when at least ``index_interval_bytes`` were
  appended since the previous entry, so the batch at position 0 never gets
  one and every valid entry has position > 0.

``.timeindex``: 16-byte entries, little-endian::

    +----------------------------+------------------------+-----------+
    | timestamp int64            | relativeOffset int32   | 4 padding |
    +----------------------------+------------------------+-----------+

  ``timestamp`` is the largest maxTimestamp of all batches of the segment up
  to and including the batch at ``relativeOffset``. Entries are added beside
  offset-index entries when that running maximum has grown, plus one final
  entry when the segment is sealed, so the last entry holds the segment's
  largest timestamp.

Both tables are sorted on every column: timestamps, relative offsets and
positions strictly increase. Unused slots hold the largest value of each
type (INT32_MAX / INT64_MAX), so a file with unused slots past its entries
stays sorted and ``numpy.searchsorted`` runs on the whole mapping without
knowing how many entries are valid (readers in other processes do exactly
that). A valid entry is never all zeros in the offset index (its position
is > 0), but a file of zeros is not sorted: unused slots are always
written, never left to a sparse file.

Why little-endian and 16-byte time entries: ``searchsorted`` on a mapped
column only avoids copying the table when the column is native byte order
and aligned (measured on 1.3 M entries: about 1 us per lookup, against
0.7-0.9 ms when a big-endian or 12-byte, misaligned column forces a copy).
These files are therefore not interchangeable with Kafka's index files; the
``.log`` files are.

Life cycle: the writer process starts a table with one page of unused
slots (GROW_FROM_BYTES) and appends through a shared mapping; a full
mapping grows the file, at least doubling, up to the table's capacity, by
writing unused slots past the end (one pwrite, so the new length never
shows unwritten slots) and mapping it again. A reader whose search runs past
its full mapping checks the file's length and maps it again. When the
segment is sealed (rolled or closed), the file is trimmed to its valid
entries by writing a new file and renaming it over the old one, never by
shrinking the file in place: another process that still maps the old file
would otherwise get SIGBUS on the pages cut off.

Crash safety: an index is a cache of the ``.log``; recovery checks it and
rebuilds it from the ``.log`` when it is inconsistent. Writes are not atomic
with the log; a table may hold entries past the durable end of the log after
a crash, which recovery drops.

Flush: ``flush`` fdatasyncs the file when an entry changed since the last
one (a shared mapping's dirty pages are the file's page cache); the writer
process runs it from its flusher thread too, never while the same table is
trimmed, grown from a sealed state or closed (``PartitionLog``'s sync lock).

Concurrency: one writer (the writer process), any number of read-only
mappers. The writer stores an entry's position (or relative offset) before
the sorted key, so a reader that sees the key also sees the rest (x86-64
keeps stores in order). Readers must still bound what they use by the
partition state table's published position.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from broker.logs import event

logger = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

OFFSET_ENTRY = np.dtype(
    [
        ("relative_offset", "<i4"),  # 0 relativeOffset
        ("position", "<i4"),  # 4 position
    ]
)
TIME_ENTRY = np.dtype(
    {
        "names": ["timestamp", "relative_offset"],
        "formats": ["<i8", "<i4"],
        "offsets": [0, 8],  # timestamp at 0, relativeOffset at 8, 12..15 padding
        "itemsize": 16,
    }
)

# A new table's file starts with one page of unused slots and at least
# doubles when full: 1,000 new segments write 8 MiB of index files, not the
# 6 GiB that preallocating a 1 GiB segment's tables (2 + 4 MiB) would.
GROW_FROM_BYTES = 4096

UNUSED_RELATIVE_OFFSET = INT32_MAX
UNUSED_POSITION = INT32_MAX
UNUSED_TIMESTAMP = INT64_MAX

Entries = npt.NDArray[Any]
# Values for one column of several new entries: a list or an int64 array.
Column = Sequence[int] | npt.NDArray[np.int64]


class _MappedIndex:
    """A preallocated, sorted table of fixed-size entries in one mapped file."""

    entry_type: ClassVar[np.dtype[Any]]
    key_field: ClassVar[str]
    key_unused: ClassVar[int]

    def __init__(self, path: Path, *, writable: bool, capacity: int = 0) -> None:
        """Map ``path``, creating it when ``writable``; a writable table
        takes up to ``capacity`` entries (0: its length, as for a sealed
        segment), its file growing as entries arrive (see ``_extend``). A
        read-only table maps the file at its current length and maps it
        again when a lookup runs past a full mapping that has grown.

        A writable file whose length is not a whole number of entries is
        emptied (it is junk); ``damaged`` tells the caller.
        """
        self.path = path
        self.writable = writable
        self.damaged = False
        flags = os.O_RDWR | os.O_CREAT if self.writable else os.O_RDONLY
        self._fd = os.open(path, flags, 0o644)
        self._map: mmap.mmap | None = None
        self._entries: Entries = np.empty(0, self.entry_type)
        self._columns: dict[str, Entries] = {}
        # Changes made (counted by the writer's main thread) and the count
        # the last flush covered (set by whichever thread flushed): a flush
        # skips the fdatasync when they agree. Each has one writer, so no
        # change is lost between a reader of one and the writer of the other.
        self._changes = 1 if writable else 0
        self._flushed_changes = 0

        length = os.fstat(self._fd).st_size
        item = self.entry_type.itemsize
        if self.writable and length % item:
            os.ftruncate(self._fd, 0)
            length = 0
            self.damaged = True
        self._map_entries(length // item)

        # Entries the table may hold; the file holds fewer until they come.
        self._limit = max(capacity, len(self._entries)) if writable else 0
        if self._limit > len(self._entries) == 0:
            self._extend(1)
        self.count = int(
            np.searchsorted(
                self._columns[self.key_field], self._key(self.key_unused), "left"
            )
        )

    # -- mapping --------------------------------------------------------------

    def _key(self, value: int) -> Any:
        return self.entry_type[self.key_field].type(value)

    def _map_entries(self, entries: int) -> None:
        self._release_map()
        if entries:
            access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
            length = entries * self.entry_type.itemsize
            self._map = mmap.mmap(self._fd, length, access=access)
            self._entries = np.frombuffer(self._map, self.entry_type, count=entries)
        # Column views made once: appends and lookups are on the hot path.
        names = self.entry_type.names or ()
        self._columns = {name: self._entries[name] for name in names}

    def _release_map(self) -> None:
        # The numpy arrays export the mapping's buffer; drop them first.
        self._columns = {}
        self._entries = np.empty(0, self.entry_type)
        if self._map is not None:
            mapping, self._map = self._map, None
            try:
                mapping.close()
            except BufferError:
                # A view of the old mapping is still held somewhere (a bug
                # there): it is unmapped when that view goes. The table
                # moves on to its new mapping either way, rather than being
                # left without one for every later lookup.
                event(
                    logger,
                    logging.WARNING,
                    "index.mapping_still_viewed",
                    path=self.path,
                    action="unmapped when the last view is dropped",
                )

    def _extend(self, needed: int) -> None:
        """Grow the file to hold at least ``needed`` entries (at least
        doubling, from GROW_FROM_BYTES, at most the table's limit) and map it.

        The new slots are written as unused entries with one pwrite past
        the end, which extends the file with its contents: a reader that
        sees the new length sees sorted slots, never zeros (an ftruncate
        first would show zeros until the fill). Only new slots are written,
        so a table costs what its entries need, not its limit.
        """
        old = len(self._entries)
        item = self.entry_type.itemsize
        entries = max(needed, 2 * old, GROW_FROM_BYTES // item)
        entries = min(entries, max(self._limit, needed))
        if entries <= old:
            return
        unused = self._unused_entry() * (entries - old)
        written = os.pwrite(self._fd, unused, old * item)
        if written != len(unused):
            raise OSError(errno.EIO, f"{self.path}: short write extending the index")
        self._map_entries(entries)
        self._changes += 1

    def _unused_entry(self) -> bytes:
        """The bytes of one unused entry (padding zero)."""
        entry = np.zeros(1, self.entry_type)
        self._fill_entry_unused(entry)
        return entry.tobytes()

    @classmethod
    def _fill_entry_unused(cls, entries: Entries) -> None:
        raise NotImplementedError

    def _fill_unused(self, start: int, stop: int) -> None:
        self._fill_entry_unused(self._entries[start:stop])

    @property
    def capacity(self) -> int:
        """Entries the table can hold: its limit when writable, the mapped
        entries when read-only."""
        return self._limit if self.writable else len(self._entries)

    @property
    def is_full(self) -> bool:
        return self.count >= self.capacity

    def _remap_if_grown(self) -> bool:
        """Read side: map the file again when the writer made it longer
        than the mapping, whose slots are then all in use. True when the
        mapping changed."""
        if self.writable:
            return False
        length = os.fstat(self._fd).st_size // self.entry_type.itemsize
        if length <= len(self._entries):
            return False
        self._map_entries(length)
        return True

    def entries(self) -> Entries:
        """The valid entries (a view; do not keep it past ``close``)."""
        return self._entries[: self.count]

    # -- writer side ----------------------------------------------------------

    def ensure_capacity(self, capacity: int) -> None:
        """Make room for appends again (a sealed segment became active);
        the file grows as entries arrive, starting as a new table does."""
        self._limit = max(self._limit, capacity)
        if self._limit > len(self._entries) == self.count:
            self._extend(self.count + 1)

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` entries; the rest become unused."""
        if count < self.count:
            self._fill_unused(count, self.count)
            self.count = count
            self._changes += 1

    def trim(self) -> None:
        """Shrink the file to its valid entries, by writing a new file and
        renaming it over this one (see the module docstring for why).

        Not synced here: the owner's next flush syncs the new file through
        the mapping, and the clean point's directory fsync makes the rename
        durable before anything relies on it."""
        self._limit = self.count
        if len(self._entries) == self.count:
            return
        data = self._entries[: self.count].tobytes()
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)

        self._release_map()
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._map_entries(self.count)
        self._changes += 1

    def flush(self) -> None:
        """Make the entries durable: fdatasync the file when anything changed
        since the last flush. The mapping is shared, so its dirty pages are
        the file's page cache and the file's fdatasync writes them (as an
        msync would, without msync's fsync of the timestamps). Any thread
        may call it while the owner appends; not while the owner trims,
        grows or closes the table (the caller's lock keeps those apart)."""
        changes = self._changes
        if changes == self._flushed_changes or self._fd < 0 or not self.writable:
            return
        os.fdatasync(self._fd)
        self._flushed_changes = changes

    def close(self) -> None:
        self._release_map()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _check_tail_unused(self) -> str | None:
        tail = self._entries[self.count :]
        if len(tail) and not bool(np.all(tail[self.key_field] == self.key_unused)):
            return "entries after the first unused slot"
        return None


class OffsetIndex(_MappedIndex):
    """``.index``: relative offset -> position of the batch starting there."""

    entry_type = OFFSET_ENTRY
    key_field = "relative_offset"
    key_unused = UNUSED_RELATIVE_OFFSET

    @classmethod
    def _fill_entry_unused(cls, entries: Entries) -> None:
        entries["relative_offset"] = UNUSED_RELATIVE_OFFSET
        entries["position"] = UNUSED_POSITION

    def append(self, relative_offset: int, position: int) -> None:
        """Add an entry; the caller keeps both columns increasing."""
        slot = self.count
        if slot >= len(self._entries):
            self._extend(slot + 1)
        self._columns["position"][slot] = position
        self._columns["relative_offset"][slot] = relative_offset
        self.count = slot + 1
        self._changes += 1

    def append_many(self, relative_offsets: Column, positions: Column) -> None:
        """Add entries in order (one slice store per column); the caller
        keeps both columns increasing and within int32. Every position is
        stored before any key, so a reader that sees a key sees its entry."""
        slot = self.count
        end = slot + len(relative_offsets)
        if end > len(self._entries):
            self._extend(end)
        self._columns["position"][slot:end] = positions
        self._columns["relative_offset"][slot:end] = relative_offsets
        self.count = end
        self._changes += 1

    def lookup(
        self, relative_offset: int, max_position: int = INT32_MAX - 1
    ) -> tuple[int, int] | None:
        """The entry with the largest relative offset <= ``relative_offset``
        whose position is <= ``max_position``, as (relative offset, position);
        None when there is none (start at position 0)."""
        if relative_offset < 0:
            return None
        target = np.int32(min(relative_offset, INT32_MAX - 1))
        bound = np.int32(min(max_position, INT32_MAX - 1))
        # At most two passes: again only when the search ran past a full
        # mapping of a file that has grown since (read side).
        for _ in range(2):
            # The methods, not np.searchsorted: the same search without its
            # Python-level dispatch (once per fetch). No view of the mapping
            # may outlive this pass: a remap closes it.
            by_offset = self._columns["relative_offset"].searchsorted(target, "right")
            by_position = self._columns["position"].searchsorted(bound, "right")
            found = int(min(by_offset, by_position))
            if found < len(self._entries) or not self._remap_if_grown():
                break
        slot = found - 1
        if slot < 0:
            return None
        entry = self._entries[slot]
        return int(entry["relative_offset"]), int(entry["position"])

    def count_below(self, position: int) -> int:
        """How many valid entries have a position < ``position``."""
        found = np.searchsorted(
            self._columns["position"][: self.count],
            np.int32(min(position, INT32_MAX)),
            "left",
        )
        return int(found)

    def check(self) -> str | None:
        """Full check (O(entries), in numpy) that the table is sorted and its
        unused tail untouched: None when consistent, else what is wrong.
        Whether entries point inside the log is for the caller to bound."""
        valid = self.entries()
        offsets = valid["relative_offset"]
        positions = valid["position"]
        if len(valid):
            if int(offsets[0]) <= 0 or int(positions[0]) <= 0:
                return "first entry not past the segment start"
            increasing = bool(np.all(np.diff(offsets) > 0)) and bool(
                np.all(np.diff(positions) > 0)
            )
            if not increasing:
                return "entries not strictly increasing"
        unused_positions = self._columns["position"][self.count :]
        if not bool(np.all(unused_positions == UNUSED_POSITION)):
            return "positions after the first unused slot"
        return self._check_tail_unused()

    def quick_check(self, log_size: int, relative_end: int) -> str | None:
        """O(1) check for sealed segments trusted by the clean point."""
        if self.count == 0:
            return None
        first = self._entries[0]
        last = self._entries[self.count - 1]
        if int(first["position"]) <= 0 or int(first["relative_offset"]) <= 0:
            return "first entry not past the segment start"
        if int(last["position"]) >= log_size:
            return (
                f"entry position {int(last['position'])} past the log size {log_size}"
            )
        if int(last["relative_offset"]) >= relative_end:
            return f"entry offset {int(last['relative_offset'])} past the segment end"
        return None


class TimeIndex(_MappedIndex):
    """``.timeindex``: running largest timestamp -> relative offset."""

    entry_type = TIME_ENTRY
    key_field = "timestamp"
    key_unused = UNUSED_TIMESTAMP

    @classmethod
    def _fill_entry_unused(cls, entries: Entries) -> None:
        entries["timestamp"] = UNUSED_TIMESTAMP
        entries["relative_offset"] = UNUSED_RELATIVE_OFFSET

    def append(self, timestamp: int, relative_offset: int) -> None:
        """Add an entry; the caller keeps both columns increasing."""
        slot = self.count
        if slot >= len(self._entries):
            self._extend(slot + 1)
        self._columns["relative_offset"][slot] = relative_offset
        self._columns["timestamp"][slot] = timestamp
        self.count = slot + 1
        self._changes += 1

    def append_many(self, timestamps: Column, relative_offsets: Column) -> None:
        """Add entries in order, relative offsets before any key (see
        :meth:`OffsetIndex.append_many`)."""
        slot = self.count
        end = slot + len(timestamps)
        if end > len(self._entries):
            self._extend(end)
        self._columns["relative_offset"][slot:end] = relative_offsets
        self._columns["timestamp"][slot:end] = timestamps
        self.count = end
        self._changes += 1

    def last(self) -> tuple[int, int] | None:
        """The last valid entry as (timestamp, relative offset)."""
        if self.count == 0:
            return None
        return self.entry(self.count - 1)

    def entry(self, slot: int) -> tuple[int, int]:
        entry = self._entries[slot]
        return int(entry["timestamp"]), int(entry["relative_offset"])

    def first_at_or_after(self, timestamp: int) -> int:
        """Slot of the first entry whose timestamp >= ``timestamp``; equals the
        number of valid entries when there is none."""
        target = np.int64(min(timestamp, INT64_MAX - 1))
        # At most two passes, as in OffsetIndex.lookup.
        for _ in range(2):
            found = int(np.searchsorted(self._columns["timestamp"], target, "left"))
            if found < len(self._entries) or not self._remap_if_grown():
                break
        return found

    def count_through(self, relative_offset: int) -> int:
        """How many valid entries have a relative offset <= ``relative_offset``."""
        found = np.searchsorted(
            self._columns["relative_offset"][: self.count],
            np.int32(max(min(relative_offset, INT32_MAX), -1)),
            "right",
        )
        return int(found)

    def check(self, relative_end: int) -> str | None:
        """Full check (O(entries), in numpy): None when consistent with a
        segment holding relative offsets below ``relative_end``."""
        valid = self.entries()
        offsets = valid["relative_offset"]
        timestamps = valid["timestamp"]
        if len(valid):
            if int(offsets[0]) < 0:
                return "negative relative offset"
            if int(offsets[-1]) >= relative_end:
                return f"entry offset {int(offsets[-1])} past the segment end"
            if not (
                bool(np.all(np.diff(offsets) > 0))
                and bool(np.all(np.diff(timestamps) > 0))
            ):
                return "entries not strictly increasing"
        return self._check_tail_unused()
