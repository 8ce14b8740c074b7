"""Whole-request error responses for every API the control process serves.

Two users:
- the control process answers a request whose handler failed inside the
  broker with UNKNOWN_SERVER_ERROR (STYLE.md habit 12);
- a net process whose forwarded request got no answer because the control
  process is down or restarting answers the client with
  ``unavailable_response(frame)``: a retriable code the client acts on
  (look up the coordinator or controller again, then retry).

The error lands in every error field the response has, mirroring the
request's topics, partitions, groups or resources, so the client sees a
well-formed response of the version it asked for.

Imported by the control process and by net processes; pure functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from net.kafka.codec import decode_request, encode_response_bytes
from net.kafka.codec_errors import CodecError, EncodeError
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey

# The APIs a net process forwards to the control process.
FORWARDED_API_KEYS: frozenset[int] = frozenset(
    {
        ApiKey.OFFSET_COMMIT,
        ApiKey.OFFSET_FETCH,
        ApiKey.FIND_COORDINATOR,
        ApiKey.JOIN_GROUP,
        ApiKey.HEARTBEAT,
        ApiKey.LEAVE_GROUP,
        ApiKey.SYNC_GROUP,
        ApiKey.DESCRIBE_GROUPS,
        ApiKey.LIST_GROUPS,
        ApiKey.CREATE_TOPICS,
        ApiKey.DELETE_TOPICS,
        ApiKey.INIT_PRODUCER_ID,
        ApiKey.DESCRIBE_CONFIGS,
        ApiKey.ALTER_CONFIGS,
        ApiKey.CREATE_PARTITIONS,
        ApiKey.DELETE_GROUPS,
        ApiKey.INCREMENTAL_ALTER_CONFIGS,
        ApiKey.OFFSET_DELETE,
    }
)

# What a client is told when the control process cannot be reached: group
# and producer-id APIs say the coordinator is not available (clients find
# it again and retry); topic admin says "not the controller" (clients
# refresh metadata and retry); config requests time out.
_UNAVAILABLE: dict[int, ErrorCode] = {
    ApiKey.CREATE_TOPICS: ErrorCode.NOT_CONTROLLER,
    ApiKey.DELETE_TOPICS: ErrorCode.NOT_CONTROLLER,
    ApiKey.CREATE_PARTITIONS: ErrorCode.NOT_CONTROLLER,
    ApiKey.DESCRIBE_CONFIGS: ErrorCode.REQUEST_TIMED_OUT,
    ApiKey.ALTER_CONFIGS: ErrorCode.REQUEST_TIMED_OUT,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: ErrorCode.REQUEST_TIMED_OUT,
}


def unavailable_code(api_key: int) -> ErrorCode:
    """The retriable error for ``api_key`` while the control process is away."""
    return _UNAVAILABLE.get(api_key, ErrorCode.COORDINATOR_NOT_AVAILABLE)


def unavailable_response(frame: bytes | bytearray | memoryview) -> bytes | None:
    """The response to a forwarded request (size prefix included) that the
    control process did not answer; None if the frame does not decode."""
    try:
        header, body = decode_request(memoryview(frame)[4:])
    except CodecError:
        return None
    code = unavailable_code(header.api_key)
    try:
        response = error_body(header.api_key, header.api_version, body, code)
        return encode_response_bytes(
            header.api_key, header.api_version, header.correlation_id, response
        )
    except (KeyError, EncodeError):
        return None


def error_body(
    api_key: int, version: int, request: dict[str, Any], code: int
) -> dict[str, Any]:
    """A response body for ``request`` with ``code`` in every error field.
    Raises KeyError for an API the control process does not serve."""
    builder = _BUILDERS[api_key]
    return builder(version, request, code)


def _offset_commit(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {
        "topics": [
            {
                "name": topic["name"],
                "partitions": [
                    {"partition_index": p["partition_index"], "error_code": code}
                    for p in topic["partitions"]
                ],
            }
            for topic in request["topics"]
        ]
    }


def _offset_fetch(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    topics = request["topics"] or []
    return {
        "error_code": code,
        "topics": [
            {
                "name": topic["name"],
                "partitions": [
                    {
                        "partition_index": index,
                        "committed_offset": -1,
                        "metadata": "",
                        "error_code": code,
                    }
                    for index in topic["partition_indexes"]
                ],
            }
            for topic in topics
        ],
    }


def _find_coordinator(
    version: int, request: dict[str, Any], code: int
) -> dict[str, Any]:
    return {
        "error_code": code,
        "error_message": None,
        "node_id": -1,
        "host": "",
        "port": -1,
        "coordinators": [
            {"key": key, "node_id": -1, "host": "", "port": -1, "error_code": code}
            for key in request["coordinator_keys"]
        ],
    }


def _join_group(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {
        "error_code": code,
        "generation_id": -1,
        "protocol_name": None if version >= 7 else "",
        "leader": "",
        "member_id": request["member_id"],
        "members": [],
    }


def _error_only(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {"error_code": code}


def _leave_group(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {"error_code": code, "members": []}


def _describe_groups(
    version: int, request: dict[str, Any], code: int
) -> dict[str, Any]:
    return {
        "groups": [
            {"error_code": code, "group_id": group_id, "group_state": "Dead"}
            for group_id in request["groups"]
        ]
    }


def _list_groups(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {"error_code": code, "groups": []}


def _create_topics(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {
        "topics": [
            {"name": topic["name"], "error_code": code, "error_message": None}
            for topic in request["topics"]
        ]
    }


def _delete_topics(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    if version >= 6:
        entries = [
            {"name": t["name"], "topic_id": t["topic_id"], "error_code": code}
            for t in request["topics"]
        ]
    else:
        entries = [
            {"name": name, "error_code": code} for name in request["topic_names"]
        ]
    return {"responses": entries}


def _init_producer_id(
    version: int, request: dict[str, Any], code: int
) -> dict[str, Any]:
    return {"error_code": code, "producer_id": -1, "producer_epoch": -1}


def _describe_configs(
    version: int, request: dict[str, Any], code: int
) -> dict[str, Any]:
    return {
        "results": [
            {
                "error_code": code,
                "error_message": None,
                "resource_type": resource["resource_type"],
                "resource_name": resource["resource_name"],
                "configs": [],
            }
            for resource in request["resources"]
        ]
    }


def _alter_configs(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {
        "responses": [
            {
                "error_code": code,
                "error_message": None,
                "resource_type": resource["resource_type"],
                "resource_name": resource["resource_name"],
            }
            for resource in request["resources"]
        ]
    }


def _create_partitions(
    version: int, request: dict[str, Any], code: int
) -> dict[str, Any]:
    return {
        "results": [
            {"name": topic["name"], "error_code": code, "error_message": None}
            for topic in request["topics"]
        ]
    }


def _delete_groups(version: int, request: dict[str, Any], code: int) -> dict[str, Any]:
    return {
        "results": [
            {"group_id": group_id, "error_code": code}
            for group_id in request["groups_names"]
        ]
    }


_Builder = Callable[[int, dict[str, Any], int], dict[str, Any]]
_BUILDERS: dict[int, _Builder] = {
    ApiKey.OFFSET_COMMIT: _offset_commit,
    ApiKey.OFFSET_FETCH: _offset_fetch,
    ApiKey.FIND_COORDINATOR: _find_coordinator,
    ApiKey.JOIN_GROUP: _join_group,
    ApiKey.HEARTBEAT: _error_only,
    ApiKey.LEAVE_GROUP: _leave_group,
    ApiKey.SYNC_GROUP: _error_only,
    ApiKey.DESCRIBE_GROUPS: _describe_groups,
    ApiKey.LIST_GROUPS: _list_groups,
    ApiKey.CREATE_TOPICS: _create_topics,
    ApiKey.DELETE_TOPICS: _delete_topics,
    ApiKey.INIT_PRODUCER_ID: _init_producer_id,
    ApiKey.DESCRIBE_CONFIGS: _describe_configs,
    ApiKey.ALTER_CONFIGS: _alter_configs,
    ApiKey.CREATE_PARTITIONS: _create_partitions,
    ApiKey.DELETE_GROUPS: _delete_groups,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: _alter_configs,
    ApiKey.OFFSET_DELETE: _error_only,
}
assert set(_BUILDERS) == FORWARDED_API_KEYS
