"""The ``hops`` subcommand: what one small produce costs after the broker slept.

A one-record Produce (acks=1) crosses three broker processes that may all be
asleep when it arrives: the net process that reads it, the writer that
appends it, and the net process holding a consumer's parked Fetch. What
sleeping costs them shows when a pause comes before each send: the wake-ups
themselves (on a virtual machine whose idle vCPUs halt,
``/sys/module/haltpoll/parameters/guest_halt_poll_ns`` at 0, each is an exit
to the hypervisor and back) and the work done afterwards with cold caches.

For each pause in ``--pauses``: ``--count`` rounds (fewer if ``--seconds``
runs out first) on two raw connections.
Each round first sends a Fetch for the next offset (min_bytes 1,
max_wait_ms 5,000), which parks; sleeps the pause; then sends a one-record
Produce on the other connection. It records the produce round trip (send
to acknowledgement: ``hops-ack``) and the fetch wake (the same send to the
parked Fetch's response: ``hops-fetch``), each in an HDR histogram. Every
round checks the acknowledgement has no error and the Fetch returned the
batch at the offset produced.

The floor, with the same pauses: ``machine.echo``, a loopback TCP round
trip to a process that echoes each message back (two wake-ups: the echo
process, then this one). A produce acknowledgement takes four (net, writer,
net, this process) and the parked Fetch's answer one more.

At pause 0 the processes barely sleep. The echo's growth with the pause is
what the wake-ups cost; the rest of the broker's growth is its own work
running slower after a sleep.
"""

from __future__ import annotations

import argparse
import multiprocessing
import selectors
import socket
import time
from typing import Any

from net.kafka import codec
from net.kafka.schema import ApiKey
from perf.cli import (
    Command,
    RunContext,
    add_record_bytes_argument,
    add_seconds_argument,
    add_topic_argument,
    positive_int,
)
from perf.harness import Clock, LatencyHistogram, gc_paused
from perf.kafka_wire import (
    FETCH_VERSION,
    PRODUCE_VERSION,
    FrameReader,
    WireError,
    batch_offsets,
    build_produce_frames,
    fetch_frame,
    make_batch,
    produce_errors,
    set_correlation_id,
)
from perf.produce import create_topic, new_topic, note_measurement
from perf.report import Measurement, RunResult, records_measurement
from perf.ringbus import SYSTEM, BrokerTarget, add_target_arguments

# How long one round may wait for its two answers before the run fails.
ROUND_TIMEOUT_S = 10.0
# The parked Fetch's max_wait_ms: far longer than any pause (at most 1 s),
# so it is the produce, never the timer, that answers it.
FETCH_MAX_WAIT_MS = 5000
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "": 1.0}


def pause_list_argument(text: str) -> list[float]:
    """argparse type for comma-separated pauses: ``0,200us,1ms,5ms``."""
    pauses = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        # "us" before "s": the longest unit that ends the text.
        unit = next((u for u in ("us", "ms", "s") if part.endswith(u)), "")
        try:
            seconds = float(part[: len(part) - len(unit)]) * _UNITS[unit]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a pause: {part!r}") from exc
        if not 0 <= seconds <= 1:
            raise argparse.ArgumentTypeError(f"a pause must be 0 to 1 s: {part!r}")
        pauses.append(seconds)
    if not pauses:
        raise argparse.ArgumentTypeError("no pause given")
    return pauses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_record_bytes_argument(parser)
    parser.add_argument(
        "--pauses",
        type=pause_list_argument,
        default=pause_list_argument("0,200us,1ms,5ms"),
        help="pauses before each produce, comma-separated (us, ms or s)",
    )
    parser.add_argument(
        "--count", type=positive_int, default=2000, help="rounds per pause"
    )
    add_seconds_argument(parser, 30.0, "time bound of each pause's rounds")
    add_topic_argument(parser, "perf-hops")
    add_target_arguments(parser)


class _Link:
    """One blocking connection with its frame reader."""

    def __init__(self, target: BrokerTarget) -> None:
        self.sock = socket.create_connection(
            (target.host, target.port), timeout=ROUND_TIMEOUT_S
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = FrameReader(1 << 20)

    def close(self) -> None:
        self.sock.close()


def _check_fetch(frame: memoryview, topic: str, offset: int) -> None:
    _, response = codec.decode_response(ApiKey.FETCH, FETCH_VERSION, frame)
    answer = response["responses"][0]["partitions"][0]
    error = response["error_code"] or answer["error_code"]
    if error:
        raise WireError(f"fetch {topic}[0] at {offset}: error {error}")
    batches = list(batch_offsets(answer["records"] or b""))
    if not batches or batches[0][0] != offset:
        raise WireError(
            f"fetch {topic}[0] at {offset} returned batches at "
            f"{[b[0] for b in batches]}"
        )


def measure_pause(
    target: BrokerTarget,
    topic: str,
    record_bytes: int,
    pause_s: float,
    count: int,
    seconds: float,
    first_offset: int,
    clock: Clock,
) -> tuple[LatencyHistogram, LatencyHistogram, float]:
    """``count`` rounds at one pause; the two histograms and the seconds taken."""
    frame = build_produce_frames(
        topic, [0], make_batch(record_bytes, 1), 1, record_bytes, 1, acks=1
    )[0].frame
    producer, fetcher = _Link(target), _Link(target)
    selector = selectors.DefaultSelector()
    selector.register(producer.sock, selectors.EVENT_READ, producer)
    selector.register(fetcher.sock, selectors.EVENT_READ, fetcher)
    acks, wakes = LatencyHistogram(), LatencyHistogram()
    started_ns = clock.now_ns()
    deadline_ns = started_ns + int(seconds * 1e9)

    try:
        with gc_paused():
            for round_number in range(count):
                if clock.now_ns() >= deadline_ns:
                    break
                offset = first_offset + round_number
                correlation_id = round_number + 1
                fetcher.sock.sendall(
                    fetch_frame(
                        correlation_id,
                        topic,
                        0,
                        offset,
                        1 << 20,
                        1 << 20,
                        FETCH_MAX_WAIT_MS,
                        1,
                    )
                )
                # The pause lets the Fetch park and the broker fall asleep.
                if pause_s:
                    time.sleep(pause_s)

                set_correlation_id(frame, correlation_id)
                sent_ns = clock.now_ns()
                producer.sock.sendall(frame)

                # Both answers, each timed when it is complete.
                answers: dict[_Link, memoryview] = {}
                deadline = time.monotonic() + ROUND_TIMEOUT_S
                while len(answers) < 2:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WireError(
                            f"round {round_number}: no answer within "
                            f"{ROUND_TIMEOUT_S} s"
                        )
                    for key, _ in selector.select(left):
                        link: _Link = key.data
                        if link.reader.receive(link.sock) == 0:
                            raise WireError("the broker closed a connection")
                        answer = link.reader.next_frame()
                        if answer is None or link in answers:
                            continue
                        done_ns = clock.now_ns()
                        (acks if link is producer else wakes).record_ns(
                            done_ns - sent_ns
                        )
                        answers[link] = answer

                _, response = codec.decode_response(
                    ApiKey.PRODUCE, PRODUCE_VERSION, answers[producer]
                )
                failed = produce_errors(response)
                if failed:
                    raise WireError(f"produce round {round_number}: {failed}")
                _check_fetch(answers[fetcher], topic, offset)
                del answers, answer
    finally:
        selector.close()
        producer.close()
        fetcher.close()
    return acks, wakes, (clock.now_ns() - started_ns) / 1e9


def _echo_server(listener: socket.socket) -> None:
    """Echo process: send back whatever arrives, until the peer closes."""
    listener.settimeout(ROUND_TIMEOUT_S)
    connection, _ = listener.accept()
    listener.close()
    connection.settimeout(ROUND_TIMEOUT_S * 3)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with connection:
        while data := connection.recv(1 << 16):
            connection.sendall(data)


def measure_echo(
    record_bytes: int, pause_s: float, count: int, seconds: float, clock: Clock
) -> tuple[LatencyHistogram, float]:
    """``count`` loopback round trips of ``record_bytes`` to an echo process,
    each after ``pause_s``; the histogram and the seconds taken."""
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    server = multiprocessing.get_context("spawn").Process(
        target=_echo_server, args=(listener,), daemon=True
    )
    server.start()
    listener.close()
    histogram = LatencyHistogram()
    message = bytes(record_bytes)
    buffer = bytearray(record_bytes)

    def round_trip() -> None:
        sock.sendall(message)
        view = memoryview(buffer)
        while view:
            received = sock.recv_into(view)
            if received == 0:
                raise WireError("the echo process closed the connection")
            view = view[received:]

    try:
        with (
            socket.create_connection(address, timeout=ROUND_TIMEOUT_S) as sock,
            gc_paused(),
        ):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Untimed: the first round waits for the echo process to start.
            round_trip()
            started_ns = clock.now_ns()
            deadline_ns = started_ns + int(seconds * 1e9)
            for _ in range(count):
                if clock.now_ns() >= deadline_ns:
                    break
                if pause_s:
                    time.sleep(pause_s)
                sent_ns = clock.now_ns()
                round_trip()
                histogram.record_ns(clock.now_ns() - sent_ns)
            seconds = (clock.now_ns() - started_ns) / 1e9
    finally:
        server.join(timeout=ROUND_TIMEOUT_S)
        if server.is_alive():
            server.terminate()
            server.join(timeout=5)
    return histogram, seconds


def _measurement(
    name: str,
    system: str,
    record_bytes: int,
    histogram: LatencyHistogram,
    seconds: float,
    params: dict[str, Any],
    note: str,
) -> Measurement:
    measurement = records_measurement(
        name,
        system,
        "hops",
        record_bytes,
        histogram.count,
        seconds,
        params=params,
        note=note,
    )
    measurement.latency = histogram.summary()
    return measurement


def run(args: argparse.Namespace, context: RunContext) -> RunResult:
    from perf.ringbus import broker_target, failures_as_perf_errors

    result = RunResult()
    with failures_as_perf_errors("hops"), broker_target(args) as target:
        topic = new_topic(args.topic)
        create_topic(target, topic, 1)
        offset = 0
        for pause_s in args.pauses:
            acks, wakes, seconds = measure_pause(
                target,
                topic,
                args.record_bytes,
                pause_s,
                args.count,
                args.seconds,
                offset,
                context.clock,
            )
            offset += acks.count
            echo, echo_seconds = measure_echo(
                args.record_bytes, pause_s, args.count, args.seconds, context.clock
            )
            pause_us = round(pause_s * 1e6)
            params = {"pause_us": pause_us, "broker": target.describe()}
            for measurement in (
                _measurement(
                    f"{SYSTEM}.hops-ack-{pause_us}us",
                    SYSTEM,
                    args.record_bytes,
                    acks,
                    seconds,
                    params,
                    "one-record produce, acks=1: send to acknowledgement",
                ),
                _measurement(
                    f"{SYSTEM}.hops-fetch-{pause_us}us",
                    SYSTEM,
                    args.record_bytes,
                    wakes,
                    seconds,
                    params,
                    "the same produce's send to the parked fetch's response",
                ),
                _measurement(
                    f"machine.echo-{pause_us}us",
                    "machine",
                    args.record_bytes,
                    echo,
                    echo_seconds,
                    {"pause_us": pause_us},
                    "loopback TCP round trip to an echo process (the floor)",
                ),
            ):
                result.measurements.append(measurement)
                note_measurement(context, measurement)
    return result


COMMAND = Command(
    name="hops",
    help="one-record produce and parked-fetch latency after a pause (wake-up cost)",
    description=__doc__ or "",
    add_arguments=add_arguments,
    run=run,
)
