"""Writer process benchmark: throughput against plain os.write, and acks=-1
group commit with many request streams against one.

Both parts run a real ``python -m broker.writer`` started as the supervisor
starts it (``tests/writer/harness.py``); this process plays the net process:
it copies batches into the produce ring and reads completions.

Throughput: 1 KiB records in 16 KiB batches, acks=1, sent ``--reserve``
batches per ring reservation and publish. Each round pushes ``--total-mib``
through the writer and writes the same amount with plain ``os.write``
(``--plain-write-kib`` per call) to a new file in the same data directory,
in alternating ``--chunk-mib`` chunks, so both sides meet the same
page-cache conditions (on this kind of VM, first touching freed memory
costs 10-40 us a page and drifts during a run; see perf/bench_log.py).
Files stay until the end, so every chunk writes fresh pages. A writer chunk
is timed from its first send to its last completion. Before the first
chunk, ``--warmup-mib`` (one ring's worth by default) goes through the
writer untimed: the first pass over a new ring pays a page fault per 4 KiB
in both processes (about 50 ms for 64 MiB here), which a running broker
paid once at start; ``--warmup-mib 0`` times it too, as earlier versions
of this benchmark did. The periodic
checkpoint is pushed out (``--flush-ms``) so neither side fsyncs: this is
the page-cache path acks=1 waits for.

Besides wall-clock rates, each round prints CPU time per MiB of the plain
writer and of the writer process (``psutil``): on a shared 2-core machine
other work moves the wall-clock ratio a lot, the CPU ratio much less. The
sender's CPU (this process copying into the ring, a net process's job)
is shown apart.

Group commit: ``--streams`` request streams, each sending one acks=-1 batch
and waiting for its completion before the next, against one stream, for
``--seconds`` each; all streams write one partition unless ``--partitions``
spreads them. Reports completed batches per second and fdatasyncs per
batch.

Run: .venv/bin/python perf/bench_writer.py [--total-mib 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil

# Runnable from a checkout whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.layout import KIND_BATCH
from broker.log.batch import Record, build_batch
from shm.ring import RingReceiver, RingSender
from tests.writer.harness import WriterHarness

MIB = 1 << 20


def batch_pool(batch_kib: int, record_bytes: int, count: int) -> list[bytearray]:
    """``count`` distinct batches of about ``batch_kib`` KiB."""
    per_batch = max(1, batch_kib * 1024 // record_bytes)
    pool = []
    for number in range(count):
        value = bytes([number % 251]) * (record_bytes - 24)
        records: list[Record] = [
            (None, value, [], 1_700_000_000_000 + i) for i in range(per_batch)
        ]
        pool.append(build_batch(records))
    return pool


class Sender:
    """The net process's side of ring 0: reserve, copy, publish, drain."""

    def __init__(self, harness: WriterHarness, partitions: list[int]) -> None:
        self.harness = harness
        self.sender: RingSender = harness.net.senders[0]
        self.receiver: RingReceiver = harness.net.receivers[0]
        self.wake = harness.memory.net_wakes[0]
        self.partitions = np.array(partitions, dtype=np.int32)
        self.next_request = 1

    def send(self, payload: memoryview, lengths: np.ndarray, acks: int) -> bool:
        """One reservation for ``len(lengths)`` batches; False if full."""
        count = len(lengths)
        reservation = self.sender.reserve_batch(count, lengths)
        if reservation is None:
            return False
        reservation.data[:] = payload
        rows = reservation.descriptors
        rows["request_id"] = np.arange(self.next_request, self.next_request + count)
        rows["partition"] = self.partitions[
            np.arange(self.next_request, self.next_request + count)
            % len(self.partitions)
        ]
        self.next_request += count
        rows["base_offset"] = -1
        rows["argument"] = 0
        rows["record_count"] = 0
        rows["acks"] = acks
        rows["kind"] = KIND_BATCH
        rows["error_code"] = 0
        self.sender.publish()
        return True

    def drain(self) -> np.ndarray:
        """Request ids of every completion posted; raises on an error."""
        done = []
        for _ in range(2):
            rows = self.receiver.receive()
            if not len(rows):
                break
            errors = rows["error_code"]
            if errors.any():
                raise RuntimeError(f"writer answered error {int(errors.max())}")
            done.append(rows["request_id"].copy())
            self.receiver.release(len(rows))
        return np.concatenate(done) if done else np.zeros(0, np.int64)

    def sleep(self, nbytes: int, count: int) -> None:
        """Wait for a completion, or for room for ``count`` batches of
        ``nbytes`` in all (0: nothing left to send, so completions only),
        with the waiting flags set. Without the room case a sender that has
        sent everything would spin instead of sleeping, taking a core from
        the writer on a 2-core machine."""
        if self.receiver.arm():
            return
        if not count or not self.sender.arm_for_space(nbytes, count):
            self.wake.wait(0.01)
        self.sender.disarm()
        self.receiver.disarm()


class Chunk(NamedTuple):
    """One timed chunk: wall seconds, and CPU seconds of this process and
    (for writer chunks) of the writer process."""

    seconds: float
    cpu: float
    writer_cpu: float = 0.0


def push_chunk(
    sender: Sender,
    pool: bytes,
    lengths: np.ndarray,
    total: int,
    writer: psutil.Process,
) -> Chunk:
    """Send ``total`` bytes of batches (acks=1) and wait for every
    completion."""
    writer_before = sum(writer.cpu_times()[:2])
    cpu_before = time.process_time()
    group_bytes = int(lengths.sum())
    groups = max(1, total // group_bytes)
    view = memoryview(pool)
    sent = completed = 0
    started = time.perf_counter()
    # Bounded: each pass sends a group or takes completions or sleeps; the
    # deadline catches a stuck writer.
    deadline = time.monotonic() + 600
    while completed < groups * len(lengths):
        progressed = False
        if sent < groups and sender.send(view, lengths, acks=1):
            sent += 1
            progressed = True
        taken = len(sender.drain())
        completed += taken
        if not progressed and not taken:
            if sent < groups:
                sender.sleep(group_bytes, len(lengths))
            else:
                sender.sleep(0, 0)
        if time.monotonic() > deadline:
            raise RuntimeError("the writer stopped answering")
    return Chunk(
        time.perf_counter() - started,
        time.process_time() - cpu_before,
        sum(writer.cpu_times()[:2]) - writer_before,
    )


def plain_chunk(fd: int, pieces: list[bytes], total: int) -> Chunk:
    piece_bytes = sum(map(len, pieces))
    passes = max(1, total // piece_bytes)
    cpu_before = time.process_time()
    started = time.perf_counter()
    for _ in range(passes):
        for piece in pieces:
            os.write(fd, piece)
    return Chunk(time.perf_counter() - started, time.process_time() - cpu_before)


def bench_throughput(args: argparse.Namespace, root: Path) -> list[float]:
    pool = batch_pool(args.batch_kib, args.record_bytes, args.reserve)
    joined = b"".join(pool)
    lengths = np.array([len(batch) for batch in pool], dtype=np.int64)
    step = args.plain_write_kib * 1024
    pieces = [joined[i : i + step] for i in range(0, len(joined), step)]
    total = args.total_mib * MIB
    chunk = args.chunk_mib * MIB
    print(
        f"throughput: {args.total_mib} MiB per side per round, batches of "
        f"{len(pool[0])} bytes ({args.batch_kib * 1024 // args.record_bytes} "
        f"records of {args.record_bytes} B), {args.reserve} batches per "
        f"publish, plain os.write of {args.plain_write_kib} KiB, alternating "
        f"{args.chunk_mib} MiB chunks"
    )
    ratios = []
    for round_number in range(args.rounds):
        harness = WriterHarness(
            root / f"throughput-{round_number}",
            net_procs=1,
            ring_bytes=args.ring_mib * MIB,
            flush_ms=args.flush_ms,
            segment_bytes=(1 << 31) - 1,
        )
        try:
            [index] = harness.create_topic("bench", 1)
            writer = psutil.Process(harness.start_writer().pid)
            sender = Sender(harness, [index])
            if args.warmup_mib:
                # Untimed: both processes touch every page of the ring once,
                # as in a broker that has been running for a while.
                push_chunk(sender, joined, lengths, args.warmup_mib * MIB, writer)
            counted = {
                name: harness.counter(name)
                for name in ("writer_bytes", "writer_turns", "writer_batches")
            }
            fd = os.open(
                harness.data_dir / "plain.bin",
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                0o644,
            )
            writer_chunks: list[Chunk] = []
            plain_chunks: list[Chunk] = []
            gc.disable()
            try:
                for number in range(max(1, total // chunk)):
                    # Alternate which side goes first.
                    if number % 2:
                        writer_chunks.append(
                            push_chunk(sender, joined, lengths, chunk, writer)
                        )
                        plain_chunks.append(plain_chunk(fd, pieces, chunk))
                    else:
                        plain_chunks.append(plain_chunk(fd, pieces, chunk))
                        writer_chunks.append(
                            push_chunk(sender, joined, lengths, chunk, writer)
                        )
            finally:
                gc.enable()
                os.close(fd)
            written = harness.counter("writer_bytes") - counted["writer_bytes"]
            plain_written = os.path.getsize(harness.data_dir / "plain.bin")
            turns = harness.counter("writer_turns") - counted["writer_turns"]
            batches = harness.counter("writer_batches") - counted["writer_batches"]
            for writer in harness.writers:
                writer.stop()
        finally:
            harness.close()
        writer_rate = written / sum(c.seconds for c in writer_chunks)
        plain_rate = plain_written / sum(c.seconds for c in plain_chunks)
        plain_cpu = sum(c.cpu for c in plain_chunks) / (plain_written / MIB)
        writer_cpu = sum(c.writer_cpu for c in writer_chunks) / (written / MIB)
        sender_cpu = sum(c.cpu for c in writer_chunks) / (written / MIB)
        ratios.append(writer_rate / plain_rate)
        print(
            f"  round {round_number}: plain os.write {plain_rate / MIB:8.1f} MiB/s"
            f"   writer process {writer_rate / MIB:8.1f} MiB/s"
            f"   ratio {writer_rate / plain_rate:.2f}"
            f"   ({written / MIB:.0f} MiB, {batches / max(turns, 1):.1f}"
            " batches per turn)"
        )
        print(
            f"    CPU ms per MiB: plain {plain_cpu * 1e3:.2f}, writer process"
            f" {writer_cpu * 1e3:.2f} (ratio {plain_cpu / writer_cpu:.2f}),"
            f" sender {sender_cpu * 1e3:.2f}; load average"
            f" {os.getloadavg()[0]:.1f}"
        )
        if args.verbose:
            print(
                "    per chunk, MiB/s (plain/writer): "
                + " ".join(
                    f"{chunk / p.seconds / MIB:.0f}/{chunk / w.seconds / MIB:.0f}"
                    for p, w in zip(plain_chunks, writer_chunks, strict=True)
                )
            )
    print(f"  ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    return ratios


def run_streams(
    harness: WriterHarness,
    sender: Sender,
    payload: bytes,
    streams: int,
    seconds: float,
) -> tuple[float, float]:
    """Batches per second with ``streams`` one-at-a-time acks=-1 streams,
    and fdatasyncs per batch."""
    length = np.array([len(payload)], dtype=np.int64)
    view = memoryview(payload)
    in_flight = 0
    completed = 0
    fsyncs_before = harness.counter("writer_fsyncs")
    started = time.perf_counter()
    deadline = started + seconds
    # Bounded by ``seconds`` (plus the drain of the last requests).
    while True:
        now = time.perf_counter()
        while now < deadline and in_flight < streams and sender.send(view, length, -1):
            in_flight += 1
        taken = len(sender.drain())
        in_flight -= taken
        completed += taken
        if now >= deadline and in_flight == 0:
            break
        if not taken:
            can_send = now < deadline and in_flight < streams
            sender.sleep(len(payload), 1 if can_send else 0)
        if now > deadline + 60:
            raise RuntimeError("the writer stopped answering")
    elapsed = time.perf_counter() - started
    fsyncs = harness.counter("writer_fsyncs") - fsyncs_before
    return completed / elapsed, fsyncs / max(completed, 1)


def bench_streams(args: argparse.Namespace, root: Path) -> float:
    payload = bytes(batch_pool(args.batch_kib, args.record_bytes, 1)[0])
    harness = WriterHarness(
        root / "streams", net_procs=1, ring_bytes=args.ring_mib * MIB
    )
    try:
        indexes = harness.create_topic("bench", args.partitions)
        harness.start_writer()
        sender = Sender(harness, indexes)
        print(
            f"acks=-1: batches of {len(payload)} bytes, {args.seconds:.0f} s each,"
            f" {args.partitions} partition(s); each stream waits for its"
            " completion before sending again"
        )
        results: dict[int, list[float]] = {}
        for streams in (1, args.streams, 1):
            rate, per_batch = run_streams(
                harness, sender, payload, streams, args.seconds
            )
            results.setdefault(streams, []).append(rate)
            print(
                f"  {streams:3d} stream(s): {rate:8.1f} batches/s"
                f"   {per_batch:.3f} fdatasync per batch"
            )
        for writer in harness.writers:
            writer.stop()
    finally:
        harness.close()
    single = sum(results[1]) / len(results[1])
    speedup = results[args.streams][0] / single
    print(
        f"  {args.streams} streams / 1 stream (mean of the runs before and after):"
        f" {speedup:.1f}x"
    )
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-kib", type=int, default=16)
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--reserve", type=int, default=16, help="batches per publish")
    parser.add_argument("--plain-write-kib", type=int, default=64)
    parser.add_argument("--ring-mib", type=int, default=64)
    parser.add_argument(
        "--warmup-mib",
        type=int,
        default=None,
        help="untimed writer bytes before the chunks (default: --ring-mib)",
    )
    parser.add_argument("--flush-ms", type=int, default=600_000)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="per-chunk rates")
    args = parser.parse_args()
    if args.warmup_mib is None:
        args.warmup_mib = args.ring_mib

    root = Path(tempfile.mkdtemp(prefix="bench-writer-", dir=args.dir))
    try:
        if not args.skip_throughput:
            bench_throughput(args, root)
        if not args.skip_streams:
            bench_streams(args, root)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
