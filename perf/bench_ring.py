"""Ring throughput between two processes, against os.pipe and multiprocessing.Pipe.

Usage: .venv/bin/python perf/bench_ring.py [--json FILE] [--repeat N] [--quick]

A sender process (started with subprocess, as the supervisor starts its
children, or with multiprocessing for mp.Pipe) moves payloads of 100 bytes
and of 64 KiB to the receiver, this process, through:

- ring             shm.ring: the sender copies each payload into the ring and
                   sets two descriptor fields; the receiver copies every
                   received byte out to a buffer (one copy per contiguous
                   span) and releases. At 100 bytes the sender reserves 256
                   descriptors with ``reserve_batch``, fills them with numpy
                   column assignments and publishes them at once; at 64 KiB
                   it sends one descriptor per publish with ``put`` (copy and
                   descriptor in one call).
- ring-zero-copy   (64 KiB) the same ring used as the broker uses it: the
                   receiver takes memoryviews of the payloads in place (the
                   writer hands them straight to os.writev) and releases;
                   the sender's copy is the only one.
- ring-zc-reserve  (64 KiB) ring-zero-copy with the sender on ``reserve``
                   plus numpy assignments of the two fields (the API the
                   net processes use today), to show what ``put`` saves.
- os.pipe          one os.write per payload; the receiver reads into a
                   preallocated buffer.
- mp.Pipe          multiprocessing.Pipe(): send_bytes / recv_bytes_into per
                   payload.
- *-batched        (100 bytes) the pipes with 256 payloads per write, so the
                   batched ring is also compared with batched pipes.
- raw-copy         (64 KiB) the hardware ceiling for moving bytes between two
                   cores: the same copy in and copy out through shared memory
                   with both processes busy-polling an int64 and no ring
                   logic, no descriptors, no sleeping.

The 40% target and its memcpy reference. "At least 40% of single-thread
memcpy bandwidth" is measured against the *same-shape* memcpy: one thread
copying 64 KiB payloads from a hot source into successive 64 KiB slots of
an area as large as the ring's data area (4 MiB). That is the copy the ring
sender itself makes, with the same sizes and the same cache footprint, minus
everything the ring adds (a second process, descriptors, head/tail
exchange, wake-ups), so the ratio measures the ring's cost and nothing else.
Two other references are printed, each as a ratio from the same run, and
neither is used for the target:
- large-buffer memcpy, 64 MiB into 64 MiB (as perf/limits.py measures
  memcpy): it is bounded by DRAM bandwidth, which a 4 MiB ring that stays
  in the caches never touches, so the ring passes it by a wide margin for
  reasons that have nothing to do with the ring's own cost;
- hot memcpy, 64 KiB into one 64 KiB buffer (both in L1/L2): no memory
  traffic at all, which no cross-process transport can reach (the bytes
  must move between two cores' caches); it is the strictest bound, and
  ``raw-copy`` shows what the hardware allows instead.
The memcpy references run in every round, interleaved with the cases, and
the ratios use medians of this one invocation.

Method: the cyclic GC is off in every timed loop; each sender waits for a go
signal, so process start-up is not timed; the cases run round-robin
``--repeat`` times and the table shows the median and the best run; ratios
use medians of this one invocation. "other load" is the CPU time the
machine spent on anything but the two processes under test during the timed
window, as a fraction of one CPU (from /proc/stat and /proc/<pid>/stat;
interrupt work is charged to nobody, so syscall-heavy pipe cases show some
even on an idle machine). The test machine has 2 shared vCPUs: a ring run
with other load near 100% has in effect one CPU for both processes.

The "ring" rows charge the ring for a copy the pipe rows do not make: the
ring receiver copies every byte out of the ring, while a pipe receiver's
read is its only copy. "ring-zero-copy" is the broker's pattern: the bytes
reach the receiver with one copy, where a pipe needs two (into the kernel
and out of it) before a receiver can write them anywhere. The targets are
reported for both rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shm.notify import Notifier  # noqa: E402
from shm.region import Region, unlink_stale  # noqa: E402
from shm.ring import Ring, RingReceiver  # noqa: E402

FIELDS = np.dtype([("seq", np.int64), ("partition", np.int32)])
SMALL, LARGE = 100, 64 * 1024
SMALL_BATCH = 256
RING_CAPACITY = 4096
# 4 MiB of data area (64 payloads of 64 KiB in flight). Measured at 64 KiB,
# medians of 4-5 runs: 512 KiB 5.6 GB/s, 1 MiB 8.3, 4 MiB 9.6, 16 MiB 9.2,
# 64 MiB (the broker's default ring_bytes) 6.3, as the area stops fitting
# in cache.
RING_DATA_BYTES = 4 * 1024 * 1024
DEADLINE_SECONDS = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    case: str
    payload_bytes: int
    descriptors: int
    seconds: float
    other_load: float

    @property
    def descriptors_per_second(self) -> float:
        return self.descriptors / self.seconds

    @property
    def bytes_per_second(self) -> float:
        return self.descriptors * self.payload_bytes / self.seconds


# -- load probe -----------------------------------------------------------------


def _busy_ticks() -> int:
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return sum(fields[:8]) - idle - iowait


def _process_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class LoadProbe:
    """CPU used by everything but this process and ``child_pid``."""

    def __init__(self, child_pid: int) -> None:
        self.child_pid = child_pid
        self.started = time.perf_counter()
        self.busy = _busy_ticks()
        self.ours = _process_ticks(os.getpid()) + _process_ticks(child_pid)

    def other_load(self) -> float:
        elapsed = time.perf_counter() - self.started
        busy = _busy_ticks() - self.busy
        ours = _process_ticks(os.getpid()) + _process_ticks(self.child_pid) - self.ours
        return max(0.0, (busy - ours) / CLOCK_TICKS / elapsed)


# -- memcpy references -----------------------------------------------------------

LARGE_MEMCPY_BYTES = 64 * 1024 * 1024


class MemcpyReferences:
    """Single-thread numpy copies (bytes/s), measured once per round.

    ``area``: 64 KiB from a hot source into successive 64 KiB slots of an
    area the size of the ring's data area (the target's reference);
    ``large``: 64 MiB into 64 MiB; ``hot``: 64 KiB into one 64 KiB buffer.
    """

    KINDS = ("area", "large", "hot")

    def __init__(self, area_bytes: int, scale: int) -> None:
        self.source = np.frombuffer(os.urandom(LARGE), dtype=np.uint8)
        self.target = np.empty(LARGE, dtype=np.uint8)
        self.area = np.zeros(area_bytes, dtype=np.uint8)
        self.slots = [
            self.area[i * LARGE : (i + 1) * LARGE] for i in range(area_bytes // LARGE)
        ]
        self.big_source = np.frombuffer(os.urandom(LARGE_MEMCPY_BYTES), dtype=np.uint8)
        self.big_target = np.ones(LARGE_MEMCPY_BYTES, dtype=np.uint8)
        # One untimed pass so every page is mapped and warm.
        np.copyto(self.big_target, self.big_source)
        for slot in self.slots:
            np.copyto(slot, self.source)
        self.copies = 10_000 // scale
        self.big_copies = max(1, 10 // scale)
        self.runs: dict[str, list[float]] = {kind: [] for kind in self.KINDS}

    def measure(self) -> None:
        source, slots = self.source, self.slots
        count = len(slots)
        gc.disable()
        try:
            started = time.perf_counter()
            for i in range(self.copies):
                np.copyto(slots[i % count], source)
            area = self.copies * LARGE / (time.perf_counter() - started)

            started = time.perf_counter()
            for _ in range(self.big_copies):
                np.copyto(self.big_target, self.big_source)
            large = (
                self.big_copies * LARGE_MEMCPY_BYTES / (time.perf_counter() - started)
            )

            started = time.perf_counter()
            for _ in range(self.copies):
                np.copyto(self.target, source)
            hot = self.copies * LARGE / (time.perf_counter() - started)
        finally:
            gc.enable()
        if not np.array_equal(self.big_target[:LARGE], self.big_source[:LARGE]):
            raise RuntimeError("memcpy reference: target differs from source")
        self.runs["area"].append(area)
        self.runs["large"].append(large)
        self.runs["hot"].append(hot)

    def median(self, kind: str) -> float:
        return statistics.median(self.runs[kind])


# -- senders (child processes) ------------------------------------------------


def _wait_for_go(go_fd: int) -> None:
    print("ready", flush=True)
    if os.read(go_fd, 1) != b"g":
        raise SystemExit("sender: no go signal")


def ring_sender(args: argparse.Namespace) -> None:
    ring = Ring.attach(args.name, FIELDS)
    sender = ring.sender(Notifier(args.data_fd), Notifier(args.space_fd))
    size, count, batch = args.size, args.count, args.batch
    block = memoryview(os.urandom(size * batch))
    lengths = np.full(batch, size, dtype=np.int64)
    offsets = np.arange(batch, dtype=np.int64)
    deadline = time.monotonic() + DEADLINE_SECONDS
    _wait_for_go(args.go_fd)

    gc.disable()
    sent = 0
    if args.api == "put":
        # One descriptor per publish through put(): reserve, copy and
        # fill in one call.
        payload = block[:size]
        while sent < count:
            while not sender.put(payload, sent, 3):
                if time.monotonic() > deadline:
                    raise SystemExit("ring sender: deadline passed")
                sender.wait_for_space(size, 1, timeout=1.0)
            sender.publish()
            sent += 1
        ring.close()
        return
    while sent < count:
        k = min(batch, count - sent)
        nbytes = k * size
        while True:
            if k == 1:
                reservation = sender.reserve(nbytes)
            else:
                reservation = sender.reserve_batch(k, lengths[:k])
            if reservation is not None:
                break
            if time.monotonic() > deadline:
                raise SystemExit("ring sender: deadline passed")
            sender.wait_for_space(nbytes, k, timeout=1.0)
        reservation.data[:] = block[:nbytes]
        rows = reservation.descriptors
        np.add(offsets[:k], sent, out=rows["seq"])
        rows["partition"] = 3
        sender.publish()
        sent += k
    del reservation, rows
    ring.close()


def pipe_sender(args: argparse.Namespace) -> None:
    size, count, batch = args.size, args.count, args.batch
    block = os.urandom(size * batch)
    _wait_for_go(args.go_fd)

    gc.disable()
    sent = 0
    while sent < count:
        k = min(batch, count - sent)
        view = memoryview(block)[: k * size]
        while view:
            view = view[os.write(args.pipe_fd, view) :]
        sent += k


def raw_sender(args: argparse.Namespace) -> None:
    """Copy 64 KiB chunks into a shared area, publishing an int64 counter;
    busy-polls the receiver's counter for free slots."""
    region = Region.attach(args.name, "rawcopy", 1)
    control = np.ndarray((16,), dtype=np.int64, buffer=region.body)
    area = np.ndarray((RING_DATA_BYTES,), dtype=np.uint8, buffer=region.body, offset=64)
    slots = RING_DATA_BYTES // args.size
    chunks = [area[i * args.size : (i + 1) * args.size] for i in range(slots)]
    source = np.frombuffer(os.urandom(args.size), dtype=np.uint8)
    deadline = time.monotonic() + DEADLINE_SECONDS
    _wait_for_go(args.go_fd)

    gc.disable()
    for i in range(args.count):
        polls = 0
        while i - control.item(1) >= slots:
            polls += 1
            if polls % 100_000 == 0 and time.monotonic() > deadline:
                raise SystemExit("raw sender: deadline passed")
        np.copyto(chunks[i % slots], source)
        control[0] = i + 1
    del control, area, chunks
    region.close()


def mp_sender(
    connection: Connection, size: int, count: int, batch: int, ready: Event, go: Event
) -> None:
    block = os.urandom(size * batch)
    ready.set()
    go.wait(30)

    gc.disable()
    sent = 0
    while sent < count:
        k = min(batch, count - sent)
        connection.send_bytes(block, 0, k * size)
        sent += k
    connection.close()


# -- receivers (this process) ---------------------------------------------------


def _start_child(
    arguments: list[str], pass_fds: tuple[int, ...]
) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", *arguments],
        pass_fds=pass_fds,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise RuntimeError(f"sender {arguments[0]} did not start")
    return child


def _finish_child(child: subprocess.Popen[str]) -> None:
    if child.wait(timeout=60) != 0:
        raise RuntimeError(f"sender exited with {child.returncode}")


def _copy_spans(receiver: RingReceiver, rows: np.ndarray, sink: memoryview) -> int:
    """Copy the payloads of ``rows`` out, one copy per contiguous span (a
    skip to the start of the data area splits a batch)."""
    data = receiver.data
    copied = 0
    if len(rows) <= 32:
        positions = rows["data_position"].tolist()
        lengths = rows["data_length"].tolist()
        start, end = positions[0], positions[0]
        for position, length in zip(positions, lengths, strict=True):
            if position != end:
                sink[: end - start] = data[start:end]
                copied += end - start
                start = position
            end = position + length
        sink[: end - start] = data[start:end]
        return copied + end - start

    positions_array = rows["data_position"]
    ends_array = positions_array + rows["data_length"]
    breaks = np.flatnonzero(positions_array[1:] != ends_array[:-1]).tolist()
    first = 0
    for last in [*breaks, len(rows) - 1]:
        start, end = int(positions_array[first]), int(ends_array[last])
        sink[: end - start] = data[start:end]
        copied += end - start
        first = last + 1
    return copied


def run_ring(
    size: int, count: int, batch: int, copy_out: bool = True, api: str = "reserve"
) -> Result:
    prefix = f"rbbench{os.getpid()}_"
    unlink_stale(prefix, include_live_owners=True)
    ring = Ring.create(
        prefix + "ring", FIELDS, RING_CAPACITY, RING_DATA_BYTES, prefault=True
    )
    data_ready, space_ready = Notifier.create(), Notifier.create()
    go_read, go_write = os.pipe()
    fds = (data_ready.fileno(), space_ready.fileno(), go_read)
    try:
        child = _start_child(
            [
                "ring",
                *("--name", ring.name, "--go-fd", str(go_read)),
                *("--data-fd", str(fds[0]), "--space-fd", str(fds[1])),
                *("--size", str(size), "--count", str(count), "--batch", str(batch)),
                *("--api", api),
            ],
            fds,
        )
        receiver = ring.receiver(data_ready, space_ready)
        sink = memoryview(bytearray(RING_DATA_BYTES))
        received = 0
        received_bytes = 0
        deadline = time.monotonic() + DEADLINE_SECONDS

        gc.disable()
        probe = LoadProbe(child.pid)
        os.write(go_write, b"g")
        started = time.perf_counter()
        while received < count:
            rows = receiver.receive()
            n = len(rows)
            if n == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("ring receiver: deadline passed")
                receiver.wait(1.0)
                continue
            if copy_out:
                received_bytes += _copy_spans(receiver, rows, sink)
            else:
                # What the writer does: views in place, no copy.
                received_bytes += sum(len(view) for view in receiver.payloads(rows))
            received += n
            del rows
            receiver.release(n)
        elapsed = time.perf_counter() - started
        other_load = probe.other_load()
        gc.enable()

        _finish_child(child)
        if received_bytes != count * size:
            raise RuntimeError(f"ring moved {received_bytes} bytes, not {count * size}")
        del receiver
        if copy_out:
            case = "ring"
        else:
            case = "ring-zero-copy" if api == "put" else "ring-zc-reserve"
        return Result(case, size, count, elapsed, other_load)
    finally:
        gc.enable()
        ring.close()
        ring.unlink()
        data_ready.close()
        space_ready.close()
        os.close(go_read)
        os.close(go_write)


def run_raw_copy(size: int, count: int) -> Result:
    prefix = f"rbbench{os.getpid()}_"
    unlink_stale(prefix, include_live_owners=True)
    region = Region.create(prefix + "raw", "rawcopy", 1, {}, 64 + RING_DATA_BYTES)
    region.prefault()
    region.mark_ready()
    control = np.ndarray((16,), dtype=np.int64, buffer=region.body)
    area = np.ndarray((RING_DATA_BYTES,), dtype=np.uint8, buffer=region.body, offset=64)
    slots = RING_DATA_BYTES // size
    chunks = [area[i * size : (i + 1) * size] for i in range(slots)]
    sink = np.empty(size, dtype=np.uint8)
    go_read, go_write = os.pipe()
    try:
        child = _start_child(
            [
                "raw",
                *("--name", region.name, "--go-fd", str(go_read)),
                *("--size", str(size), "--count", str(count), "--batch", "1"),
            ],
            (go_read,),
        )
        deadline = time.monotonic() + DEADLINE_SECONDS

        gc.disable()
        probe = LoadProbe(child.pid)
        os.write(go_write, b"g")
        started = time.perf_counter()
        for i in range(count):
            polls = 0
            while control.item(0) <= i:
                polls += 1
                if polls % 100_000 == 0 and time.monotonic() > deadline:
                    raise RuntimeError("raw receiver: deadline passed")
            np.copyto(sink, chunks[i % slots])
            control[1] = i + 1
        elapsed = time.perf_counter() - started
        other_load = probe.other_load()
        gc.enable()

        _finish_child(child)
        return Result("raw-copy", size, count, elapsed, other_load)
    finally:
        gc.enable()
        del control, area, chunks
        region.close()
        region.unlink()
        os.close(go_read)
        os.close(go_write)


def run_pipe(size: int, count: int, batch: int) -> Result:
    pipe_read, pipe_write = os.pipe()
    go_read, go_write = os.pipe()
    try:
        child = _start_child(
            [
                "pipe",
                *("--pipe-fd", str(pipe_write), "--go-fd", str(go_read)),
                *("--size", str(size), "--count", str(count), "--batch", str(batch)),
            ],
            (pipe_write, go_read),
        )
        os.close(pipe_write)
        sink = bytearray(max(1 << 20, size * batch))
        total = count * size
        received = 0

        gc.disable()
        probe = LoadProbe(child.pid)
        os.write(go_write, b"g")
        started = time.perf_counter()
        while received < total:
            n = os.readv(pipe_read, [sink])
            if n == 0:
                raise RuntimeError("pipe closed early")
            received += n
        elapsed = time.perf_counter() - started
        other_load = probe.other_load()
        gc.enable()

        _finish_child(child)
        name = "os.pipe" if batch == 1 else "os.pipe-batched"
        return Result(name, size, count, elapsed, other_load)
    finally:
        gc.enable()
        os.close(pipe_read)
        os.close(go_read)
        os.close(go_write)


def run_mp_pipe(size: int, count: int, batch: int) -> Result:
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe()
    ready, go = context.Event(), context.Event()
    child = context.Process(
        target=mp_sender, args=(sending, size, count, batch, ready, go)
    )
    child.start()
    sending.close()
    try:
        if not ready.wait(60):
            raise RuntimeError("mp.Pipe sender did not start")
        assert child.pid is not None
        sink = bytearray(size * batch)
        total = count * size
        received = 0

        gc.disable()
        probe = LoadProbe(child.pid)
        go.set()
        started = time.perf_counter()
        while received < total:
            received += receiving.recv_bytes_into(sink)
        elapsed = time.perf_counter() - started
        other_load = probe.other_load()
        gc.enable()

        child.join(60)
        if child.exitcode != 0:
            raise RuntimeError(f"mp.Pipe sender exited with {child.exitcode}")
        name = "mp.Pipe" if batch == 1 else "mp.Pipe-batched"
        return Result(name, size, count, elapsed, other_load)
    finally:
        gc.enable()
        receiving.close()
        if child.is_alive():
            child.kill()
            child.join(10)


# -- main -----------------------------------------------------------------------


@dataclass
class Summary:
    case: str
    payload_bytes: int
    median: Result
    best: Result
    runs: list[Result]


def summarise(runs: list[Result]) -> Summary:
    ordered = sorted(runs, key=lambda result: result.seconds)
    median_seconds = statistics.median(result.seconds for result in runs)
    median_load = statistics.median(result.other_load for result in runs)
    first = runs[0]
    median = Result(
        first.case, first.payload_bytes, first.descriptors, median_seconds, median_load
    )
    return Summary(first.case, first.payload_bytes, median, ordered[0], runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case")
    parser.add_argument("--quick", action="store_true", help="10x fewer payloads")
    args = parser.parse_args()
    scale = 10 if args.quick else 1

    small_ring = 2_000_000 // scale
    small_pipe = 300_000 // scale
    large = 20_000 // scale
    cases: list[tuple[str, Callable[[], Result]]] = [
        ("ring 100 B", lambda: run_ring(SMALL, small_ring, SMALL_BATCH)),
        ("os.pipe 100 B", lambda: run_pipe(SMALL, small_pipe, 1)),
        ("os.pipe-batched 100 B", lambda: run_pipe(SMALL, small_ring, SMALL_BATCH)),
        ("mp.Pipe 100 B", lambda: run_mp_pipe(SMALL, small_pipe, 1)),
        ("mp.Pipe-batched 100 B", lambda: run_mp_pipe(SMALL, small_ring, SMALL_BATCH)),
        ("ring 64 KiB", lambda: run_ring(LARGE, large, 1, api="put")),
        (
            "ring-zero-copy 64 KiB",
            lambda: run_ring(LARGE, large, 1, copy_out=False, api="put"),
        ),
        (
            "ring-zc-reserve 64 KiB",
            lambda: run_ring(LARGE, large, 1, copy_out=False, api="reserve"),
        ),
        ("os.pipe 64 KiB", lambda: run_pipe(LARGE, large, 1)),
        ("mp.Pipe 64 KiB", lambda: run_mp_pipe(LARGE, large, 1)),
        ("raw-copy 64 KiB", lambda: run_raw_copy(LARGE, large)),
    ]
    memcpy = MemcpyReferences(RING_DATA_BYTES, scale)

    # Round-robin, so a burst of load elsewhere hits every case alike.
    runs: dict[str, list[Result]] = {label: [] for label, _ in cases}
    for round_number in range(args.repeat):
        print(f"round {round_number + 1}/{args.repeat}", file=sys.stderr, flush=True)
        for label, run in cases:
            runs[label].append(run())
        memcpy.measure()
    summaries = [summarise(results) for results in runs.values()]
    memcpy_area = memcpy.median("area")
    memcpy_large = memcpy.median("large")
    memcpy_hot = memcpy.median("hot")

    by_key = {(s.case, s.payload_bytes): s for s in summaries}
    print(
        f"ring: {RING_CAPACITY} descriptors, {RING_DATA_BYTES >> 20} MiB data area;"
        f" {args.repeat} rounds; {os.cpu_count()} CPUs;"
        f" python {sys.version.split()[0]};"
        f" 1-minute load average at end {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'case':<17}{'payload':>8}{'descriptors/s':>15}{'MB/s':>9}"
        f"{'best MB/s':>11}{'ring/this':>11}{'other load':>12}"
    )
    print(header)
    for summary in summaries:
        ring = by_key[("ring", summary.payload_bytes)].median
        median = summary.median
        print(
            f"{summary.case:<17}{summary.payload_bytes:>8}"
            f"{median.descriptors_per_second:>15,.0f}"
            f"{median.bytes_per_second / 1e6:>9,.0f}"
            f"{summary.best.bytes_per_second / 1e6:>11,.0f}"
            f"{ring.bytes_per_second / median.bytes_per_second:>10.2f}x"
            f"{median.other_load:>11.0%}"
        )
    area_label = f"64 KiB into a {RING_DATA_BYTES >> 20} MiB area (target reference)"
    print("single-thread memcpy, median of the rounds:")
    print(f"  {area_label:<50}{memcpy_area / 1e6:>9,.0f} MB/s")
    print(
        f"  {'64 MiB into 64 MiB (large buffers)':<50}{memcpy_large / 1e6:>9,.0f} MB/s"
    )
    print(f"  {'64 KiB into 64 KiB (hot buffers)':<50}{memcpy_hot / 1e6:>9,.0f} MB/s")

    ring_large = by_key[("ring", LARGE)].median.bytes_per_second
    zero_copy = by_key[("ring-zero-copy", LARGE)].median.bytes_per_second
    zc_reserve = by_key[("ring-zc-reserve", LARGE)].median.bytes_per_second
    mp_pipe = by_key[("mp.Pipe", LARGE)].median.bytes_per_second
    ratios = {
        "ring_vs_mp_pipe_64k": ring_large / mp_pipe,
        "ring_zero_copy_vs_mp_pipe_64k": zero_copy / mp_pipe,
        "ring_vs_os_pipe_64k": ring_large
        / by_key[("os.pipe", LARGE)].median.bytes_per_second,
        "ring_vs_memcpy_area_64k": ring_large / memcpy_area,
        "ring_zero_copy_vs_memcpy_area_64k": zero_copy / memcpy_area,
        "ring_zc_reserve_vs_memcpy_area_64k": zc_reserve / memcpy_area,
        "ring_vs_memcpy_large_64k": ring_large / memcpy_large,
        "ring_zero_copy_vs_memcpy_large_64k": zero_copy / memcpy_large,
        "ring_vs_memcpy_hot_64k": ring_large / memcpy_hot,
        "ring_zero_copy_vs_memcpy_hot_64k": zero_copy / memcpy_hot,
        "ring_zero_copy_put_vs_reserve_64k": zero_copy / zc_reserve,
        "ring_vs_raw_copy_64k": ring_large
        / by_key[("raw-copy", LARGE)].median.bytes_per_second,
        "ring_descriptors_per_second_100b": by_key[
            ("ring", SMALL)
        ].median.descriptors_per_second,
    }
    for label, key in (
        ("copy-out receiver", "ring"),
        ("zero-copy receiver", "ring_zero_copy"),
    ):
        print(
            f"\n64 KiB, {label}: ring / mp.Pipe {ratios[key + '_vs_mp_pipe_64k']:.2f}x"
            f" (target 3x); ring / memcpy into a ring-sized area"
            f" {ratios[key + '_vs_memcpy_area_64k']:.0%} (target 40%);"
            f" not the target's reference: ring / 64 MiB memcpy"
            f" {ratios[key + '_vs_memcpy_large_64k']:.0%},"
            f" ring / hot memcpy {ratios[key + '_vs_memcpy_hot_64k']:.0%}"
        )
    print(
        f"64 KiB: ring / os.pipe {ratios['ring_vs_os_pipe_64k']:.2f}x,"
        f" ring / raw-copy {ratios['ring_vs_raw_copy_64k']:.0%};"
        f" zero-copy sender on put / on reserve"
        f" {ratios['ring_zero_copy_put_vs_reserve_64k']:.2f}x"
        f" (ring-zc-reserve / memcpy area"
        f" {ratios['ring_zc_reserve_vs_memcpy_area_64k']:.0%})"
    )
    print(
        f"100 B: ring {ratios['ring_descriptors_per_second_100b']:,.0f}"
        " descriptors/s (target 1,000,000)"
    )

    if args.json:
        document = {
            "runs": [asdict(result) for results in runs.values() for result in results],
            "medians": [
                {
                    **asdict(summary.median),
                    "descriptors_per_second": summary.median.descriptors_per_second,
                    "bytes_per_second": summary.median.bytes_per_second,
                    "best_bytes_per_second": summary.best.bytes_per_second,
                }
                for summary in summaries
            ],
            "memcpy_runs_bytes_per_second": memcpy.runs,
            "memcpy_64k_in_area_bytes_per_second": memcpy_area,
            "memcpy_64m_bytes_per_second": memcpy_large,
            "memcpy_64k_hot_bytes_per_second": memcpy_hot,
            "ring_capacity": RING_CAPACITY,
            "ring_data_bytes": RING_DATA_BYTES,
            "repeat": args.repeat,
            "load_average_at_end": os.getloadavg()[0],
            **ratios,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


def child_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ring", "pipe", "raw"])
    parser.add_argument("--name")
    parser.add_argument("--data-fd", type=int)
    parser.add_argument("--space-fd", type=int)
    parser.add_argument("--pipe-fd", type=int)
    parser.add_argument("--go-fd", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--api", choices=["reserve", "put"], default="reserve")
    args = parser.parse_args(sys.argv[2:])
    {"ring": ring_sender, "pipe": pipe_sender, "raw": raw_sender}[args.kind](args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main()
    else:
        main()
