"""Kafka requests of the group coordinator: FindCoordinator, JoinGroup,
SyncGroup, Heartbeat, LeaveGroup, DescribeGroups, ListGroups, DeleteGroups,
OffsetCommit, OffsetFetch and OffsetDelete.

Each handler takes a decoded request (``net.kafka.codec`` dicts) and returns
the response body for the same version; the dispatcher in
``broker.control.service`` encodes it. Versions handled (a superset of what
net processes accept today, see ``net.kafka.versions``):

    FindCoordinator 0-4 (v4: batched coordinator_keys)   JoinGroup 0-9
    SyncGroup 0-5   Heartbeat 0-4   LeaveGroup 0-5 (v3+: batched members)
    DescribeGroups 0-5   ListGroups 0-5   DeleteGroups 0-2
    OffsetCommit 2-8   OffsetFetch 1-7   OffsetDelete 0

Group rules live in ``broker.control.groups``; these handlers translate and
wait: a JoinGroup or SyncGroup awaits the coordinator's reply callback, an
OffsetCommit (DeleteGroups, OffsetDelete) awaits the fsync of its offsets
log record.

Imported by the control process only; runs on its event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from broker.control.groups import (
    GroupCoordinator,
    GroupState,
    JoinRequest,
    JoinResult,
    SyncResult,
)
from broker.control.metadata import MetadataStore
from broker.control.offsets import (
    MAX_METADATA_BYTES,
    CommittedOffset,
    OffsetLogError,
    OffsetStore,
    TopicPartition,
)
from broker.logs import event
from broker.settings import Settings
from net.kafka.codec import RequestHeader
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey

logger = logging.getLogger(__name__)

Body = dict[str, Any]
Handler = Callable[[RequestHeader, Body], Awaitable[Body]]

# FindCoordinator key types.
KEY_TYPE_GROUP = 0
KEY_TYPE_TRANSACTION = 1

# ListGroups v5 group types: only the classic protocol exists here.
CLASSIC_GROUP_TYPE = "classic"


class Durability(Protocol):
    """Waits until the offsets log is fsynced through a sequence number."""

    async def wait_durable(self, sequence: int) -> None: ...


class GroupApi:
    """The group coordinator's request handlers (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        coordinator: GroupCoordinator,
        offsets: OffsetStore,
        durability: Durability,
        metadata: MetadataStore,
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.offsets = offsets
        self.durability = durability
        self.metadata = metadata

    def handlers(self) -> dict[int, tuple[int, int, Handler]]:
        """api key -> (lowest version, highest version, handler)."""
        return {
            ApiKey.FIND_COORDINATOR: (0, 4, self.find_coordinator),
            ApiKey.JOIN_GROUP: (0, 9, self.join_group),
            ApiKey.SYNC_GROUP: (0, 5, self.sync_group),
            ApiKey.HEARTBEAT: (0, 4, self.heartbeat),
            ApiKey.LEAVE_GROUP: (0, 5, self.leave_group),
            ApiKey.DESCRIBE_GROUPS: (0, 5, self.describe_groups),
            ApiKey.LIST_GROUPS: (0, 5, self.list_groups),
            ApiKey.DELETE_GROUPS: (0, 2, self.delete_groups),
            ApiKey.OFFSET_COMMIT: (2, 8, self.offset_commit),
            ApiKey.OFFSET_FETCH: (1, 7, self.offset_fetch),
            ApiKey.OFFSET_DELETE: (0, 0, self.offset_delete),
        }

    # -- coordinator lookup ---------------------------------------------------

    async def find_coordinator(self, header: RequestHeader, body: Body) -> Body:
        keys = body["coordinator_keys"] if header.api_version >= 4 else [body["key"]]
        key_type = body["key_type"]
        settings = self.settings
        coordinators = []
        for key in keys:
            if key_type == KEY_TYPE_GROUP:
                coordinators.append(
                    {
                        "key": key,
                        "node_id": settings.node_id,
                        "host": settings.advertised,
                        "port": settings.kafka_port,
                        "error_code": ErrorCode.NONE,
                        "error_message": None,
                    }
                )
                continue
            if key_type == KEY_TYPE_TRANSACTION:
                message = "transactions are not supported by this broker"
            else:
                message = f"unknown coordinator key type {key_type}"
            coordinators.append(
                {
                    "key": key,
                    "node_id": -1,
                    "host": "",
                    "port": -1,
                    "error_code": ErrorCode.INVALID_REQUEST,
                    "error_message": message,
                }
            )
        if header.api_version >= 4:
            return {"coordinators": coordinators}
        only = coordinators[0]
        return {
            "error_code": only["error_code"],
            "error_message": only["error_message"],
            "node_id": only["node_id"],
            "host": only["host"],
            "port": only["port"],
        }

    # -- membership -----------------------------------------------------------

    async def join_group(self, header: RequestHeader, body: Body) -> Body:
        version = header.api_version
        instance_id = body["group_instance_id"]
        request = JoinRequest(
            group_id=body["group_id"],
            member_id=body["member_id"],
            group_instance_id=instance_id,
            session_timeout_ms=body["session_timeout_ms"],
            # v0 has no rebalance timeout: the decoded default -1 makes the
            # coordinator use the session timeout.
            rebalance_timeout_ms=body["rebalance_timeout_ms"],
            protocol_type=body["protocol_type"],
            protocols=tuple(
                (p["name"], bytes(p["metadata"])) for p in body["protocols"]
            ),
            client_id=header.client_id,
            # LIMITATION: the forwarding envelope carries no client address;
            # DescribeGroups shows an empty client host.
            client_host="",
            require_known_member_id=version >= 4 and instance_id is None,
        )
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        self.coordinator.join(request, _resolver(future))
        result = await future
        return {
            "error_code": result.error,
            "generation_id": result.generation_id,
            "protocol_type": result.protocol_type,
            "protocol_name": _protocol_name(result.protocol_name, version, 7),
            "leader": result.leader_id,
            "member_id": result.member_id,
            "members": [
                {
                    "member_id": member.member_id,
                    "group_instance_id": member.group_instance_id,
                    "metadata": member.metadata,
                }
                for member in result.members
            ],
        }

    async def sync_group(self, header: RequestHeader, body: Body) -> Body:
        assignments = {
            a["member_id"]: bytes(a["assignment"]) for a in body["assignments"]
        }
        future: asyncio.Future[SyncResult] = asyncio.get_running_loop().create_future()
        self.coordinator.sync(
            body["group_id"],
            body["generation_id"],
            body["member_id"],
            body["group_instance_id"],
            assignments,
            _resolver(future),
            protocol_type=body["protocol_type"],
            protocol_name=body["protocol_name"],
        )
        result = await future
        return {
            "error_code": result.error,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name,
            "assignment": result.assignment,
        }

    async def heartbeat(self, header: RequestHeader, body: Body) -> Body:
        error = self.coordinator.heartbeat(
            body["group_id"],
            body["generation_id"],
            body["member_id"],
            body["group_instance_id"],
        )
        return {"error_code": error}

    async def leave_group(self, header: RequestHeader, body: Body) -> Body:
        if header.api_version >= 3:
            identities = [
                (m["member_id"], m["group_instance_id"]) for m in body["members"]
            ]
        else:
            identities = [(body["member_id"], None)]
        error, member_errors = self.coordinator.leave(body["group_id"], identities)
        if header.api_version < 3:
            # One member, one error: the group's, else the member's.
            if error is ErrorCode.NONE and member_errors:
                error = member_errors[0]
            return {"error_code": error}
        return {
            "error_code": error,
            "members": [
                {
                    "member_id": member_id,
                    "group_instance_id": instance_id,
                    "error_code": member_error,
                }
                for (member_id, instance_id), member_error in zip(
                    identities, member_errors, strict=False
                )
            ],
        }

    # -- listing --------------------------------------------------------------

    async def describe_groups(self, header: RequestHeader, body: Body) -> Body:
        described = []
        for group_id in body["groups"]:
            if not group_id:
                described.append(
                    {
                        "error_code": ErrorCode.INVALID_GROUP_ID,
                        "group_id": group_id,
                        "group_state": GroupState.DEAD.value,
                    }
                )
                continue
            description = self.coordinator.describe(group_id)
            if description is None:
                # A group known only by its committed offsets is Empty.
                known = self.offsets.has_group(group_id)
                state = GroupState.EMPTY if known else GroupState.DEAD
                described.append(
                    {
                        "error_code": ErrorCode.NONE,
                        "group_id": group_id,
                        "group_state": state.value,
                    }
                )
                continue
            described.append(
                {
                    "error_code": ErrorCode.NONE,
                    "group_id": group_id,
                    "group_state": description.state.value,
                    "protocol_type": description.protocol_type,
                    "protocol_data": description.protocol_name,
                    "members": [
                        {
                            "member_id": member.member_id,
                            "group_instance_id": member.group_instance_id,
                            "client_id": member.client_id,
                            "client_host": member.client_host,
                            "member_metadata": member.metadata,
                            "member_assignment": member.assignment,
                        }
                        for member in description.members
                    ],
                }
            )
        return {"groups": described}

    async def list_groups(self, header: RequestHeader, body: Body) -> Body:
        listed = {g.group_id: g for g in self.coordinator.list_groups()}
        rows = [(g.group_id, g.protocol_type, g.state) for g in listed.values()]
        rows += [
            (group_id, "", GroupState.EMPTY)
            for group_id in self.offsets.groups()
            if group_id not in listed
        ]

        # v4 filters by state (case-insensitive), v5 by type.
        states = {s.lower() for s in body["states_filter"]}
        types = {t.lower() for t in body["types_filter"]}
        if types and CLASSIC_GROUP_TYPE not in types:
            rows = []
        if states:
            rows = [row for row in rows if row[2].value.lower() in states]
        return {
            "error_code": ErrorCode.NONE,
            "groups": [
                {
                    "group_id": group_id,
                    "protocol_type": protocol_type,
                    "group_state": state.value,
                    "group_type": CLASSIC_GROUP_TYPE,
                }
                for group_id, protocol_type, state in rows
                if state is not GroupState.DEAD
            ],
        }

    async def delete_groups(self, header: RequestHeader, body: Body) -> Body:
        results = []
        sequence = 0
        for group_id in body["groups_names"]:
            if not group_id:
                results.append(
                    {"group_id": group_id, "error_code": ErrorCode.INVALID_GROUP_ID}
                )
                continue
            error = self.coordinator.delete(group_id)
            if error is ErrorCode.GROUP_ID_NOT_FOUND and self.offsets.has_group(
                group_id
            ):
                error = ErrorCode.NONE
            if error is ErrorCode.NONE:
                try:
                    sequence = self.offsets.delete_group(group_id)
                except OffsetLogError as exc:
                    _log_offsets_failure(exc, group_id)
                    error = ErrorCode.COORDINATOR_NOT_AVAILABLE
            results.append({"group_id": group_id, "error_code": error})
        if not await self._durable(sequence):
            for result in results:
                if result["error_code"] == ErrorCode.NONE:
                    result["error_code"] = ErrorCode.COORDINATOR_NOT_AVAILABLE
        return {"results": results}

    # -- offsets --------------------------------------------------------------

    async def offset_commit(self, header: RequestHeader, body: Body) -> Body:
        group_id = body["group_id"]
        error = self.coordinator.validate_commit(
            group_id,
            body["generation_id_or_member_epoch"],
            body["member_id"],
            body["group_instance_id"],
        )

        # Per-partition checks; what passes them is committed as one record.
        now_ms = int(time.time() * 1000)
        accepted: dict[TopicPartition, CommittedOffset] = {}
        responses = []
        for topic in body["topics"]:
            name = topic["name"]
            partitions = []
            for partition in topic["partitions"]:
                index = partition["partition_index"]
                code = error
                metadata = partition["committed_metadata"]
                if code is ErrorCode.NONE:
                    if self.metadata.partition_index(name, index) is None:
                        code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    elif metadata is not None and (
                        len(metadata.encode("utf-8")) > MAX_METADATA_BYTES
                    ):
                        code = ErrorCode.OFFSET_METADATA_TOO_LARGE
                    else:
                        accepted[name, index] = CommittedOffset(
                            partition["committed_offset"],
                            partition["committed_leader_epoch"],
                            metadata,
                            now_ms,
                        )
                partitions.append({"partition_index": index, "error_code": code})
            responses.append({"name": name, "partitions": partitions})

        stored = True
        try:
            stored = await self._durable(self.offsets.commit(group_id, accepted))
        except OffsetLogError as exc:
            _log_offsets_failure(exc, group_id)
            stored = False
        if not stored:
            for topic_response in responses:
                for partition_response in topic_response["partitions"]:
                    if (
                        topic_response["name"],
                        partition_response["partition_index"],
                    ) in (accepted):
                        partition_response["error_code"] = (
                            ErrorCode.COORDINATOR_NOT_AVAILABLE
                        )
        return {"topics": responses}

    async def offset_fetch(self, header: RequestHeader, body: Body) -> Body:
        group_id = body["group_id"]
        requested = body["topics"]
        if not group_id:
            error_body = {"error_code": ErrorCode.INVALID_GROUP_ID, "topics": []}
            if header.api_version < 2:
                # v1 has no group-level error: each partition carries it.
                error_body["topics"] = _fetch_topics(
                    requested or [], {}, ErrorCode.INVALID_GROUP_ID
                )
            return error_body

        if requested is None:
            # Null topics (v2+): every partition the group has committed.
            committed = self.offsets.fetch(group_id)
            by_topic: dict[str, list[int]] = {}
            for topic, partition in committed:
                by_topic.setdefault(topic, []).append(partition)
            requested = [
                {"name": topic, "partition_indexes": sorted(partitions)}
                for topic, partitions in sorted(by_topic.items())
            ]
        else:
            wanted = [(t["name"], p) for t in requested for p in t["partition_indexes"]]
            committed = self.offsets.fetch(group_id, wanted)
        return {
            "error_code": ErrorCode.NONE,
            "topics": _fetch_topics(requested, committed, ErrorCode.NONE),
        }

    async def offset_delete(self, header: RequestHeader, body: Body) -> Body:
        group_id = body["group_id"]
        if not group_id:
            return {"error_code": ErrorCode.INVALID_GROUP_ID}
        state = self.coordinator.state_of(group_id)
        if state is None and not self.offsets.has_group(group_id):
            return {"error_code": ErrorCode.GROUP_ID_NOT_FOUND}

        # A group with members may drop offsets only of topics it does not
        # consume, and only if it speaks the consumer protocol.
        subscribed: frozenset[str] | None = frozenset()
        if state not in (None, GroupState.EMPTY):
            if self.coordinator.protocol_type_of(group_id) != "consumer":
                return {"error_code": ErrorCode.NON_EMPTY_GROUP}
            subscribed = self.coordinator.subscribed_topics(group_id)

        deletable: list[TopicPartition] = []
        topics = []
        for topic in body["topics"]:
            name = topic["name"]
            partitions = []
            for partition in topic["partitions"]:
                index = partition["partition_index"]
                if self.metadata.partition_index(name, index) is None:
                    code = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                elif subscribed is None or name in subscribed:
                    code = ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
                else:
                    code = ErrorCode.NONE
                    deletable.append((name, index))
                partitions.append({"partition_index": index, "error_code": code})
            topics.append({"name": name, "partitions": partitions})

        try:
            stored = await self._durable(
                self.offsets.delete_offsets(group_id, deletable)
            )
        except OffsetLogError as exc:
            _log_offsets_failure(exc, group_id)
            stored = False
        if not stored:
            return {"error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE}
        return {"error_code": ErrorCode.NONE, "topics": topics}

    async def _durable(self, sequence: int) -> bool:
        """Wait for the fsync covering ``sequence``; False if it failed."""
        try:
            await self.durability.wait_durable(sequence)
        except OffsetLogError as exc:
            _log_offsets_failure(exc, "")
            return False
        return True


def _fetch_topics(
    requested: list[Body],
    committed: dict[TopicPartition, CommittedOffset],
    error: ErrorCode,
) -> list[Body]:
    topics = []
    for topic in requested:
        name = topic["name"]
        partitions = []
        for index in topic["partition_indexes"]:
            found = committed.get((name, index))
            partitions.append(
                {
                    "partition_index": index,
                    # -1 with NONE: nothing committed (not an error).
                    "committed_offset": -1 if found is None else found.offset,
                    "committed_leader_epoch": -1
                    if found is None
                    else found.leader_epoch,
                    "metadata": "" if found is None else found.metadata,
                    "error_code": error,
                }
            )
        topics.append({"name": name, "partitions": partitions})
    return topics


def _protocol_name(name: str | None, version: int, nullable_from: int) -> str | None:
    if name is None and version < nullable_from:
        return ""
    return name


def _resolver(future: asyncio.Future[Any]) -> Callable[[Any], None]:
    """A reply callback that completes ``future`` once (the request may
    have been cancelled meanwhile)."""

    def resolve(result: Any) -> None:
        if not future.done():
            future.set_result(result)

    return resolve


def _log_offsets_failure(exc: OffsetLogError, group_id: str) -> None:
    event(
        logger,
        logging.ERROR,
        "offsets.change_failed",
        group=group_id,
        path=exc.path,
        error=str(exc),
    )
