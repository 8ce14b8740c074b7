"""Fixtures of the control process tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.settings import Settings
from tests.control.support import ADVERTISED_HOST, KAFKA_PORT, NODE_ID


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a broker whose data directory is inside ``tmp_path``."""
    return Settings(
        data_dir=tmp_path / "data",
        node_id=NODE_ID,
        advertised_host=ADVERTISED_HOST,
        kafka_port=KAFKA_PORT,
        default_partitions=3,
        net_procs=1,
        retention_ms=3_600_000,
    )
