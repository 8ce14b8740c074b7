"""Admin requests (topics, configs, producer ids) as encoded Kafka frames
through ``ControlService.handle``."""

from __future__ import annotations

import uuid
from typing import Any

from broker.control.metadata import MetadataStore
from broker.control.service import ControlService
from broker.settings import Settings
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.control.support import NODE_ID, Caller, FakeClock, make_service, run

TOPIC = 2
BROKER = 4


def topic_request(
    name: str,
    partitions: int = -1,
    replication_factor: int = -1,
    configs: dict[str, str | None] | None = None,
    assignments: list[tuple[int, list[int]]] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "num_partitions": partitions,
        "replication_factor": replication_factor,
        "assignments": [
            {"partition_index": index, "broker_ids": brokers}
            for index, brokers in assignments or []
        ],
        "configs": [{"name": k, "value": v} for k, v in (configs or {}).items()],
    }


async def create(
    call: Caller, *topics: dict[str, Any], version: int = 4, validate_only: bool = False
) -> list[dict[str, Any]]:
    body = {"topics": list(topics), "timeout_ms": 1000, "validate_only": validate_only}
    response = await call(ApiKey.CREATE_TOPICS, version, body)
    return list(response["topics"])


def describe_topic(
    call: Caller, name: str, keys: list[str] | None = None, version: int = 1
) -> Any:
    resource = {
        "resource_type": TOPIC,
        "resource_name": name,
        "configuration_keys": keys,
    }
    body = {"resources": [resource], "include_synonyms": True}
    return call(ApiKey.DESCRIBE_CONFIGS, version, body)


def configs_of(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in response["results"][0]["configs"]}


def reloaded(settings: Settings) -> MetadataStore:
    return MetadataStore(settings.data_dir, settings.max_partitions).load()


# -- CreateTopics ---------------------------------------------------------------


def test_create_topics_uses_default_partitions_and_persists(settings: Settings) -> None:
    async def scenario() -> None:
        call = Caller(make_service(settings, FakeClock()))
        results = await create(
            call, topic_request("orders"), topic_request("audit", 2, 1)
        )
        assert [r["error_code"] for r in results] == [0, 0]

    run(scenario())
    store = reloaded(settings)
    assert len(store.topics["orders"].partitions) == settings.default_partitions == 3
    assert len(store.topics["audit"].partitions) == 2


def test_create_topics_rejects_replication_factor_above_one(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        return await create(call, topic_request("orders", 1, 3), version=2)

    result = run(scenario())[0]
    assert result["error_code"] == ErrorCode.INVALID_REPLICATION_FACTOR
    assert "replication factor 3" in result["error_message"]
    assert "orders" not in reloaded(settings).topics


def test_create_topics_validate_only_creates_nothing(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        return await create(call, topic_request("orders", 4), validate_only=True)

    assert run(scenario())[0]["error_code"] == ErrorCode.NONE
    assert "orders" not in reloaded(settings).topics


def test_create_topics_reports_each_topic_error(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        await create(call, topic_request("taken"))
        return await create(
            call,
            topic_request("taken"),
            topic_request("twice"),
            topic_request("twice"),
            topic_request("bad/name"),
            topic_request("zero", 0),
            topic_request("cfg", configs={"retention.ms": "soon"}),
            topic_request("nullcfg", configs={"retention.ms": None}),
            topic_request("ok", 1, 1, {"retention.ms": "1000"}),
        )

    errors = {r["name"]: r["error_code"] for r in run(scenario())}
    assert errors == {
        "taken": ErrorCode.TOPIC_ALREADY_EXISTS,
        "twice": ErrorCode.INVALID_REQUEST,
        "bad/name": ErrorCode.INVALID_TOPIC_EXCEPTION,
        "zero": ErrorCode.INVALID_PARTITIONS,
        "cfg": ErrorCode.INVALID_CONFIG,
        "nullcfg": ErrorCode.INVALID_CONFIG,
        "ok": ErrorCode.NONE,
    }
    assert reloaded(settings).topics["ok"].configs == {"retention.ms": "1000"}


def test_create_topics_accepts_assignment_naming_this_broker(
    settings: Settings,
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        return await create(
            call,
            topic_request("mine", assignments=[(1, [NODE_ID]), (0, [NODE_ID])]),
            topic_request("other", assignments=[(0, [NODE_ID + 1])]),
            topic_request("gap", assignments=[(0, [NODE_ID]), (2, [NODE_ID])]),
            topic_request("both", 2, assignments=[(0, [NODE_ID])]),
        )

    errors = {r["name"]: r["error_code"] for r in run(scenario())}
    assert errors == {
        "mine": ErrorCode.NONE,
        "other": ErrorCode.INVALID_REPLICA_ASSIGNMENT,
        "gap": ErrorCode.INVALID_REPLICA_ASSIGNMENT,
        "both": ErrorCode.INVALID_REQUEST,
    }
    assert len(reloaded(settings).topics["mine"].partitions) == 2


def test_create_topics_v5_reports_partitions_and_configs(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        request = topic_request("orders", configs={"retention.ms": "5000"})
        return await create(call, request, version=5)

    result = run(scenario())[0]
    assert result["num_partitions"] == 3 and result["replication_factor"] == 1
    configs = {c["name"]: c for c in result["configs"]}
    assert configs["retention.ms"]["value"] == "5000"
    assert configs["retention.ms"]["config_source"] == 1
    assert configs["segment.bytes"]["value"] == str(settings.segment_bytes)


# -- DeleteTopics and CreatePartitions ------------------------------------------


def test_delete_topics_removes_topic_and_its_committed_offsets(
    settings: Settings,
) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        service = make_service(settings, FakeClock())
        call = Caller(service)
        await create(call, topic_request("orders", 1))
        commit = {
            "group_id": "g",
            "generation_id_or_member_epoch": -1,
            "member_id": "",
            "topics": [
                {
                    "name": "orders",
                    "partitions": [{"partition_index": 0, "committed_offset": 5}],
                }
            ],
        }
        await call(ApiKey.OFFSET_COMMIT, 2, commit)
        deleted = await call(
            ApiKey.DELETE_TOPICS, 1, {"topic_names": ["orders", "ghost"]}
        )
        # Recreated under the same name, it starts without committed offsets.
        await create(call, topic_request("orders", 1))
        fetched = await call(
            ApiKey.OFFSET_FETCH,
            1,
            {"group_id": "g", "topics": [{"name": "orders", "partition_indexes": [0]}]},
        )
        await service.close()
        return deleted["responses"], fetched

    responses, fetched = run(scenario())
    errors = {r["name"]: r["error_code"] for r in responses}
    assert errors == {"orders": 0, "ghost": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
    assert fetched["topics"][0]["partitions"][0]["committed_offset"] == -1


def test_delete_topics_v6_finds_topic_by_id(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        service = make_service(settings, FakeClock())
        call = Caller(service)
        await create(call, topic_request("orders", 1))
        topic_id = uuid.UUID(hex=service.metadata.topics["orders"].topic_id)
        body = {
            "topics": [
                {"name": None, "topic_id": topic_id},
                {"name": None, "topic_id": uuid.uuid4()},
            ]
        }
        response = await call(ApiKey.DELETE_TOPICS, 6, body)
        return list(response["responses"])

    first, second = run(scenario())
    assert (first["name"], first["error_code"]) == ("orders", 0)
    assert second["error_code"] == ErrorCode.UNKNOWN_TOPIC_ID
    assert "orders" not in reloaded(settings).topics


def test_create_partitions_grows_topic_and_rejects_shrinking(
    settings: Settings,
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        await create(call, topic_request("orders", 2), topic_request("fixed", 2))

        def grow(name: str, count: int, brokers: list[list[int]] | None = None) -> Any:
            assignments = (
                None if brokers is None else [{"broker_ids": b} for b in brokers]
            )
            return {"name": name, "count": count, "assignments": assignments}

        response = await call(
            ApiKey.CREATE_PARTITIONS,
            1,
            {
                "topics": [
                    grow("orders", 5, [[NODE_ID]] * 3),
                    grow("fixed", 1),
                    grow("ghost", 3),
                ],
                "timeout_ms": 1000,
            },
        )
        validate = await call(
            ApiKey.CREATE_PARTITIONS,
            0,
            {"topics": [grow("fixed", 4, [[NODE_ID]])], "validate_only": True},
        )
        return list(response["results"]) + list(validate["results"])

    results = run(scenario())
    assert [(r["name"], r["error_code"]) for r in results] == [
        ("orders", 0),
        ("fixed", ErrorCode.INVALID_PARTITIONS),
        ("ghost", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        ("fixed", ErrorCode.INVALID_REPLICA_ASSIGNMENT),
    ]
    store = reloaded(settings)
    assert len(store.topics["orders"].partitions) == 5
    assert len(store.topics["fixed"].partitions) == 2


# -- configs --------------------------------------------------------------------


def test_describe_configs_reports_overrides_and_settings_defaults(
    settings: Settings,
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        await create(call, topic_request("orders", configs={"segment.ms": "60000"}))
        everything = await describe_topic(call, "orders")
        some = await describe_topic(call, "orders", ["retention.ms", "nope"], version=3)
        return everything, some

    everything, some = run(scenario())
    configs = configs_of(everything)
    assert configs["segment.ms"]["value"] == "60000"
    assert configs["segment.ms"]["config_source"] == 1
    assert [s["source"] for s in configs["segment.ms"]["synonyms"]] == [1, 4]
    assert configs["retention.ms"]["value"] == "3600000"  # from settings
    assert configs["retention.ms"]["config_source"] == 4
    assert configs["compression.type"]["value"] == "producer"
    assert configs["cleanup.policy"]["config_source"] == 5
    selected = configs_of(some)
    assert list(selected) == ["retention.ms"]
    assert selected["retention.ms"]["config_type"] == 5  # LONG


def test_describe_configs_errors_per_resource(settings: Settings) -> None:
    async def scenario() -> list[dict[str, Any]]:
        call = Caller(make_service(settings, FakeClock()))
        resources = [
            {
                "resource_type": TOPIC,
                "resource_name": "ghost",
                "configuration_keys": None,
            },
            {
                "resource_type": BROKER,
                "resource_name": "99",
                "configuration_keys": None,
            },
            {"resource_type": 8, "resource_name": "3", "configuration_keys": None},
            {
                "resource_type": BROKER,
                "resource_name": str(NODE_ID),
                "configuration_keys": ["num.partitions", "broker.id"],
            },
        ]
        response = await call(ApiKey.DESCRIBE_CONFIGS, 2, {"resources": resources})
        return list(response["results"])

    ghost, other_broker, logger, broker = run(scenario())
    assert ghost["error_code"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert other_broker["error_code"] == ErrorCode.INVALID_REQUEST
    assert logger["error_code"] == ErrorCode.INVALID_REQUEST
    assert broker["error_code"] == 0
    values = {c["name"]: (c["value"], c["read_only"]) for c in broker["configs"]}
    assert values == {"broker.id": (str(NODE_ID), True), "num.partitions": ("3", True)}


def test_alter_configs_replaces_whole_set(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        call = Caller(make_service(settings, FakeClock()))
        await create(
            call,
            topic_request("orders", configs={"segment.ms": "1", "retention.ms": "5"}),
        )

        def resource(configs: dict[str, str], kind: int = TOPIC) -> Any:
            return {
                "resource_type": kind,
                "resource_name": "orders" if kind == TOPIC else str(NODE_ID),
                "configs": [{"name": k, "value": v} for k, v in configs.items()],
            }

        replaced = await call(
            ApiKey.ALTER_CONFIGS, 1, {"resources": [resource({"retention.ms": "7"})]}
        )
        invalid = await call(
            ApiKey.ALTER_CONFIGS,
            0,
            {
                "resources": [
                    resource({"retention.ms": "x"}),
                    resource({"log.retention.ms": "1"}, BROKER),
                ]
            },
        )
        dry = await call(
            ApiKey.ALTER_CONFIGS,
            0,
            {"resources": [resource({"segment.ms": "9"})], "validate_only": True},
        )
        return [replaced, invalid, dry]

    replaced, invalid, dry = run(scenario())
    assert replaced["responses"][0]["error_code"] == 0
    assert [r["error_code"] for r in invalid["responses"]] == [
        ErrorCode.INVALID_CONFIG,
        ErrorCode.INVALID_REQUEST,
    ]
    assert dry["responses"][0]["error_code"] == 0
    assert reloaded(settings).topics["orders"].configs == {"retention.ms": "7"}


def test_incremental_alter_configs_applies_each_operation(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        call = Caller(make_service(settings, FakeClock()))
        await create(call, topic_request("orders", configs={"segment.ms": "1"}))

        def alter(*ops: tuple[str, int, str | None]) -> Any:
            resource = {
                "resource_type": TOPIC,
                "resource_name": "orders",
                "configs": [
                    {"name": n, "config_operation": o, "value": v} for n, o, v in ops
                ],
            }
            return call(ApiKey.INCREMENTAL_ALTER_CONFIGS, 0, {"resources": [resource]})

        return [
            await alter(("retention.ms", 0, "42"), ("segment.ms", 1, None)),
            await alter(("cleanup.policy", 2, "delete")),
            await alter(("cleanup.policy", 3, "delete")),  # leaves it empty
            await alter(("retention.ms", 2, "1")),  # not a list config
            await alter(("retention.ms", 0, "1"), ("retention.ms", 1, None)),
            await alter(("retention.ms", 9, "1")),
        ]

    results = [r["responses"][0]["error_code"] for r in run(scenario())]
    assert results == [
        0,
        0,
        ErrorCode.INVALID_CONFIG,
        ErrorCode.INVALID_CONFIG,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.INVALID_REQUEST,
    ]
    assert reloaded(settings).topics["orders"].configs == {
        "retention.ms": "42",
        "cleanup.policy": "delete",
    }


# -- InitProducerId -------------------------------------------------------------


def test_init_producer_id_never_repeats_across_restarts(settings: Settings) -> None:
    async def allocate(service: ControlService, count: int) -> list[int]:
        call = Caller(service)
        ids = []
        for version in range(count):
            body = {"transactional_id": None, "transaction_timeout_ms": 60000}
            response = await call(ApiKey.INIT_PRODUCER_ID, version % 5, body)
            assert response["error_code"] == 0 and response["producer_epoch"] == 0
            ids.append(response["producer_id"])
        await service.close()
        return ids

    first = run(allocate(make_service(settings, FakeClock()), 5))
    second = run(allocate(make_service(settings, FakeClock()), 5))
    assert len(set(first + second)) == 10
    assert min(second) > max(first)


def test_init_producer_id_refuses_transactional_producers(settings: Settings) -> None:
    async def scenario() -> dict[str, Any]:
        call = Caller(make_service(settings, FakeClock()))
        body = {"transactional_id": "tx-1", "transaction_timeout_ms": 60000}
        return await call(ApiKey.INIT_PRODUCER_ID, 1, body)

    response = run(scenario())
    assert response["error_code"] == ErrorCode.INVALID_REQUEST
    assert response["producer_id"] == -1
