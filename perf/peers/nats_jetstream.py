"""NATS JetStream as a peer: acked publish and pull-consumer fetch.

The server is ``nats-server -js`` with its file store in a temporary
directory, on 127.0.0.1, started and stopped by ``ManagedServer``. One
stream (``perf``, subjects ``perf.>``, file storage, server defaults for
sync) is created per record size and deleted after it.

- produce: nats-py ``js.publish_async`` - every record is acknowledged by
  the stream; up to 4000 acks outstanding (the library's default window).
- produce-window: the same acked publishes written as core ``publish``
  with a reply subject and one wildcard subscription counting the acks
  (4000 outstanding): the server's pace when the client does less per ack.
- produce-sync: ``js.publish``, one acked record per round trip, on a
  smaller bound (it is slow by design).
- consume: a pull consumer (ack policy none) fetching ``--fetch-batch``
  records per request from the start of the stream.

Every loop is bounded by its count and time; every ack wait has a timeout.
The event loop is uvloop when it is installed (it is a base dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from perf.cli import PerfError
from perf.harness import (
    NANOS_PER_SECOND,
    Bounds,
    Clock,
    ThroughputSeries,
    gc_paused,
    make_value,
)
from perf.report import Measurement, Phase, records_measurement
from perf.servers import ManagedServer

SYSTEM = "nats-jetstream"
STREAM = "perf"
ACK_WINDOW = 4000
ACK_TIMEOUT_S = 10.0

T = TypeVar("T")


def server_argv(directory: Path, port: int) -> list[str]:
    return [
        "nats-server",
        "-js",
        "-sd",
        str(directory / "jetstream"),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
    ]


def start_server(keep_directory: bool = False) -> ManagedServer:
    return ManagedServer("nats", server_argv, keep_directory=keep_directory).start()


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when available, else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def client_errors() -> tuple[type[Exception], ...]:
    """The client library's own failures (no responders, timeouts, API errors)."""
    import nats.errors

    return (nats.errors.Error,)


async def _connect(port: int) -> Any:
    import nats

    return await nats.connect(
        f"nats://127.0.0.1:{port}",
        connect_timeout=10,
        allow_reconnect=False,
        pending_size=8 * 1024 * 1024,
    )


async def _reset_stream(js: Any) -> None:
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    with contextlib.suppress(NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=[f"{STREAM}.>"], storage=StorageType.FILE)
    )


async def _stream_count(js: Any) -> int:
    info = await js.stream_info(STREAM)
    return int(info.state.messages)


def _measurement(
    workload: str,
    name: str,
    record_bytes: int,
    records: int,
    seconds: float,
    series: ThroughputSeries,
    params: dict[str, Any],
    note: str,
) -> Measurement:
    return records_measurement(
        f"{SYSTEM}.{name}",
        SYSTEM,
        workload,
        record_bytes,
        records,
        seconds,
        timeline=series.points(),
        params={"client": "nats-py", "event_loop": event_loop_name(), **params},
        note=note,
    )


async def _produce_async(
    js: Any, subject: str, value: bytes, bounds: Bounds, clock: Clock, phase: Phase
) -> tuple[int, float, ThroughputSeries, str]:
    from nats.js.errors import TooManyStalledMsgsError

    run = bounds.start(clock)
    series = ThroughputSeries(run.started_ns)
    futures = []
    sent = 0
    try:
        while not run.should_stop(sent):
            count = min(1000, run.remaining(sent))
            for _ in range(count):
                futures.append(
                    await js.publish_async(subject, value, wait_stall=ACK_TIMEOUT_S)
                )
            sent += count
            series.add(count, count * len(value), clock.now_ns())
            phase.advance(count)
        await asyncio.wait_for(js.publish_async_completed(), ACK_TIMEOUT_S)
    except (TooManyStalledMsgsError, TimeoutError) as exc:
        raise PerfError(
            f"nats acks stalled for {ACK_TIMEOUT_S} s after {sent} publishes"
        ) from exc
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    stop_reason = run.stop_reason(sent) or "count"

    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise PerfError(f"nats rejected {failed} of {sent} publishes")
    return sent, seconds, series, stop_reason


async def _produce_window(
    nc: Any, subject: str, value: bytes, bounds: Bounds, clock: Clock, phase: Phase
) -> tuple[int, float, ThroughputSeries, str]:
    run = bounds.start(clock)
    series = ThroughputSeries(run.started_ns)
    window = asyncio.Semaphore(ACK_WINDOW)
    all_acked = asyncio.Event()
    acked = 0
    rejected = 0
    target: int | None = None

    async def on_ack(msg: Any) -> None:
        nonlocal acked, rejected
        acked += 1
        # A PubAck is {"stream":..,"seq":..}; a refusal carries "error".
        if b'"error"' in msg.data:
            rejected += 1
        window.release()
        if target is not None and acked >= target:
            all_acked.set()

    inbox = nc.new_inbox()
    subscription = await nc.subscribe(
        f"{inbox}.*", cb=on_ack, pending_msgs_limit=4 * ACK_WINDOW
    )
    reply = f"{inbox}.ack"
    sent = 0
    try:
        while not run.should_stop(sent):
            count = min(1000, run.remaining(sent))
            for _ in range(count):
                # wait_for costs a task per call: only pay it when the
                # window is full and the wait is real.
                if window.locked():
                    await asyncio.wait_for(window.acquire(), ACK_TIMEOUT_S)
                else:
                    await window.acquire()
                await nc.publish(subject, value, reply=reply)
            sent += count
            series.add(count, count * len(value), clock.now_ns())
            phase.advance(count)
        target = sent
        if acked < sent:
            await asyncio.wait_for(all_acked.wait(), ACK_TIMEOUT_S)
    except TimeoutError as exc:
        raise PerfError(
            f"nats acks stalled for {ACK_TIMEOUT_S} s: {acked} of {sent} acked"
        ) from exc
    finally:
        await subscription.unsubscribe()
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    if rejected:
        raise PerfError(f"nats rejected {rejected} of {sent} publishes")
    return sent, seconds, series, run.stop_reason(sent) or "count"


async def _produce_sync(
    js: Any, subject: str, value: bytes, bounds: Bounds, clock: Clock, phase: Phase
) -> tuple[int, float, ThroughputSeries, str]:
    run = bounds.start(clock)
    series = ThroughputSeries(run.started_ns)
    sent = 0
    while not run.should_stop(sent):
        await js.publish(subject, value, timeout=ACK_TIMEOUT_S)
        sent += 1
        if sent % 100 == 0:
            series.add(100, 100 * len(value), clock.now_ns())
            phase.advance(100)
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    return sent, seconds, series, run.stop_reason(sent) or "count"


async def _consume(
    js: Any,
    subject: str,
    expected: int,
    batch: int,
    max_seconds: float,
    clock: Clock,
    phase: Phase,
) -> tuple[int, float, ThroughputSeries, int]:
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    subscription = await js.pull_subscribe(
        subject,
        stream=STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL
        ),
    )
    run = Bounds(expected, max_seconds).start(clock)
    series = ThroughputSeries(run.started_ns)
    consumed = 0
    last_size = 0
    while not run.should_stop(consumed):
        try:
            messages = await subscription.fetch(
                min(batch, run.remaining(consumed)), timeout=2
            )
        except nats.errors.TimeoutError:
            continue
        consumed += len(messages)
        if messages:
            last_size = len(messages[-1].data)
        series.add(len(messages), 0, clock.now_ns())
        phase.advance(len(messages))
    seconds = (clock.now_ns() - run.started_ns) / NANOS_PER_SECOND
    await subscription.unsubscribe()
    return consumed, seconds, series, last_size


async def measure_size(
    port: int,
    record_bytes: int,
    bounds: Bounds,
    sync_bounds: Bounds,
    fetch_batch: int,
    clock: Clock,
    phase_for: Callable[[str, int], Phase],
) -> list[Measurement]:
    """Every NATS measurement for one record size, on a fresh stream each,
    with the cyclic GC off throughout."""
    with gc_paused():
        return await _measure_size(
            port, record_bytes, bounds, sync_bounds, fetch_batch, clock, phase_for
        )


async def _measure_size(
    port: int,
    record_bytes: int,
    bounds: Bounds,
    sync_bounds: Bounds,
    fetch_batch: int,
    clock: Clock,
    phase_for: Callable[[str, int], Phase],
) -> list[Measurement]:
    nc = await _connect(port)
    js = nc.jetstream(publish_async_max_pending=ACK_WINDOW)
    subject = f"{STREAM}.{record_bytes}"
    value = bytes(make_value(record_bytes))
    results: list[Measurement] = []

    async def produce_phase(
        name: str,
        run_bounds: Bounds,
        produce: Callable[[Phase], Awaitable[tuple[int, float, ThroughputSeries, str]]],
        params: dict[str, Any],
        note: str,
        *,
        check_stored: bool,
    ) -> int:
        """One produce phase on a fresh stream; returns the records acked."""
        await _reset_stream(js)
        phase = phase_for(name, run_bounds.max_records)
        sent, seconds, series, reason = await produce(phase)
        phase.finish()
        if check_stored:
            stored = await _stream_count(js)
            if stored != sent:
                raise PerfError(
                    f"nats stream holds {stored} records, {sent} were acked"
                )
        results.append(
            _measurement(
                "produce",
                name,
                record_bytes,
                sent,
                seconds,
                series,
                {**params, "stop_reason": reason},
                note,
            )
        )
        return sent

    try:
        # publish_async, then consume what it wrote.
        sent = await produce_phase(
            "produce",
            bounds,
            lambda phase: _produce_async(js, subject, value, bounds, clock, phase),
            {"ack_window": ACK_WINDOW},
            "js.publish_async, every record acked",
            check_stored=True,
        )

        phase = phase_for("consume", sent)
        consumed, seconds, series, last_size = await _consume(
            js, subject, sent, fetch_batch, bounds.max_seconds, clock, phase
        )
        phase.finish()
        if consumed != sent or last_size != record_bytes:
            raise PerfError(
                f"nats consume read {consumed} of {sent} records "
                f"(last value {last_size} B, expected {record_bytes} B)"
            )
        results.append(
            _measurement(
                "consume",
                "consume",
                record_bytes,
                consumed,
                seconds,
                series,
                {"fetch_batch": fetch_batch, "ack_policy": "none"},
                "pull consumer, fetch in batches",
            )
        )

        # The lean acked publish path, on a fresh stream.
        await produce_phase(
            "produce-window",
            bounds,
            lambda phase: _produce_window(nc, subject, value, bounds, clock, phase),
            {"ack_window": ACK_WINDOW},
            "core publish with reply subject, acks counted in one callback",
            check_stored=True,
        )

        # One acked record per round trip.
        await produce_phase(
            "produce-sync",
            sync_bounds,
            lambda phase: _produce_sync(js, subject, value, sync_bounds, clock, phase),
            {},
            "js.publish, one acked record per round trip",
            check_stored=False,
        )
        await js.delete_stream(STREAM)
    finally:
        await nc.close()
    return results
