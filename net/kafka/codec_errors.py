"""Exceptions the Kafka codec raises for bytes it cannot accept, and for bodies it
cannot encode.

Two families, kept apart (STYLE.md habit 12):

- ``CodecError`` and its subclasses are peer protocol violations: a frame or
  request that is truncated, has an impossible length, names an API key or
  version the codec does not know, or is bigger than the connection allows.
  Decoding raises nothing else on any input, however mangled (a property test
  holds it to that). The connection logs ``exc.reason`` and closes, as Kafka
  does when it cannot parse a request.
- ``EncodeError`` is an internal fault: a handler gave the encoder a body that
  does not fit the schema (a None where the field is not nullable, a string
  longer than 32767 bytes, ...). The caller logs it with the traceback.

Kafka error *codes* (UNKNOWN_TOPIC_OR_PARTITION and friends) are a third
family and live in ``net.kafka.errors``.

Imported by every codec module; pure Python, no state.
"""

from __future__ import annotations


class CodecError(Exception):
    """The peer sent bytes the codec cannot decode; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TruncatedError(CodecError):
    """A field needs more bytes than the frame has left."""

    def __init__(self, where: str, position: int, needed: int, available: int) -> None:
        super().__init__(
            f"{where}: truncated, needs {needed} bytes at byte {position} "
            f"but only {max(available, 0)} remain"
        )
        self.where = where
        self.position = position
        self.needed = needed
        self.available = available


class InvalidLengthError(CodecError):
    """A length, count or size prefix is impossible (negative, null where not
    nullable, larger than the frame, or bytes left over after the body)."""

    def __init__(self, where: str, length: int, rule: str) -> None:
        super().__init__(f"{where}: invalid length {length}: {rule}")
        self.where = where
        self.length = length


class InvalidValueError(CodecError):
    """A field's bytes are not a valid value of its type (e.g. bad UTF-8)."""

    def __init__(self, where: str, rule: str) -> None:
        super().__init__(f"{where}: {rule}")
        self.where = where


class UnsupportedApiError(CodecError):
    """The API key is unknown to the codec, or the version is outside the
    versions its schema defines.

    ``header`` carries the decoded request header when one could be read
    (always for ``decode_request``), so the connection can answer ApiVersions
    with the v0 fallback instead of closing.
    """

    def __init__(self, api_key: int, api_version: int, header: object = None) -> None:
        super().__init__(f"unsupported api key {api_key} version {api_version}")
        self.api_key = api_key
        self.api_version = api_version
        self.header = header


class FrameTooLargeError(CodecError):
    """A frame's size prefix exceeds the limit the connection passed in."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(
            f"frame of {size} bytes exceeds the limit of {max_size} bytes "
            "(raise max_request_bytes if this client is legitimate)"
        )
        self.size = size
        self.max_size = max_size


class EncodeError(Exception):
    """A body given to the encoder does not fit its schema (a caller bug)."""
