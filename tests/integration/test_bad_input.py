"""Bad input at the Kafka front, one case at a time, against one broker.

Frame-level faults (a frame over RINGBUS_MAX_REQUEST_BYTES, an unknown API
key, an unsupported version, a truncated body, a garbage header, a peer
that stops mid-frame) close that connection only, with a WARNING
``conn.closed`` naming the peer and the reason. Batch-level faults are
answered per partition (CORRUPT_MESSAGE, INVALID_RECORD,
INVALID_REQUIRED_ACKS) and nothing that failed its checks reaches the log.
After every case a connection opened before it, and a new one, still work,
and the broker has logged no ERROR.
"""

from __future__ import annotations

import functools
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping

import crc32c
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.log.batch import (
    ATTRIBUTES,
    CRC,
    LAST_OFFSET_DELTA,
    MAGIC,
    RECORDS_COUNT,
    build_batch,
)
from net.kafka import codec
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.conftest import BrokerProcess
from tests.integration.fuzzing import Wire, list_offsets, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MAX_REQUEST_BYTES = 64 * 1024

# Topics created once for the module: (name, partitions).
GOOD_TOPIC = ("bad-input-good", 2)
CORRUPT_TOPIC = ("bad-input-corrupt", 1)
COUNT_TOPIC = ("bad-input-count", 1)
ACKS_TOPIC = ("bad-input-acks", 1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(
        tmp_path_factory.mktemp("bad-input") / "data",
        max_request_bytes=MAX_REQUEST_BYTES,
    )
    process.start()
    try:
        with Wire(process.kafka_port) as wire:
            for name, partitions in (
                GOOD_TOPIC,
                CORRUPT_TOPIC,
                COUNT_TOPIC,
                ACKS_TOPIC,
            ):
                create_topic(wire, name, partitions)
            # CreateTopics answers once the metadata is stored; the writer
            # brings the partitions online shortly after (clients retry an
            # unknown partition, these tests assert on the first answer).
            for name, partitions in (
                GOOD_TOPIC,
                CORRUPT_TOPIC,
                COUNT_TOPIC,
                ACKS_TOPIC,
            ):
                wait_for(
                    functools.partial(_online, wire, name, partitions),
                    30,
                    f"{name} online",
                )
        yield process
        assert process.stop() == 0, process.log_text()[-4000:]
    finally:
        process.cleanup()


def _online(wire: Wire, name: str, partitions: int) -> bool:
    """Whether ListOffsets answers every partition of ``name`` without error."""
    answers = list_offsets(wire, name, range(partitions))
    return all(code == 0 for code, _ in answers.values())


def create_topic(wire: Wire, name: str, partitions: int) -> None:
    response = wire.request(
        ApiKey.CREATE_TOPICS,
        4,
        {
            "topics": [
                {
                    "name": name,
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "assignments": [],
                    "configs": [],
                }
            ],
            "timeout_ms": 10_000,
            "validate_only": False,
        },
    )
    assert response["topics"][0]["error_code"] == 0, response


def batch(count: int = 3) -> bytearray:
    now = int(time.time() * 1000)
    return build_batch([(b"k", b"value-%d" % i, [], now) for i in range(count)])


def produce(
    wire: Wire,
    version: int,
    topic: str,
    partitions: Mapping[int, bytes | None],
    acks: int = -1,
) -> dict[int, dict[str, object]]:
    """One Produce request; the partition responses by partition index."""
    body = {
        "transactional_id": None,
        "acks": acks,
        "timeout_ms": 10_000,
        "topic_data": [
            {
                "name": topic,
                "partition_data": [
                    {"index": index, "records": records}
                    for index, records in partitions.items()
                ],
            }
        ],
    }
    response = wire.request(ApiKey.PRODUCE, version, body)
    (topic_response,) = response["responses"]
    return {p["index"]: p for p in topic_response["partition_responses"]}


def segment_bytes(broker: BrokerProcess, topic: str, partition: int) -> int:
    directory = broker.data_dir / f"{topic}-{partition}"
    return sum(segment.stat().st_size for segment in directory.glob("*.log"))


def error_lines(broker: BrokerProcess) -> list[str]:
    return [
        line
        for line in broker.log_text().splitlines()
        if " ERROR " in line or "Traceback" in line or "process.exited" in line
    ]


def assert_broker_serves(broker: BrokerProcess, *earlier: Wire) -> None:
    """Connections opened before the bad input, and a new one, still work;
    nothing was logged at ERROR."""
    with Wire(broker.kafka_port) as fresh:
        for wire in (*earlier, fresh):
            response = wire.request(ApiKey.METADATA, 8, {"topics": None})
            names = {topic["name"] for topic in response["topics"]}
            assert GOOD_TOPIC[0] in names
    assert error_lines(broker) == []


def closed_with_warning(
    broker: BrokerProcess, wire: Wire, reason: str, detail: str = ""
) -> str:
    """Assert the broker closed ``wire`` and logged why, naming the peer;
    returns the log line."""
    peer = wire.local_address
    assert wire.closed_by_broker(), "the broker kept the connection open"
    pattern = re.compile(
        r"WARNING net-\d+ conn\.closed connection=\d+ "
        + rf"peer={re.escape(peer)} reason=\"?{re.escape(reason)}\"?( |$).*"
    )
    found: list[str] = []

    def logged() -> bool:
        found[:] = [m.group(0) for m in pattern.finditer(broker.log_text())]
        return bool(found)

    wait_for(logged, 10, f"conn.closed for {peer} with reason {reason!r}")
    assert detail in found[0], found[0]
    return found[0]


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def header(api_key: int, api_version: int, client_id: bytes = b"bad") -> bytes:
    return struct.pack(">hhih", api_key, api_version, 7, len(client_id)) + client_id


# -- frame-level faults: the connection closes -----------------------------------


def test_frame_over_max_request_bytes_closes_only_its_connection(
    broker: BrokerProcess,
) -> None:
    with Wire(broker.kafka_port) as bystander, Wire(broker.kafka_port) as wire:
        wire.send(struct.pack(">i", MAX_REQUEST_BYTES + 1) + b"\x00" * 64)
        closed_with_warning(
            broker,
            wire,
            "bad frame",
            f"frame of {MAX_REQUEST_BYTES + 1} bytes exceeds the limit of "
            f"{MAX_REQUEST_BYTES} bytes",
        )
        assert_broker_serves(broker, bystander)


def test_frame_at_max_request_bytes_is_served(broker: BrokerProcess) -> None:
    """The limit is inclusive: a Produce frame of exactly the limit appends."""
    topic, _ = GOOD_TOPIC
    value_size = MAX_REQUEST_BYTES - 200
    body: dict[str, object] = {}
    for _ in range(10):
        records = bytes(build_batch([(None, b"v" * value_size, [], 0)]))
        body = {
            "transactional_id": None,
            "acks": 1,
            "timeout_ms": 10_000,
            "topic_data": [
                {"name": topic, "partition_data": [{"index": 1, "records": records}]}
            ],
        }
        size = len(codec.encode_request(ApiKey.PRODUCE, 8, 1, "wire", body)) - 4
        if size == MAX_REQUEST_BYTES:
            break
        value_size += MAX_REQUEST_BYTES - size
    with Wire(broker.kafka_port) as wire:
        response = wire.request(ApiKey.PRODUCE, 8, body)
    (partition,) = response["responses"][0]["partition_responses"]
    assert partition["error_code"] == 0, partition


@pytest.mark.parametrize(
    ("api_key", "api_version", "reason", "detail"),
    [
        (1000, 0, "unsupported api", "unsupported api key 1000 version 0"),
        # LeaderAndIsr: a Kafka API that a broker serves only to controllers.
        (4, 0, "unsupported api", "unsupported api key 4 version 0"),
        (ApiKey.METADATA, -1, "unsupported api", "version -1"),
        # Produce v0-v2 are advertised for feature checks but refused.
        (ApiKey.PRODUCE, 2, "unsupported api version", "api_key=0 api_version=2"),
        (ApiKey.FETCH, 12, "unsupported api version", "api_key=1 api_version=12"),
        (ApiKey.FETCH, 99, "unsupported api", "unsupported api key 1 version 99"),
    ],
)
def test_unknown_api_or_version_closes_only_its_connection(
    broker: BrokerProcess, api_key: int, api_version: int, reason: str, detail: str
) -> None:
    with Wire(broker.kafka_port) as bystander, Wire(broker.kafka_port) as wire:
        wire.send(frame(header(api_key, api_version) + b"\x00" * 16))
        closed_with_warning(broker, wire, reason, detail)
        assert_broker_serves(broker, bystander)


def test_truncated_body_closes_only_its_connection(broker: BrokerProcess) -> None:
    whole = codec.encode_request(
        ApiKey.METADATA, 8, 3, "wire", {"topics": [{"name": GOOD_TOPIC[0]}]}
    )
    payload = whole[4:-6]
    with Wire(broker.kafka_port) as bystander, Wire(broker.kafka_port) as wire:
        wire.send(frame(payload))
        closed_with_warning(broker, wire, "bad request body", "truncated")
        assert_broker_serves(broker, bystander)


def test_peer_closing_mid_frame_is_logged(broker: BrokerProcess) -> None:
    """A frame whose sender stops after part of it: the broker sees the end
    of the stream inside the frame and says so."""
    whole = codec.encode_request(ApiKey.METADATA, 8, 3, "wire", {"topics": None})
    with Wire(broker.kafka_port) as bystander, Wire(broker.kafka_port) as wire:
        wire.send(whole[:-3])
        wire.sock.shutdown(socket.SHUT_WR)
        closed_with_warning(broker, wire, "peer closed mid-frame", "bytes=")
        assert_broker_serves(broker, bystander)


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (frame(b"\x00\x03\x00"), "bad request header", "truncated"),
        (frame(struct.pack(">hhih", 3, 8, 1, -5)), "bad request header", "negative"),
        (frame(struct.pack(">hhih", 3, 8, 1, 200) + b"x"), "bad request header", ""),
        (frame(header(3, 8, b"\xff\xfe")), "bad request header", "UTF-8"),
        (struct.pack(">i", -1) + b"junk", "bad frame", "negative frame size"),
        (frame(header(3, 8) + b"\x00" + b"\xff" * 9), "bad request body", ""),
        (frame(header(3, 4) + b"\x00\x00\x00\x00\x01\x02"), "bad request body", ""),
    ],
    ids=[
        "short-header",
        "negative-client-id",
        "client-id-past-frame",
        "client-id-not-utf8",
        "negative-size",
        "garbage-flexible-body",
        "leftover-bytes",
    ],
)
def test_garbage_closes_only_its_connection(
    broker: BrokerProcess, data: bytes, reason: str, detail: str
) -> None:
    with Wire(broker.kafka_port) as bystander, Wire(broker.kafka_port) as wire:
        wire.send(data)
        closed_with_warning(broker, wire, reason, detail)
        assert_broker_serves(broker, bystander)


def test_responses_before_a_bad_frame_are_sent_before_the_close(
    broker: BrokerProcess,
) -> None:
    """Responses leave at the end of the loop turn; a bad request in the
    same read must not drop the answers to the good requests before it.
    (A bad size prefix is different: the scan that finds it refuses the
    whole read, see ``net.kafka.framing.scan_frames``.)"""
    good = [
        codec.encode_request(
            ApiKey.METADATA, 8, correlation_id, "wire", {"topics": None}
        )
        for correlation_id in (11, 12, 13)
    ]
    with Wire(broker.kafka_port) as wire:
        wire.send(b"".join(good) + frame(b"\x00\x03\x00"))
        correlation_ids = [
            struct.unpack(">i", wire.read_frame()[:4])[0] for _ in range(len(good))
        ]
        assert correlation_ids == [11, 12, 13]
        closed_with_warning(broker, wire, "bad request header", "truncated")


def test_api_versions_above_max_gets_the_v0_fallback(broker: BrokerProcess) -> None:
    request = bytearray(
        codec.encode_request(
            ApiKey.API_VERSIONS,
            4,
            9,
            "wire",
            {"client_software_name": "x", "client_software_version": "1"},
        )
    )
    struct.pack_into(">h", request, 6, 127)
    with Wire(broker.kafka_port) as wire:
        wire.send(bytes(request))
        correlation_id, body = codec.decode_response(
            ApiKey.API_VERSIONS, 0, wire.read_frame()
        )
        assert correlation_id == 9
        assert body["error_code"] == ErrorCode.UNSUPPORTED_VERSION == 35
        assert body["api_keys"] == [
            {"api_key": ApiKey.API_VERSIONS, "min_version": 0, "max_version": 4}
        ]
        # The connection stays open for the client's retry at a lower version.
        retry = wire.request(ApiKey.API_VERSIONS, 3, {})
        assert retry["error_code"] == 0 and len(retry["api_keys"]) > 10
    assert_broker_serves(broker)


# -- batch-level faults: answered per partition, nothing appended ------------------


@pytest.mark.parametrize("version", [3, 7, 8])
def test_crc_corrupt_batch_fails_alone_in_its_request(
    broker: BrokerProcess, version: int
) -> None:
    topic = CORRUPT_TOPIC[0]
    good_topic = GOOD_TOPIC[0]
    corrupt = batch()
    corrupt[CRC] ^= 0x5A
    with Wire(broker.kafka_port) as wire:
        before = list_offsets(wire, good_topic, [0])[0][1]
        # One request, two topics: the corrupt batch's partition fails and
        # the other partition's batch is appended.
        body = {
            "transactional_id": None,
            "acks": -1,
            "timeout_ms": 10_000,
            "topic_data": [
                {"name": topic, "partition_data": [{"index": 0, "records": corrupt}]},
                {
                    "name": good_topic,
                    "partition_data": [{"index": 0, "records": bytes(batch(3))}],
                },
            ],
        }
        response = wire.request(ApiKey.PRODUCE, version, body)
        bad, good = (t["partition_responses"][0] for t in response["responses"])
        assert bad["error_code"] == ErrorCode.CORRUPT_MESSAGE
        assert good["error_code"] == 0 and good["base_offset"] == before
        if version >= 8:
            assert "CRC" in bad["error_message"]
        assert list_offsets(wire, topic, [0]) == {0: (0, 0)}
        assert list_offsets(wire, good_topic, [0]) == {0: (0, before + 3)}
    assert segment_bytes(broker, topic, 0) == 0
    assert_broker_serves(broker)


def test_crc_corrupt_partition_fails_while_its_sibling_appends(
    broker: BrokerProcess,
) -> None:
    topic = GOOD_TOPIC[0]
    corrupt = batch()
    corrupt[-1] ^= 0x01  # a record byte: the CRC no longer matches
    with Wire(broker.kafka_port) as wire:
        before = {p: list_offsets(wire, topic, [p])[p][1] for p in (0, 1)}
        results = produce(wire, 8, topic, {0: bytes(corrupt), 1: bytes(batch(2))})
        assert results[0]["error_code"] == ErrorCode.CORRUPT_MESSAGE
        assert results[1]["error_code"] == 0
        assert results[1]["base_offset"] == before[1]
        assert list_offsets(wire, topic, [0, 1]) == {
            0: (0, before[0]),
            1: (0, before[1] + 2),
        }
    assert_broker_serves(broker)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (8, ErrorCode.INVALID_RECORD),
        (7, ErrorCode.CORRUPT_MESSAGE),
        (3, ErrorCode.CORRUPT_MESSAGE),
    ],
)
def test_records_count_mismatch_is_refused(
    broker: BrokerProcess, version: int, expected: int
) -> None:
    topic = COUNT_TOPIC[0]
    records = batch(3)
    struct.pack_into(">i", records, RECORDS_COUNT, 5)  # lastOffsetDelta says 3
    assert struct.unpack_from(">i", records, LAST_OFFSET_DELTA)[0] == 2
    _with_crc(records)
    with Wire(broker.kafka_port) as wire:
        results = produce(wire, version, topic, {0: bytes(records)})
        assert results[0]["error_code"] == expected
        assert list_offsets(wire, topic, [0]) == {0: (0, 0)}
    assert segment_bytes(broker, topic, 0) == 0
    assert_broker_serves(broker)


def _with_crc(records: bytearray) -> bytes:
    struct.pack_into(">I", records, CRC, crc32c.crc32c(bytes(records[21:])))
    return bytes(records)


def _magic(records: bytearray, magic: int) -> bytes:
    records[MAGIC] = magic
    return bytes(records)


def _codec(records: bytearray, codec_id: int) -> bytes:
    struct.pack_into(">h", records, ATTRIBUTES, codec_id)
    return _with_crc(records)


def _no_records(records: bytearray) -> bytes:
    struct.pack_into(">i", records, LAST_OFFSET_DELTA, -1)
    struct.pack_into(">i", records, RECORDS_COUNT, 0)
    return _with_crc(records)


@pytest.mark.parametrize(
    ("records", "v8_code", "v7_code"),
    [
        (_magic(batch(), 1), 43, 43),
        (bytes(batch()[:-5]), 2, 2),
        (bytes(batch()) + bytes(batch()), 2, 2),
        (bytes(batch()[:40]), 2, 2),
        (_codec(batch(), 6), 2, 2),
        (_no_records(batch()), 87, 2),
        (b"", 87, 2),
        (None, 87, 2),
    ],
    ids=[
        "magic-1",
        "truncated",
        "two-batches",
        "shorter-than-header",
        "unknown-codec",
        "no-records",
        "empty",
        "null",
    ],
)
def test_malformed_batch_gets_its_error_and_is_not_appended(
    broker: BrokerProcess, records: bytes | None, v8_code: int, v7_code: int
) -> None:
    """UNSUPPORTED_FOR_MESSAGE_FORMAT (43), CORRUPT_MESSAGE (2) or, from
    Produce v8, INVALID_RECORD (87); the partition's log stays empty."""
    topic = COUNT_TOPIC[0]
    with Wire(broker.kafka_port) as wire:
        for version, expected in ((8, v8_code), (7, v7_code)):
            results = produce(wire, version, topic, {0: records})
            assert results[0]["error_code"] == expected, (version, results)
        assert list_offsets(wire, topic, [0]) == {0: (0, 0)}
    assert segment_bytes(broker, topic, 0) == 0
    assert_broker_serves(broker)


@pytest.mark.parametrize("acks", [2, -2, 100])
def test_invalid_acks_are_refused_per_partition(
    broker: BrokerProcess, acks: int
) -> None:
    topic = ACKS_TOPIC[0]
    with Wire(broker.kafka_port) as wire:
        results = produce(wire, 8, topic, {0: bytes(batch())}, acks=acks)
        assert results[0]["error_code"] == ErrorCode.INVALID_REQUIRED_ACKS
        assert list_offsets(wire, topic, [0]) == {0: (0, 0)}
    assert segment_bytes(broker, topic, 0) == 0
    assert_broker_serves(broker)


# -- any bytes at all ------------------------------------------------------------------

_REQUEST_HEADERS = st.builds(
    lambda key, version, client: (
        struct.pack(">hhih", key, version, 1, len(client)) + client
    ),
    st.sampled_from([int(k) for k in ApiKey] + [4, 1000, -1]),
    st.integers(-2, 14),
    st.binary(max_size=8),
)
_PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda h, rest: h + rest, _REQUEST_HEADERS, st.binary(max_size=200)),
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    payload=_PAYLOADS,
    size_delta=st.sampled_from([0, 0, 0, -1, 1, 2**20]),
)
def test_any_frame_leaves_other_connections_working(
    broker: BrokerProcess, payload: bytes, size_delta: int
) -> None:
    """Whatever one connection sends, the broker answers or closes that
    connection and no other: it reads to the end of the stream, then closes."""
    with Wire(broker.kafka_port, timeout_s=5.0) as wire:
        wire.send(struct.pack(">i", len(payload) + size_delta) + payload)
        wire.sock.shutdown(socket.SHUT_WR)
        assert wire.closed_by_broker()
    with Wire(broker.kafka_port) as other:
        assert other.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == 0
    assert error_lines(broker) == []


# -- regressions the fuzzer found ------------------------------------------------------


def test_produce_waiting_for_new_topics_keeps_its_batch_and_its_place(
    broker: BrokerProcess,
) -> None:
    """A Produce that names new topics waits for their creation; the request
    after it on the same connection must neither overwrite its batch in the
    receive buffer nor reach the log before it."""
    topic = GOOD_TOPIC[0]
    first = build_batch([(None, b"A" * 300, [], 1)])
    second = build_batch([(None, b"B" * 300, [], 1)])
    creating = codec.encode_request(
        ApiKey.PRODUCE,
        8,
        1,
        "wire",
        {
            "transactional_id": None,
            "acks": -1,
            "timeout_ms": 10_000,
            "topic_data": [
                {"name": name, "partition_data": [{"index": 0, "records": first}]}
                for name in [topic] + [f"bad-input-new-{i}" for i in range(20)]
            ],
        },
    )
    following = codec.encode_request(
        ApiKey.PRODUCE,
        8,
        2,
        "wire",
        {
            "transactional_id": None,
            "acks": -1,
            "timeout_ms": 10_000,
            "topic_data": [
                {"name": topic, "partition_data": [{"index": 0, "records": second}]}
            ],
        },
    )
    with Wire(broker.kafka_port) as wire:
        wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = list_offsets(wire, topic, [0])[0][1]
        # Two sends: the second request lands in the receive buffer while
        # the first still waits for its topics.
        wire.send(creating)
        wire.send(following)
        for correlation_id in (1, 2):
            answered, body = codec.decode_response(ApiKey.PRODUCE, 8, wire.read_frame())
            assert answered == correlation_id
            errors = [
                p["error_code"]
                for t in body["responses"]
                for p in t["partition_responses"]
            ]
            assert set(errors) == {0}, body

    stored = stored_batches(broker, topic, 0, start)
    assert [bytes(b[8:]) for b in stored] == [bytes(first[8:]), bytes(second[8:])]
    assert_broker_serves(broker)


def stored_batches(
    broker: BrokerProcess, topic: str, partition: int, from_offset: int
) -> list[bytes]:
    """The batches on disk whose base offset is ``from_offset`` or later."""
    from broker.log.batch import iter_batch_bounds, parse_header

    found = []
    directory = broker.data_dir / f"{topic}-{partition}"
    for segment in sorted(directory.glob("*.log")):
        data = segment.read_bytes()
        for position, size in iter_batch_bounds(data):
            batch = data[position : position + size]
            if parse_header(batch).base_offset >= from_offset:
                found.append(batch)
    return found


def test_produce_pipelined_before_a_large_frame_is_served(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """A Produce still waiting for its fsync while the next frame needs a
    bigger receive buffer: the buffer grows (the request no longer holds
    views into it) and both requests are answered."""
    large = broker_factory(net_procs=1).start()
    try:
        with Wire(large.kafka_port) as wire:
            create_topic(wire, "grow", 1)
            small = batch(1)
            big = build_batch([(None, b"y" * 2_000_000, [], 0)])
            frames = [
                codec.encode_request(
                    ApiKey.PRODUCE,
                    8,
                    correlation_id,
                    "wire",
                    {
                        "transactional_id": None,
                        "acks": -1,
                        "timeout_ms": 10_000,
                        "topic_data": [
                            {
                                "name": "grow",
                                "partition_data": [{"index": 0, "records": records}],
                            }
                        ],
                    },
                )
                for correlation_id, records in ((1, small), (2, big))
            ]
            wire.send(frames[0] + frames[1][:300_000])
            time.sleep(0.2)
            wire.send(frames[1][300_000:])
            for correlation_id in (1, 2):
                answered, body = codec.decode_response(
                    ApiKey.PRODUCE, 8, wire.read_frame()
                )
                assert answered == correlation_id
                (partition,) = body["responses"][0]["partition_responses"]
                assert partition["error_code"] == 0
        assert error_lines(large) == []
        assert large.stop() == 0
    finally:
        large.cleanup()


def test_produce_larger_than_the_produce_ring_is_appended_in_parts(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """One request whose batches together exceed the produce ring (each one
    fits): it is placed in parts as the writer frees space, never refused."""
    ring_bytes = 1024 * 1024
    small_ring = broker_factory(ring_bytes=ring_bytes).start()
    try:
        with Wire(small_ring.kafka_port) as wire:
            create_topic(wire, "wide", 4)
            batches = {
                p: bytes(build_batch([(None, bytes([p]) * 400_000, [], 0)]))
                for p in range(4)
            }
            assert sum(map(len, batches.values())) > ring_bytes
            results = produce(wire, 8, "wide", batches)
            assert {p: r["error_code"] for p, r in results.items()} == dict.fromkeys(
                range(4), 0
            )
            assert list_offsets(wire, "wide", range(4)) == {p: (0, 1) for p in range(4)}
        assert error_lines(small_ring) == []
        assert small_ring.stop() == 0
    finally:
        small_ring.cleanup()


def test_announced_frame_size_alone_allocates_no_buffer(
    broker_factory: Callable[..., BrokerProcess],
) -> None:
    """Connections that send only a size prefix near the default
    RINGBUS_MAX_REQUEST_BYTES (100 MiB) make the broker hold what arrived,
    not what was announced (before: 128 MiB per connection)."""
    large = broker_factory().start()
    try:
        net_processes = [
            child
            for child in psutil.Process(large.pid).children()
            if '"role":"net"' in " ".join(child.cmdline())
        ]
        before = sum(p.memory_info().rss for p in net_processes)
        announcers = [
            socket.create_connection(("127.0.0.1", large.kafka_port)) for _ in range(20)
        ]
        try:
            for sock in announcers:
                sock.sendall(struct.pack(">i", 100 * 1024 * 1024 - 1) + b"x" * 10)
            with Wire(large.kafka_port) as wire:
                assert wire.request(ApiKey.API_VERSIONS, 3, {})["error_code"] == 0
            time.sleep(0.5)
            grown = sum(p.memory_info().rss for p in net_processes) - before
        finally:
            for sock in announcers:
                sock.close()
        assert grown < 256 * 1024 * 1024, f"net processes grew by {grown >> 20} MiB"
        assert large.stop() == 0
    finally:
        large.cleanup()
