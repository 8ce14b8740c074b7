"""The ``scale`` subcommand: how pipelined produce throughput moves as one
dimension grows.

Scenarios (``--scenarios``), each a series of pipelined produce runs
(``perf.produce.run_pipelined``) against one broker started here, one new
topic per point, deleted after it:

- ``partitions``: 1 -> 1,000 partitions (``--partition-points``);
- ``connections``: 1 -> 500 connections over ``--processes`` processes
  (``--connection-points``), the requests in flight held near 8 in total
  (``max(1, 8 // connections)`` per connection) so the figure shows the
  cost of connections, not of a deeper queue;
- ``sizes``: record values of 100 B -> 1 MiB (``--size-points``), batches
  of ``max(--batch-bytes, record size)``;
- ``data``: one topic written until ``--data-bytes`` (1 GB for a quick run;
  20 GB for the real one), the throughput of each tenth of the data
  reported; it must stay flat (every tenth within ``--flat-tolerance`` of
  the first). The long run needs free space for the data plus one
  segment (about 21 GB for 20 GB) in the temporary directory (``TMPDIR``)
  and takes minutes; run it by hand::

      .venv/bin/python -m perf scale --scenarios data --data-bytes 20GB \\
          --data-seconds 1800

Each point is bounded by ``--seconds`` (``--data-seconds`` for ``data``)
and by its record count. The text after the table gives each point's
throughput relative to the first point of its scenario.
"""

from __future__ import annotations

import argparse
from typing import Any

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_records_argument,
    add_seconds_argument,
    positive_float,
    size_argument,
    size_list_argument,
)
from perf.harness import TimelinePoint
from perf.kafka_wire import AdminClient
from perf.produce import (
    add_pipeline_arguments,
    add_workload_arguments,
    new_topic,
    note_measurement,
    run_pipelined,
)
from perf.report import Measurement, RunResult
from perf.ringbus import (
    SYSTEM,
    BrokerTarget,
    add_target_arguments,
    broker_target,
    failures_as_perf_errors,
)

SCENARIOS = ("partitions", "connections", "sizes", "data")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--partition-points", type=_int_list, default="1,10,100,1000")
    parser.add_argument("--connection-points", type=_int_list, default="1,10,100,500")
    parser.add_argument(
        "--size-points", type=size_list_argument, default="100,1KiB,10KiB,100KiB,1MiB"
    )
    add_seconds_argument(parser, 3.0, "time bound per point")
    add_records_argument(
        parser, 1 << 40, "record bound per point (default: only the time bound counts)"
    )
    parser.add_argument(
        "--data-bytes",
        type=size_argument,
        default="1GB",
        help="data: bytes of record values to write (20GB for the real run)",
    )
    parser.add_argument(
        "--data-seconds",
        type=positive_float,
        default=120.0,
        help="data: time bound of the run",
    )
    parser.add_argument(
        "--flat-tolerance",
        type=positive_float,
        default=0.25,
        help="data: largest allowed drop of any tenth against the first",
    )
    add_workload_arguments(parser)
    add_pipeline_arguments(parser)
    add_target_arguments(parser)


def relative(values: list[float]) -> list[float]:
    """Each value over the first (1.0 for the first; 0 when it is 0)."""
    if not values or values[0] <= 0:
        return [0.0 for _ in values]
    return [v / values[0] for v in values]


def tenths(timeline: list[TimelinePoint], total_bytes: int) -> list[float]:
    """Mean MB/s while each tenth of ``total_bytes`` was written, from a
    throughput timeline (each interval taken as written at an even rate,
    so a tenth may start and end inside one interval)."""
    if total_bytes <= 0 or not timeline:
        return []

    # When the cumulative bytes crossed each tenth's edge.
    edges = [total_bytes * (i + 1) / 10 for i in range(10)]
    crossed: list[float] = []
    written = 0.0
    previous_t = 0.0
    for point in timeline:
        span = max(point.t_s - previous_t, 0.0)
        added = point.bytes_per_s * span
        while len(crossed) < 10 and written + added >= edges[len(crossed)] * 0.999:
            needed = max(edges[len(crossed)] - written, 0.0)
            share = min(needed / added, 1.0) if added > 0 else 1.0
            crossed.append(previous_t + share * span)
        written += added
        previous_t = point.t_s

    rates = []
    start_s = 0.0
    for end_s in crossed:
        seconds = max(end_s - start_s, 1e-9)
        rates.append(total_bytes / 10 / seconds / 1e6)
        start_s = end_s
    return rates


def flatness(by_tenth: list[float], tolerance: float) -> tuple[float, bool]:
    """The slowest tenth relative to the first, and whether every tenth
    stayed within ``tolerance`` of the first (all ten measured)."""
    ratios = relative(by_tenth)
    lowest = min(ratios) if ratios else 0.0
    return lowest, len(ratios) == 10 and lowest >= 1.0 - tolerance


def _point(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    scenario: str,
    point: int,
    **overrides: Any,
) -> Measurement | None:
    """One pipelined run with ``overrides`` applied to the options."""
    options = argparse.Namespace(**{**vars(args), **overrides})
    topic = new_topic(f"{args.topic}-{scenario}")
    record_bytes = overrides.get("record_bytes", args.record_bytes)
    seconds = overrides.pop("seconds", args.seconds)
    records = overrides.pop("records", args.records)
    try:
        m = run_pipelined(
            target,
            options,
            context,
            record_bytes=record_bytes,
            records=records,
            seconds=seconds,
            name=f"{SYSTEM}.scale-{scenario}",
            topic=topic,
            profile_label=f"scale-{scenario}-{point}",
            warmup=True,
        )
    finally:
        with AdminClient(target.host, target.port) as admin:
            admin.delete_topic(topic)
    m.params["scenario"] = scenario
    m.params["point"] = point
    note_measurement(context, m)
    return m


def _series_text(scenario: str, unit: str, measurements: list[Measurement]) -> str:
    rates = [m.records_per_s or 0.0 for m in measurements]
    ratios = relative([m.mb_per_s for m in measurements])
    lines = [
        f"{scenario}:",
        f"| {unit} | records/s | MB/s | MB/s vs first |",
        "|---:|---:|---:|---:|",
    ]
    for m, rate, ratio in zip(measurements, rates, ratios, strict=True):
        lines.append(
            f"| {m.params['point']:,} | {rate:,.0f} | {m.mb_per_s:,.1f} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _add_series(
    result: RunResult,
    summary: dict[str, Any],
    key: str,
    title: str,
    unit: str,
    done: list[Measurement],
) -> None:
    """One scenario's points: into the result, as a table, and in the summary
    as MB/s relative to the first point."""
    result.measurements += done
    result.text.append(_series_text(title, unit, done))
    summary[key] = relative([m.mb_per_s for m in done])


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    scenarios = [s.strip() for s in str(args.scenarios).split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        raise PerfError(f"--scenarios: unknown {unknown}; choose from {SCENARIOS}")
    result = RunResult()
    summary: dict[str, Any] = {}

    with failures_as_perf_errors("scale"), broker_target(args) as target:
        if "partitions" in scenarios:
            done = [
                m
                for p in args.partition_points
                if (m := _point(target, args, context, "partitions", p, partitions=p))
            ]
            _add_series(result, summary, "partitions", "partitions", "partitions", done)

        if "connections" in scenarios:
            done = []
            for count in args.connection_points:
                processes = min(args.processes, count)
                m = _point(
                    target,
                    args,
                    context,
                    "connections",
                    count,
                    processes=processes,
                    connections=max(1, count // processes),
                    in_flight=max(1, 8 // count),
                )
                if m is not None:
                    done.append(m)
            _add_series(
                result, summary, "connections", "connections", "connections", done
            )

        if "sizes" in scenarios:
            done = []
            for size in args.size_points:
                m = _point(
                    target,
                    args,
                    context,
                    "sizes",
                    size,
                    record_bytes=size,
                    batch_bytes=max(args.batch_bytes, size + 128),
                    request_bytes=max(args.request_bytes, size + 256),
                )
                if m is not None:
                    done.append(m)
            _add_series(result, summary, "sizes", "record sizes", "bytes", done)

        if "data" in scenarios:
            records = max(1, args.data_bytes // args.record_bytes)
            m = _point(
                target,
                args,
                context,
                "data",
                args.data_bytes,
                records=records,
                seconds=args.data_seconds,
            )
            if m is not None:
                result.measurements.append(m)
                by_tenth = tenths(m.timeline, m.bytes)
                ratios = relative(by_tenth)
                lowest, flat = flatness(by_tenth, args.flat_tolerance)
                summary["data"] = {
                    "bytes": m.bytes,
                    "mb_per_s_by_tenth": by_tenth,
                    "relative_by_tenth": ratios,
                    "lowest_relative": lowest,
                    "flat": flat,
                    "tolerance": args.flat_tolerance,
                }
                lines = [
                    f"data ({m.bytes / 1e9:.1f} GB written):",
                    "| tenth | MB/s | vs first |",
                    "|---:|---:|---:|",
                ]
                for index, (rate, ratio) in enumerate(
                    zip(by_tenth, ratios, strict=True)
                ):
                    lines.append(f"| {index + 1} | {rate:,.1f} | {ratio:.2f} |")
                lines.append(
                    f"throughput {'stayed flat' if flat else 'did NOT stay flat'} "
                    f"(slowest tenth {lowest:.2f} of the first, "
                    f"tolerance {args.flat_tolerance:.2f})"
                )
                result.text.append("\n".join(lines) + "\n")
                if m.params.get("stop_reasons") and "time" in m.params["stop_reasons"]:
                    result.errors.append(
                        f"data: stopped by the time bound after {m.bytes:,} of "
                        f"{args.data_bytes:,} bytes; raise --data-seconds"
                    )

    result.summary = summary
    return result


COMMAND = Command(
    name="scale",
    help="pipelined produce as partitions, connections, record size or data grow",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
