"""The advertisement table and the ApiVersions responses (net.kafka.versions)."""

from __future__ import annotations

import struct

import pytest

from net.kafka.codec import decode_request_header, decode_response
from net.kafka.schema import REQUESTS, RESPONSES, ApiKey
from net.kafka.versions import (
    ADVERTISED,
    advertised_range,
    api_versions_body,
    api_versions_response,
    is_accepted,
)

# NOTES.md section 5.2, "the same table as data": (key, advertised min, max).
NOTES_TABLE = (
    (0, 0, 8), (1, 4, 11), (2, 1, 5), (3, 0, 8), (8, 2, 7), (9, 1, 5), (10, 0, 2),
    (11, 0, 5), (12, 0, 3), (13, 0, 3), (14, 0, 3), (15, 0, 4), (16, 0, 2),
    (17, 0, 1), (18, 0, 4), (19, 2, 4), (20, 1, 3), (21, 0, 1), (22, 0, 1),
    (32, 1, 3), (33, 0, 1), (36, 0, 1), (37, 0, 1), (42, 0, 1), (44, 0, 0),
    (47, 0, 0),
)  # fmt: skip


def test_advertised_table_matches_notes() -> None:
    assert sorted(
        (r.api_key, r.advertised_min, r.advertised_max) for r in ADVERTISED
    ) == (sorted(NOTES_TABLE))
    for row in ADVERTISED:
        assert REQUESTS[row.api_key].is_valid(row.advertised_max)
        assert RESPONSES[row.api_key].is_valid(row.advertised_min)


def test_is_accepted_refuses_produce_below_3_although_advertised_from_0() -> None:
    assert advertised_range(ApiKey.PRODUCE) == (0, 0, 3, 8)
    assert [is_accepted(ApiKey.PRODUCE, v) for v in range(10)] == [
        False, False, False, True, True, True, True, True, True, False,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("api_key", "version", "accepted"),
    [
        (ApiKey.FETCH, 3, False),
        (ApiKey.FETCH, 4, True),
        (ApiKey.FETCH, 12, False),
        (ApiKey.METADATA, 0, True),
        (ApiKey.API_VERSIONS, 0, True),
        (ApiKey.API_VERSIONS, 5, True),
        (ApiKey.API_VERSIONS, 32767, True),
        (ApiKey.API_VERSIONS, -1, False),
        (60, 0, False),
        (23, 2, False),
    ],
)
def test_is_accepted(api_key: int, version: int, accepted: bool) -> None:
    assert is_accepted(api_key, version) is accepted


@pytest.mark.parametrize("version", [5, 127])
def test_api_versions_fallback_bytes_match_notes(version: int) -> None:
    # The request: header v2 (flexible), client id "c", an empty tag section,
    # then a body the broker does not read.
    request = struct.pack(">hhih", ApiKey.API_VERSIONS, version, 0x1234, 1) + b"c\x00"
    request += b"\x07future\x00"
    header, _offset = decode_request_header(request)
    assert is_accepted(header.api_key, header.api_version)

    frame = api_versions_response(header.correlation_id, header.api_version)

    # size | header v0: correlation id | v0 body: error 35, [ (18, 0, 4) ]
    assert frame == bytes.fromhex("0000001000001234002300000001001200000004")


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_api_versions_supported_version_lists_every_api(version: int) -> None:
    frame = api_versions_response(77, version, throttle_time_ms=5)

    correlation_id, body = decode_response(ApiKey.API_VERSIONS, version, frame[4:])

    assert correlation_id == 77
    assert body["error_code"] == 0
    got = [(e["api_key"], e["min_version"], e["max_version"]) for e in body["api_keys"]]
    assert sorted(got) == sorted(NOTES_TABLE)
    assert body["throttle_time_ms"] == (5 if version >= 1 else 0)


def test_api_versions_v3_response_keeps_header_v0() -> None:
    frame = api_versions_response(9, 3)

    # Header v0 is the correlation id alone: the body starts right after it.
    assert frame[4:8] == struct.pack(">i", 9)
    assert frame[8:10] == b"\x00\x00"  # error_code, not a tag byte
    assert frame[10] == len(ADVERTISED) + 1  # compact array length


def test_api_versions_body_fallback_carries_only_key_18() -> None:
    version, body = api_versions_body(99)

    assert version == 0
    assert body == {
        "error_code": 35,
        "api_keys": [{"api_key": 18, "min_version": 0, "max_version": 4}],
    }
