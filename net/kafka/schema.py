"""The Kafka message schemas as typed objects: one ``Message`` per request,
response, header or data definition, built once from ``schemas_data``.

A ``Field`` answers the per-version questions the codec compiler asks: is the
field present in version v, nullable, tagged, written in the compact form.
The rules follow Kafka's message README (see NOTES.md section 2):

- a field exists in v when v is inside its ``versions``;
- a message version is flexible when it is inside ``flexible_versions``; a
  flexible struct ends with a tagged-field section and uses COMPACT_* forms,
  unless the field overrides that (``flexible_versions == ()``, as
  ``RequestHeader.ClientId`` does);
- a field with a tag in v is written only in the tagged section.

Decoded objects are dicts keyed by ``Field.key``; a field absent from the
version read takes its default (``default_value``).

Imported by the codec modules; the objects are immutable after import.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

from net.kafka.schemas_data import MESSAGES as _RAW_MESSAGES

# (low, high) with high None for "and above"; () for "no version".
VersionRange: TypeAlias = tuple[int, int | None] | tuple[()]

PRIMITIVE_TYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "float64",
        "string",
        "bytes",
        "records",
        "uuid",
    }
)
ZERO_UUID = uuid.UUID(int=0)


class ApiKey(IntEnum):
    """The API keys Ringbus speaks (NOTES.md section 5.2)."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    SASL_HANDSHAKE = 17
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    DELETE_RECORDS = 21
    INIT_PRODUCER_ID = 22
    DESCRIBE_CONFIGS = 32
    ALTER_CONFIGS = 33
    SASL_AUTHENTICATE = 36
    CREATE_PARTITIONS = 37
    DELETE_GROUPS = 42
    INCREMENTAL_ALTER_CONFIGS = 44
    OFFSET_DELETE = 47


def in_range(versions: VersionRange, version: int) -> bool:
    """True when ``version`` lies inside ``versions``."""
    if not versions:
        return False
    low, high = versions
    return low <= version and (high is None or version <= high)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message or struct, as declared in the JSON."""

    name: str
    key: str
    type: str
    versions: VersionRange
    nullable_versions: VersionRange
    tag: int | None
    tagged_versions: VersionRange
    flexible_versions: VersionRange | None
    default: Any
    about: str
    fields: tuple[Field, ...]

    @property
    def is_array(self) -> bool:
        return self.type.startswith("[]")

    @property
    def element_type(self) -> str:
        """The array's element type, or the field's own type."""
        return self.type[2:] if self.is_array else self.type

    @property
    def is_struct(self) -> bool:
        """True for a struct or an array of structs."""
        return self.element_type not in PRIMITIVE_TYPES

    def present(self, version: int) -> bool:
        return in_range(self.versions, version)

    def nullable(self, version: int) -> bool:
        return in_range(self.nullable_versions, version)

    def tagged(self, version: int, flexible: bool) -> bool:
        return flexible and in_range(self.tagged_versions, version)

    def compact(self, version: int, flexible: bool) -> bool:
        """True when the field uses COMPACT_* length prefixes in ``version``."""
        if not flexible:
            return False
        if self.flexible_versions is None:
            return True
        return in_range(self.flexible_versions, version)

    def default_value(self) -> Any:
        """A fresh default value (new list/dict objects on every call)."""
        if self.is_array:
            return [] if self.default == () else self.default
        if self.is_struct:
            return {child.key: child.default_value() for child in self.fields}
        if self.type == "uuid":
            return uuid.UUID(self.default)
        return self.default


@dataclass(frozen=True, slots=True)
class Message:
    """One message definition: a request, response, header or data struct."""

    name: str
    type: str
    api_key: int | None
    valid_versions: VersionRange
    deprecated_versions: VersionRange
    flexible_versions: VersionRange
    fields: tuple[Field, ...]

    @property
    def min_version(self) -> int:
        assert self.valid_versions
        return self.valid_versions[0]

    @property
    def max_version(self) -> int:
        assert self.valid_versions and self.valid_versions[1] is not None
        return self.valid_versions[1]

    def is_valid(self, version: int) -> bool:
        return in_range(self.valid_versions, version)

    def is_flexible(self, version: int) -> bool:
        return in_range(self.flexible_versions, version)


def _field(raw: dict[str, Any]) -> Field:
    return Field(
        name=raw["name"],
        key=raw["key"],
        type=raw["type"],
        versions=raw["versions"],
        nullable_versions=raw["nullable_versions"],
        tag=raw["tag"],
        tagged_versions=raw["tagged_versions"],
        flexible_versions=raw["flexible_versions"],
        default=raw["default"],
        about=raw["about"],
        fields=tuple(_field(child) for child in raw["fields"]),
    )


def _message(raw: dict[str, Any]) -> Message:
    return Message(
        name=raw["name"],
        type=raw["type"],
        api_key=raw["api_key"],
        valid_versions=raw["valid_versions"],
        deprecated_versions=raw["deprecated_versions"],
        flexible_versions=raw["flexible_versions"],
        fields=tuple(_field(child) for child in raw["fields"]),
    )


MESSAGES: dict[str, Message] = {
    name: _message(raw) for name, raw in _RAW_MESSAGES.items()
}
REQUESTS: dict[int, Message] = {
    m.api_key: m
    for m in MESSAGES.values()
    if m.type == "request" and m.api_key is not None
}
RESPONSES: dict[int, Message] = {
    m.api_key: m
    for m in MESSAGES.values()
    if m.type == "response" and m.api_key is not None
}
