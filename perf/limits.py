"""The ``limits`` subcommand: this machine's ceilings, measured in the same run.

A broker figure means little without the machine's own limits next to it,
measured on the same boot, the same noisy neighbours, the same minute:

- ``tcp_loopback``: one process sends large buffers (``sendall``) over a
  127.0.0.1 TCP connection to a second process that drains them.
- ``sendfile``: ``os.sendfile`` from a page-cached file to a loopback socket
  drained by a second process - the Fetch path's ceiling.
- ``pagecache_write``: sequential ``os.write`` of NEW data into new files
  (no fsync). New pages cost far more than rewriting warm ones on this VM
  (see RESULTS.md), so this writes as much new data as a run would
  (``--write-bytes``) and keeps every file until all repeats are done, so
  no repeat reuses pages a previous one freed. ``pagecache_rewrite``
  (rewriting one small file, warm pages) is measured too, only to show the
  difference; do not quote it as the ceiling.
- ``memcpy``: single-thread copy between two pre-touched numpy buffers.

Every sample is bounded by its byte count and ``--seconds``; each
measurement is repeated ``--repeat`` times and the median sample (the lower
middle one for an even count) is reported, all samples kept in ``params``.

Receiver processes are started with the ``spawn`` method, connect back to
the sender on 127.0.0.1 and report the byte count they saw, so a short
transfer cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_seconds_argument,
    positive_int,
    size_argument,
)
from perf.harness import (
    NANOS_PER_SECOND,
    Bounds,
    Clock,
    ThroughputSeries,
    TimelinePoint,
    gc_paused,
)
from perf.report import Measurement, Phase, RunResult

ACK = struct.Struct("<q")
KINDS = ("tcp", "sendfile", "write", "memcpy")


@dataclass
class Sample:
    """One timed transfer."""

    nbytes: int
    seconds: float
    stop_reason: str
    timeline: list[TimelinePoint] = field(default_factory=list)

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


def _drain(port: int, buffer_bytes: int, timeout_s: float) -> None:
    """Receiver process: read everything until EOF, then report the count."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        view = memoryview(bytearray(buffer_bytes))
        total = 0
        with gc_paused():
            while True:
                received = sock.recv_into(view)
                if received == 0:
                    break
                total += received
        sock.sendall(ACK.pack(total))


@contextmanager
def _loopback_receiver(buffer_bytes: int, timeout_s: float) -> Iterator[socket.socket]:
    """A connected socket whose peer is a receiver process draining it."""
    context = multiprocessing.get_context("spawn")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(timeout_s)
        port = listener.getsockname()[1]
        receiver = context.Process(
            target=_drain, args=(port, buffer_bytes, timeout_s), daemon=True
        )
        receiver.start()
        try:
            connection, _ = listener.accept()
            # Blocking calls bounded by the kernel (SO_SNDTIMEO/SO_RCVTIMEO):
            # Python's own timeout mode would make the socket non-blocking,
            # and os.sendfile would then fail with EAGAIN.
            connection.settimeout(None)
            limit = struct.pack("ll", int(timeout_s), 0)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            with connection:
                yield connection
        finally:
            receiver.join(timeout=timeout_s)
            if receiver.is_alive():
                receiver.terminate()
                receiver.join(timeout=5)


def _finish_stream(connection: socket.socket, sent: int) -> None:
    """Close our side and wait until the receiver has counted every byte."""
    connection.shutdown(socket.SHUT_WR)
    ack = b""
    while len(ack) < ACK.size:
        part = connection.recv(ACK.size - len(ack))
        if not part:
            break
        ack += part
    if len(ack) != ACK.size:
        raise PerfError("loopback receiver closed without reporting its byte count")
    received = ACK.unpack(ack)[0]
    if received != sent:
        raise PerfError(f"loopback receiver got {received} bytes, {sent} were sent")


def measure_tcp_loopback(
    total_bytes: int, chunk_bytes: int, max_seconds: float, clock: Clock, phase: Phase
) -> Sample:
    """Large ``sendall`` calls to a receiver process over 127.0.0.1."""
    payload = memoryview(os.urandom(chunk_bytes))
    with _loopback_receiver(chunk_bytes, max_seconds + 30) as connection:
        run = Bounds(total_bytes, max_seconds).start(clock)
        series = ThroughputSeries(run.started_ns)
        sent = 0
        with gc_paused():
            while not run.should_stop(sent):
                size = min(chunk_bytes, run.remaining(sent))
                connection.sendall(payload[:size])
                sent += size
                series.add(0, size, clock.now_ns())
                phase.advance(size)
            reason = run.stop_reason(sent) or "count"
            _finish_stream(connection, sent)
        seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    return Sample(sent, seconds, reason, series.points())


def measure_sendfile(
    total_bytes: int,
    file_bytes: int,
    directory: Path,
    max_seconds: float,
    clock: Clock,
    phase: Phase,
) -> Sample:
    """``os.sendfile`` from a page-cached file to a loopback receiver process.

    The file is written and read once before timing, so every byte comes
    from the page cache; it is sent over and over until ``total_bytes``.
    """
    path = directory / "sendfile-source.bin"
    _write_file(path, file_bytes)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            # Read it once so the timed part never waits on the disk.
            while os.read(fd, 1 << 20):
                pass
            with _loopback_receiver(1 << 20, max_seconds + 30) as connection:
                out_fd = connection.fileno()
                run = Bounds(total_bytes, max_seconds).start(clock)
                series = ThroughputSeries(run.started_ns)
                sent = 0
                position = 0
                with gc_paused():
                    while not run.should_stop(sent):
                        count = min(file_bytes - position, run.remaining(sent))
                        done = os.sendfile(out_fd, fd, position, count)
                        if done == 0:
                            raise PerfError(
                                f"sendfile returned 0 at position {position}"
                            )
                        sent += done
                        position = (position + done) % file_bytes
                        series.add(0, done, clock.now_ns())
                        phase.advance(done)
                    reason = run.stop_reason(sent) or "count"
                    _finish_stream(connection, sent)
                seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return Sample(sent, seconds, reason, series.points())


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _write_file(path: Path, size: int) -> None:
    chunk = memoryview(os.urandom(min(size, 1 << 20)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            part = chunk[: min(left, len(chunk))]
            _write_all(fd, part)
            left -= len(part)
    finally:
        os.close(fd)


def measure_pagecache_write(
    path: Path,
    total_bytes: int,
    chunk_bytes: int,
    max_seconds: float,
    clock: Clock,
    phase: Phase,
) -> Sample:
    """Sequential writes of new data into the new file ``path`` (kept)."""
    chunk = memoryview(os.urandom(chunk_bytes))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        run = Bounds(total_bytes, max_seconds).start(clock)
        series = ThroughputSeries(run.started_ns)
        written = 0
        with gc_paused():
            while not run.should_stop(written):
                part = chunk[: min(chunk_bytes, run.remaining(written))]
                _write_all(fd, part)
                written += len(part)
                series.add(0, len(part), clock.now_ns())
                phase.advance(len(part))
        reason = run.stop_reason(written) or "count"
        seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    finally:
        os.close(fd)
    return Sample(written, seconds, reason, series.points())


def measure_pagecache_rewrite(
    path: Path,
    total_bytes: int,
    file_bytes: int,
    chunk_bytes: int,
    max_seconds: float,
    clock: Clock,
    phase: Phase,
) -> Sample:
    """Rewrite one small file over and over: warm pages, for contrast only."""
    _write_file(path, file_bytes)
    chunk = memoryview(os.urandom(chunk_bytes))
    fd = os.open(path, os.O_WRONLY)
    try:
        run = Bounds(total_bytes, max_seconds).start(clock)
        series = ThroughputSeries(run.started_ns)
        written = 0
        position = 0
        with gc_paused():
            while not run.should_stop(written):
                size = min(chunk_bytes, file_bytes - position, run.remaining(written))
                done = os.pwrite(fd, chunk[:size], position)
                written += done
                position = (position + done) % file_bytes
                series.add(0, done, clock.now_ns())
                phase.advance(done)
        reason = run.stop_reason(written) or "count"
        seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return Sample(written, seconds, reason, series.points())


def measure_memcpy(
    total_bytes: int, buffer_bytes: int, max_seconds: float, clock: Clock, phase: Phase
) -> Sample:
    """Single-thread copies between two pre-touched buffers (numpy copyto)."""
    source = np.frombuffer(os.urandom(buffer_bytes), dtype=np.uint8)
    target = np.ones(buffer_bytes, dtype=np.uint8)
    # One untimed copy so both buffers' pages are mapped and warm.
    np.copyto(target, source)
    run = Bounds(total_bytes, max_seconds).start(clock)
    series = ThroughputSeries(run.started_ns)
    copied = 0
    with gc_paused():
        while not run.should_stop(copied):
            size = min(buffer_bytes, run.remaining(copied))
            np.copyto(target[:size], source[:size])
            copied += size
            series.add(0, size, clock.now_ns())
            phase.advance(size)
    reason = run.stop_reason(copied) or "count"
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    if copied and not np.array_equal(target, source):
        raise PerfError("memcpy check failed: target differs from source")
    return Sample(copied, seconds, reason, series.points())


def measure_limit(
    context: RunContext,
    kind: str,
    total: int,
    repeat: int,
    measure: Callable[[Phase], Sample],
    params: dict[str, object],
    note: str,
) -> Measurement:
    """Take ``repeat`` samples of one ceiling and return ``machine.<kind>``:
    the median sample as the figure, every sample's GB/s kept in params.

    ``measure`` runs one sample under the progress phase it is given; each
    sample's rate is noted on the progress output as it ends.
    """
    samples = []
    for index in range(repeat):
        phase = context.progress.phase(f"{kind} {index + 1}/{repeat}", total, unit="B")
        sample = measure(phase)
        phase.finish()
        context.progress.note(
            f"{kind} sample {index + 1}/{repeat}: {sample.gb_per_s:.3f} GB/s "
            f"({sample.nbytes:,} B in {sample.seconds:.2f} s, "
            f"stop: {sample.stop_reason})"
        )
        samples.append(sample)

    ordered = sorted(samples, key=lambda s: s.gb_per_s)
    median = ordered[(len(ordered) - 1) // 2]
    rates = [s.gb_per_s for s in samples]
    return Measurement(
        name=f"machine.{kind}",
        system="machine",
        workload=kind,
        records=0,
        bytes=median.nbytes,
        seconds=median.seconds,
        timeline=median.timeline,
        params={
            **params,
            "samples_gb_per_s": [round(r, 4) for r in rates],
            "stop_reasons": [s.stop_reason for s in samples],
            "spread_gb_per_s": round(max(rates) - min(rates), 4),
            "mean_gb_per_s": round(statistics.fmean(rates), 4),
        },
        note=note,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bytes",
        type=size_argument,
        default="2GiB",
        help="bytes per tcp/sendfile/memcpy sample",
    )
    parser.add_argument(
        "--write-bytes",
        type=size_argument,
        default="1GiB",
        help="NEW bytes per page-cache write sample: set it to what the run you "
        "compare with writes (records x record size)",
    )
    parser.add_argument(
        "--file-bytes",
        type=size_argument,
        default="256MiB",
        help="size of the page-cached file sendfile sends from (and of the "
        "rewritten file)",
    )
    parser.add_argument(
        "--chunk", type=size_argument, default="1MiB", help="bytes per send/write call"
    )
    parser.add_argument(
        "--memcpy-buffer",
        type=size_argument,
        default="64MiB",
        help="bytes per memcpy (larger than the CPU caches)",
    )
    add_seconds_argument(parser, 10.0, "time bound per sample")
    parser.add_argument(
        "--repeat", type=positive_int, default=3, help="samples per measurement"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory for the files (default: a new temporary directory); put "
        "it on the file system the broker's data dir uses",
    )
    parser.add_argument(
        "--only",
        default=",".join(KINDS),
        help=f"comma-separated subset of {','.join(KINDS)}",
    )


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    kinds = [k.strip() for k in str(args.only).split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise PerfError(
            f"--only: unknown measurement(s) {unknown}; choose from {KINDS}"
        )
    for label, value in (
        ("--chunk", args.chunk),
        ("--file-bytes", args.file_bytes),
        ("--memcpy-buffer", args.memcpy_buffer),
    ):
        if value < 1:
            raise PerfError(f"{label} must be at least 1 byte")

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="ringbus-perf-limits-", dir=args.dir))
    try:
        return _run_in(base, kinds, args, context)
    finally:
        for leftover in base.glob("*"):
            leftover.unlink(missing_ok=True)
        base.rmdir()


def _run_in(
    base: Path, kinds: list[str], args: argparse.Namespace, context: RunContext
) -> RunResult:
    result = RunResult()
    clock = context.clock
    common = {"seconds_bound": args.seconds, "repeat": args.repeat}

    if "tcp" in kinds:
        result.measurements.append(
            measure_limit(
                context,
                "tcp_loopback",
                args.bytes,
                args.repeat,
                lambda phase: measure_tcp_loopback(
                    args.bytes, args.chunk, args.seconds, clock, phase
                ),
                {**common, "bytes_bound": args.bytes, "chunk_bytes": args.chunk},
                "sendall over 127.0.0.1 to a second process",
            )
        )

    if "sendfile" in kinds:
        result.measurements.append(
            measure_limit(
                context,
                "sendfile",
                args.bytes,
                args.repeat,
                lambda phase: measure_sendfile(
                    args.bytes, args.file_bytes, base, args.seconds, clock, phase
                ),
                {**common, "bytes_bound": args.bytes, "file_bytes": args.file_bytes},
                "os.sendfile from a page-cached file to a 127.0.0.1 socket",
            )
        )

    if "write" in kinds:
        # Every fresh-write file stays until all repeats are done, so no
        # sample writes into pages a previous sample freed.
        counter = iter(range(args.repeat))
        result.measurements.append(
            measure_limit(
                context,
                "pagecache_write",
                args.write_bytes,
                args.repeat,
                lambda phase: measure_pagecache_write(
                    base / f"fresh-{next(counter)}.bin",
                    args.write_bytes,
                    args.chunk,
                    args.seconds,
                    clock,
                    phase,
                ),
                {**common, "bytes_bound": args.write_bytes, "chunk_bytes": args.chunk},
                "sequential write of new data into new files, no fsync",
            )
        )
        for path in base.glob("fresh-*.bin"):
            path.unlink()

        result.measurements.append(
            measure_limit(
                context,
                "pagecache_rewrite",
                args.write_bytes,
                args.repeat,
                lambda phase: measure_pagecache_rewrite(
                    base / "rewrite.bin",
                    args.write_bytes,
                    args.file_bytes,
                    args.chunk,
                    args.seconds,
                    clock,
                    phase,
                ),
                {
                    **common,
                    "bytes_bound": args.write_bytes,
                    "file_bytes": args.file_bytes,
                },
                "rewrite of one small file (warm pages): contrast only, not a ceiling",
            )
        )

    if "memcpy" in kinds:
        result.measurements.append(
            measure_limit(
                context,
                "memcpy",
                args.bytes,
                args.repeat,
                lambda phase: measure_memcpy(
                    args.bytes, args.memcpy_buffer, args.seconds, clock, phase
                ),
                {
                    **common,
                    "bytes_bound": args.bytes,
                    "buffer_bytes": args.memcpy_buffer,
                },
                "single-thread numpy copyto between pre-touched buffers",
            )
        )

    return result


COMMAND = Command(
    name="limits",
    help="measure this machine's ceilings (loopback TCP, sendfile, page cache, memcpy)",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
