"""The API versions Ringbus advertises and accepts, and the ApiVersions
response built from them.

The table is NOTES.md section 5.2: per API key, the advertised minimum, the
first version the broker accepts (Produce is advertised from 0 for old
librdkafka feature checks but v0-v2 are refused, as Kafka 4 does), and the
advertised maximum (the last non-flexible version, except ApiVersions).

Policy lives here, not in the codec: the codec decodes any version its
schemas define; the connection asks ``is_accepted`` and closes the connection
on False (Kafka cannot answer a request it cannot parse, NOTES 1.1).
ApiVersions is accepted at every version: above its maximum the broker answers
in the v0 body with UNSUPPORTED_VERSION and the entry for key 18, under
response header v0 (NOTES 1.4); ``api_versions_response`` does both cases.

Imported by the net process; immutable data and pure functions.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from net.kafka.codec import encode_response_bytes, precompile
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey


class ApiRange(NamedTuple):
    """One row of the advertisement table."""

    api_key: int
    advertised_min: int
    accepted_min: int
    advertised_max: int


ADVERTISED: tuple[ApiRange, ...] = (
    ApiRange(ApiKey.PRODUCE, 0, 3, 8),
    ApiRange(ApiKey.FETCH, 4, 4, 11),
    ApiRange(ApiKey.LIST_OFFSETS, 1, 1, 5),
    ApiRange(ApiKey.METADATA, 0, 0, 8),
    ApiRange(ApiKey.OFFSET_COMMIT, 2, 2, 7),
    ApiRange(ApiKey.OFFSET_FETCH, 1, 1, 5),
    ApiRange(ApiKey.FIND_COORDINATOR, 0, 0, 2),
    ApiRange(ApiKey.JOIN_GROUP, 0, 0, 5),
    ApiRange(ApiKey.HEARTBEAT, 0, 0, 3),
    ApiRange(ApiKey.LEAVE_GROUP, 0, 0, 3),
    ApiRange(ApiKey.SYNC_GROUP, 0, 0, 3),
    ApiRange(ApiKey.DESCRIBE_GROUPS, 0, 0, 4),
    ApiRange(ApiKey.LIST_GROUPS, 0, 0, 2),
    ApiRange(ApiKey.SASL_HANDSHAKE, 0, 0, 1),
    ApiRange(ApiKey.API_VERSIONS, 0, 0, 4),
    ApiRange(ApiKey.CREATE_TOPICS, 2, 2, 4),
    ApiRange(ApiKey.DELETE_TOPICS, 1, 1, 3),
    ApiRange(ApiKey.DELETE_RECORDS, 0, 0, 1),
    ApiRange(ApiKey.INIT_PRODUCER_ID, 0, 0, 1),
    ApiRange(ApiKey.DESCRIBE_CONFIGS, 1, 1, 3),
    ApiRange(ApiKey.ALTER_CONFIGS, 0, 0, 1),
    ApiRange(ApiKey.SASL_AUTHENTICATE, 0, 0, 1),
    ApiRange(ApiKey.CREATE_PARTITIONS, 0, 0, 1),
    ApiRange(ApiKey.DELETE_GROUPS, 0, 0, 1),
    ApiRange(ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, 0, 0),
    ApiRange(ApiKey.OFFSET_DELETE, 0, 0, 0),
)
_BY_KEY: dict[int, ApiRange] = {row.api_key: row for row in ADVERTISED}

# The fallback body is always v0 (NOTES 1.4).
_FALLBACK_VERSION = 0


def is_accepted(api_key: int, api_version: int) -> bool:
    """True when the broker serves ``api_key`` at ``api_version``.

    ApiVersions is accepted at every version >= 0: versions above the maximum
    get the v0 fallback from ``api_versions_response``.
    """
    row = _BY_KEY.get(api_key)
    if row is None or api_version < 0:
        return False
    if api_key == ApiKey.API_VERSIONS:
        return True
    return row.accepted_min <= api_version <= row.advertised_max


def advertised_range(api_key: int) -> ApiRange | None:
    """The table row of ``api_key``, or None when it is not advertised."""
    return _BY_KEY.get(api_key)


def api_versions_body(
    request_version: int, throttle_time_ms: int = 0
) -> tuple[int, dict[str, Any]]:
    """The ApiVersions response for a request at ``request_version``.

    Returns (response version, body): the request's own version with every
    advertised API when it is supported, else version 0 with
    UNSUPPORTED_VERSION and only the ApiVersions entry.
    """
    own = _BY_KEY[ApiKey.API_VERSIONS]
    if own.advertised_min <= request_version <= own.advertised_max:
        entries = [
            {
                "api_key": row.api_key,
                "min_version": row.advertised_min,
                "max_version": row.advertised_max,
            }
            for row in ADVERTISED
        ]
        body = {
            "error_code": ErrorCode.NONE,
            "api_keys": entries,
            "throttle_time_ms": throttle_time_ms,
        }
        return request_version, body

    fallback = {
        "error_code": ErrorCode.UNSUPPORTED_VERSION,
        "api_keys": [
            {
                "api_key": own.api_key,
                "min_version": own.advertised_min,
                "max_version": own.advertised_max,
            }
        ],
    }
    return _FALLBACK_VERSION, fallback


def api_versions_response(
    correlation_id: int, request_version: int, throttle_time_ms: int = 0
) -> bytes:
    """The whole ApiVersions response frame (size prefix, header v0, body).

    The request body need not be decoded: Ringbus does not validate the
    client software name and version (NOTES 1.4).
    """
    version, body = api_versions_body(request_version, throttle_time_ms)
    return encode_response_bytes(ApiKey.API_VERSIONS, version, correlation_id, body)


# Produce and Fetch are the hot paths: compile their codecs at import rather
# than inside the first client's request.
HOT_APIS = (ApiKey.PRODUCE, ApiKey.FETCH)
precompile(
    (row.api_key, version)
    for row in ADVERTISED
    if row.api_key in HOT_APIS
    for version in range(row.accepted_min, row.advertised_max + 1)
)
