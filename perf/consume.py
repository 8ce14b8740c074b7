"""The ``consume`` subcommand: read a Ringbus topic from the start as fast as possible.

The topic is filled first by the pipelined producer (``--records`` records of
``--record-bytes`` in batches of ``--batch-bytes``), unless ``--from-topic``
names an existing one. The reading is timed separately, in one of three
``--mode``\\ s:

- ``client``: confluent-kafka (librdkafka) tuned for throughput
  (``fetch.queue.backoff.ms=10``, a large ``queued.min.messages`` and
  ``fetch.max.bytes``), either subscribed as a consumer group
  (``--group``; the clock starts when the partitions are assigned) or with
  the partitions assigned directly (the clock starts before the first poll);
- ``raw``: pipelined Fetch v11 requests on raw sockets, ``--in-flight`` per
  connection, one partition per request, the offsets of later requests
  predicted from the previous response (``perf.kafka_wire.FetchCursor``);
  responses are walked batch header by batch header, never record by record;
- ``kcat``: ``kcat -C -e`` until every record is read.

Every mode must read exactly the records the topic held when reading
started; a shortfall is an error. The cyclic GC is off in every timed loop.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_acks_argument,
    add_partitions_argument,
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
    MonotonicClock,
    ThroughputSeries,
    gc_paused,
)
from perf.kafka_wire import (
    FETCH_VERSION,
    FetchCursor,
    FrameReader,
    RequestPipeline,
    WireError,
    batch_offsets,
    fetch_frame,
    frame_correlation_id,
)
from perf.produce import (
    add_pipeline_arguments,
    end_offsets,
    kcat_missing,
    merged_measurement,
    merged_or_raise,
    new_topic,
    note_measurement,
    run_pipelined,
    run_tool_timed,
    split_partitions,
)
from perf.report import Measurement, RunResult, Skipped, records_measurement
from perf.ringbus import SYSTEM, BrokerTarget, Profiler, add_target_arguments
from perf.workers import (
    WorkerResult,
    report_outcome,
    run_workers,
    wait_for_start,
)

MODES = ("client", "raw", "kcat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default="client")
    add_record_bytes_argument(parser)
    add_partitions_argument(parser)
    add_records_argument(parser, 5_000_000, "records to write before reading")
    add_seconds_argument(parser, 30.0, "time bound of each phase")
    parser.add_argument(
        "--from-topic",
        default=None,
        help="read this existing topic instead of filling a new one "
        "(--record-bytes must match its records)",
    )
    add_topic_argument(parser, "perf-consume")
    add_acks_argument(parser, "acks while filling")
    parser.add_argument(
        "--group",
        action="store_true",
        help="client: subscribe as a consumer group instead of assigning partitions",
    )
    parser.add_argument(
        "--fetch-max-bytes",
        type=size_argument,
        default="64MiB",
        help="client/raw: fetch.max.bytes (raw: max_bytes of each Fetch)",
    )
    parser.add_argument(
        "--partition-max-bytes",
        type=size_argument,
        default="8MiB",
        help="client/raw: max.partition.fetch.bytes (raw: partition_max_bytes)",
    )
    parser.add_argument(
        "--queued-records",
        type=positive_int,
        default=2_000_000,
        help="client: queued.min.messages",
    )
    add_pipeline_arguments(parser)
    add_target_arguments(parser)


# -- client mode -----------------------------------------------------------------


def consumer_config(
    bootstrap: str,
    group: str,
    fetch_max_bytes: int,
    partition_max_bytes: int,
    queued_records: int,
) -> dict[str, Any]:
    """librdkafka consumer settings for reading as fast as possible."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": "ringbus-perf",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.queue.backoff.ms": 10,
        "queued.min.messages": queued_records,
        "queued.max.messages.kbytes": 2_097_151,
        "fetch.max.bytes": fetch_max_bytes,
        "max.partition.fetch.bytes": partition_max_bytes,
        "receive.message.max.bytes": fetch_max_bytes + 1_000_000,
        "fetch.wait.max.ms": 100,
        "check.crcs": False,
    }


def run_client_consume(
    target: BrokerTarget,
    topic: str,
    partitions: int,
    record_bytes: int,
    expected: int,
    seconds: float,
    *,
    group: bool,
    fetch_max_bytes: int,
    partition_max_bytes: int,
    queued_records: int,
    profile: Any = None,
    name: str = f"{SYSTEM}.consume-client",
) -> Measurement:
    """confluent-kafka reads ``expected`` records of ``topic`` from the start."""
    from confluent_kafka import Consumer, TopicPartition

    clock = MonotonicClock()
    config = consumer_config(
        target.bootstrap,
        f"perf-{topic}",
        fetch_max_bytes,
        partition_max_bytes,
        queued_records,
    )
    consumer = Consumer(config)
    started: list[int] = []

    def on_assign(_consumer: Any, assigned: list[Any]) -> None:
        if not started:
            started.append(clock.now_ns())

    if group:
        consumer.subscribe([topic], on_assign=on_assign)
    else:
        consumer.list_topics(topic, timeout=30)
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        started.append(clock.now_ns())

    consumed = 0
    last_size = 0
    errors: list[str] = []
    cpu_started = time.process_time()
    deadline_ns = clock.now_ns() + int(seconds * NANOS_PER_SECOND)
    series: ThroughputSeries | None = None
    with Profiler(profile, target, "consume-client") as profiler, gc_paused():
        while consumed < expected and clock.now_ns() < deadline_ns:
            # consume(n, timeout) waits for n records or the timeout, so
            # never ask for more than are left.
            messages = consumer.consume(
                num_messages=min(100_000, expected - consumed), timeout=0.5
            )
            if not messages:
                continue
            now_ns = clock.now_ns()
            if series is None:
                series = ThroughputSeries(started[0] if started else now_ns)
            for message in messages:
                if message.error() is not None:
                    errors.append(str(message.error()))
                    break
            if errors:
                break
            consumed += len(messages)
            last_size = len(messages[-1].value() or b"")
            series.add(len(messages), len(messages) * record_bytes, now_ns)
    finished_ns = clock.now_ns()
    cpu_seconds = time.process_time() - cpu_started
    consumer.close()

    if errors:
        raise PerfError(f"{name}: {errors[0]}")
    if consumed != expected or last_size != record_bytes:
        raise PerfError(
            f"{name} read {consumed} of {expected} records in {seconds} s "
            f"(last value {last_size} B, expected {record_bytes} B)"
        )
    start_ns = started[0] if started else finished_ns
    return records_measurement(
        name,
        SYSTEM,
        "consume",
        record_bytes,
        consumed,
        (finished_ns - start_ns) / NANOS_PER_SECOND,
        timeline=series.points() if series is not None else [],
        params={
            "mode": "client",
            "client": "confluent-kafka",
            "topic": topic,
            "partitions": partitions,
            "group": group,
            "clock_starts": "partitions assigned" if group else "before first poll",
            "fetch.max.bytes": fetch_max_bytes,
            "max.partition.fetch.bytes": partition_max_bytes,
            "queued.min.messages": queued_records,
            "fetch.queue.backoff.ms": 10,
            # Near 1.0 or above: the client process set the pace.
            "client_cpu_share": round(
                cpu_seconds / max((finished_ns - start_ns) / NANOS_PER_SECOND, 1e-9),
                3,
            ),
            **profiler.notes(),
        },
        note="confluent-kafka Consumer.consume(100000) from the start",
    )


# -- raw pipelined fetch -----------------------------------------------------------


@dataclass(frozen=True)
class FetchPlan:
    host: str
    port: int
    topic: str
    # (partition, first offset, end offset) this process reads.
    ranges: tuple[tuple[int, int, int], ...]
    record_bytes: int
    in_flight: int
    partition_max_bytes: int
    fetch_max_bytes: int
    max_seconds: float


def fetch_worker(plan: FetchPlan, control: Connection) -> None:
    report_outcome(_fetch, plan, control)


def _fetch(plan: FetchPlan, control: Connection) -> WorkerResult:
    from net.kafka import codec
    from net.kafka.schema import ApiKey

    clock = MonotonicClock()
    sock = socket.create_connection((plan.host, plan.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    reader = FrameReader(2 * plan.partition_max_bytes + (1 << 20))
    pipeline = RequestPipeline(plan.in_flight)
    cursors = {p: FetchCursor(start, end) for p, start, end in plan.ranges}
    order = list(cursors)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    expected = sum(end - start for _p, start, end in plan.ranges)

    start_ns = wait_for_start(control)
    clock.sleep_until_ns(start_ns)
    run = Bounds(max(expected, 1), plan.max_seconds).start(clock)
    series = ThroughputSeries(start_ns)
    consumed = 0
    wire_bytes = 0
    turn = 0
    stop_reason = "count"

    with gc_paused():
        while True:
            if all(c.done for c in cursors.values()):
                break
            if run.stop_reason(consumed) == "time":
                stop_reason = "time"
                break

            # Fill the window, taking partitions in turn.
            tries = 0
            while pipeline.has_room() and tries < len(order):
                partition = order[turn % len(order)]
                turn += 1
                offset = cursors[partition].next_request()
                if offset is None:
                    tries += 1
                    continue
                tries = 0
                correlation_id = pipeline.start(0, 0, 0, (partition, offset))
                sock.sendall(
                    fetch_frame(
                        correlation_id,
                        plan.topic,
                        partition,
                        offset,
                        plan.partition_max_bytes,
                        plan.fetch_max_bytes,
                    )
                )

            if not len(pipeline):
                time.sleep(0.001)
                continue
            for _key, _events in selector.select(0.1):
                if reader.receive(sock) == 0:
                    raise WireError("the broker closed the fetch connection")
                while True:
                    frame = reader.next_frame()
                    if frame is None:
                        break
                    entry = pipeline.complete(frame_correlation_id(frame))
                    partition, offset = entry.tag
                    _, response = codec.decode_response(
                        ApiKey.FETCH, FETCH_VERSION, frame
                    )
                    wire_bytes += len(frame)
                    answer = response["responses"][0]["partitions"][0]
                    if response["error_code"] or answer["error_code"]:
                        raise WireError(
                            f"fetch {plan.topic}[{partition}] at {offset}: error "
                            f"{response['error_code'] or answer['error_code']}"
                        )
                    records_view = answer["records"]
                    batches = list(batch_offsets(records_view)) if records_view else []
                    del records_view, answer, response, frame
                    counted, _ = cursors[partition].on_response(offset, batches)
                    consumed += counted
                    if counted:
                        series.add(counted, counted * plan.record_bytes, clock.now_ns())
    finished_ns = clock.now_ns()
    sock.close()
    return WorkerResult(
        records=consumed,
        value_bytes=consumed * plan.record_bytes,
        wire_bytes=wire_bytes,
        started_ns=start_ns,
        finished_ns=finished_ns,
        timeline=[(p.t_s, p.records_per_s, p.bytes_per_s) for p in series.points()],
        stop_reason=stop_reason,
        extra={
            "requests": pipeline.completed,
            "wasted_responses": sum(c.wasted_responses for c in cursors.values()),
        },
    )


def run_raw_consume(
    target: BrokerTarget,
    topic: str,
    offsets: dict[int, int],
    record_bytes: int,
    seconds: float,
    *,
    processes: int,
    in_flight: int,
    partition_max_bytes: int,
    fetch_max_bytes: int,
    profile: Any = None,
    name: str = f"{SYSTEM}.consume-raw",
) -> Measurement:
    """Pipelined fetches of every partition from 0 to its end offset.

    LIMITATION: value bytes are records x ``record_bytes`` (records are not
    decoded); a ``--from-topic`` of mixed sizes misstates MB/s, while the
    wire figure (``wire_bytes``) stays exact.
    """
    groups = split_partitions(len(offsets), min(processes, len(offsets)))
    plans = [
        FetchPlan(
            host=target.host,
            port=target.port,
            topic=topic,
            ranges=tuple((p, 0, offsets[p]) for p in group),
            record_bytes=record_bytes,
            in_flight=in_flight,
            partition_max_bytes=partition_max_bytes,
            fetch_max_bytes=fetch_max_bytes,
            max_seconds=seconds,
        )
        for group in groups
    ]
    with Profiler(profile, target, "consume-raw") as profiler:
        start_ns, results = run_workers(fetch_worker, plans, timeout_s=seconds + 60)
    merged = merged_or_raise(results, start_ns, name)
    expected = sum(offsets.values())
    if merged.records != expected:
        raise PerfError(
            f"{name} read {merged.records} of {expected} records in {seconds} s"
        )
    return merged_measurement(
        name,
        "consume",
        record_bytes,
        merged,
        params={
            "mode": "raw",
            "topic": topic,
            "partitions": len(offsets),
            "processes": len(plans),
            "in_flight": in_flight,
            "partition_max_bytes": partition_max_bytes,
            "fetch_max_bytes": fetch_max_bytes,
            "wire_bytes": merged.wire_bytes,
            "wire_gb_per_s": merged.wire_bytes / merged.seconds / 1e9,
            "requests": sum(e.get("requests", 0) for e in merged.extras),
            "wasted_responses": sum(
                e.get("wasted_responses", 0) for e in merged.extras
            ),
            **profiler.notes(),
        },
        note="pipelined Fetch v11 on raw sockets, batch headers walked",
    )


# -- kcat ------------------------------------------------------------------------


def run_kcat_consume(
    target: BrokerTarget,
    topic: str,
    partitions: int,
    record_bytes: int,
    expected: int,
    seconds: float,
    *,
    fetch_max_bytes: int,
    partition_max_bytes: int,
    profile: Any = None,
    name: str = f"{SYSTEM}.consume-kcat",
) -> Measurement:
    """kcat -C -e from the start; its output (one offset per line) counted."""
    argv = [
        "kcat",
        "-C",
        "-q",
        "-e",
        "-b",
        target.bootstrap,
        "-t",
        topic,
        "-o",
        "beginning",
        "-c",
        str(expected),
        "-f",
        "%o\\n",
        "-X",
        f"fetch.max.bytes={fetch_max_bytes}",
        "-X",
        f"max.partition.fetch.bytes={partition_max_bytes}",
        "-X",
        f"receive.message.max.bytes={fetch_max_bytes + 1_000_000}",
        "-X",
        "queued.min.messages=2000000",
        # kcat 1.7.1's librdkafka (2.0.2) has no fetch.queue.backoff.ms.
        "-X",
        "check.crcs=false",
    ]
    with Profiler(profile, target, "consume-kcat") as profiler:
        done, elapsed, kcat_cpu = run_tool_timed(
            argv,
            seconds,
            f"kcat did not read {expected} records in {seconds} s",
            text=False,
        )
    if done.returncode != 0:
        raise PerfError(f"kcat -C exited {done.returncode}: {done.stderr[-500:]!r}")
    consumed = done.stdout.count(b"\n")
    if consumed != expected:
        raise PerfError(f"{name} read {consumed} of {expected} records")
    return records_measurement(
        name,
        SYSTEM,
        "consume",
        record_bytes,
        consumed,
        elapsed,
        params={
            "tool": "kcat",
            "tool_cpu_seconds": round(kcat_cpu, 3),
            "topic": topic,
            "partitions": partitions,
            "argv": argv,
            **profiler.notes(),
        },
        note="kcat -C -e -f '%o\\n', timed from start to exit",
    )


# -- the command --------------------------------------------------------------------


def fill_topic(
    target: BrokerTarget,
    args: argparse.Namespace,
    context: RunContext,
    records: int,
    record_bytes: int,
) -> tuple[str, Measurement]:
    """Write ``records`` records to a new topic with the pipelined producer."""
    topic = new_topic(args.topic)
    fill = run_pipelined(
        target,
        args,
        context,
        record_bytes=record_bytes,
        records=records,
        seconds=args.seconds,
        name=f"{SYSTEM}.consume-fill",
        topic=topic,
        profile_label="consume-fill",
    )
    return topic, fill


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    from perf.ringbus import broker_target, failures_as_perf_errors

    result = RunResult()
    if args.mode == "kcat" and (reason := kcat_missing()) is not None:
        result.skipped.append(Skipped(f"{SYSTEM}.consume-kcat", reason))
        return result
    profile = args.profile
    with failures_as_perf_errors("consume"), broker_target(args) as target:
        # The fill is not profiled: only the reading is of interest here.
        args.profile = None
        if args.from_topic:
            topic = args.from_topic
        else:
            topic, fill = fill_topic(
                target, args, context, args.records, args.record_bytes
            )
            result.measurements.append(fill)
            note_measurement(context, fill)
        offsets = end_offsets(target, topic, args.partitions)
        expected = sum(offsets.values())
        if expected == 0:
            raise PerfError(f"topic {topic} holds no records to read")

        if args.mode == "client":
            measurement = run_client_consume(
                target,
                topic,
                args.partitions,
                args.record_bytes,
                expected,
                args.seconds,
                group=args.group,
                fetch_max_bytes=args.fetch_max_bytes,
                partition_max_bytes=args.partition_max_bytes,
                queued_records=args.queued_records,
                profile=profile,
            )
        elif args.mode == "raw":
            measurement = run_raw_consume(
                target,
                topic,
                offsets,
                args.record_bytes,
                args.seconds,
                processes=args.processes,
                in_flight=args.in_flight,
                partition_max_bytes=args.partition_max_bytes,
                fetch_max_bytes=args.fetch_max_bytes,
                profile=profile,
            )
        else:
            measurement = run_kcat_consume(
                target,
                topic,
                args.partitions,
                args.record_bytes,
                expected,
                args.seconds,
                fetch_max_bytes=args.fetch_max_bytes,
                partition_max_bytes=args.partition_max_bytes,
                profile=profile,
            )
        measurement.params["broker"] = target.describe()
    result.measurements.append(measurement)
    note_measurement(context, measurement)
    return result


COMMAND = Command(
    name="consume",
    help="read a Ringbus topic: confluent-kafka, raw pipelined fetch, or kcat",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
