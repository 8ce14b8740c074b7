"""The JSON documents of the REST API (``/api/v1/...``) and of the live
stream, built from what the metrics process reads.

Each builder returns plain dicts and lists (JSON-ready; NaN never appears,
unknown values are null). REST documents read shared memory at request
time; the stream's document is built from the last sample, once per
sample, whatever the number of listeners. metrics/API.md documents every
field.

Imported by the metrics process; runs on its event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from broker.control.metadata import Topic
from broker.settings import Settings
from metrics.groups import GroupInfo, GroupsSnapshot, PartitionLag, partition_lags
from metrics.prometheus import broker_version
from metrics.reader import BrokerReader, PartitionState, ProcessState, finite_or_none
from metrics.sampler import HISTORY_SECONDS, Sampler
from metrics.timeseries import to_json
from shm.counters import percentile_of

Document = dict[str, Any]

# Totals shown in the broker document and the UI header.
BROKER_TOTALS = (
    "produce_records",
    "produce_bytes",
    "produce_batches",
    "fetch_records",
    "fetch_bytes",
    "requests",
    "request_errors",
    "connections_accepted",
    "ring_full_stalls",
    "writer_turns",
    "writer_batches",
    "writer_bytes",
    "writer_writev_calls",
    "writer_fsyncs",
    "group_rebalances",
)

# The stream carries at most this many topics and groups (largest first),
# so one event stays small on a broker with thousands of them.
STREAM_ROWS = 200


class BadRequestError(ValueError):
    """A query parameter is invalid; the message says which and why."""


def parse_seconds(text: str | None) -> int:
    """The ``seconds`` query parameter of /api/v1/timeseries: 1..900,
    default 300."""
    if text is None or text == "":
        return 300
    try:
        seconds = int(text)
    except ValueError:
        raise BadRequestError(
            f"seconds={text!r} is not a whole number; use 1..{HISTORY_SECONDS}"
        ) from None
    if not 1 <= seconds <= HISTORY_SECONDS:
        raise BadRequestError(
            f"seconds={seconds} is outside 1..{HISTORY_SECONDS}"
            f" (the metrics process keeps {HISTORY_SECONDS} s of history)"
        )
    return seconds


class MetricsApi:
    """Builds every JSON document (see module docstring)."""

    def __init__(
        self,
        reader: BrokerReader,
        sampler: Sampler,
        groups: Callable[[], GroupsSnapshot],
        settings: Settings,
    ) -> None:
        self.reader = reader
        self.sampler = sampler
        self.groups = groups
        self.settings = settings
        self.version = broker_version()

    # -- /api/v1/broker ---------------------------------------------------------

    def broker(self) -> Document:
        reader = self.reader
        totals = reader.counter_totals()
        processes = reader.processes()
        partitions = reader.partitions()
        snapshot = self.groups()
        latency = reader.histogram("request_latency_us").buckets
        return self._broker(totals, processes, partitions, snapshot, latency)

    def _broker(
        self,
        totals: dict[str, int],
        processes: list[ProcessState],
        partitions: list[PartitionState],
        snapshot: GroupsSnapshot,
        latency: npt.NDArray[np.int64],
    ) -> Document:
        supervisor = next((p for p in processes if p.role == "supervisor"), None)
        started_ms = supervisor.started_unix_ms if supervisor else 0
        uptime_s = round(time.time() - started_ms / 1000, 3) if started_ms else None
        settings = self.settings

        def ms(percent: float) -> float | None:
            value = percentile_of(latency, percent)
            return None if value is None else value / 1000

        return {
            "version": self.version,
            "node_id": settings.node_id,
            "host": settings.host,
            "advertised_host": settings.advertised,
            "kafka_port": settings.kafka_port,
            "http_port": settings.http_port,
            "data_dir": str(settings.data_dir),
            "net_procs": settings.net_procs,
            "started_unix_ms": started_ms,
            "uptime_s": uptime_s,
            "topics": len({p.topic for p in partitions}),
            "partitions": len(partitions),
            "offline_partitions": sum(1 for p in partitions if p.state == "offline"),
            "size_bytes": sum(p.size_bytes for p in partitions),
            "consumer_groups": snapshot.listed,
            "connections_active": totals["connections_active_gauge"],
            "parked_fetches": totals["parked_fetches_gauge"],
            "processes_running": sum(1 for p in processes if p.running),
            "totals": {name: totals[name] for name in BROKER_TOTALS},
            "request_latency_ms": {
                "p50": ms(50),
                "p99": ms(99),
                "p999": ms(99.9),
                "count": int(latency.sum()),
            },
            "rates": self._rates(),
            "settings": settings.model_dump(mode="json"),
        }

    def _rates(self) -> Document:
        latest = self.sampler.series.latest()
        if latest is None:
            return {}
        return {
            name: value
            for name, value in latest.items()
            if name != "time" and not isinstance(value, dict)
        }

    # -- /api/v1/processes --------------------------------------------------------

    def processes(self) -> Document:
        return {"processes": self._processes(self.reader.processes(), True)}

    def _processes(
        self, processes: list[ProcessState], with_counters: bool
    ) -> list[Document]:
        latest = self.sampler.series.latest() or {}
        cpu = latest.get("cpu_percent") or {}
        rows = self.reader.counter_rows() if with_counters else None
        names = self.reader.counters.counter_names
        now = time.time()
        documents = []
        for process in processes:
            document: Document = {
                "slot": process.slot,
                "name": process.name,
                "role": process.role,
                "pid": process.pid,
                "running": process.running,
                "started_unix_ms": process.started_unix_ms,
                "uptime_s": (
                    round(now - process.started_unix_ms / 1000, 3)
                    if process.started_unix_ms
                    else None
                ),
                "restarts": process.restarts,
                "cpu_seconds": process.cpu_seconds,
                "cpu_percent": cpu.get(process.name) if isinstance(cpu, dict) else None,
                "resident_bytes": process.resident_bytes,
                "threads": process.threads,
                "heartbeat_age_s": finite_or_none(
                    round(process.heartbeat_age_s, 3)
                    if process.heartbeat_age_s is not None
                    else None
                ),
            }
            if rows is not None:
                row = rows[process.slot].tolist()
                document["counters"] = {
                    name: value
                    for name, value in zip(names, row, strict=True)
                    if value and name != "heartbeat_monotonic_ns_gauge"
                }
            documents.append(document)
        return documents

    # -- /api/v1/topics -----------------------------------------------------------

    def topics(self) -> Document:
        topics = self.reader.topics()
        by_topic = _by_topic(self.reader.partitions())
        return {
            "topics": [
                self._topic(t, by_topic.get(t.name, []), True) for t in _sorted(topics)
            ]
        }

    def topic(self, name: str) -> Document | None:
        topic = self.reader.topics().get(name)
        if topic is None:
            return None
        by_topic = _by_topic(self.reader.partitions())
        return self._topic(topic, by_topic.get(name, []), True)

    def _topic(self, topic: Topic, own: list[PartitionState], detail: bool) -> Document:
        # own: this topic's partitions.
        document: Document = {
            "name": topic.name,
            "topic_id": topic.topic_id,
            "partition_count": len(topic.partitions),
            "size_bytes": sum(p.size_bytes for p in own),
            "records": sum(max(0, p.high_watermark - p.log_start_offset) for p in own),
            "high_watermark": sum(p.high_watermark for p in own),
            "offline_partitions": sum(1 for p in own if p.state == "offline"),
        }
        if detail:
            document["configs"] = dict(topic.configs)
            document["partitions"] = [
                {
                    "partition": p.partition,
                    "index": p.index,
                    "log_start_offset": p.log_start_offset,
                    "log_end_offset": p.log_end_offset,
                    "high_watermark": p.high_watermark,
                    "size_bytes": p.size_bytes,
                    "state": p.state,
                }
                for p in own
            ]
        return document

    # -- /api/v1/groups -----------------------------------------------------------

    def groups_document(self) -> Document:
        snapshot = self.groups()
        lags = _by_group(partition_lags(snapshot.groups, self.reader.partitions()))
        return {
            "refreshed_unix_ms": snapshot.refreshed_unix_ms,
            "error": snapshot.error,
            "listed": snapshot.listed,
            "groups": [
                self._group(g, lags.get(g.group_id, []), True) for g in snapshot.groups
            ],
        }

    def _group(
        self, group: GroupInfo, own: list[PartitionLag], detail: bool
    ) -> Document:
        # own: this group's lag rows.
        document: Document = {
            "group_id": group.group_id,
            "protocol_type": group.protocol_type,
            "state": group.state,
            "protocol": group.protocol,
            "member_count": len(group.members),
            "lag": sum(row.lag for row in own),
            "topics": sorted({row.topic for row in own}),
        }
        if detail:
            document["members"] = [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                }
                for m in group.members
            ]
            document["partitions"] = [
                {
                    "topic": row.topic,
                    "partition": row.partition,
                    "committed_offset": row.committed_offset,
                    "high_watermark": row.high_watermark,
                    "lag": row.lag,
                }
                for row in own
            ]
        return document

    # -- /api/v1/timeseries -------------------------------------------------------

    def timeseries(self, seconds: int) -> Document:
        series = self.sampler.series
        document = to_json(series.labels, series.window(seconds))
        return {"interval_s": 1, "seconds": seconds, **document}

    # -- /api/v1/stream -----------------------------------------------------------

    def stream_event(self) -> Document | None:
        """The live stream's event for the last sample (None before one)."""
        sample = self.sampler.latest
        point = self.sampler.series.latest()
        if sample is None or point is None:
            return None
        topics = self.reader.topics()
        latency = self.reader.histogram("request_latency_us").buckets
        broker = self._broker(
            sample.totals, sample.processes, sample.partitions, sample.groups, latency
        )
        broker.pop("settings")
        topic_rows = [self._topic(t, sample.partitions, False) for t in _sorted(topics)]
        topic_rows.sort(key=lambda row: -row["size_bytes"])
        lags = partition_lags(sample.groups.groups, sample.partitions)
        group_rows = [self._group(g, lags, False) for g in sample.groups.groups]
        group_rows.sort(key=lambda row: -row["lag"])
        return {
            "point": point,
            "broker": broker,
            "processes": self._processes(sample.processes, False),
            "topics": topic_rows[:STREAM_ROWS],
            "topics_total": len(topic_rows),
            "groups": group_rows[:STREAM_ROWS],
            "groups_total": len(group_rows),
            "groups_error": sample.groups.error,
        }


def _sorted(topics: dict[str, Topic]) -> list[Topic]:
    return [topics[name] for name in sorted(topics)]


def _by_topic(partitions: list[PartitionState]) -> dict[str, list[PartitionState]]:
    grouped: dict[str, list[PartitionState]] = {}
    for state in partitions:
        grouped.setdefault(state.topic, []).append(state)
    return grouped


def _by_group(lags: list[PartitionLag]) -> dict[str, list[PartitionLag]]:
    grouped: dict[str, list[PartitionLag]] = {}
    for row in lags:
        grouped.setdefault(row.group_id, []).append(row)
    return grouped
