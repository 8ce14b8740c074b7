"""A broker's shared memory and metadata made in the test process, for the
metrics process's pure parts: the test plays supervisor, writer, net
processes and control process by writing their regions directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.control.metadata import MetadataStore
from broker.layout import FIRST_NET_SLOT, BrokerMemory, slot_count
from broker.settings import Settings
from metrics.groups import GroupInfo, GroupMember, GroupsSnapshot
from metrics.reader import BrokerReader, MetadataView, ProcessFigures, ProcessProbe
from shm.table import TableWriter

NET_PROCS = 2
MAX_PARTITIONS = 16


class FixedProbe(ProcessProbe):
    """psutil stand-in: figures the test sets per pid."""

    def __init__(self) -> None:
        super().__init__()
        self.by_pid: dict[int, ProcessFigures] = {}

    def set(self, pid: int, cpu_seconds: float, resident_bytes: int) -> None:
        self.by_pid[pid] = ProcessFigures(
            cpu_seconds, resident_bytes, 1, 1_700_000_000.0
        )

    def figures(self, pid: int) -> ProcessFigures | None:
        return self.by_pid.get(pid)


class FakeBroker:
    """Shared memory and a metadata document, as a running broker has them."""

    def __init__(
        self, data_dir: Path, prefix: str, max_partitions: int = MAX_PARTITIONS
    ) -> None:
        self.settings = Settings(
            data_dir=data_dir,
            net_procs=NET_PROCS,
            ring_bytes=1 << 20,
            max_partitions=max_partitions,
        )
        self.memory = BrokerMemory.create(
            self.settings, prefix, slot_count(self.settings)
        )
        self.metadata = MetadataStore(data_dir, max_partitions)
        self.probe = FixedProbe()
        self.supervisor_pid = 1000
        self.reader = BrokerReader(
            self.memory,
            MetadataView(data_dir, max_partitions),
            self.supervisor_pid,
            self.probe,
        )
        self.groups = GroupsSnapshot()
        self._partitions: TableWriter | None = None

    # -- playing the other processes ------------------------------------------

    def start_processes(self) -> dict[str, int]:
        """Register writer, control, metrics and net processes (fake pids)
        with psutil figures; returns pid by process name."""
        pids = {"supervisor": self.supervisor_pid}
        self.probe.set(self.supervisor_pid, 1.0, 10 << 20)
        roles = [("writer", 0, 1), ("control", 0, 2), ("metrics", 0, 3)]
        roles += [("net", i, FIRST_NET_SLOT + i) for i in range(NET_PROCS)]
        for role, index, slot in roles:
            pid = 2000 + slot
            self.memory.register_process(slot, role, index, pid)
            name = f"net-{index}" if role == "net" else role
            pids[name] = pid
            self.probe.set(pid, 0.5 * slot, (20 + slot) << 20)
        return pids

    def add(self, slot: int, counter: str, amount: int) -> None:
        counters = self.memory.counters
        counters.slot(slot).add(counters.counter_id(counter), amount)

    def set_gauge(self, slot: int, counter: str, value: int) -> None:
        counters = self.memory.counters
        counters.counters[slot, counters.counter_id(counter)] = value

    def observe(self, slot: int, histogram: str, values: list[int]) -> None:
        counters = self.memory.counters
        counters.slot(slot).observe_many(counters.histogram_id(histogram), values)

    def create_topic(self, name: str, partitions: int) -> list[int]:
        return self.metadata.create_topic(name, partitions).partitions

    def set_partition(self, index: int, **fields: Any) -> None:
        if self._partitions is None:
            self._partitions = self.memory.partitions.writer()
        values = {"state": 1, **fields}
        self._partitions.update(index, **values)

    def set_group(
        self,
        group_id: str,
        committed: dict[tuple[str, int], int],
        state: str = "Stable",
        members: int = 1,
    ) -> None:
        group = GroupInfo(
            group_id=group_id,
            protocol_type="consumer",
            state=state,
            protocol="range",
            members=tuple(
                GroupMember(f"member-{i}", None, f"client-{i}", "/127.0.0.1")
                for i in range(members)
            ),
            committed=committed,
        )
        others = tuple(g for g in self.groups.groups if g.group_id != group_id)
        self.groups = GroupsSnapshot(
            groups=(*others, group),
            listed=len(others) + 1,
            refreshed_unix_ms=1_700_000_000_000,
        )

    def group_snapshot(self) -> GroupsSnapshot:
        return self.groups

    def close(self) -> None:
        if self._partitions is not None:
            self._partitions.close()
        self.memory.close()
        self.memory.unlink()
