"""Framing of the receive buffer (net.kafka.framing)."""

from __future__ import annotations

import struct

import pytest

from net.kafka.codec_errors import FrameTooLargeError, InvalidLengthError
from net.kafka.framing import scan_frames


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def test_scan_frames_returns_views_of_complete_frames() -> None:
    buffer = bytearray(_frame(b"one") + _frame(b"") + _frame(b"three"))

    scan = scan_frames(buffer, 100)

    assert [bytes(f) for f in scan.frames] == [b"one", b"", b"three"]
    assert scan.consumed == len(buffer) and scan.missing == 0
    assert all(f.obj is buffer for f in scan.frames)


def test_scan_frames_reports_missing_bytes_of_a_partial_frame() -> None:
    data = _frame(b"abc") + _frame(b"0123456789")

    scan = scan_frames(data[:-4], 100)

    assert [bytes(f) for f in scan.frames] == [b"abc"]
    assert scan.consumed == 7
    assert scan.missing == 4


def test_scan_frames_reports_missing_size_prefix_bytes() -> None:
    assert scan_frames(b"\x00\x00", 100) == ([], 0, 2)
    assert scan_frames(b"", 100) == ([], 0, 0)


def test_scan_frames_respects_start_end_and_max_frames() -> None:
    data = b"junk" + _frame(b"a") + _frame(b"b") + _frame(b"c") + b"tail"

    scan = scan_frames(memoryview(data), 10, start=4, end=len(data) - 4, max_frames=2)

    assert [bytes(f) for f in scan.frames] == [b"a", b"b"]
    assert scan.consumed == 10 and scan.missing == 0
    rest = scan_frames(data, 10, start=4 + scan.consumed, end=len(data) - 4)
    assert [bytes(f) for f in rest.frames] == [b"c"]


def test_scan_frames_rejects_frame_over_the_limit() -> None:
    with pytest.raises(FrameTooLargeError, match="101 bytes exceeds the limit of 100"):
        scan_frames(struct.pack(">i", 101), 100)


def test_scan_frames_rejects_negative_size() -> None:
    with pytest.raises(InvalidLengthError, match="negative frame size"):
        scan_frames(struct.pack(">i", -1) + b"xxxx", 100)
