"""The ``latency`` subcommand: end-to-end latency through Ringbus at a fixed rate.

A confluent-kafka producer sends ``--rate`` records/s (default 10,000) on a
fixed schedule (``perf.harness.run_fixed_rate``), each value carrying its
intended send time in its first 8 bytes (``stamp_value``). A consumer in
another process (confluent-kafka, partitions assigned, reading from the
start of a new topic) records receive time minus intended time for every
record (``read_stamp``); the producer records delivery-report time minus
intended time (``latency-ack``). Both are HDR histograms, reported as
p50/p99/p99.9/max in microseconds, so a stall shows as the whole backlog's
wait, not as one slow sample (no coordinated omission).

Both loops are bounded: the producer by ``rate x seconds`` records and
``seconds + 5`` s, the consumer by the final count and ``seconds + 30`` s.
The cyclic GC is off in both. Every record sent must be received.
"""

from __future__ import annotations

import argparse
import multiprocessing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_acks_argument,
    add_rate_argument,
    add_record_bytes_argument,
    add_seconds_argument,
    add_topic_argument,
)
from perf.harness import (
    Bounds,
    Clock,
    LatencyHistogram,
    MonotonicClock,
    ThroughputSeries,
    TimelinePoint,
    gc_paused,
    make_value,
    read_stamp,
    run_fixed_rate,
    stamp_value,
)
from perf.produce import create_topic, new_topic
from perf.report import Measurement, RunResult, latency_measurements
from perf.ringbus import SYSTEM, BrokerTarget, Profiler, add_target_arguments

CONSUMER_START_TIMEOUT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_record_bytes_argument(parser)
    add_rate_argument(parser, 10_000.0, "records/s")
    add_seconds_argument(parser, 10.0, "length of the run")
    add_acks_argument(parser, "producer acks")
    parser.add_argument(
        "--linger-ms", type=float, default=1.0, help="producer linger.ms"
    )
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=100,
        help="consumer fetch.wait.max.ms (how long the broker may hold a fetch)",
    )
    add_topic_argument(parser, "perf-latency")
    add_target_arguments(parser)


@dataclass(frozen=True)
class _ConsumerResult:
    consumed: int
    histogram: str
    timeline: list[tuple[float, float, float]]
    error: str | None


def record_stamps(
    histogram: LatencyHistogram, values: Iterable[bytes], received_ns: int
) -> int:
    """Record receive time minus the intended time each stamped value
    carries; returns how many were recorded."""
    count = 0
    for value in values:
        histogram.record_ns(received_ns - read_stamp(value))
        count += 1
    return count


def _consumer(
    bootstrap: str,
    topic: str,
    fetch_wait_ms: int,
    max_seconds: float,
    control: Connection,
) -> None:
    """Consumer process: read ``topic`` from offset 0, record end-to-end
    latency, stop at the count the producer reports (or the time bound)."""
    from confluent_kafka import Consumer, TopicPartition

    clock = MonotonicClock()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"perf-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": fetch_wait_ms,
            "fetch.queue.backoff.ms": 0,
            "check.crcs": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    # One empty poll: connection and first fetch before the producer starts.
    consumer.consume(num_messages=1, timeout=0.5)
    histogram = LatencyHistogram()
    run = Bounds(1 << 62, max_seconds).start(clock)
    series = ThroughputSeries(run.started_ns)
    consumed = 0
    expected: int | None = None
    error: str | None = None
    control.send("ready")

    with gc_paused():
        while expected is None or consumed < expected:
            if run.should_stop(consumed):
                break
            if expected is None and control.poll():
                expected = int(control.recv())
                continue
            # consume(n, timeout) waits for n records or the timeout: wait
            # for one, then take whatever else is already queued.
            messages = consumer.consume(num_messages=1, timeout=0.05)
            if not messages:
                continue
            messages += consumer.consume(num_messages=10_000, timeout=0)
            # Every record of one poll arrived together: one receive time.
            received_ns = clock.now_ns()
            failed = [m for m in messages if m.error() is not None]
            if failed:
                error = str(failed[0].error())
                break
            try:
                record_stamps(
                    histogram, (m.value() or b"" for m in messages), received_ns
                )
            except ValueError as exc:
                error = f"a record without a time stamp: {exc}"
                break
            consumed += len(messages)
            series.add(len(messages), 0, received_ns)

    consumer.close()
    control.send(
        _ConsumerResult(
            consumed=consumed,
            histogram=histogram.encode(),
            timeline=[(p.t_s, p.records_per_s, p.bytes_per_s) for p in series.points()],
            error=error,
        )
    )


# LIMITATION: one partition and one producer; the latency of a keyed
# producer spreading records over partitions is not measured.
def measure_latency(
    target: BrokerTarget,
    *,
    record_bytes: int,
    rate_per_s: float,
    seconds: float,
    acks: int,
    linger_ms: float,
    fetch_wait_ms: int,
    topic_prefix: str,
    clock: Clock,
    profile: Any = None,
) -> list[Measurement]:
    """End-to-end and delivery-report latency at a fixed rate."""
    from confluent_kafka import Producer

    topic = new_topic(topic_prefix)
    create_topic(target, topic, 1)
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    consumer = context.Process(
        target=_consumer,
        args=(target.bootstrap, topic, fetch_wait_ms, seconds + 30, child_end),
        daemon=True,
    )
    consumer.start()
    try:
        if (
            not parent_end.poll(CONSUMER_START_TIMEOUT_S)
            or parent_end.recv() != "ready"
        ):
            raise PerfError(
                f"latency consumer did not start within {CONSUMER_START_TIMEOUT_S} s"
            )

        ack_histogram = LatencyHistogram()
        failures: list[str] = []

        def on_delivery(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(str(error))
                return
            ack_histogram.record_ns(clock.now_ns() - read_stamp(message.value()))

        producer = Producer(
            {
                "bootstrap.servers": target.bootstrap,
                "acks": acks,
                "linger.ms": linger_ms,
                "enable.idempotence": False,
                "socket.nagle.disable": True,
                "on_delivery": on_delivery,
            }
        )
        producer.list_topics(topic, timeout=30)
        value = make_value(record_bytes)

        def send(intended: Sequence[int]) -> None:
            for intended_ns in intended:
                producer.produce(topic, stamp_value(value, intended_ns), partition=0)
            producer.poll(0)

        records = max(1, int(rate_per_s * seconds))
        with Profiler(profile, target, "latency") as profiler:
            report = run_fixed_rate(
                rate_per_s,
                Bounds(records, seconds + 5),
                send,
                clock=clock,
                record_bytes=record_bytes,
            )
            left = producer.flush(30)
        if left or failures:
            raise PerfError(
                f"latency producer: {left} records unacknowledged, "
                f"{len(failures)} failed {failures[:3]}"
            )

        parent_end.send(report.records)
        if not parent_end.poll(seconds + 35):
            raise PerfError("latency consumer sent no result")
        result = parent_end.recv()
        if not isinstance(result, _ConsumerResult):
            raise PerfError(f"latency consumer sent {result!r}")
    finally:
        consumer.join(timeout=10)
        if consumer.is_alive():
            consumer.terminate()
            consumer.join(timeout=5)

    if result.error is not None:
        raise PerfError(f"latency consumer: {result.error}")
    if result.consumed != report.records:
        raise PerfError(
            f"latency consumer read {result.consumed} of {report.records} records"
        )
    params = {
        "topic": topic,
        "rate_per_s": rate_per_s,
        "seconds_planned": seconds,
        "stop_reason": report.stop_reason,
        "max_sender_lag_us": report.max_lag_ns / 1000,
        "unsent_due": report.unsent_due,
        "acks": acks,
        "linger_ms": linger_ms,
        "fetch_wait_max_ms": fetch_wait_ms,
        "client": "confluent-kafka",
        **profiler.notes(),
    }
    return latency_measurements(
        SYSTEM,
        record_bytes,
        report,
        LatencyHistogram.decode(result.histogram).summary(),
        ack_histogram.summary(),
        [TimelinePoint(t, r, b) for t, r, b in result.timeline],
        params,
        (
            "produce at a fixed rate -> consumer in another process; "
            "from intended send time",
            "delivery report at a fixed rate; from intended send time",
        ),
    )


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    from perf.produce import note_measurement
    from perf.ringbus import broker_target, failures_as_perf_errors

    if args.record_bytes < 8:
        raise PerfError(f"--record-bytes must be at least 8, got {args.record_bytes}")
    result = RunResult()
    with failures_as_perf_errors("latency"), broker_target(args) as target:
        measurements = measure_latency(
            target,
            record_bytes=args.record_bytes,
            rate_per_s=args.rate,
            seconds=args.seconds,
            acks=args.acks,
            linger_ms=args.linger_ms,
            fetch_wait_ms=args.fetch_wait_ms,
            topic_prefix=args.topic,
            clock=context.clock,
            profile=args.profile,
        )
        for m in measurements:
            m.params["broker"] = target.describe()
    result.measurements.extend(measurements)
    for m in measurements:
        note_measurement(context, m)
    return result


COMMAND = Command(
    name="latency",
    help="end-to-end latency through Ringbus at a fixed rate (HDR percentiles)",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
