"""Fixtures for the writer tests: a harness around a real writer process,
and an in-process broker for the turn logic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import InProcessBroker, WriterHarness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[WriterHarness]:
    made = WriterHarness(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[InProcessBroker]:
    made = InProcessBroker(tmp_path)
    try:
        yield made
    finally:
        made.close()
