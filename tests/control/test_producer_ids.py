"""Producer id allocation: unique across restarts, persisted per block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.control.producer_ids import ProducerIdAllocator, ProducerIdError


def test_allocator_hands_out_consecutive_ids_within_a_block(tmp_path: Path) -> None:
    allocator = ProducerIdAllocator.open(tmp_path, block_size=10)
    assert [allocator.allocate() for _ in range(12)] == list(range(12))
    document = json.loads(allocator.path.read_text())
    assert document == {"next_block_start": 20}


def test_allocator_skips_rest_of_block_after_restart(tmp_path: Path) -> None:
    first = ProducerIdAllocator.open(tmp_path, block_size=10)
    used = [first.allocate() for _ in range(3)]
    # A crash now loses nothing: the block end was persisted first.
    second = ProducerIdAllocator.open(tmp_path, block_size=10)
    assert second.allocate() == 10
    assert max(used) < 10


def test_allocator_refuses_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "__ringbus" / "producer-ids.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ProducerIdError, match="cannot be proven unique"):
        ProducerIdAllocator.open(tmp_path)
