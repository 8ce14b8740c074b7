"""The committed-offsets log: round trips, torn tails, compaction, failures."""

from __future__ import annotations

import errno
import logging
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.control import offsets as offsets_module
from broker.control.offsets import (
    HEADER,
    CommittedOffset,
    OffsetLogError,
    OffsetStore,
    commit_body,
    encode_record,
)


def committed(offset: int, metadata: str | None = "m") -> CommittedOffset:
    return CommittedOffset(offset, 7, metadata, 1_700_000_000_000)


def reopen(data_dir: Path, store: OffsetStore, **options: int) -> OffsetStore:
    store.sync(store.written_sequence)
    store.close()
    return OffsetStore.open(data_dir, **options)


def test_store_round_trips_commits_and_deletes_when_reopened(tmp_path: Path) -> None:
    store = OffsetStore.open(tmp_path)
    store.commit("g1", {("t", 0): committed(5), ("t", 1): committed(9, None)})
    store.commit("g1", {("t", 0): committed(6, "ünïcode")})
    store.commit("g2", {("u", 3): committed(1)})
    store.commit("g3", {("t", 0): committed(2), ("u", 0): committed(4)})
    store.delete_offsets("g1", [("t", 1), ("t", 99)])
    store.delete_group("g2")
    store.delete_topic("u")
    expected = {g: store.fetch(g) for g in store.groups()}
    assert expected == {
        "g1": {("t", 0): committed(6, "ünïcode")},
        "g3": {("t", 0): committed(2)},
    }

    again = reopen(tmp_path, store)
    assert {g: again.fetch(g) for g in again.groups()} == expected
    assert again.fetch("g1", [("t", 0), ("t", 5)]) == {
        ("t", 0): committed(6, "ünïcode")
    }
    assert again.fetch("missing") == {}
    again.close()


def test_store_sequences_advance_and_sync_marks_them_durable(tmp_path: Path) -> None:
    store = OffsetStore.open(tmp_path)
    assert store.written_sequence == store.synced_sequence == 0
    first = store.commit("g", {("t", 0): committed(1)})
    second = store.commit("g", {("t", 0): committed(2)})
    assert (first, second) == (1, 2)
    assert store.commit("g", {}) == 2  # nothing to write
    assert store.delete_group("unknown") == 2
    store.sync(first)
    assert store.synced_sequence == 1
    store.sync(second)
    assert store.synced_sequence == 2
    store.close()


def test_load_truncates_torn_tail_and_keeps_whole_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Two groups: two records that compaction leaves as they are.
    store = OffsetStore.open(tmp_path)
    store.commit("g", {("t", 0): committed(1)})
    store.commit("h", {("t", 1): committed(2)})
    store.sync(store.written_sequence)
    store.close()
    path = store.path
    whole = path.stat().st_size

    # A third record cut short by a crash.
    record = encode_record(commit_body("g", [(("t", 2), committed(3))]))
    with path.open("ab") as file:
        file.write(record[: len(record) - 5])

    caplog.set_level(logging.INFO, logger="broker.control.offsets")
    again = OffsetStore.open(tmp_path)
    assert again.fetch("g") == {("t", 0): committed(1)}
    assert again.fetch("h") == {("t", 1): committed(2)}
    assert path.stat().st_size == whole
    truncated = [
        r for r in caplog.records if r.getMessage() == "offsets.tail_truncated"
    ]
    assert truncated and truncated[0].fields["dropped_bytes"] == len(record) - 5  # type: ignore[attr-defined]

    # Appends continue after the cut.
    again.commit("g", {("t", 2): committed(4)})
    third = reopen(tmp_path, again)
    assert third.fetch("g")[("t", 2)] == committed(4)
    third.close()


def test_load_truncates_record_with_bad_crc(tmp_path: Path) -> None:
    store = OffsetStore.open(tmp_path)
    store.commit("g", {("t", 0): committed(1)})
    store.commit("g", {("t", 0): committed(2)})
    store.sync(store.written_sequence)
    store.close()

    # Flip one byte in the last record's body.
    data = bytearray(store.path.read_bytes())
    data[-3] ^= 0xFF
    store.path.write_bytes(bytes(data))
    again = OffsetStore.open(tmp_path)
    assert again.fetch("g") == {("t", 0): committed(1)}
    again.close()


def test_load_rejects_file_that_is_not_an_offsets_log(tmp_path: Path) -> None:
    directory = tmp_path / "__ringbus" / "offsets"
    directory.mkdir(parents=True)
    (directory / "offsets.log").write_bytes(b"something else entirely")
    with pytest.raises(OffsetLogError, match="bad magic"):
        OffsetStore.open(tmp_path)


def test_load_treats_torn_header_as_new_log(tmp_path: Path) -> None:
    directory = tmp_path / "__ringbus" / "offsets"
    directory.mkdir(parents=True)
    (directory / "offsets.log").write_bytes(HEADER[:3])
    store = OffsetStore.open(tmp_path)
    assert store.groups() == []
    assert store.path.read_bytes() == HEADER
    store.close()


def test_load_compacts_superseded_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = OffsetStore.open(tmp_path)
    for offset in range(200):
        store.commit("g", {("t", 0): committed(offset), ("t", 1): committed(offset)})
    store.commit("gone", {("t", 0): committed(1)})
    store.delete_group("gone")
    before = store.path.stat().st_size

    caplog.set_level(logging.INFO, logger="broker.control.offsets")
    again = reopen(tmp_path, store)
    after = again.path.stat().st_size
    assert after < before / 50
    assert again.groups() == ["g"]
    assert again.fetch("g") == {("t", 0): committed(199), ("t", 1): committed(199)}
    assert "offsets.compacted" in [r.getMessage() for r in caplog.records]

    # A compacted file is left alone on the next open.
    third = reopen(tmp_path, again)
    assert third.path.stat().st_size == after
    assert third.statistics().compactions == 0
    third.close()


def test_store_compacts_when_log_outgrows_bound(tmp_path: Path) -> None:
    store = OffsetStore.open(tmp_path, compact_min_bytes=4096)
    rounds = 0
    while not store.needs_compaction():
        rounds += 1
        store.commit("g", {("t", p): committed(rounds) for p in range(4)})
        assert rounds < 1000
    store.compact()
    assert not store.needs_compaction()
    assert store.synced_sequence == store.written_sequence
    size = store.path.stat().st_size
    assert size < 4096

    # Appends after compaction go to the new file.
    store.commit("g", {("t", 9): committed(99)})
    again = reopen(tmp_path, store, compact_min_bytes=4096)
    assert again.fetch("g")[("t", 3)] == committed(rounds)
    assert again.fetch("g")[("t", 9)] == committed(99)
    again.close()


def test_load_ignores_compaction_copy_left_by_a_crash(tmp_path: Path) -> None:
    store = OffsetStore.open(tmp_path)
    store.commit("g", {("t", 0): committed(1)})
    store = reopen(tmp_path, store)
    leftover = store.path.with_name("offsets.log.compacting")
    leftover.write_bytes(HEADER + b"partial")
    store.close()
    again = OffsetStore.open(tmp_path)
    assert not leftover.exists()
    assert again.fetch("g") == {("t", 0): committed(1)}
    again.close()


def test_failed_write_is_undone_and_store_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OffsetStore.open(tmp_path)
    store.commit("g", {("t", 0): committed(1)})
    size = store.path.stat().st_size

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(offsets_module, "_write_all", half_then_full)
    with pytest.raises(OffsetLogError, match="No space left"):
        store.commit("g", {("t", 0): committed(2)})
    assert store.path.stat().st_size == size
    assert store.fetch("g") == {("t", 0): committed(1)}

    monkeypatch.undo()
    store.commit("g", {("t", 0): committed(3)})
    again = reopen(tmp_path, store)
    assert again.fetch("g") == {("t", 0): committed(3)}
    again.close()


def test_failed_fsync_is_sticky(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OffsetStore.open(tmp_path)
    store.commit("g", {("t", 0): committed(1)})

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(offsets_module.os, "fsync", broken)
    with pytest.raises(OffsetLogError, match="fsync failed"):
        store.sync(store.written_sequence)
    monkeypatch.undo()
    assert store.synced_sequence == 0
    with pytest.raises(OffsetLogError, match="fsync failed"):
        store.commit("g", {("t", 0): committed(2)})
    store.close()


# Operations for the property test: commit, delete offsets, delete group.
operation = st.one_of(
    st.tuples(
        st.just("commit"),
        st.sampled_from(["a", "b"]),
        st.dictionaries(
            st.tuples(st.sampled_from(["t", "ü"]), st.integers(0, 3)),
            st.integers(-1, 2**40),
            min_size=1,
            max_size=3,
        ),
    ),
    st.tuples(
        st.just("delete"),
        st.sampled_from(["a", "b"]),
        st.lists(st.tuples(st.sampled_from(["t", "ü"]), st.integers(0, 3)), max_size=2),
    ),
    st.tuples(st.just("drop"), st.sampled_from(["a", "b"]), st.just(None)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    operations=st.lists(operation, min_size=1, max_size=8), cut=st.integers(0, 10**6)
)
def test_any_cut_of_the_log_loads_as_a_prefix_of_the_operations(
    tmp_path_factory: pytest.TempPathFactory,
    operations: list[tuple[str, str, object]],
    cut: int,
) -> None:
    data_dir = tmp_path_factory.mktemp("cut")
    store = OffsetStore.open(data_dir)
    model: dict[str, dict[tuple[str, int], int]] = {}
    # The model after each record written.
    states: list[dict[str, dict[tuple[str, int], int]]] = [{}]
    for kind, group, argument in operations:
        before = store.written_sequence
        if kind == "commit":
            assert isinstance(argument, dict)
            store.commit(group, {tp: committed(o) for tp, o in argument.items()})
            model.setdefault(group, {}).update(argument)
        elif kind == "delete":
            assert isinstance(argument, list)
            store.delete_offsets(group, argument)
            for tp in argument:
                model.get(group, {}).pop(tp, None)
        else:
            store.delete_group(group)
            model.pop(group, None)
        model = {g: dict(c) for g, c in model.items() if c}
        if store.written_sequence != before:
            states.append({g: dict(c) for g, c in model.items()})
    store.sync(store.written_sequence)
    store.close()

    data = store.path.read_bytes()
    cut_at = len(HEADER) + cut % (len(data) - len(HEADER) + 1)
    store.path.write_bytes(data[:cut_at])
    loaded = OffsetStore.open(data_dir)
    found = {
        g: {tp: c.offset for tp, c in loaded.fetch(g).items()} for g in loaded.groups()
    }
    loaded.close()
    assert found in states
    if cut_at == len(data):
        assert found == states[-1]


def test_record_layout_matches_documented_format() -> None:
    body = commit_body("g", [(("t", 1), CommittedOffset(42, -1, None, 5))])
    record = encode_record(body)
    length, _crc = struct.unpack_from(">iI", record)
    assert length == len(record) - 4
    assert body == (
        b"\x01"  # kind COMMIT
        + b"\x00\x01g"
        + b"\x00\x00\x00\x01"  # one entry
        + b"\x00\x01t"
        + struct.pack(">iqiq", 1, 42, -1, 5)
        + b"\xff\xff"  # null metadata
    )
