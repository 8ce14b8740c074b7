"""The broker's shared memory: which regions exist, their names and fields.

The supervisor creates every region once at start (``BrokerMemory.create``)
and unlinks them at stop; each child attaches with ``BrokerMemory.attach``
using the same settings, so all agree on sizes. Regions, under the
per-data-directory prefix (``rb<hash>_``):

    produce-<i>    ring, net process i -> writer: record batches as received
    complete-<i>   ring, writer -> net process i: one descriptor per batch
    partitions     table, written by the writer: per partition state
    commits        table, written and read by the writer only: its commit
                   record (broker.commit_record), one row per partition
    processes      table, written by the supervisor: who runs in each slot
    counters       counters and histograms, one row per process slot

Wake-ups are eventfds created by the supervisor and inherited by number:
``writer_wake`` (the writer sleeps on it: data in any produce ring, space in
any completion ring) and ``net_wake_<i>`` (net process i sleeps on it:
completions, space in its produce ring, new data for parked fetches).

Process slots (rows of ``processes`` and ``counters``): 0 supervisor,
1 writer, 2 control, 3 metrics, 4.. net processes.
"""

from __future__ import annotations

import time

import numpy as np

from broker.settings import Settings
from shm.counters import Counters
from shm.notify import Notifier
from shm.region import block_name, unlink_stale
from shm.ring import Ring
from shm.table import Table, TableWriter

SUPERVISOR_SLOT = 0
WRITER_SLOT = 1
CONTROL_SLOT = 2
METRICS_SLOT = 3
FIRST_NET_SLOT = 4

ROLE_CODES = {"supervisor": 0, "writer": 1, "control": 2, "metrics": 3, "net": 4}

# One produce descriptor per record batch (kind 0), or a DeleteRecords
# command (kind 1, no payload, ``argument`` = the requested offset). The
# ring's own counters give each descriptor its sequence number.
# ``base_offset`` and ``error_code`` are the writer's answer, written into
# the descriptor in the ring before the writer commits the turn, so a
# restarted writer can complete a redelivered descriptor it already applied.
KIND_BATCH = 0
KIND_DELETE_RECORDS = 1
PRODUCE_FIELDS = [
    ("request_id", np.int64),  # the net process's id of the pending request
    ("base_offset", np.int64),  # -1 until the writer assigns it
    ("argument", np.int64),
    ("partition", np.int32),  # dense partition index
    ("record_count", np.int32),
    ("acks", np.int8),
    ("kind", np.int8),
    ("error_code", np.int16),  # the writer fills it in with base_offset
]

# One completion per produce descriptor: the writer's answer.
COMPLETION_FIELDS = [
    ("request_id", np.int64),
    ("base_offset", np.int64),
    ("log_append_time", np.int64),  # ms since the epoch, -1 for CreateTime
    ("log_start_offset", np.int64),
    ("partition", np.int32),
    ("error_code", np.int16),
]

# The partition state table: the writer's commit record and what readers
# (Fetch, ListOffsets, metrics) need. ``high_watermark_segment`` is the base
# offset of the segment holding the high watermark and
# ``high_watermark_position`` the byte position in it where readable data
# ends; ``segments_version`` changes whenever segments are rolled or deleted.
PARTITION_FIELDS = [
    ("log_start_offset", np.int64),
    ("log_end_offset", np.int64),
    ("high_watermark", np.int64),
    ("high_watermark_segment", np.int64),
    ("high_watermark_position", np.int64),
    ("segments_version", np.int64),
    ("size_bytes", np.int64),
    ("state", np.int64),  # 0 unused, 1 online, 2 offline (storage error)
]


def commit_fields(net_procs: int) -> list[tuple[str, type, tuple[int, ...]]]:
    """Rows of the writer's commit record (see ``broker.commit_record``):
    two copies of (log end offset, last applied ring sequence per produce
    ring) and the generation that says which copy is current."""
    return [
        ("generation", np.int64, ()),  # 0: never committed; copy = generation % 2
        ("log_end_offset", np.int64, (2,)),
        ("applied_sequence", np.int64, (2, net_procs)),
    ]


PROCESS_FIELDS = [
    ("pid", np.int64),
    ("role", np.int64),
    ("role_index", np.int64),
    ("started_unix_ms", np.int64),
    ("restarts", np.int64),
]

# The API keys the broker serves (net.kafka.versions.ADVERTISED), named as
# in Kafka's message definitions, for the per-API columns below. A net
# process counts each request in ``requests`` (all APIs) and in
# ``requests_<api>``, an answered request with any error code in
# ``request_errors`` and ``request_errors_<api>``, and its latency in
# ``request_latency_us`` and ``request_latency_us_<api>``.
REQUEST_APIS: dict[int, str] = {
    0: "produce",
    1: "fetch",
    2: "list_offsets",
    3: "metadata",
    8: "offset_commit",
    9: "offset_fetch",
    10: "find_coordinator",
    11: "join_group",
    12: "heartbeat",
    13: "leave_group",
    14: "sync_group",
    15: "describe_groups",
    16: "list_groups",
    17: "sasl_handshake",
    18: "api_versions",
    19: "create_topics",
    20: "delete_topics",
    21: "delete_records",
    22: "init_producer_id",
    32: "describe_configs",
    33: "alter_configs",
    36: "sasl_authenticate",
    37: "create_partitions",
    42: "delete_groups",
    44: "incremental_alter_configs",
    47: "offset_delete",
}
REQUEST_API_COUNTER_NAMES = [
    *(f"requests_{api}" for api in REQUEST_APIS.values()),
    *(f"request_errors_{api}" for api in REQUEST_APIS.values()),
]
REQUEST_API_HISTOGRAM_NAMES = [
    f"request_latency_us_{api}" for api in REQUEST_APIS.values()
]

# Error codes put in responses, one column per Kafka error code: each
# occurrence counts once (a Produce response with two failed partitions
# adds two). -1 (UNKNOWN_SERVER_ERROR) has its own column; codes outside
# -1..ERROR_CODE_LIMIT-1 share ``errors_code_other``.
ERROR_CODE_LIMIT = 128
ERROR_CODE_COUNTER_NAMES = [
    "errors_code_unknown_server_error",
    *(f"errors_code_{code}" for code in range(1, ERROR_CODE_LIMIT)),
    "errors_code_other",
]


def error_code_counter(code: int) -> str:
    """The counter column that counts responses' error code ``code``."""
    if code == -1:
        return "errors_code_unknown_server_error"
    if 1 <= code < ERROR_CODE_LIMIT:
        return f"errors_code_{code}"
    return "errors_code_other"


# Counter columns. Most are totals that the metrics process sums over
# slots; the ``*_gauge`` ones are per-process levels set by their owner.
COUNTER_NAMES = [
    "heartbeat_monotonic_ns_gauge",
    "metadata_version_gauge",
    "connections_accepted",
    "connections_active_gauge",
    "requests",
    "request_errors",
    "produce_batches",
    "produce_records",
    "produce_bytes",
    "fetch_bytes",
    "ring_full_stalls",
    "writer_turns",
    "writer_batches",
    "writer_bytes",
    "writer_writev_calls",
    "writer_fsyncs",
    "parked_fetches_gauge",
    # Appended for the metrics process (names are an API: append only).
    "fetch_records",  # net: records in the batches Fetch responses carried
    "group_rebalances",  # control: rebalances the coordinator completed
    "metrics_samples",  # metrics: once-a-second samples taken
    "metrics_http_requests",  # metrics: HTTP requests served
    "metrics_control_failures",  # metrics: group queries the control refused
    *REQUEST_API_COUNTER_NAMES,
    *ERROR_CODE_COUNTER_NAMES,
]
HISTOGRAM_NAMES = [
    "request_latency_us",
    "writer_turn_us",
    "fsync_us",
    # Appended for the metrics process (names are an API: append only).
    "writer_writev_batches",  # writer: batches in one writev call
    "writer_writev_bytes",  # writer: bytes in one writev call
    "metrics_sample_us",  # metrics: time to take one sample
    *REQUEST_API_HISTOGRAM_NAMES,
]

PRODUCE_RING_DESCRIPTORS = 1 << 16
COMPLETION_RING_DESCRIPTORS = 1 << 16


def slot_count(settings: Settings) -> int:
    return FIRST_NET_SLOT + settings.net_procs


def stale_block_prefix(prefix: str) -> list[str]:
    """Unlink every block a killed supervisor left under ``prefix``."""
    return unlink_stale(prefix, include_live_owners=False)


class BrokerMemory:
    """Every shared region and wake-up eventfd of one broker."""

    def __init__(
        self,
        prefix: str,
        produce_rings: list[Ring],
        completion_rings: list[Ring],
        partitions: Table,
        processes: Table,
        counters: Counters,
        writer_wake: Notifier,
        net_wakes: list[Notifier],
        commits: Table | None = None,
    ) -> None:
        self.prefix = prefix
        self.produce_rings = produce_rings
        self.completion_rings = completion_rings
        self.partitions = partitions
        self.processes = processes
        self.counters = counters
        self.writer_wake = writer_wake
        self.net_wakes = net_wakes
        self.commits = commits
        self._process_writer: TableWriter | None = None

    @classmethod
    def create(cls, settings: Settings, prefix: str, slots: int) -> BrokerMemory:
        def name(suffix: str) -> str:
            return block_name(prefix, suffix)

        nets = range(settings.net_procs)
        produce = [
            Ring.create(
                name(f"produce-{i}"),
                PRODUCE_FIELDS,
                PRODUCE_RING_DESCRIPTORS,
                settings.ring_bytes,
            )
            for i in nets
        ]
        complete = [
            Ring.create(
                name(f"complete-{i}"), COMPLETION_FIELDS, COMPLETION_RING_DESCRIPTORS, 0
            )
            for i in nets
        ]
        return cls(
            prefix,
            produce,
            complete,
            Table.create(name("partitions"), PARTITION_FIELDS, settings.max_partitions),
            Table.create(name("processes"), PROCESS_FIELDS, slots),
            Counters.create(name("counters"), slots, COUNTER_NAMES, HISTOGRAM_NAMES),
            Notifier.create(),
            [Notifier.create() for _ in nets],
            Table.create(
                name("commits"),
                commit_fields(settings.net_procs),
                settings.max_partitions,
            ),
        )

    @classmethod
    def attach(
        cls, settings: Settings, prefix: str, notifier_fds: dict[str, int]
    ) -> BrokerMemory:
        def name(suffix: str) -> str:
            return block_name(prefix, suffix)

        nets = range(settings.net_procs)
        return cls(
            prefix,
            [Ring.attach(name(f"produce-{i}"), PRODUCE_FIELDS) for i in nets],
            [Ring.attach(name(f"complete-{i}"), COMPLETION_FIELDS) for i in nets],
            Table.attach(name("partitions"), PARTITION_FIELDS),
            Table.attach(name("processes"), PROCESS_FIELDS),
            Counters.attach(name("counters"), COUNTER_NAMES, HISTOGRAM_NAMES),
            Notifier(notifier_fds["writer_wake"]),
            [Notifier(notifier_fds[f"net_wake_{i}"]) for i in nets],
            Table.attach(name("commits"), commit_fields(settings.net_procs)),
        )

    def notifier_fds(self) -> dict[str, int]:
        """Eventfds by name, to pass to children."""
        fds = {"writer_wake": self.writer_wake.fileno()}
        for index, notifier in enumerate(self.net_wakes):
            fds[f"net_wake_{index}"] = notifier.fileno()
        return fds

    # -- process table (supervisor writes, everyone reads) -------------------

    def register_process(self, slot: int, role: str, index: int, pid: int) -> int:
        """Record a (re)started child; the supervisor is the only writer.
        Returns the heartbeat value the child's first beat will replace."""
        if self._process_writer is None:
            self._process_writer = self.processes.writer()
        previous = self.processes.table[slot]
        restarts = int(previous["restarts"]) + 1 if int(previous["pid"]) else 0
        self._process_writer.update(
            slot,
            pid=pid,
            role=ROLE_CODES[role],
            role_index=index,
            started_unix_ms=int(time.time() * 1000),
            restarts=restarts,
        )
        # A new process starts with a fresh heartbeat, not its predecessor's.
        beat = time.monotonic_ns()
        self.counters.counters[slot, self.counters.counter_id(HEARTBEAT)] = beat
        return beat

    def heartbeat(self, slot: int) -> int:
        """The slot's last heartbeat, in monotonic nanoseconds."""
        return int(self.counters.counters[slot, self.counters.counter_id(HEARTBEAT)])

    def heartbeat_age_s(self, slot: int) -> float:
        return (time.monotonic_ns() - self.heartbeat(slot)) / 1e9

    # -- teardown -----------------------------------------------------------

    def close(self) -> None:
        if self._process_writer is not None:
            self._process_writer.close()
            self._process_writer = None
        for ring in (*self.produce_rings, *self.completion_rings):
            ring.close()
        self.partitions.close()
        self.processes.close()
        self.counters.close()
        if self.commits is not None:
            self.commits.close()

    def unlink(self) -> None:
        """Remove every block (supervisor only, after ``close``)."""
        for ring in (*self.produce_rings, *self.completion_rings):
            ring.unlink()
        self.partitions.unlink()
        self.processes.unlink()
        self.counters.unlink()
        if self.commits is not None:
            self.commits.unlink()
        self.writer_wake.close()
        for notifier in self.net_wakes:
            notifier.close()


HEARTBEAT = "heartbeat_monotonic_ns_gauge"
