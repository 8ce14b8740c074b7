"""What the metrics process reads: counters, tables and rings in shared
memory, topic metadata on disk, and per-process figures from psutil.

Everything here only reads. Counters are summed over the process slots
(``shm.counters``: each slot is written by its owner alone); the process
table (written by the supervisor) and the partition state table (written by
the writer) are read row by row through their seqlocks; rings are read
through their control arrays (``shm.ring.Ring.statistics``), never their
sides. Topic names come from the control process's metadata document
(``broker.control.metadata``), reloaded when its version changes.

Imported by the metrics process. Not thread-safe (one event loop thread).
Values read from different regions are not one atomic snapshot: a counter
and a partition's high watermark may be a few microseconds apart.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil

from broker.control.metadata import MetadataStore, Topic
from broker.layout import HEARTBEAT, ROLE_CODES, SUPERVISOR_SLOT, BrokerMemory
from broker.logs import event
from shm.counters import HISTOGRAM_COUNT, HISTOGRAM_FIRST_BUCKET, HISTOGRAM_SUM
from shm.ring import Ring
from shm.table import TornRowError

logger = logging.getLogger(__name__)

ROLE_NAMES = {code: role for role, code in ROLE_CODES.items()}
PARTITION_STATES = {0: "unused", 1: "online", 2: "offline"}


@dataclass(frozen=True)
class ProcessFigures:
    """What psutil says about one pid (None: not running or not visible)."""

    cpu_seconds: float
    resident_bytes: int
    threads: int
    started_unix_s: float


class ProcessProbe:
    """psutil handles by pid, kept between reads so CPU times are cheap."""

    def __init__(self) -> None:
        self._handles: dict[int, psutil.Process] = {}

    def figures(self, pid: int) -> ProcessFigures | None:
        if pid <= 0:
            return None
        handle = self._handles.get(pid)
        try:
            # is_running() also checks the start time, so a reused pid is
            # not mistaken for the process that had it before.
            if handle is None or not handle.is_running():
                handle = self._handles[pid] = psutil.Process(pid)
            with handle.oneshot():
                times = handle.cpu_times()
                memory = handle.memory_info()
                threads = handle.num_threads()
                started = handle.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._handles.pop(pid, None)
            return None
        return ProcessFigures(
            cpu_seconds=float(times.user + times.system),
            resident_bytes=int(memory.rss),
            threads=int(threads),
            started_unix_s=float(started),
        )

    def forget_except(self, pids: set[int]) -> None:
        """Drop handles of pids no longer in the process table."""
        for pid in set(self._handles) - pids:
            del self._handles[pid]


@dataclass(frozen=True)
class ProcessState:
    """One process slot: the supervisor's row, psutil's figures, the
    heartbeat age from the counters."""

    slot: int
    name: str
    role: str
    pid: int
    started_unix_ms: int
    restarts: int
    running: bool
    cpu_seconds: float | None
    resident_bytes: int | None
    threads: int | None
    heartbeat_age_s: float | None


@dataclass(frozen=True)
class PartitionState:
    """One partition's row of the partition state table, with its name."""

    topic: str
    partition: int
    index: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    state: str


@dataclass(frozen=True)
class RingState:
    """Fill level of one ring, from its control array."""

    name: str  # produce-0, complete-0, ...
    kind: str  # produce | complete
    process: str  # the net process on the ring's other side
    used_descriptors: int
    capacity_descriptors: int
    used_bytes: int
    capacity_bytes: int
    sender_refusals: int

    @property
    def fill_ratio(self) -> float:
        """The fuller of descriptors and bytes, 0..1."""
        fill = self.used_descriptors / self.capacity_descriptors
        if self.capacity_bytes:
            fill = max(fill, self.used_bytes / self.capacity_bytes)
        return min(fill, 1.0)


@dataclass(frozen=True)
class HistogramState:
    """One histogram summed over all slots: bucket counts (log-linear, see
    ``shm.counters``), the sum of observed values, and their count."""

    buckets: npt.NDArray[np.int64]
    total: int
    count: int


class MetadataView:
    """Topic metadata, reloaded when the control process writes a new version."""

    def __init__(self, data_dir: Path, max_partitions: int) -> None:
        self._data_dir = data_dir
        self._max_partitions = max_partitions
        self.store = MetadataStore(data_dir, max_partitions)
        self._failed_version: int | None = None

    def topics(self) -> dict[str, Topic]:
        stored = self.store.stored_version()
        if stored != self.store.version and stored != self._failed_version:
            fresh = MetadataStore(self._data_dir, self._max_partitions)
            try:
                fresh.load()
            except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
                # Keep serving the last good metadata; retry at the next version.
                self._failed_version = stored
                event(
                    logger,
                    logging.WARNING,
                    "metrics.metadata_unreadable",
                    path=fresh.path,
                    version=stored,
                    error=exc,
                )
            else:
                self.store = fresh
        return self.store.topics


class BrokerReader:
    """Reads one broker's shared memory and metadata (see module docstring)."""

    def __init__(
        self,
        memory: BrokerMemory,
        metadata: MetadataView,
        supervisor_pid: int,
        probe: ProcessProbe | None = None,
    ) -> None:
        self.memory = memory
        self.counters = memory.counters
        self.metadata = metadata
        self.supervisor_pid = supervisor_pid
        self.probe = probe or ProcessProbe()
        self._heartbeat = self.counters.counter_id(HEARTBEAT)

    # -- counters -----------------------------------------------------------

    def counter_totals(self) -> dict[str, int]:
        """Every counter column summed over the slots (for ``*_gauge``
        columns the sum of the per-process levels)."""
        return self.counters.totals()

    def counter_rows(self) -> npt.NDArray[np.int64]:
        """A copy of every slot's counters, [slot, counter]."""
        return self.counters.per_slot()

    def histogram(self, name: str) -> HistogramState:
        column = self.counters.histogram_id(name)
        rows = self.counters.histograms[:, column, :].sum(axis=0)
        return HistogramState(
            buckets=rows[HISTOGRAM_FIRST_BUCKET:].copy(),
            total=int(rows[HISTOGRAM_SUM]),
            count=int(rows[HISTOGRAM_COUNT]),
        )

    # -- processes ----------------------------------------------------------

    def processes(self) -> list[ProcessState]:
        """Every slot that has had a process, in slot order."""
        table = self.memory.processes
        beats = self.counters.counters[:, self._heartbeat].tolist()
        now_ns = time.monotonic_ns()
        states = []
        for slot in range(table.rows):
            try:
                pid, role, role_index, started_ms, restarts = table.read_row(slot)
            except TornRowError:
                continue
            if slot == SUPERVISOR_SLOT and not pid:
                # The supervisor does not register itself; it is our parent.
                pid, role, role_index = self.supervisor_pid, ROLE_CODES["supervisor"], 0
            if not pid:
                continue
            role_name = ROLE_NAMES.get(int(role), "unknown")
            name = f"net-{role_index}" if role_name == "net" else role_name
            figures = self.probe.figures(int(pid))
            if slot == SUPERVISOR_SLOT and not started_ms and figures is not None:
                started_ms = int(figures.started_unix_s * 1000)
            beat = int(beats[slot]) if slot < len(beats) else 0
            heartbeat_age = (now_ns - beat) / 1e9 if beat and slot else None
            states.append(
                ProcessState(
                    slot=slot,
                    name=name,
                    role=role_name,
                    pid=int(pid),
                    started_unix_ms=int(started_ms),
                    restarts=int(restarts),
                    running=figures is not None,
                    cpu_seconds=figures.cpu_seconds if figures else None,
                    resident_bytes=figures.resident_bytes if figures else None,
                    threads=figures.threads if figures else None,
                    heartbeat_age_s=heartbeat_age,
                )
            )
        self.probe.forget_except({state.pid for state in states})
        return states

    # -- topics and partitions ----------------------------------------------

    def topics(self) -> dict[str, Topic]:
        return self.metadata.topics()

    def partitions(self) -> list[PartitionState]:
        """Every partition of every topic, by topic name then partition."""
        topics = self.metadata.topics()
        names = [
            (topic.name, partition, index)
            for topic in sorted(topics.values(), key=lambda t: t.name)
            for partition, index in enumerate(topic.partitions)
        ]
        table = self.memory.partitions
        names = [entry for entry in names if 0 <= entry[2] < table.rows]
        if not names:
            return []
        try:
            rows = table.read_rows([index for _, _, index in names])
        except TornRowError:
            # A writer killed mid-row leaves that row unreadable until the
            # restarted writer rewrites it; show the other partitions.
            readable = []
            for entry in names:
                try:
                    table.read_row(entry[2])
                except TornRowError:
                    continue
                readable.append(entry)
            names = readable
            rows = table.read_rows([index for _, _, index in names])
        columns = {field: rows[field].tolist() for field in table.field_names}
        return [
            PartitionState(
                topic=topic,
                partition=partition,
                index=index,
                log_start_offset=columns["log_start_offset"][i],
                log_end_offset=columns["log_end_offset"][i],
                high_watermark=columns["high_watermark"][i],
                size_bytes=columns["size_bytes"][i],
                state=PARTITION_STATES.get(columns["state"][i], "unknown"),
            )
            for i, (topic, partition, index) in enumerate(names)
        ]

    # -- rings ----------------------------------------------------------------

    def rings(self) -> list[RingState]:
        """Every produce ring, then every completion ring."""
        states = []
        for kind, rings in (
            ("produce", self.memory.produce_rings),
            ("complete", self.memory.completion_rings),
        ):
            for index, ring in enumerate(rings):
                states.append(_ring_state(ring, kind, index))
        return states


def _ring_state(ring: Ring, kind: str, index: int) -> RingState:
    statistics = ring.statistics()
    return RingState(
        name=f"{kind}-{index}",
        kind=kind,
        process=f"net-{index}",
        used_descriptors=max(0, statistics.descriptors_used),
        capacity_descriptors=statistics.capacity,
        used_bytes=max(0, statistics.bytes_used),
        capacity_bytes=statistics.data_bytes,
        sender_refusals=statistics.sender_refusals,
    )


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: NaN and infinities become None."""
    if value is None or not math.isfinite(value):
        return None
    return value
