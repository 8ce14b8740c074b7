"""One-sender, one-receiver ring of descriptors and payload bytes in one block.

The supervisor creates a ring; exactly one process attaches as its sender and
one as its receiver (net process -> writer process for a produce ring, writer
-> net process for a completion ring). The sender copies a payload once into
the data area, fills its descriptor and publishes by storing ``head``; the
receiver gets every published descriptor as one numpy view, reads or rewrites
the payloads in place, and releases them by storing ``tail``.

Two ways to send: ``reserve``/``reserve_batch`` hand out the rows and bytes
to fill with numpy (best for many descriptors at once); ``put`` copies one
payload and packs one whole descriptor with a single ``struct`` call (best
for a few descriptors per publish: no numpy views, no field lookups). Either
way one ``publish`` makes everything reserved so far visible with one
``head`` store.

Layout of the block body (offsets relative to the body, all multiples of 64):

    0    control    int64[24], three cache lines so each side writes its own:
                      line 0, sender:   head, data_head, sender_waiting,
                                        sender_pid, notifies, waits,
                                        refusals, backstop wake-ups
                      line 1, receiver: tail, data_tail, receiver_waiting,
                                        receiver_pid, notifies, waits,
                                        backstop wake-ups, (unused)
                      line 2, fixed:    capacity, data_bytes, descriptor size
    192  descriptors  capacity x descriptor dtype: the ring's fields
                        data_position  int64  byte position in the data area
                        data_length    int64  payload length in bytes
                        data_end       int64  cumulative data_head after it
                      then the caller's fields (C alignment)
    ...  data area    data_bytes bytes, wrap-around

Counters and invariants:
- ``head`` and ``tail`` count descriptors since creation and never wrap
  (2**63); descriptor ``n`` lives in slot ``n % capacity``;
  ``tail <= head <= tail + capacity``.
- ``data_head``/``data_tail`` count bytes of the data area consumed and
  freed since creation. A payload is always contiguous: if it does not fit
  before the end of the data area the sender skips to position 0 and the
  skipped bytes count as consumed; they are freed with the descriptor whose
  ``data_end`` includes them.
- The sender owns line 0 and the slots and bytes between ``tail``/``data_tail``
  and its own unpublished cursor; the receiver owns line 1 and everything
  between ``tail`` and ``head``. Each side stores only its own counters.

Publishing and consuming rely on x86-64 ordering (see ``shm.ordering``):
payload and descriptor stores happen before the ``head`` store, and the
receiver's descriptor and payload loads happen after its ``head`` load, so a
published descriptor is always complete. Other architectures are refused
when the block is created or attached. Payload bytes and descriptor rows
are written with memcpy-like stores (memoryview slices, numpy, ``struct``
packing); none needs to be atomic, because nothing reads them before the
``head`` store that follows them. The shared counters and flags (head,
tail, data_head, data_tail, waiting flags) and the receiver's read of
``data_end`` go through ``Ring.words``, an int64 memoryview of the control
slots and descriptors, whose element loads and stores are single aligned
8-byte moves (``shm.ordering`` point 1).

Wake-ups: a side about to sleep stores its waiting flag (a wait number,
unique over the ring's life), executes a full fence, then re-checks (head for
the receiver, free space for the sender); the other side stores head (or
tail), executes a full fence, then loads the flag and writes the eventfd
only if it is set. With a fence on both sides at
least one of them sees the other's store, so a sleeper is always woken; a
busy pipeline never sets the flag and makes no syscall per batch. Sleeps are
bounded slices (``recheck_interval``) and end with a re-check, so a wake-up
lost any other way costs at most one slice; those endings are counted in
the ``*_backstop_wakeups`` statistics. A waiter is notified once per wait
number, so a sender publishing many batches to a sleeping receiver writes
the eventfd once. Waiters do not spin before sleeping: spinning 20-500 us was measured
and lowered throughput on the 2-vCPU test machine, where a spinning process
takes CPU from the peer it waits for.

Backpressure: ``reserve`` returns None when the descriptors or bytes do not
fit; nothing is dropped or queued. The sender waits with
``wait_for_space`` or arms and watches ``space_ready`` in its event loop.

Crash contract:
- Receiver restart: a new receiver starts at the stored ``tail``. Published
  descriptors that were not released are delivered again (at-least-once for
  unreleased descriptors); released ones never are. The writer process makes
  redelivery harmless with its own commit record (the partition state
  table). ``tail`` is stored before ``data_tail``, so a receiver killed
  between the two stores leaves bytes accounted as used (never as free)
  until the next release.
- Sender restart: a new sender starts at the stored ``head``; reservations
  its predecessor never published are overwritten.
- One live process per side: claiming a side whose recorded pid is still
  running raises ``RingError``.

Not safe: descriptor views from ``receive`` and payload memoryviews are
valid only until they are released (the sender reuses the slots and bytes);
a reservation is valid only until ``publish``/``discard``. Neither side is
thread-safe; use one thread per side.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shm.notify import Notifier
from shm.ordering import full_fence
from shm.region import (
    CACHE_LINE,
    Region,
    RegionError,
    RegionLayoutError,
    align_up,
    process_alive,
)

KIND = "ring"
LAYOUT_VERSION = 1

# Control array, line 0: written by the sender.
HEAD = 0
DATA_HEAD = 1
SENDER_WAITING = 2
SENDER_PID = 3
SENDER_NOTIFIES = 4
SENDER_WAITS = 5
SENDER_REFUSALS = 6
SENDER_BACKSTOP_WAKEUPS = 7
# Line 1: written by the receiver.
TAIL = 8
DATA_TAIL = 9
RECEIVER_WAITING = 10
RECEIVER_PID = 11
RECEIVER_NOTIFIES = 12
RECEIVER_WAITS = 13
RECEIVER_BACKSTOP_WAKEUPS = 14
# Line 2: fixed at creation.
CAPACITY = 16
DATA_BYTES = 17
DESCRIPTOR_BYTES = 18
CONTROL_SLOTS = 24

RING_FIELDS = (
    ("data_position", np.int64),
    ("data_length", np.int64),
    ("data_end", np.int64),
)
RING_FIELD_NAMES = frozenset(name for name, _ in RING_FIELDS)

# What ``RingSender.put`` copies from (any C-contiguous buffer works).
Payload = bytes | bytearray | memoryview

# A waiter re-checks at least this often even without a wake-up: the bound on
# the cost of a lost wake-up. 50 ms is a guess that keeps an idle process at
# 20 cheap checks a second; no lost wake-up has been observed with the fences.
DEFAULT_RECHECK_INTERVAL = 0.05

# Largest data area accepted, far above any sane setting (4 GiB is the
# broker's maximum); keeps byte counters far from int64 overflow.
MAX_DATA_BYTES = 1 << 40


class RingError(Exception):
    """A ring was misused (second sender or receiver, bad size or count)."""


def descriptor_dtype(fields: npt.DTypeLike) -> np.dtype[np.void]:
    """The full descriptor dtype: the ring's fields, then the caller's.

    ``fields`` is a structured dtype (or its list form) without the names
    ``data_position``, ``data_length`` and ``data_end``. The result uses C
    alignment so every field is naturally aligned.
    """
    caller = np.dtype(fields)
    if caller.names is None:
        raise ValueError(f"descriptor fields must be a structured dtype, got {caller}")
    clashes = RING_FIELD_NAMES.intersection(caller.names)
    if clashes:
        raise ValueError(
            f"descriptor fields {sorted(clashes)} are reserved for the ring's"
            " data position and length"
        )

    names = [name for name, _ in RING_FIELDS] + list(caller.names)
    formats = [np.dtype(kind) for _, kind in RING_FIELDS] + [
        caller.fields[name][0]  # type: ignore[index]
        for name in caller.names
    ]
    return np.dtype({"names": names, "formats": formats}, align=True)


# The ring's own fields as bytes: they open every descriptor (C alignment puts
# the three int64 at offsets 0, 8 and 16).
RING_FIELDS_STRUCT = struct.Struct("<qqq")

# struct codes for the scalar kinds ``RingSender.put`` can write, by numpy
# kind and size; '<' struct formats use these standard sizes.
_STRUCT_CODES = {
    ("i", 1): "b",
    ("i", 2): "h",
    ("i", 4): "i",
    ("i", 8): "q",
    ("u", 1): "B",
    ("u", 2): "H",
    ("u", 4): "I",
    ("u", 8): "Q",
    ("f", 2): "e",
    ("f", 4): "f",
    ("f", 8): "d",
    ("b", 1): "?",
}


def descriptor_struct(dtype: np.dtype[np.void]) -> struct.Struct | str:
    """A ``struct.Struct`` that packs one whole descriptor of ``dtype`` (the
    ring's fields, then the caller's, padding included), or the reason
    there is none (a field that is not a little-endian scalar or bytes)."""
    fields = sorted(
        (offset, name, kind)
        for name, (kind, offset, *_) in dtype.fields.items()  # type: ignore[union-attr]
    )
    codes = ["<"]
    cursor = 0
    for offset, name, kind in fields:
        if kind.byteorder == ">" or kind.shape or kind.names is not None:
            return f"field {name!r} has type {kind}, which put() cannot write"
        if kind.kind == "S":
            code = f"{kind.itemsize}s"
        else:
            found = _STRUCT_CODES.get((kind.kind, kind.itemsize))
            if found is None:
                return f"field {name!r} has type {kind}, which put() cannot write"
            code = found
        codes.append("x" * (offset - cursor) + code)
        cursor = offset + kind.itemsize
    codes.append("x" * (dtype.itemsize - cursor))
    packer = struct.Struct("".join(codes))
    assert packer.size == dtype.itemsize
    return packer


def _schema(dtype: np.dtype[np.void], capacity: int, data_bytes: int) -> dict[str, Any]:
    # JSON turns descr tuples into lists; round-trip so the comparison on
    # attach compares like with like.
    descr = json.loads(json.dumps(dtype.descr))
    return {
        "capacity": capacity,
        "data_bytes": data_bytes,
        "descriptor": descr,
        "descriptor_bytes": dtype.itemsize,
    }


def _layout(
    dtype: np.dtype[np.void], capacity: int, data_bytes: int
) -> tuple[int, int]:
    """Body offsets of the descriptor array and of the data area."""
    descriptors_offset = align_up(CONTROL_SLOTS * 8)
    data_offset = align_up(descriptors_offset + capacity * dtype.itemsize)
    return descriptors_offset, data_offset


@dataclass(frozen=True)
class RingStatistics:
    """A snapshot of one ring, readable from any process."""

    name: str
    capacity: int
    data_bytes: int
    head: int
    tail: int
    data_head: int
    data_tail: int
    sender_pid: int
    receiver_pid: int
    sender_waiting: bool
    receiver_waiting: bool
    sender_notifies: int
    receiver_notifies: int
    sender_waits: int
    receiver_waits: int
    sender_refusals: int
    sender_backstop_wakeups: int
    receiver_backstop_wakeups: int

    @property
    def descriptors_used(self) -> int:
        return self.head - self.tail

    @property
    def bytes_used(self) -> int:
        # Can read above data_bytes for a moment after a skip on an empty ring.
        return min(self.data_head - self.data_tail, self.data_bytes)


class Ring:
    """The shared block of one ring. ``create`` (supervisor) or ``attach``
    (child), then take one side with ``sender()`` or ``receiver()``."""

    def __init__(self, region: Region, dtype: np.dtype[np.void]) -> None:
        self.region = region
        self.name = region.name
        self.dtype = dtype
        self.capacity = int(region.schema["capacity"])
        self.data_bytes = int(region.schema["data_bytes"])

        descriptors_offset, data_offset = _layout(dtype, self.capacity, self.data_bytes)
        body = region.body
        self.control: npt.NDArray[np.int64] = np.ndarray(
            (CONTROL_SLOTS,), dtype=np.int64, buffer=body, offset=0
        )
        self.descriptors: npt.NDArray[np.void] = np.ndarray(
            (self.capacity,), dtype=dtype, buffer=body, offset=descriptors_offset
        )
        self.data: memoryview = body[data_offset : data_offset + self.data_bytes]
        # The descriptor array as bytes, for struct writes of whole rows.
        self.descriptor_bytes: memoryview = body[descriptors_offset:data_offset]
        # Control slots and descriptors as int64 words: the per-batch path
        # loads and stores through this view (cheaper than numpy scalars;
        # see ``shm.ordering`` for why each access is one 8-byte move).
        self.words: memoryview = body[:data_offset].cast("q")
        self.descriptors_word = descriptors_offset // 8
        self.descriptor_words = dtype.itemsize // 8
        self._sides: list[_Side] = []

        assert self.control.ctypes.data % CACHE_LINE == 0
        assert dtype.itemsize % 8 == 0
        assert self.descriptors.ctypes.data % CACHE_LINE == 0

    @classmethod
    def create(
        cls,
        name: str,
        descriptor_fields: npt.DTypeLike,
        capacity: int,
        data_bytes: int,
        prefault: bool = False,
    ) -> Ring:
        """Create a ring of ``capacity`` descriptors and ``data_bytes`` of
        payload space (0 for a descriptor-only ring). ``prefault`` touches
        every page now (see ``Region.prefault``): slower start-up, no
        first-touch stalls on the first pass through the data area."""
        if not 1 <= capacity <= 1 << 31:
            raise ValueError(f"ring {name!r}: capacity {capacity} must be 1..2**31")
        if not 0 <= data_bytes <= MAX_DATA_BYTES:
            raise ValueError(
                f"ring {name!r}: data_bytes {data_bytes} must be 0..{MAX_DATA_BYTES}"
            )

        dtype = descriptor_dtype(descriptor_fields)
        _, data_offset = _layout(dtype, capacity, data_bytes)
        region = Region.create(
            name,
            KIND,
            LAYOUT_VERSION,
            _schema(dtype, capacity, data_bytes),
            data_offset + data_bytes,
        )
        ring = cls(region, dtype)
        ring.control[CAPACITY] = capacity
        ring.control[DATA_BYTES] = data_bytes
        ring.control[DESCRIPTOR_BYTES] = dtype.itemsize
        if prefault:
            region.prefault()
        region.mark_ready()
        return ring

    @classmethod
    def attach(cls, name: str, descriptor_fields: npt.DTypeLike) -> Ring:
        """Attach to a ring, checking its descriptor fields match
        ``descriptor_fields``."""
        dtype = descriptor_dtype(descriptor_fields)
        region = Region.attach(name, KIND, LAYOUT_VERSION)
        try:
            schema = region.schema
            capacity, data_bytes = schema.get("capacity"), schema.get("data_bytes")
            if not isinstance(capacity, int) or not isinstance(data_bytes, int):
                raise RegionLayoutError(name, "ring schema lacks capacity/data_bytes")
            region.expect(
                "descriptor", _schema(dtype, capacity, data_bytes)["descriptor"]
            )
            _, data_offset = _layout(dtype, capacity, data_bytes)
            if region.body_offset + data_offset + data_bytes > region.total_bytes:
                raise RegionLayoutError(name, "ring sizes exceed the block size")
            return cls(region, dtype)
        except BaseException:
            region.close()
            raise

    # -- sides ------------------------------------------------------------

    def sender(
        self,
        data_ready: Notifier,
        space_ready: Notifier,
        recheck_interval: float = DEFAULT_RECHECK_INTERVAL,
    ) -> RingSender:
        """Take the sending side. ``data_ready`` wakes the receiver;
        ``space_ready`` is what this side waits on when the ring is full."""
        return RingSender(self, data_ready, space_ready, recheck_interval)

    def receiver(
        self,
        data_ready: Notifier,
        space_ready: Notifier,
        recheck_interval: float = DEFAULT_RECHECK_INTERVAL,
    ) -> RingReceiver:
        """Take the receiving side. ``data_ready`` is what this side waits
        on; ``space_ready`` wakes a sender waiting for space."""
        return RingReceiver(self, data_ready, space_ready, recheck_interval)

    def data_array(self) -> npt.NDArray[np.uint8]:
        """The data area as a writable uint8 array (vectorised payload edits)."""
        return np.frombuffer(self.data, dtype=np.uint8)

    def statistics(self) -> RingStatistics:
        values = self.control.tolist()
        return RingStatistics(
            name=self.name,
            capacity=self.capacity,
            data_bytes=self.data_bytes,
            head=values[HEAD],
            tail=values[TAIL],
            data_head=values[DATA_HEAD],
            data_tail=values[DATA_TAIL],
            sender_pid=values[SENDER_PID],
            receiver_pid=values[RECEIVER_PID],
            sender_waiting=bool(values[SENDER_WAITING]),
            receiver_waiting=bool(values[RECEIVER_WAITING]),
            sender_notifies=values[SENDER_NOTIFIES],
            receiver_notifies=values[RECEIVER_NOTIFIES],
            sender_waits=values[SENDER_WAITS],
            receiver_waits=values[RECEIVER_WAITS],
            sender_refusals=values[SENDER_REFUSALS],
            sender_backstop_wakeups=values[SENDER_BACKSTOP_WAKEUPS],
            receiver_backstop_wakeups=values[RECEIVER_BACKSTOP_WAKEUPS],
        )

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Give up both sides' views and unmap. Raises ``RegionError`` while
        the caller still holds descriptor arrays or payload views."""
        for side in self._sides:
            side._detach()
        self._sides.clear()
        if self.region.closed:
            return

        # The region can unmap only once no array or view refers to it.
        self.__dict__.pop("control", None)
        self.__dict__.pop("descriptors", None)
        try:
            self.words.release()
            self.descriptor_bytes.release()
            self.data.release()
        except BufferError:
            raise RegionError(
                self.name,
                "cannot be closed: payload memoryviews or data_array() views"
                " are still alive",
            ) from None
        self.region.close()

    def unlink(self) -> None:
        """Remove the ring's name (the supervisor, at shutdown)."""
        self.region.unlink()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Side:
    """What the sender and the receiver share: claiming a side, waiting."""

    _pid_slot: int
    _waiting_slot: int
    _waits_slot: int
    _backstop_slot: int
    _peer_waiting_slot: int
    _notifies_slot: int
    _role: str
    _peer_notifier: Notifier

    def __init__(self, ring: Ring, recheck_interval: float) -> None:
        if recheck_interval <= 0:
            raise ValueError(f"recheck_interval {recheck_interval} must be > 0")
        if any(type(side) is type(self) for side in ring._sides):
            raise RingError(f"ring {ring.name!r} already has a {self._role} here")
        control = ring.words
        holder = control[self._pid_slot]
        if holder != os.getpid() and process_alive(holder):
            raise RingError(
                f"ring {ring.name!r} already has a {self._role} in live process"
                f" {holder}; a ring has exactly one {self._role}"
            )

        # A predecessor killed while asleep may have left its flag set.
        control[self._waiting_slot] = 0
        control[self._pid_slot] = os.getpid()
        self._ring = ring
        self._control = control
        self._capacity = ring.capacity
        self._data_bytes = ring.data_bytes
        self._descriptors = ring.descriptors
        self._data = ring.data
        self._recheck_interval = recheck_interval
        # The peer's wait number when it was last notified.
        self._notified_wait = -1
        ring._sides.append(self)

    def _detach(self) -> None:
        control = self._control
        if control[self._pid_slot] == os.getpid():
            control[self._pid_slot] = 0
        for attribute in ("_control", "_descriptors", "_data"):
            delattr(self, attribute)
        self._detach_views()

    def _detach_views(self) -> None:
        pass

    def _announce_wait(self) -> None:
        """Store a new wait number as this side's waiting flag, then fence.

        The flag holds a number unique over the ring's life (the side's wait
        counter, kept in the block across restarts), not just 1, so the
        other side can tell a new wait from one it has already notified.
        """
        control = self._control
        wait_number = control[self._waits_slot] + 1
        control[self._waits_slot] = wait_number
        control[self._waiting_slot] = wait_number
        full_fence()

    def _wait(
        self, ready: Callable[[], bool], notifier: Notifier, timeout: float
    ) -> bool:
        """Sleep until ``ready()`` or ``timeout``; see the module docstring."""
        if ready():
            return True

        control = self._control
        deadline = time.monotonic() + timeout
        try:
            while True:
                # Flag store, fence, then the re-check load (Dekker). The
                # drain discards wake-ups meant for an earlier wait.
                self._announce_wait()
                notifier.drain()
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False

                woken = notifier.wait(min(remaining, self._recheck_interval))
                if not woken and ready():
                    # Progress without a wake-up, unless it landed just now.
                    if not notifier.drain():
                        control[self._backstop_slot] += 1
                    return True
        finally:
            control[self._waiting_slot] = 0

    def _wake_peer(self) -> None:
        """After storing head (or tail): fence, then load the peer's waiting
        flag and notify it if it waits and was not notified for this wait.

        One notification per wait number is enough: the eventfd keeps it
        until the waiter drains, and the waiter drains only right before
        its re-check, so that notification either lets the re-check see
        this side's store or interrupts the poll. A waiter that must wait
        again stores a new number first.
        """
        control = self._control
        full_fence()
        wait_number = control[self._peer_waiting_slot]
        if wait_number and wait_number != self._notified_wait:
            self._notified_wait = wait_number
            self._peer_notifier.notify()
            control[self._notifies_slot] += 1

    def _arm(self, ready: Callable[[], bool]) -> bool:
        """Set the waiting flag for an event loop; True (and unset) if
        ``ready()`` already holds, so the caller need not wait.

        Event-loop contract (the notifier may be shared with other rings or
        other wake-ups): after every drain of the notifier, re-check this
        ring and call ``arm()`` again before waiting; when ``arm()`` returns
        True, handle the ring and arm again. Each arm takes a new wait
        number and the other side notifies each number at most once, so a
        drained notification is never repeated for an old arm.
        """
        self._announce_wait()
        if ready():
            self._control[self._waiting_slot] = 0
            return True
        return False

    def disarm(self) -> None:
        """Clear the waiting flag after an event-loop wake-up."""
        self._control[self._waiting_slot] = 0


class Reservation:
    """Space reserved by ``RingSender.reserve*``: fill, then ``publish``.

    ``data`` is the writable, contiguous payload region (every payload of the
    reservation, back to back); ``descriptors`` the reserved descriptor rows
    with the ring's fields already set. Valid until publish or discard.
    """

    __slots__ = ("data", "descriptors", "start")

    def __init__(
        self, data: memoryview, descriptors: npt.NDArray[np.void], start: int
    ) -> None:
        self.data = data
        self.descriptors = descriptors
        self.start = start

    def payload(self, index: int) -> memoryview:
        """The payload region of descriptor ``index`` of this reservation."""
        row = self.descriptors[index]
        offset = int(row["data_position"]) - self.start
        return self.data[offset : offset + int(row["data_length"])]


class RingSender(_Side):
    """The sending side: reserve, fill in place, publish."""

    _pid_slot = SENDER_PID
    _waiting_slot = SENDER_WAITING
    _waits_slot = SENDER_WAITS
    _backstop_slot = SENDER_BACKSTOP_WAKEUPS
    _peer_waiting_slot = RECEIVER_WAITING
    _notifies_slot = SENDER_NOTIFIES
    _role = "sender"

    def __init__(
        self,
        ring: Ring,
        data_ready: Notifier,
        space_ready: Notifier,
        recheck_interval: float,
    ) -> None:
        super().__init__(ring, recheck_interval)
        control = self._control
        self.data_ready = data_ready
        self.space_ready = space_ready
        self._peer_notifier = data_ready

        # Local cursors run ahead of the published ones until publish().
        self._published = self._head = control[HEAD]
        self._published_data_head = self._data_head = control[DATA_HEAD]
        self._tail = control[TAIL]
        self._data_tail = control[DATA_TAIL]
        self._rows = ring.descriptor_bytes
        self._row_bytes = ring.dtype.itemsize
        self._row_struct = descriptor_struct(ring.dtype)
        self._field_names = ring.dtype.names[len(RING_FIELDS) :]  # type: ignore[index]
        # Reservations whose rows wrap past the end of the descriptor array
        # are filled in a staging array and copied in at publish.
        self._staged: list[tuple[int, npt.NDArray[np.void]]] = []

    def _detach_views(self) -> None:
        del self._rows
        self._staged.clear()

    @property
    def unpublished(self) -> int:
        """Descriptors reserved but not yet published."""
        return self._head - self._published

    # -- space --------------------------------------------------------------

    def _slots_free(self, count: int) -> bool:
        if self._head + count - self._tail <= self._capacity:
            return True
        self._tail = self._control[TAIL]
        return self._head + count - self._tail <= self._capacity

    def _check_size(self, nbytes: int) -> None:
        """Raise unless ``nbytes`` of payload can ever fit this ring."""
        if 0 <= nbytes <= self._data_bytes:
            return
        if self._data_bytes == 0:
            raise RingError(
                f"ring {self._ring.name!r} is descriptor-only; cannot carry"
                f" a {nbytes}-byte payload"
            )
        raise RingError(
            f"payload of {nbytes} bytes can never fit ring {self._ring.name!r}"
            f" (data area {self._data_bytes} bytes)"
        )

    def _place(self, nbytes: int) -> tuple[int, int] | None:
        """Where ``nbytes`` (checked) would go: (data position, cumulative
        end), or None while the bytes are not free. Does not reserve."""
        size = self._data_bytes
        data_head = self._data_head
        if size == 0:
            return 0, data_head

        position = data_head % size
        start = data_head
        if position + nbytes > size:
            start += size - position
            position = 0
        end = start + nbytes

        # Live bytes are [data_tail, data_head); none live means any payload
        # that fits the area fits now, even after a skip.
        if end - self._data_tail > size and self._data_tail < data_head:
            self._data_tail = self._control[DATA_TAIL]
            if end - self._data_tail > size and self._data_tail < data_head:
                return None
        return position, end

    def has_space(self, nbytes: int = 0, count: int = 1) -> bool:
        """Whether ``count`` descriptors with ``nbytes`` in all fit now."""
        self._check_size(nbytes)
        return self._slots_free(count) and self._place(nbytes) is not None

    def _refuse(self) -> None:
        self._control[SENDER_REFUSALS] += 1

    # -- reserve --------------------------------------------------------------

    def reserve(self, nbytes: int = 0) -> Reservation | None:
        """Reserve one descriptor and ``nbytes`` of contiguous payload.

        Returns None when the ring is full (backpressure): nothing is
        reserved; wait for space and retry.
        """
        if not 0 <= nbytes <= self._data_bytes:
            self._check_size(nbytes)
        head = self._head
        if head - self._tail >= self._capacity and not self._slots_free(1):
            self._refuse()
            return None
        placed = self._place(nbytes)
        if placed is None:
            self._refuse()
            return None
        position, end = placed

        slot = head % self._capacity
        RING_FIELDS_STRUCT.pack_into(
            self._rows, slot * self._row_bytes, position, nbytes, end
        )
        self._head = head + 1
        self._data_head = end
        return Reservation(
            self._data[position : position + nbytes],
            self._descriptors[slot : slot + 1],
            position,
        )

    def reserve_batch(
        self,
        count: int,
        lengths: npt.NDArray[np.int64] | Sequence[int] | None = None,
    ) -> Reservation | None:
        """Reserve ``count`` descriptors whose payloads (``lengths`` bytes
        each, None for descriptor-only) lie back to back in one contiguous
        region. Returns None when they do not fit yet."""
        if not 1 <= count <= self._capacity:
            raise RingError(
                f"cannot reserve {count} descriptors in ring {self._ring.name!r}"
                f" of capacity {self._capacity}"
            )
        if lengths is None:
            sizes = None
            total = 0
        else:
            sizes = np.asarray(lengths, dtype=np.int64)
            if sizes.shape != (count,):
                raise RingError(f"lengths has shape {sizes.shape}, expected ({count},)")
            if count and int(sizes.min()) < 0:
                raise RingError("payload lengths must not be negative")
            total = int(sizes.sum())
        self._check_size(total)

        if not self._slots_free(count):
            self._refuse()
            return None
        placed = self._place(total)
        if placed is None:
            self._refuse()
            return None
        position, end = placed

        # Rows: a view into the ring, or staging when they would wrap.
        head = self._head
        slot = head % self._capacity
        if slot + count <= self._capacity:
            rows = self._descriptors[slot : slot + count]
        else:
            rows = np.zeros(count, dtype=self._ring.dtype)
            self._staged.append((slot, rows))

        if self._data_bytes:
            ends = rows["data_end"]
            if sizes is None:
                rows["data_length"] = 0
                rows["data_position"] = position
                ends[:] = end
            else:
                rows["data_length"] = sizes
                np.cumsum(sizes, out=ends)
                rows["data_position"] = ends
                rows["data_position"] += position - sizes
                ends += end - total
        self._head = head + count
        self._data_head = end
        return Reservation(self._data[position : position + total], rows, position)

    def put(self, payload: Payload, *fields: Any) -> bool:
        """Reserve one descriptor, copy ``payload`` into the data area and
        write the caller's ``fields`` (every one, in the order of the
        descriptor dtype given to create/attach), all in one call.

        Returns False when the descriptor or the bytes do not fit yet
        (backpressure, as ``reserve`` returning None): nothing is reserved.
        Like a reservation, the descriptor is visible only after
        ``publish``; one publish after many puts makes them visible with
        one ``head`` store. Cheaper than ``reserve`` plus numpy field
        assignments for a few descriptors per publish; for hundreds, one
        ``reserve_batch`` with column assignments costs less per row.
        Raises ``RingError`` (nothing reserved) for a payload that can
        never fit, a wrong number of fields or a value out of range.
        """
        view = payload if type(payload) is memoryview else memoryview(payload)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        nbytes = view.nbytes
        if not 0 <= nbytes <= self._data_bytes:
            self._check_size(nbytes)
        packer = self._row_struct
        if isinstance(packer, str):
            raise RingError(f"ring {self._ring.name!r}: {packer}")

        head = self._head
        if head - self._tail >= self._capacity and not self._slots_free(1):
            self._refuse()
            return False
        placed = self._place(nbytes)
        if placed is None:
            self._refuse()
            return False
        position, end = placed

        # The slot and bytes are free (not yet ours): a packing error leaves
        # nothing reserved.
        try:
            packer.pack_into(
                self._rows,
                (head % self._capacity) * self._row_bytes,
                position,
                nbytes,
                end,
                *fields,
            )
        except struct.error as error:
            raise RingError(
                f"ring {self._ring.name!r}: cannot write descriptor fields"
                f" {self._field_names} from {fields!r}: {error}"
            ) from None
        self._data[position : position + nbytes] = view
        self._head = head + 1
        self._data_head = end
        return True

    # -- publish --------------------------------------------------------------

    def publish(self) -> int:
        """Make every reserved descriptor visible (one ``head`` store) and
        wake the receiver if it sleeps. Returns how many were published."""
        head = self._head
        count = head - self._published
        if count == 0:
            return 0
        if self._staged:
            self._copy_staged()

        control = self._control
        control[DATA_HEAD] = self._data_head
        control[HEAD] = head
        self._published = head
        self._published_data_head = self._data_head
        self._wake_peer()
        return count

    def _copy_staged(self) -> None:
        capacity = self._capacity
        for slot, rows in self._staged:
            first = capacity - slot
            self._descriptors[slot:] = rows[:first]
            self._descriptors[: len(rows) - first] = rows[first:]
        self._staged.clear()

    def discard(self) -> int:
        """Drop every unpublished reservation; returns how many."""
        count = self._head - self._published
        self._head = self._published
        self._data_head = self._published_data_head
        self._staged.clear()
        return count

    # -- waiting for space ----------------------------------------------------

    def wait_for_space(
        self, nbytes: int = 0, count: int = 1, timeout: float = 1.0
    ) -> bool:
        """Block until ``count`` descriptors with ``nbytes`` fit, or
        ``timeout`` seconds pass. Returns whether they fit."""
        return self._wait(
            lambda: self.has_space(nbytes, count), self.space_ready, timeout
        )

    def arm_for_space(self, nbytes: int = 0, count: int = 1) -> bool:
        """Event-loop variant: returns True if the space is there already;
        otherwise sets the waiting flag (False) and the caller watches
        ``space_ready.fileno()``, then drains it, calls ``disarm()``,
        retries and arms again (see ``_Side._arm`` for the contract)."""
        return self._arm(lambda: self.has_space(nbytes, count))


class RingReceiver(_Side):
    """The receiving side: receive descriptors in batches, release them."""

    _pid_slot = RECEIVER_PID
    _waiting_slot = RECEIVER_WAITING
    _waits_slot = RECEIVER_WAITS
    _backstop_slot = RECEIVER_BACKSTOP_WAKEUPS
    _peer_waiting_slot = SENDER_WAITING
    _notifies_slot = RECEIVER_NOTIFIES
    _role = "receiver"

    def __init__(
        self,
        ring: Ring,
        data_ready: Notifier,
        space_ready: Notifier,
        recheck_interval: float,
    ) -> None:
        super().__init__(ring, recheck_interval)
        self.data_ready = data_ready
        self.space_ready = space_ready
        self._peer_notifier = space_ready

        # Resume at the stored tail: unreleased descriptors come again.
        self._tail = self._read = self._control[TAIL]
        # Word index of descriptor 0's data_end, and words per descriptor.
        self._end_word = ring.descriptors_word + 2
        self._row_words = ring.descriptor_words
        self._empty = self._descriptors[:0]

    def _detach_views(self) -> None:
        del self._empty

    @property
    def data(self) -> memoryview:
        """The whole data area, writable (payloads are rewritten in place)."""
        return self._data

    @property
    def unreleased(self) -> int:
        """Descriptors received but not yet released."""
        return self._read - self._tail

    def available(self) -> int:
        """Descriptors published and not yet received."""
        return self._control[HEAD] - self._read

    def receive(self, max_count: int | None = None) -> npt.NDArray[np.void]:
        """Every published descriptor not yet received, as one view into the
        ring (empty if none). The view stops at the end of the descriptor
        array; the next call returns the descriptors after the wrap."""
        start = self._read
        available = self._control[HEAD] - start
        if available <= 0:
            return self._empty
        # LIMITATION: a view cannot wrap, so descriptors past the end of the
        # array come on the next call (once per capacity descriptors).
        slot = start % self._capacity
        count = min(available, self._capacity - slot)
        if max_count is not None and max_count < count:
            count = max_count
        self._read = start + count
        return self._descriptors[slot : slot + count]

    def payload(self, descriptor: np.void) -> memoryview:
        """The payload bytes of one received descriptor (writable)."""
        position = int(descriptor["data_position"])
        return self._data[position : position + int(descriptor["data_length"])]

    def payloads(self, descriptors: npt.NDArray[np.void]) -> list[memoryview]:
        """The payload bytes of each received descriptor (writable)."""
        data = self._data
        positions = descriptors["data_position"].tolist()
        lengths = descriptors["data_length"].tolist()
        return [data[p : p + n] for p, n in zip(positions, lengths, strict=True)]

    def release(self, count: int) -> None:
        """Hand the oldest ``count`` received descriptors and their bytes
        back to the sender (one ``tail`` store)."""
        tail = self._tail + count
        if count <= 0 or tail > self._read:
            if count == 0:
                return
            raise RingError(
                f"cannot release {count} descriptors of ring {self._ring.name!r}:"
                f" {self._read - self._tail} are received and unreleased"
            )

        # Read the last descriptor before tail frees its slot for reuse.
        control = self._control
        data_tail = control[
            self._end_word + (tail - 1) % self._capacity * self._row_words
        ]
        control[TAIL] = tail
        if self._data_bytes:
            control[DATA_TAIL] = data_tail
        self._tail = tail
        self._wake_peer()

    def wait(self, timeout: float) -> bool:
        """Block until a descriptor is available or ``timeout`` seconds pass."""
        return self._wait(self._has_available, self.data_ready, timeout)

    def arm(self) -> bool:
        """Event-loop variant: True if descriptors are already available;
        otherwise sets the waiting flag (False) and the caller watches
        ``data_ready.fileno()``, then drains it, calls ``disarm()``,
        receives and arms again (see ``_Side._arm`` for the contract)."""
        return self._arm(self._has_available)

    def _has_available(self) -> bool:
        return self._control[HEAD] > self._read
