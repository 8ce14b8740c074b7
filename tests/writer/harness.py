"""Plays supervisor and net processes around one real writer process.

:class:`WriterHarness` does what the supervisor does for the writer alone:
locks a temporary data directory, creates the broker's shared memory under
a unique prefix, writes topic metadata with :class:`MetadataStore` (as the
control process would) and starts ``python -m broker.writer --plan ...``
with the same plan and inherited eventfds the supervisor passes. It stops
the writer by its PID (SIGTERM, or SIGKILL for crash tests).

:class:`NetSide` plays the net processes: it sends batches (or
DeleteRecords commands) through the produce rings and reads completions from
the completion rings. It works against the process or against an in-process
:class:`WriterCore` alike.

Batches are built with ``build_batch`` and carry a test id in their
baseTimestamp (``TIMESTAMP_BASE + id``), which the CRC covers, so
:func:`read_log` can tell which batch is where without decoding records.

Every wait here is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from broker.control.metadata import MetadataStore
from broker.layout import (
    KIND_BATCH,
    KIND_DELETE_RECORDS,
    WRITER_SLOT,
    BrokerMemory,
    slot_count,
)
from broker.log.batch import build_batch
from broker.process import ProcessPlan
from broker.settings import Settings, load_settings
from broker.supervisor import DataDirLock
from shm.region import unlink_stale
from shm.ring import RingReceiver, RingSender

ROOT = Path(__file__).resolve().parents[2]

TIMESTAMP_BASE = 1_600_000_000_000

DEFAULT_SETTINGS = {
    "NET_PROCS": "2",
    "RING_BYTES": str(1 << 20),
    "MAX_PARTITIONS": "64",
    "RETENTION_MS": "-1",
    "FLUSH_MS": "60000",
    "LOG_LEVEL": "INFO",
}


def make_settings(data_dir: Path, **overrides: Any) -> tuple[Settings, dict[str, str]]:
    """Settings for a test broker, and the environment that yields them."""
    values = {**DEFAULT_SETTINGS, "DATA_DIR": str(data_dir)}
    values.update({key.upper(): str(value) for key, value in overrides.items()})
    environ = {f"RINGBUS_{key}": value for key, value in values.items()}
    return load_settings(environ), environ


def make_batch(
    test_id: int,
    records: int = 1,
    value_size: int = 16,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytearray:
    """A valid batch whose baseTimestamp carries ``test_id``."""
    timestamp = TIMESTAMP_BASE + test_id
    value = bytes([test_id % 251]) * value_size
    return build_batch(
        [(None, value, [], timestamp) for _ in range(records)],
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
    )


@dataclass(frozen=True)
class Completion:
    request_id: int
    partition: int
    base_offset: int
    log_start_offset: int
    error_code: int
    log_append_time: int = -1


@dataclass(frozen=True)
class StoredBatch:
    segment: int
    position: int
    base_offset: int
    last_offset: int
    test_id: int
    size: int


def read_log(data_dir: Path, topic: str, partition: int) -> list[StoredBatch]:
    """Every batch in the partition's ``.log`` files, in file order, read
    with plain struct calls (independent of the code under test). Raises
    AssertionError if a file ends inside a batch."""
    directory = data_dir / f"{topic}-{partition}"
    found = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        position = 0
        while position + 12 <= len(data):
            base_offset, batch_length = struct.unpack_from(">qi", data, position)
            size = batch_length + 12
            assert position + size <= len(data), f"{path} ends inside a batch"
            (last_delta,) = struct.unpack_from(">i", data, position + 23)
            (timestamp,) = struct.unpack_from(">q", data, position + 27)
            found.append(
                StoredBatch(
                    int(path.stem),
                    position,
                    base_offset,
                    base_offset + last_delta,
                    timestamp - TIMESTAMP_BASE,
                    size,
                )
            )
            position += size
        assert position == len(data), f"{path} ends inside a batch"
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


class NetSide:
    """The net processes' ends of every produce and completion ring."""

    def __init__(self, memory: BrokerMemory) -> None:
        self.memory = memory
        self.senders: list[RingSender] = [
            ring.sender(memory.writer_wake, memory.net_wakes[number])
            for number, ring in enumerate(memory.produce_rings)
        ]
        self.receivers: list[RingReceiver] = [
            ring.receiver(memory.net_wakes[number], memory.writer_wake)
            for number, ring in enumerate(memory.completion_rings)
        ]
        self.completions: dict[int, Completion] = {}
        self.duplicates = 0
        self._next_request = 1

    def new_request_id(self) -> int:
        request_id = self._next_request
        self._next_request += 1
        return request_id

    def send(
        self,
        ring: int,
        partition: int,
        batches: list[bytes | bytearray],
        *,
        acks: int = 1,
        publish: bool = True,
        timeout_s: float = 10.0,
    ) -> list[int]:
        """Put ``batches`` for ``partition`` into produce ring ``ring`` with
        one reservation; returns their request ids."""
        sender = self.senders[ring]
        lengths = [len(batch) for batch in batches]
        reservation = sender.reserve_batch(len(batches), lengths)
        deadline = time.monotonic() + timeout_s
        while reservation is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"produce ring {ring} stayed full")
            sender.publish()
            sender.wait_for_space(sum(lengths), len(batches), timeout=0.05)
            reservation = sender.reserve_batch(len(batches), lengths)
        ids = [self.new_request_id() for _ in batches]
        reservation.data[:] = b"".join(batches)
        rows = reservation.descriptors
        rows["request_id"] = ids
        rows["base_offset"] = -1
        rows["argument"] = 0
        rows["partition"] = partition
        rows["record_count"] = [
            struct.unpack_from(">i", batch, 57)[0] if len(batch) >= 61 else 0
            for batch in batches
        ]
        rows["acks"] = acks
        rows["kind"] = KIND_BATCH
        rows["error_code"] = 0
        if publish:
            sender.publish()
        return ids

    def delete_records(self, ring: int, partition: int, offset: int) -> int:
        """Send a DeleteRecords command; returns its request id."""
        sender = self.senders[ring]
        reservation = sender.reserve_batch(1)
        assert reservation is not None, "produce ring full"
        request_id = self.new_request_id()
        rows = reservation.descriptors
        rows["request_id"] = request_id
        rows["base_offset"] = -1
        rows["argument"] = offset
        rows["partition"] = partition
        rows["record_count"] = 0
        rows["acks"] = 1
        rows["kind"] = KIND_DELETE_RECORDS
        rows["error_code"] = 0
        sender.publish()
        return request_id

    def drain(self) -> int:
        """Read every posted completion; returns how many."""
        taken = 0
        for receiver in self.receivers:
            for _ in range(2):
                rows = receiver.receive()
                if not len(rows):
                    break
                for request_id, partition, base, start, error, append_time in zip(
                    rows["request_id"].tolist(),
                    rows["partition"].tolist(),
                    rows["base_offset"].tolist(),
                    rows["log_start_offset"].tolist(),
                    rows["error_code"].tolist(),
                    rows["log_append_time"].tolist(),
                    strict=True,
                ):
                    completion = Completion(
                        request_id, partition, base, start, error, append_time
                    )
                    previous = self.completions.get(request_id)
                    if previous is not None:
                        # A restarted writer may post an answer twice; it
                        # must be the same answer.
                        assert previous == completion, (previous, completion)
                        self.duplicates += 1
                    self.completions[request_id] = completion
                taken += len(rows)
                receiver.release(len(rows))
        return taken

    def wait_for(
        self,
        request_ids: list[int],
        timeout_s: float = 20.0,
        pump: Callable[[], object] | None = None,
    ) -> list[Completion]:
        """Completions of ``request_ids``; ``pump`` runs a writer turn when
        the writer is in-process."""
        deadline = time.monotonic() + timeout_s
        while True:
            if pump is not None:
                pump()
            self.drain()
            missing = [i for i in request_ids if i not in self.completions]
            if not missing:
                return [self.completions[i] for i in request_ids]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(missing)} of {len(request_ids)} completions missing"
                    f" after {timeout_s} s (first: {missing[:5]})"
                )
            if pump is None:
                self.memory.net_wakes[0].wait(0.01)

    def close(self) -> None:
        self.senders.clear()
        self.receivers.clear()


class WriterProcess:
    """One ``python -m broker.writer`` started as the supervisor starts it."""

    def __init__(self, harness: WriterHarness) -> None:
        self.harness = harness
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> WriterProcess:
        harness = self.harness
        memory = harness.memory
        fds = {"lock": harness.lock.fd, **memory.notifier_fds()}
        plan = ProcessPlan(
            role="writer",
            index=0,
            slot=WRITER_SLOT,
            prefix=harness.prefix,
            supervisor_pid=os.getpid(),
            fds=fds,
        )
        marker = harness.log_text().count("writer.resumed")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGBUS_")}
        env.update(harness.environ)
        with harness.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "broker.writer", "--plan", plan.to_argument()],
                pass_fds=tuple(fds.values()),
                process_group=0,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        memory.register_process(WRITER_SLOT, "writer", 0, self.process.pid)
        wait_until(
            lambda: (
                self._exited_early()
                or harness.log_text().count("writer.resumed") > marker
            ),
            timeout_s,
            "the writer to open its partitions",
        )
        return self

    def _exited_early(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"writer exited with {self.process.returncode}:\n"
                + self.harness.log_text()[-4000:]
            )
        return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """kill -9, as a crash would."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL after ``timeout_s``."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class WriterHarness:
    """Shared memory, metadata and a data directory for one writer."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "writer.log"
        self.settings, self.environ = make_settings(self.data_dir, **settings)
        self.prefix = f"rbt{secrets.token_hex(5)}_"
        self.lock = DataDirLock(self.data_dir)
        self.lock.acquire(5.0)
        self.metadata = MetadataStore(self.data_dir, self.settings.max_partitions)
        self.metadata.load()
        self.memory = BrokerMemory.create(
            self.settings, self.prefix, slot_count(self.settings)
        )
        self.net = NetSide(self.memory)
        self.writers: list[WriterProcess] = []

    def create_topic(
        self, name: str, partitions: int, configs: dict[str, str] | None = None
    ) -> list[int]:
        """Create a topic as the control process would; its partition indexes."""
        return list(self.metadata.create_topic(name, partitions, configs).partitions)

    def start_writer(self) -> WriterProcess:
        writer = WriterProcess(self).start()
        self.writers.append(writer)
        return writer

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def counter(self, name: str, slot: int = WRITER_SLOT) -> int:
        counters = self.memory.counters
        return int(counters.counters[slot, counters.counter_id(name)])

    def row(self, index: int) -> dict[str, int]:
        table = self.memory.partitions
        return dict(zip(table.field_names, table.read_row(index), strict=True))

    def restart_memory(self) -> None:
        """A full broker stop and start: fresh shared memory (zeroed rows and
        commit record, empty rings). The writer must be stopped."""
        assert all(
            w.process is None or w.process.poll() is not None for w in self.writers
        )
        self.net.close()
        self.memory.close()
        self.memory.unlink()
        self.prefix = f"rbt{secrets.token_hex(5)}_"
        self.memory = BrokerMemory.create(
            self.settings, self.prefix, slot_count(self.settings)
        )
        self.net = NetSide(self.memory)

    def close(self) -> None:
        for writer in self.writers:
            writer.cleanup()
        self.net.close()
        with contextlib.suppress(Exception):
            self.memory.close()
        self.memory.unlink()
        unlink_stale(self.prefix, include_live_owners=True)
        os.close(self.lock.fd)


@contextlib.contextmanager
def writer_harness(root: Path, **settings: Any) -> Iterator[WriterHarness]:
    harness = WriterHarness(root, **settings)
    try:
        yield harness
    finally:
        harness.close()


def offsets_are_contiguous(batches: list[StoredBatch]) -> bool:
    expected = batches[0].base_offset if batches else 0
    for batch in batches:
        if batch.base_offset != expected:
            return False
        expected = batch.last_offset + 1
    return True


def ids_of(batches: list[StoredBatch]) -> np.ndarray:
    return np.array([batch.test_id for batch in batches], dtype=np.int64)


class InProcessBroker:
    """Shared memory, metadata and a :class:`WriterCore` in this process,
    for tests of the turn logic that need to stop it at an exact point.

    ``restart_core`` abandons the current core without closing anything (as
    a killed process leaves it) and builds a new one on a second attachment
    of the same shared memory, as a restarted writer process would.
    """

    def __init__(self, root: Path, **settings: Any) -> None:
        from broker.writer_core import WriterCore

        self._core_class = WriterCore
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings, _ = make_settings(self.data_dir, **settings)
        self.prefix = f"rbt{secrets.token_hex(5)}_"
        self.metadata = MetadataStore(self.data_dir, self.settings.max_partitions)
        self.metadata.load()
        self.memory = BrokerMemory.create(
            self.settings, self.prefix, slot_count(self.settings)
        )
        self.net = NetSide(self.memory)
        self.attachments: list[BrokerMemory] = []
        self.abandoned: list[Any] = []
        self.core: Any = None

    def create_topic(
        self, name: str, partitions: int, configs: dict[str, str] | None = None
    ) -> list[int]:
        return list(self.metadata.create_topic(name, partitions, configs).partitions)

    def start_core(self) -> Any:
        memory = BrokerMemory.attach(
            self.settings, self.prefix, self.memory.notifier_fds()
        )
        self.attachments.append(memory)
        self.core = self._core_class.from_memory(
            memory, self.settings, slot=memory.counters.slot(WRITER_SLOT)
        )
        self.core.start()
        return self.core

    def restart_core(self) -> Any:
        self.abandoned.append(self.core)
        return self.start_core()

    def turn(self) -> int:
        return int(self.core.turn())

    def send_and_turn(self, *args: Any, **kwargs: Any) -> list[Completion]:
        ids = self.net.send(*args, **kwargs)
        return self.net.wait_for(ids, timeout_s=5.0, pump=self.turn)

    def row(self, index: int) -> dict[str, int]:
        table = self.memory.partitions
        return dict(zip(table.field_names, table.read_row(index), strict=True))

    def close(self) -> None:
        if self.core is not None:
            with contextlib.suppress(Exception):
                self.core.close()
        for core in self.abandoned:
            for partition in list(core.partitions.by_index.values()):
                if partition.log is not None:
                    with contextlib.suppress(Exception):
                        partition.log.close(checkpoint=False)
            core._header_windows.clear()
            core._datas.clear()
        self.net.close()
        for memory in self.attachments:
            with contextlib.suppress(Exception):
                memory.close()
        with contextlib.suppress(Exception):
            self.memory.close()
        self.memory.unlink()
        unlink_stale(self.prefix, include_live_owners=True)
