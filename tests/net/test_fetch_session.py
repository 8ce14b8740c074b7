"""The fetch session cache (KIP-227) without I/O: contexts, epochs, the
partitions an incremental answer names, cached offsets, bounds."""

from __future__ import annotations

import random
from typing import Any

import pytest

from net.fetch_session import (
    CREATE,
    ERROR,
    FINAL_EPOCH,
    INCREMENTAL,
    INITIAL_EPOCH,
    MAX_EPOCH,
    SESSIONLESS,
    CachedPartition,
    FetchContext,
    FetchSessionCache,
    has_records,
    next_epoch,
    process_index,
)
from net.kafka.codec import FileRange
from net.kafka.errors import ErrorCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(index: int = 3, **limits: Any) -> tuple[FetchSessionCache, Clock]:
    clock = Clock()
    cache = FetchSessionCache(index, clock=clock, rng=random.Random(7), **limits)
    return cache, clock


def topics(spec: dict[str, dict[int, int]], max_bytes: int = 1000) -> list[Any]:
    """Request topics: {topic: {partition: fetch offset}}."""
    return [
        {
            "topic": name,
            "partitions": [
                {
                    "partition": partition,
                    "fetch_offset": offset,
                    "partition_max_bytes": max_bytes,
                    "log_start_offset": -1,
                }
                for partition, offset in partitions.items()
            ],
        }
        for name, partitions in spec.items()
    ]


def forget(spec: dict[str, list[int]]) -> list[Any]:
    return [{"topic": name, "partitions": parts} for name, parts in spec.items()]


class Log:
    """What the partitions hold now: high watermark and log start offset,
    and which partitions return records or an error when read."""

    def __init__(self) -> None:
        self.high_watermark: dict[tuple[str, int], int] = {}
        self.log_start: dict[tuple[str, int], int] = {}
        self.errors: dict[tuple[str, int], int] = {}

    def read(self, entries: list[CachedPartition]) -> list[dict[str, Any]]:
        results = []
        for entry in entries:
            key = (entry.topic, entry.partition)
            error = self.errors.get(key, 0)
            high_watermark = -1 if error else self.high_watermark.get(key, 0)
            records: Any = b""
            if not error and entry.fetch_offset < high_watermark:
                records = FileRange(5, entry.fetch_offset * 10, 10)
            results.append(
                {
                    "partition_index": entry.partition,
                    "error_code": error,
                    "high_watermark": high_watermark,
                    "log_start_offset": -1 if error else self.log_start.get(key, 0),
                    "records": records,
                }
            )
        return results


def answer(context: FetchContext, log: Log) -> tuple[int, int, list[Any]]:
    entries = context.entries()
    return context.finish(entries, log.read(entries))


def named(topics_out: list[Any]) -> list[tuple[str, int]]:
    return [
        (topic["topic"], partition["partition_index"])
        for topic in topics_out
        for partition in topic["partitions"]
    ]


def open_session(
    cache: FetchSessionCache, log: Log, spec: dict[str, dict[int, int]]
) -> int:
    context = cache.new_context(0, INITIAL_EPOCH, topics(spec), [])
    assert context.kind == CREATE
    error, session_id, out = answer(context, log)
    assert error == 0 and session_id != 0
    assert sorted(named(out)) == sorted((t, p) for t in spec for p in spec[t])
    return session_id


def test_epochs_wrap_from_int32_max_to_one() -> None:
    assert next_epoch(INITIAL_EPOCH) == 1
    assert next_epoch(41) == 42
    assert next_epoch(MAX_EPOCH) == 1


def test_has_records_tells_empty_bytes_from_a_file_range() -> None:
    assert not has_records(b"")
    assert not has_records(None)
    assert has_records(b"x")
    assert has_records(FileRange(3, 0, 61))


def test_sessionless_fetch_names_every_partition_and_keeps_nothing() -> None:
    cache, _ = make_cache()
    log = Log()
    context = cache.new_context(0, FINAL_EPOCH, topics({"a": {0: 0, 1: 0}}), [])
    assert context.kind == SESSIONLESS
    error, session_id, out = answer(context, log)
    assert (error, session_id) == (0, 0)
    assert named(out) == [("a", 0), ("a", 1)]
    assert len(cache) == 0 and cache.cached_partitions == 0


def test_epoch_zero_creates_a_session_caching_each_partition() -> None:
    cache, _ = make_cache(index=3)
    log = Log()
    log.high_watermark[("a", 1)] = 9
    log.log_start[("a", 1)] = 2
    request = topics({"a": {0: 0, 1: 4}, "b": {0: 0}}, max_bytes=777)
    request[0]["partitions"][1]["log_start_offset"] = 1
    context = cache.new_context(0, INITIAL_EPOCH, request, [])

    error, session_id, out = answer(context, log)

    assert error == 0
    assert session_id > 0 and process_index(session_id) == 3
    assert named(out) == [("a", 0), ("a", 1), ("b", 0)]
    session = cache.sessions[session_id]
    assert session.epoch == 1
    cached = session.partitions[("a", 1)]
    assert cached.fetch_offset == 4
    assert cached.max_bytes == 777
    assert cached.fetcher_log_start_offset == 1
    assert (cached.high_watermark, cached.log_start_offset) == (9, 2)
    assert cache.cached_partitions == 3


def test_session_ids_carry_the_process_index_and_differ() -> None:
    log = Log()
    ids = set()
    for index in (0, 1, 255):
        cache, _ = make_cache(index=index)
        for _ in range(20):
            session_id = open_session(cache, log, {"a": {0: 0}})
            assert process_index(session_id) == index
            assert 0 < session_id <= MAX_EPOCH
            ids.add(session_id)
    assert len(ids) == 60
    with pytest.raises(ValueError):
        FetchSessionCache(256)


def test_an_id_issued_by_another_process_is_not_found() -> None:
    log = Log()
    first, _ = make_cache(index=0)
    second, _ = make_cache(index=1)
    session_id = open_session(first, log, {"a": {0: 0}})
    context = second.new_context(session_id, 1, [], [])
    assert context.kind == ERROR
    assert answer(context, log) == (ErrorCode.FETCH_SESSION_ID_NOT_FOUND, 0, [])


def test_a_wrong_epoch_is_refused_and_the_session_goes_on() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0}})

    for wrong in (2, 7, -5):
        context = cache.new_context(session_id, wrong, [], [])
        assert answer(context, log) == (ErrorCode.INVALID_FETCH_SESSION_EPOCH, 0, [])

    context = cache.new_context(session_id, 1, [], [])
    assert context.kind == INCREMENTAL
    assert answer(context, log) == (0, session_id, [])
    assert cache.sessions[session_id].epoch == 2
    # The same epoch twice is a replay.
    again = cache.new_context(session_id, 1, [], [])
    assert again.kind == ERROR and again.error == ErrorCode.INVALID_FETCH_SESSION_EPOCH


def test_an_unknown_id_is_not_found() -> None:
    cache, _ = make_cache()
    context = cache.new_context(12345 << 8 | 3, 1, topics({"a": {0: 0}}), [])
    assert answer(context, Log()) == (ErrorCode.FETCH_SESSION_ID_NOT_FOUND, 0, [])
    # Session id 0 with a positive epoch is no session either.
    context = cache.new_context(0, 1, [], [])
    assert context.error == ErrorCode.FETCH_SESSION_ID_NOT_FOUND


def test_the_epoch_wraps_in_a_session() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0}})
    cache.sessions[session_id].epoch = MAX_EPOCH
    context = cache.new_context(session_id, MAX_EPOCH, [], [])
    assert answer(context, log)[0] == 0
    assert cache.sessions[session_id].epoch == 1
    assert cache.new_context(session_id, 1, [], []).kind == INCREMENTAL


def test_incremental_answers_name_only_partitions_that_changed() -> None:
    cache, _ = make_cache()
    log = Log()
    spec = {"a": {0: 0, 1: 0, 2: 0}, "b": {0: 0}}
    session_id = open_session(cache, log, spec)

    # Nothing changed.
    assert answer(cache.new_context(session_id, 1, [], []), log) == (0, session_id, [])

    # Records arrive in a-1: its fetch returns them (the cached offset is 0).
    log.high_watermark[("a", 1)] = 5
    _, _, out = answer(cache.new_context(session_id, 2, [], []), log)
    assert named(out) == [("a", 1)]
    assert has_records(out[0]["partitions"][0]["records"])
    assert out[0]["partitions"][0]["high_watermark"] == 5

    # The log start of b-0 moves: named, without records.
    log.log_start[("b", 0)] = 3
    log.high_watermark[("b", 0)] = 3
    request = topics({"b": {0: 3}, "a": {1: 5}})
    _, _, out = answer(cache.new_context(session_id, 3, request, []), log)
    assert named(out) == [("b", 0)]
    assert out[0]["partitions"][0]["log_start_offset"] == 3

    # An error is named every time, and once more when it clears.
    log.errors[("a", 2)] = ErrorCode.NOT_LEADER_OR_FOLLOWER
    for epoch in (4, 5):
        _, _, out = answer(cache.new_context(session_id, epoch, [], []), log)
        assert named(out) == [("a", 2)]
        assert out[0]["partitions"][0]["error_code"] == ErrorCode.NOT_LEADER_OR_FOLLOWER
    del log.errors[("a", 2)]
    _, _, out = answer(cache.new_context(session_id, 6, [], []), log)
    assert named(out) == [("a", 2)]
    assert out[0]["partitions"][0]["error_code"] == 0
    assert answer(cache.new_context(session_id, 7, [], []), log) == (0, session_id, [])


def test_a_partition_added_to_a_session_is_named_once() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0}})
    request = topics({"c": {4: 0}})
    _, _, out = answer(cache.new_context(session_id, 1, request, []), log)
    assert named(out) == [("c", 4)]
    assert cache.cached_partitions == 2
    assert answer(cache.new_context(session_id, 2, [], []), log) == (0, session_id, [])


def test_a_changed_fetch_offset_with_nothing_new_is_not_named() -> None:
    # Kafka names a partition for what the answer carries, not for what the
    # request changed.
    cache, _ = make_cache()
    log = Log()
    log.high_watermark[("a", 0)] = 5
    session_id = open_session(cache, log, {"a": {0: 0}})
    request = topics({"a": {0: 5}}, max_bytes=64)
    context = cache.new_context(session_id, 1, request, [])
    assert answer(context, log) == (0, session_id, [])
    cached = cache.sessions[session_id].partitions[("a", 0)]
    assert (cached.fetch_offset, cached.max_bytes) == (5, 64)


def test_partitions_not_in_the_request_keep_their_last_requested_offset() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0, 1: 0}})
    log.high_watermark[("a", 0)] = 10
    log.high_watermark[("a", 1)] = 10

    # Both return records from offset 0.
    context = cache.new_context(session_id, 1, [], [])
    entries = context.entries()
    assert [(e.partition, e.fetch_offset) for e in entries] == [(0, 0), (1, 0)]
    _, _, out = context.finish(entries, log.read(entries))
    assert sorted(named(out)) == [("a", 0), ("a", 1)]

    # The client consumed a-0 only and sends its new position: a-1 is read
    # again from 0 (not skipped past what the client has not taken), a-0
    # from 10.
    context = cache.new_context(session_id, 2, topics({"a": {0: 10}}), [])
    offsets = {e.partition: e.fetch_offset for e in context.entries()}
    assert offsets == {0: 10, 1: 0}
    _, _, out = answer(context, log)
    assert named(out) == [("a", 1)]
    assert out[0]["partitions"][0]["records"] == FileRange(5, 0, 10)


def test_forgotten_partitions_leave_the_session() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0, 1: 0}, "b": {0: 0}})
    context = cache.new_context(session_id, 1, [], forget({"a": [1], "zz": [9]}))
    assert sorted(cache.sessions[session_id].partitions) == [("a", 0), ("b", 0)]
    assert cache.cached_partitions == 2
    answer(context, log)

    log.high_watermark[("a", 1)] = 4
    log.high_watermark[("b", 0)] = 4
    _, _, out = answer(cache.new_context(session_id, 2, [], []), log)
    assert named(out) == [("b", 0)]


def test_forgetting_every_partition_ends_the_session() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0}})
    context = cache.new_context(session_id, 1, [], forget({"a": [0]}))
    assert context.kind == SESSIONLESS
    assert answer(context, log) == (0, 0, [])
    assert len(cache) == 0 and cache.cached_partitions == 0


def test_final_epoch_closes_the_session_and_fetches_without_one() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0, 1: 0}})
    context = cache.new_context(session_id, FINAL_EPOCH, topics({"a": {1: 0}}), [])
    assert context.kind == SESSIONLESS
    error, new_id, out = answer(context, log)
    assert (error, new_id, named(out)) == (0, 0, [("a", 1)])
    assert len(cache) == 0 and cache.cached_partitions == 0
    assert cache.new_context(session_id, 1, [], []).error == (
        ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    )


def test_initial_epoch_with_an_id_replaces_the_session() -> None:
    cache, _ = make_cache()
    log = Log()
    old = open_session(cache, log, {"a": {0: 0}})
    context = cache.new_context(old, INITIAL_EPOCH, topics({"a": {0: 0, 1: 0}}), [])
    _, new, out = answer(context, log)
    assert new not in (0, old)
    assert named(out) == [("a", 0), ("a", 1)]
    assert list(cache.sessions) == [new]
    assert cache.cached_partitions == 2
    assert cache.new_context(old, 1, [], []).error == (
        ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    )


def test_re_evaluating_a_parked_fetch_leaves_the_session_alone() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0, 1: 0}})
    context = cache.new_context(session_id, 1, [], [])
    session = cache.sessions[session_id]

    # Evaluated three times while parked; the state moves meanwhile.
    for high_watermark in (0, 3, 6):
        log.high_watermark[("a", 1)] = high_watermark
        entries = context.entries()
        last = log.read(entries)
        assert session.partitions[("a", 1)].high_watermark == 0
    assert session.epoch == 2

    _, _, out = context.finish(entries, last)
    assert named(out) == [("a", 1)]
    assert session.partitions[("a", 1)].high_watermark == 6
    with pytest.raises(RuntimeError):
        context.finish(entries, last)

    # Nothing moved since the answer: the next fetch names nothing.
    log.high_watermark[("a", 1)] = 6
    context = cache.new_context(session_id, 2, topics({"a": {1: 6}}), [])
    assert answer(context, log) == (0, session_id, [])


def test_a_session_is_created_when_the_full_fetch_is_answered() -> None:
    cache, _ = make_cache()
    log = Log()
    context = cache.new_context(0, INITIAL_EPOCH, topics({"a": {0: 0}}), [])
    context.entries()
    assert len(cache) == 0
    answer(context, log)
    assert len(cache) == 1


def test_a_fetch_parked_behind_a_newer_one_of_its_session_is_refused() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0}})
    first = cache.new_context(session_id, 1, [], [])
    second = cache.new_context(session_id, 2, [], [])
    assert answer(first, log) == (
        ErrorCode.INVALID_FETCH_SESSION_EPOCH,
        session_id,
        [],
    )
    assert answer(second, log) == (0, session_id, [])


def test_partitions_that_returned_records_go_last() -> None:
    cache, _ = make_cache()
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0, 1: 0, 2: 0}})
    log.high_watermark[("a", 0)] = 2
    answer(cache.new_context(session_id, 1, [], []), log)
    order = [e.partition for e in cache.new_context(session_id, 2, [], []).entries()]
    assert order == [1, 2, 0]


def test_answers_group_consecutive_partitions_of_a_topic() -> None:
    cache, _ = make_cache()
    request = (
        topics({"a": {0: 0, 1: 0}}) + topics({"b": {0: 0}}) + topics({"a": {2: 0}})
    )
    context = cache.new_context(0, FINAL_EPOCH, request, [])
    _, _, out = answer(context, Log())
    assert [(t["topic"], len(t["partitions"])) for t in out] == [
        ("a", 2),
        ("b", 1),
        ("a", 1),
    ]


def test_idle_sessions_expire_lazily() -> None:
    cache, clock = make_cache(idle_s=120.0)
    log = Log()
    old = open_session(cache, log, {"a": {0: 0}})
    clock.now += 60
    young = open_session(cache, log, {"a": {0: 0}})
    clock.now += 61
    # The old one was idle for 121 s: any request removes it.
    assert cache.new_context(young, 1, [], []).kind == INCREMENTAL
    assert list(cache.sessions) == [young]
    assert cache.cached_partitions == 1
    assert cache.new_context(old, 1, [], []).error == (
        ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    )


def test_use_keeps_a_session_alive() -> None:
    cache, clock = make_cache(idle_s=120.0)
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0}})
    for epoch in range(1, 6):
        clock.now += 100
        context = cache.new_context(session_id, epoch, [], [])
        assert answer(context, log) == (0, session_id, [])


def test_the_session_count_is_bounded() -> None:
    cache, clock = make_cache(max_sessions=4, idle_s=120.0)
    log = Log()
    small = [open_session(cache, log, {"a": {0: 0}}) for _ in range(4)]

    # All four are recent: a new session is not created, the fetch is
    # answered without one.
    context = cache.new_context(0, INITIAL_EPOCH, topics({"a": {0: 0, 1: 0}}), [])
    error, session_id, out = answer(context, log)
    assert (error, session_id, len(named(out))) == (0, 0, 2)
    assert len(cache) == 4

    # Older than the idle time but in use: a larger session evicts the
    # smallest, an equal one does not.
    clock.now += 70
    for in_use in small[1:]:
        answer(cache.new_context(in_use, 1, [], []), log)
    clock.now += 70
    assert cache.new_context(small[1], 2, [], []).kind == INCREMENTAL
    assert len(cache) == 3  # small[0] was idle for 140 s: expired
    open_session(cache, log, {"a": {0: 0}})
    assert len(cache) == 4
    context = cache.new_context(0, INITIAL_EPOCH, topics({"a": {0: 0}}), [])
    assert answer(context, log)[1] == 0
    bigger = open_session(cache, log, {"a": {0: 0, 1: 0, 2: 0}})
    assert len(cache) == 4 and bigger in cache.sessions
    assert sum(1 for s in small if s in cache.sessions) == 2


def test_cached_partitions_are_bounded() -> None:
    cache, _ = make_cache(max_partitions=5)
    log = Log()
    session_id = open_session(cache, log, {"a": {0: 0, 1: 0, 2: 0}})

    # A full fetch too large for what is left gets no session.
    context = cache.new_context(0, INITIAL_EPOCH, topics({"b": {0: 0, 1: 0, 2: 0}}), [])
    assert answer(context, log)[1] == 0
    assert cache.cached_partitions == 3

    # Growing past the bound closes the session.
    context = cache.new_context(session_id, 1, topics({"a": {3: 0}}), [])
    assert context.kind == INCREMENTAL
    answer(context, log)
    context = cache.new_context(session_id, 2, topics({"a": {4: 0, 5: 0}}), [])
    assert context.error == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    assert len(cache) == 0 and cache.cached_partitions == 0
