"""WriterCore in-process: one append and one fdatasync per partition per turn,
answers, idempotence, DeleteRecords, metadata, storage failures, and a
restart after the writer stopped at each step of a turn."""

from __future__ import annotations

import errno
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.log.batch import TIMESTAMP_TYPE_BIT, parse_header, validate_batch
from broker.log.partition import PartitionLog
from broker.producer_state import list_snapshot_offsets
from broker.writer_core import WriterCore
from broker.writer_partitions import REOPEN_FIRST_S, STATE_OFFLINE, STATE_ONLINE
from net.kafka.errors import ErrorCode

from .harness import (
    InProcessBroker,
    make_batch,
    offsets_are_contiguous,
    read_log,
)

pytestmark = pytest.mark.timeout(120)


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Counter:
    calls: Counter = Counter()
    original = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def _count_log_syncs(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Count fdatasync calls on segment ``.log`` files (index files are
    synced beside them when they changed)."""
    calls: Counter = Counter()
    original = os.fdatasync

    def counting(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
            calls["fdatasync"] += 1
        original(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


def test_turn_appends_once_and_syncs_once_per_partition(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexes = broker.create_topic("orders", 3)
    broker.start_core()
    appends = _count_calls(monkeypatch, PartitionLog, "append_assigned")
    syncs = _count_log_syncs(monkeypatch)

    # 60 batches over 3 partitions and 2 rings, all in one turn; acks=-1 on
    # partitions 0 and 1 only.
    ids: dict[int, list[int]] = {}
    for number in range(60):
        partition = number % 3
        ids[number] = broker.net.send(
            number % 2,
            indexes[partition],
            [make_batch(number, records=1 + number % 4)],
            acks=-1 if partition < 2 else 1,
            publish=False,
        )
    for sender in broker.net.senders:
        sender.publish()

    assert broker.turn() == 60
    assert appends["append_assigned"] == 3
    assert syncs["fdatasync"] == 2
    completions = broker.net.wait_for([i[0] for i in ids.values()], 1.0)
    assert all(c.error_code == 0 for c in completions)

    for partition in range(3):
        stored = read_log(broker.data_dir, "orders", partition)
        assert offsets_are_contiguous(stored)
        assert stored[0].base_offset == 0
        by_id = {batch.test_id: batch.base_offset for batch in stored}
        for number in range(partition, 60, 3):
            completion = broker.net.completions[ids[number][0]]
            assert completion.base_offset == by_id[number]
            assert completion.partition == indexes[partition]
        row = broker.row(indexes[partition])
        assert row["log_end_offset"] == stored[-1].last_offset + 1
        assert row["high_watermark"] == row["log_end_offset"]
        assert row["high_watermark_position"] == stored[-1].position + stored[-1].size
        assert row["state"] == STATE_ONLINE


def test_turn_hands_each_partition_its_ring_runs_in_one_append(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches that lie back to back in a ring reach writev as one buffer;
    a data-area wrap, another partition's batches in between and another
    ring each start a new one. Offsets, answers and index lookups come out
    as batch by batch."""
    orders, other = broker.create_topic("orders", 2)
    broker.start_core()
    # Move ring 0's data head near the end of its 1 MiB area.
    for number in range(10):
        broker.send_and_turn(0, other, [make_batch(900 + number, value_size=70_000)])

    handed: dict[str, list[int]] = {}
    original = PartitionLog.append_assigned

    def append_assigned(
        self: PartitionLog, buffers: Any, columns: Any, now_ms: int
    ) -> int:
        handed[self.topic_partition] = [len(buffer) for buffer in buffers]
        return int(original(self, buffers, columns, now_ms))

    monkeypatch.setattr(PartitionLog, "append_assigned", append_assigned)
    ids: list[int] = []
    expected: list[int] = []  # test ids of orders-0 in ring order
    test_id_of: dict[int, int] = {}  # request id -> test id, orders-0
    for request in range(12):
        batch_ids = [request * 100 + n for n in range(9)]
        batches = [make_batch(i, 1 + i % 3, 100 + i * 397 % 7_000) for i in batch_ids]
        sent = broker.net.send(0, orders, batches, publish=False)
        test_id_of.update(zip(sent, batch_ids, strict=True))
        ids += sent
        expected += batch_ids
        if request == 5:
            ids += broker.net.send(0, other, [make_batch(999)], publish=False)
    ring_one = [5_000 + n for n in range(8)]
    sent = broker.net.send(1, orders, [make_batch(i, 2, 3_000) for i in ring_one])
    test_id_of.update(zip(sent, ring_one, strict=True))
    ids += sent
    expected += ring_one
    for sender in broker.net.senders:
        sender.publish()

    assert broker.turn() == len(ids)
    completions = broker.net.wait_for(ids, 1.0)
    assert all(c.error_code == 0 for c in completions)

    # 116 batches of orders-0 in four runs: breaks where ring 0's data area
    # wraps, at the other partition's batch and at ring 1.
    assert len(handed["orders-0"]) == 4
    stored = read_log(broker.data_dir, "orders", 0)
    assert [batch.test_id for batch in stored] == expected
    assert offsets_are_contiguous(stored)
    assert sum(handed["orders-0"]) == sum(batch.size for batch in stored)
    by_id = {batch.test_id: batch for batch in stored}
    answered = {
        test_id_of[c.request_id]: c.base_offset
        for c in completions
        if c.partition == orders
    }
    assert answered == {i: batch.base_offset for i, batch in by_id.items()}
    log = broker.core.partitions.get(orders).log
    assert log.segment_base_offsets() == [0]
    for batch in stored:
        for offset in (batch.base_offset, batch.last_offset):
            assert log.read_position(offset).position == batch.position


def test_turn_answers_unknown_partition_then_appends_after_metadata_change(
    broker: InProcessBroker,
) -> None:
    broker.create_topic("orders", 1)
    broker.start_core()

    [unknown] = broker.send_and_turn(0, 9, [make_batch(1)])
    assert unknown.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    [outside] = broker.send_and_turn(0, 10_000, [make_batch(2)])
    assert outside.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION

    # A new topic: the unknown index makes the writer reload the metadata.
    [index] = broker.create_topic("late", 1)
    [created] = broker.send_and_turn(1, index, [make_batch(3)])
    assert created.error_code == 0
    assert created.base_offset == 0
    assert [b.test_id for b in read_log(broker.data_dir, "late", 0)] == [3]


def test_turn_removes_deleted_topic_directory_and_row(
    broker: InProcessBroker,
) -> None:
    [index] = broker.create_topic("doomed", 1)
    broker.start_core()
    broker.send_and_turn(0, index, [make_batch(1)])
    assert (broker.data_dir / "doomed-0").is_dir()

    broker.metadata.delete_topic("doomed")
    broker.core.background(now=1e9)
    assert not (broker.data_dir / "doomed-0").exists()
    assert broker.row(index)["state"] == 0
    [late] = broker.send_and_turn(0, index, [make_batch(2)])
    assert late.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_turn_answers_corrupt_message_for_malformed_payload(
    broker: InProcessBroker,
) -> None:
    [index] = broker.create_topic("orders", 1)
    broker.start_core()
    good = make_batch(1)
    short = bytes(good[:40])
    wrong_length = bytearray(make_batch(2))
    wrong_length[11] ^= 1  # batchLength disagrees with the payload length
    completions = broker.send_and_turn(0, index, [short, good, wrong_length])
    assert [c.error_code for c in completions] == [
        ErrorCode.CORRUPT_MESSAGE,
        0,
        ErrorCode.CORRUPT_MESSAGE,
    ]
    assert [b.test_id for b in read_log(broker.data_dir, "orders", 0)] == [1]


def test_delete_records_moves_log_start_and_answers_out_of_range(
    tmp_path: Path,
) -> None:
    broker = InProcessBroker(tmp_path, segment_bytes=2048)
    try:
        [index] = broker.create_topic("orders", 1)
        broker.start_core()
        for number in range(40):
            broker.send_and_turn(0, index, [make_batch(number, value_size=100)])
        end = broker.row(index)["log_end_offset"]

        request = broker.net.delete_records(0, index, 25)
        [done] = broker.net.wait_for([request], 5.0, pump=broker.turn)
        assert done.error_code == 0
        assert done.log_start_offset == 25
        assert broker.row(index)["log_start_offset"] == 25
        first_segment = read_log(broker.data_dir, "orders", 0)[0].segment
        assert 0 < first_segment <= 25

        request = broker.net.delete_records(1, index, end + 5)
        [beyond] = broker.net.wait_for([request], 5.0, pump=broker.turn)
        assert beyond.error_code == ErrorCode.OFFSET_OUT_OF_RANGE

        request = broker.net.delete_records(1, index, -1)
        [high] = broker.net.wait_for([request], 5.0, pump=broker.turn)
        assert high.error_code == 0
        assert high.log_start_offset == end
        [after] = broker.send_and_turn(0, index, [make_batch(99)])
        assert after.base_offset == end
        assert after.log_start_offset == end
    finally:
        broker.close()


def _idempotent(test_id: int, sequence: int, epoch: int = 0, records: int = 2) -> Any:
    return make_batch(
        test_id,
        records=records,
        producer_id=7,
        producer_epoch=epoch,
        base_sequence=sequence,
    )


def test_idempotent_producer_duplicates_gaps_and_epochs(
    broker: InProcessBroker,
) -> None:
    [index] = broker.create_topic("orders", 1)
    broker.start_core()

    # An unknown producer may start at any sequence.
    first, second = broker.send_and_turn(
        0, index, [_idempotent(1, 10), _idempotent(2, 12)]
    )
    assert (first.error_code, second.error_code) == (0, 0)

    # Resent: the same base offset, stored once.
    [again] = broker.send_and_turn(1, index, [_idempotent(2, 12)])
    assert (again.error_code, again.base_offset) == (0, second.base_offset)

    # A gap, then an old epoch after a new one began at 0.
    [gap] = broker.send_and_turn(0, index, [_idempotent(3, 15)])
    assert gap.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    [bad_start] = broker.send_and_turn(0, index, [_idempotent(4, 5, epoch=1)])
    assert bad_start.error_code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    [new_epoch] = broker.send_and_turn(0, index, [_idempotent(5, 0, epoch=1)])
    assert new_epoch.error_code == 0
    [old] = broker.send_and_turn(0, index, [_idempotent(6, 14, epoch=0)])
    assert old.error_code == ErrorCode.INVALID_PRODUCER_EPOCH

    # A batch and its duplicate in the same turn: one copy, one base offset.
    pair = broker.send_and_turn(0, index, [_idempotent(7, 2, 1), _idempotent(7, 2, 1)])
    assert pair[0].base_offset == pair[1].base_offset
    assert [c.error_code for c in pair] == [0, 0]

    stored = [b.test_id for b in read_log(broker.data_dir, "orders", 0)]
    assert stored == [1, 2, 5, 7]


def test_storage_failure_takes_only_that_partition_offline_until_reopened(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = broker.create_topic("good", 1)[0], broker.create_topic("bad", 1)[0]
    broker.start_core()
    broker.send_and_turn(0, bad, [make_batch(1)])

    original = os.writev
    failing = {"on": True}

    def writev(fd: int, buffers: Any) -> int:
        if failing["on"] and "bad-0" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)
    ids = broker.net.send(0, bad, [make_batch(2)]) + broker.net.send(
        0, good, [make_batch(3)]
    )
    failed, fine = broker.net.wait_for(ids, 5.0, pump=broker.turn)
    assert failed.error_code == ErrorCode.KAFKA_STORAGE_ERROR
    assert fine.error_code == 0
    assert broker.row(bad)["state"] == STATE_OFFLINE
    assert broker.row(bad)["log_end_offset"] == 1  # readers keep the old range
    assert broker.row(good)["state"] == STATE_ONLINE

    # While offline, batches are refused at once; after space returns the
    # partition is reopened and takes appends at the old log end offset.
    [refused] = broker.send_and_turn(0, bad, [make_batch(4)])
    assert refused.error_code == ErrorCode.KAFKA_STORAGE_ERROR
    failing["on"] = False
    broker.core.background(now=time.monotonic() + REOPEN_FIRST_S + 0.1)
    assert broker.row(bad)["state"] == STATE_ONLINE
    [healed] = broker.send_and_turn(0, bad, [make_batch(5)])
    assert (healed.error_code, healed.base_offset) == (0, 1)
    assert [b.test_id for b in read_log(broker.data_dir, "bad", 0)] == [1, 5]


class _Stop(Exception):
    """Stands in for the kill: the turn ends here, nothing is cleaned up."""


@pytest.mark.parametrize(
    "stop_in", ["_store_answers", "_commit", "_flush", "_complete", "_release"]
)
def test_restart_after_stop_at_each_step_appends_nothing_twice(
    broker: InProcessBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stop_in: str,
) -> None:
    indexes = broker.create_topic("orders", 2)
    broker.start_core()
    before = broker.send_and_turn(0, indexes[0], [make_batch(0)], acks=-1)
    assert before[0].error_code == 0

    # A turn with acks=-1 and acks=1 batches on both partitions and rings,
    # plus an idempotent one, stopped at ``stop_in``.
    ids = []
    for number in range(1, 13):
        ids += broker.net.send(
            number % 2,
            indexes[number % 2],
            [make_batch(number, records=2)],
            acks=-1 if number % 3 else 1,
        )
    ids += broker.net.send(
        0,
        indexes[0],
        [make_batch(13, producer_id=3, producer_epoch=0, base_sequence=0)],
    )

    def stop(*_: object) -> None:
        raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(WriterCore, stop_in, stop)
        with pytest.raises(_Stop):
            broker.turn()

    caplog.set_level("INFO")
    broker.restart_core()
    completions = broker.net.wait_for(ids, 5.0, pump=broker.turn)
    assert all(c.error_code == 0 for c in completions)

    # Past the commit, the restarted core completes from the stored answers;
    # before it, the appended bytes are cut and the batches applied again.
    committed = stop_in in ("_flush", "_complete", "_release")
    assert broker.core.redelivered == (len(ids) if committed else 0)
    removed = [
        r for r in caplog.records if r.getMessage() == "writer.uncommitted_removed"
    ]
    assert len(removed) == (0 if committed else 2)
    for partition in (0, 1):
        stored = read_log(broker.data_dir, "orders", partition)
        assert offsets_are_contiguous(stored)
        stored_ids = [batch.test_id for batch in stored]
        assert len(stored_ids) == len(set(stored_ids))
        by_id = {batch.test_id: batch.base_offset for batch in stored}
        for completion, number in zip(completions, range(1, 14), strict=True):
            if completion.partition == indexes[partition]:
                assert by_id[number] == completion.base_offset
    every = {b.test_id for p in (0, 1) for b in read_log(broker.data_dir, "orders", p)}
    assert every == set(range(14))

    # The idempotent batch resent after the restart is a duplicate.
    [again] = broker.send_and_turn(
        1,
        indexes[0],
        [make_batch(13, producer_id=3, producer_epoch=0, base_sequence=0)],
    )
    assert again.base_offset == completions[-1].base_offset


def test_background_retention_deletes_old_segments_and_prunes_producers(
    tmp_path: Path,
) -> None:
    broker = InProcessBroker(tmp_path)
    try:
        # Batches carry 2020 timestamps; retention is switched on later
        # through a topic config, as an AlterConfigs would.
        [index] = broker.create_topic("orders", 1, {"segment.bytes": "2048"})
        broker.start_core()
        for number in range(20):
            broker.send_and_turn(
                0,
                index,
                [
                    make_batch(
                        number,
                        value_size=200,
                        producer_id=number,
                        producer_epoch=0,
                        base_sequence=0,
                    )
                ],
            )
        assert read_log(broker.data_dir, "orders", 0)[0].segment == 0

        broker.metadata.set_configs("orders", {"retention.ms": "60000"})
        broker.core.background(now=time.monotonic() + 11)
        stored = read_log(broker.data_dir, "orders", 0)
        # Only the active segment stays; producers whose batches went with
        # the deleted segments are forgotten.
        assert {b.segment for b in stored} == {stored[-1].segment}
        assert stored[0].test_id > 0
        row = broker.row(index)
        assert row["log_start_offset"] == stored[0].base_offset
        producers = broker.core.partitions.get(index).producers.producers
        assert sorted(producers) == [b.test_id for b in stored]
    finally:
        broker.close()


def test_background_checkpoints_written_partitions_every_flush_interval(
    tmp_path: Path,
) -> None:
    broker = InProcessBroker(tmp_path, flush_ms=50)
    try:
        [index] = broker.create_topic("orders", 1)
        broker.start_core()
        [done] = broker.send_and_turn(
            0, index, [make_batch(1, producer_id=4, producer_epoch=0, base_sequence=0)]
        )

        directory = broker.data_dir / "orders-0"
        state = directory / "log-state.json"
        before = json.loads(state.read_text())["clean_position"]
        assert list_snapshot_offsets(directory) == []
        broker.core.background(now=time.monotonic() + 1)
        # The flusher thread writes the clean point; collecting its report
        # snapshots the producer state.
        assert broker.core.partitions.wait_for_checkpoints(10) == 1
        after = json.loads(state.read_text())["clean_position"]
        assert before == 0
        assert after == read_log(broker.data_dir, "orders", 0)[-1].size
        # The producer state changed: the checkpoint snapshots it too.
        assert list_snapshot_offsets(directory) == [done.base_offset + 1]
    finally:
        broker.close()


def test_background_checkpoints_only_partitions_written_since_their_last(
    tmp_path: Path,
) -> None:
    broker = InProcessBroker(tmp_path, flush_ms=50)
    try:
        indexes = broker.create_topic("orders", 3)
        broker.start_core()
        partitions = broker.core.partitions
        states = [broker.data_dir / f"orders-{n}" / "log-state.json" for n in range(3)]

        def stamps() -> list[int]:
            return [path.stat().st_ino for path in states]

        broker.send_and_turn(0, indexes[0], [make_batch(1)])
        broker.core.background(now=time.monotonic() + 1)
        assert partitions.wait_for_checkpoints(10) == 1
        first = stamps()

        # Only partition 1 was written since: only its state file changes
        # (each write renames a new file over the old one).
        broker.send_and_turn(0, indexes[1], [make_batch(2)])
        broker.core.background(now=time.monotonic() + 2)
        assert partitions.wait_for_checkpoints(10) == 1
        second = stamps()
        assert [a != b for a, b in zip(first, second, strict=True)] == [
            False,
            True,
            False,
        ]

        # Nothing written: no job at all.
        broker.core.background(now=time.monotonic() + 3)
        assert partitions.flusher.outstanding == 0
        assert stamps() == second
    finally:
        broker.close()


def test_background_checkpoint_sync_failure_takes_partition_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = InProcessBroker(tmp_path, flush_ms=50)
    try:
        [index] = broker.create_topic("orders", 1)
        broker.start_core()
        broker.send_and_turn(0, index, [make_batch(1)])

        def failing_fdatasync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        broker.core.background(now=time.monotonic() + 1)
        # The flusher thread met the error; collecting its report fails the
        # partition on the main thread.
        assert broker.core.partitions.wait_for_checkpoints(10) == 0
        monkeypatch.undo()
        assert broker.row(index)["state"] == STATE_OFFLINE

        [refused] = broker.send_and_turn(0, index, [make_batch(2)])
        assert refused.error_code == ErrorCode.KAFKA_STORAGE_ERROR
    finally:
        broker.close()


def test_turn_wakes_net_processes_with_parked_fetches(
    broker: InProcessBroker,
) -> None:
    [index] = broker.create_topic("orders", 1)
    broker.start_core()
    counters = broker.memory.counters
    parked = counters.counter_id("parked_fetches_gauge")
    wakes = broker.memory.net_wakes
    for notifier in wakes:
        notifier.drain()

    # Net process 1 has a parked fetch, net process 0 none; the batch comes
    # through ring 0, whose completion does not wake net process 1.
    counters.counters[4 + 1, parked] = 1
    broker.send_and_turn(0, index, [make_batch(1)])
    assert wakes[1].drain() == 1

    # No high watermark moved: no wake-up.
    [unknown] = broker.send_and_turn(0, 60, [make_batch(2)])
    assert unknown.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert wakes[1].drain() == 0


def test_restart_after_descriptor_wrap_completes_from_stored_answers(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    [index] = broker.create_topic("orders", 1)
    broker.start_core()
    batch = make_batch(1, records=2)
    capacity = broker.memory.produce_rings[0].capacity

    # Past the end of the descriptor array: receives come back in two views.
    sent = 0
    while sent < capacity + 1000:
        ids = broker.net.send(0, index, [batch] * 3000)
        broker.net.wait_for(ids, 10.0, pump=broker.turn)
        sent += 3000
    ids = broker.net.send(0, index, [batch] * 10)
    with monkeypatch.context() as patch:

        def stop(*_: object) -> None:
            raise _Stop

        patch.setattr(WriterCore, "_complete", stop)
        with pytest.raises(_Stop):
            broker.turn()

    broker.restart_core()
    done = broker.net.wait_for(ids, 10.0, pump=broker.turn)
    assert broker.core.redelivered == 10
    assert [c.base_offset for c in done] == [2 * (sent + n) for n in range(10)]
    stored = read_log(broker.data_dir, "orders", 0)
    assert len(stored) == sent + 10
    assert offsets_are_contiguous(stored)


def test_internal_fault_is_contained_to_its_partition(
    broker: InProcessBroker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good, bad = broker.create_topic("orders", 2)
    broker.start_core()
    original = PartitionLog.append_assigned

    def append(self: PartitionLog, buffers: Any, columns: Any, now_ms: int) -> int:
        if self.topic_partition == "orders-1":
            raise RuntimeError("a bug")
        return original(self, buffers, columns, now_ms)

    monkeypatch.setattr(PartitionLog, "append_assigned", append)
    ids = broker.net.send(0, good, [make_batch(1)]) + broker.net.send(
        1, bad, [make_batch(2)]
    )
    fine, faulty = broker.net.wait_for(ids, 5.0, pump=broker.turn)
    assert fine.error_code == 0
    assert faulty.error_code == ErrorCode.UNKNOWN_SERVER_ERROR
    assert broker.row(bad)["state"] == STATE_OFFLINE
    assert any(r.getMessage() == "writer.partition_fault" for r in caplog.records)

    monkeypatch.setattr(PartitionLog, "append_assigned", original)
    broker.core.background(now=time.monotonic() + REOPEN_FIRST_S + 0.1)
    [healed] = broker.send_and_turn(1, bad, [make_batch(3)])
    assert (healed.error_code, healed.base_offset) == (0, 0)


def _stored_bytes(data_dir: Path, topic: str) -> list[bytes]:
    stored = read_log(data_dir, topic, 0)
    data = b"".join(
        p.read_bytes() for p in sorted((data_dir / f"{topic}-0").glob("*.log"))
    )
    return [bytes(data[b.position : b.position + b.size]) for b in stored]


def test_turn_stamps_log_append_time_topic_and_answers_with_its_time(
    broker: InProcessBroker,
) -> None:
    [stamped] = broker.create_topic(
        "stamped", 1, {"message.timestamp.type": "LogAppendTime"}
    )
    [plain] = broker.create_topic("plain", 1, {"message.timestamp.type": "CreateTime"})
    broker.start_core()
    sent = [make_batch(number, records=3) for number in range(4)]

    before = int(time.time() * 1000)
    ids = broker.net.send(0, stamped, sent[:2], publish=False)
    ids += broker.net.send(0, plain, sent[2:], publish=False)
    broker.net.send(1, stamped, [sent[0]], publish=False)
    for sender in broker.net.senders:
        sender.publish()
    completions = broker.net.wait_for(ids, 5.0, pump=broker.turn)
    after = int(time.time() * 1000)

    first, second, third, fourth = completions
    assert all(c.error_code == 0 for c in completions)
    assert before <= first.log_append_time <= after
    assert second.log_append_time == first.log_append_time
    assert (third.log_append_time, fourth.log_append_time) == (-1, -1)

    # Stamped on disk: bit 3, maxTimestamp = the answered time, a valid CRC,
    # every other byte from 21 on as sent.
    for stored, original in zip(
        _stored_bytes(broker.data_dir, "stamped"), sent[:2] + sent[:1], strict=True
    ):
        header = parse_header(stored)
        assert validate_batch(stored) is None
        assert header.attributes == TIMESTAMP_TYPE_BIT
        assert header.max_timestamp == first.log_append_time
        assert stored[23:35] == original[23:35]
        assert stored[43:] == original[43:]
    # CreateTime batches are stored as sent, apart from baseOffset.
    for stored, original in zip(
        _stored_bytes(broker.data_dir, "plain"), sent[2:], strict=True
    ):
        assert stored[8:] == bytes(original[8:])

    log = broker.core.partitions.get(stamped).log
    assert log.offset_for_timestamp(first.log_append_time) == 0
    assert log.offset_for_timestamp(first.log_append_time + 1) is None


def test_restart_after_stop_answers_log_append_time_from_the_ring(
    broker: InProcessBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    [index] = broker.create_topic(
        "stamped", 1, {"message.timestamp.type": "LogAppendTime"}
    )
    broker.start_core()
    ids = broker.net.send(0, index, [make_batch(1), make_batch(2)])

    def stop(*_: object) -> None:
        raise _Stop

    with monkeypatch.context() as patch:
        patch.setattr(WriterCore, "_complete", stop)
        with pytest.raises(_Stop):
            broker.turn()

    broker.restart_core()
    done = broker.net.wait_for(ids, 5.0, pump=broker.turn)
    assert broker.core.redelivered == 2
    stamps = [
        parse_header(b).max_timestamp for b in _stored_bytes(broker.data_dir, "stamped")
    ]
    assert [c.log_append_time for c in done] == stamps
    assert stamps[0] > 0


def test_turn_stamps_after_config_changes_to_log_append_time(
    broker: InProcessBroker,
) -> None:
    [index] = broker.create_topic("orders", 1)
    broker.start_core()
    [created] = broker.send_and_turn(0, index, [make_batch(1)])
    assert created.log_append_time == -1

    broker.metadata.set_configs("orders", {"message.timestamp.type": "LogAppendTime"})
    broker.core.partitions.reload_if_changed()
    [appended] = broker.send_and_turn(0, index, [make_batch(2)])
    assert appended.log_append_time > 0
    old, new = _stored_bytes(broker.data_dir, "orders")
    assert parse_header(old).attributes & TIMESTAMP_TYPE_BIT == 0
    assert parse_header(new).max_timestamp == appended.log_append_time
