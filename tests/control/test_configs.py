"""Config descriptions: every topic config known to metadata has a default."""

from __future__ import annotations

import pytest

from broker.control import configs
from broker.control.metadata import (
    ACTED_ON_CONFIGS,
    STORED_CONFIGS,
    MetadataError,
    check_configs,
)
from broker.settings import Settings


def test_every_topic_config_has_a_default_that_passes_its_check(
    settings: Settings,
) -> None:
    defaults = configs.topic_defaults(settings)
    assert set(defaults) == set(ACTED_ON_CONFIGS) | STORED_CONFIGS
    check_configs(defaults)  # raises on a default the broker would refuse


def test_describe_topic_configs_prefers_override_and_lists_synonyms(
    settings: Settings,
) -> None:
    entries = configs.describe_topic_configs(
        settings, {"retention.ms": "10"}, ["retention.ms", "segment.bytes"], True
    )
    by_name = {entry.name: entry for entry in entries}
    retention = by_name["retention.ms"]
    assert (retention.value, retention.source) == ("10", configs.SOURCE_TOPIC_CONFIG)
    assert retention.synonyms == (
        ("retention.ms", "10", configs.SOURCE_TOPIC_CONFIG),
        ("log.retention.ms", str(settings.retention_ms), 4),
    )
    segment = by_name["segment.bytes"]
    assert segment.value == str(settings.segment_bytes)
    assert segment.source == configs.SOURCE_STATIC_BROKER_CONFIG


def test_broker_configs_are_read_only_and_follow_settings(settings: Settings) -> None:
    entries = configs.describe_broker_configs(settings, None, False)
    values = {entry.name: entry.value for entry in entries}
    assert values["advertised.listeners"] == "PLAINTEXT://ringbus.test:19092"
    assert values["num.partitions"] == "3"
    assert all(entry.read_only for entry in entries)


def test_message_timestamp_type_takes_only_kafka_values() -> None:
    check_configs({"message.timestamp.type": "CreateTime"})
    check_configs({"message.timestamp.type": "LogAppendTime"})
    with pytest.raises(MetadataError, match=r"message\.timestamp\.type") as refused:
        check_configs({"message.timestamp.type": "logappendtime"})
    assert refused.value.error_name == "INVALID_CONFIG"
