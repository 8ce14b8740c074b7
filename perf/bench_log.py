"""Log storage benchmark: PartitionLog.append against plain os.write, and
recovery time with 1 segment against 20 segments of data.

Append: 1 KiB records in 16 KiB batches, ``--group`` batches per append
call, against ``os.write`` of the same bytes, pre-joined per group and
written in calls of at most ``--plain-write-kib`` (64 KiB, as in
perf/bench_writer.py: single writes of many MiB are slow on this VM, see
WRITE_BYTES in broker/log/segment.py), to a file in the same directory.
``--columns`` appends the way the writer process does: each group is one
buffer (a run of batches in a ring), its baseOffsets rewritten with one
numpy scatter, its header fields handed to ``PartitionLog.append_assigned``
as columns; without it, each batch is its own memoryview for
``PartitionLog.append``, which reads every header.
Both sides write ``--total-mib`` of new data per round into fresh files,
timed in alternating chunks (``--chunk-mib``), so both meet the same
page-cache conditions: on this kind of VM, whether a page was recently
freed (fast) or handed back to the host (10-40 us to first touch) decides
throughput more than anything the code does, and it drifts during a run.
Every file stays until the end. No fsync on either side: this measures the
page-cache path that acks=1 waits for.

Recovery: a log of N sealed segments plus an active one holding a flushed
part and an unflushed tail (same sizes in both cases), stopped without a
checkpoint; then the time of PartitionLog.open, which validates the tail.
Each run restores the same state file, so every open does the same work.

Run: .venv/bin/python perf/bench_log.py [--total-mib 1024] [--rounds 2]
     [--group 1024 --columns]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

# Runnable from a checkout whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from broker.log.batch import build_batch
from broker.log.partition import STATE_FILE, LogConfig, PartitionLog
from broker.log.segment import BatchColumns

MIB = 1 << 20


def _records_per_batch(batch_kib: int, record_bytes: int) -> int:
    return max(1, batch_kib * 1024 // record_bytes)


def _batch_pool(batch_kib: int, record_bytes: int, count: int) -> list[bytearray]:
    records_per_batch = _records_per_batch(batch_kib, record_bytes)
    pool = []
    for number in range(count):
        value = bytes([number % 251]) * (record_bytes - 24)
        records = [
            (None, value, [], 1_700_000_000_000 + i) for i in range(records_per_batch)
        ]
        pool.append(build_batch(records))
    return pool


def _groups(pool: list[bytearray], group: int) -> list[list[bytearray]]:
    return [pool[start : start + group] for start in range(0, len(pool), group)]


class _ColumnGroup:
    """One group for append_assigned: its bytes and its header columns."""

    def __init__(self, group: list[bytearray]) -> None:
        self.data = bytearray(b"".join(group))
        self.bytes = np.frombuffer(self.data, dtype=np.uint8)
        self.sizes = np.array([len(batch) for batch in group], dtype=np.int64)
        self.positions = np.cumsum(self.sizes) - self.sizes
        self.deltas = np.array(
            [struct.unpack_from(">i", batch, 23)[0] for batch in group],
            dtype=np.int64,
        )
        self.max_timestamps = np.array(
            [struct.unpack_from(">q", batch, 35)[0] for batch in group],
            dtype=np.int64,
        )

    def append(self, log: PartitionLog) -> None:
        """What the writer does per partition and turn."""
        bases = log.next_base_offsets(self.deltas)
        self.bytes[self.positions[:, None] + _BASE_OFFSET_BYTES] = (
            bases.astype(">i8").view(np.uint8).reshape(-1, 8)
        )
        columns = BatchColumns(
            bases, bases + self.deltas, self.max_timestamps, self.sizes
        )
        log.append_assigned([memoryview(self.data)], columns, 0)


_BASE_OFFSET_BYTES = np.arange(8, dtype=np.int64)


def bench_append_pair(
    directory: Path,
    groups: list[list[bytearray]],
    total: int,
    chunk: int,
    *,
    columns: bool,
    plain_write: int,
) -> tuple[float, float]:
    """Bytes per second of plain os.write and of PartitionLog.append (or
    append_assigned), timed in alternating chunks so both meet the same
    page-cache conditions."""
    joined = [
        group_bytes[start : start + plain_write]
        for group_bytes in (b"".join(group) for group in groups)
        for start in range(0, len(group_bytes), plain_write)
    ]
    views = [[memoryview(batch) for batch in group] for group in groups]
    column_groups = [_ColumnGroup(group) for group in groups]
    pass_bytes = sum(map(len, joined))
    passes_per_chunk = max(1, chunk // pass_bytes)
    chunks = max(1, total // (passes_per_chunk * pass_bytes))

    fd = os.open(directory / "plain.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    log = PartitionLog.open(directory, "bench", 0, LogConfig(retention_ms=-1))
    plain_seconds = 0.0
    log_seconds = 0.0

    def plain_chunk() -> float:
        start = time.perf_counter()
        for _ in range(passes_per_chunk):
            for data in joined:
                os.write(fd, data)
        return time.perf_counter() - start

    def log_chunk() -> float:
        start = time.perf_counter()
        if columns:
            for _ in range(passes_per_chunk):
                for column_group in column_groups:
                    column_group.append(log)
        else:
            for _ in range(passes_per_chunk):
                for group in views:
                    log.append(group, 0)
        return time.perf_counter() - start

    gc.disable()
    try:
        for number in range(chunks):
            # Alternate which side goes first, so neither always follows.
            if number % 2:
                log_seconds += log_chunk()
                plain_seconds += plain_chunk()
            else:
                plain_seconds += plain_chunk()
                log_seconds += log_chunk()
    finally:
        gc.enable()
        os.close(fd)
        log.close(checkpoint=False)
    written = chunks * passes_per_chunk * pass_bytes
    assert os.path.getsize(directory / "plain.bin") == written
    assert (
        sum(p.stat().st_size for p in (directory / "bench-0").glob("*.log")) == written
    )
    return written / plain_seconds, written / log_seconds


def bench_append(args: argparse.Namespace, root: Path) -> None:
    pool = _batch_pool(args.batch_kib, args.record_bytes, max(64, args.group))
    groups = _groups(pool, args.group)
    total = args.total_mib * MIB
    how = "append_assigned (columns)" if args.columns else "append (views)"
    print(
        f"append: {args.total_mib} MiB per side per round, batches of "
        f"{len(pool[0])} bytes "
        f"({_records_per_batch(args.batch_kib, args.record_bytes)} records), "
        f"{args.group} batches per {how} call, plain os.write of at most "
        f"{args.plain_write_kib} KiB, alternating {args.chunk_mib} MiB chunks"
    )
    ratios = []
    for round_number in range(args.rounds):
        directory = root / f"append-{round_number}"
        directory.mkdir()
        plain, logged = bench_append_pair(
            directory,
            groups,
            total,
            args.chunk_mib * MIB,
            columns=args.columns,
            plain_write=args.plain_write_kib * 1024,
        )
        ratios.append(logged / plain)
        print(
            f"  round {round_number}: plain os.write {plain / MIB:8.1f} MiB/s   "
            f"PartitionLog.append {logged / MIB:8.1f} MiB/s   "
            f"ratio {logged / plain:.2f}"
        )
    print(f"  ratio per round: {', '.join(f'{r:.2f}' for r in ratios)}")


def _build_recovery_log(
    directory: Path, sealed: int, segment_mib: int, tail_mib: int, pool: list[bytearray]
) -> None:
    config = LogConfig(segment_bytes=segment_mib * MIB, retention_ms=-1)
    log = PartitionLog.open(directory, "bench", 0, config)
    views = [memoryview(batch) for batch in pool]

    def fill(until_segments: int, extra: int) -> None:
        # Bounded: each pass appends len(views) batches.
        while True:
            for view in views:
                if (
                    len(log.segment_base_offsets()) > until_segments
                    and log.end_position >= extra
                ):
                    return
                log.append([view], 0)

    fill(sealed, segment_mib * MIB // 2)  # active segment half full, flushed
    log.checkpoint()
    fill(sealed, segment_mib * MIB // 2 + tail_mib * MIB)  # unflushed tail
    log.close(checkpoint=False)


def bench_recovery(args: argparse.Namespace, root: Path) -> None:
    pool = _batch_pool(args.batch_kib, args.record_bytes, 64)
    print(
        f"recovery: segments of {args.segment_mib} MiB, unflushed tail "
        f"{args.tail_mib} MiB in the active segment"
    )
    medians = {}
    for sealed in (0, 19):
        directory = root / f"recovery-{sealed + 1}"
        _build_recovery_log(directory, sealed, args.segment_mib, args.tail_mib, pool)
        state_path = directory / "bench-0" / STATE_FILE
        state = state_path.read_bytes()
        times = []
        for _ in range(args.recovery_runs):
            state_path.write_bytes(state)
            start = time.perf_counter()
            log = PartitionLog.open(
                directory, "bench", 0, LogConfig(segment_bytes=args.segment_mib * MIB)
            )
            times.append(time.perf_counter() - start)
            report = log.recovery
            segments = len(log.segment_base_offsets())
            log.close(checkpoint=False)
        median = medians[sealed + 1] = statistics.median(times)
        print(
            f"  {segments:2d} segments: open+recovery median {median * 1e3:7.1f} ms "
            f"(runs: {', '.join(f'{t * 1e3:.1f}' for t in times)}), "
            f"scanned {len(report.segments_scanned)} segment(s), "
            f"{report.bytes_scanned / MIB:.1f} MiB"
        )
    print(f"  20 segments / 1 segment: {medians[20] / medians[1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-kib", type=int, default=16)
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--group", type=int, default=4, help="batches per append call")
    parser.add_argument("--plain-write-kib", type=int, default=64)
    parser.add_argument(
        "--columns",
        action="store_true",
        help="append as the writer process does (append_assigned)",
    )
    parser.add_argument("--chunk-mib", type=int, default=16, help="alternation unit")
    parser.add_argument("--segment-mib", type=int, default=32)
    parser.add_argument("--tail-mib", type=int, default=8)
    parser.add_argument("--recovery-runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temp dir")
    parser.add_argument("--skip-append", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-log-", dir=args.dir))
    try:
        if not args.skip_append:
            bench_append(args, root)
        if not args.skip_recovery:
            bench_recovery(args, root)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
