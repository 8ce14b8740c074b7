"""The schema data and its generator (net.kafka.schema, schemas_data,
scripts/gen_kafka_schemas.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from net.kafka.schema import MESSAGES, REQUESTS, ApiKey, in_range
from net.kafka.schemas_data import SOURCE_COMMIT

REPO = Path(__file__).resolve().parents[3]
MESSAGES_DIR = REPO.parent / "shared" / "kafka-protocol" / "messages"


@pytest.mark.skipif(not MESSAGES_DIR.is_dir(), reason="../shared/kafka-protocol absent")
def test_generator_reproduces_the_committed_data_module(tmp_path: Path) -> None:
    output = tmp_path / "schemas_data.py"

    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gen_kafka_schemas.py"),
            "--messages",
            str(MESSAGES_DIR),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    committed = (REPO / "net" / "kafka" / "schemas_data.py").read_text()
    assert output.read_text() == committed


def test_data_module_states_its_provenance() -> None:
    import net.kafka.schemas_data as data

    assert data.__doc__ is not None
    assert "Apache License 2.0" in data.__doc__ and SOURCE_COMMIT in data.__doc__
    assert len(SOURCE_COMMIT) == 40


def test_field_versions_and_flexibility_follow_the_json() -> None:
    produce = REQUESTS[ApiKey.PRODUCE]
    transactional_id = produce.fields[0]
    assert (transactional_id.key, transactional_id.versions) == (
        "transactional_id",
        (3, None),
    )
    assert transactional_id.nullable(3) and not transactional_id.present(2)
    assert produce.is_flexible(9) and not produce.is_flexible(8)

    client_id = MESSAGES["RequestHeader"].fields[3]
    assert client_id.flexible_versions == ()
    assert not client_id.compact(2, flexible=True)


def test_defaults_are_python_values_of_the_field_type() -> None:
    metadata = REQUESTS[ApiKey.METADATA]
    fields = {f.key: f for f in metadata.fields}
    assert fields["allow_auto_topic_creation"].default is True
    fetch = {f.key: f for f in REQUESTS[ApiKey.FETCH].fields}
    assert fetch["replica_id"].default == -1
    assert fetch["replica_state"].default_value() == {
        "replica_id": -1,
        "replica_epoch": -1,
    }
    assert fetch["cluster_id"].default is None


def test_in_range_handles_open_closed_and_empty_ranges() -> None:
    assert in_range((3, None), 300) and not in_range((3, None), 2)
    assert in_range((0, 7), 7) and not in_range((0, 7), 8)
    assert not in_range((), 0)
