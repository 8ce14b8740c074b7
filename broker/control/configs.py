"""Config values as DescribeConfigs reports them: every topic config with its
default (from the broker settings), and the broker's own read-only configs.

A topic config's value is the topic's override when it has one (source
TOPIC_CONFIG), else the broker default (source DEFAULT_CONFIG, or
STATIC_BROKER_CONFIG where a ``RINGBUS_*`` setting decides it). Synonyms
list the override, then the broker config that supplies the default, as
Kafka does. Broker configs all come from ``RINGBUS_*`` settings read at
start, so they are read-only (AlterConfigs on a broker is refused).

Imported by the control process only; pure functions of settings and
topic configs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from broker.settings import Settings

# DescribeConfigs resource types (Kafka's ConfigResource.Type).
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
RESOURCE_BROKER_LOGGER = 8

# Config sources (DescribeConfigsResponse ConfigSource).
SOURCE_TOPIC_CONFIG = 1
SOURCE_STATIC_BROKER_CONFIG = 4
SOURCE_DEFAULT_CONFIG = 5

# Config types (DescribeConfigs v3+ ConfigType).
TYPE_BOOLEAN = 1
TYPE_STRING = 2
TYPE_INT = 3
TYPE_LONG = 5
TYPE_DOUBLE = 6
TYPE_LIST = 7

# Topic configs whose value is a list (IncrementalAlterConfigs APPEND and
# SUBTRACT apply only to these).
LIST_CONFIGS = frozenset({"cleanup.policy"})


class ConfigEntry(NamedTuple):
    """One described config."""

    name: str
    value: str | None
    read_only: bool
    source: int
    config_type: int
    synonyms: tuple[tuple[str, str | None, int], ...]


class _TopicDefault(NamedTuple):
    broker_name: str
    config_type: int
    # True when a RINGBUS_* setting gives the value.
    from_settings: bool


_TOPIC_DEFAULTS: dict[str, _TopicDefault] = {
    "cleanup.policy": _TopicDefault("log.cleanup.policy", TYPE_LIST, False),
    "compression.type": _TopicDefault("compression.type", TYPE_STRING, False),
    "delete.retention.ms": _TopicDefault(
        "log.cleaner.delete.retention.ms", TYPE_LONG, False
    ),
    "file.delete.delay.ms": _TopicDefault(
        "log.segment.delete.delay.ms", TYPE_LONG, False
    ),
    "flush.messages": _TopicDefault("log.flush.interval.messages", TYPE_LONG, False),
    "flush.ms": _TopicDefault("log.flush.interval.ms", TYPE_LONG, True),
    "index.interval.bytes": _TopicDefault("log.index.interval.bytes", TYPE_INT, True),
    "max.message.bytes": _TopicDefault("message.max.bytes", TYPE_INT, True),
    "message.downconversion.enable": _TopicDefault(
        "log.message.downconversion.enable", TYPE_BOOLEAN, False
    ),
    "message.timestamp.type": _TopicDefault(
        "log.message.timestamp.type", TYPE_STRING, False
    ),
    "min.cleanable.dirty.ratio": _TopicDefault(
        "log.cleaner.min.cleanable.ratio", TYPE_DOUBLE, False
    ),
    "min.insync.replicas": _TopicDefault("min.insync.replicas", TYPE_INT, False),
    "preallocate": _TopicDefault("log.preallocate", TYPE_BOOLEAN, False),
    "retention.bytes": _TopicDefault("log.retention.bytes", TYPE_LONG, True),
    "retention.ms": _TopicDefault("log.retention.ms", TYPE_LONG, True),
    "segment.bytes": _TopicDefault("log.segment.bytes", TYPE_INT, True),
    "segment.index.bytes": _TopicDefault("log.index.size.max.bytes", TYPE_INT, False),
    "segment.jitter.ms": _TopicDefault("log.roll.jitter.ms", TYPE_LONG, False),
    "segment.ms": _TopicDefault("log.roll.ms", TYPE_LONG, True),
    "unclean.leader.election.enable": _TopicDefault(
        "unclean.leader.election.enable", TYPE_BOOLEAN, False
    ),
}


def topic_defaults(settings: Settings) -> dict[str, str]:
    """The value of every topic config when the topic does not override it.

    Values Ringbus does not act on are Kafka's defaults; ``max.message.bytes``
    is the largest request the broker accepts, which bounds a batch.
    """
    return {
        "cleanup.policy": "delete",
        "compression.type": "producer",
        "delete.retention.ms": "86400000",
        "file.delete.delay.ms": "60000",
        "flush.messages": str(2**63 - 1),
        "flush.ms": str(settings.flush_ms),
        "index.interval.bytes": str(settings.index_interval_bytes),
        "max.message.bytes": str(settings.max_request_bytes),
        "message.downconversion.enable": "true",
        "message.timestamp.type": "CreateTime",
        "min.cleanable.dirty.ratio": "0.5",
        "min.insync.replicas": "1",
        "preallocate": "false",
        "retention.bytes": str(settings.retention_bytes),
        "retention.ms": str(settings.retention_ms),
        "segment.bytes": str(settings.segment_bytes),
        "segment.index.bytes": "10485760",
        "segment.jitter.ms": "0",
        "segment.ms": str(settings.segment_ms),
        "unclean.leader.election.enable": "false",
    }


def describe_topic_configs(
    settings: Settings,
    overrides: Mapping[str, str],
    keys: Iterable[str] | None,
    include_synonyms: bool,
) -> list[ConfigEntry]:
    """Every topic config (or those named in ``keys``; unknown names are
    left out, as Kafka does), sorted by name."""
    defaults = topic_defaults(settings)
    names = sorted(defaults) if keys is None else sorted(set(keys) & set(defaults))
    entries = []
    for name in names:
        known = _TOPIC_DEFAULTS[name]
        default_source = (
            SOURCE_STATIC_BROKER_CONFIG
            if known.from_settings
            else SOURCE_DEFAULT_CONFIG
        )
        default = (known.broker_name, defaults[name], default_source)
        synonyms: tuple[tuple[str, str | None, int], ...]
        if name in overrides:
            value, source = overrides[name], SOURCE_TOPIC_CONFIG
            synonyms = ((name, value, SOURCE_TOPIC_CONFIG), default)
        else:
            value, source = defaults[name], default_source
            synonyms = (default,)
        entries.append(
            ConfigEntry(
                name,
                value,
                False,
                source,
                known.config_type,
                synonyms if include_synonyms else (),
            )
        )
    return entries


def broker_configs(settings: Settings) -> dict[str, tuple[str, int]]:
    """The broker's configs by Kafka name: (value, config type)."""
    listener = f"PLAINTEXT://{settings.advertised}:{settings.kafka_port}"
    auto_create = "true" if settings.auto_create_topics else "false"
    return {
        "advertised.listeners": (listener, TYPE_LIST),
        "auto.create.topics.enable": (auto_create, TYPE_BOOLEAN),
        "broker.id": (str(settings.node_id), TYPE_INT),
        "default.replication.factor": ("1", TYPE_INT),
        "listeners": (f"PLAINTEXT://{settings.host}:{settings.kafka_port}", TYPE_LIST),
        "log.dirs": (str(settings.data_dir), TYPE_STRING),
        "log.flush.interval.ms": (str(settings.flush_ms), TYPE_LONG),
        "log.index.interval.bytes": (str(settings.index_interval_bytes), TYPE_INT),
        "log.retention.bytes": (str(settings.retention_bytes), TYPE_LONG),
        "log.retention.ms": (str(settings.retention_ms), TYPE_LONG),
        "log.roll.ms": (str(settings.segment_ms), TYPE_LONG),
        "log.segment.bytes": (str(settings.segment_bytes), TYPE_INT),
        "message.max.bytes": (str(settings.max_request_bytes), TYPE_INT),
        "node.id": (str(settings.node_id), TYPE_INT),
        "num.partitions": (str(settings.default_partitions), TYPE_INT),
        "offsets.topic.replication.factor": ("1", TYPE_INT),
        "socket.request.max.bytes": (str(settings.max_request_bytes), TYPE_INT),
    }


def describe_broker_configs(
    settings: Settings, keys: Iterable[str] | None, include_synonyms: bool
) -> list[ConfigEntry]:
    configs = broker_configs(settings)
    names = sorted(configs) if keys is None else sorted(set(keys) & set(configs))
    entries = []
    for name in names:
        value, config_type = configs[name]
        source = SOURCE_STATIC_BROKER_CONFIG
        synonyms = ((name, value, source),) if include_synonyms else ()
        entries.append(ConfigEntry(name, value, True, source, config_type, synonyms))
    return entries
