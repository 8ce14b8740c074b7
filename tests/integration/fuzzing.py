"""Frames for fuzzing the Kafka front, the client that sends them, and a small
blocking client for targeted protocol tests.

What this module owns:

- ``FrameFactory``: seeded generation of request frames of three kinds:
  random bytes behind a plausible size prefix; valid frames for random
  APIs and versions, encoded with ``net.kafka.codec`` from random bodies
  built by walking the request schemas (Produce with valid, corrupt and
  mutated record batches); and byte-level mutations of valid frames (bit
  flips, overwritten integers, truncation, appended junk, a corrupted size
  prefix, splices of two frames). The same seed gives the same frames.
- ``fuzz``: the sending side. Each connection gets a pipeline of frames,
  mostly well-formed requests with hostile frames among them, written
  without waiting for answers while a reader drains the responses and
  checks their order, so the broker never blocks on a full send buffer.
  A pipeline without hostile frames stays open until every request is
  answered; the others are half-closed at once (a few are reset instead).
  Bounded by a frame count and a deadline.
- ``Wire``: one blocking connection for targeted tests: send raw bytes,
  exchange one request, tell whether the broker closed the connection.

Topic roles (``FuzzTopics``) keep the fuzzer's writes away from what the
test checks afterwards:

    well_behaved  named only by Fetch, ListOffsets, Metadata, DescribeConfigs
                  and OffsetFetch frames, which are never mutated
    corrupt       Produce sends only batches that fail the broker's checks
                  (log end offset must stay 0); no API that changes a log,
                  its partitions or its configs names them
    open          valid and corrupt batches, DeleteRecords, configs,
                  CreatePartitions
    victims       all of the above plus CreateTopics and DeleteTopics

A corrupt batch is built so that no single mutation can make it valid: its
fault lies in CRC-covered bytes with a matching CRC, or its CRC differs from
the right one in at least 8 bits.

Run as ``python -m tests.integration.fuzzing --port P --seed S ...``: one
fuzz worker process; it prints its statistics as one JSON line.

Imported by tests/integration/test_fuzz.py and test_bad_input.py; not
thread-safe (one ``random.Random`` per factory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import selectors
import socket
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import crc32c

from broker.log.batch import (
    ATTRIBUTES,
    BATCH_LENGTH,
    CRC,
    HEADER_SIZE,
    LAST_OFFSET_DELTA,
    MAGIC,
    RECORDS_COUNT,
    build_batch,
    validate_batch,
)
from net.kafka import codec
from net.kafka.codec_errors import EncodeError
from net.kafka.schema import REQUESTS, ApiKey, Field
from net.kafka.versions import ADVERTISED, is_accepted

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")

# Fixed-width integer types of the schemas: (low, high).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
}

# APIs whose frames may name the well-behaved topic: they only read.
_READ_ONLY_APIS = frozenset(
    {
        ApiKey.FETCH,
        ApiKey.LIST_OFFSETS,
        ApiKey.METADATA,
        ApiKey.DESCRIBE_CONFIGS,
        ApiKey.OFFSET_FETCH,
    }
)

# APIs that create or delete topics: only victim topics and junk names.
_TOPIC_LIFECYCLE_APIS = frozenset({ApiKey.CREATE_TOPICS, ApiKey.DELETE_TOPICS})

# The share of well-formed frames in a pipeline; the rest are hostile.
WELL_FORMED_SHARE = 0.65

# Config names the broker knows, and values that are legal, borderline or junk.
_CONFIG_NAMES = (
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "cleanup.policy",
    "max.message.bytes",
    "message.timestamp.type",
    "no.such.config",
    "",
)
_CONFIG_VALUES = ("1", "0", "-1", "-2", "1000", "86400000", "delete", "x", "")


@dataclass(frozen=True)
class FuzzTopics:
    """Topic names by role (see the module docstring)."""

    well_behaved: str
    corrupt: tuple[str, ...]
    open: tuple[str, ...]
    victims: tuple[str, ...]
    groups: tuple[str, ...] = ("fz-group-0", "fz-group-1", "fz-group-2")

    def to_json(self) -> str:
        return json.dumps(
            {
                "well_behaved": self.well_behaved,
                "corrupt": list(self.corrupt),
                "open": list(self.open),
                "victims": list(self.victims),
                "groups": list(self.groups),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> FuzzTopics:
        raw = json.loads(text)
        return cls(
            well_behaved=raw["well_behaved"],
            corrupt=tuple(raw["corrupt"]),
            open=tuple(raw["open"]),
            victims=tuple(raw["victims"]),
            groups=tuple(raw["groups"]),
        )


# -- record batches ---------------------------------------------------------------


def _refresh_crc(batch: bytearray) -> None:
    _UINT32.pack_into(batch, CRC, crc32c.crc32c(memoryview(batch)[ATTRIBUTES:]))


def _spoil_crc(batch: bytearray, rng: random.Random) -> None:
    """Replace the CRC with one at least 8 bits away from the right value."""
    right = crc32c.crc32c(memoryview(batch)[ATTRIBUTES:])
    mask = 0
    while bin(mask).count("1") < 8:
        mask = rng.getrandbits(32)
    _UINT32.pack_into(batch, CRC, right ^ mask)


class BatchFactory:
    """Valid and corrupt record batches from one random source."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _blob(self, low: int, high: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(low, high))

    def valid(self) -> bytearray:
        """A batch the broker must accept: uncompressed records, or a
        compression codec over bytes the broker never opens."""
        rng = self.rng
        now = int(time.time() * 1000)
        records = []
        for _ in range(rng.choice((1, 1, 2, 3, 5, 17))):
            key = None if rng.random() < 0.3 else self._blob(0, 20)
            value = None if rng.random() < 0.1 else self._blob(0, 200)
            if rng.random() < 0.005:
                # Large enough to fill a small produce ring, or to exceed
                # half of it (MESSAGE_TOO_LARGE).
                value = bytes(rng.randint(100_000, 700_000))
            headers = [("h", self._blob(0, 8))] if rng.random() < 0.2 else []
            timestamp = rng.choice((now, now - 5000, 0, -1, now + 10**6))
            records.append((key, value, headers, timestamp))

        # Idempotent batches with small producer ids meet other producers'
        # state; the broker keeps it per partition, as Kafka does.
        producer_id, epoch, sequence = -1, -1, -1
        if rng.random() < 0.3:
            producer_id = rng.choice((0, 1, 2, 3, rng.getrandbits(40)))
            epoch = rng.choice((0, 1, -1, 32767))
            sequence = rng.choice((0, 1, 5, 2**31 - 1, rng.getrandbits(20)))
        batch = build_batch(
            records,
            base_offset=rng.choice((0, 0, 7, -1, 2**62)),
            partition_leader_epoch=rng.choice((-1, 0, 5)),
            attributes=rng.choice((0, 0, 0x08)),
            producer_id=producer_id,
            producer_epoch=epoch,
            base_sequence=sequence,
        )
        if rng.random() < 0.15:
            # A compressed batch is stored as sent: the broker never
            # decompresses, so any payload with a right CRC is valid to it.
            codec_bits = rng.randint(1, 4)
            _INT16.pack_into(batch, ATTRIBUTES, codec_bits)
            batch[HEADER_SIZE:] = self._blob(1, 100)
            _INT32.pack_into(batch, BATCH_LENGTH, len(batch) - 12)
            _refresh_crc(batch)
        assert validate_batch(batch) is None
        return batch

    def corrupt(self, embed_valid: bool = True) -> bytes | None:
        """A record batch field the broker must refuse (None: a null field).

        ``embed_valid=False`` leaves out the one kind that carries a whole
        valid batch (two batches in one field), for frames whose topics must
        never receive a record.
        """
        rng = self.rng
        kind = rng.randrange(12)
        while kind == 9 and not embed_valid:
            kind = rng.randrange(12)
        batch = self.valid()
        if kind == 0:
            _spoil_crc(batch, rng)
        elif kind == 1:
            # recordsCount disagrees with lastOffsetDelta; CRC still right.
            (delta,) = _INT32.unpack_from(batch, LAST_OFFSET_DELTA)
            _INT32.pack_into(
                batch, RECORDS_COUNT, delta + 1 + rng.choice((1, 2, -1, 1000))
            )
            if _INT32.unpack_from(batch, RECORDS_COUNT)[0] < 1:
                _INT32.pack_into(batch, RECORDS_COUNT, delta + 2)
            _refresh_crc(batch)
        elif kind == 2:
            _INT32.pack_into(batch, LAST_OFFSET_DELTA, -1)
            _INT32.pack_into(batch, RECORDS_COUNT, 0)
            _refresh_crc(batch)
        elif kind == 3:
            _INT16.pack_into(batch, ATTRIBUTES, rng.randint(5, 7))
            _refresh_crc(batch)
        elif kind == 4:
            batch[MAGIC] = rng.choice((0, 1, 3, 0xFD, 0x7F))
            _spoil_crc(batch, rng)
        elif kind == 5:
            (length,) = _INT32.unpack_from(batch, BATCH_LENGTH)
            wrong = length + rng.choice((-1, 1, 4096, -(2**31) - length))
            _INT32.pack_into(batch, BATCH_LENGTH, wrong)
            _spoil_crc(batch, rng)
        elif kind == 6:
            _spoil_crc(batch, rng)
            batch = batch[: rng.randrange(len(batch))]
        elif kind == 7:
            return self._blob(0, HEADER_SIZE - 1)
        elif kind == 8:
            while True:
                junk = self._blob(HEADER_SIZE, 400)
                if validate_batch(junk) is not None:
                    return junk
        elif kind == 9:
            # Two whole batches in one partition's field.
            return bytes(batch + self.valid())
        elif kind == 10:
            return None
        else:
            return b""
        assert validate_batch(batch) is not None
        return bytes(batch)


# -- random values from the request schemas ------------------------------------


def _interesting_int(rng: random.Random, kind: str) -> int:
    low, high = _INT_RANGES[kind]
    roll = rng.random()
    if roll < 0.35:
        value = rng.choice((0, 1, -1, 2, 3, 100, 1000, 2**15 - 1, 2**31 - 1))
    elif roll < 0.5:
        value = rng.choice((low, high, low + 1, high - 1))
    else:
        value = rng.randint(low, high)
    return min(max(value, low), high)


class BodyFactory:
    """Random request bodies for any API and version, walking the schema."""

    def __init__(self, rng: random.Random, topics: FuzzTopics) -> None:
        self.rng = rng
        self.topics = topics
        self.batches = BatchFactory(rng)
        # Set while a body is built: did it name the well-behaved topic, and
        # does it carry a batch the broker would accept?
        self.named_well_behaved = False
        self.carries_valid_batch = False

    # -- names ------------------------------------------------------------------

    def junk_string(self) -> str:
        rng = self.rng
        roll = rng.randrange(9)
        if roll == 0:
            return ""
        if roll == 1:
            return rng.choice((".", "..", "../x", "a/b", "a b", "tab\tname", "-"))
        if roll == 2:
            return "t" * rng.choice((249, 250, 300, 2000))
        if roll == 3:
            return "".join(chr(rng.randint(0x80, 0x2FFF)) for _ in range(5))
        if roll == 4:
            return "\x00" + rng.randbytes(4).hex()
        if roll == 5:
            return "__consumer_offsets"
        return f"fz-junk-{rng.randrange(6)}"

    def topic_name(self, api_key: int) -> str:
        rng = self.rng
        topics = self.topics
        pools: list[Sequence[str]] = [topics.victims]
        if api_key not in _TOPIC_LIFECYCLE_APIS:
            pools.append(topics.open)
        if api_key in _READ_ONLY_APIS or api_key == ApiKey.OFFSET_COMMIT:
            pools.append(topics.corrupt)
        if api_key in _READ_ONLY_APIS and rng.random() < 0.25:
            self.named_well_behaved = True
            return topics.well_behaved
        if rng.random() < 0.25:
            return self.junk_string()
        return rng.choice(rng.choice(pools))

    def group_name(self) -> str:
        if self.rng.random() < 0.2:
            return self.junk_string()
        return self.rng.choice(self.topics.groups)

    # -- values -----------------------------------------------------------------

    def _int(self, api_key: int, parent: str, key: str, kind: str) -> int:
        rng = self.rng
        if key in ("partition_index", "partition", "index"):
            return rng.choice((0, 0, 1, 2, 3, -1, 2**31 - 1))
        if key == "max_wait_ms":
            return rng.choice((0, 0, 10, 100, 500, -1))
        if key.endswith("timeout_ms"):
            return rng.choice((0, 10, 100, 1000, 6000, 30000, -1, 2**31 - 1))
        if key in ("num_partitions", "count"):
            return rng.choice((-1, 0, 1, 2, 3, 4, 10**6, 2**31 - 1, -(2**31)))
        if key == "replication_factor":
            return rng.choice((-1, 1, 0, 2, 3, -2))
        if key == "resource_type":
            return rng.choice((2, 2, 4, 0, 1, 127))
        if key == "acks":
            return rng.choice((-1, 0, 1, 2, -2))
        if key == "replica_id":
            return rng.choice((-1, -1, 0, 1))
        if key == "key_type":
            return rng.choice((0, 1, 2, -1))
        if key == "config_operation":
            return rng.choice((0, 1, 2, 3, 4, -1))
        return _interesting_int(rng, kind)

    def _string(self, api_key: int, parent: str, key: str) -> str:
        rng = self.rng
        if key in ("topic", "topic_names") or (
            key == "name" and parent in ("topics", "topic_data")
        ):
            return self.topic_name(api_key)
        if key == "resource_name":
            return self.topic_name(api_key) if rng.random() < 0.8 else "0"
        if key in ("group_id", "groups", "groups_names") or (
            key == "key" and api_key == ApiKey.FIND_COORDINATOR
        ):
            return self.group_name()
        if key == "name" and parent == "configs":
            return rng.choice(_CONFIG_NAMES)
        if key == "value" and parent == "configs":
            return rng.choice(_CONFIG_VALUES)
        if key == "protocol_type":
            return rng.choice(("consumer", "consumer", "", "connect"))
        if key == "name" and parent == "protocols":
            return rng.choice(("range", "roundrobin", "", "x"))
        if key == "member_id":
            return rng.choice(("", "", "fz-member", self.junk_string()))
        if rng.random() < 0.5:
            return "fz"
        return self.junk_string()

    def _value(
        self, api_key: int, field: Field, version: int, parent: str, depth: int
    ) -> Any:
        rng = self.rng
        if field.nullable(version) and rng.random() < 0.08:
            return None
        if field.is_array:
            length = rng.choice((0, 1, 1, 1, 2, 2, 3, 5))
            if depth > 3:
                length = min(length, 1)
            element = _Element(field)
            return [
                self._scalar_or_struct(api_key, element, version, field.key, depth + 1)
                for _ in range(length)
            ]
        return self._scalar_or_struct(api_key, field, version, parent, depth)

    def _scalar_or_struct(
        self,
        api_key: int,
        field: Field | _Element,
        version: int,
        parent: str,
        depth: int,
    ) -> Any:
        rng = self.rng
        kind = field.element_type
        if field.is_struct:
            return self.struct(api_key, field.fields, version, field.key, depth + 1)
        if kind in _INT_RANGES:
            return self._int(api_key, parent, field.key, kind)
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "float64":
            return rng.choice((0.0, -1.0, 1e300, rng.random()))
        if kind == "string":
            return self._string(api_key, parent, field.key)
        if kind == "bytes":
            return rng.randbytes(rng.choice((0, 0, 1, 8, 64, 300)))
        if kind == "records":
            return self.batches.corrupt(embed_valid=False)
        if kind == "uuid":
            return rng.choice((uuid.UUID(int=0), uuid.UUID(int=rng.getrandbits(128))))
        raise AssertionError(f"no generator for schema type {kind!r}")

    def struct(
        self,
        api_key: int,
        fields: Sequence[Field],
        version: int,
        parent: str,
        depth: int = 0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for child in fields:
            if not child.present(version):
                continue
            if child.tagged_versions and self.rng.random() < 0.7:
                continue  # tagged fields are usually absent
            body[child.key] = self._value(api_key, child, version, parent, depth)
        return body

    # -- Produce ----------------------------------------------------------------

    def produce(self, version: int) -> dict[str, Any]:
        """A Produce body: a frame that names a corrupt topic carries only
        corrupt batches; other frames a mix of valid and corrupt ones."""
        rng = self.rng
        topics = self.topics
        if rng.random() < 0.015:
            return self.bulk_produce()
        topic_data = []
        roles = [rng.randrange(4) for _ in range(rng.choice((1, 1, 2, 3)))]
        names_corrupt = 0 in roles
        for role in roles:
            if role == 0:
                name = rng.choice(topics.corrupt)
            elif role == 1:
                name = rng.choice(topics.open)
            elif role == 2:
                name = rng.choice(topics.victims)
            else:
                name = self.junk_string()
            partitions = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                if names_corrupt or rng.random() < 0.4:
                    records = self.batches.corrupt(embed_valid=not names_corrupt)
                else:
                    records = bytes(self.batches.valid())
                    self.carries_valid_batch = True
                index = rng.choice((0, 0, 1, 2, 3, 7, -1))
                partitions.append({"index": index, "records": records})
            topic_data.append({"name": name, "partition_data": partitions})
        transactional_id = None if rng.random() < 0.95 else "fz-txn"
        return {
            "transactional_id": transactional_id,
            "acks": rng.choice((-1, -1, 1, 1, 0, 2, -2)),
            "timeout_ms": rng.choice((30000, 0, 100, -1)),
            "topic_data": topic_data,
        }

    def bulk_produce(self) -> dict[str, Any]:
        """Large valid batches for every partition of the open topics: more
        than a 1 MiB produce ring holds, so the request is placed in parts
        and its connection stalls until the writer frees space."""
        rng = self.rng
        self.carries_valid_batch = True
        topic_data = []
        for name in self.topics.open:
            partitions = []
            for index in (0, 1):
                value = bytes([index]) * rng.randint(250_000, 450_000)
                records = build_batch([(None, value, [], int(time.time() * 1000))])
                partitions.append({"index": index, "records": bytes(records)})
            topic_data.append({"name": name, "partition_data": partitions})
        return {
            "transactional_id": None,
            "acks": rng.choice((-1, 1, 0)),
            "timeout_ms": 30000,
            "topic_data": topic_data,
        }


class _Element:
    """An array field seen as one of its elements."""

    def __init__(self, array: Field) -> None:
        self.key = array.key
        self.element_type = array.element_type
        self.is_struct = array.is_struct
        self.fields = array.fields


# -- frames ---------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One request frame of a pipeline.

    hostile: the broker may close the connection on it (a mutation, random
    bytes, a refused version, a huge size); well-formed frames are valid
    requests at versions the broker serves, which it must answer.
    correlation_id: the id its response carries, or None when no response
    is due (a hostile frame, or Produce with acks=0).
    """

    data: bytes
    hostile: bool
    correlation_id: int | None


class FrameFactory:
    """Seeded request frames (see the module docstring)."""

    def __init__(self, seed: int, topics: FuzzTopics) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.bodies = BodyFactory(self.rng, topics)
        self.kinds: Counter[str] = Counter()
        self.correlation_id = 0
        # Valid frames that may be mutated (never those naming the
        # well-behaved topic), a few recent ones of each class: frames that
        # carry an acceptable batch are spliced only with each other, so no
        # splice moves a valid batch under a corrupt topic's name.
        self.recent: dict[bool, list[bytes]] = {False: [], True: []}

    def _next_correlation_id(self) -> int:
        self.correlation_id = (self.correlation_id + 1) & 0x7FFFFFFF
        return self.correlation_id

    def _client_id(self) -> str | None:
        rng = self.rng
        return rng.choice((None, "", "fuzz", "fuzz-" + rng.randbytes(3).hex(), "é√"))

    def _api_and_version(self, served: bool) -> tuple[int, int]:
        """A random advertised API at a version the broker serves, or (served
        False) at any version its schema defines."""
        rng = self.rng
        row = rng.choice(ADVERTISED)
        if served:
            return row.api_key, rng.randint(row.accepted_min, row.advertised_max)
        message = REQUESTS[row.api_key]
        return row.api_key, rng.randint(message.min_version, message.max_version)

    def valid(self, served: bool = True) -> Frame:
        """A frame the codec built from a random body."""
        rng = self.rng
        for _ in range(20):
            api_key, version = self._api_and_version(served)
            self.bodies.named_well_behaved = False
            self.bodies.carries_valid_batch = False
            if api_key == ApiKey.PRODUCE:
                body = self.bodies.produce(version)
            else:
                message = REQUESTS[api_key]
                body = self.bodies.struct(api_key, message.fields, version, "")
            correlation_id = self._next_correlation_id()
            try:
                data = codec.encode_request(
                    api_key, version, correlation_id, self._client_id(), body
                )
            except EncodeError:
                continue  # a random value the schema cannot carry
            # Large frames are sent as made but not mutated: a mutation
            # sends the whole frame again, for little more coverage.
            if not self.bodies.named_well_behaved and len(data) <= 64 * 1024:
                recent = self.recent[self.bodies.carries_valid_batch]
                recent.append(data)
                if len(recent) > 16:
                    recent.pop(rng.randrange(len(recent)))
            hostile = not is_accepted(api_key, version)
            answered = not hostile and not (
                api_key == ApiKey.PRODUCE and body["acks"] == 0
            )
            name = ApiKey(api_key).name.lower()
            self.kinds[f"{'refused' if hostile else 'valid'}.{name}"] += 1
            return Frame(data, hostile, correlation_id if answered else None)
        raise AssertionError("no encodable body in 20 tries")

    def random_bytes(self) -> Frame:
        """Junk behind a plausible size prefix, sometimes after a real header."""
        rng = self.rng
        size = rng.choice((0, 1, 7, 12, 30, 100, 500, 3000))
        if rng.random() < 0.5:
            api_key, version = self._api_and_version(served=True)
            head = struct.pack(">hhih", api_key, version, rng.getrandbits(31), -1)
            if REQUESTS[api_key].is_flexible(version):
                head += b"\x00"
            payload = head + rng.randbytes(size)
            self.kinds["random.after_header"] += 1
        else:
            payload = rng.randbytes(size)
            self.kinds["random.bytes"] += 1
        prefix = len(payload)
        if rng.random() < 0.2:
            prefix = max(0, prefix + rng.choice((-3, -1, 1, 2, 100)))
        return Frame(_INT32.pack(prefix) + payload, True, None)

    def mutated(self) -> Frame:
        """A mutation of a recent valid frame (made fresh when none is left)."""
        rng = self.rng
        group = self.recent[rng.random() < 0.3]
        for _ in range(100):
            if group:
                break
            self.valid()
        else:
            group = self.recent[False] or self.recent[True]
        frame = bytearray(rng.choice(group))
        kind = rng.randrange(9)
        payload_start = 4
        if kind == 0:
            for _ in range(rng.choice((1, 1, 2, 4, 8))):
                bit = rng.randrange((len(frame) - payload_start) * 8)
                frame[payload_start + bit // 8] ^= 1 << (bit % 8)
            name = "bit_flips"
        elif kind == 1:
            for _ in range(rng.choice((1, 1, 2, 3))):
                width = rng.choice((1, 2, 4))
                if len(frame) - payload_start < width:
                    break
                at = rng.randrange(payload_start, len(frame) - width + 1)
                low, high = -(2 ** (8 * width - 1)), 2 ** (8 * width - 1) - 1
                value = rng.choice((0, -1, 1, low, high, rng.randint(low, high)))
                frame[at : at + width] = value.to_bytes(width, "big", signed=True)
            name = "overwrite_int"
        elif kind == 2:
            # Truncated body behind a size prefix that agrees with it.
            del frame[rng.randrange(payload_start, len(frame)) :]
            _INT32.pack_into(frame, 0, len(frame) - 4)
            name = "truncate"
        elif kind == 3:
            # Truncated, and the size prefix still claims the full length:
            # the next frame's bytes are read as this one's rest.
            del frame[rng.randrange(payload_start, len(frame)) :]
            name = "truncate_keep_size"
        elif kind == 4:
            frame += rng.randbytes(rng.choice((1, 2, 8, 100)))
            _INT32.pack_into(frame, 0, len(frame) - 4)
            name = "append_junk"
        elif kind == 5:
            size = len(frame) - 4
            choices = (
                size + 1,
                size - 1,
                size + rng.randint(2, 64),
                0,
                -1,
                -(2**31),
                2**31 - 1,
                rng.getrandbits(31),
            )
            _INT32.pack_into(frame, 0, rng.choice(choices))
            name = "size_prefix"
        elif kind == 6:
            other = rng.choice(group)
            cut = rng.randrange(payload_start, len(frame) + 1)
            frame = frame[:cut] + other[rng.randrange(payload_start, len(other)) :]
            _INT32.pack_into(frame, 0, len(frame) - 4)
            name = "splice"
        elif kind == 7:
            start = rng.randrange(payload_start, len(frame))
            end = min(len(frame), start + rng.randint(1, 40))
            frame[end:end] = frame[start:end] * rng.choice((1, 2, 8))
            _INT32.pack_into(frame, 0, len(frame) - 4)
            name = "duplicate_chunk"
        else:
            # The header itself: api key, version or client id length.
            offset = rng.choice((4, 6, 12))
            value = rng.choice(
                (0, -1, 7, 99, 1000, -(2**15), 2**15 - 1, rng.getrandbits(15))
            )
            _INT16.pack_into(frame, offset, value)
            name = "header_field"
        self.kinds[f"mutated.{name}"] += 1
        return Frame(bytes(frame), True, None)

    def huge(self, max_request_bytes: int) -> Frame:
        """A size prefix at or past the limit, followed by a few bytes."""
        rng = self.rng
        size = rng.choice(
            (
                max_request_bytes + 1,
                2**31 - 1,
                max_request_bytes,
                max_request_bytes // 2,
            )
        )
        self.kinds["huge_size"] += 1
        return Frame(_INT32.pack(size) + rng.randbytes(rng.randint(0, 64)), True, None)

    def hostile(self, max_request_bytes: int) -> Frame:
        roll = self.rng.random()
        if roll < 0.65:
            return self.mutated()
        if roll < 0.88:
            return self.random_bytes()
        if roll < 0.98:
            return self.valid(served=False)
        return self.huge(max_request_bytes)

    def pipeline(self, max_request_bytes: int) -> list[Frame]:
        """The frames of one connection, to be written back to back: mostly
        well-formed requests with hostile frames among them."""
        rng = self.rng
        frames: list[Frame] = []
        if rng.random() < 0.3:
            correlation_id = self._next_correlation_id()
            data = codec.encode_request(
                ApiKey.API_VERSIONS,
                3,
                correlation_id,
                "fuzz",
                {"client_software_name": "fuzz", "client_software_version": "1"},
            )
            frames.append(Frame(data, False, correlation_id))
        for _ in range(rng.choice((1, 2, 4, 8, 16))):
            if rng.random() < WELL_FORMED_SHARE:
                frames.append(self.valid())
            else:
                frames.append(self.hostile(max_request_bytes))
        return frames


# -- the sending side -----------------------------------------------------------


@dataclass
class FuzzStatistics:
    """One worker's run.

    frames_read counts, on connections the broker ended (so it read them),
    the frames up to and including the first hostile one: the broker read
    and handled each of them. Frames after the first hostile frame may have
    been read too; they are counted in frames_sent only.
    """

    seed: int
    frames_sent: int = 0
    frames_read: int = 0
    bytes_sent: int = 0
    connections: int = 0
    closed_by_broker: int = 0
    closed_by_us: int = 0
    connect_failures: int = 0
    responses: int = 0
    # The broker closed a connection before its first hostile frame.
    early_closes: int = 0
    # Hostile frames among frames_read.
    hostile_read: int = 0
    # Connections of well-formed frames only: the broker answered all of
    # them, or closed the connection before it did, or we gave up waiting.
    clean_connections: int = 0
    clean_unanswered: int = 0
    clean_slow: int = 0
    # A response to a well-formed frame came out of request order.
    order_violations: int = 0
    elapsed_s: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class _Outgoing:
    """One fuzz connection: its pipeline, how much went out, what came back."""

    def __init__(self, sock: socket.socket, frames: list[Frame], patient: bool) -> None:
        self.sock = sock
        self.data = memoryview(b"".join(frame.data for frame in frames))
        self.ends: list[int] = []
        end = 0
        for frame in frames:
            end += len(frame.data)
            self.ends.append(end)
        hostile = [i for i, frame in enumerate(frames) if frame.hostile]
        # Frames the broker must have read once it ends the connection.
        self.trusted = hostile[0] + 1 if hostile else len(frames)
        self.hostile_starts = (
            self.ends[hostile[0]] - len(frames[hostile[0]].data) if hostile else None
        )
        self.expected = [
            frame.correlation_id
            for frame in frames[: self.trusted]
            if frame.correlation_id is not None
        ]
        # Without a hostile frame the connection stays open until every
        # well-formed request is answered.
        self.clean = not hostile
        self.answered = 0
        self.sent = 0
        self.frames_sent = 0
        # Patient connections wait for the broker to end them; the others
        # are reset right after sending (what the broker read is unknown).
        self.patient = patient
        # Bytes per send: a few connections dribble their frames out so the
        # broker sees them in pieces.
        self.send_limit = 1 << 30
        self.finished_at: float | None = None
        self.response_buffer = b""
        self.skip = 0

    def count_sent(self) -> int:
        before = self.frames_sent
        ends = self.ends
        while self.frames_sent < len(ends) and ends[self.frames_sent] <= self.sent:
            self.frames_sent += 1
        return self.frames_sent - before

    def take_responses(self, data: bytes) -> tuple[int, int]:
        """Frame the response stream; (responses, order violations)."""
        found = 0
        violations = 0
        buffer = self.response_buffer + data
        position = 0
        while position < len(buffer):
            if self.skip:
                step = min(self.skip, len(buffer) - position)
                self.skip -= step
                position += step
                continue
            if len(buffer) - position < 8:
                break
            size, correlation_id = struct.unpack_from(">ii", buffer, position)
            position += 8
            self.skip = max(size - 4, 0)
            found += 1
            if self.answered < len(self.expected):
                if correlation_id != self.expected[self.answered]:
                    violations += 1
                self.answered += 1
        self.response_buffer = buffer[position:]
        return found, violations


def fuzz(
    port: int,
    seed: int,
    topics: FuzzTopics,
    *,
    frames: int,
    deadline_s: float,
    concurrency: int = 6,
    max_request_bytes: int,
    host: str = "127.0.0.1",
    patience_s: float = 3.0,
) -> FuzzStatistics:
    """Fuzz ``host:port`` until ``frames`` frames were read by the broker
    (``FuzzStatistics.frames_read``) or ``deadline_s`` seconds passed."""
    factory = FrameFactory(seed, topics)
    stats = FuzzStatistics(seed=seed)
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    stop_at = started + deadline_s
    open_connections: dict[int, _Outgoing] = {}

    def finish(outgoing: _Outgoing, by_broker: bool) -> None:
        selector.unregister(outgoing.sock)
        del open_connections[outgoing.sock.fileno()]
        outgoing.sock.close()
        if not by_broker:
            stats.closed_by_us += 1
            if outgoing.clean and outgoing.finished_at is not None:
                stats.clean_slow += 1
            return
        stats.closed_by_broker += 1
        stats.frames_read += min(outgoing.frames_sent, outgoing.trusted)
        if not outgoing.clean and outgoing.frames_sent >= outgoing.trusted:
            stats.hostile_read += 1
        if outgoing.clean and outgoing.answered < len(outgoing.expected):
            stats.clean_unanswered += 1
            if len(stats.problems) < 20:
                stats.problems.append(
                    f"connection {stats.connections}: closed by the broker after "
                    f"{outgoing.answered} of {len(outgoing.expected)} answers"
                )
        first_hostile = outgoing.hostile_starts
        if outgoing.finished_at is None and (
            first_hostile is None or outgoing.sent < first_hostile + 4
        ):
            # Closed while well-formed frames were still going out.
            stats.early_closes += 1
            if len(stats.problems) < 20:
                stats.problems.append(
                    f"early close after {outgoing.sent} bytes, "
                    f"{outgoing.frames_sent} frames, connection {stats.connections}"
                )

    def open_one() -> None:
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
        except OSError:
            stats.connect_failures += 1
            time.sleep(0.05)
            return
        sock.setblocking(False)
        pipeline = factory.pipeline(max_request_bytes)
        outgoing = _Outgoing(sock, pipeline, patient=factory.rng.random() < 0.95)
        if factory.rng.random() < 0.05:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            outgoing.send_limit = factory.rng.choice((1, 7, 100, 1000))
        open_connections[sock.fileno()] = outgoing
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, outgoing)
        stats.connections += 1
        stats.clean_connections += outgoing.clean

    def half_close(outgoing: _Outgoing) -> None:
        # The broker reads every frame, then the end of the stream, and
        # closes its side.
        with contextlib.suppress(OSError):
            outgoing.sock.shutdown(socket.SHUT_WR)

    def on_writable(outgoing: _Outgoing) -> None:
        try:
            end = outgoing.sent + outgoing.send_limit
            sent = outgoing.sock.send(outgoing.data[outgoing.sent : end])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            finish(outgoing, by_broker=True)
            return
        outgoing.sent += sent
        stats.bytes_sent += sent
        stats.frames_sent += outgoing.count_sent()
        if outgoing.sent == len(outgoing.data):
            outgoing.finished_at = time.monotonic()
            if not outgoing.patient:
                finish(outgoing, by_broker=False)
                return
            selector.modify(outgoing.sock, selectors.EVENT_READ, outgoing)
            if not outgoing.clean or outgoing.answered == len(outgoing.expected):
                half_close(outgoing)

    def on_readable(outgoing: _Outgoing) -> None:
        try:
            data = outgoing.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            finish(outgoing, by_broker=True)
            return
        if not data:
            finish(outgoing, by_broker=True)
            return
        found, violations = outgoing.take_responses(data)
        stats.responses += found
        stats.order_violations += violations
        if (
            outgoing.clean
            and outgoing.finished_at is not None
            and outgoing.answered == len(outgoing.expected)
        ):
            half_close(outgoing)

    try:
        while stats.frames_read < frames and time.monotonic() < stop_at:
            while len(open_connections) < concurrency:
                open_one()
            for key, mask in selector.select(0.02):
                outgoing = key.data
                if mask & selectors.EVENT_READ:
                    on_readable(outgoing)
                if (
                    mask & selectors.EVENT_WRITE
                    and outgoing.sock.fileno() in open_connections
                ):
                    on_writable(outgoing)
            now = time.monotonic()
            for outgoing in list(open_connections.values()):
                done = outgoing.finished_at
                if done is not None and now - done > patience_s:
                    finish(outgoing, by_broker=False)
    finally:
        for outgoing in list(open_connections.values()):
            finish(outgoing, by_broker=False)
        selector.close()
    stats.elapsed_s = round(time.monotonic() - started, 2)
    stats.kinds = dict(factory.kinds)
    return stats


# -- a blocking client for targeted tests ------------------------------------------


class Wire:
    """One blocking client connection to the broker (targeted tests)."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.timeout_s = timeout_s
        self.correlation_id = 0
        self.buffer = b""

    @property
    def local_address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        """The next response frame without its size prefix; EOFError when
        the broker closed the connection."""
        while True:
            if len(self.buffer) >= 4:
                (size,) = _INT32.unpack_from(self.buffer, 0)
                if len(self.buffer) - 4 >= size:
                    frame = self.buffer[4 : 4 + size]
                    self.buffer = self.buffer[4 + size :]
                    return frame
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("the broker closed the connection")
            self.buffer += data

    def request(
        self, api_key: int, api_version: int, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Send one request and return the decoded response body."""
        self.correlation_id += 1
        self.send(
            codec.encode_request(
                api_key, api_version, self.correlation_id, "wire", body
            )
        )
        answered, response = codec.decode_response(
            api_key, api_version, self.read_frame()
        )
        assert answered == self.correlation_id, (answered, self.correlation_id)
        return response

    def closed_by_broker(self) -> bool:
        """True when the broker closes the connection within the timeout
        without sending anything more."""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
                self.buffer += data
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def list_offsets(
    wire: Wire, topic: str, partitions: Sequence[int], timestamp: int = -1
) -> dict[int, tuple[int, int]]:
    """(error code, offset) per partition: -1 asks the log end offset
    (high watermark), -2 the log start offset."""
    body = {
        "replica_id": -1,
        "isolation_level": 0,
        "topics": [
            {
                "name": topic,
                "partitions": [
                    {
                        "partition_index": p,
                        "timestamp": timestamp,
                        "current_leader_epoch": -1,
                    }
                    for p in partitions
                ],
            }
        ],
    }
    response = wire.request(ApiKey.LIST_OFFSETS, 5, body)
    return {
        p["partition_index"]: (p["error_code"], p["offset"])
        for t in response["topics"]
        for p in t["partitions"]
    }


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one fuzz worker")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--deadline-s", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--max-request-bytes", type=int, required=True)
    parser.add_argument("--topics", required=True, help="FuzzTopics as JSON")
    args = parser.parse_args(argv)
    stats = fuzz(
        args.port,
        args.seed,
        FuzzTopics.from_json(args.topics),
        frames=args.frames,
        deadline_s=args.deadline_s,
        concurrency=args.concurrency,
        max_request_bytes=args.max_request_bytes,
    )
    print(json.dumps(stats.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
