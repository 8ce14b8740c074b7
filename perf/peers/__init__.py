"""The ``peers`` subcommand: the same workload shapes against other log servers.

Systems: Redis Streams (``perf.peers.redis_streams``) and NATS JetStream
(``perf.peers.nats_jetstream``). Each is started by the harness in a
temporary directory on 127.0.0.1 and stopped by its PID. A system whose
server binary or Python client is missing is skipped with a message; a
system that is installed but fails is an error (the other system still
runs, the result file is written, the exit code is 1).

Per record size (``--sizes``): produce, consume, the native tool figure
(Redis), and end-to-end latency at a fixed rate (Redis). Every loop is
bounded by ``--records`` and ``--seconds``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_rate_argument,
    add_records_argument,
    add_seconds_argument,
    add_sizes_argument,
    add_systems_argument,
    positive_float,
    positive_int,
)
from perf.harness import STAMP, Bounds
from perf.report import Measurement, Phase, RunResult, Skipped
from perf.servers import ServerStartError

SYSTEMS = ("redis", "nats")


def missing_requirement(
    binaries: tuple[str, ...], module: str, install: str
) -> str | None:
    """Why a peer cannot run here, or None when it can."""
    for binary in binaries:
        if shutil.which(binary) is None:
            return f"{binary} is not installed ({install})"
    if importlib.util.find_spec(module) is None:
        return f"Python module {module} is not installed (pip install the perf extra)"
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_systems_argument(parser, SYSTEMS)
    add_sizes_argument(parser)
    add_records_argument(parser, 500_000, "records per produce run")
    add_seconds_argument(parser, 30.0, "time bound per phase")
    parser.add_argument(
        "--pipeline", type=positive_int, default=1000, help="Redis XADD per pipeline"
    )
    parser.add_argument(
        "--read-count", type=positive_int, default=10_000, help="Redis XREAD COUNT"
    )
    parser.add_argument(
        "--native-records",
        type=positive_int,
        default=1_000_000,
        help="records for redis-benchmark",
    )
    parser.add_argument(
        "--native-clients", type=positive_int, default=50, help="redis-benchmark -c"
    )
    parser.add_argument(
        "--native-pipeline", type=positive_int, default=100, help="redis-benchmark -P"
    )
    add_rate_argument(parser, 10_000.0, "records/s for the fixed-rate latency run")
    parser.add_argument(
        "--latency-seconds",
        type=positive_float,
        default=10.0,
        help="length of the fixed-rate latency run",
    )
    parser.add_argument(
        "--fetch-batch",
        type=positive_int,
        default=10_000,
        help="NATS pull consumer records per fetch",
    )
    parser.add_argument(
        "--keep-server-dirs",
        action="store_true",
        help="keep each server's temporary directory (data and log) after the run",
    )
    parser.add_argument(
        "--sync-records",
        type=positive_int,
        default=20_000,
        help="records for the one-at-a-time NATS publish",
    )


def _phase_maker(
    context: RunContext, system: str, size: int
) -> Callable[[str, int], Phase]:
    def make(workload: str, total: int) -> Phase:
        return context.progress.phase(f"{system} {workload} {size} B", total)

    return make


def _note_directory(
    context: RunContext, args: argparse.Namespace, directory: Path
) -> None:
    if args.keep_server_dirs:
        context.progress.note(f"server directory (kept): {directory}")


def _note(context: RunContext, result: RunResult, start: int) -> None:
    for m in result.measurements[start:]:
        rate = m.records_per_s or 0.0
        line = (
            f"{m.name} {m.record_bytes} B: {m.records:,} records in "
            f"{m.seconds:.2f} s = "
            f"{rate:,.0f} records/s, {m.mb_per_s:,.1f} MB/s"
        )
        if m.latency is not None:
            line += (
                f"; p50 {m.latency.p50_us:,.0f} us, p99 {m.latency.p99_us:,.0f} us, "
                f"p99.9 {m.latency.p99_9_us:,.0f} us, max {m.latency.max_us:,.0f} us"
            )
        rewrites = m.params.get("aof_rewrites_during", 0)
        if rewrites:
            line += f" ({rewrites} AOF rewrites during)"
        context.progress.note(line)


def _run_redis(
    args: argparse.Namespace, context: RunContext, result: RunResult
) -> None:
    from perf.peers import redis_streams as rs

    clock = context.clock
    bounds = Bounds(args.records, args.seconds)
    if rs.client_name() != "redis-py+hiredis":
        context.progress.note(
            "redis-py parses replies in Python (hiredis is not installed): "
            "Redis consume figures are bound by this client"
        )
    with rs.start_server(args.keep_server_dirs) as server:
        _note_directory(context, args, server.directory)
        port = server.port

        def keep(measurements: list[Measurement], rewrites_before: int) -> None:
            # Redis rewrites its AOF in a forked child by itself; a rewrite
            # during a phase explains a latency tail, so say so next to it.
            during = rs.aof_rewrites(port) - rewrites_before
            for m in measurements:
                m.params["aof_rewrites_during"] = during
            result.measurements.extend(measurements)

        for size in args.sizes:
            phase_for = _phase_maker(context, "redis", size)
            first = len(result.measurements)
            key = f"perf-{size}"
            latency_key = f"perf-latency-{size}"

            before = rs.aof_rewrites(port)
            phase = phase_for("produce", args.records)
            produced = rs.produce(port, key, size, bounds, args.pipeline, clock, phase)
            phase.finish()
            keep([produced], before)

            before = rs.aof_rewrites(port)
            phase = phase_for("consume", produced.records)
            consumed = rs.consume(
                port,
                key,
                size,
                produced.records,
                args.read_count,
                args.seconds,
                clock,
                phase,
            )
            phase.finish()
            keep([consumed], before)
            rs.delete_stream(port, key)

            before = rs.aof_rewrites(port)
            native = rs.native_benchmark(
                port,
                size,
                args.native_records,
                args.native_clients,
                args.native_pipeline,
                args.seconds * 4,
            )
            keep([native], before)

            before = rs.aof_rewrites(port)
            phase = phase_for("latency", int(args.rate * args.latency_seconds))
            latencies = rs.latency(
                port,
                latency_key,
                size,
                args.rate,
                args.latency_seconds,
                args.read_count,
                clock,
                phase,
            )
            phase.finish()
            keep(latencies, before)
            rs.delete_stream(port, latency_key)
            _note(context, result, first)


def _run_nats(args: argparse.Namespace, context: RunContext, result: RunResult) -> None:
    from perf.peers import nats_jetstream as nj

    bounds = Bounds(args.records, args.seconds)
    sync_bounds = Bounds(min(args.sync_records, args.records), args.seconds)
    with nj.start_server(args.keep_server_dirs) as server:
        _note_directory(context, args, server.directory)
        for size in args.sizes:
            first = len(result.measurements)
            result.measurements.extend(
                nj.run_async(
                    nj.measure_size(
                        server.port,
                        size,
                        bounds,
                        sync_bounds,
                        args.fetch_batch,
                        context.clock,
                        _phase_maker(context, "nats", size),
                    )
                )
            )
            _note(context, result, first)


def _redis_client_errors() -> tuple[type[Exception], ...]:
    from perf.peers import redis_streams

    return redis_streams.client_errors()


def _nats_client_errors() -> tuple[type[Exception], ...]:
    from perf.peers import nats_jetstream

    return nats_jetstream.client_errors()


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    systems = [s.strip() for s in str(args.systems).split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise PerfError(
            f"--systems: unknown system(s) {unknown}; choose from {SYSTEMS}"
        )
    too_small = [s for s in args.sizes if s < STAMP.size]
    if too_small or not args.sizes:
        raise PerfError(
            f"--sizes: every size must be at least {STAMP.size} bytes, got {args.sizes}"
        )

    result = RunResult()
    client_errors = {
        "redis": _redis_client_errors,
        "nats": _nats_client_errors,
    }
    runners = {
        "redis": (
            ("redis-server", "redis-benchmark"),
            "redis",
            "apt-get install redis-server",
            _run_redis,
        ),
        "nats": (("nats-server",), "nats", "apt-get install nats-server", _run_nats),
    }
    for system in systems:
        binaries, module, install, runner = runners[system]
        reason = missing_requirement(binaries, module, install)
        if reason is not None:
            result.skipped.append(Skipped(system, reason))
            context.progress.note(f"skipping {system}: {reason}")
            continue
        handled: tuple[type[Exception], ...] = (
            PerfError,
            ServerStartError,
            OSError,
            *client_errors[system](),
        )
        try:
            runner(args, context, result)
        except handled as exc:
            result.errors.append(f"{system}: {exc}")
            context.progress.note(f"[bold red]{system} failed:[/] {exc}")
    return result


COMMAND = Command(
    name="peers",
    help="the same workloads against Redis Streams and NATS JetStream",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
