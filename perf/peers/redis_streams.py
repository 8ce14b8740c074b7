"""Redis Streams as a peer: produce, consume, the native benchmark, fixed-rate latency.

The server is ``redis-server`` with ``appendonly yes`` and ``appendfsync
everysec`` (its durable-enough default for a log), RDB snapshots off, in a
temporary directory on 127.0.0.1, started and stopped by ``ManagedServer``.

- produce: redis-py ``XADD key * v <value>``, ``--pipeline`` commands per
  round trip (non-transactional pipeline), one connection.
- consume: ``XREAD COUNT <n> STREAMS key <last id>`` from the start of the
  stream until every produced record is read.
- native: ``redis-benchmark -c 50 -P 100`` running the same XADD: what the
  server does when the client is not Python.
- latency: a producer sends at a fixed rate (each due batch is one
  pipeline) with the intended send time stamped into the value; a consumer
  process blocks in ``XREAD BLOCK`` and records receive time minus intended
  time. The producer also records its XADD acknowledgement latency, from
  the same intended times.

Each stream key is deleted after its measurements, so memory and the AOF do
not carry one size's records into the next.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from perf.cli import PerfError
from perf.harness import (
    NANOS_PER_SECOND,
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
from perf.report import Measurement, Phase, latency_measurements, records_measurement
from perf.servers import ManagedServer

SYSTEM = "redis-streams"
FIELD = b"v"


def server_argv(directory: Path, port: int) -> list[str]:
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
    ]


def start_server(keep_directory: bool = False) -> ManagedServer:
    return ManagedServer("redis", server_argv, keep_directory=keep_directory).start()


def client_name() -> str:
    """redis-py, and whether it parses replies in C (hiredis) or in Python.

    The parser decides the consume figure: in two runs on this machine,
    XREAD of 100 B records ran 4.3x and 5.8x faster with hiredis.
    """
    from redis.utils import HIREDIS_AVAILABLE

    return "redis-py+hiredis" if HIREDIS_AVAILABLE else "redis-py (Python parser)"


def client_errors() -> tuple[type[Exception], ...]:
    """The client library's own failures (a reset connection, a timeout)."""
    import redis

    return (redis.exceptions.RedisError,)


def _client(port: int) -> Any:
    import redis

    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=30, socket_connect_timeout=10
    )


def produce(
    port: int,
    key: str,
    record_bytes: int,
    bounds: Bounds,
    pipeline_size: int,
    clock: Clock,
    phase: Phase,
) -> Measurement:
    """Pipelined XADD of ``record_bytes`` values until ``bounds``."""
    client = _client(port)
    value = bytes(make_value(record_bytes))
    pipe = client.pipeline(transaction=False)
    run = bounds.start(clock)
    series = ThroughputSeries(run.started_ns)
    sent = 0

    with gc_paused():
        while not run.should_stop(sent):
            count = min(pipeline_size, run.remaining(sent))
            for _ in range(count):
                pipe.xadd(key, {FIELD: value})
            pipe.execute()
            sent += count
            series.add(count, count * record_bytes, clock.now_ns())
            phase.advance(count)
    stop_reason = run.stop_reason(sent) or "count"
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND

    # The stream must hold exactly what was acknowledged.
    length = int(client.xlen(key))
    client.close()
    if length != sent:
        raise PerfError(f"redis stream {key} holds {length} records, {sent} were added")
    return records_measurement(
        f"{SYSTEM}.produce",
        SYSTEM,
        "produce",
        record_bytes,
        sent,
        seconds,
        timeline=series.points(),
        params={
            "pipeline": pipeline_size,
            "stop_reason": stop_reason,
            "client": client_name(),
        },
        note="XADD, pipelined, one connection",
    )


def consume(
    port: int,
    key: str,
    record_bytes: int,
    expected: int,
    read_count: int,
    max_seconds: float,
    clock: Clock,
    phase: Phase,
) -> Measurement:
    """XREAD COUNT ``read_count`` from the stream's start until ``expected``."""
    client = _client(port)
    run = Bounds(expected, max_seconds).start(clock)
    series = ThroughputSeries(run.started_ns)
    last_id: bytes | str = "0-0"
    consumed = 0
    last_value = b""

    with gc_paused():
        while not run.should_stop(consumed):
            reply = client.xread({key: last_id}, count=read_count)
            if not reply:
                break
            entries = reply[0][1]
            consumed += len(entries)
            last_id, fields = entries[-1]
            last_value = fields[FIELD]
            series.add(len(entries), len(entries) * record_bytes, clock.now_ns())
            phase.advance(len(entries))
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    client.close()

    if consumed != expected or len(last_value) != record_bytes:
        raise PerfError(
            f"redis consume read {consumed} of {expected} records "
            f"(last value {len(last_value)} B, expected {record_bytes} B)"
        )
    return records_measurement(
        f"{SYSTEM}.consume",
        SYSTEM,
        "consume",
        record_bytes,
        consumed,
        seconds,
        timeline=series.points(),
        params={"read_count": read_count, "client": client_name()},
        note="XREAD COUNT from the stream start",
    )


def native_benchmark(
    port: int,
    record_bytes: int,
    records: int,
    clients: int,
    pipeline_size: int,
    max_seconds: float,
) -> Measurement:
    """``redis-benchmark`` running XADD with ``record_bytes`` values."""
    key = f"perf-native-{record_bytes}"
    argv = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(clients),
        "-P",
        str(pipeline_size),
        "-n",
        str(records),
        "--csv",
        "XADD",
        key,
        "*",
        "v",
        "x" * record_bytes,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=max_seconds, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PerfError(
            f"redis-benchmark did not finish {records} XADD within {max_seconds} s"
        ) from exc
    if done.returncode != 0:
        raise PerfError(
            f"redis-benchmark exited {done.returncode}: {done.stderr[-500:]}"
        )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if len(rows) != 1 or "rps" not in rows[0]:
        raise PerfError(
            f"redis-benchmark printed no result row: {done.stdout[-500:]!r}"
        )
    rate = float(rows[0]["rps"])

    client = _client(port)
    length = int(client.xlen(key))
    client.delete(key)
    client.close()
    if length != records:
        raise PerfError(f"redis-benchmark added {length} records, expected {records}")
    return records_measurement(
        f"{SYSTEM}.produce-native",
        SYSTEM,
        "produce",
        record_bytes,
        records,
        records / rate,
        params={
            "tool": "redis-benchmark",
            "clients": clients,
            "pipeline": pipeline_size,
            "p50_ms": float(rows[0]["p50_latency_ms"]),
            "p99_ms": float(rows[0]["p99_latency_ms"]),
        },
        note=f"redis-benchmark -c {clients} -P {pipeline_size} XADD",
    )


@dataclass(frozen=True)
class _ConsumerResult:
    consumed: int
    histogram: str
    timeline: list[tuple[float, float, float]]


def _latency_consumer(
    port: int, key: str, max_seconds: float, read_count: int, control: Connection
) -> None:
    """Consumer process: block on XREAD, record receive minus intended time.

    Tells the producer it is ready, learns the final count when the producer
    is done, and stops at that count or at ``max_seconds``.
    """
    clock = MonotonicClock()
    client = _client(port)
    histogram = LatencyHistogram()
    run = Bounds(1 << 62, max_seconds).start(clock)
    series = ThroughputSeries(run.started_ns)
    last_id: bytes | str = "0-0"
    consumed = 0
    expected: int | None = None
    control.send("ready")

    with gc_paused():
        while expected is None or consumed < expected:
            if run.should_stop(consumed):
                break
            if expected is None and control.poll():
                expected = int(control.recv())
                continue
            reply = client.xread({key: last_id}, count=read_count, block=100)
            if not reply:
                continue
            # Every entry of one reply arrived together: one receive time.
            received_ns = clock.now_ns()
            entries = reply[0][1]
            for _entry_id, fields in entries:
                histogram.record_ns(received_ns - read_stamp(fields[FIELD]))
            last_id = entries[-1][0]
            consumed += len(entries)
            series.add(len(entries), 0, received_ns)

    client.close()
    control.send(
        _ConsumerResult(
            consumed=consumed,
            histogram=histogram.encode(),
            timeline=[(p.t_s, p.records_per_s, p.bytes_per_s) for p in series.points()],
        )
    )


def latency(
    port: int,
    key: str,
    record_bytes: int,
    rate_per_s: float,
    seconds: float,
    read_count: int,
    clock: Clock,
    phase: Phase,
) -> list[Measurement]:
    """End-to-end and XADD-ack latency at a fixed rate, from intended send time."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    records = max(1, int(rate_per_s * seconds))
    consumer = context.Process(
        target=_latency_consumer,
        args=(port, key, seconds + 30, read_count, child_end),
        daemon=True,
    )
    consumer.start()
    try:
        if not parent_end.poll(30) or parent_end.recv() != "ready":
            raise PerfError("redis latency consumer did not start within 30 s")

        client = _client(port)
        pipe = client.pipeline(transaction=False)
        value = make_value(record_bytes)
        ack_histogram = LatencyHistogram()

        def send(intended: Sequence[int]) -> None:
            for intended_ns in intended:
                pipe.xadd(key, {FIELD: stamp_value(value, intended_ns)})
            pipe.execute()

        report = run_fixed_rate(
            rate_per_s,
            Bounds(records, seconds + 5),
            send,
            clock=clock,
            histogram=ack_histogram,
            record_bytes=record_bytes,
            on_progress=phase.advance,
        )
        client.close()

        parent_end.send(report.records)
        if not parent_end.poll(seconds + 35):
            raise PerfError("redis latency consumer sent no result")
        result = parent_end.recv()
        if not isinstance(result, _ConsumerResult):
            raise PerfError(f"redis latency consumer sent {result!r}")
    finally:
        consumer.join(timeout=10)
        if consumer.is_alive():
            consumer.terminate()
            consumer.join(timeout=5)

    if result.consumed != report.records:
        raise PerfError(
            f"redis latency consumer read {result.consumed} of {report.records} records"
        )
    params = {
        "rate_per_s": rate_per_s,
        "seconds_planned": seconds,
        "stop_reason": report.stop_reason,
        "max_sender_lag_us": report.max_lag_ns / 1000,
        "unsent_due": report.unsent_due,
        "read_count": read_count,
        "client": client_name(),
    }
    end_to_end = LatencyHistogram.decode(result.histogram)
    return latency_measurements(
        SYSTEM,
        record_bytes,
        report,
        end_to_end.summary(),
        ack_histogram.summary(),
        [TimelinePoint(t, r, b) for t, r, b in result.timeline],
        params,
        (
            "XADD at a fixed rate -> XREAD BLOCK in another process; "
            "from intended send time",
            "XADD reply at a fixed rate; from intended send time",
        ),
    )


def aof_rewrites(port: int) -> int:
    """How many AOF rewrites the server has completed since it started."""
    client = _client(port)
    count = int(client.info("persistence")["aof_rewrites"])
    client.close()
    return count


def delete_stream(port: int, key: str) -> None:
    client = _client(port)
    client.delete(key)
    client.close()
