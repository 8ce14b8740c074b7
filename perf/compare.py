"""The ``compare`` subcommand: Ringbus, Redis Streams, NATS JetStream and the
machine's limits, the same workload shapes, in one run.

First the latency pair, every size, on a machine that has not yet written
the gigabytes of the throughput phases: end-to-end latency at ``--rate`` for
``--latency-seconds`` through Ringbus (a broker started for it alone), then
through Redis Streams (fixed-rate XADD, a server started for it alone).
Both run in the same state, since the writeback and page-cache churn the
throughput phases leave behind moved Redis p99 from 2.6 ms (alone) to
12 ms (after them) in one pair of runs on this machine.

Then, per record size (``--sizes``, default 100 B and 1 KiB), in this order:

1. Ringbus (one broker started here, a new topic per phase):
   confluent-kafka produce and consume (``--records``), kcat produce and
   consume (``--native-records``), the pipelined generator with 64 KiB
   batches for ``--pipelined-seconds`` followed by a raw pipelined fetch of
   what it wrote;
2. Redis Streams (``perf.peers.redis_streams``): XADD pipeline 1000, XREAD
   COUNT 10000, redis-benchmark ``-c 50 -P 100`` XADD;
3. NATS JetStream (``perf.peers.nats_jetstream``): acked publish (both
   client ways), pull consume.

Then the machine limits (``perf.limits``): loopback TCP, sendfile, and
page-cache write of as much NEW data as the largest pipelined run wrote.
Every measured phase of every system starts after ``sync``, so none pays
for the writeback of what an earlier phase wrote (``settle_writeback``).

The result holds every measurement, the verdict of each target
(``perf.targets``; met/missed with its ratio) in ``summary``, the
side-by-side table in Markdown after the main table, and a PNG of the
target ratios. A system whose tool is missing is skipped, its targets
``not measured``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_acks_argument,
    add_rate_argument,
    add_records_argument,
    add_seconds_argument,
    add_sizes_argument,
    add_systems_argument,
    add_topic_argument,
    positive_float,
    positive_int,
)
from perf.consume import (
    run_client_consume,
    run_kcat_consume,
    run_raw_consume,
)
from perf.harness import STAMP, Bounds
from perf.latency import measure_latency
from perf.produce import (
    add_client_arguments,
    add_pipeline_arguments,
    end_offsets,
    kcat_missing,
    new_topic,
    note_measurement,
    run_client,
    run_kcat_produce,
    run_pipelined,
)
from perf.report import Measurement, Phase, RunResult, Skipped
from perf.ringbus import (
    SYSTEM,
    BrokerTarget,
    add_target_arguments,
    broker_target,
    failures_as_perf_errors,
)
from perf.servers import ServerStartError
from perf.targets import (
    TargetRow,
    evaluate,
    markdown_side_by_side,
    markdown_targets,
    side_by_side,
)

SYSTEMS = ("ringbus", "redis", "nats", "limits")


def settle_writeback() -> None:
    """Write back every dirty page (``sync``) before a measured phase.

    A phase that writes gigabytes leaves them dirty; the next phase would
    then pay for their writeback (the kernel throttles writers past
    ``vm.dirty_background_ratio``). In one run on this machine kcat
    produce of 1 KiB records ran at 128k records/s after the earlier
    phases and at 420k records/s alone; with 2.3 GB dirty beforehand, at
    273k records/s. Every system gets the same clean start.
    """
    os.sync()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_systems_argument(parser, SYSTEMS)
    add_sizes_argument(parser)
    add_records_argument(
        parser,
        1_000_000,
        "records per client-library produce run (Ringbus, Redis, NATS)",
    )
    parser.add_argument(
        "--native-records",
        type=positive_int,
        default=1_000_000,
        help="records for kcat and redis-benchmark",
    )
    parser.add_argument(
        "--pipelined-seconds",
        type=positive_float,
        default=8.0,
        help="length of the pipelined 64 KiB produce run",
    )
    add_seconds_argument(parser, 30.0, "time bound per phase")
    add_rate_argument(parser, 10_000.0, "latency records/s")
    parser.add_argument(
        "--latency-seconds",
        type=positive_float,
        default=10.0,
        help="length of each fixed-rate latency run",
    )
    parser.add_argument(
        "--limit-bytes",
        default="2GiB",
        help="bytes per loopback TCP and sendfile sample",
    )
    parser.add_argument(
        "--limit-repeat", type=positive_int, default=3, help="samples per limit"
    )
    add_acks_argument(parser, "Ringbus acks")
    add_topic_argument(parser, "perf-compare")
    add_pipeline_arguments(parser)
    add_client_arguments(parser)
    add_target_arguments(parser)
    parser.set_defaults(partitions=1)


# -- Ringbus ---------------------------------------------------------------------


class _RingbusPhases:
    """Runs Ringbus phases at one size: each after ``sync``, its
    measurements kept with the broker's description, a failing phase
    costing its figures, not the run."""

    def __init__(
        self,
        target: BrokerTarget,
        context: RunContext,
        size: int,
        result: RunResult,
    ) -> None:
        self.target = target
        self.context = context
        self.size = size
        self.result = result

    def keep(self, m: Measurement) -> None:
        m.params["broker"] = self.target.describe()
        self.result.measurements.append(m)
        note_measurement(self.context, m)

    def phase(self, name: str, work: Any) -> Any:
        settle_writeback()
        try:
            with failures_as_perf_errors(name):
                return work()
        except PerfError as exc:
            self.result.errors.append(f"{SYSTEM} {name} {self.size} B: {exc}")
            self.context.progress.note(
                f"[bold red]{name} {self.size} B failed:[/] {exc}"
            )
            self.target.check_alive()
            return None


def _ringbus_latency(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    size: int,
    result: RunResult,
) -> None:
    """The fixed-rate end-to-end latency run at one size."""
    phases = _RingbusPhases(target, context, size, result)
    latencies = phases.phase(
        "latency",
        lambda: measure_latency(
            target,
            record_bytes=size,
            rate_per_s=args.rate,
            seconds=args.latency_seconds,
            acks=args.acks,
            linger_ms=1.0,
            fetch_wait_ms=100,
            topic_prefix=args.topic,
            clock=context.clock,
            profile=args.profile,
        ),
    )
    for m in latencies or []:
        phases.keep(m)


def _ringbus_size(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    size: int,
    result: RunResult,
) -> int:
    """Every Ringbus throughput phase at one size; returns the bytes the
    pipelined run wrote (for the page-cache limit)."""
    profile = args.profile
    phases = _RingbusPhases(target, context, size, result)
    keep, phase = phases.keep, phases.phase

    # confluent-kafka produce, then consume what it wrote.
    topic = new_topic(args.topic)
    produced = phase(
        "produce-client",
        lambda: run_client(
            target,
            args,
            context,
            record_bytes=size,
            records=args.records,
            seconds=args.seconds,
            topic=topic,
            processes=1,
        ),
    )
    if produced is not None:
        keep(produced)
        consumed = phase(
            "consume-client",
            lambda: run_client_consume(
                target,
                topic,
                1,
                size,
                produced.records,
                args.seconds,
                group=False,
                fetch_max_bytes=64 << 20,
                partition_max_bytes=8 << 20,
                queued_records=2_000_000,
                profile=profile,
            ),
        )
        if consumed is not None:
            keep(consumed)

    # kcat produce, then kcat consume.
    missing = kcat_missing()
    if missing is not None:
        result.skipped.append(Skipped(f"{SYSTEM}.produce-kcat {size} B", missing))
    else:
        topic = new_topic(args.topic)
        produced = phase(
            "produce-kcat",
            lambda: run_kcat_produce(
                target,
                args,
                context,
                record_bytes=size,
                records=args.native_records,
                seconds=args.seconds * 4,
                topic=topic,
            ),
        )
        if produced is not None:
            keep(produced)
            consumed = phase(
                "consume-kcat",
                lambda: run_kcat_consume(
                    target,
                    topic,
                    1,
                    size,
                    produced.records,
                    args.seconds,
                    fetch_max_bytes=64 << 20,
                    partition_max_bytes=8 << 20,
                    profile=profile,
                ),
            )
            if consumed is not None:
                keep(consumed)

    # The pipelined generator, then a raw pipelined fetch of its topic.
    topic = new_topic(args.topic)
    written = 0
    pipelined = phase(
        "produce-pipelined",
        lambda: run_pipelined(
            target,
            args,
            context,
            record_bytes=size,
            records=1 << 40,
            seconds=args.pipelined_seconds,
            topic=topic,
        ),
    )
    if pipelined is not None:
        keep(pipelined)
        written = int(pipelined.params.get("wire_bytes", pipelined.bytes))
        offsets = end_offsets(target, topic, 1)
        consumed = phase(
            "consume-raw",
            lambda: run_raw_consume(
                target,
                topic,
                offsets,
                size,
                args.seconds,
                processes=1,
                in_flight=args.in_flight,
                partition_max_bytes=8 << 20,
                fetch_max_bytes=64 << 20,
                profile=profile,
            ),
        )
        if consumed is not None:
            keep(consumed)
    return written


# -- peers -----------------------------------------------------------------------


def _redis_missing(result: RunResult) -> bool:
    from perf.peers import missing_requirement

    reason = missing_requirement(
        ("redis-server", "redis-benchmark"), "redis", "apt-get install redis-server"
    )
    if reason is not None:
        result.skipped.append(Skipped("redis", reason))
    return reason is not None


def _redis_latency(
    args: argparse.Namespace, context: RunContext, result: RunResult
) -> None:
    """Fixed-rate XADD latency at every size, on a server of its own."""
    from perf.peers import redis_streams as rs

    if _redis_missing(result):
        return
    with rs.start_server() as server:
        port = server.port
        for size in args.sizes:
            before = rs.aof_rewrites(port)
            settle_writeback()
            phase = context.progress.phase(
                f"redis latency {size} B", int(args.rate * args.latency_seconds)
            )
            latencies = rs.latency(
                port,
                f"perf-latency-{size}",
                size,
                args.rate,
                args.latency_seconds,
                10_000,
                context.clock,
                phase,
            )
            phase.finish()
            rs.delete_stream(port, f"perf-latency-{size}")
            rewrites = rs.aof_rewrites(port) - before
            for m in latencies:
                m.params["aof_rewrites_during_size"] = rewrites
                result.measurements.append(m)
                note_measurement(context, m)


def _redis(args: argparse.Namespace, context: RunContext, result: RunResult) -> None:
    """Redis throughput phases at every size (latency: ``_redis_latency``)."""
    from perf.peers import redis_streams as rs

    if _redis_missing(result):
        return
    clock = context.clock
    with rs.start_server() as server:
        port = server.port
        for size in args.sizes:
            key = f"perf-{size}"
            before = rs.aof_rewrites(port)
            settle_writeback()
            phase = context.progress.phase(f"redis produce {size} B", args.records)
            produced = rs.produce(
                port, key, size, Bounds(args.records, args.seconds), 1000, clock, phase
            )
            phase.finish()
            settle_writeback()
            phase = context.progress.phase(f"redis consume {size} B", produced.records)
            consumed = rs.consume(
                port, key, size, produced.records, 10_000, args.seconds, clock, phase
            )
            phase.finish()
            rs.delete_stream(port, key)
            settle_writeback()
            native = rs.native_benchmark(
                port, size, args.native_records, 50, 100, args.seconds * 4
            )
            rewrites = rs.aof_rewrites(port) - before
            for m in [produced, consumed, native]:
                m.params["aof_rewrites_during_size"] = rewrites
                result.measurements.append(m)
                note_measurement(context, m)


def _nats(args: argparse.Namespace, context: RunContext, result: RunResult) -> None:
    from perf.peers import missing_requirement
    from perf.peers import nats_jetstream as nj

    reason = missing_requirement(
        ("nats-server",), "nats", "apt-get install nats-server"
    )
    if reason is not None:
        result.skipped.append(Skipped("nats", reason))
        return
    bounds = Bounds(args.records, args.seconds)
    sync_bounds = Bounds(min(20_000, args.records), args.seconds)
    with nj.start_server() as server:
        for size in args.sizes:

            def phase_for(workload: str, total: int, size: int = size) -> Phase:
                return context.progress.phase(f"nats {workload} {size} B", total)

            settle_writeback()
            measurements = nj.run_async(
                nj.measure_size(
                    server.port,
                    size,
                    bounds,
                    sync_bounds,
                    10_000,
                    context.clock,
                    phase_for,
                )
            )
            for m in measurements:
                result.measurements.append(m)
                note_measurement(context, m)


def _limits(
    args: argparse.Namespace, context: RunContext, result: RunResult, write_bytes: int
) -> None:
    """Loopback TCP, sendfile and fresh page-cache write, 3 samples each."""
    from perf import limits
    from perf.cli import size_argument

    limit_bytes = size_argument(args.limit_bytes)
    clock = context.clock
    repeat = args.limit_repeat
    with tempfile.TemporaryDirectory(prefix="ringbus-perf-compare-") as directory:
        base = Path(directory)
        common = {"seconds_bound": 10.0, "repeat": repeat}
        result.measurements.append(
            limits.measure_limit(
                context,
                "tcp_loopback",
                limit_bytes,
                repeat,
                lambda phase: limits.measure_tcp_loopback(
                    limit_bytes, 1 << 20, 10.0, clock, phase
                ),
                {**common, "bytes_bound": limit_bytes},
                "sendall over 127.0.0.1 to a second process",
            )
        )
        result.measurements.append(
            limits.measure_limit(
                context,
                "sendfile",
                limit_bytes,
                repeat,
                lambda phase: limits.measure_sendfile(
                    limit_bytes, 256 << 20, base, 10.0, clock, phase
                ),
                {**common, "bytes_bound": limit_bytes},
                "os.sendfile from a page-cached file to a 127.0.0.1 socket",
            )
        )

        # As in ``limits``, every fresh-write file stays until all samples
        # are done, so no sample writes into pages an earlier one freed.
        counter = iter(range(repeat))
        result.measurements.append(
            limits.measure_limit(
                context,
                "pagecache_write",
                write_bytes,
                repeat,
                lambda phase: limits.measure_pagecache_write(
                    base / f"fresh-{next(counter)}.bin",
                    write_bytes,
                    1 << 20,
                    30.0,
                    clock,
                    phase,
                ),
                {**common, "bytes_bound": write_bytes, "seconds_bound": 30.0},
                "sequential write of as much new data as the pipelined run wrote",
            )
        )


# -- output ----------------------------------------------------------------------


def plot_targets(path: Path, rows: list[TargetRow], title: str) -> bool:
    """Each target's ratio against the ratio it needs, one bar per size."""
    measured = [r for r in rows if r.ratio is not None]
    if not measured:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 0.45 * len(measured) + 1.5))
    labels = [f"{r.label} [{r.record_bytes} B]" for r in measured]
    positions = list(range(len(measured)))
    colours = ["tab:green" if r.status == "met" else "tab:red" for r in measured]
    axis.barh(positions, [r.ratio or 0 for r in measured], color=colours)
    axis.scatter(
        [r.required for r in measured],
        positions,
        marker="|",
        s=300,
        color="black",
        label="needed",
        zorder=3,
    )
    axis.set_yticks(positions, labels, fontsize="small")
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("ratio (Ringbus / reference; latency: reference / Ringbus)")
    axis.set_title(title)
    axis.grid(True, axis="x", which="both", alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def summarize(result: RunResult, sizes: list[int]) -> None:
    """Targets and the side-by-side table into ``result``."""
    documents = [m.to_json() for m in result.measurements]
    rows = evaluate(documents, sizes)
    table = side_by_side(documents, sizes)
    result.summary = {
        "targets": [r.to_json() for r in rows],
        "side_by_side": table,
        "met": sum(r.status == "met" for r in rows),
        "missed": sum(r.status == "missed" for r in rows),
        "not_measured": sum(r.status == "not measured" for r in rows),
    }
    result.text.append("\nSide by side\n\n" + markdown_side_by_side(table))
    result.text.append("\nTargets\n\n" + markdown_targets(rows))
    result.plot = lambda path, title: plot_targets(path, rows, title)


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    systems = [s.strip() for s in str(args.systems).split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise PerfError(f"--systems: unknown {unknown}; choose from {SYSTEMS}")
    if not args.sizes or min(args.sizes) < STAMP.size:
        raise PerfError(f"--sizes: each size must be >= {STAMP.size} B")

    result = RunResult()

    def run_peer(name: str, runner: Any) -> None:
        """One peer's phases; its failure costs its figures, not the run."""
        peer_errors: list[type[Exception]] = [PerfError, ServerStartError, OSError]
        try:
            if name == "redis":
                from perf.peers.redis_streams import client_errors
            else:
                from perf.peers.nats_jetstream import client_errors
            handled = (*peer_errors, *client_errors())
        except ImportError:
            handled = tuple(peer_errors)
        try:
            runner(args, context, result)
        except handled as exc:
            result.errors.append(f"{name}: {exc}")
            context.progress.note(f"[bold red]{name} failed:[/] {exc}")

    # The latency pair first (see the module docstring).
    if "ringbus" in systems:
        with broker_target(args) as target:
            for size in args.sizes:
                _ringbus_latency(target, args, context, size, result)
    if "redis" in systems:
        run_peer("redis", _redis_latency)

    written = 0
    if "ringbus" in systems:
        with broker_target(args) as target:
            for size in args.sizes:
                written = max(
                    written, _ringbus_size(target, args, context, size, result)
                )
    if "redis" in systems:
        run_peer("redis", _redis)
    if "nats" in systems:
        run_peer("nats", _nats)

    if "limits" in systems:
        # As much new data as the largest pipelined run wrote (1 GiB when
        # Ringbus did not run).
        settle_writeback()
        _limits(args, context, result, written or (1 << 30))

    summarize(result, list(args.sizes))
    return result


COMMAND = Command(
    name="compare",
    help="Ringbus vs Redis Streams vs NATS JetStream vs machine limits, one run",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
