"""Fuzzing the Kafka front of a running broker while a real client works.

One broker for the module, with the smallest produce ring so that large
batches make connections stall and resume. A well-behaved confluent-kafka
producer (acks=all, idempotent) and consumer run in threads for the whole
fuzz run, producing a known sequence of records to their own topic and
consuming it back. Meanwhile fuzz worker processes
(``tests.integration.fuzzing``) keep sending over many connections until
the broker has read at least ``FUZZ_FRAMES`` frames (counted as
``FuzzStatistics.frames_read`` says): valid frames for random APIs and
versions, random bytes, and mutations of valid frames.

Afterwards: every broker process has the pid it started with, the log holds
no ``process.exited``, no traceback and no ERROR line; well-formed fuzz
requests were all answered, in order; the well-behaved client saw no error
and consumed exactly what it produced, in order; topics that only ever
received corrupt batches have log end offset 0; the broker stops cleanly;
every batch in every segment of the data directory passes the broker's own
batch checks and the well-behaved topic holds its records once; restarted,
the broker serves them again from offset 0.

Seeds: ``RINGBUS_FUZZ_SEED=<n>`` replays a run's frames (worker i uses
n + i; timing still varies); the seed is printed and named in every failure
message.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from broker.log.batch import iter_batch_bounds, parse_header, validate_batch
from broker.settings import Settings
from tests.conftest import ROOT, BrokerProcess
from tests.integration.fuzzing import FuzzTopics, Wire, list_offsets, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# The floor: at least this many frames reach the broker.
FUZZ_FRAMES = 100_000
FUZZ_WORKERS = 3
CONNECTIONS_PER_WORKER = 8
# The fuzz stops here whatever the count; the test then fails on the count.
FUZZ_DEADLINE_S = 150.0

# The broker's default limit: "huge" fuzz frames announce sizes around it.
MAX_REQUEST_BYTES: int = Settings.model_fields["max_request_bytes"].default

# The smallest produce ring the settings allow, so that large fuzz batches
# fill it and connections stall and resume under fuzzing.
RING_BYTES = 1024 * 1024

# The well-behaved producer: records per burst, and the pause between bursts.
BURST_RECORDS = 10
BURST_PAUSE_S = 0.01


def record_value(index: int) -> bytes:
    return f"well-behaved-{index:08d}-".encode() + bytes([index % 251]) * (index % 97)


class WellBehavedClient:
    """An idempotent producer and a consumer on one partition, in threads.

    Errors are collected, never raised in the threads: the test asserts on
    them. The consumer checks offsets and values as they arrive.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.errors: list[str] = []
        self.produced = 0
        self.delivered_offsets: list[int] = []
        self.consumed: list[bytes] = []
        self.commits = 0
        # The group's committed offset, read back at the end (-1: none).
        self.committed = -1
        self.producing_done = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._produce, name="wb-producer", daemon=True),
            threading.Thread(target=self._consume, name="wb-consumer", daemon=True),
        ]

    def _error(self, where: str, error: Any) -> None:
        with self.lock:
            self.errors.append(f"{where}: {error}")

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _produce(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "error_cb": lambda error: self._error("producer error_cb", error),
            }
        )

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                self._error("delivery", error)
            else:
                self.delivered_offsets.append(message.offset())

        try:
            # Bounded by the test's stop event and by FUZZ_DEADLINE_S.
            deadline = time.monotonic() + FUZZ_DEADLINE_S + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                for _ in range(BURST_RECORDS):
                    producer.produce(
                        self.topic,
                        value=record_value(self.produced),
                        key=b"k%d" % (self.produced % 13),
                        partition=0,
                        on_delivery=delivered,
                    )
                    self.produced += 1
                producer.poll(BURST_PAUSE_S)
            remaining = producer.flush(60)
            if remaining:
                self._error("producer", f"{remaining} records not delivered")
        except Exception as exc:  # a thread must report, not die silently
            self._error("producer raised", repr(exc))
        finally:
            self.producing_done.set()

    def _consume(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"wb-reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
                "error_cb": lambda error: self._error("consumer error_cb", error),
            }
        )
        consumer.assign([TopicPartition(self.topic, 0, 0)])
        deadline = time.monotonic() + FUZZ_DEADLINE_S + 120
        try:
            while time.monotonic() < deadline:
                if self.producing_done.is_set() and len(self.consumed) >= self.produced:
                    break
                for message in consumer.consume(500, 0.2):
                    self._check(message)
                if len(self.consumed) // 2000 > self.commits:
                    # Offsets go through the control process while it is
                    # being fuzzed too.
                    consumer.commit(
                        offsets=[TopicPartition(self.topic, 0, len(self.consumed))],
                        asynchronous=False,
                    )
                    self.commits += 1

            # The last commit, read back through OffsetFetch.
            done = TopicPartition(self.topic, 0, len(self.consumed))
            consumer.commit(offsets=[done], asynchronous=False)
            (committed,) = consumer.committed([TopicPartition(self.topic, 0)], 30)
            self.committed = committed.offset
        except Exception as exc:
            self._error("consumer raised", repr(exc))
        finally:
            consumer.close()

    def _check(self, message: Any) -> None:
        if message.error() is not None:
            self._error("consume", message.error())
            return
        expected = len(self.consumed)
        if message.offset() != expected:
            self._error("consume", f"offset {message.offset()}, expected {expected}")
        if message.value() != record_value(expected):
            self._error("consume", f"offset {expected}: value {message.value()!r}")
        self.consumed.append(message.value())

    def join(self, timeout_s: float) -> None:
        for thread in self.threads:
            thread.join(timeout_s)
            if thread.is_alive():
                self._error(thread.name, f"still running after {timeout_s} s")


def broker_children(pid: int) -> dict[int, tuple[float, str]]:
    """The supervisor's live children: pid -> (start time, command line)."""
    found = {}
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            found[child.pid] = (child.create_time(), " ".join(child.cmdline())[-80:])
        except psutil.NoSuchProcess:
            continue
    return found


COUNTERS_SHOWN = (
    "ringbus_ring_full_stalls_total",
    "ringbus_produce_batches_total",
    "ringbus_requests_total",
    "ringbus_request_errors_total",
)


def broker_counters(broker: BrokerProcess, names: tuple[str, ...]) -> dict[str, float]:
    """Totals of some counters from the broker's /metrics (for the report)."""
    url = f"http://127.0.0.1:{broker.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def segment_batches(partition_dir: Path) -> Iterator[tuple[Path, int, bytes]]:
    """(segment, position, batch bytes) of every batch, in offset order;
    bytes after the last whole batch are yielded as one trailing piece."""
    for segment in sorted(partition_dir.glob("*.log")):
        data = segment.read_bytes()
        end = 0
        for position, size in iter_batch_bounds(data):
            yield segment, position, data[position : position + size]
            end = position + size
        if end != len(data):
            yield segment, end, data[end:]


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(
        tmp_path_factory.mktemp("fuzz") / "data",
        ring_bytes=RING_BYTES,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture(scope="module")
def fuzz_topics(fuzz_broker: BrokerProcess) -> FuzzTopics:
    suffix = uuid.uuid4().hex[:8]
    topics = FuzzTopics(
        well_behaved=f"wb-{suffix}",
        corrupt=(f"fz-corrupt-a-{suffix}", f"fz-corrupt-b-{suffix}"),
        open=(f"fz-open-a-{suffix}", f"fz-open-b-{suffix}"),
        victims=tuple(f"fz-victim-{i}" for i in range(8)),
    )
    admin = AdminClient({"bootstrap.servers": fuzz_broker.bootstrap})
    wanted = [NewTopic(topics.well_behaved, num_partitions=1)]
    wanted += [NewTopic(name, num_partitions=3) for name in topics.corrupt]
    wanted += [NewTopic(name, num_partitions=2) for name in topics.open]
    for future in admin.create_topics(wanted).values():
        future.result(30)
    return topics


def run_workers(
    broker: BrokerProcess, topics: FuzzTopics, seed: int
) -> list[dict[str, Any]]:
    """Start the fuzz workers, wait for them, return their statistics."""
    per_worker = -(-FUZZ_FRAMES // FUZZ_WORKERS)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.fuzzing",
                f"--port={broker.kafka_port}",
                f"--seed={seed + i}",
                f"--frames={per_worker}",
                f"--deadline-s={FUZZ_DEADLINE_S}",
                f"--concurrency={CONNECTIONS_PER_WORKER}",
                f"--max-request-bytes={MAX_REQUEST_BYTES}",
                f"--topics={topics.to_json()}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(FUZZ_WORKERS)
    ]
    results = []
    try:
        for i, worker in enumerate(workers):
            out, err = worker.communicate(timeout=FUZZ_DEADLINE_S + 30)
            assert worker.returncode == 0, (
                f"fuzz worker seed {seed + i} failed: {err.decode()[-3000:]}"
            )
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    return results


def test_broker_survives_fuzzing_while_a_client_produces_and_consumes(
    fuzz_broker: BrokerProcess, fuzz_topics: FuzzTopics
) -> None:
    """The issue's fuzz requirement: >= 100,000 random and mutated frames,
    no process crash, the well-behaved client unaffected, the log exact."""
    seed = int(
        os.environ.get("RINGBUS_FUZZ_SEED") or random.SystemRandom().randrange(2**32)
    )
    replay = f"(replay with RINGBUS_FUZZ_SEED={seed})"
    print(f"fuzz seed {seed} {replay}")
    broker = fuzz_broker
    children = broker_children(broker.pid)
    assert len(children) >= 4, children

    # The well-behaved client is running before the first fuzz frame.
    client = WellBehavedClient(broker.bootstrap, fuzz_topics.well_behaved)
    client.start()
    wait_for(
        lambda: len(client.consumed) > 0 or bool(client.errors), 30, "first record"
    )

    started = time.monotonic()
    results = run_workers(broker, fuzz_topics, seed)
    fuzz_seconds = time.monotonic() - started
    client.stop.set()
    client.join(120)

    frames = sum(r["frames_read"] for r in results)
    summary = {
        key: sum(r[key] for r in results)
        for key in (
            "frames_read",
            "frames_sent",
            "hostile_read",
            "connections",
            "closed_by_broker",
            "responses",
            "early_closes",
            "order_violations",
            "clean_connections",
            "clean_unanswered",
            "clean_slow",
        )
    }
    summary["seconds"] = round(fuzz_seconds, 1)
    summary["well_behaved_records"] = client.produced
    print("fuzz summary", json.dumps(summary))
    kinds: Counter[str] = Counter()
    for result in results:
        kinds.update(result["kinds"])
    print("fuzz frames by kind", json.dumps(dict(sorted(kinds.items()))))
    print("broker counters", json.dumps(broker_counters(broker, COUNTERS_SHOWN)))
    assert frames >= FUZZ_FRAMES, (
        f"only {frames} frames in {FUZZ_DEADLINE_S} s {replay}"
    )
    assert all(r["connect_failures"] == 0 for r in results), (results, replay)
    # Well-formed requests are answered in order, and never make the broker
    # close their connection.
    assert summary["order_violations"] == 0, replay
    problems = [p for r in results for p in r["problems"]]
    assert summary["early_closes"] == 0, (problems, replay)
    assert summary["clean_unanswered"] == 0, (problems, replay)

    # No broker process died or was replaced.
    assert broker.process is not None and broker.process.poll() is None, replay
    assert broker_children(broker.pid) == children, replay
    log = broker.log_text()
    bad_lines = [
        line
        for line in log.splitlines()
        if " ERROR " in line or "process.exited" in line or "Traceback" in line
    ]
    assert not bad_lines, "\n".join(bad_lines[:40]) + f"\n{replay}"

    # The well-behaved client: no error, everything back, in order.
    assert not client.errors, [*client.errors[:20], replay]
    assert client.produced > 0
    expected = [record_value(i) for i in range(client.produced)]
    assert client.delivered_offsets == list(range(client.produced)), replay
    assert client.consumed == expected, replay
    assert client.committed == client.produced, replay

    # Topics that only ever got corrupt batches hold nothing.
    with Wire(broker.kafka_port) as wire:
        for name in fuzz_topics.corrupt:
            assert list_offsets(wire, name, [0, 1, 2]) == {
                p: (0, 0) for p in range(3)
            }, (name, replay)
        assert list_offsets(wire, fuzz_topics.well_behaved, [0]) == {
            0: (0, client.produced)
        }, replay

    # A clean stop after all that, then the data directory itself.
    assert broker.stop() == 0, broker.log_text()[-4000:]
    check_segments(broker.data_dir, fuzz_topics, client.produced, replay)

    # Restarted, the broker serves the same records to a new consumer.
    restart(broker)
    assert read_from_start(broker, fuzz_topics.well_behaved) == expected, replay
    assert broker.stop() == 0, broker.log_text()[-4000:]


def restart(broker: BrokerProcess) -> None:
    """Start a stopped broker again and wait for its new broker.ready."""
    ready_before = broker.log_text().count("broker.ready")
    broker.start()
    wait_for(
        lambda: broker.log_text().count("broker.ready") > ready_before,
        30,
        "broker.ready after the restart",
    )


def read_from_start(broker: BrokerProcess, topic: str) -> list[bytes | None]:
    """Every record value of partition 0, from offset 0 to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"reread-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes | None] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                break
            if error is not None:
                raise KafkaException(error)
            values.append(message.value())
    finally:
        consumer.close()
    return values


def check_segments(
    data_dir: Path, topics: FuzzTopics, produced: int, replay: str
) -> None:
    """Every batch on disk passes the broker's checks; the well-behaved
    topic holds its records once, offsets contiguous; corrupt topics are empty."""
    partition_dirs = [
        d for d in data_dir.iterdir() if d.is_dir() and not d.name.startswith("__")
    ]
    for partition_dir in partition_dirs:
        for segment, position, batch in segment_batches(partition_dir):
            problem = validate_batch(batch)
            assert problem is None, f"{segment} at {position}: {problem} {replay}"

    for name in topics.corrupt:
        for partition in range(3):
            segments = list((data_dir / f"{name}-{partition}").glob("*.log"))
            assert all(s.stat().st_size == 0 for s in segments), (segments, replay)

    next_offset = 0
    producer_ids = set()
    for _, _, batch in segment_batches(data_dir / f"{topics.well_behaved}-0"):
        header = parse_header(batch)
        assert header.base_offset == next_offset, replay
        next_offset += header.records_count
        producer_ids.add(header.producer_id)
    assert next_offset == produced, replay
    assert len(producer_ids) == 1 and producer_ids != {-1}, producer_ids
