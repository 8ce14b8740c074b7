"""The ``produce`` subcommand: write records to Ringbus as fast as asked.

Three ways in, one per ``--mode``:

- ``pipelined`` (broker capacity): ``--processes`` processes, each with
  ``--connections`` raw sockets. A process builds one record batch of
  about ``--batch-bytes`` once (``broker.log.batch.build_batch``) and one
  Produce v8 frame per group of partitions once; per request it rewrites
  only the correlation id. Each connection keeps up to ``--in-flight``
  requests outstanding and the same process reads the responses, checking
  correlation ids in order and every partition's error code.
- ``client`` (what a user sees): confluent-kafka (librdkafka) producers,
  one per process, tuned with ``--linger-ms``, ``--client-batch-bytes``
  and ``--queue-records``; throughput counts until ``flush`` returned
  (every record acknowledged).
- ``kcat``: the kcat tool producing ``--records`` lines from a file.

With ``--rate`` the pipelined and client modes send on a fixed schedule by
intended time (``perf.harness``), and latency is measured from each
intended time to its acknowledgement: per request (pipelined) or per
record (client, through delivery reports).

After every run the topic's log end offsets (ListOffsets) must add up to
the records acknowledged; a mismatch is an error. Each run writes to a new
topic (``--topic`` prefix plus a counter) created with ``--partitions``.

Every loop stops at its record count or its time bound; the cyclic GC is
off inside every timed loop.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_acks_argument,
    add_partitions_argument,
    add_rate_argument,
    add_record_bytes_argument,
    add_records_argument,
    add_seconds_argument,
    add_topic_argument,
    positive_int,
    size_argument,
)
from perf.harness import (
    NANOS_PER_SECOND,
    Bounds,
    LatencyHistogram,
    LatencySummary,
    MonotonicClock,
    RateSchedule,
    ThroughputSeries,
    gc_paused,
    make_value,
    read_stamp,
    run_fixed_rate,
    stamp_value,
)
from perf.kafka_wire import (
    PRODUCE_VERSION,
    AdminClient,
    RequestPipeline,
    WireError,
    build_produce_frames,
    frame_correlation_id,
    make_batch,
    produce_errors,
    records_per_batch,
    set_correlation_id,
)
from perf.report import Measurement, RunResult, Skipped, records_measurement
from perf.ringbus import SYSTEM, BrokerTarget, Profiler, add_target_arguments
from perf.workers import (
    MergedResult,
    WorkerResult,
    merge_results,
    report_outcome,
    run_workers,
    wait_for_start,
)

MODES = ("pipelined", "client", "kcat")
_topic_counter = itertools.count()


def new_topic(prefix: str) -> str:
    """A topic name no earlier phase of this run used."""
    return f"{prefix}-{os.getpid()}-{next(_topic_counter)}"


# -- options -------------------------------------------------------------------


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by produce, latency, compare and scale."""
    add_record_bytes_argument(parser)
    add_partitions_argument(parser)
    add_acks_argument(parser, "acks of every produce request")
    add_topic_argument(parser, "perf", "topic name prefix (a new topic per run)")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-bytes",
        type=size_argument,
        default="64KiB",
        help="pipelined: size of the pre-built record batch",
    )
    parser.add_argument(
        "--request-bytes",
        type=size_argument,
        default="1MiB",
        help="pipelined: batches (one per partition) per request, as bytes",
    )
    parser.add_argument(
        "--in-flight",
        type=positive_int,
        default=8,
        help="pipelined: requests outstanding per connection",
    )
    parser.add_argument(
        "--processes", type=positive_int, default=1, help="load-generating processes"
    )
    parser.add_argument(
        "--connections",
        type=positive_int,
        default=1,
        help="pipelined: connections per process",
    )


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--linger-ms", type=float, default=5.0, help="client/kcat: linger.ms"
    )
    parser.add_argument(
        "--client-batch-bytes",
        type=size_argument,
        default="1MiB",
        help="client/kcat: batch.size",
    )
    parser.add_argument(
        "--queue-records",
        type=positive_int,
        default=1_000_000,
        help="client/kcat: queue.buffering.max.messages",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="pipelined")
    add_workload_arguments(parser)
    add_pipeline_arguments(parser)
    add_client_arguments(parser)
    add_records_argument(parser, 5_000_000, "records to produce (count bound)")
    add_seconds_argument(parser, 10.0, "time bound of the run")
    add_rate_argument(
        parser, None, "records/s on a fixed schedule (default: as fast as possible)"
    )
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="pipelined: one untimed batch to every partition first (opens "
        "the partitions' files before the clock starts)",
    )
    add_target_arguments(parser)


# -- pipelined mode ---------------------------------------------------------------


@dataclass(frozen=True)
class PipelinedPlan:
    """What one pipelined producer process does."""

    host: str
    port: int
    topic: str
    partitions: tuple[int, ...]
    record_bytes: int
    batch_bytes: int
    request_bytes: int
    acks: int
    in_flight: int
    connections: int
    max_records: int
    max_seconds: float
    # Records/s for this process, or None for as fast as possible.
    rate_per_s: float | None


class _Connection:
    """One socket of a pipelined producer and its bookkeeping."""

    def __init__(self, sock: socket.socket, in_flight: int) -> None:
        from perf.kafka_wire import FrameReader

        self.sock = sock
        self.reader = FrameReader(64 * 1024)
        self.pipeline = RequestPipeline(in_flight)


def pipelined_worker(plan: PipelinedPlan, control: Connection) -> None:
    report_outcome(_pipelined, plan, control)


def _pipelined(plan: PipelinedPlan, control: Connection) -> WorkerResult:
    from net.kafka import codec
    from net.kafka.schema import ApiKey

    clock = MonotonicClock()
    count = records_per_batch(plan.batch_bytes, plan.record_bytes)
    batch = make_batch(plan.record_bytes, count)
    per_request = max(1, plan.request_bytes // len(batch))
    frames = build_produce_frames(
        plan.topic,
        plan.partitions,
        batch,
        count,
        plan.record_bytes,
        per_request,
        plan.acks,
    )

    connections = []
    for _ in range(plan.connections):
        sock = socket.create_connection((plan.host, plan.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connections.append(_Connection(sock, plan.in_flight))
    selector = selectors.DefaultSelector()
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)

    start_ns = wait_for_start(control)
    clock.sleep_until_ns(start_ns)
    run = Bounds(plan.max_records, plan.max_seconds).start(clock)
    mean_records = sum(f.records for f in frames) / len(frames)
    schedule = (
        RateSchedule(plan.rate_per_s / mean_records, run.started_ns)
        if plan.rate_per_s
        else None
    )
    series = ThroughputSeries(start_ns)
    histogram = LatencyHistogram()
    next_frame = 0
    requests = 0
    sent_records = 0
    acked_records = 0
    acked_bytes = 0
    wire_bytes = 0
    errors: list[str] = []
    acks = plan.acks != 0

    def receive(timeout_s: float) -> None:
        nonlocal acked_records, acked_bytes
        for key, _ in selector.select(timeout_s):
            connection: _Connection = key.data
            if connection.reader.receive(connection.sock) == 0:
                raise WireError("the broker closed a produce connection")
            while True:
                frame = connection.reader.next_frame()
                if frame is None:
                    break
                entry = connection.pipeline.complete(frame_correlation_id(frame))
                _, response = codec.decode_response(
                    ApiKey.PRODUCE, PRODUCE_VERSION, frame
                )
                del frame
                failed = produce_errors(response)
                if failed:
                    errors.append(
                        f"produce request {entry.correlation_id}: " + ", ".join(failed)
                    )
                    continue
                done_ns = clock.now_ns()
                histogram.record_ns(done_ns - entry.intended_ns)
                acked_records += entry.records
                acked_bytes += entry.value_bytes
                series.add(entry.records, entry.value_bytes, done_ns)

    stop_reason = "count"
    with gc_paused():
        while not errors:
            now_ns = clock.now_ns()
            reason = run.stop_reason(acked_records if acks else sent_records, now_ns)
            if reason is not None:
                stop_reason = reason
                break

            # Fill every connection's window with what is due.
            due = schedule.due_count(now_ns) if schedule else None
            for connection in connections:
                budget = plan.in_flight
                while budget > 0 and sent_records < plan.max_records:
                    if acks and not connection.pipeline.has_room():
                        break
                    if due is not None and schedule is not None:
                        if requests >= due:
                            break
                        intended_ns = schedule.intended_ns(requests)
                    else:
                        intended_ns = now_ns
                    produce = frames[next_frame]
                    next_frame = (next_frame + 1) % len(frames)
                    correlation_id = connection.pipeline.start(
                        intended_ns, produce.records, produce.value_bytes
                    )
                    if not acks:
                        # No response will come back to complete it.
                        connection.pipeline.complete(correlation_id)
                        acked_bytes += produce.value_bytes
                        series.add(produce.records, produce.value_bytes, now_ns)
                    set_correlation_id(produce.frame, correlation_id)
                    connection.sock.sendall(produce.frame)
                    requests += 1
                    sent_records += produce.records
                    wire_bytes += len(produce.frame)
                    budget -= 1

            if acks:
                waiting = any(len(c.pipeline) for c in connections)
                if waiting:
                    # Wake for a response, or for the next request due.
                    timeout_s = 0.05
                    if schedule is not None:
                        until_ns = schedule.intended_ns(requests) - clock.now_ns()
                        timeout_s = max(
                            0.0, min(timeout_s, until_ns / NANOS_PER_SECOND)
                        )
                    receive(timeout_s)
                elif schedule is not None:
                    clock.sleep_until_ns(
                        min(schedule.intended_ns(requests), run.deadline_ns)
                    )
            elif schedule is not None:
                clock.sleep_until_ns(
                    min(schedule.intended_ns(requests), run.deadline_ns)
                )
            elif sent_records >= plan.max_records:
                break

        # Collect the answers to what was sent (bounded).
        drain_deadline = time.monotonic() + 30
        while acks and not errors and any(len(c.pipeline) for c in connections):
            if time.monotonic() > drain_deadline:
                errors.append("responses still missing 30 s after the last send")
                break
            receive(0.1)
    finished_ns = clock.now_ns()

    for connection in connections:
        selector.unregister(connection.sock)
        connection.sock.close()
    return WorkerResult(
        records=acked_records if acks else sent_records,
        value_bytes=acked_bytes,
        wire_bytes=wire_bytes,
        started_ns=start_ns,
        finished_ns=finished_ns,
        histogram=histogram.encode() if acks else None,
        timeline=[(p.t_s, p.records_per_s, p.bytes_per_s) for p in series.points()],
        errors=errors,
        stop_reason=stop_reason,
        extra={
            "records_per_batch": count,
            "batch_bytes": len(batch),
            "batches_per_request": per_request,
            "requests": requests,
        },
    )


def split_partitions(partitions: int, processes: int) -> list[tuple[int, ...]]:
    """Partitions dealt round-robin over processes; with fewer partitions
    than processes, processes share them."""
    if partitions >= processes:
        return [tuple(range(i, partitions, processes)) for i in range(processes)]
    return [(i % partitions,) for i in range(processes)]


def merged_or_raise(
    results: Sequence[WorkerResult], start_ns: int, what: str
) -> MergedResult:
    """The workers' results as one; a ``PerfError`` naming ``what`` and the
    first errors when any worker failed."""
    merged = merge_results(results, start_ns)
    if merged.errors:
        raise PerfError(f"{what}: " + "; ".join(merged.errors[:5]))
    return merged


def merged_measurement(
    name: str,
    workload: str,
    record_bytes: int,
    merged: MergedResult,
    *,
    latency: LatencySummary | None = None,
    params: dict[str, Any],
    note: str,
) -> Measurement:
    """A Ringbus figure from the merged results of the load-generating
    processes: the value bytes they counted, over their common run time."""
    return Measurement(
        name=name,
        system=SYSTEM,
        workload=workload,
        record_bytes=record_bytes,
        records=merged.records,
        bytes=merged.value_bytes,
        seconds=merged.seconds,
        latency=latency,
        timeline=merged.timeline,
        params=params,
        note=note,
    )


def create_topic(target: BrokerTarget, topic: str, partitions: int) -> None:
    with AdminClient(target.host, target.port) as admin:
        admin.create_topic(topic, partitions)


def end_offsets(target: BrokerTarget, topic: str, partitions: int) -> dict[int, int]:
    with AdminClient(target.host, target.port) as admin:
        return admin.end_offsets(topic, range(partitions))


def check_stored(
    target: BrokerTarget,
    topic: str,
    partitions: int,
    expected: int,
    wait_s: float = 0.0,
) -> int:
    """The records the topic holds; an error unless it is ``expected``.

    ``wait_s`` allows acks=0 writes to land before counting.
    """
    deadline = time.monotonic() + wait_s
    while True:
        stored = sum(end_offsets(target, topic, partitions).values())
        if stored == expected or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if stored != expected:
        raise PerfError(
            f"topic {topic} holds {stored} records, {expected} were acknowledged"
        )
    return stored


def run_pipelined(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    *,
    record_bytes: int,
    records: int,
    seconds: float,
    rate: float | None = None,
    name: str = f"{SYSTEM}.produce-pipelined",
    topic: str | None = None,
    profile_label: str = "produce-pipelined",
    warmup: bool = False,
) -> Measurement:
    """One pipelined produce run on a new topic, checked against the log;
    ``rate`` records/s on a fixed schedule, or None for as fast as possible.

    With ``warmup``, one batch goes to every partition first, untimed: the
    broker's first append to a partition opens its files, and that cost
    (reported as ``warmup_seconds``) is not what a steady stream pays.
    """
    topic = topic or new_topic(args.topic)
    create_topic(target, topic, args.partitions)
    groups = split_partitions(args.partitions, args.processes)

    def plans_for(max_records: int, max_seconds: float) -> list[PipelinedPlan]:
        return [
            PipelinedPlan(
                host=target.host,
                port=target.port,
                topic=topic,
                partitions=group,
                record_bytes=record_bytes,
                batch_bytes=args.batch_bytes,
                request_bytes=args.request_bytes,
                acks=args.acks,
                in_flight=args.in_flight,
                connections=args.connections,
                max_records=max_records,
                max_seconds=max_seconds,
                rate_per_s=rate / args.processes if rate else None,
            )
            for group in groups
        ]

    warmed = 0
    warmup_seconds = 0.0
    if warmup:
        # One pass over every partition group (a record bound of one record
        # stops each process after one request per connection).
        per_batch = records_per_batch(args.batch_bytes, record_bytes)
        passes = [
            PipelinedPlan(**{**vars(plan), "max_records": per_batch * len(group)})
            for plan, group in zip(plans_for(1, 600.0), groups, strict=True)
        ]
        started = time.monotonic()
        start_ns, results = run_workers(pipelined_worker, passes, timeout_s=720)
        warm = merged_or_raise(results, start_ns, f"{name} warm-up")
        warmed = warm.records
        warmup_seconds = time.monotonic() - started

    context.progress.note(
        f"{name} {record_bytes} B: {args.processes} process(es) x "
        f"{args.connections} connection(s), {args.in_flight} in flight, "
        f"{args.partitions} partition(s), batch {args.batch_bytes} B"
        + (f" (warm-up {warmup_seconds:.1f} s)" if warmup else "")
    )
    plans = plans_for(-(-records // args.processes), seconds)
    with Profiler(getattr(args, "profile", None), target, profile_label) as profiler:
        start_ns, results = run_workers(
            pipelined_worker, plans, timeout_s=seconds + 120
        )
    merged = merged_or_raise(results, start_ns, name)
    check_stored(
        target,
        topic,
        args.partitions,
        warmed + merged.records,
        30 if args.acks == 0 else 0,
    )
    extra = merged.extras[0] if merged.extras else {}
    latency = merged.histogram.summary() if merged.histogram is not None else None
    return merged_measurement(
        name,
        "produce",
        record_bytes,
        merged,
        latency=latency,
        params={
            "mode": "pipelined",
            "topic": topic,
            "partitions": args.partitions,
            "processes": args.processes,
            "connections_per_process": args.connections,
            "in_flight": args.in_flight,
            "acks": args.acks,
            "rate_per_s": rate,
            "wire_bytes": merged.wire_bytes,
            "stop_reasons": merged.stop_reasons,
            "latency": "per request, from intended send time to its response",
            "warmup_seconds": warmup_seconds if warmup else None,
            "warmup_records": warmed,
            **extra,
            **profiler.notes(),
        },
        note="pre-built batches over raw sockets, pipelined",
    )


# -- client mode (confluent-kafka) ----------------------------------------------------


@dataclass(frozen=True)
class ClientPlan:
    bootstrap: str
    topic: str
    partitions: tuple[int, ...]
    record_bytes: int
    acks: int
    linger_ms: float
    batch_bytes: int
    queue_records: int
    max_records: int
    max_seconds: float
    rate_per_s: float | None


def client_config(plan: ClientPlan, latency: bool) -> dict[str, Any]:
    """librdkafka producer settings for a throughput (or latency) run."""
    return {
        "bootstrap.servers": plan.bootstrap,
        "client.id": "ringbus-perf",
        "acks": plan.acks,
        "linger.ms": plan.linger_ms,
        "batch.size": plan.batch_bytes,
        "batch.num.messages": 1_000_000,
        "queue.buffering.max.messages": plan.queue_records,
        "queue.buffering.max.kbytes": 2_097_151,
        "message.max.bytes": max(plan.batch_bytes * 2, 1_000_000),
        "compression.type": "none",
        "enable.idempotence": False,
        "socket.nagle.disable": True,
        # Without a latency figure only failures need a callback.
        "delivery.report.only.error": not latency,
    }


def client_worker(plan: ClientPlan, control: Connection) -> None:
    report_outcome(_client, plan, control)


def _client(plan: ClientPlan, control: Connection) -> WorkerResult:
    from confluent_kafka import Producer

    clock = MonotonicClock()
    latency = plan.rate_per_s is not None
    histogram = LatencyHistogram()
    failures: list[str] = []

    def on_delivery(error: Any, message: Any) -> None:
        if error is not None:
            if len(failures) < 5:
                failures.append(str(error))
            else:
                failures.append("")
            return
        if latency:
            histogram.record_ns(clock.now_ns() - read_stamp(message.value()))

    config = client_config(plan, latency)
    config["on_delivery"] = on_delivery
    producer = Producer(config)
    # Metadata before the clock starts, as a long-lived producer has it.
    producer.list_topics(plan.topic, timeout=30)
    value = make_value(plan.record_bytes)
    fixed = bytes(value)

    start_ns = wait_for_start(control)
    clock.sleep_until_ns(start_ns)
    cpu_started = time.process_time()
    series = ThroughputSeries(start_ns)
    bounds = Bounds(plan.max_records, plan.max_seconds)
    topic = plan.topic
    partitions = plan.partitions
    chunk = 0
    stop_reason = "count"

    def produce_one(payload: bytes, partition: int, deadline_ns: int) -> None:
        while True:
            try:
                producer.produce(topic, payload, partition=partition)
                return
            except BufferError:
                # Queue full: serve delivery reports, then retry (bounded).
                producer.poll(0.005)
                if clock.now_ns() > deadline_ns:
                    raise TimeoutError("producer queue stayed full") from None

    with gc_paused():
        if latency:
            assert plan.rate_per_s is not None

            def send(intended: Any) -> None:
                nonlocal chunk
                partition = partitions[chunk % len(partitions)]
                chunk += 1
                deadline = clock.now_ns() + 10 * NANOS_PER_SECOND
                for intended_ns in intended:
                    produce_one(stamp_value(value, intended_ns), partition, deadline)
                producer.poll(0)

            report = run_fixed_rate(
                plan.rate_per_s,
                bounds,
                send,
                clock=clock,
                series=series,
                record_bytes=plan.record_bytes,
            )
            sent = report.records
            stop_reason = report.stop_reason
        else:
            produce = producer.produce
            run = bounds.start(clock)
            sent = 0
            while True:
                reason = run.stop_reason(sent)
                if reason is not None:
                    stop_reason = reason
                    break
                count = min(10_000, run.remaining(sent))
                partition = partitions[chunk % len(partitions)]
                chunk += 1
                for _ in range(count):
                    try:
                        # Positional (topic, value, key, partition): keyword
                        # arguments cost the client about 40 % more per call
                        # (measured: 0.44 against 0.79 us), and at 100 B this
                        # loop, not the broker, sets the pace.
                        produce(topic, fixed, None, partition)
                    except BufferError:
                        producer.poll(0.005)
                        produce_one(fixed, partition, run.deadline_ns)
                producer.poll(0)
                sent += count
                series.add(count, count * plan.record_bytes, clock.now_ns())
        left = producer.flush(60)
    finished_ns = clock.now_ns()
    # Busy share of the client process (Python and librdkafka threads):
    # near 1.0 or above means the client, not the broker, set the pace.
    cpu_share = (time.process_time() - cpu_started) / max(
        (finished_ns - start_ns) / NANOS_PER_SECOND, 1e-9
    )

    errors = []
    if left:
        errors.append(f"{left} records still unacknowledged 60 s after the run")
    if failures:
        errors.append(
            f"{len(failures)} records failed: "
            + "; ".join(f for f in failures[:5] if f)
        )
    return WorkerResult(
        records=sent,
        value_bytes=sent * plan.record_bytes,
        started_ns=start_ns,
        finished_ns=finished_ns,
        histogram=histogram.encode() if latency else None,
        timeline=[(p.t_s, p.records_per_s, p.bytes_per_s) for p in series.points()],
        errors=errors,
        stop_reason=stop_reason,
        extra={"client_cpu_share": round(cpu_share, 3)},
    )


def run_client(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    *,
    record_bytes: int,
    records: int,
    seconds: float,
    rate: float | None = None,
    name: str = f"{SYSTEM}.produce-client",
    topic: str | None = None,
    processes: int | None = None,
) -> Measurement:
    """confluent-kafka producers on a new topic, checked against the log;
    ``rate`` records/s on a fixed schedule, or None for as fast as possible."""
    topic = topic or new_topic(args.topic)
    create_topic(target, topic, args.partitions)
    processes = processes or args.processes
    plans = [
        ClientPlan(
            bootstrap=target.bootstrap,
            topic=topic,
            partitions=group,
            record_bytes=record_bytes,
            acks=args.acks,
            linger_ms=args.linger_ms,
            batch_bytes=args.client_batch_bytes,
            queue_records=args.queue_records,
            max_records=-(-records // processes),
            max_seconds=seconds,
            rate_per_s=rate / processes if rate else None,
        )
        for group in split_partitions(args.partitions, processes)
    ]
    with Profiler(getattr(args, "profile", None), target, "produce-client") as profiler:
        start_ns, results = run_workers(client_worker, plans, timeout_s=seconds + 120)
    merged = merged_or_raise(results, start_ns, name)
    check_stored(target, topic, args.partitions, merged.records)
    return merged_measurement(
        name,
        "produce",
        record_bytes,
        merged,
        latency=merged.histogram.summary() if merged.histogram else None,
        params={
            "mode": "client",
            "client": "confluent-kafka",
            "topic": topic,
            "partitions": args.partitions,
            "processes": processes,
            "acks": args.acks,
            "linger_ms": args.linger_ms,
            "batch_size": args.client_batch_bytes,
            "queue_records": args.queue_records,
            "rate_per_s": rate,
            "stop_reasons": merged.stop_reasons,
            "client_cpu_share": [e.get("client_cpu_share") for e in merged.extras],
            "timeline": "records handed to the client; seconds end when flush "
            "returned (all acknowledged)",
            **profiler.notes(),
        },
        note="confluent-kafka Producer.produce per record, flush at the end",
    )


# -- kcat ------------------------------------------------------------------


def children_cpu_seconds() -> float:
    """User plus system CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool_timed(
    argv: list[str], seconds: float, timeout_message: str, *, text: bool
) -> tuple[subprocess.CompletedProcess[Any], float, float]:
    """Run a tool such as kcat to its exit, bounded by ``seconds``: the
    finished process, its wall seconds, and the CPU seconds it used.

    A tool still running after ``seconds`` is killed and raises ``PerfError``
    with ``timeout_message``; a non-zero exit is the caller's to judge.
    """
    cpu_before = children_cpu_seconds()
    started = time.monotonic_ns()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=text, timeout=seconds, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PerfError(timeout_message) from exc
    finished = time.monotonic_ns()
    return (
        done,
        (finished - started) / NANOS_PER_SECOND,
        children_cpu_seconds() - cpu_before,
    )


def kcat_missing() -> str | None:
    if shutil.which("kcat") is None:
        return "kcat is not installed (apt-get install kcat)"
    return None


def write_line_file(path: Path, record_bytes: int, records: int) -> None:
    """``records`` lines of ``record_bytes`` random letters each, for kcat -l."""
    alphabet = bytes(range(ord("a"), ord("z") + 1)) * 10
    table = bytes(alphabet[i % len(alphabet)] for i in range(256))
    lines_per_block = max(1, min(records, (1 << 20) // (record_bytes + 1)))
    block = bytearray()
    for _ in range(lines_per_block):
        block += os.urandom(record_bytes).translate(table) + b"\n"
    with path.open("wb") as out:
        left = records
        while left > 0:
            lines = min(left, lines_per_block)
            out.write(block[: lines * (record_bytes + 1)])
            left -= lines
        # Written back now, so the timed kcat run does not compete with the
        # writeback of its own input.
        out.flush()
        os.fsync(out.fileno())


def run_kcat_produce(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    *,
    record_bytes: int,
    records: int,
    seconds: float,
    name: str = f"{SYSTEM}.produce-kcat",
    topic: str | None = None,
) -> Measurement:
    """kcat -P reading ``records`` lines from a file; timed from start to exit."""
    topic = topic or new_topic(args.topic)
    create_topic(target, topic, args.partitions)
    with tempfile.TemporaryDirectory(prefix="ringbus-perf-kcat-") as directory:
        path = Path(directory) / "records.txt"
        write_line_file(path, record_bytes, records)
        argv = [
            "kcat",
            "-P",
            "-q",
            "-b",
            target.bootstrap,
            "-t",
            topic,
            "-l",
            str(path),
            "-X",
            f"acks={args.acks}",
            "-X",
            f"linger.ms={args.linger_ms:g}",
            "-X",
            f"batch.size={args.client_batch_bytes}",
            "-X",
            "batch.num.messages=1000000",
            "-X",
            f"queue.buffering.max.messages={args.queue_records}",
            "-X",
            "queue.buffering.max.kbytes=2097151",
            "-X",
            f"message.max.bytes={max(args.client_batch_bytes * 2, 1_000_000)}",
        ]
        if args.partitions == 1:
            argv[3:3] = ["-p", "0"]
        # Read the file once so the timed run does not wait on the disk.
        with path.open("rb") as warm:
            while warm.read(1 << 20):
                pass
        with Profiler(getattr(args, "profile", None), target, "produce-kcat") as prof:
            done, elapsed, kcat_cpu = run_tool_timed(
                argv,
                seconds,
                f"kcat did not produce {records} records within {seconds} s",
                text=True,
            )
    if done.returncode != 0:
        raise PerfError(f"kcat -P exited {done.returncode}: {done.stderr[-500:]}")
    check_stored(target, topic, args.partitions, records)
    return records_measurement(
        name,
        SYSTEM,
        "produce",
        record_bytes,
        records,
        elapsed,
        params={
            "tool": "kcat",
            "tool_cpu_seconds": round(kcat_cpu, 3),
            "topic": topic,
            "partitions": args.partitions,
            "acks": args.acks,
            "linger_ms": args.linger_ms,
            "batch_size": args.client_batch_bytes,
            "argv": argv,
            **prof.notes(),
        },
        note="kcat -P -l <file>, timed from start to exit (all delivered)",
    )


# -- the command -----------------------------------------------------------


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    from perf.ringbus import broker_target, failures_as_perf_errors

    if args.record_bytes < 8:
        raise PerfError(f"--record-bytes must be at least 8, got {args.record_bytes}")
    result = RunResult()
    if args.mode == "kcat" and (reason := kcat_missing()) is not None:
        result.skipped.append(Skipped(f"{SYSTEM}.produce-kcat", reason))
        return result
    with failures_as_perf_errors("produce"), broker_target(args) as target:
        if args.mode == "pipelined":
            measurement = run_pipelined(
                target,
                args,
                context,
                record_bytes=args.record_bytes,
                records=args.records,
                seconds=args.seconds,
                rate=args.rate,
                warmup=args.warmup,
            )
        elif args.mode == "client":
            measurement = run_client(
                target,
                args,
                context,
                record_bytes=args.record_bytes,
                records=args.records,
                seconds=args.seconds,
                rate=args.rate,
            )
        else:
            measurement = run_kcat_produce(
                target,
                args,
                context,
                record_bytes=args.record_bytes,
                records=args.records,
                seconds=args.seconds,
            )
        measurement.params["broker"] = target.describe()
    result.measurements.append(measurement)
    note_measurement(context, measurement)
    return result


def note_measurement(context: RunContext, m: Measurement) -> None:
    rate = m.records_per_s or 0.0
    line = (
        f"{m.name} {m.record_bytes} B: {m.records:,} records in {m.seconds:.2f} s "
        f"= {rate:,.0f} records/s, {m.mb_per_s:,.1f} MB/s"
    )
    if m.latency is not None:
        line += (
            f"; p50 {m.latency.p50_us:,.0f} us, p99 {m.latency.p99_us:,.0f} us, "
            f"p99.9 {m.latency.p99_9_us:,.0f} us, max {m.latency.max_us:,.0f} us"
        )
    context.progress.note(line)


COMMAND = Command(
    name="produce",
    help="produce to Ringbus: pipelined raw batches, confluent-kafka, or kcat",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
