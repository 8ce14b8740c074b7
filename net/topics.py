"""The net process's view of topic metadata, and auto-creation of topics.

The control process owns metadata and writes it to ``metadata.json``
(``broker.control.metadata``), then publishes the new version in its
counter row (``metadata_version_gauge``). A net process compares that gauge
with the version it loaded on every lookup (one numpy read, no syscall) and
reloads the file when they differ; a lookup that misses also re-reads the
version on disk, since the gauge may not have been written yet.

Auto-creation (Metadata with allow_auto_topic_creation, or Produce, when
RINGBUS_AUTO_CREATE_TOPICS is on) sends a real CreateTopics request to the
control process, so topics are created in one place with one set of rules.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from broker.control.metadata import MetadataStore, Topic
from broker.layout import CONTROL_SLOT
from broker.logs import event
from net.kafka import codec
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey

if TYPE_CHECKING:
    from net.server import NetProcess

logger = logging.getLogger(__name__)

# CreateTopics version used for auto-creation: v4 allows -1 partitions and
# replication factor (the broker's defaults).
CREATE_TOPICS_VERSION = 4
AUTO_CREATE_TIMEOUT_MS = 10_000

# A miss re-reads the version on disk at most this often, so a client asking
# for a missing topic in a loop does not turn into a file read per request.
MISS_RECHECK_S = 0.05


class TopicView:
    """Read-only topic metadata, reloaded when the control process changes it."""

    def __init__(self, process: NetProcess) -> None:
        self.process = process
        settings = process.settings
        self.store = MetadataStore(settings.data_dir, settings.max_partitions).load()
        counters = process.memory.counters
        self._gauges = counters.counters[CONTROL_SLOT]
        self._gauge_column = counters.counter_id("metadata_version_gauge")
        self._last_miss_check = 0.0

    def _refresh(self) -> None:
        published = int(self._gauges[self._gauge_column])
        if published and published != self.store.version:
            self.store.load()

    def _refresh_on_miss(self) -> bool:
        now = time.monotonic()
        if now - self._last_miss_check < MISS_RECHECK_S:
            return False
        self._last_miss_check = now
        if self.store.stored_version() != self.store.version:
            self.store.load()
            return True
        return False

    def topic(self, name: str) -> Topic | None:
        self._refresh()
        topic = self.store.topics.get(name)
        if topic is None and self._refresh_on_miss():
            topic = self.store.topics.get(name)
        return topic

    def all_topics(self) -> list[Topic]:
        self._refresh()
        return list(self.store.topics.values())

    def partition_index(self, name: str, partition: int) -> int | None:
        topic = self.topic(name)
        if topic is None or not 0 <= partition < len(topic.partitions):
            return None
        return topic.partitions[partition]

    async def create(self, names: Iterable[str]) -> dict[str, int]:
        """Ask the control process to create topics with default settings;
        returns the error code per topic (TOPIC_ALREADY_EXISTS counts as
        success: another client won the race)."""
        wanted = sorted(set(names))
        body = {
            "topics": [
                {
                    "name": name,
                    "num_partitions": -1,
                    "replication_factor": -1,
                    "assignments": [],
                    "configs": [],
                }
                for name in wanted
            ],
            "timeout_ms": AUTO_CREATE_TIMEOUT_MS,
            "validate_only": False,
        }
        frame = codec.encode_request(
            ApiKey.CREATE_TOPICS, CREATE_TOPICS_VERSION, 0, "ringbus-net", body
        )
        reply = await self.process.control.call(frame)
        results = {name: int(ErrorCode.UNKNOWN_SERVER_ERROR) for name in wanted}
        if reply is not None:
            _, response = codec.decode_response(
                ApiKey.CREATE_TOPICS, CREATE_TOPICS_VERSION, memoryview(reply)[4:]
            )
            for topic in response["topics"]:
                code = topic["error_code"]
                if code == ErrorCode.TOPIC_ALREADY_EXISTS:
                    code = ErrorCode.NONE
                results[topic["name"]] = code
        self.store.load()
        for name, code in results.items():
            if code:
                event(
                    logger,
                    logging.DEBUG,
                    "topic.auto_create_failed",
                    topic=name,
                    error=ErrorCode(code).name,
                )
        return results


def cluster_id(settings_data_dir: str) -> str:
    """A stable cluster id for one data directory (22 characters, like Kafka's)."""
    raw = uuid.uuid5(uuid.NAMESPACE_URL, "ringbus:" + settings_data_dir).bytes
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
