"""Helpers for the log storage tests: a batch factory and a brute-force
scanner that reads segment files with plain struct calls, independent of the
code under test."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

from broker.log.batch import build_batch


class ScannedBatch(NamedTuple):
    segment_base_offset: int
    position: int
    base_offset: int
    last_offset: int
    max_timestamp: int
    data: bytes


def make_batch(
    records: int = 1, value_size: int = 10, timestamp: int = 1_000, key: bytes = b"k"
) -> bytearray:
    """A valid uncompressed batch; record i has timestamp ``timestamp + i``."""
    return build_batch(
        [
            (key, bytes([i % 251]) * value_size, [], timestamp + i)
            for i in range(records)
        ]
    )


def scan_directory(directory: Path) -> list[ScannedBatch]:
    """Every batch in every ``.log`` of ``directory``, in offset order."""
    found = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        position = 0
        while position + 12 <= len(data):
            base_offset, batch_length = struct.unpack_from(">qi", data, position)
            size = batch_length + 12
            (last_delta,) = struct.unpack_from(">i", data, position + 23)
            (max_timestamp,) = struct.unpack_from(">q", data, position + 35)
            found.append(
                ScannedBatch(
                    int(path.stem),
                    position,
                    base_offset,
                    base_offset + last_delta,
                    max_timestamp,
                    data[position : position + size],
                )
            )
            position += size
        assert position == len(data), f"{path} ends inside a batch"
    return found
