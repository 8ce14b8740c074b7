"""Topic metadata: topics, their partitions, dense partition indexes, configs.

The control process is the only writer; the writer and net processes read
it. The whole state is one small JSON document, ``<data>/__ringbus/
metadata.json``, replaced atomically (write a temporary file, fsync it,
rename it over the old one, fsync the directory), so a reader or a crash
sees either the old or the new state, never a mix.

Every partition has a dense **partition index**, its row in the shared
partition state table and the number carried in produce ring descriptors.
An index is persisted with its partition, so it stays the same across
restarts of any process. An index freed by a deletion is not handed out
again until every process has applied the metadata version that freed it
(``release_freed``); otherwise a net process still holding the old mapping
could send a batch for the deleted partition into the new one.

Document layout::

    {"version": 7,
     "topics": {"orders": {"id": "<32 hex>", "partitions": [0, 1, 2],
                           "configs": {"retention.ms": "3600000"}}},
     "freed": [[5, 6]]}          # [index, version that freed it]
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

METADATA_DIR = "__ringbus"
METADATA_FILE = "metadata.json"

# Kafka's own rule (Topic.java): legal characters and a length that keeps
# "<topic>-<partition>" a valid file name.
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")

# Topic configs Ringbus acts on, with a check of the value. Other Kafka topic
# configs are accepted and stored so that tools setting them keep working.
ACTED_ON_CONFIGS = {
    "retention.ms": lambda v: int(v) >= -1,
    "retention.bytes": lambda v: int(v) == -1 or int(v) > 0,
    "segment.bytes": lambda v: 1024 <= int(v) < 2**31,
    "segment.ms": lambda v: int(v) >= 1,
    "cleanup.policy": lambda v: v == "delete",
    "message.timestamp.type": lambda v: v in ("CreateTime", "LogAppendTime"),
}
STORED_CONFIGS = frozenset(
    {
        "compression.type",
        "max.message.bytes",
        "min.insync.replicas",
        "unclean.leader.election.enable",
        "flush.messages",
        "flush.ms",
        "index.interval.bytes",
        "segment.index.bytes",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "min.cleanable.dirty.ratio",
        "message.downconversion.enable",
        "preallocate",
        "segment.jitter.ms",
    }
)


class MetadataError(Exception):
    """A metadata change was refused; ``error_name`` is the Kafka error."""

    def __init__(self, error_name: str, message: str) -> None:
        super().__init__(message)
        self.error_name = error_name


@dataclass
class Topic:
    """One topic: its id, the dense index of each partition, its configs."""

    name: str
    topic_id: str
    partitions: list[int]
    configs: dict[str, str] = field(default_factory=dict)


def check_topic_name(name: str) -> None:
    if name in (".", "..") or not TOPIC_NAME.fullmatch(name):
        raise MetadataError(
            "INVALID_TOPIC_EXCEPTION",
            f"topic name {name!r} must be 1-249 of [a-zA-Z0-9._-] and not '.' or '..'",
        )
    if name.startswith("__ringbus"):
        raise MetadataError(
            "INVALID_TOPIC_EXCEPTION", f"topic name {name!r} is reserved"
        )


def check_configs(configs: Mapping[str, str | None]) -> None:
    for key, value in configs.items():
        check = ACTED_ON_CONFIGS.get(key)
        if check is None:
            if key not in STORED_CONFIGS:
                raise MetadataError("INVALID_CONFIG", f"unknown topic config {key!r}")
            continue
        if value is None:
            continue
        try:
            ok = check(value)
        except ValueError:
            ok = False
        if not ok:
            raise MetadataError(
                "INVALID_CONFIG", f"topic config {key}={value!r} is not valid"
            )


class MetadataStore:
    """The persisted topic metadata of one broker (see module docstring)."""

    def __init__(self, data_dir: Path, max_partitions: int) -> None:
        self.directory = data_dir / METADATA_DIR
        self.path = self.directory / METADATA_FILE
        self.max_partitions = max_partitions
        self.version = 0
        self.topics: dict[str, Topic] = {}
        self.freed: list[tuple[int, int]] = []

    # -- reading ------------------------------------------------------------

    def load(self) -> MetadataStore:
        """Read the document; a missing one is an empty broker."""
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return self
        self.version = int(document["version"])
        self.topics = {
            name: Topic(name, t["id"], list(t["partitions"]), dict(t["configs"]))
            for name, t in document["topics"].items()
        }
        self.freed = [(int(i), int(v)) for i, v in document.get("freed", [])]
        return self

    def stored_version(self) -> int:
        """The version on disk, read cheaply, to tell whether to reload."""
        try:
            with self.path.open("rb") as file:
                head = file.read(64)
        except FileNotFoundError:
            return 0
        match = re.match(rb'\{"version": ?(\d+)', head)
        return int(match.group(1)) if match else -1

    def partition_index(self, topic: str, partition: int) -> int | None:
        entry = self.topics.get(topic)
        if entry is None or not 0 <= partition < len(entry.partitions):
            return None
        return entry.partitions[partition]

    def partitions(self) -> Iterator[tuple[int, str, int]]:
        """Every (partition index, topic, partition) of the broker."""
        for topic in self.topics.values():
            for partition, index in enumerate(topic.partitions):
                yield index, topic.name, partition

    def used_indexes(self) -> set[int]:
        used = {index for index, _, _ in self.partitions()}
        used.update(index for index, _ in self.freed)
        return used

    # -- changes (control process only) ---------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int,
        configs: Mapping[str, str] | None = None,
        *,
        validate_only: bool = False,
    ) -> Topic:
        check_topic_name(name)
        if name in self.topics:
            raise MetadataError(
                "TOPIC_ALREADY_EXISTS", f"topic {name!r} already exists"
            )
        if partitions < 1:
            raise MetadataError(
                "INVALID_PARTITIONS", f"partition count {partitions} must be >= 1"
            )
        configs = dict(configs or {})
        check_configs(configs)
        indexes = self._allocate(partitions)
        topic = Topic(name, uuid.uuid4().hex, indexes, configs)
        if not validate_only:
            self.topics[name] = topic
            self._commit()
        return topic

    def delete_topic(self, name: str) -> Topic:
        topic = self._existing(name)
        del self.topics[name]
        self.version += 1
        self.freed.extend((index, self.version) for index in topic.partitions)
        self._write()
        return topic

    def create_partitions(
        self, name: str, total: int, *, validate_only: bool = False
    ) -> Topic:
        topic = self._existing(name)
        if total <= len(topic.partitions):
            raise MetadataError(
                "INVALID_PARTITIONS",
                f"topic {name!r} has {len(topic.partitions)} partitions;"
                f" the new count {total} must be larger",
            )
        added = self._allocate(total - len(topic.partitions))
        if not validate_only:
            topic.partitions.extend(added)
            self._commit()
        return topic

    def set_configs(self, name: str, configs: Mapping[str, str | None]) -> Topic:
        """Set (or, with a None value, remove) topic configs."""
        topic = self._existing(name)
        check_configs(configs)
        for key, value in configs.items():
            if value is None:
                topic.configs.pop(key, None)
            else:
                topic.configs[key] = value
        self._commit()
        return topic

    def release_freed(self, applied_version: int) -> int:
        """Make indexes freed at or before ``applied_version`` reusable."""
        before = len(self.freed)
        self.freed = [(i, v) for i, v in self.freed if v > applied_version]
        if len(self.freed) != before:
            self._commit()
        return before - len(self.freed)

    def _existing(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            raise MetadataError(
                "UNKNOWN_TOPIC_OR_PARTITION", f"topic {name!r} does not exist"
            )
        return topic

    def _allocate(self, count: int) -> list[int]:
        used = self.used_indexes()
        free = (i for i in range(self.max_partitions) if i not in used)
        indexes = [index for index, _ in zip(free, range(count), strict=False)]
        if len(indexes) < count:
            raise MetadataError(
                "INVALID_PARTITIONS",
                f"no room for {count} more partitions: the broker holds"
                f" {len(used)} of RINGBUS_MAX_PARTITIONS={self.max_partitions}",
            )
        return indexes

    def _commit(self) -> None:
        self.version += 1
        self._write()

    def _write(self) -> None:
        document = {
            "version": self.version,
            "topics": {
                t.name: {
                    "id": t.topic_id,
                    "partitions": t.partitions,
                    "configs": t.configs,
                }
                for t in self.topics.values()
            },
            "freed": [list(pair) for pair in self.freed],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w") as file:
            json.dump(document, file, separators=(", ", ": "))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
