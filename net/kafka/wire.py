"""Kafka wire primitives: fixed-width integers, unsigned varints, tagged-field
sections, and the struct formats the compiled codecs share.

Layout (NOTES.md section 2): every fixed-width integer is big-endian two's
complement. An UNSIGNED_VARINT carries 7 bits per byte, least significant
group first, the high bit meaning "more follows", at most 5 bytes for the
32-bit values the protocol uses, and no zig-zag. A tagged-field section is::

    UNSIGNED_VARINT count
    count x ( UNSIGNED_VARINT tag | UNSIGNED_VARINT size | size bytes )

Readers take ``(buf, pos, end)`` where ``buf`` is a 1-D byte memoryview (or
bytes) and ``end`` the first byte they may not read; they return
``(value, new_pos)`` and raise ``CodecError`` subclasses, never IndexError.

Imported by the codec modules of the net process (and by tests and load
generators); pure functions, no state.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

from net.kafka.codec_errors import InvalidLengthError, TruncatedError

# What readers accept: indexing any of these yields an int.
ByteSource: TypeAlias = bytes | bytearray | memoryview

INT8 = struct.Struct(">b")
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")
INT64 = struct.Struct(">q")

# Struct format letters of the fixed-width schema types.
FIXED_FORMATS: dict[str, str] = {
    "bool": "?",
    "int8": "b",
    "int16": "h",
    "int32": "i",
    "int64": "q",
    "uint16": "H",
    "uint32": "I",
    "float64": "d",
}

_SMALL_UVARINTS = tuple(bytes((value,)) for value in range(128))

# A 5-byte varint holds 35 bits; the protocol only needs unsigned 32-bit values.
_UVARINT_MAX_BYTES = 5


def read_uvarint(buf: ByteSource, pos: int, end: int) -> tuple[int, int]:
    """Read an UNSIGNED_VARINT at ``pos``; return ``(value, pos after it)``."""
    result = 0
    shift = 0
    for _ in range(_UVARINT_MAX_BYTES):
        if pos >= end:
            raise TruncatedError("unsigned varint", pos, 1, end - pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise InvalidLengthError(
        "unsigned varint", result, f"longer than {_UVARINT_MAX_BYTES} bytes"
    )


def uvarint_bytes(value: int) -> bytes:
    """Encode ``value`` (0 <= value < 2**32) as an UNSIGNED_VARINT."""
    if 0 <= value < 128:
        return _SMALL_UVARINTS[value]
    if value < 0 or value >= 1 << 32:
        raise ValueError(f"unsigned varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def skip_tagged_fields(buf: ByteSource, pos: int, end: int) -> int:
    """Skip a whole tagged-field section; return the position after it."""
    count, pos = read_uvarint(buf, pos, end)

    # Each tagged field takes at least 2 bytes (tag and size).
    if count > (end - pos) // 2:
        raise InvalidLengthError(
            "tagged fields", count, f"more tags than {end - pos} bytes can hold"
        )
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos, end)
        size, pos = read_uvarint(buf, pos, end)
        if size > end - pos:
            raise TruncatedError("tagged field", pos, size, end - pos)
        pos += size
    return pos
