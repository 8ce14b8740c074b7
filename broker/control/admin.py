"""Kafka admin requests: CreateTopics, DeleteTopics, CreatePartitions,
DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, and InitProducerId.

Each handler takes a decoded request and returns the response body for the
same version. Versions handled (a superset of what net processes accept
today, see ``net.kafka.versions``)::

    CreateTopics 2-5    DeleteTopics 1-6 (v6: by name or topic id)
    CreatePartitions 0-3    DescribeConfigs 1-4    AlterConfigs 0-2
    IncrementalAlterConfigs 0-1    InitProducerId 0-4

Rules beyond Kafka's: one broker, so the replication factor is 1 (or -1,
"the broker default") and a replica assignment may only name this broker.
Topic changes go through ``MetadataStore``, which persists them before the
response is sent; its MetadataError carries the Kafka error name.

Imported by the control process only; runs on its event loop.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from broker.control import configs
from broker.control.configs import ConfigEntry
from broker.control.group_api import Durability
from broker.control.metadata import MetadataError, MetadataStore, Topic, check_configs
from broker.control.offsets import OffsetLogError, OffsetStore
from broker.control.producer_ids import ProducerIdAllocator, ProducerIdError
from broker.logs import event
from broker.settings import Settings
from net.kafka.codec import RequestHeader
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey

logger = logging.getLogger(__name__)

Body = dict[str, Any]
Handler = Callable[[RequestHeader, Body], Awaitable[Body]]

# IncrementalAlterConfigs operations.
OP_SET = 0
OP_DELETE = 1
OP_APPEND = 2
OP_SUBTRACT = 3

ZERO_UUID = uuid.UUID(int=0)


class AdminError(Exception):
    """A refused admin change: the Kafka error and a message for the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _from_metadata(exc: MetadataError) -> AdminError:
    # Translate at the boundary: MetadataError carries the Kafka name.
    try:
        code = ErrorCode[exc.error_name]
    except KeyError:
        code = ErrorCode.UNKNOWN_SERVER_ERROR
    return AdminError(code, str(exc))


class AdminApi:
    """Topic admin, config and producer-id request handlers."""

    def __init__(
        self,
        settings: Settings,
        metadata: MetadataStore,
        offsets: OffsetStore,
        durability: Durability,
        producer_ids: ProducerIdAllocator,
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.offsets = offsets
        self.durability = durability
        self.producer_ids = producer_ids

    def handlers(self) -> dict[int, tuple[int, int, Handler]]:
        """api key -> (lowest version, highest version, handler)."""
        return {
            ApiKey.CREATE_TOPICS: (2, 5, self.create_topics),
            ApiKey.DELETE_TOPICS: (1, 6, self.delete_topics),
            ApiKey.CREATE_PARTITIONS: (0, 3, self.create_partitions),
            ApiKey.DESCRIBE_CONFIGS: (1, 4, self.describe_configs),
            ApiKey.ALTER_CONFIGS: (0, 2, self.alter_configs),
            ApiKey.INCREMENTAL_ALTER_CONFIGS: (0, 1, self.incremental_alter_configs),
            ApiKey.INIT_PRODUCER_ID: (0, 4, self.init_producer_id),
        }

    # -- topics ---------------------------------------------------------------

    async def create_topics(self, header: RequestHeader, body: Body) -> Body:
        validate_only = body["validate_only"]
        counts = Counter(topic["name"] for topic in body["topics"])
        results = []
        for request in body["topics"]:
            name = request["name"]
            result: Body = {"name": name, "error_code": ErrorCode.NONE}
            try:
                if counts[name] > 1:
                    raise AdminError(
                        ErrorCode.INVALID_REQUEST,
                        f"topic {name!r} appears more than once in the request",
                    )
                topic = self._create_topic(request, validate_only)
            except AdminError as exc:
                result.update(error_code=exc.code, error_message=exc.message)
                results.append(result)
                continue

            result.update(
                error_message=None,
                topic_id=uuid.UUID(hex=topic.topic_id),
                num_partitions=len(topic.partitions),
                replication_factor=1,
                configs=[
                    {
                        "name": entry.name,
                        "value": entry.value,
                        "read_only": entry.read_only,
                        "config_source": entry.source,
                        "is_sensitive": False,
                    }
                    for entry in configs.describe_topic_configs(
                        self.settings, topic.configs, None, False
                    )
                ],
            )
            results.append(result)
            if not validate_only:
                event(
                    logger,
                    logging.INFO,
                    "topic.created",
                    topic=name,
                    partitions=len(topic.partitions),
                    client=header.client_id,
                )
        return {"topics": results}

    def _create_topic(self, request: Body, validate_only: bool) -> Topic:
        name = request["name"]
        partitions = request["num_partitions"]
        replication_factor = request["replication_factor"]
        assignments = request["assignments"]

        if assignments:
            if partitions != -1 or replication_factor != -1:
                raise AdminError(
                    ErrorCode.INVALID_REQUEST,
                    "give either a replica assignment or num_partitions and"
                    " replication_factor, not both",
                )
            indexes = sorted(a["partition_index"] for a in assignments)
            if indexes != list(range(len(indexes))):
                raise AdminError(
                    ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                    f"partition indexes {indexes} must be 0..{len(indexes) - 1}",
                )
            for assignment in assignments:
                self._check_replicas(assignment["broker_ids"])
            partitions = len(indexes)
        else:
            if partitions == -1:
                partitions = self.settings.default_partitions
            if replication_factor not in (-1, 1):
                raise AdminError(
                    ErrorCode.INVALID_REPLICATION_FACTOR,
                    f"replication factor {replication_factor} is larger than the"
                    " 1 broker available",
                )

        requested = {c["name"]: c["value"] for c in request["configs"]}
        nulls = sorted(key for key, value in requested.items() if value is None)
        if nulls:
            raise AdminError(
                ErrorCode.INVALID_CONFIG, f"config {nulls[0]!r} has a null value"
            )
        topic_configs = {key: str(value) for key, value in requested.items()}
        try:
            return self.metadata.create_topic(
                name, partitions, topic_configs, validate_only=validate_only
            )
        except MetadataError as exc:
            raise _from_metadata(exc) from exc

    def _check_replicas(self, broker_ids: list[int]) -> None:
        if broker_ids != [self.settings.node_id]:
            raise AdminError(
                ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                f"replicas {broker_ids} must be exactly this broker"
                f" [{self.settings.node_id}]",
            )

    async def delete_topics(self, header: RequestHeader, body: Body) -> Body:
        version = header.api_version
        if version >= 6:
            requests = [(t["name"], t["topic_id"]) for t in body["topics"]]
        else:
            requests = [(name, ZERO_UUID) for name in body["topic_names"]]

        responses = []
        sequence = 0
        for name, topic_id in requests:
            response: Body = {"name": name, "topic_id": topic_id, "error_message": None}
            try:
                name = self._topic_name(name, topic_id)
                response["name"] = name
                topic = self.metadata.delete_topic(name)
            except MetadataError as exc:
                error = _from_metadata(exc)
                response.update(error_code=error.code, error_message=error.message)
            except AdminError as exc:
                response.update(error_code=exc.code, error_message=exc.message)
            else:
                response.update(
                    error_code=ErrorCode.NONE, topic_id=uuid.UUID(hex=topic.topic_id)
                )
                event(
                    logger,
                    logging.INFO,
                    "topic.deleted",
                    topic=name,
                    partitions=len(topic.partitions),
                    client=header.client_id,
                )
                sequence = self._forget_offsets(name, sequence)
            responses.append(response)
        try:
            await self.durability.wait_durable(sequence)
        except OffsetLogError as exc:
            _log_forget_failure(exc)
        return {"responses": responses}

    def _topic_name(self, name: str | None, topic_id: uuid.UUID) -> str:
        if name is not None:
            return name
        for topic in self.metadata.topics.values():
            if topic.topic_id == topic_id.hex:
                return topic.name
        raise AdminError(ErrorCode.UNKNOWN_TOPIC_ID, f"no topic has id {topic_id}")

    def _forget_offsets(self, topic: str, sequence: int) -> int:
        # Committed offsets of a deleted topic must not reappear if the name
        # is reused. A failure here loses no acknowledged commit: the offsets
        # only outlive the topic (they are dropped again on the next try).
        try:
            return self.offsets.delete_topic(topic)
        except OffsetLogError as exc:
            _log_forget_failure(exc)
            return sequence

    async def create_partitions(self, header: RequestHeader, body: Body) -> Body:
        validate_only = body["validate_only"]
        counts = Counter(topic["name"] for topic in body["topics"])
        results = []
        for request in body["topics"]:
            name = request["name"]
            result: Body = {
                "name": name,
                "error_code": ErrorCode.NONE,
                "error_message": None,
            }
            try:
                if counts[name] > 1:
                    raise AdminError(
                        ErrorCode.INVALID_REQUEST,
                        f"topic {name!r} appears more than once in the request",
                    )
                self._create_partitions(request, validate_only)
            except AdminError as exc:
                result.update(error_code=exc.code, error_message=exc.message)
            else:
                if not validate_only:
                    event(
                        logger,
                        logging.INFO,
                        "topic.partitions_added",
                        topic=name,
                        partitions=request["count"],
                        client=header.client_id,
                    )
            results.append(result)
        return {"results": results}

    def _create_partitions(self, request: Body, validate_only: bool) -> None:
        name, count = request["name"], request["count"]
        topic = self.metadata.topics.get(name)
        assignments = request["assignments"]
        if topic is not None and assignments is not None:
            added = count - len(topic.partitions)
            if len(assignments) != added:
                raise AdminError(
                    ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                    f"{len(assignments)} assignments given for {added} new partitions",
                )
            for assignment in assignments:
                self._check_replicas(assignment["broker_ids"])
        try:
            self.metadata.create_partitions(name, count, validate_only=validate_only)
        except MetadataError as exc:
            raise _from_metadata(exc) from exc

    # -- configs --------------------------------------------------------------

    async def describe_configs(self, header: RequestHeader, body: Body) -> Body:
        version = header.api_version
        synonyms = body["include_synonyms"]
        results = []
        for resource in body["resources"]:
            resource_type = resource["resource_type"]
            name = resource["resource_name"]
            result: Body = {
                "resource_type": resource_type,
                "resource_name": name,
                "error_code": ErrorCode.NONE,
                "error_message": None,
                "configs": [],
            }
            try:
                entries = self._describe(resource_type, name, resource, synonyms)
            except AdminError as exc:
                result.update(error_code=exc.code, error_message=exc.message)
            else:
                result["configs"] = [_config_body(entry, version) for entry in entries]
            results.append(result)
        return {"results": results}

    def _describe(
        self, resource_type: int, name: str, resource: Body, synonyms: bool
    ) -> list[ConfigEntry]:
        keys = resource["configuration_keys"]
        if resource_type == configs.RESOURCE_TOPIC:
            topic = self._existing(name)
            return configs.describe_topic_configs(
                self.settings, topic.configs, keys, synonyms
            )
        if resource_type == configs.RESOURCE_BROKER:
            self._check_broker(name)
            return configs.describe_broker_configs(self.settings, keys, synonyms)
        raise AdminError(
            ErrorCode.INVALID_REQUEST,
            f"config resource type {resource_type} is not supported"
            " (2 = topic, 4 = broker)",
        )

    def _existing(self, name: str) -> Topic:
        topic = self.metadata.topics.get(name)
        if topic is None:
            raise AdminError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"topic {name!r} does not exist"
            )
        return topic

    def _check_broker(self, name: str) -> None:
        if name not in ("", str(self.settings.node_id)):
            raise AdminError(
                ErrorCode.INVALID_REQUEST,
                f"broker {name!r} is not this broker ({self.settings.node_id})",
            )

    async def alter_configs(self, header: RequestHeader, body: Body) -> Body:
        # AlterConfigs replaces a topic's whole set of overrides.
        def changes(topic: Topic, resource: Body) -> dict[str, str | None]:
            wanted: dict[str, str | None] = {}
            for config in resource["configs"]:
                if config["value"] is None:
                    raise AdminError(
                        ErrorCode.INVALID_CONFIG,
                        f"config {config['name']!r} has a null value",
                    )
                wanted[config["name"]] = config["value"]
            removed: dict[str, str | None] = {
                key: None for key in topic.configs if key not in wanted
            }
            return removed | wanted

        return self._alter(header, body, changes)

    async def incremental_alter_configs(
        self, header: RequestHeader, body: Body
    ) -> Body:
        def changes(topic: Topic, resource: Body) -> dict[str, str | None]:
            names = Counter(config["name"] for config in resource["configs"])
            repeated = sorted(name for name, count in names.items() if count > 1)
            if repeated:
                raise AdminError(
                    ErrorCode.INVALID_REQUEST,
                    f"config {repeated[0]!r} appears more than once",
                )
            defaults = configs.topic_defaults(self.settings)
            result: dict[str, str | None] = {}
            for config in resource["configs"]:
                result[config["name"]] = _apply_operation(
                    config, topic.configs, defaults
                )
            return result

        return self._alter(header, body, changes)

    def _alter(
        self,
        header: RequestHeader,
        body: Body,
        changes: Callable[[Topic, Body], dict[str, str | None]],
    ) -> Body:
        validate_only = body["validate_only"]
        responses = []
        for resource in body["resources"]:
            resource_type = resource["resource_type"]
            name = resource["resource_name"]
            response: Body = {
                "resource_type": resource_type,
                "resource_name": name,
                "error_code": ErrorCode.NONE,
                "error_message": None,
            }
            try:
                if resource_type == configs.RESOURCE_BROKER:
                    self._check_broker(name)
                    raise AdminError(
                        ErrorCode.INVALID_REQUEST,
                        "broker configs are read-only: set RINGBUS_* variables"
                        " and restart the broker",
                    )
                if resource_type != configs.RESOURCE_TOPIC:
                    raise AdminError(
                        ErrorCode.INVALID_REQUEST,
                        f"config resource type {resource_type} is not supported",
                    )
                topic = self._existing(name)
                wanted = changes(topic, resource)
                try:
                    check_configs(wanted)
                    if not validate_only:
                        self.metadata.set_configs(name, wanted)
                except MetadataError as exc:
                    raise _from_metadata(exc) from exc
            except AdminError as exc:
                response.update(error_code=exc.code, error_message=exc.message)
            else:
                if not validate_only:
                    event(
                        logger,
                        logging.INFO,
                        "topic.configs_altered",
                        topic=name,
                        configs=",".join(sorted(wanted)),
                        client=header.client_id,
                    )
            responses.append(response)
        return {"responses": responses}

    # -- producer ids ---------------------------------------------------------

    async def init_producer_id(self, header: RequestHeader, body: Body) -> Body:
        if body["transactional_id"] is not None:
            # LIMITATION: transactions are not supported; a transactional
            # producer fails at start with INVALID_REQUEST.
            return {
                "error_code": ErrorCode.INVALID_REQUEST,
                "producer_id": -1,
                "producer_epoch": -1,
            }
        try:
            producer_id = self.producer_ids.allocate()
        except ProducerIdError as exc:
            event(logger, logging.ERROR, "producer_ids.allocate_failed", error=str(exc))
            return {
                "error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE,
                "producer_id": -1,
                "producer_epoch": -1,
            }
        return {
            "error_code": ErrorCode.NONE,
            "producer_id": producer_id,
            "producer_epoch": 0,
        }


def _log_forget_failure(exc: OffsetLogError) -> None:
    event(
        logger,
        logging.ERROR,
        "offsets.change_failed",
        path=exc.path,
        error=str(exc),
        reason="offsets of a deleted topic were not dropped",
    )


def _apply_operation(
    config: Body, current: dict[str, str], defaults: dict[str, str]
) -> str | None:
    """The new value of one IncrementalAlterConfigs entry (None = remove)."""
    name, operation, value = config["name"], config["config_operation"], config["value"]
    if operation == OP_DELETE:
        return None
    if operation not in (OP_SET, OP_APPEND, OP_SUBTRACT):
        raise AdminError(
            ErrorCode.INVALID_REQUEST, f"unknown config operation {operation}"
        )
    if value is None:
        raise AdminError(ErrorCode.INVALID_CONFIG, f"config {name!r} has a null value")
    if operation == OP_SET:
        return str(value)
    if name not in configs.LIST_CONFIGS:
        raise AdminError(
            ErrorCode.INVALID_CONFIG,
            f"APPEND and SUBTRACT apply only to list configs; {name!r} is not one",
        )
    items = [v for v in current.get(name, defaults.get(name, "")).split(",") if v]
    given = [v.strip() for v in str(value).split(",") if v.strip()]
    if operation == OP_APPEND:
        items += [v for v in given if v not in items]
    else:
        items = [v for v in items if v not in given]
    return ",".join(items)


def _config_body(entry: ConfigEntry, version: int) -> Body:
    return {
        "name": entry.name,
        "value": entry.value,
        "read_only": entry.read_only,
        "is_default": entry.source == configs.SOURCE_DEFAULT_CONFIG,
        "config_source": entry.source,
        "is_sensitive": False,
        "synonyms": [
            {"name": name, "value": value, "source": source}
            for name, value, source in entry.synonyms
        ],
        "config_type": entry.config_type,
        "documentation": None,
    }
