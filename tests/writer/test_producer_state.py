"""Producer state: the idempotence checks, sequence wrap, snapshots and the
header-only replay that rebuilds the state on open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.log.partition import LogConfig, PartitionLog
from broker.producer_state import (
    APPEND,
    DUPLICATE,
    INT32_MAX,
    REJECT,
    ProducerState,
    last_sequence,
    list_snapshot_offsets,
    load_producer_state,
    snapshot_path,
)
from net.kafka.errors import ErrorCode

from .harness import make_batch


def _check(state: ProducerState, *args: int) -> tuple[int, int]:
    turn = state.begin_turn()
    verdict = turn.check(*args)
    turn.commit()
    return verdict


def test_check_accepts_next_sequence_and_finds_duplicates_in_last_five() -> None:
    state = ProducerState()
    base = 0
    for number in range(7):
        assert _check(state, 1, 0, number * 2, 1, base) == (APPEND, base)
        base += 2
    # Batches 2..6 are remembered, 0 and 1 are not.
    assert _check(state, 1, 0, 4, 1, 99) == (DUPLICATE, 4)
    assert _check(state, 1, 0, 12, 1, 99) == (DUPLICATE, 12)
    assert _check(state, 1, 0, 0, 1, 99) == (
        REJECT,
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
    )
    # Same first sequence, different length: not a duplicate.
    assert _check(state, 1, 0, 12, 0, 99)[0] == REJECT


def test_check_fences_old_epoch_and_requires_sequence_zero_for_new_one() -> None:
    state = ProducerState()
    assert _check(state, 5, 3, 40, 0, 0)[0] == APPEND  # unknown: any sequence
    assert _check(state, 5, 2, 41, 0, 1) == (
        REJECT,
        ErrorCode.INVALID_PRODUCER_EPOCH,
    )
    assert _check(state, 5, 4, 41, 0, 1) == (
        REJECT,
        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
    )
    assert _check(state, 5, 4, 0, 0, 1) == (APPEND, 1)
    assert _check(state, 5, 3, 41, 0, 2)[0] == REJECT


def test_check_wraps_sequence_past_int32_max() -> None:
    assert last_sequence(INT32_MAX - 1, 3) == 1
    state = ProducerState()
    assert _check(state, 9, 0, INT32_MAX - 1, 3, 0)[0] == APPEND
    assert _check(state, 9, 0, 2, 0, 4) == (APPEND, 4)


def test_turn_without_commit_leaves_state_unchanged() -> None:
    state = ProducerState()
    turn = state.begin_turn()
    assert turn.check(3, 0, 0, 0, 0)[0] == APPEND
    assert turn.check(3, 0, 0, 0, 1) == (DUPLICATE, 0)  # staged in this turn
    assert state.producers == {}


def test_snapshot_round_trip_and_drop_before(tmp_path: Path) -> None:
    state = ProducerState()
    for producer in range(3):
        for number in range(producer + 1):
            _check(state, producer, 1, number, 0, producer * 10 + number)
    path = state.write_snapshot(tmp_path, 30)
    loaded, offset = ProducerState.from_bytes(path.read_bytes())
    assert offset == 30
    assert {k: (v.epoch, v.batches) for k, v in loaded.producers.items()} == {
        k: (v.epoch, v.batches) for k, v in state.producers.items()
    }
    assert loaded.drop_before(11) == 1  # producer 0 ends at 0, producer 1 at 11
    assert sorted(loaded.producers) == [1, 2]

    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    with pytest.raises(ValueError, match="CRC"):
        ProducerState.from_bytes(bytes(data))


def _append(log: PartitionLog, batch: Any) -> int:
    return log.append([memoryview(batch)], 0)[0]


def _idempotent(number: int, sequence: int) -> Any:
    return make_batch(
        number, records=2, producer_id=77, producer_epoch=0, base_sequence=sequence
    )


def test_load_uses_snapshot_then_replays_headers_after_it(tmp_path: Path) -> None:
    log = PartitionLog.open(tmp_path, "orders", 0, LogConfig(segment_bytes=1024))
    state = ProducerState()
    for number in range(10):
        base = _append(log, _idempotent(number, number * 2))
        state.replay(77, 0, number * 2, 1, base)
        if number == 4:
            state.write_snapshot(log.directory, log.log_end_offset)
    _append(log, make_batch(50))  # not idempotent: replayed, ignored

    loaded, report = load_producer_state(log)
    assert report.snapshot_offset == 10
    assert report.batches_replayed == 6
    assert loaded.producers[77].batches == state.producers[77].batches
    log.close()


def test_load_deletes_snapshots_past_log_end_and_skips_unreadable(
    tmp_path: Path,
) -> None:
    log = PartitionLog.open(tmp_path, "orders", 0, LogConfig())
    for number in range(4):
        _append(log, _idempotent(number, number * 2))
    good = ProducerState()
    good.replay(77, 0, 0, 1, 0)
    good.write_snapshot(log.directory, 2)  # covers the first batch
    snapshot_path(log.directory, 6).write_bytes(b"junk")  # unreadable
    snapshot_path(log.directory, 100).write_bytes(b"from a cut tail")

    loaded, report = load_producer_state(log)
    assert report.snapshots_deleted == (100,)
    assert list_snapshot_offsets(log.directory) == [2, 6]
    assert report.snapshot_offset == 2
    assert [b[0] for b in loaded.producers[77].batches] == [0, 2, 4, 6]
    log.close()
