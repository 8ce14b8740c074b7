"""Consumer groups as the metrics process sees them: asked of the control
process once a second, joined with high watermarks to give lag.

The control process owns groups and committed offsets; the metrics process
holds no copy of that state, it asks with Kafka requests through
``broker.control.client.ControlClient`` (ListGroups, DescribeGroups,
OffsetFetch) and keeps the last answer as an immutable ``GroupsSnapshot``.
Lag of a group on a partition is the partition's high watermark (read from
the partition state table at the same moment the lag is read) minus the
group's committed offset, never below 0; a partition the group has not
committed has no lag entry (Kafka's tools show "-" there).

When the control process does not answer (restarting, overloaded), the
previous snapshot stays, marked with the error, so /metrics and the UI keep
the last known groups rather than reporting them gone.

Imported by the metrics process. ``GroupMonitor.refresh`` runs on its
event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.control.client import ControlUnavailableError
from broker.control.forwarding import ForwardingError
from broker.layout import REQUEST_APIS
from broker.logs import event
from metrics.reader import PartitionState

logger = logging.getLogger(__name__)

API_KEYS = {name: key for key, name in REQUEST_APIS.items()}
DESCRIBE_GROUPS_VERSION = 4  # the control process answers 0..5

# One DescribeGroups request names at most this many groups (a guess that
# keeps a response well under a megabyte with typical member counts).
DESCRIBE_CHUNK = 100

# LIMITATION: only the first MAX_GROUPS groups (by id) are described and
# get lag; the rest are counted in ``GroupsSnapshot.listed`` only. The bound
# keeps one refresh (one OffsetFetch per group) within a second.
MAX_GROUPS = 1000

# A refresh that takes longer is abandoned and counted as a failure.
REFRESH_TIMEOUT_S = 5.0


class GroupClient(Protocol):
    """The calls the monitor makes (``ControlClient`` provides them)."""

    async def list_groups(self) -> list[tuple[str, str, str]]: ...

    async def committed_offsets(self, group_id: str) -> dict[tuple[str, int], int]: ...

    async def request(
        self, api_key: int, api_version: int, body: dict[str, Any]
    ) -> Any: ...


# LIMITATION: members' assignments are not decoded (the consumer protocol
# decoder is in net.kafka.codec, which the metrics process does not
# import); members are listed without the partitions they own.
@dataclass(frozen=True)
class GroupMember:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str


@dataclass(frozen=True)
class GroupInfo:
    """One group as the control process described it."""

    group_id: str
    protocol_type: str
    state: str
    protocol: str
    members: tuple[GroupMember, ...]
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupsSnapshot:
    """The last answer from the control process."""

    groups: tuple[GroupInfo, ...] = ()
    listed: int = 0  # groups the control process knows (may exceed MAX_GROUPS)
    refreshed_unix_ms: int = 0  # when the groups were last read (0: never)
    error: str | None = None  # why the last refresh failed, if it did


@dataclass(frozen=True)
class PartitionLag:
    """One group's position on one partition."""

    group_id: str
    topic: str
    partition: int
    committed_offset: int
    high_watermark: int

    @property
    def lag(self) -> int:
        return max(0, self.high_watermark - self.committed_offset)


class GroupMonitor:
    """Keeps a ``GroupsSnapshot`` fresh (see module docstring)."""

    def __init__(
        self,
        client: GroupClient,
        timeout_s: float = REFRESH_TIMEOUT_S,
        max_groups: int = MAX_GROUPS,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.max_groups = max_groups
        self.snapshot = GroupsSnapshot()
        self.failures = 0

    async def refresh(self) -> GroupsSnapshot:
        """Ask the control process for every group; keep and return the
        new snapshot, or the previous one marked with the error."""
        try:
            async with asyncio.timeout(self.timeout_s):
                groups, listed = await self._read()
        except (
            ControlUnavailableError,
            ForwardingError,
            ValueError,
            KeyError,
            TypeError,
            TimeoutError,
            OSError,
        ) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.failures += 1
            if self.snapshot.error is None:
                # Logged once per outage, not once a second.
                event(
                    logger,
                    logging.WARNING,
                    "metrics.groups_unavailable",
                    error=reason,
                    action="keeping the last known groups",
                )
            previous = self.snapshot
            self.snapshot = GroupsSnapshot(
                previous.groups, previous.listed, previous.refreshed_unix_ms, reason
            )
            return self.snapshot

        if self.snapshot.error is not None:
            event(logger, logging.INFO, "metrics.groups_available", groups=listed)
        self.snapshot = GroupsSnapshot(
            groups=tuple(groups),
            listed=listed,
            refreshed_unix_ms=int(time.time() * 1000),
        )
        return self.snapshot

    async def _read(self) -> tuple[list[GroupInfo], int]:
        listed = sorted(await self.client.list_groups())
        kept = listed[: self.max_groups]
        ids = [group_id for group_id, _, _ in kept]

        described: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), DESCRIBE_CHUNK):
            chunk = ids[start : start + DESCRIBE_CHUNK]
            body = await self.client.request(
                API_KEYS["describe_groups"],
                DESCRIBE_GROUPS_VERSION,
                {"groups": chunk, "include_authorized_operations": False},
            )
            for entry in body["groups"]:
                described[entry["group_id"]] = entry
        offsets = await asyncio.gather(
            *(self.client.committed_offsets(group_id) for group_id in ids)
        )

        groups = []
        for (group_id, protocol_type, state), committed in zip(
            kept, offsets, strict=True
        ):
            entry = described.get(group_id, {})
            if entry.get("error_code", 0) != 0:
                entry = {}
            members = tuple(
                GroupMember(
                    member_id=member["member_id"],
                    group_instance_id=member.get("group_instance_id"),
                    client_id=member["client_id"],
                    client_host=member["client_host"],
                )
                for member in entry.get("members") or ()
            )
            groups.append(
                GroupInfo(
                    group_id=group_id,
                    protocol_type=entry.get("protocol_type") or protocol_type,
                    state=entry.get("group_state") or state,
                    protocol=entry.get("protocol_data") or "",
                    members=members,
                    committed=dict(committed),
                )
            )
        return groups, len(listed)


def partition_lags(
    groups: Iterable[GroupInfo], partitions: Iterable[PartitionState]
) -> list[PartitionLag]:
    """Every (group, partition) with a committed offset on an existing
    partition, sorted by group, topic, partition."""
    high_watermarks = {
        (state.topic, state.partition): state.high_watermark for state in partitions
    }
    lags = []
    for group in groups:
        for (topic, partition), committed in group.committed.items():
            high_watermark = high_watermarks.get((topic, partition))
            if high_watermark is None:
                continue
            row = PartitionLag(
                group.group_id, topic, partition, committed, high_watermark
            )
            lags.append(row)
    lags.sort(key=lambda row: (row.group_id, row.topic, row.partition))
    return lags
