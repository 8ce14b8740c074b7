"""The writer process, started as the supervisor starts it, with this test
playing supervisor and net processes (``harness.py``): offsets, group
commit, kill -9 under load, idempotence across restarts, recovery of a
corrupt segment tail, a failing partition, metadata changes, clean stop."""

from __future__ import annotations

import json
import random
import resource
import time
from pathlib import Path

import pytest

from broker.log.partition import STATE_FILE
from broker.producer_state import list_snapshot_offsets
from net.kafka.errors import ErrorCode

from .harness import (
    WriterHarness,
    make_batch,
    offsets_are_contiguous,
    read_log,
    wait_until,
    writer_harness,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_writer_assigns_contiguous_offsets_across_partitions_and_rings(
    harness: WriterHarness,
) -> None:
    indexes = harness.create_topic("orders", 3)
    harness.start_writer()

    sent: dict[int, tuple[int, int]] = {}  # request id -> (test id, partition)
    rng = random.Random(5)
    for number in range(600):
        partition = rng.randrange(3)
        [request] = harness.net.send(
            rng.randrange(2),
            indexes[partition],
            [make_batch(number, records=rng.randint(1, 5))],
            acks=rng.choice([1, -1]),
        )
        sent[request] = (number, partition)
        if number % 50 == 0:
            harness.net.drain()
    completions = harness.net.wait_for(list(sent))

    assert all(c.error_code == 0 for c in completions)
    for partition in range(3):
        stored = read_log(harness.data_dir, "orders", partition)
        assert offsets_are_contiguous(stored) and stored[0].base_offset == 0
        by_id = {batch.test_id: batch.base_offset for batch in stored}
        mine = [(r, n) for r, (n, p) in sent.items() if p == partition]
        assert len(by_id) == len(mine) == len(stored)
        for request, number in mine:
            assert harness.net.completions[request].base_offset == by_id[number]
        row = harness.row(indexes[partition])
        assert row["log_end_offset"] == row["high_watermark"]
        assert row["log_end_offset"] == stored[-1].last_offset + 1
    assert harness.counter("writer_batches") == 600
    assert harness.net.duplicates == 0


def test_writer_group_commit_syncs_once_per_partition_per_turn(
    harness: WriterHarness,
) -> None:
    indexes = harness.create_topic("orders", 2)
    harness.start_writer()
    harness.net.wait_for(harness.net.send(0, indexes[0], [make_batch(0)]))
    turns = harness.counter("writer_turns")
    fsyncs = harness.counter("writer_fsyncs")

    # 200 acks=-1 batches for two partitions, published at once: one turn.
    ids = []
    for number in range(1, 201):
        ids += harness.net.send(
            0, indexes[number % 2], [make_batch(number)], acks=-1, publish=False
        )
    harness.net.senders[0].publish()
    completions = harness.net.wait_for(ids)

    assert all(c.error_code == 0 for c in completions)
    assert harness.counter("writer_turns") - turns == 1
    assert harness.counter("writer_fsyncs") - fsyncs == 2
    histogram = harness.memory.counters.histogram_id("fsync_us")
    assert harness.memory.counters.histograms[1, histogram, 0] >= 2


def _send_burst(
    harness: WriterHarness,
    indexes: list[int],
    rng: random.Random,
    first: int,
    count: int,
    sent: dict[int, tuple[int, int]],
    acks: tuple[int, ...] = (1, -1),
) -> None:
    for number in range(first, first + count):
        partition = rng.randrange(len(indexes))
        [request] = harness.net.send(
            rng.randrange(2),
            indexes[partition],
            [make_batch(number, records=rng.randint(1, 8), value_size=200)],
            acks=rng.choice(acks),
        )
        sent[request] = (number, partition)


def test_writer_killed_under_load_loses_nothing_and_appends_nothing_twice(
    harness: WriterHarness,
) -> None:
    indexes = harness.create_topic("orders", 3)
    writer = harness.start_writer()
    rng = random.Random(11)
    sent: dict[int, tuple[int, int]] = {}
    completed_before_kill: set[int] = set()
    number = 0

    # Eight kills, each at a random moment of a steady load: the writer
    # lives 50-400 ms while bursts keep arriving, then SIGKILL. Every other
    # round is acks=1 only: without fdatasync a turn is mostly writev, so
    # kills land between append and commit too.
    for round_number in range(8):
        acks = (1,) if round_number % 2 else (1, -1)
        deadline = time.monotonic() + rng.uniform(0.05, 0.4)
        while time.monotonic() < deadline:
            _send_burst(harness, indexes, rng, number, 20, sent, acks)
            number += 20
            harness.net.drain()
        writer.kill()
        harness.net.drain()
        completed_before_kill |= set(harness.net.completions)
        writer = harness.start_writer()

    completions = harness.net.wait_for(list(sent), timeout_s=60)
    writer.stop()

    assert all(c.error_code == 0 for c in completions)
    log = harness.log_text()
    print(
        f"{number} batches; restarts that cut uncommitted bytes:"
        f" {log.count('writer.uncommitted_removed')} partitions,"
        f" that completed applied descriptors: {log.count('writer.redelivered')}"
    )
    for partition in range(3):
        stored = read_log(harness.data_dir, "orders", partition)
        assert offsets_are_contiguous(stored) and stored[0].base_offset == 0
        stored_ids = [batch.test_id for batch in stored]
        assert len(stored_ids) == len(set(stored_ids)), "a batch stored twice"
        by_id = {batch.test_id: batch.base_offset for batch in stored}
        mine = [(r, n) for r, (n, p) in sent.items() if p == partition]
        assert {n for _, n in mine} == set(stored_ids)
        for request, test_id in mine:
            assert harness.net.completions[request].base_offset == by_id[test_id]
    # Completions seen before a kill were not changed by a later one.
    assert completed_before_kill <= set(harness.net.completions)


def _idempotent(test_id: int, sequence: int, epoch: int = 0) -> bytearray:
    return make_batch(
        test_id,
        records=3,
        value_size=400,
        producer_id=42,
        producer_epoch=epoch,
        base_sequence=sequence,
    )


def test_writer_idempotent_state_survives_kill_and_full_restart(
    tmp_path: Path,
) -> None:
    with writer_harness(tmp_path) as harness:
        # Small segments: rolls write producer state snapshots.
        [index] = harness.create_topic("orders", 1, {"segment.bytes": "4096"})
        writer = harness.start_writer()
        ids = []
        for number in range(12):
            ids += harness.net.send(0, index, [_idempotent(number, number * 3)])
        first = harness.net.wait_for(ids)
        assert all(c.error_code == 0 for c in first)
        directory = harness.data_dir / "orders-0"
        assert list_snapshot_offsets(directory), "a roll writes a snapshot"

        # kill -9: the restarted writer still knows the producer.
        writer.kill()
        writer = harness.start_writer()
        [again] = harness.net.wait_for(
            harness.net.send(1, index, [_idempotent(11, 33)])
        )
        assert (again.error_code, again.base_offset) == (0, first[11].base_offset)
        [gap] = harness.net.wait_for(harness.net.send(0, index, [_idempotent(12, 40)]))
        assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER

        # Clean stop and a new broker (fresh shared memory): snapshot + replay.
        assert writer.stop() == 0
        harness.restart_memory()
        harness.start_writer()
        [dup] = harness.net.wait_for(harness.net.send(0, index, [_idempotent(10, 30)]))
        assert (dup.error_code, dup.base_offset) == (0, first[10].base_offset)
        [old] = harness.net.wait_for(
            harness.net.send(0, index, [_idempotent(13, 0, epoch=-1)])
        )
        assert old.error_code == ErrorCode.INVALID_PRODUCER_EPOCH
        [nxt] = harness.net.wait_for(harness.net.send(0, index, [_idempotent(14, 36)]))
        assert nxt.error_code == 0

        stored = [b.test_id for b in read_log(harness.data_dir, "orders", 0)]
        assert stored == [*range(12), 14]
        loaded = [
            line
            for line in harness.log_text().splitlines()
            if "producer_state.loaded" in line
        ]
        assert "snapshot_offset=None" not in loaded[-1]


def test_writer_truncates_corrupt_segment_tail_and_logs_it(
    harness: WriterHarness,
) -> None:
    [index] = harness.create_topic("orders", 1)
    writer = harness.start_writer()
    ids = harness.net.send(0, index, [make_batch(n, records=4) for n in range(10)])
    harness.net.wait_for(ids)
    assert writer.stop() == 0
    stored = read_log(harness.data_dir, "orders", 0)

    # Flip the last bytes of the last batch (its CRC no longer matches).
    segment = harness.data_dir / "orders-0" / f"{stored[-1].segment:020d}.log"
    data = bytearray(segment.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    segment.write_bytes(data)

    harness.restart_memory()
    harness.start_writer()
    log = harness.log_text()
    assert "log.truncated" in log and "cause=recovery" in log
    assert f"bytes_removed={stored[-1].size}" in log
    assert harness.row(index)["log_end_offset"] == stored[-1].base_offset

    [after] = harness.net.wait_for(harness.net.send(0, index, [make_batch(99)]))
    assert after.base_offset == stored[-1].base_offset
    assert [b.test_id for b in read_log(harness.data_dir, "orders", 0)] == [
        *range(9),
        99,
    ]


def test_writer_write_failure_fails_one_partition_and_heals(
    harness: WriterHarness,
) -> None:
    big = harness.create_topic("big", 1, {"segment.bytes": str(1 << 20)})[0]
    small = harness.create_topic("small", 1)[0]
    writer = harness.start_writer()

    # Files may not grow past 64 KiB in the writer (soft limit: EFBIG, the
    # writer ignores SIGXFSZ as every Python process does); "big" gets there
    # first.
    infinity = resource.RLIM_INFINITY
    resource.prlimit(writer.pid, resource.RLIMIT_FSIZE, (64 << 10, infinity))
    codes = []
    for number in range(40):
        [done] = harness.net.wait_for(
            harness.net.send(0, big, [make_batch(number, value_size=4000)])
        )
        codes.append(done.error_code)
        if done.error_code:
            break
    # Read at once: the writer reopens the partition about 1 s later.
    offline_state = harness.row(big)["state"]
    assert codes[-1] == ErrorCode.KAFKA_STORAGE_ERROR
    assert offline_state == 2
    assert "writer.partition_offline" in harness.log_text()
    [fine] = harness.net.wait_for(harness.net.send(1, small, [make_batch(100)]))
    assert fine.error_code == 0
    assert harness.row(small)["state"] == 1
    # No partial batch: the failed append was cut back.
    stored = read_log(harness.data_dir, "big", 0)
    assert len(stored) == len(codes) - 1

    # Space returns: the writer reopens the partition by itself.
    resource.prlimit(writer.pid, resource.RLIMIT_FSIZE, (infinity, infinity))
    wait_until(lambda: harness.row(big)["state"] == 1, 15, "the partition to heal")
    [healed] = harness.net.wait_for(harness.net.send(0, big, [make_batch(200)]))
    assert (healed.error_code, healed.base_offset) == (0, stored[-1].last_offset + 1)


def test_writer_follows_topic_creation_and_deletion(harness: WriterHarness) -> None:
    harness.start_writer()
    [index] = harness.create_topic("late", 2)[:1]
    [done] = harness.net.wait_for(harness.net.send(0, index, [make_batch(1)]))
    assert (done.error_code, done.base_offset) == (0, 0)

    harness.metadata.delete_topic("late")
    wait_until(
        lambda: (
            not (harness.data_dir / "late-0").exists()
            and harness.row(index)["state"] == 0
        ),
        10,
        "the deleted topic's directory and row",
    )
    [gone] = harness.net.wait_for(harness.net.send(0, index, [make_batch(2)]))
    assert gone.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_writer_sigterm_checkpoints_every_log_and_exits_zero(
    harness: WriterHarness,
) -> None:
    indexes = harness.create_topic("orders", 2)
    writer = harness.start_writer()
    ids = []
    for number in range(20):
        ids += harness.net.send(number % 2, indexes[number % 2], [make_batch(number)])
    harness.net.wait_for(ids)
    assert writer.stop() == 0

    for partition in (0, 1):
        directory = harness.data_dir / f"orders-{partition}"
        state = json.loads((directory / STATE_FILE).read_text())
        stored = read_log(harness.data_dir, "orders", partition)
        assert state["clean_position"] == stored[-1].position + stored[-1].size
        assert list_snapshot_offsets(directory) == [stored[-1].last_offset + 1]
    assert "writer.stopped" in harness.log_text()
