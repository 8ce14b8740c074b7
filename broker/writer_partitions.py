"""The writer process's partitions: open logs, their rows, metadata, health.

One :class:`Partition` per partition index the metadata names: its
:class:`PartitionLog`, its idempotent producer state, whether it is online,
and what was last committed for it. :class:`PartitionSet` opens them at
start (trusting the commit record when the supervisor kept one, see
``broker.commit_record``), follows metadata changes, publishes each
partition's row of the partition state table, takes failed partitions
offline and reopens them, and runs the periodic checkpoint and retention.

Partition state table row (``broker.layout.PARTITION_FIELDS``), written
through the table's seqlock::

    log_start_offset, log_end_offset    the log's
    high_watermark                      = log end offset (one broker)
    high_watermark_segment/_position    active segment base offset and its
                                        end position: readers never read
                                        past it
    segments_version                    changes when segments roll or go;
                                        kept increasing across writer
                                        restarts
    size_bytes                          bytes in every segment
    state                               0 unused, 1 online, 2 offline

Offline: a write, sync or open failure (``LogStorageError``, ``OSError``)
turns the row's state to 2 and keeps the other fields, so readers go on
serving what was there. The writer reopens the partition (recovery, then
truncation to the committed log end offset) after REOPEN_FIRST_S, doubling
up to REOPEN_MAX_S, until it succeeds.

Metadata (``broker.control.metadata``): read-only here. The writer reloads
it when the control process's ``metadata_version_gauge`` counter passes the
loaded version, when the stored version changes (polled every
METADATA_POLL_S), and when a descriptor names an unknown partition index.
A removed topic's logs are closed, its directories deleted and its rows set
to state 0; a new partition's log is created and its row filled.

LIMITATION: a segment rolls by segment.ms only when a batch arrives (the
roll check is in ``PartitionLog.append``); an idle partition keeps its old
active segment, so retention cannot delete it until the next append.

LIMITATION: directories of a topic deleted while no writer ran are not
removed (rows do not name their topic, and the data directory holds other
owners' files); they stay on disk until an operator deletes them.

Periodic checkpoint: every flush_ms the main thread takes a checkpoint job
of each partition written since its last one (``PartitionLog.
prepare_checkpoint``) and hands it to :class:`CheckpointFlusher`, whose one
thread syncs and records it; the main thread collects the reports between
turns (a failure takes the partition offline there). A partition has at
most one job in flight.

Imported by the writer process only; not thread-safe apart from
:class:`CheckpointFlusher`'s thread, which calls only
``PartitionLog.run_checkpoint``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from broker.commit_record import NOTHING_APPLIED, CommitRecord
from broker.control.metadata import MetadataStore
from broker.log.partition import (
    CheckpointJob,
    LogConfig,
    LogStorageError,
    PartitionLog,
)
from broker.logs import event
from broker.producer_state import ProducerState, load_producer_state
from broker.settings import Settings
from shm.table import TableWriter

logger = logging.getLogger(__name__)

STATE_UNUSED = 0
STATE_ONLINE = 1
STATE_OFFLINE = 2

# Reopen attempts of an offline partition: first after 1 s, doubling to
# 10 s. A guess that heals within seconds once space returns without
# rescanning a failing disk in a tight loop.
REOPEN_FIRST_S = 1.0
REOPEN_MAX_S = 10.0

# How often the stored metadata version is read when the control process
# does not announce changes through its counter (one 64-byte read).
METADATA_POLL_S = 0.1

# How long closing waits for the flusher thread to finish its queued
# checkpoints (a guess: 1,000 partitions at a few ms of fsyncs each, with
# room for a slow disk). Past it the close goes on; each log's own close
# then waits for the job holding it.
FLUSHER_STOP_S = 30.0

# Retention runs every 10 s: segments are large and retention is in hours
# or days, so a 10 s delay is noise; each run costs one check per log.
RETENTION_INTERVAL_S = 10.0


def log_config(settings: Settings, configs: dict[str, str]) -> LogConfig:
    """The settings, overridden by a topic's acted-on configs."""

    def value(key: str, default: int) -> int:
        text = configs.get(key)
        return default if text is None else int(text)

    return LogConfig(
        segment_bytes=value("segment.bytes", settings.segment_bytes),
        segment_ms=value("segment.ms", settings.segment_ms),
        index_interval_bytes=settings.index_interval_bytes,
        retention_ms=value("retention.ms", settings.retention_ms),
        retention_bytes=value("retention.bytes", settings.retention_bytes),
        log_append_time=configs.get("message.timestamp.type") == "LogAppendTime",
    )


@dataclass(eq=False)
class Partition:
    """One partition as the writer holds it."""

    index: int
    topic: str
    number: int
    config: LogConfig
    log: PartitionLog | None = None
    producers: ProducerState = field(default_factory=ProducerState)
    state: int = STATE_OFFLINE
    # The log end offset of the last commit: the truth after a crash.
    committed_end: int = 0
    # Added to the log's own segments_version so the published value keeps
    # increasing when the log is reopened.
    version_base: int = 0
    sealed_bytes: int = 0
    sized_version: int = -1
    written: bool = False
    # A checkpoint job of this partition is with the flusher thread.
    checkpointing: bool = False
    reopen_at: float = 0.0
    reopen_delay: float = REOPEN_FIRST_S

    @property
    def topic_partition(self) -> str:
        return f"{self.topic}-{self.number}"

    @property
    def online(self) -> bool:
        return self.state == STATE_ONLINE


# What the flusher reports per job: the partition, the log the job was
# taken from, and the failure (None when done or superseded).
_Done = tuple[Partition, PartitionLog, LogStorageError | None]


class CheckpointFlusher:
    """One thread that runs periodic checkpoint jobs off the append loop.

    The writer's main thread takes a job per log (``prepare_checkpoint``)
    and submits it; the thread runs them in order (``run_checkpoint``:
    fdatasync of the segments, then the state file) and reports each one;
    the main thread collects the reports between turns. fdatasync and
    fsync release the GIL, so appends go on meanwhile. The thread touches
    no ring and no shared table; failures reach the partition through the
    main thread (``collect``).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Partition, PartitionLog, CheckpointJob] | None
        ] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Jobs submitted and not yet collected (main thread only).
        self.outstanding = 0

    def submit(
        self, partition: Partition, log: PartitionLog, job: CheckpointJob
    ) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="checkpoint-flusher", daemon=True
            )
            self._thread.start()
        self.outstanding += 1
        self._jobs.put((partition, log, job))

    def _run(self) -> None:
        # Ends at the None that stop() queues.
        while (item := self._jobs.get()) is not None:
            partition, log, job = item
            failure: LogStorageError | None = None
            try:
                log.run_checkpoint(job)
            except LogStorageError as exc:
                failure = exc
            except Exception as exc:  # reported, never lost with the thread
                failure = LogStorageError(
                    partition.topic_partition,
                    "checkpoint",
                    OSError(f"{type(exc).__name__}: {exc}"),
                )
                event(
                    logger,
                    logging.ERROR,
                    "writer.checkpoint_fault",
                    exc_info=True,
                    topic_partition=partition.topic_partition,
                    error=exc,
                )
            self._done.put((partition, log, failure))

    def collect(self, timeout_s: float = 0.0) -> list[_Done]:
        """The reports that arrived; with ``timeout_s``, wait that long at
        most for the first one when none is there yet."""
        reports: list[_Done] = []
        if timeout_s > 0 and self.outstanding:
            try:
                reports.append(self._done.get(timeout=timeout_s))
            except queue.Empty:
                return reports
        # Bounded: at most the jobs submitted.
        while True:
            try:
                reports.append(self._done.get_nowait())
            except queue.Empty:
                break
        self.outstanding -= len(reports)
        return reports

    def stop(self, timeout_s: float = FLUSHER_STOP_S) -> bool:
        """Let the thread finish the queued jobs and end; False when it did
        not end within ``timeout_s``."""
        thread = self._thread
        if thread is None:
            return True
        self._jobs.put(None)
        thread.join(timeout_s)
        self._thread = None
        return not thread.is_alive()


class PartitionSet:
    """Every partition the writer appends to; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        rows: TableWriter,
        commits: CommitRecord,
        metadata: MetadataStore | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_progress: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_progress`` is called after each partition opens (the process
        beats its heartbeat there: opening many logs can take a while)."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.rows = rows
        self.commits = commits
        self.metadata = metadata or MetadataStore(
            self.data_dir, settings.max_partitions
        )
        self.clock = clock
        self.on_progress = on_progress
        self.capacity = rows.table.rows
        self.by_index: dict[int, Partition] = {}
        # Per index: the log start offset for completions (-1: unknown).
        self.log_start_offsets: npt.NDArray[np.int64] = np.full(
            self.capacity, -1, np.int64
        )
        self._row_states: npt.NDArray[np.int64] = rows.table.table["state"]
        self._row_versions: npt.NDArray[np.int64] = rows.table.table["segments_version"]
        self._next_poll = 0.0
        self._next_retention = clock() + RETENTION_INTERVAL_S
        self._next_checkpoint = 0.0
        self.flusher = CheckpointFlusher()

    # -- start ----------------------------------------------------------------

    def start(self) -> int:
        """Open every partition of the metadata and fill its row; rows the
        metadata no longer names are set unused. Returns the partitions."""
        self.metadata.load()
        wanted = {index: (topic, n) for index, topic, n in self.metadata.partitions()}
        stale = np.flatnonzero(self._row_states != STATE_UNUSED).tolist()
        for index in stale:
            if index not in wanted:
                self._clear_row(index)
        for index, (topic, number) in sorted(wanted.items()):
            self._add(index, topic, number, at_start=True)
        self._next_poll = self.clock() + METADATA_POLL_S
        return len(self.by_index)

    def get(self, index: int) -> Partition | None:
        return self.by_index.get(index)

    # -- metadata -------------------------------------------------------------

    def refresh_metadata(self, announced_version: int = 0, *, now: float) -> bool:
        """Reload the metadata if it changed: when the control process
        announced a newer version, or (at most every METADATA_POLL_S) when
        the stored version differs. Returns whether it reloaded."""
        if announced_version <= self.metadata.version:
            if now < self._next_poll:
                return False
            self._next_poll = now + METADATA_POLL_S
        return self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Reload when the stored version differs from the loaded one."""
        stored = self.metadata.stored_version()
        if stored == self.metadata.version:
            return False
        try:
            self.metadata.load()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            event(
                logger,
                logging.WARNING,
                "writer.metadata_unreadable",
                path=self.metadata.path,
                error=exc,
                action="keeping the loaded version",
            )
            return False
        self._apply_metadata()
        return True

    def _apply_metadata(self) -> None:
        wanted = {index: (topic, n) for index, topic, n in self.metadata.partitions()}
        for index, partition in list(self.by_index.items()):
            if wanted.get(index) != (partition.topic, partition.number):
                self._remove(partition)
        for index, (topic, number) in sorted(wanted.items()):
            partition_now = self.by_index.get(index)
            if partition_now is None:
                self._add(index, topic, number, at_start=False)
                continue
            config = self._config_of(topic)
            if config != partition_now.config:
                partition_now.config = config
                if partition_now.log is not None:
                    partition_now.log.config = config
                event(
                    logger,
                    logging.INFO,
                    "writer.config_changed",
                    topic_partition=partition_now.topic_partition,
                    config=dataclasses.asdict(config),
                )
        event(
            logger,
            logging.INFO,
            "writer.metadata_loaded",
            version=self.metadata.version,
            partitions=len(self.by_index),
        )

    def _config_of(self, topic: str) -> LogConfig:
        entry = self.metadata.topics.get(topic)
        return log_config(self.settings, entry.configs if entry else {})

    def _add(self, index: int, topic: str, number: int, *, at_start: bool) -> None:
        if not 0 <= index < self.capacity:
            event(
                logger,
                logging.ERROR,
                "writer.partition_index_out_of_range",
                topic_partition=f"{topic}-{number}",
                index=index,
                rows=self.capacity,
            )
            return
        if not at_start:
            # A new partition: nothing this process committed applies to it.
            self.commits.reset(index)
        partition = Partition(index, topic, number, self._config_of(topic))
        if self._row_states[index] != STATE_UNUSED:
            partition.version_base = int(self._row_versions[index]) + 1
        self.by_index[index] = partition
        self._open(partition, self.clock())
        self.on_progress()

    def _remove(self, partition: Partition) -> None:
        del self.by_index[partition.index]
        directory = self.data_dir / partition.topic_partition
        if partition.log is not None:
            directory = partition.log.directory
            with contextlib.suppress(OSError):  # the files are deleted next
                partition.log.close(checkpoint=False)
        shutil.rmtree(directory, ignore_errors=True)
        if directory.exists():
            event(
                logger,
                logging.WARNING,
                "writer.directory_not_removed",
                topic_partition=partition.topic_partition,
                directory=directory,
                action="delete it by hand; the writer no longer uses it",
            )
        self.commits.reset(partition.index)
        self._clear_row(partition.index)
        event(
            logger,
            logging.INFO,
            "writer.partition_removed",
            topic_partition=partition.topic_partition,
            index=partition.index,
            directory=directory,
        )

    def _clear_row(self, index: int) -> None:
        self.rows.update(
            index,
            log_start_offset=0,
            log_end_offset=0,
            high_watermark=0,
            high_watermark_segment=0,
            high_watermark_position=0,
            segments_version=0,
            size_bytes=0,
            state=STATE_UNUSED,
        )
        self.log_start_offsets[index] = -1

    # -- opening and health ---------------------------------------------------

    def _open(self, partition: Partition, now: float) -> bool:
        """Open (recover) the log, cut it back to the commit record, load
        producer state, publish the row. False (and offline) on failure."""
        try:
            log = PartitionLog.open(
                self.data_dir, partition.topic, partition.number, partition.config
            )
        except (OSError, LogStorageError) as exc:
            self._go_offline(partition, exc, now, reopen=True)
            return False
        partition.log = log
        try:
            self._cut_to_commit(partition, log)
            partition.producers, _ = load_producer_state(log, self.on_progress)
        except (OSError, LogStorageError) as exc:
            self._go_offline(partition, exc, now, reopen=True)
            return False

        partition.state = STATE_ONLINE
        partition.reopen_delay = REOPEN_FIRST_S
        partition.sized_version = -1
        self.publish(partition)
        return True

    def _cut_to_commit(self, partition: Partition, log: PartitionLog) -> None:
        committed = self.commits.committed(partition.index)
        if committed is None:
            # Nothing committed under this supervisor: the files are the truth.
            self.commits.applied[partition.index] = NOTHING_APPLIED
            self.commits.commit(partition.index, log.log_end_offset)
            partition.committed_end = log.log_end_offset
            return

        end = log.log_end_offset
        if end > committed.log_end_offset:
            log.truncate_to(committed.log_end_offset)
            event(
                logger,
                logging.WARNING,
                "writer.uncommitted_removed",
                topic_partition=partition.topic_partition,
                from_offset=committed.log_end_offset,
                to_offset=end,
                log_end_offset=log.log_end_offset,
                reason="appended by a writer that died before committing the turn",
            )
        elif end < committed.log_end_offset:
            event(
                logger,
                logging.ERROR,
                "writer.commit_ahead_of_log",
                topic_partition=partition.topic_partition,
                committed_log_end_offset=committed.log_end_offset,
                log_end_offset=end,
                reason="committed batches are missing from the files",
            )
            self.commits.commit(partition.index, end)
        partition.committed_end = log.log_end_offset

    def fail(self, partition: Partition, exc: Exception) -> None:
        """Take ``partition`` offline after a storage failure."""
        self._go_offline(partition, exc, self.clock(), reopen=True)

    def _go_offline(
        self, partition: Partition, exc: Exception, now: float, *, reopen: bool
    ) -> None:
        # The first failure since the partition was last online is the ERROR.
        first = partition.reopen_delay == REOPEN_FIRST_S
        partition.state = STATE_OFFLINE
        partition.reopen_at = now + partition.reopen_delay
        event(
            logger,
            logging.ERROR if first else logging.WARNING,
            "writer.partition_offline" if first else "writer.partition_reopen_failed",
            topic_partition=partition.topic_partition,
            error=exc,
            retry_in_s=partition.reopen_delay,
        )
        partition.reopen_delay = min(partition.reopen_delay * 2, REOPEN_MAX_S)
        self.rows.update(partition.index, state=STATE_OFFLINE)

    def reopen_due(self, now: float) -> int:
        """Try to reopen offline partitions whose time has come; returns how
        many came back."""
        healed = 0
        for partition in list(self.by_index.values()):
            if partition.state != STATE_OFFLINE or now < partition.reopen_at:
                continue
            if partition.log is not None:
                # Whatever a failed close leaves, the reopen recovers.
                with contextlib.suppress(OSError):
                    partition.log.close(checkpoint=False)
                partition.log = None
            if self._open(partition, now):
                healed += 1
                event(
                    logger,
                    logging.INFO,
                    "writer.partition_online",
                    topic_partition=partition.topic_partition,
                    log_end_offset=partition.committed_end,
                )
        return healed

    # -- rows -----------------------------------------------------------------

    def publish(self, partition: Partition) -> None:
        """Write the partition's row from its log (online partitions)."""
        log = partition.log
        assert log is not None
        version = partition.version_base + log.segments_version
        end_position = log.end_position
        if version != partition.sized_version:
            partition.sealed_bytes = log.statistics().size_bytes - end_position
            partition.sized_version = version
        end = log.log_end_offset
        start = log.log_start_offset
        self.rows.update(
            partition.index,
            log_start_offset=start,
            log_end_offset=end,
            high_watermark=end,
            high_watermark_segment=log.active_segment_base_offset,
            high_watermark_position=end_position,
            segments_version=version,
            size_bytes=partition.sealed_bytes + end_position,
            state=partition.state,
        )
        self.log_start_offsets[partition.index] = start

    # -- background -----------------------------------------------------------

    def checkpoint_due(self, now: float) -> int:
        """Collect the checkpoints the flusher finished; every flush_ms,
        hand it a job for each partition written since its last one (and
        not still in a job). Returns how many checkpoints finished."""
        finished = self.collect_checkpoints()
        if now < self._next_checkpoint:
            return finished
        self._next_checkpoint = now + self.settings.flush_ms / 1000
        for partition in self.by_index.values():
            if not partition.written or partition.checkpointing:
                continue
            log = partition.log
            if not partition.online or log is None:
                continue
            try:
                job = log.prepare_checkpoint()
            except LogStorageError as exc:
                self.fail(partition, exc)
                continue
            partition.written = False
            if job is None:
                continue
            partition.checkpointing = True
            self.flusher.submit(partition, log, job)
        return finished

    def collect_checkpoints(self, timeout_s: float = 0.0) -> int:
        """Take the flusher's reports: a failure takes its partition
        offline (unless it was reopened or removed meanwhile); a success
        snapshots changed producer state. Returns the checkpoints done."""
        done = 0
        for partition, log, failure in self.flusher.collect(timeout_s):
            current = partition.log is log and partition.online
            if partition.log is log:
                partition.checkpointing = False
            if failure is not None:
                if current:
                    self.fail(partition, failure)
                continue
            done += 1
            if current and partition.producers.changed:
                self.snapshot(partition)
        return done

    def wait_for_checkpoints(self, timeout_s: float) -> int:
        """Collect until no job is with the flusher or ``timeout_s`` passed;
        returns the checkpoints done."""
        deadline = self.clock() + timeout_s
        done = self.collect_checkpoints()
        # Bounded by the deadline.
        while self.flusher.outstanding:
            left = deadline - self.clock()
            if left <= 0:
                break
            done += self.collect_checkpoints(min(left, 0.1))
        return done

    def snapshot(self, partition: Partition) -> None:
        """Write the producer state snapshot at the log end offset; a failure
        only costs a longer replay on the next open."""
        log = partition.log
        if log is None or not partition.online:
            return
        try:
            partition.producers.write_snapshot(log.directory, log.log_end_offset)
        except OSError as exc:
            event(
                logger,
                logging.WARNING,
                "producer_state.snapshot_failed",
                topic_partition=partition.topic_partition,
                error=exc,
                action="the next open replays batch headers from an older one",
            )

    def retention_due(self, now: float, now_ms: int) -> int:
        """Every RETENTION_INTERVAL_S: delete expired segments. Returns the
        number of segments deleted."""
        if now < self._next_retention:
            return 0
        self._next_retention = now + RETENTION_INTERVAL_S
        deleted = 0
        for partition in self.by_index.values():
            if not partition.online:
                continue
            assert partition.log is not None
            try:
                gone = partition.log.enforce_retention(now_ms)
            except OSError as exc:
                self.fail(partition, exc)
                continue
            if gone:
                deleted += len(gone)
                partition.producers.drop_before(partition.log.log_start_offset)
                self.publish(partition)
        return deleted

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Clean close: let the flusher finish, then snapshot producer
        state, checkpoint and close every log. Rows stay as they are (a
        restarted writer reads them)."""
        if not self.flusher.stop():
            event(
                logger,
                logging.ERROR,
                "writer.flusher_stuck",
                jobs=self.flusher.outstanding,
                waited_s=FLUSHER_STOP_S,
                action="closing the logs anyway; each close waits for its sync",
            )
        self.collect_checkpoints()
        for partition in self.by_index.values():
            log = partition.log
            if log is None:
                continue
            self.snapshot(partition)
            try:
                log.close(checkpoint=partition.online)
            except (OSError, LogStorageError) as exc:
                event(
                    logger,
                    logging.ERROR,
                    "writer.close_failed",
                    topic_partition=partition.topic_partition,
                    error=exc,
                )
            partition.log = None
        self.by_index.clear()
