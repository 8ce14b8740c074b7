"""Fixtures for the Kafka codec tests: sample bodies built from the schemas.

``sample_body(message, version, seed)`` returns a body with every field the
version carries set to a deterministic pseudo-random value (nullable fields
are sometimes None, arrays hold 0-3 elements, RECORDS and BYTES are random
bytes). ``expected_decoded`` fills in what a decoder must return for it: the
defaults of fields the version does not carry, with memoryviews compared as
bytes via ``plain``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from net.kafka.schema import Field, Message

_INT_RANGES = {
    "int8": (-(1 << 7), (1 << 7) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint32": (0, (1 << 32) - 1),
}
_TEXT = "abcdefghijklmnopqrstuvwxyz-._é"


def _primitive(kind: str, rng: random.Random) -> Any:
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return rng.choice((low, high, 0, -1 if low < 0 else 1, rng.randint(low, high)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "float64":
        return rng.uniform(-1e9, 1e9)
    if kind == "string":
        return "".join(rng.choice(_TEXT) for _ in range(rng.randint(0, 12)))
    if kind in ("bytes", "records"):
        return rng.randbytes(rng.randint(0, 40))
    if kind == "uuid":
        return uuid.UUID(int=rng.getrandbits(128))
    raise AssertionError(kind)


def _value(field: Field, version: int, rng: random.Random, depth: int) -> Any:
    if field.nullable(version) and rng.random() < 0.25:
        return None
    if field.is_array:
        count = rng.randint(1 if depth == 0 else 0, 3 if depth < 2 else 1)
        if field.is_struct:
            return [
                _struct(field.fields, version, rng, depth + 1) for _ in range(count)
            ]
        return [_primitive(field.element_type, rng) for _ in range(count)]
    if field.is_struct:
        return _struct(field.fields, version, rng, depth + 1)
    return _primitive(field.type, rng)


def _struct(
    fields: tuple[Field, ...], version: int, rng: random.Random, depth: int
) -> dict[str, Any]:
    return {f.key: _value(f, version, rng, depth) for f in fields if f.present(version)}


def make_sample(message: Message, version: int, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(f"{message.name}/{version}/{seed}")
    return _struct(message.fields, version, rng, 0)


def _complete_struct(
    fields: tuple[Field, ...], version: int, obj: dict[str, Any]
) -> dict[str, Any]:
    out = {}
    for field in fields:
        if field.key not in obj:
            out[field.key] = field.default_value()
            continue
        value = obj[field.key]
        if value is not None and field.is_struct:
            if field.is_array:
                value = [_complete_struct(field.fields, version, v) for v in value]
            else:
                value = _complete_struct(field.fields, version, value)
        out[field.key] = value
    return out


def expected_decoded(
    message: Message, version: int, obj: dict[str, Any]
) -> dict[str, Any]:
    """What a decoder returns for ``obj``: every field, defaults where absent."""
    return _complete_struct(message.fields, version, obj)


def plain(value: Any) -> Any:
    """Memoryviews and bytearrays as bytes, recursively (for comparisons)."""
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


@pytest.fixture(scope="session")
def sample_body() -> Callable[[Message, int, int], dict[str, Any]]:
    return make_sample


@pytest.fixture(scope="session")
def decoded_form() -> Callable[[Message, int, dict[str, Any]], dict[str, Any]]:
    return lambda message, version, obj: plain(expected_decoded(message, version, obj))


@pytest.fixture(scope="session")
def valid_request_payloads() -> list[bytes]:
    """One encoded request (size prefix removed) per API and version."""
    from net.kafka.codec import encode_request
    from net.kafka.schema import REQUESTS

    payloads = []
    for api_key, message in sorted(REQUESTS.items()):
        for version in range(message.min_version, message.max_version + 1):
            body = make_sample(message, version, 11)
            payloads.append(encode_request(api_key, version, 7, "fuzz", body)[4:])
    return payloads
