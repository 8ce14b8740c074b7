"""Framing of a Kafka connection's byte stream: find the complete size-prefixed
frames in a receive buffer.

Layout (NOTES.md section 1.1): each request is ``INT32 size`` (big-endian,
not counting itself) followed by ``size`` bytes. Raw SASL tokens after a
SaslHandshake v0 use the same framing without a Kafka header.

The frames returned are memoryviews into the caller's buffer: no copy. While
any of them (or a memoryview sliced from one, such as a decoded RECORDS
field) is alive, a bytearray buffer cannot be resized (BufferError), and
overwriting its bytes changes what the views see. The connection must finish
with a frame (e.g. copy its batches into the produce ring) before it compacts
or refills that part of the buffer.

Imported by the net process; pure functions, no state.
"""

from __future__ import annotations

from typing import NamedTuple

from net.kafka.codec_errors import FrameTooLargeError, InvalidLengthError
from net.kafka.wire import INT32

SIZE_PREFIX = 4


class FrameScan(NamedTuple):
    """What ``scan_frames`` found.

    frames:   complete frame payloads (size prefix excluded), in order.
    consumed: bytes of the buffer, from ``start``, that those frames cover; the
              next scan starts at ``start + consumed``.
    missing:  bytes still to receive before the next frame is complete; 0 when
              the scan ended on a frame boundary or stopped at ``max_frames``.
              While even the size prefix is incomplete it counts only the
              prefix's missing bytes.
    """

    frames: list[memoryview]
    consumed: int
    missing: int


def scan_frames(
    buffer: bytes | bytearray | memoryview,
    max_frame_bytes: int,
    start: int = 0,
    end: int | None = None,
    max_frames: int | None = None,
) -> FrameScan:
    """Find complete frames in ``buffer[start:end]``.

    Stops after ``max_frames`` frames when given (the rest stays unconsumed).
    Raises ``FrameTooLargeError`` when a size prefix exceeds
    ``max_frame_bytes`` and ``InvalidLengthError`` for a negative size; frames
    before the bad one are lost with it, as the connection must close anyway.
    """
    view = buffer if type(buffer) is memoryview else memoryview(buffer)
    stop = len(view) if end is None else end
    pos = start
    frames: list[memoryview] = []
    unpack = INT32.unpack_from

    # Each turn takes one whole frame, so the loop runs at most
    # (stop - start) / 4 times.
    while max_frames is None or len(frames) < max_frames:
        available = stop - pos
        if available < SIZE_PREFIX:
            missing = SIZE_PREFIX - available if available else 0
            return FrameScan(frames, pos - start, missing)
        size = unpack(view, pos)[0]
        if size < 0:
            raise InvalidLengthError("frame size prefix", size, "negative frame size")
        if size > max_frame_bytes:
            raise FrameTooLargeError(size, max_frame_bytes)
        if available - SIZE_PREFIX < size:
            return FrameScan(frames, pos - start, size + SIZE_PREFIX - available)
        frames.append(view[pos + SIZE_PREFIX : pos + SIZE_PREFIX + size])
        pos += SIZE_PREFIX + size
    return FrameScan(frames, pos - start, 0)
