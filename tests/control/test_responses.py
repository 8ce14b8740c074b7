"""Whole-request error responses: every forwarded API, every served version."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from broker.control.responses import (
    FORWARDED_API_KEYS,
    unavailable_code,
    unavailable_response,
)
from broker.settings import Settings
from net.kafka.codec import decode_response, encode_request
from net.kafka.errors import ErrorCode
from net.kafka.schema import RESPONSES, ApiKey, Field
from tests.control.support import FakeClock, make_service

TOPICS = [{"name": "t", "partitions": [{"partition_index": 0}]}]
RESOURCES = [{"resource_type": 2, "resource_name": "t", "configs": []}]
SAMPLES: dict[int, dict[str, Any]] = {
    ApiKey.OFFSET_COMMIT: {"group_id": "g", "topics": TOPICS},
    ApiKey.OFFSET_FETCH: {
        "group_id": "g",
        "topics": [{"name": "t", "partition_indexes": [0, 1]}],
    },
    ApiKey.FIND_COORDINATOR: {"key": "g", "coordinator_keys": ["g", "h"]},
    ApiKey.JOIN_GROUP: {"group_id": "g", "member_id": "m"},
    ApiKey.HEARTBEAT: {"group_id": "g"},
    ApiKey.LEAVE_GROUP: {"group_id": "g", "members": [{"member_id": "m"}]},
    ApiKey.SYNC_GROUP: {"group_id": "g"},
    ApiKey.DESCRIBE_GROUPS: {"groups": ["g", "h"]},
    ApiKey.LIST_GROUPS: {},
    ApiKey.CREATE_TOPICS: {"topics": [{"name": "t"}, {"name": "u"}]},
    ApiKey.DELETE_TOPICS: {
        "topic_names": ["t"],
        "topics": [{"name": "t", "topic_id": uuid.uuid4()}],
    },
    ApiKey.INIT_PRODUCER_ID: {"transactional_id": None},
    ApiKey.DESCRIBE_CONFIGS: {"resources": RESOURCES},
    ApiKey.ALTER_CONFIGS: {"resources": RESOURCES},
    ApiKey.CREATE_PARTITIONS: {"topics": [{"name": "t", "count": 2}]},
    ApiKey.DELETE_GROUPS: {"groups_names": ["g"]},
    ApiKey.INCREMENTAL_ALTER_CONFIGS: {"resources": RESOURCES},
    ApiKey.OFFSET_DELETE: {"group_id": "g", "topics": TOPICS},
}


def error_codes(fields: tuple[Field, ...], value: Any, version: int) -> list[int]:
    """Every error_code field the response has in ``version``, at any depth
    (the decoder fills absent fields with defaults; those do not count)."""
    found: list[int] = []
    for field in fields:
        if not field.present(version):
            continue
        item = value[field.key]
        if field.key == "error_code":
            found.append(item)
        elif field.is_struct and field.is_array:
            for element in item or []:
                found += error_codes(field.fields, element, version)
    return found


def test_samples_cover_every_forwarded_api() -> None:
    assert set(SAMPLES) == FORWARDED_API_KEYS


def test_unavailable_response_carries_retriable_code_in_every_version(
    settings: Settings,
) -> None:
    served = make_service(settings, FakeClock()).served_versions()
    assert set(served) == FORWARDED_API_KEYS
    checked = 0
    for api_key, (low, high) in served.items():
        for version in range(low, high + 1):
            frame = encode_request(api_key, version, 77, "c", SAMPLES[api_key])
            response = unavailable_response(frame)
            assert response is not None, (api_key, version)
            correlation_id, body = decode_response(api_key, version, response[4:])
            assert correlation_id == 77
            codes = error_codes(RESPONSES[api_key].fields, body, version)
            expected = unavailable_code(api_key)
            assert codes and set(codes) == {expected}, (api_key, version, body)
            checked += 1
    assert checked > 60


@pytest.mark.parametrize(
    ("api_key", "code"),
    [
        (ApiKey.JOIN_GROUP, ErrorCode.COORDINATOR_NOT_AVAILABLE),
        (ApiKey.INIT_PRODUCER_ID, ErrorCode.COORDINATOR_NOT_AVAILABLE),
        (ApiKey.CREATE_TOPICS, ErrorCode.NOT_CONTROLLER),
        (ApiKey.DESCRIBE_CONFIGS, ErrorCode.REQUEST_TIMED_OUT),
    ],
)
def test_unavailable_code_is_retriable_for_the_client(api_key: int, code: int) -> None:
    assert unavailable_code(api_key) == code


def test_unavailable_response_is_none_for_undecodable_frame() -> None:
    assert unavailable_response(b"\x00\x00\x00\x02\x00\x01") is None
