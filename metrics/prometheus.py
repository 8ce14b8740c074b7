"""The broker's Prometheus families: a collector that reads shared memory at
scrape time, and the conversion of log-linear buckets to ``le`` buckets.

Names follow Prometheus conventions: the ``ringbus_`` prefix, base units in
the name (``_seconds``, ``_bytes``), ``_total`` on counters. Once exported a
name is an API (STYLE.md 19): add, never rename. ``FAMILIES`` lists every
family with its type and labels; metrics/API.md documents them.

Counters are sums over every process slot (a process restarted in its
slot keeps adding to its old values, so totals never go backwards).
Per-process levels (``*_gauge`` columns) are exported per process.

Histograms: ``shm.counters`` keeps 304 log-linear buckets (8 per power of
two). Prometheus gets a subset of their boundaries, so every cumulative
``le`` count is exact, not interpolated:
- latencies are stored in whole microseconds, truncated from nanoseconds, so
  a stored value v means a true latency in [v, v + 1) us; a bucket holding
  stored values below U therefore holds exactly the latencies below U us,
  and its boundary is exported as ``le = U / 1e6`` seconds. Two boundaries
  per power of two, 8 us .. 134 s;
- counts (batches, bytes per writev) are whole numbers: values below 2**k
  are the values ``le = 2**k - 1``.

Imported by the metrics process; ``collect`` runs on its event loop thread.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from broker.layout import REQUEST_APIS, error_code_counter
from metrics.groups import GroupsSnapshot, partition_lags
from metrics.reader import (
    BrokerReader,
    HistogramState,
    PartitionState,
    ProcessState,
)
from shm.counters import bucket_bounds

PREFIX = "ringbus_"

_, _UPPER = bucket_bounds()


def _bound_indexes(uppers: list[int]) -> npt.NDArray[np.intp]:
    """Bucket indexes whose exclusive upper bounds are ``uppers``."""
    indexes = np.searchsorted(_UPPER, uppers)
    if not np.array_equal(_UPPER[indexes], uppers):
        raise ValueError(f"{uppers} are not all bucket boundaries")
    return indexes


LATENCY_UPPERS_US = sorted(
    {1 << k for k in range(3, 28)} | {3 << k for k in range(2, 26)}
)
COUNT_UPPERS = [1 << k for k in range(1, 37)]
_LATENCY_INDEXES = _bound_indexes(LATENCY_UPPERS_US)
_COUNT_INDEXES = _bound_indexes(COUNT_UPPERS)
_LATENCY_LE = [floatToGoString(upper / 1e6) for upper in LATENCY_UPPERS_US]
_COUNT_LE = [floatToGoString(upper - 1) for upper in COUNT_UPPERS]


def le_buckets(state: HistogramState, latency: bool) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs, +Inf last (see module docstring).
    The +Inf count is the sum of the buckets, so it always equals the
    largest finite count or more, as Prometheus requires."""
    cumulative = np.cumsum(state.buckets)
    indexes, names = (
        (_LATENCY_INDEXES, _LATENCY_LE) if latency else (_COUNT_INDEXES, _COUNT_LE)
    )
    counts = cumulative[indexes].tolist()
    pairs = [(le, float(count)) for le, count in zip(names, counts, strict=True)]
    pairs.append(("+Inf", float(cumulative[-1])))
    return pairs


@dataclass(frozen=True)
class Family:
    """One exported family: its type, help text and label names."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()


# Counter columns summed over all slots: column -> family.
COUNTER_FAMILIES = {
    "connections_accepted": Family(
        "connections_accepted", "counter", "Client connections accepted."
    ),
    "requests": Family("requests", "counter", "Kafka requests answered, all APIs."),
    "request_errors": Family(
        "request_errors",
        "counter",
        "Kafka requests whose response carried at least one error code.",
    ),
    "produce_batches": Family(
        "produce_batches", "counter", "Record batches accepted from producers."
    ),
    "produce_records": Family(
        "produce_records", "counter", "Records accepted from producers."
    ),
    "produce_bytes": Family(
        "produce_bytes", "counter", "Record batch bytes accepted from producers."
    ),
    "fetch_records": Family(
        "fetch_records", "counter", "Records in the batches sent to fetchers."
    ),
    "fetch_bytes": Family(
        "fetch_bytes", "counter", "Record batch bytes sent to fetchers."
    ),
    "ring_full_stalls": Family(
        "ring_full_stalls",
        "counter",
        "Times a net process found its produce ring full and paused reading.",
    ),
    "writer_turns": Family("writer_turns", "counter", "Writer loop turns."),
    "writer_batches": Family(
        "writer_batches", "counter", "Record batches appended by the writer."
    ),
    "writer_bytes": Family(
        "writer_bytes", "counter", "Bytes appended to segments by the writer."
    ),
    "writer_writev_calls": Family(
        "writer_writev_calls", "counter", "writev calls made by the writer."
    ),
    "writer_fsyncs": Family(
        "writer_fsyncs", "counter", "fsync/fdatasync calls made by the writer."
    ),
    "group_rebalances": Family(
        "group_rebalances",
        "counter",
        "Consumer group rebalances completed by the coordinator.",
    ),
    "metrics_samples": Family(
        "metrics_samples", "counter", "Once-a-second samples taken by the metrics."
    ),
    "metrics_http_requests": Family(
        "metrics_http_requests", "counter", "HTTP requests served by the metrics."
    ),
    "metrics_control_failures": Family(
        "metrics_control_failures",
        "counter",
        "Consumer group refreshes the control process did not answer.",
    ),
}

# Per-process levels: column -> family labelled by process.
GAUGE_FAMILIES = {
    "connections_active_gauge": Family(
        "connections_active",
        "gauge",
        "Open client connections.",
        ("process", "role"),
    ),
    "parked_fetches_gauge": Family(
        "parked_fetches",
        "gauge",
        "Fetch requests waiting for data or max_wait_ms.",
        ("process", "role"),
    ),
    "metadata_version_gauge": Family(
        "metadata_version",
        "gauge",
        "Topic metadata version each process has applied.",
        ("process", "role"),
    ),
}

# Histograms summed over all slots: histogram -> (family, is a latency).
HISTOGRAM_FAMILIES = {
    "request_latency_us": (
        Family(
            "request_latency_seconds",
            "histogram",
            "Time from a request's arrival to its response, all APIs.",
        ),
        True,
    ),
    "writer_turn_us": (
        Family("writer_turn_seconds", "histogram", "Duration of one writer loop turn."),
        True,
    ),
    "fsync_us": (
        Family("fsync_seconds", "histogram", "Duration of one writer fsync."),
        True,
    ),
    "writer_writev_batches": (
        Family("writer_writev_batches", "histogram", "Record batches per writev."),
        False,
    ),
    "writer_writev_bytes": (
        Family("writer_writev_bytes", "histogram", "Bytes per writev."),
        False,
    ),
    "metrics_sample_us": (
        Family(
            "metrics_sample_seconds",
            "histogram",
            "Time the metrics process took for one sample.",
        ),
        True,
    ),
}

API_FAMILIES = (
    Family("api_requests", "counter", "Kafka requests answered, by API.", ("api",)),
    Family(
        "api_request_errors",
        "counter",
        "Kafka requests whose response carried an error code, by API.",
        ("api",),
    ),
    Family(
        "api_request_latency_seconds",
        "histogram",
        "Time from a request's arrival to its response, by API.",
        ("api",),
    ),
    Family(
        "response_errors",
        "counter",
        "Error codes put in responses (each occurrence), by Kafka error code.",
        ("error_code",),
    ),
)

_PROCESS_LABELS = ("process", "role")
PROCESS_FAMILIES = (
    Family(
        "process_cpu_seconds", "counter", "CPU time (user + system).", _PROCESS_LABELS
    ),
    Family(
        "process_resident_memory_bytes", "gauge", "Resident memory.", _PROCESS_LABELS
    ),
    Family(
        "process_restarts",
        "counter",
        "Times the supervisor restarted the process in its slot.",
        _PROCESS_LABELS,
    ),
    Family("process_up", "gauge", "1 if the process runs.", _PROCESS_LABELS),
    Family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process, unix seconds.",
        _PROCESS_LABELS,
    ),
    Family(
        "process_heartbeat_age_seconds",
        "gauge",
        "Seconds since the process last beat (the supervisor restarts it at 15).",
        _PROCESS_LABELS,
    ),
)

_PARTITION_LABELS = ("topic", "partition")
PARTITION_FAMILIES = (
    Family("topics", "gauge", "Topics in the broker."),
    Family("partitions", "gauge", "Partitions in the broker."),
    Family(
        "partition_log_start_offset",
        "gauge",
        "First offset still in the log.",
        _PARTITION_LABELS,
    ),
    Family(
        "partition_log_end_offset",
        "gauge",
        "Offset the next appended record gets.",
        _PARTITION_LABELS,
    ),
    Family(
        "partition_high_watermark",
        "gauge",
        "Offset up to which records are readable.",
        _PARTITION_LABELS,
    ),
    Family(
        "partition_size_bytes",
        "gauge",
        "Bytes of the partition's segments on disk.",
        _PARTITION_LABELS,
    ),
    Family(
        "partition_online",
        "gauge",
        "1 if the partition is online, 0 if offline after a storage error.",
        _PARTITION_LABELS,
    ),
)

_LAG_LABELS = ("group", "topic", "partition")
GROUP_FAMILIES = (
    Family("consumer_groups", "gauge", "Consumer groups the coordinator knows."),
    Family("consumer_group_members", "gauge", "Members of the group.", ("group",)),
    Family(
        "consumer_group_state",
        "gauge",
        "1 for the group's current state.",
        ("group", "state"),
    ),
    Family(
        "consumer_group_committed_offset",
        "gauge",
        "The group's committed offset.",
        _LAG_LABELS,
    ),
    Family(
        "consumer_group_lag_records",
        "gauge",
        "High watermark minus the group's committed offset.",
        _LAG_LABELS,
    ),
    Family(
        "consumer_groups_refreshed_timestamp_seconds",
        "gauge",
        "When the groups were last read from the control process, unix seconds.",
    ),
)

_RING_LABELS = ("ring", "kind", "process")
RING_FAMILIES = (
    Family(
        "ring_used_bytes",
        "gauge",
        "Bytes of the ring's data area in use.",
        _RING_LABELS,
    ),
    Family(
        "ring_capacity_bytes", "gauge", "Size of the ring's data area.", _RING_LABELS
    ),
    Family("ring_used_descriptors", "gauge", "Descriptors in use.", _RING_LABELS),
    Family(
        "ring_capacity_descriptors",
        "gauge",
        "Descriptors the ring holds.",
        _RING_LABELS,
    ),
    Family(
        "ring_fill_ratio",
        "gauge",
        "The fuller of descriptors and bytes, 0 to 1.",
        _RING_LABELS,
    ),
    Family(
        "ring_sender_refusals",
        "counter",
        "Reservations refused because the ring was full.",
        _RING_LABELS,
    ),
)

BUILD_FAMILY = Family("build_info", "gauge", "Broker version.", ("version",))

FAMILIES: tuple[Family, ...] = (
    BUILD_FAMILY,
    *COUNTER_FAMILIES.values(),
    *GAUGE_FAMILIES.values(),
    *(family for family, _ in HISTOGRAM_FAMILIES.values()),
    *API_FAMILIES,
    *PROCESS_FAMILIES,
    *PARTITION_FAMILIES,
    *GROUP_FAMILIES,
    *RING_FAMILIES,
)


def exported_name(family: Family) -> str:
    """The family name as Prometheus stores it (counters end in _total)."""
    name = PREFIX + family.name
    return name + "_total" if family.kind == "counter" else name


def series_names(family: Family) -> tuple[str, ...]:
    """Every sample name the family produces."""
    name = exported_name(family)
    if family.kind == "histogram":
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    return (name,)


def broker_version() -> str:
    try:
        return importlib.metadata.version("ringbus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _scalar(family: Family) -> CounterMetricFamily | GaugeMetricFamily:
    name, labels = PREFIX + family.name, list(family.labels)
    if family.kind == "counter":
        return CounterMetricFamily(name, family.help, labels=labels)
    assert family.kind == "gauge", family
    return GaugeMetricFamily(name, family.help, labels=labels)


def _histogram(family: Family) -> HistogramMetricFamily:
    assert family.kind == "histogram", family
    return HistogramMetricFamily(
        PREFIX + family.name, family.help, labels=list(family.labels)
    )


class RingbusCollector(Collector):
    """Reads the broker's shared memory at each scrape (see module docstring).

    ``groups`` returns the group monitor's last snapshot (the control
    process is asked once a second, not at each scrape)."""

    # LIMITATION: a scrape renders every partition and every (group,
    # partition) on the metrics process's event loop: 1024 partitions and
    # two groups are ~10k samples, 50-80 ms (tests/metrics/test_bench.py,
    # 80 % of it in prometheus_client's text rendering), during which the
    # sampler and the live stream wait.

    def __init__(
        self, reader: BrokerReader, groups: Callable[[], GroupsSnapshot]
    ) -> None:
        self.reader = reader
        self.groups = groups
        self.version = broker_version()

    def describe(self) -> list[Metric]:
        # Registering must not read shared memory; names are checked by tests.
        return []

    def collect(self) -> Iterator[Metric]:
        reader = self.reader
        totals = reader.counter_totals()
        processes = reader.processes()

        build = _scalar(BUILD_FAMILY)
        build.add_metric([self.version], 1)
        yield build

        for column, family in COUNTER_FAMILIES.items():
            metric = _scalar(family)
            metric.add_metric([], totals[column])
            yield metric

        yield from self._gauges(processes)

        for column, (family, latency) in HISTOGRAM_FAMILIES.items():
            state = reader.histogram(column)
            histogram = _histogram(family)
            total = state.total / 1e6 if latency else state.total
            histogram.add_metric([], le_buckets(state, latency), total)
            yield histogram

        yield from self._apis(totals)
        yield from self._processes(processes)
        partitions = reader.partitions()
        yield from self._partitions(partitions)
        yield from self._groups(partitions)
        yield from self._rings()

    def _gauges(self, processes: list[ProcessState]) -> Iterator[Metric]:
        rows = self.reader.counter_rows()
        counters = self.reader.counters
        for column, family in GAUGE_FAMILIES.items():
            metric = _scalar(family)
            index = counters.counter_id(column)
            for process in processes:
                metric.add_metric(
                    [process.name, process.role], int(rows[process.slot, index])
                )
            yield metric

    def _apis(self, totals: dict[str, int]) -> Iterator[Metric]:
        requests, errors, codes = (_scalar(API_FAMILIES[i]) for i in (0, 1, 3))
        latency = _histogram(API_FAMILIES[2])
        for api in REQUEST_APIS.values():
            requests.add_metric([api], totals[f"requests_{api}"])
            errors.add_metric([api], totals[f"request_errors_{api}"])
            state = self.reader.histogram(f"request_latency_us_{api}")
            # Only APIs that were used: 26 APIs x 48 buckets would bloat
            # every scrape with zeros.
            if state.count or state.buckets.any():
                latency.add_metric([api], le_buckets(state, True), state.total / 1e6)
        for code in (-1, *range(1, 128)):
            column = error_code_counter(code)
            if totals[column]:
                codes.add_metric([str(code)], totals[column])
        if totals["errors_code_other"]:
            codes.add_metric(["other"], totals["errors_code_other"])
        yield from (requests, errors, latency, codes)

    def _processes(self, processes: list[ProcessState]) -> Iterator[Metric]:
        cpu, memory, restarts, up, started, heartbeat = (
            _scalar(family) for family in PROCESS_FAMILIES
        )
        for process in processes:
            labels = [process.name, process.role]
            if process.cpu_seconds is not None:
                cpu.add_metric(labels, process.cpu_seconds)
            if process.resident_bytes is not None:
                memory.add_metric(labels, process.resident_bytes)
            restarts.add_metric(labels, process.restarts)
            up.add_metric(labels, 1 if process.running else 0)
            started.add_metric(labels, process.started_unix_ms / 1000)
            if process.heartbeat_age_s is not None:
                heartbeat.add_metric(labels, process.heartbeat_age_s)
        yield from (cpu, memory, restarts, up, started, heartbeat)

    def _partitions(self, partitions: list[PartitionState]) -> Iterator[Metric]:
        topics, count, start, end, high, size, online = (
            _scalar(family) for family in PARTITION_FAMILIES
        )
        topics.add_metric([], len({state.topic for state in partitions}))
        count.add_metric([], len(partitions))
        for state in partitions:
            labels = [state.topic, str(state.partition)]
            start.add_metric(labels, state.log_start_offset)
            end.add_metric(labels, state.log_end_offset)
            high.add_metric(labels, state.high_watermark)
            size.add_metric(labels, state.size_bytes)
            online.add_metric(labels, 1 if state.state == "online" else 0)
        yield from (topics, count, start, end, high, size, online)

    def _groups(self, partitions: list[PartitionState]) -> Iterator[Metric]:
        snapshot = self.groups()
        listed, members, states, committed, lag, refreshed = (
            _scalar(family) for family in GROUP_FAMILIES
        )
        listed.add_metric([], snapshot.listed)
        for group in snapshot.groups:
            members.add_metric([group.group_id], len(group.members))
            states.add_metric([group.group_id, group.state], 1)
        for row in partition_lags(snapshot.groups, partitions):
            labels = [row.group_id, row.topic, str(row.partition)]
            committed.add_metric(labels, row.committed_offset)
            lag.add_metric(labels, row.lag)
        if snapshot.refreshed_unix_ms:
            refreshed.add_metric([], snapshot.refreshed_unix_ms / 1000)
        yield from (listed, members, states, committed, lag, refreshed)

    def _rings(self) -> Iterator[Metric]:
        used, capacity, descriptors, slots, fill, refusals = (
            _scalar(family) for family in RING_FAMILIES
        )
        for ring in self.reader.rings():
            labels = [ring.name, ring.kind, ring.process]
            if ring.capacity_bytes:
                used.add_metric(labels, ring.used_bytes)
                capacity.add_metric(labels, ring.capacity_bytes)
            descriptors.add_metric(labels, ring.used_descriptors)
            slots.add_metric(labels, ring.capacity_descriptors)
            fill.add_metric(labels, ring.fill_ratio)
            refusals.add_metric(labels, ring.sender_refusals)
        yield from (used, capacity, descriptors, slots, fill, refusals)


def registry_for(collector: RingbusCollector) -> CollectorRegistry:
    """A registry holding only the broker's families (no client defaults:
    the metrics process's own CPU would be mistaken for the broker's)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
