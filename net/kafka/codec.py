"""The Kafka codec's public API: request frames in, request objects out;
response objects in, response frames (bytes and file ranges) out.

Sans-IO: nothing here reads or writes a socket or a file. The connection
layer finds frames with ``net.kafka.framing.scan_frames``, then::

    header, offset = decode_request_header(frame)
    # policy: net.kafka.versions.is_accepted(header.api_key, header.api_version)
    body = decode_request_body(header, frame, offset)
    ...
    chunks = encode_response(header.api_key, header.api_version,
                             header.correlation_id, response_body)

Objects are plain dicts keyed by the snake_case field names of Kafka's JSON
schemas (``ProduceRequest.TopicData[].PartitionData[].Records`` is
``body["topic_data"][i]["partition_data"][j]["records"]``). Decoded dicts hold
every field of the schema; fields the version does not carry take their
schema default (Metadata v0-v3 ``allow_auto_topic_creation`` is True).
RECORDS decode to a memoryview into the frame, without copying; the
memoryview keeps the receive buffer exported until the caller drops it.

Frame layout (NOTES.md section 1)::

    request:  INT32 size | header v1/v2 | body
      header v1: INT16 api_key | INT16 api_version | INT32 correlation_id
                 | INT16 client_id length (-1 = null) | client_id
      header v2: header v1 | tagged fields (client_id keeps its INT16 length)
    response: INT32 size | header v0/v1 | body
      header v0: INT32 correlation_id;  header v1: header v0 | tagged fields

The request header is v2 exactly when the API version is flexible; the
response header is v1 when flexible, except ApiVersions, always v0.

Encoded responses are a list of chunks: bytearrays, plus ``FileRange``
markers (file, position, length) for record data the connection sends with
``os.sendfile``, and large record buffers passed through without a copy.
The first chunk starts with the INT32 frame size, already computed.

Imported by the net process (and by tests and load generators). Compiled
codecs are cached per process; not thread-safe.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from net.kafka.codec_errors import (
    EncodeError,
    InvalidLengthError,
    InvalidValueError,
    TruncatedError,
    UnsupportedApiError,
)
from net.kafka.compiler import Chunk, DecodeFn, FileRange, decoder, encoder
from net.kafka.schema import MESSAGES, REQUESTS, RESPONSES, ApiKey, Message
from net.kafka.wire import INT16, INT32, skip_tagged_fields

__all__ = [
    "Chunk",
    "FileRange",
    "RequestHeader",
    "chunks_size",
    "decode_consumer_protocol",
    "decode_data",
    "decode_request",
    "decode_request_body",
    "decode_request_header",
    "decode_response",
    "encode_consumer_protocol",
    "encode_data",
    "encode_request",
    "encode_response",
    "encode_response_bytes",
    "join_chunks",
    "precompile",
    "request_header_version",
    "response_header_version",
]

# api_key, api_version, correlation_id, client_id length: the fixed part of
# request header v1/v2.
_HEADER_FIXED = struct.Struct(">hhih")
_HEADER_FIXED_SIZE = _HEADER_FIXED.size
_MAX_FRAME_SIZE = 0x7FFFFFFF

# (api key, api version) -> whether the request header is v2, for every version
# the request schemas define (the header decoder's per-request lookup).
_HEADER_FLEXIBLE: dict[tuple[int, int], bool] = {
    (api_key, version): message.is_flexible(version)
    for api_key, message in REQUESTS.items()
    for version in range(message.min_version, message.max_version + 1)
}
_API_VERSIONS_REQUEST = REQUESTS[ApiKey.API_VERSIONS]

# (api key, api version) -> compiled body decoder, filled on first use.
_BODY_DECODERS: dict[tuple[int, int], DecodeFn] = {}


class RequestHeader(NamedTuple):
    """A decoded request header (v1 or v2). A null client id reads as ""."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str


def request_header_version(api_key: int, api_version: int) -> int:
    """2 when ``api_version`` is flexible for ``api_key``, else 1."""
    message = REQUESTS.get(api_key)
    return 2 if message is not None and message.is_flexible(api_version) else 1


def response_header_version(api_key: int, api_version: int) -> int:
    """1 when the response is flexible, else 0; ApiVersions is always 0."""
    if api_key == ApiKey.API_VERSIONS:
        return 0
    message = RESPONSES.get(api_key)
    return 1 if message is not None and message.is_flexible(api_version) else 0


def _as_view(frame: bytes | bytearray | memoryview) -> memoryview:
    return frame if type(frame) is memoryview else memoryview(frame)


def decode_request_header(
    frame: bytes | bytearray | memoryview,
) -> tuple[RequestHeader, int]:
    """Decode the request header at the start of ``frame`` (size prefix removed).

    Returns the header and the offset where the body starts. Raises
    ``UnsupportedApiError`` (with ``.header`` set) for an unknown API key or a
    version outside the schema, except ApiVersions, which is accepted at any
    version >= 0 so the broker can answer with the v0 fallback (NOTES 1.4).
    """
    view = _as_view(frame)
    end = len(view)
    if end < _HEADER_FIXED_SIZE:
        raise TruncatedError("request header", 0, _HEADER_FIXED_SIZE, end)
    api_key, api_version, correlation_id, length = _HEADER_FIXED.unpack_from(view, 0)

    # The client id keeps its INT16 length in every header version.
    pos = _HEADER_FIXED_SIZE
    if length == -1:
        client_id = ""
    elif length < 0:
        raise InvalidLengthError("request header client_id", length, "negative length")
    elif length > end - pos:
        raise TruncatedError("request header client_id", pos, length, end - pos)
    else:
        try:
            client_id = str(view[pos : pos + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidValueError(
                "request header client_id", "not valid UTF-8"
            ) from exc
        pos += length
    header = RequestHeader(api_key, api_version, correlation_id, client_id)

    flexible = _HEADER_FLEXIBLE.get((api_key, api_version))
    if flexible is None:
        # Only ApiVersions is read above its newest version, to answer it with
        # the v0 fallback; its flexible range is open-ended.
        if api_key != ApiKey.API_VERSIONS or api_version < 0:
            raise UnsupportedApiError(api_key, api_version, header)
        flexible = _API_VERSIONS_REQUEST.is_flexible(api_version)

    # Header v2 adds a tagged-field section.
    if flexible:
        pos = skip_tagged_fields(view, pos, end)
    return header, pos


def decode_request_body(
    header: RequestHeader, frame: bytes | bytearray | memoryview, offset: int
) -> dict[str, Any]:
    """Decode the body of ``frame`` that starts at ``offset``.

    Raises ``UnsupportedApiError`` when the version is outside the schema (only
    possible here for ApiVersions), and other ``CodecError`` subclasses for a
    malformed body, including bytes left over after it.
    """
    decode = _BODY_DECODERS.get((header.api_key, header.api_version))
    if decode is None:
        message = REQUESTS.get(header.api_key)
        if message is None or not message.is_valid(header.api_version):
            raise UnsupportedApiError(header.api_key, header.api_version, header)
        decode = decoder(message, header.api_version)
        _BODY_DECODERS[header.api_key, header.api_version] = decode

    view = frame if type(frame) is memoryview else memoryview(frame)
    body, pos = decode(view, offset)
    if pos != len(view):
        _check_consumed(REQUESTS[header.api_key], header.api_version, view, pos)
    return body


def decode_request(
    frame: bytes | bytearray | memoryview,
) -> tuple[RequestHeader, dict[str, Any]]:
    """Decode a whole request frame (size prefix removed): header and body."""
    header, offset = decode_request_header(frame)
    return header, decode_request_body(header, frame, offset)


def _check_consumed(message: Message, version: int, view: memoryview, pos: int) -> None:
    if pos != len(view):
        raise InvalidLengthError(
            f"{message.name} v{version}",
            len(view) - pos,
            "bytes left over after the body",
        )


def _response_message(api_key: int, api_version: int) -> Message:
    message = RESPONSES.get(api_key)
    if message is None or not message.is_valid(api_version):
        raise EncodeError(f"no response schema for api key {api_key} v{api_version}")
    return message


def encode_response(
    api_key: int, api_version: int, correlation_id: int, body: dict[str, Any]
) -> list[Chunk]:
    """Encode a whole response frame: size prefix, header, body.

    Returns chunks to send in order: the first is a bytearray starting with the
    INT32 frame size; ``FileRange`` chunks stand for record data in files.
    Raises ``EncodeError`` if ``body`` does not fit the schema.
    """
    message = _response_message(api_key, api_version)
    encode = encoder(message, api_version)

    # Size placeholder, then the response header.
    out = bytearray(8)
    INT32.pack_into(out, 4, correlation_id)
    if response_header_version(api_key, api_version) == 1:
        out.append(0)

    chunks: list[Chunk] = []
    out = encode(body, out, chunks)
    if out or not chunks:
        chunks.append(out)

    size = chunks_size(chunks) - 4
    if size > _MAX_FRAME_SIZE:
        raise EncodeError(f"{message.name} v{api_version}: frame of {size} bytes")
    first = chunks[0]
    assert isinstance(first, bytearray)
    INT32.pack_into(first, 0, size)
    return chunks


def encode_response_bytes(
    api_key: int, api_version: int, correlation_id: int, body: dict[str, Any]
) -> bytes:
    """``encode_response`` joined into bytes; EncodeError if a FileRange is in it."""
    return join_chunks(encode_response(api_key, api_version, correlation_id, body))


def chunks_size(chunks: Iterable[Chunk]) -> int:
    """Total bytes the chunks put on the wire."""
    total = 0
    for chunk in chunks:
        total += chunk.length if type(chunk) is FileRange else len(chunk)
    return total


def join_chunks(
    chunks: Iterable[Chunk],
    read_range: Callable[[FileRange], bytes] | None = None,
) -> bytes:
    """Join chunks into one bytes object; ``read_range`` supplies file ranges
    (without it a FileRange raises EncodeError)."""
    parts: list[bytes | bytearray | memoryview] = []
    for chunk in chunks:
        if isinstance(chunk, FileRange):
            if read_range is None:
                raise EncodeError(f"cannot join {chunk!r} without a reader")
            data = read_range(chunk)
            if len(data) != chunk.length:
                raise EncodeError(f"{chunk!r}: reader returned {len(data)} bytes")
            parts.append(data)
        else:
            parts.append(chunk)
    return b"".join(parts)


# -- the client side: requests out, responses in (tests, load generators) ------


def encode_request(
    api_key: int,
    api_version: int,
    correlation_id: int,
    client_id: str | None,
    body: dict[str, Any],
) -> bytes:
    """Encode a whole request frame: size prefix, header v1/v2, body."""
    message = REQUESTS.get(api_key)
    if message is None or not message.is_valid(api_version):
        raise EncodeError(f"no request schema for api key {api_key} v{api_version}")

    out = bytearray(4)
    if client_id is None:
        out += _HEADER_FIXED.pack(api_key, api_version, correlation_id, -1)
    else:
        client_bytes = client_id.encode("utf-8")
        out += _HEADER_FIXED.pack(
            api_key, api_version, correlation_id, len(client_bytes)
        )
        out += client_bytes
    if message.is_flexible(api_version):
        out.append(0)

    chunks: list[Chunk] = []
    chunks.append(encoder(message, api_version)(body, out, chunks))
    data = bytearray(join_chunks(chunks))
    INT32.pack_into(data, 0, len(data) - 4)
    return bytes(data)


def decode_response(
    api_key: int, api_version: int, frame: bytes | bytearray | memoryview
) -> tuple[int, dict[str, Any]]:
    """Decode a response frame (size prefix removed): (correlation id, body)."""
    message = RESPONSES.get(api_key)
    if message is None or not message.is_valid(api_version):
        raise UnsupportedApiError(api_key, api_version)
    view = _as_view(frame)
    if len(view) < 4:
        raise TruncatedError("response header", 0, 4, len(view))
    correlation_id = INT32.unpack_from(view, 0)[0]
    pos = 4
    if response_header_version(api_key, api_version) == 1:
        pos = skip_tagged_fields(view, pos, len(view))
    body, pos = decoder(message, api_version)(view, pos)
    _check_consumed(message, api_version, view, pos)
    return correlation_id, body


# -- data messages: the consumer protocol payloads of JoinGroup / SyncGroup ----


def _data_message(name: str) -> Message:
    message = MESSAGES.get(name)
    if message is None or message.type != "data":
        raise KeyError(f"{name!r} is not a data message")
    return message


def decode_data(
    name: str, version: int, data: bytes | bytearray | memoryview
) -> dict[str, Any]:
    """Decode a data message (e.g. "ConsumerProtocolSubscription") at ``version``."""
    message = _data_message(name)
    if not message.is_valid(version):
        raise UnsupportedApiError(-1, version)
    view = _as_view(data)
    obj, pos = decoder(message, version)(view, 0)
    _check_consumed(message, version, view, pos)
    return obj


def encode_data(name: str, version: int, obj: dict[str, Any]) -> bytes:
    """Encode a data message at ``version`` (no version prefix)."""
    message = _data_message(name)
    if not message.is_valid(version):
        raise EncodeError(f"{name} has no version {version}")
    chunks: list[Chunk] = []
    chunks.append(encoder(message, version)(obj, bytearray(), chunks))
    return join_chunks(chunks)


def decode_consumer_protocol(
    name: str, data: bytes | bytearray | memoryview
) -> tuple[int, dict[str, Any]]:
    """Decode a consumer protocol payload: INT16 version, then the message.

    As Kafka's ConsumerProtocol does, a version newer than the schema is read
    with the newest known layout and the bytes after it are ignored (newer
    versions only append fields). Returns (version on the wire, object).
    """
    message = _data_message(name)
    view = _as_view(data)
    if len(view) < 2:
        raise TruncatedError(f"{name} version", 0, 2, len(view))
    version = INT16.unpack_from(view, 0)[0]
    if version < 0:
        raise InvalidValueError(f"{name} version", f"negative version {version}")
    readable = min(version, message.max_version)
    obj, pos = decoder(message, readable)(view, 2)
    if version == readable:
        _check_consumed(message, version, view, pos)
    return version, obj


def encode_consumer_protocol(name: str, version: int, obj: dict[str, Any]) -> bytes:
    """Encode a consumer protocol payload: INT16 version, then the message."""
    return INT16.pack(version) + encode_data(name, version, obj)


# -- warm-up ---------------------------------------------------------------------


def precompile(api_versions: Iterable[tuple[int, int]]) -> int:
    """Compile the request decoder and response encoder of each (api key,
    version) now rather than on first use; returns how many were compiled."""
    count = 0
    for api_key, api_version in api_versions:
        request, response = REQUESTS.get(api_key), RESPONSES.get(api_key)
        if request is None or response is None or not request.is_valid(api_version):
            continue
        _BODY_DECODERS[api_key, api_version] = decoder(request, api_version)
        encoder(response, api_version)
        count += 1
    return count
