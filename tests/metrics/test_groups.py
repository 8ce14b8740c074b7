"""Consumer groups from the control process, and lag against high watermarks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from broker.control.client import ControlUnavailableError
from metrics.groups import API_KEYS, GroupMonitor, partition_lags
from metrics.reader import PartitionState


class FakeControl:
    """Answers like the control process (decoded bodies), or fails."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.offsets: dict[str, dict[tuple[str, int], int]] = {}
        self.failure: Exception | None = None
        self.requests: list[tuple[int, int, dict[str, Any]]] = []

    async def list_groups(self) -> list[tuple[str, str, str]]:
        if self.failure is not None:
            raise self.failure
        return [
            (g, d["protocol_type"], d["group_state"]) for g, d in self.groups.items()
        ]

    async def committed_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        return dict(self.offsets.get(group_id, {}))

    async def request(
        self, api_key: int, api_version: int, body: dict[str, Any]
    ) -> Any:
        self.requests.append((api_key, api_version, body))
        return {
            "groups": [
                {"error_code": 0, "group_id": g, **self.groups[g]}
                for g in body["groups"]
            ]
        }


def described(state: str, members: int) -> dict[str, Any]:
    return {
        "group_state": state,
        "protocol_type": "consumer",
        "protocol_data": "range",
        "members": [
            {
                "member_id": f"m{i}",
                "group_instance_id": None,
                "client_id": f"c{i}",
                "client_host": "/127.0.0.1",
                "member_metadata": b"",
                "member_assignment": b"",
            }
            for i in range(members)
        ],
    }


def partition(topic: str, index: int, high_watermark: int) -> PartitionState:
    return PartitionState(
        topic, index, index, 0, high_watermark, high_watermark, 0, "online"
    )


def test_group_monitor_reads_groups_members_and_offsets() -> None:
    control = FakeControl()
    control.groups = {"b": described("Stable", 2), "a": described("Empty", 0)}
    control.offsets = {"b": {("orders", 0): 7}}
    monitor = GroupMonitor(control)

    snapshot = asyncio.run(monitor.refresh())

    assert snapshot.error is None
    assert snapshot.listed == 2
    assert [g.group_id for g in snapshot.groups] == ["a", "b"]
    stable = snapshot.groups[1]
    assert stable.state == "Stable"
    assert stable.protocol == "range"
    assert [m.client_id for m in stable.members] == ["c0", "c1"]
    assert stable.committed == {("orders", 0): 7}
    api_key, version, body = control.requests[0]
    assert (api_key, version) == (API_KEYS["describe_groups"], 4)
    assert body["groups"] == ["a", "b"]


def test_group_monitor_keeps_the_last_groups_when_control_is_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    control = FakeControl()
    control.groups = {"a": described("Stable", 1)}
    monitor = GroupMonitor(control)
    first = asyncio.run(monitor.refresh())

    control.failure = ControlUnavailableError("control restarting")
    with caplog.at_level(logging.WARNING):
        second = asyncio.run(monitor.refresh())
        third = asyncio.run(monitor.refresh())

    assert second.groups == first.groups
    assert second.refreshed_unix_ms == first.refreshed_unix_ms
    assert second.error is not None and "control restarting" in second.error
    assert third.error == second.error
    assert monitor.failures == 2
    # One warning per outage, not one per refresh.
    warnings = [
        r for r in caplog.records if r.getMessage() == "metrics.groups_unavailable"
    ]
    assert len(warnings) == 1

    control.failure = None
    assert asyncio.run(monitor.refresh()).error is None


def test_group_monitor_gives_up_when_control_does_not_answer_in_time() -> None:
    class Silent(FakeControl):
        async def list_groups(self) -> list[tuple[str, str, str]]:
            await asyncio.sleep(10)
            return []

    monitor = GroupMonitor(Silent(), timeout_s=0.05)

    snapshot = asyncio.run(monitor.refresh())

    assert snapshot.error == "TimeoutError"
    assert snapshot.groups == ()


def test_group_monitor_describes_at_most_max_groups() -> None:
    control = FakeControl()
    control.groups = {f"g{i:03d}": described("Empty", 0) for i in range(250)}
    monitor = GroupMonitor(control, max_groups=120)

    snapshot = asyncio.run(monitor.refresh())

    assert snapshot.listed == 250
    assert len(snapshot.groups) == 120
    assert [len(body["groups"]) for _, _, body in control.requests] == [100, 20]


def test_partition_lags_subtract_committed_from_high_watermark() -> None:
    control = FakeControl()
    control.groups = {"g": described("Stable", 1)}
    control.offsets = {"g": {("t", 0): 40, ("t", 1): 90, ("deleted", 0): 3}}
    snapshot = asyncio.run(GroupMonitor(control).refresh())

    lags = partition_lags(
        snapshot.groups, [partition("t", 0, 100), partition("t", 1, 80)]
    )

    assert [(row.topic, row.partition, row.lag) for row in lags] == [
        ("t", 0, 60),
        # Committed past the high watermark (truncated log): no negative lag.
        ("t", 1, 0),
    ]
