"""Wire primitives (net.kafka.wire)."""

from __future__ import annotations

import pytest

from net.kafka.codec_errors import InvalidLengthError, TruncatedError
from net.kafka.wire import read_uvarint, skip_tagged_fields, uvarint_bytes


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (0xFFFFFFFF, b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_uvarint_round_trips(value: int, encoded: bytes) -> None:
    assert uvarint_bytes(value) == encoded
    assert read_uvarint(encoded + b"!", 0, len(encoded) + 1) == (value, len(encoded))


def test_uvarint_rejects_negative_and_oversized_values() -> None:
    with pytest.raises(ValueError, match="out of range"):
        uvarint_bytes(-1)
    with pytest.raises(ValueError, match="out of range"):
        uvarint_bytes(1 << 32)


def test_read_uvarint_rejects_truncated_and_too_long_input() -> None:
    with pytest.raises(TruncatedError):
        read_uvarint(b"\x80\x80", 0, 2)
    with pytest.raises(InvalidLengthError, match="longer than 5 bytes"):
        read_uvarint(b"\xff" * 6, 0, 6)


def test_skip_tagged_fields_skips_each_tag_by_its_size() -> None:
    section = b"\x02" + b"\x00\x02ab" + b"\x05\x00" + b"rest"

    assert skip_tagged_fields(section, 0, len(section)) == len(section) - 4


def test_skip_tagged_fields_rejects_sizes_past_the_end() -> None:
    with pytest.raises(TruncatedError, match="tagged field"):
        skip_tagged_fields(b"\x01\x00\x05ab", 0, 5)
    with pytest.raises(InvalidLengthError, match="more tags"):
        skip_tagged_fields(b"\x09\x00", 0, 2)
