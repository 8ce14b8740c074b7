"""Peer programs for the shm process tests, plus the payload scheme they share.

Run as ``python tests/shm/shm_peers.py <command> <args...>`` (the tests start
them with ``subprocess`` and pass eventfds with ``pass_fds``, as the
supervisor does). Each command attaches to blocks the test created, does
one job, and exits 0; a failed check exits non-zero with a message on
stderr. Every loop is bounded by a deadline.

Payload scheme: descriptor ``seq`` carries ``payload_lengths(seq)`` bytes of
``payload_bytes``, both derived from the sequence number, so a receiver can
check every byte and the order without being told what was sent.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from shm.counters import Counters
from shm.notify import Notifier
from shm.ring import Ring, RingReceiver, RingSender
from shm.table import Table

FIELDS = np.dtype([("seq", np.int64), ("tag", np.int32)])
TABLE_WIDTH = 16
TABLE_FIELDS = np.dtype([(f"v{i}", np.int64) for i in range(TABLE_WIDTH)])
COUNTER_NAMES = ("requests", "bytes_in", "errors")
HISTOGRAM_NAMES = ("latency_us",)


def payload_lengths(
    seqs: npt.NDArray[np.int64], max_length: int
) -> npt.NDArray[np.int64]:
    """Pseudo-random lengths 0..max_length, a function of the sequence number."""
    mixed = (seqs * 2654435761 + 97) % 1000003
    return mixed % (max_length + 1)


def payload_bytes(
    seqs: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
) -> npt.NDArray[np.uint8]:
    """The bytes of several payloads back to back."""
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    offsets = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    return ((np.repeat(seqs, lengths) * 31 + offsets) % 251).astype(np.uint8)


def batch_size(seq: int, max_batch: int) -> int:
    """How many descriptors the sender reserves at ``seq`` (1..max_batch)."""
    return 1 + (seq * 7919) % max_batch


# -- ring ---------------------------------------------------------------------


def send_sequence(
    sender: RingSender,
    total: int,
    max_length: int,
    max_batch: int,
    deadline: float,
) -> None:
    """Send descriptors 0..total-1, mixing single reservations, ``put``
    (every other single descriptor) and batch reservations, and publishing
    every second reservation."""
    seq = 0
    reservations = 0
    while seq < total:
        count = min(batch_size(seq, max_batch), total - seq)
        seqs = np.arange(seq, seq + count, dtype=np.int64)
        lengths = payload_lengths(seqs, max_length)
        nbytes = int(lengths.sum())
        use_put = count == 1 and seq % 2 == 0
        payload = payload_bytes(seqs, lengths).tobytes() if use_put else b""

        while True:
            if use_put:
                if sender.put(payload, seq, 7):
                    break
            else:
                if count == 1:
                    reservation = sender.reserve(nbytes)
                else:
                    reservation = sender.reserve_batch(count, lengths)
                if reservation is not None:
                    break
            # Full: publish what is pending (else the receiver cannot free
            # anything), then sleep until space.
            sender.publish()
            if time.monotonic() > deadline:
                raise SystemExit(f"sender: deadline passed at seq {seq}")
            sender.wait_for_space(nbytes, count, timeout=1.0)

        if not use_put:
            reservation.descriptors["seq"] = seqs
            reservation.descriptors["tag"] = 7
            if nbytes:
                np.frombuffer(reservation.data, dtype=np.uint8)[:] = payload_bytes(
                    seqs, lengths
                )
            del reservation
        reservations += 1
        if reservations % 2 == 0:
            sender.publish()
        seq += count
    sender.publish()


class SequenceChecker:
    """Checks received descriptors continue the sequence byte for byte."""

    def __init__(
        self, receiver: RingReceiver, data: npt.NDArray[np.uint8], max_length: int
    ):
        self.receiver = receiver
        self.data = data
        self.max_length = max_length
        self.next_seq: int | None = None

    def check(self, rows: npt.NDArray[np.void]) -> tuple[int, int]:
        """Verify ``rows``; return (first seq, last seq + 1)."""
        seqs = rows["seq"].astype(np.int64)
        first = int(seqs[0])
        if self.next_seq is not None and first != self.next_seq:
            raise AssertionError(f"expected seq {self.next_seq}, received {first}")
        expected_seqs = np.arange(first, first + len(seqs), dtype=np.int64)
        if not np.array_equal(seqs, expected_seqs):
            raise AssertionError(f"sequence out of order after {first}")
        if not (rows["tag"] == 7).all():
            raise AssertionError(f"descriptor field lost near seq {first}")

        lengths = rows["data_length"].astype(np.int64)
        if not np.array_equal(lengths, payload_lengths(seqs, self.max_length)):
            raise AssertionError(f"payload length wrong near seq {first}")
        starts = np.cumsum(lengths) - lengths
        offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(
            starts, lengths
        )
        where = np.repeat(rows["data_position"].astype(np.int64), lengths) + offsets
        if not np.array_equal(self.data[where], payload_bytes(seqs, lengths)):
            raise AssertionError(f"payload bytes wrong near seq {first}")
        self.next_seq = first + len(seqs)
        return first, self.next_seq


def receive_sequence(
    receiver: RingReceiver,
    data: npt.NDArray[np.uint8],
    total: int,
    max_length: int,
    deadline: float,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Receive and verify until descriptor ``total - 1``; returns the batch
    count. ``on_batch(first, end)`` runs before each release."""
    checker = SequenceChecker(receiver, data, max_length)
    batches = 0
    while checker.next_seq != total:
        rows = receiver.receive()
        if len(rows) == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: deadline passed at {checker.next_seq}")
            receiver.wait(timeout=1.0)
            continue
        first, end = checker.check(rows)
        count = len(rows)
        del rows
        if on_batch is not None:
            on_batch(first, end)
        receiver.release(count)
        batches += 1
    return batches


def _ring_side_args(argv: list[str]) -> tuple[Ring, Notifier, Notifier, float]:
    name, data_fd, space_fd, recheck = (
        argv[0],
        int(argv[1]),
        int(argv[2]),
        float(argv[3]),
    )
    return Ring.attach(name, FIELDS), Notifier(data_fd), Notifier(space_fd), recheck


def ring_send(argv: list[str]) -> None:
    """ring-send NAME DATA_FD SPACE_FD RECHECK TOTAL MAX_LENGTH MAX_BATCH SECONDS"""
    ring, data_ready, space_ready, recheck = _ring_side_args(argv)
    total, max_length, max_batch = int(argv[4]), int(argv[5]), int(argv[6])
    deadline = time.monotonic() + float(argv[7])
    sender = ring.sender(data_ready, space_ready, recheck_interval=recheck)
    send_sequence(sender, total, max_length, max_batch, deadline)
    statistics = ring.statistics()
    print(json.dumps({"refusals": statistics.sender_refusals}), flush=True)
    ring.close()


def ring_receive_logged(argv: list[str]) -> None:
    """ring-receive-logged NAME DATA_FD SPACE_FD RECHECK TOTAL MAX_LENGTH LOG
    SECONDS HANG_AFTER PAUSE

    A receiver with its own commit record, as the writer process has: LOG
    gets one line per processed range, written before the range is
    released. On start it reads every log in LOG's directory and releases,
    without processing, descriptors they already hold (redeliveries after a
    crash). It checks that the first descriptor it gets is the one at the
    stored tail. With HANG_AFTER >= 0 it stops after processing that many
    descriptors: it logs one more range without releasing it, receives
    another without logging it, prints "hanging" and waits to be killed.
    PAUSE seconds of sleep per batch keep the stream slow enough to be
    killed mid-way.
    """
    ring, data_ready, space_ready, recheck = _ring_side_args(argv)
    total, max_length, log_path = int(argv[4]), int(argv[5]), argv[6]
    deadline = time.monotonic() + float(argv[7])
    hang_after, pause = int(argv[8]), float(argv[9])

    committed = 0
    log_directory = os.path.dirname(log_path)
    for entry in os.listdir(log_directory):
        with open(os.path.join(log_directory, entry)) as log:
            for line in log:
                kind, _, end = line.split()
                if kind == "batch":
                    committed = max(committed, int(end))

    receiver = ring.receiver(data_ready, space_ready, recheck_interval=recheck)
    tail = ring.statistics().tail
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(log_fd, f"start {tail} {committed}\n".encode())
    checker = SequenceChecker(receiver, ring.data_array(), max_length)
    checker.next_seq = tail
    processed = 0

    while checker.next_seq != total:
        rows = receiver.receive()
        if len(rows) == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"receiver: deadline passed at {checker.next_seq}")
            receiver.wait(timeout=1.0)
            continue
        first, end = checker.check(rows)
        del rows

        # Delivered again: the commit record already holds them.
        if first < committed:
            again = min(end, committed) - first
            os.write(log_fd, f"redelivered {first} {first + again}\n".encode())
            receiver.release(again)
            first += again
        if first == end:
            continue

        os.write(log_fd, f"batch {first} {end}\n".encode())
        if 0 <= hang_after <= processed:
            # Committed but not released; then received but not committed.
            while len(receiver.receive()) == 0 and time.monotonic() < deadline:
                receiver.wait(timeout=0.1)
            print("hanging", flush=True)
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise SystemExit("receiver: was not killed")
        receiver.release(end - first)
        processed += end - first
        if pause:
            time.sleep(pause)
    print(json.dumps({"done": True}), flush=True)
    del checker
    ring.close()


# -- table, counters, blocks ----------------------------------------------------


def table_write(argv: list[str]) -> None:
    """table-write NAME SECONDS: rewrite rows (every field = k) until SECONDS
    pass; prints the number of writes."""
    table = Table.attach(argv[0], TABLE_FIELDS)
    writer = table.writer()
    deadline = time.monotonic() + float(argv[1])
    rows = table.rows
    batch_rows = np.arange(0, rows, 2)
    batch = np.zeros(len(batch_rows), dtype=table.dtype)
    writes = 0
    k = 0
    print("writing", flush=True)
    while time.monotonic() < deadline:
        for _ in range(200):
            k += 1
            writer.write_row(k % rows, (k,) * TABLE_WIDTH)
            writer.update((k + 1) % rows, **{f"v{i}": k for i in range(TABLE_WIDTH)})
        # Vectorised writes too: every field of a row equal to its value.
        values = np.arange(k, k + len(batch_rows), dtype=np.int64)
        for i in range(TABLE_WIDTH):
            batch[f"v{i}"] = values
        writer.write_rows(batch_rows, batch)
        writes += 401
    print(json.dumps({"writes": writes}), flush=True)
    writer.close()
    table.close()


def counters_add(argv: list[str]) -> None:
    """counters-add NAME SLOT N: N times add 1 and 3 and observe i % 5000."""
    counters = Counters.attach(argv[0], COUNTER_NAMES, HISTOGRAM_NAMES)
    slot = counters.slot(int(argv[1]))
    requests = counters.counter_id("requests")
    bytes_in = counters.counter_id("bytes_in")
    latency = counters.histogram_id("latency_us")
    for i in range(int(argv[2])):
        slot.add(requests)
        slot.add(bytes_in, 3)
        slot.observe(latency, i % 5000)
    counters.close()


def own_blocks(argv: list[str]) -> None:
    """own-blocks PREFIX: create a ring, a table and counters, print
    "ready", then wait up to 60 s to be killed."""
    prefix = argv[0]
    Ring.create(prefix + "ring", FIELDS, capacity=16, data_bytes=4096)
    Table.create(prefix + "table", TABLE_FIELDS, rows=4)
    Counters.create(prefix + "counters", 2, COUNTER_NAMES, HISTOGRAM_NAMES)
    print("ready", flush=True)
    time.sleep(60)
    raise SystemExit("own-blocks: was not killed")


def attach_ring(argv: list[str]) -> None:
    """attach-ring NAME MODE: attach as receiver; MODE "exit" closes and
    exits, "hang" prints "attached" and waits to be killed."""
    ring = Ring.attach(argv[0], FIELDS)
    notifier = Notifier.create()
    receiver = ring.receiver(notifier, notifier)
    if argv[1] == "hang":
        print("attached", flush=True)
        time.sleep(60)
        raise SystemExit("attach-ring: was not killed")
    del receiver
    ring.close()


def notify(argv: list[str]) -> None:
    """notify FD COUNT: notify an inherited eventfd COUNT times."""
    notifier = Notifier(int(argv[0]))
    for _ in range(int(argv[1])):
        notifier.notify()


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "ring-send": ring_send,
    "ring-receive-logged": ring_receive_logged,
    "table-write": table_write,
    "counters-add": counters_add,
    "own-blocks": own_blocks,
    "attach-ring": attach_ring,
    "notify": notify,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](sys.argv[2:])
