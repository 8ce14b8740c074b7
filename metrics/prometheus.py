"""The broker's Prometheus families: the /metrics text, read from shared
memory at scrape time, and the conversion of log-linear buckets to ``le``
buckets.

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

Cost: a scrape of 100 topics x 10 partitions and two groups committed on
every partition (9,600 lines) takes about 3.5 ms of the metrics process
(tests/metrics/test_bench.py); the label text is kept between scrapes (see
"text exposition" below), the numbers are read and formatted each time.

Imported by the metrics process; ``RingbusExposition.render`` runs on its
event loop thread (not thread-safe: it keeps label caches).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client.utils import floatToGoString

from broker.layout import REQUEST_APIS, error_code_counter
from metrics.groups import GroupInfo, GroupsSnapshot
from metrics.reader import (
    BrokerReader,
    HistogramState,
    PartitionLayout,
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


def cumulative_counts(state: HistogramState, latency: bool) -> list[int]:
    """Cumulative counts at each exported boundary, then the +Inf count
    (the sum of the buckets, so never below the largest finite count, as
    Prometheus requires). See the module docstring for the boundaries."""
    cumulative = np.cumsum(state.buckets)
    indexes = _LATENCY_INDEXES if latency else _COUNT_INDEXES
    counts: list[int] = cumulative[indexes].tolist()
    counts.append(int(cumulative[-1]))
    return counts


def le_names(latency: bool) -> list[str]:
    """The ``le`` label values of ``cumulative_counts``, +Inf last."""
    return [*(_LATENCY_LE if latency else _COUNT_LE), "+Inf"]


def le_buckets(state: HistogramState, latency: bool) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs, +Inf last."""
    counts = cumulative_counts(state, latency)
    return [
        (le, float(count)) for le, count in zip(le_names(latency), counts, strict=True)
    ]


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


# -- text exposition -----------------------------------------------------------
#
# The text is written here rather than by prometheus_client's
# ``generate_latest``, which builds a Sample (a dict of labels) per line and
# escapes every label name on every scrape: 1000 partitions and two groups
# took 50 ms a scrape, 80 % of it there. Here the label text of each
# partition and (group, partition) is built once per topic metadata version
# (per group: once per change of its committed partitions), and a scrape
# formats the numbers only. The output is the same bytes prometheus_client
# writes for the same samples (labels sorted by name, values as
# ``floatToGoString``); tests/metrics/test_prometheus.py checks that by
# parsing the text with ``prometheus_client.parser`` and writing it back
# with ``generate_latest``.

# Integers of this size or more are not exact as floats: formatted by
# prometheus_client itself.
_EXACT = 1 << 53
# repr() of a float of at least this many digits before the point is
# written with an exponent by floatToGoString (Go's %g switch): seven digits.
_EXPONENT_FROM = 1_000_000


def integer_text(value: int) -> str:
    """``floatToGoString(value)`` of an integer, without a float where the
    float is exact."""
    if -_EXACT < value < _EXPONENT_FROM:
        return f"{value}.0"
    if _EXPONENT_FROM <= value < _EXACT:
        digits = str(value)
        mantissa = f"{digits[0]}.{digits[1:]}0".rstrip("0.")
        return f"{mantissa}e+{len(digits) - 1:02d}"
    return str(floatToGoString(value))


def number(value: int | float | np.integer | np.floating) -> str:
    """``value`` as prometheus_client writes it (``floatToGoString``):
    integers are exported as floats, ``12.0``, ``1.234567e+06``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return integer_text(int(value))
    return str(floatToGoString(value))


def _integers(values: list[int]) -> list[str]:
    """``integer_text`` of each, each ending the line; the common case
    (below a million) without a call per value."""
    return [
        f"{value}.0\n"
        if -_EXPONENT_FROM < value < _EXPONENT_FROM
        else integer_text(value) + "\n"
        for value in values
    ]


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """``{name="value",...}`` with the names sorted, as prometheus_client
    writes them; empty for no labels."""
    if not names:
        return ""
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in pairs) + "}"


def _header(family: Family) -> str:
    name = exported_name(family)
    text = family.help.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {text}\n# TYPE {name} {family.kind}\n"


_HEADERS = {family.name: _header(family) for family in FAMILIES}


@functools.cache
def _bucket_prefixes(
    family: Family, values: tuple[str, ...], latency: bool
) -> list[str]:
    """``name_bucket{...,le=".."} `` of each bucket of one histogram (a
    bounded set: the families and the request APIs)."""
    name = f"{PREFIX}{family.name}_bucket"
    names = (*family.labels, "le")
    return [f"{name}{label_text(names, (*values, le))} " for le in le_names(latency)]


class _Text:
    """The lines of one scrape, family by family."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def scalar(
        self, family: Family, samples: Iterable[tuple[str, int | float]]
    ) -> None:
        """A counter or gauge: ``(label text, value)`` per sample."""
        name = exported_name(family)
        self.parts.append(_HEADERS[family.name])
        self.parts.extend(
            f"{name}{labels} {number(value)}\n" for labels, value in samples
        )

    def histogram(
        self,
        family: Family,
        samples: Iterable[tuple[tuple[str, ...], HistogramState, bool]],
    ) -> None:
        """A histogram: ``(label values, state, is a latency)`` per sample;
        ``le`` buckets, then ``_count`` (the +Inf bucket), then ``_sum``."""
        name = PREFIX + family.name
        self.parts.append(_HEADERS[family.name])
        for values, state, latency in samples:
            counts = cumulative_counts(state, latency)
            prefixes = _bucket_prefixes(family, values, latency)
            self.parts.extend(map(str.__add__, prefixes, _integers(counts)))
            labels = label_text(family.labels, values)
            total = state.total / 1e6 if latency else state.total
            self.parts.append(f"{name}_count{labels} {integer_text(counts[-1])}\n")
            self.parts.append(f"{name}_sum{labels} {number(total)}\n")

    def prefixed(self, family: Family, prefixes: list[str], values: list[str]) -> None:
        """Samples whose ``name{labels} `` text was built beforehand."""
        self.parts.append(_HEADERS[family.name])
        self.parts.extend(map(str.__add__, prefixes, values))

    def encode(self) -> bytes:
        return "".join(self.parts).encode()


# The partition families fed from partition state table columns.
_PARTITION_COLUMNS = (
    (PARTITION_FAMILIES[2], "log_start_offset"),
    (PARTITION_FAMILIES[3], "log_end_offset"),
    (PARTITION_FAMILIES[4], "high_watermark"),
    (PARTITION_FAMILIES[5], "size_bytes"),
)
_ONLINE = PARTITION_FAMILIES[6]
_ONLINE_STATE = 1  # metrics.reader.PARTITION_STATES


@dataclass(frozen=True)
class _PartitionLabels:
    """``name{partition="..",topic=".."} `` of each partition family, for
    one layout."""

    layout: PartitionLayout
    prefixes: dict[str, list[str]]


@dataclass(frozen=True)
class _GroupLabels:
    """One group's committed partitions that exist, in (topic, partition)
    order, with their positions in the layout and their sample prefixes."""

    layout: PartitionLayout
    committed: frozenset[tuple[str, int]]
    keys: list[tuple[str, int]]
    positions: npt.NDArray[np.intp]
    committed_prefixes: list[str]
    lag_prefixes: list[str]


def _prefixes(family: Family, labels: list[str]) -> list[str]:
    name = exported_name(family)
    return [f"{name}{text} " for text in labels]


class RingbusExposition:
    """Writes /metrics from the broker's shared memory at each scrape (see
    module docstring and the text exposition notes above).

    ``groups`` returns the group monitor's last snapshot (the control
    process is asked once a second, not at each scrape)."""

    def __init__(
        self, reader: BrokerReader, groups: Callable[[], GroupsSnapshot]
    ) -> None:
        self.reader = reader
        self.groups = groups
        self.version = broker_version()
        self._partition_labels: _PartitionLabels | None = None
        self._group_labels: dict[str, _GroupLabels] = {}

    def render(self) -> bytes:
        """The whole exposition, UTF-8 text format 0.0.4."""
        reader = self.reader
        totals = reader.counter_totals()
        processes = reader.processes()
        text = _Text()

        text.scalar(BUILD_FAMILY, [(label_text(("version",), (self.version,)), 1)])
        for column, family in COUNTER_FAMILIES.items():
            text.scalar(family, [("", totals[column])])
        self._gauges(text, processes)
        for column, (family, latency) in HISTOGRAM_FAMILIES.items():
            text.histogram(family, [((), reader.histogram(column), latency)])
        self._apis(text, totals)
        self._processes(text, processes)
        layout, rows = reader.partition_rows()
        self._partitions(text, layout, rows)
        self._groups(text, layout, rows)
        self._rings(text)
        return text.encode()

    def _gauges(self, text: _Text, processes: list[ProcessState]) -> None:
        rows = self.reader.counter_rows()
        counters = self.reader.counters
        labels = [
            label_text(_PROCESS_LABELS, (process.name, process.role))
            for process in processes
        ]
        for column, family in GAUGE_FAMILIES.items():
            index = counters.counter_id(column)
            text.scalar(
                family,
                [
                    (label, int(rows[process.slot, index]))
                    for label, process in zip(labels, processes, strict=True)
                ],
            )

    def _apis(self, text: _Text, totals: dict[str, int]) -> None:
        requests, errors, latency, codes = API_FAMILIES
        apis = list(REQUEST_APIS.values())
        labels = [label_text(("api",), (api,)) for api in apis]
        text.scalar(
            requests,
            [
                (label, totals[f"requests_{api}"])
                for label, api in zip(labels, apis, strict=True)
            ],
        )
        text.scalar(
            errors,
            [
                (label, totals[f"request_errors_{api}"])
                for label, api in zip(labels, apis, strict=True)
            ],
        )
        used = []
        for api in apis:
            state = self.reader.histogram(f"request_latency_us_{api}")
            # Only APIs that were used: 26 APIs x 48 buckets would bloat
            # every scrape with zeros.
            if state.count or state.buckets.any():
                used.append(((api,), state, True))
        text.histogram(latency, used)
        seen = [
            (str(code), totals[error_code_counter(code)])
            for code in (-1, *range(1, 128))
            if totals[error_code_counter(code)]
        ]
        if totals["errors_code_other"]:
            seen.append(("other", totals["errors_code_other"]))
        text.scalar(
            codes,
            [(label_text(("error_code",), (code,)), count) for code, count in seen],
        )

    def _processes(self, text: _Text, processes: list[ProcessState]) -> None:
        cpu, memory, restarts, up, started, heartbeat = PROCESS_FAMILIES
        labels = [
            label_text(_PROCESS_LABELS, (process.name, process.role))
            for process in processes
        ]
        pairs = list(zip(labels, processes, strict=True))
        text.scalar(
            cpu, [(lb, p.cpu_seconds) for lb, p in pairs if p.cpu_seconds is not None]
        )
        text.scalar(
            memory,
            [(lb, p.resident_bytes) for lb, p in pairs if p.resident_bytes is not None],
        )
        text.scalar(restarts, [(lb, p.restarts) for lb, p in pairs])
        text.scalar(up, [(lb, 1 if p.running else 0) for lb, p in pairs])
        text.scalar(started, [(lb, p.started_unix_ms / 1000) for lb, p in pairs])
        text.scalar(
            heartbeat,
            [
                (lb, p.heartbeat_age_s)
                for lb, p in pairs
                if p.heartbeat_age_s is not None
            ],
        )

    def _partition_prefixes(self, layout: PartitionLayout) -> dict[str, list[str]]:
        cached = self._partition_labels
        if cached is not None and cached.layout is layout:
            return cached.prefixes
        labels = [
            label_text(_PARTITION_LABELS, (topic, str(partition)))
            for topic, partition in zip(layout.topics, layout.partitions, strict=True)
        ]
        prefixes = {
            family.name: _prefixes(family, labels)
            for family in (*(f for f, _ in _PARTITION_COLUMNS), _ONLINE)
        }
        self._partition_labels = _PartitionLabels(layout, prefixes)
        return prefixes

    def _partitions(
        self, text: _Text, layout: PartitionLayout, rows: npt.NDArray[np.void]
    ) -> None:
        topics, count = PARTITION_FAMILIES[:2]
        text.scalar(topics, [("", layout.topic_count)])
        text.scalar(count, [("", len(layout.topics))])
        prefixes = self._partition_prefixes(layout)
        for family, column in _PARTITION_COLUMNS:
            text.prefixed(
                family, prefixes[family.name], _integers(rows[column].tolist())
            )
        online = (rows["state"] == _ONLINE_STATE).astype(np.int64)
        text.prefixed(_ONLINE, prefixes[_ONLINE.name], _integers(online.tolist()))

    def _group_prefixes(
        self, group: GroupInfo, layout: PartitionLayout
    ) -> _GroupLabels:
        cached = self._group_labels.get(group.group_id)
        if (
            cached is not None
            and cached.layout is layout
            and cached.committed == group.committed.keys()
        ):
            return cached
        positions = layout.positions()
        keys = sorted(key for key in group.committed if key in positions)
        labels = [
            label_text(_LAG_LABELS, (group.group_id, topic, str(partition)))
            for topic, partition in keys
        ]
        committed, lag = GROUP_FAMILIES[3:5]
        entry = _GroupLabels(
            layout=layout,
            committed=frozenset(group.committed),
            keys=keys,
            positions=np.array([positions[key] for key in keys], dtype=np.intp),
            committed_prefixes=_prefixes(committed, labels),
            lag_prefixes=_prefixes(lag, labels),
        )
        self._group_labels[group.group_id] = entry
        return entry

    def _groups(
        self, text: _Text, layout: PartitionLayout, rows: npt.NDArray[np.void]
    ) -> None:
        snapshot = self.groups()
        listed, members, states, committed, lag, refreshed = GROUP_FAMILIES
        text.scalar(listed, [("", snapshot.listed)])
        text.scalar(
            members,
            [
                (label_text(("group",), (g.group_id,)), len(g.members))
                for g in snapshot.groups
            ],
        )
        text.scalar(
            states,
            [
                (label_text(("group", "state"), (g.group_id, g.state)), 1)
                for g in snapshot.groups
            ],
        )

        # Lag is the high watermark of this same read minus the committed
        # offset, never below 0 (metrics.groups.PartitionLag).
        high_watermarks = rows["high_watermark"]
        entries = []
        for group in sorted(snapshot.groups, key=lambda g: g.group_id):
            entry = self._group_prefixes(group, layout)
            offsets = np.fromiter(
                (group.committed[key] for key in entry.keys),
                dtype=np.int64,
                count=len(entry.keys),
            )
            behind = np.maximum(high_watermarks[entry.positions] - offsets, 0)
            entries.append((entry, offsets, behind))
        text.parts.append(_HEADERS[committed.name])
        for entry, offsets, _ in entries:
            text.parts.extend(
                map(str.__add__, entry.committed_prefixes, _integers(offsets.tolist()))
            )
        text.parts.append(_HEADERS[lag.name])
        for entry, _, behind in entries:
            text.parts.extend(
                map(str.__add__, entry.lag_prefixes, _integers(behind.tolist()))
            )
        # Forget groups that are gone.
        for group_id in set(self._group_labels) - {g.group_id for g in snapshot.groups}:
            del self._group_labels[group_id]

        stamp = [("", snapshot.refreshed_unix_ms / 1000)]
        text.scalar(refreshed, stamp if snapshot.refreshed_unix_ms else [])

    def _rings(self, text: _Text) -> None:
        rings = self.reader.rings()
        labels = [
            label_text(_RING_LABELS, (ring.name, ring.kind, ring.process))
            for ring in rings
        ]
        pairs = list(zip(labels, rings, strict=True))
        used, capacity, descriptors, slots, fill, refusals = RING_FAMILIES
        text.scalar(used, [(lb, r.used_bytes) for lb, r in pairs if r.capacity_bytes])
        text.scalar(
            capacity, [(lb, r.capacity_bytes) for lb, r in pairs if r.capacity_bytes]
        )
        text.scalar(descriptors, [(lb, r.used_descriptors) for lb, r in pairs])
        text.scalar(slots, [(lb, r.capacity_descriptors) for lb, r in pairs])
        text.scalar(fill, [(lb, r.fill_ratio) for lb, r in pairs])
        text.scalar(refusals, [(lb, r.sender_refusals) for lb, r in pairs])
