"""Fixtures of the metrics tests: a broker's shared memory created in the
test, with a metadata document, a process table and no processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from shm.region import list_blocks, unlink_stale
from tests.metrics.support import FakeBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[FakeBroker]:
    prefix = f"rbt{secrets.token_hex(5)}_"
    fake = FakeBroker(tmp_path / "data", prefix)
    try:
        yield fake
    finally:
        fake.close()
        unlink_stale(prefix, include_live_owners=True)
        assert list_blocks(prefix) == []
