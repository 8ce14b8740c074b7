"""Tests of perf.kafka_wire: pre-built batches and frames, the request
pipeline's bookkeeping, frame cutting and the pipelined fetch cursor."""

from __future__ import annotations

import pytest

from broker.log.batch import (
    parse_header,
    rewrite_base_offset,
    validate_batch,
)
from net.kafka import codec
from net.kafka.schema import ApiKey
from perf.kafka_wire import (
    CORRELATION_ID_POSITION,
    PRODUCE_VERSION,
    FetchCursor,
    FrameReader,
    PipelineError,
    RequestPipeline,
    WireError,
    batch_offsets,
    build_produce_frames,
    frame_correlation_id,
    make_batch,
    produce_errors,
    records_per_batch,
    set_correlation_id,
)


@pytest.mark.parametrize(
    ("batch_bytes", "record_bytes"),
    [(65536, 100), (65536, 1024), (1 << 20, 100), (1000, 10), (4096, 10_000)],
)
def test_make_batch_is_valid_and_fits_when_sized_by_records_per_batch(
    batch_bytes: int, record_bytes: int
) -> None:
    count = records_per_batch(batch_bytes, record_bytes)
    batch = make_batch(record_bytes, count)

    assert validate_batch(batch) is None
    header = parse_header(batch)
    assert header.records_count == count
    assert header.last_offset_delta == count - 1
    assert header.producer_id == -1
    # Fits the size asked for, unless one record alone is larger.
    assert len(batch) <= batch_bytes or count == 1
    # And is not wastefully small (the estimate counts framing generously).
    if count > 1:
        assert len(batch) > 0.85 * batch_bytes


def test_make_batch_values_are_random_not_repeated_when_many_records() -> None:
    batch = make_batch(100, 64)
    body = bytes(batch[61:])
    # 64 distinct random 100-byte values: no value repeats in the body.
    assert len(body) > 64 * 100
    assert body.count(body[10:40]) == 1


def test_make_batch_rejects_empty_when_count_is_zero() -> None:
    with pytest.raises(ValueError, match=r"and >= 1 record"):
        make_batch(100, 0)


def test_build_produce_frames_groups_partitions_when_decoded() -> None:
    count = records_per_batch(4096, 100)
    batch = make_batch(100, count)
    frames = build_produce_frames("events", [0, 1, 2, 3, 4], batch, count, 100, 2, 1)

    assert [f.partitions for f in frames] == [(0, 1), (2, 3), (4,)]
    assert [f.records for f in frames] == [2 * count, 2 * count, count]
    assert frames[0].value_bytes == 2 * count * 100
    header, offset = codec.decode_request_header(memoryview(frames[1].frame)[4:])
    assert (header.api_key, header.api_version) == (ApiKey.PRODUCE, PRODUCE_VERSION)
    body = codec.decode_request_body(header, memoryview(frames[1].frame)[4:], offset)
    assert body["acks"] == 1
    data = body["topic_data"][0]
    assert data["name"] == "events"
    assert [p["index"] for p in data["partition_data"]] == [2, 3]
    for partition in data["partition_data"]:
        assert bytes(partition["records"]) == bytes(batch)


def test_set_correlation_id_changes_only_the_correlation_id_bytes() -> None:
    batch = make_batch(100, 10)
    frame = build_produce_frames("t", [0], batch, 10, 100, 1, -1)[0].frame
    before = bytes(frame)

    set_correlation_id(frame, 0x01020304)

    changed = [i for i, (a, b) in enumerate(zip(before, frame, strict=True)) if a != b]
    window = range(CORRELATION_ID_POSITION, CORRELATION_ID_POSITION + 4)
    assert changed and all(i in window for i in changed)
    header, _ = codec.decode_request_header(memoryview(frame)[4:])
    assert header.correlation_id == 0x01020304


def test_pipeline_refuses_to_start_beyond_its_in_flight_bound() -> None:
    pipeline = RequestPipeline(3)
    for _ in range(3):
        pipeline.start(0, 1, 1)

    assert not pipeline.has_room()
    with pytest.raises(PipelineError, match="pipeline full: 3 requests in flight"):
        pipeline.start(0, 1, 1)

    pipeline.complete(1)
    assert pipeline.has_room() and len(pipeline) == 2


def test_pipeline_hands_out_correlation_ids_in_order_and_completes_oldest() -> None:
    pipeline = RequestPipeline(4, first_correlation_id=10)
    ids = [pipeline.start(100 + i, records=i, value_bytes=i * 10) for i in range(4)]
    assert ids == [10, 11, 12, 13]

    done = [pipeline.complete(i) for i in ids]
    assert [d.intended_ns for d in done] == [100, 101, 102, 103]
    assert [d.records for d in done] == [0, 1, 2, 3]
    assert pipeline.started == pipeline.completed == 4


def test_pipeline_raises_when_a_response_is_out_of_order() -> None:
    pipeline = RequestPipeline(4)
    pipeline.start(0, 1, 1)
    pipeline.start(0, 1, 1)

    with pytest.raises(PipelineError, match="correlation id 2, expected 1"):
        pipeline.complete(2)
    with pytest.raises(PipelineError, match="while no request is in flight"):
        RequestPipeline(1).complete(1)


def test_pipeline_wraps_correlation_ids_when_at_int32_max() -> None:
    pipeline = RequestPipeline(2, first_correlation_id=0x7FFFFFFF)
    assert pipeline.start(0, 1, 1) == 0x7FFFFFFF
    assert pipeline.start(0, 1, 1) == 0


def _response_frame(correlation_id: int, payload: bytes) -> bytes:
    body = correlation_id.to_bytes(4, "big") + payload
    return len(body).to_bytes(4, "big") + body


def test_frame_reader_cuts_frames_when_fed_in_pieces() -> None:
    reader = FrameReader(initial_bytes=16)
    stream = b"".join(_response_frame(i, bytes([i]) * (i * 7)) for i in range(1, 6))
    frames = []
    for position in range(0, len(stream), 5):
        reader.feed(stream[position : position + 5])
        while (frame := reader.next_frame()) is not None:
            frames.append((frame_correlation_id(frame), bytes(frame[4:])))

    assert frames == [(i, bytes([i]) * (i * 7)) for i in range(1, 6)]
    assert reader.buffered() == 0
    assert reader.capacity() >= 16


def test_frame_reader_raises_when_a_size_is_out_of_range() -> None:
    reader = FrameReader(max_frame_bytes=1000)
    reader.feed((5000).to_bytes(4, "big") + b"x" * 10)
    with pytest.raises(WireError, match=r"frame size 5000 outside 4\.\.1000"):
        reader.next_frame()


def _log(batch_records: list[int]) -> bytes:
    """Batches with consecutive offsets, as a fetch would return them."""
    out = bytearray()
    offset = 0
    for count in batch_records:
        batch = make_batch(20, count)
        rewrite_base_offset(batch, offset)
        out += batch
        offset += count
    return bytes(out)


def test_batch_offsets_skips_a_trailing_partial_batch() -> None:
    data = _log([3, 4, 5])
    assert [(b, last) for b, last, _ in batch_offsets(data)] == [
        (0, 2),
        (3, 6),
        (7, 11),
    ]
    assert [(b, last) for b, last, _ in batch_offsets(data[:-10])] == [(0, 2), (3, 6)]


def _serve(log: bytes, offset: int, max_bytes: int) -> list[tuple[int, int, int]]:
    """What the broker returns for a fetch at ``offset``: whole batches from
    the one holding it, at least one, at most ``max_bytes``."""
    batches = list(batch_offsets(log))
    first = next(i for i, (_b, last, _s) in enumerate(batches) if last >= offset)
    picked = [batches[first]]
    total = batches[first][2]
    for batch in batches[first + 1 :]:
        if total + batch[2] > max_bytes:
            break
        picked.append(batch)
        total += batch[2]
    return picked


def test_fetch_cursor_counts_each_offset_once_when_batches_are_uniform() -> None:
    log = _log([10] * 40)
    size = next(batch_offsets(log))[2]
    cursor = FetchCursor(0, 400)
    in_flight: list[int] = []
    counted = 0
    for _ in range(1000):
        while len(in_flight) < 4 and (offset := cursor.next_request()) is not None:
            in_flight.append(offset)
        if not in_flight:
            break
        offset = in_flight.pop(0)
        records, _ = cursor.on_response(offset, _serve(log, offset, 3 * size))
        counted += records

    assert cursor.done and counted == 400
    assert cursor.wasted_responses == 0


def test_fetch_cursor_rewinds_when_a_response_starts_beyond_next_offset() -> None:
    cursor = FetchCursor(0, 100)
    first = cursor.next_request()
    assert first == 0
    # No step known yet: one request at a time.
    assert cursor.next_request() is None

    assert cursor.on_response(0, [(0, 9, 100)]) == (10, 100)
    # One response seen: the step aims short of its 10 records (7/8).
    ahead = [cursor.next_request() for _ in range(3)]
    assert ahead == [10, 18, 26]

    # The request at 10 came back short (only 10..14): the response to 18
    # starts past the next offset (15), so it counts nothing and rewinds.
    assert cursor.on_response(10, [(10, 14, 50)]) == (5, 50)
    assert cursor.on_response(18, [(18, 27, 100)]) == (0, 0)
    assert cursor.wasted_responses == 1
    assert cursor.next_request() == 15


def test_fetch_cursor_asks_again_when_the_last_response_stops_short() -> None:
    cursor = FetchCursor(0, 35)
    assert cursor.next_request() == 0
    assert cursor.on_response(0, [(0, 9, 100), (10, 19, 100)]) == (20, 200)
    # The step (7/8 of 20 records) puts the next request at 20 and the one
    # after at 37, past the end: only 20 goes out.
    assert [cursor.next_request() for _ in range(2)] == [20, None]

    # The response to 20 stops at 29 (its segment ends there; the batch at
    # 30 is in the next one). Nothing is in flight that would reach 30, so
    # the cursor asks for 30 rather than wait for a response that never
    # comes.
    assert cursor.on_response(20, [(20, 29, 100)]) == (10, 100)
    assert not cursor.done
    assert cursor.next_request() == 30
    assert cursor.on_response(30, [(30, 34, 50)]) == (5, 50)
    assert cursor.done


def test_fetch_cursor_counts_the_tail_of_a_batch_when_offset_is_inside() -> None:
    cursor = FetchCursor(5, 20)
    assert cursor.next_request() == 5
    assert cursor.on_response(5, [(0, 9, 100), (10, 19, 100)]) == (15, 200)
    assert cursor.done and cursor.next_request() is None


def test_produce_errors_names_failed_partitions_when_decoded() -> None:
    response = {
        "responses": [
            {
                "name": "t",
                "partition_responses": [
                    {"index": 0, "error_code": 0},
                    {"index": 1, "error_code": 6},
                ],
            }
        ]
    }
    assert produce_errors(response) == ["t[1]: error 6"]
