"""Fixtures for the shm tests: a fresh block prefix, peer processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from shm.region import list_blocks, unlink_stale
from tests.shm.support import Peers


@pytest.fixture
def prefix() -> Iterator[str]:
    """A block-name prefix no other test uses; its blocks go at teardown."""
    name = f"rbt{secrets.token_hex(5)}_"
    yield name
    unlink_stale(name, include_live_owners=True)
    assert list_blocks(name) == []


@pytest.fixture
def peers() -> Iterator[Peers]:
    started = Peers()
    yield started
    started.stop_all()
