"""Ring: a model-checked single-process state machine, edge cases, and real
sender/receiver processes (a million descriptors, backpressure, kill -9)."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shm.notify import Notifier
from shm.region import RegionError, RegionLayoutError, unlink_stale
from shm.ring import Ring, RingError
from tests.shm.shm_peers import FIELDS, receive_sequence
from tests.shm.support import Peers

COMPLETION_FIELDS = np.dtype(
    [
        ("request_slot", np.int32),
        ("partition", np.int32),
        ("base_offset", np.int64),
        ("error_code", np.int16),
    ]
)


def _payload(seq: int, size: int) -> bytes:
    return bytes((seq * 7 + i) % 256 for i in range(size))


class _Endpoints:
    """A ring with both sides in this process."""

    def __init__(self, name: str, capacity: int, data_bytes: int, fields=FIELDS):
        self.ring = Ring.create(name, fields, capacity=capacity, data_bytes=data_bytes)
        self.data_ready = Notifier.create()
        self.space_ready = Notifier.create()
        # Long re-check slices: a wait must end by a wake-up, not a timeout.
        self.sender = self.ring.sender(self.data_ready, self.space_ready, 10.0)
        self.receiver = self.ring.receiver(self.data_ready, self.space_ready, 10.0)

    def close(self) -> None:
        self.ring.close()
        self.ring.unlink()
        self.data_ready.close()
        self.space_ready.close()


@pytest.fixture
def endpoints(prefix: str):
    made: list[_Endpoints] = []

    def make(capacity: int, data_bytes: int, fields=FIELDS) -> _Endpoints:
        made.append(_Endpoints(prefix + f"r{len(made)}", capacity, data_bytes, fields))
        return made[-1]

    yield make
    for item in made:
        item.close()


# -- model-checked interleavings --------------------------------------------


class RingMachine(RuleBasedStateMachine):
    """Random interleavings of reserve, publish, discard, receive, release
    against a model of what each side must see. After every step, every
    payload not yet released must still hold its bytes (no reservation may
    overlap live data), and a refusal is only allowed while something is
    outstanding."""

    @initialize(
        capacity=st.integers(1, 12), data_bytes=st.sampled_from([0, 1, 7, 64, 150, 300])
    )
    def create(self, capacity: int, data_bytes: int) -> None:
        self.prefix = f"rbh{secrets.token_hex(5)}_"
        self.sides = _Endpoints(self.prefix + "ring", capacity, data_bytes)
        self.capacity = capacity
        self.data_bytes = data_bytes
        self.data = self.sides.ring.data
        self.next_seq = 0
        # (seq, payload, position) per state.
        self.unpublished: list[tuple[int, bytes, int]] = []
        self.published: deque[tuple[int, bytes, int]] = deque()
        self.received: deque[tuple[int, bytes, int]] = deque()
        self.refused: tuple[int, int] | None = None

    def teardown(self) -> None:
        if hasattr(self, "sides"):
            del self.data
            self.sides.close()
            unlink_stale(self.prefix, include_live_owners=True)

    def _outstanding(self) -> int:
        return len(self.unpublished) + len(self.published) + len(self.received)

    def _refusal(self, count: int, nbytes: int) -> None:
        assert self._outstanding() > 0, "refused although the ring is empty"
        self.refused = (count, nbytes)

    def _fill(self, reservation, sizes: list[int]) -> None:
        offset = 0
        rows = reservation.descriptors
        for index, size in enumerate(sizes):
            seq = self.next_seq
            self.next_seq += 1
            payload = _payload(seq, size)
            reservation.data[offset : offset + size] = payload
            rows[index]["seq"] = seq
            position = int(rows[index]["data_position"])
            assert int(rows[index]["data_length"]) == size
            assert position == reservation.start + offset
            assert bytes(reservation.payload(index)) == payload
            self.unpublished.append((seq, payload, position))
            offset += size

    @rule(size=st.integers(0, 120))
    def reserve_one(self, size: int) -> None:
        if size > self.data_bytes:
            with pytest.raises(RingError, match=r"never fit|descriptor-only"):
                self.sides.sender.reserve(size)
            return
        reservation = self.sides.sender.reserve(size)
        if reservation is None:
            self._refusal(1, size)
            return
        self._fill(reservation, [size])

    @rule(sizes=st.lists(st.integers(0, 60), min_size=1, max_size=8))
    def reserve_batch(self, sizes: list[int]) -> None:
        if self.data_bytes == 0:
            sizes = [0] * len(sizes)
        if len(sizes) > self.capacity or sum(sizes) > self.data_bytes:
            with pytest.raises(RingError):
                self.sides.sender.reserve_batch(len(sizes), sizes)
            return
        lengths = None if not any(sizes) else np.array(sizes)
        reservation = self.sides.sender.reserve_batch(len(sizes), lengths)
        if reservation is None:
            self._refusal(len(sizes), sum(sizes))
            return
        self._fill(reservation, sizes)

    @rule(size=st.integers(0, 120))
    def put_one(self, size: int) -> None:
        if self.data_bytes == 0:
            size = 0
        seq = self.next_seq
        payload = _payload(seq, size)
        if size > self.data_bytes:
            with pytest.raises(RingError, match=r"never fit"):
                self.sides.sender.put(payload, seq, 5)
            return
        head_before = self.sides.sender._head
        if not self.sides.sender.put(payload, seq, 5):
            assert self.sides.sender._head == head_before
            self._refusal(1, size)
            return
        self.next_seq += 1
        slot = head_before % self.capacity
        row = self.sides.ring.descriptors[slot]
        assert (int(row["seq"]), int(row["tag"])) == (seq, 5)
        assert int(row["data_length"]) == size
        position = int(row["data_position"])
        assert bytes(self.data[position : position + size]) == payload
        self.unpublished.append((seq, payload, position))

    @rule()
    def publish(self) -> None:
        assert self.sides.sender.publish() == len(self.unpublished)
        self.published.extend(self.unpublished)
        self.unpublished.clear()

    @rule()
    def discard(self) -> None:
        assert self.sides.sender.discard() == len(self.unpublished)
        self.unpublished.clear()

    @rule(max_count=st.none() | st.integers(1, 12))
    def receive(self, max_count: int | None) -> None:
        rows = self.sides.receiver.receive(max_count)
        count = len(rows)
        if not self.published:
            assert count == 0
            return
        assert 1 <= count <= min(len(self.published), max_count or count)
        payloads = self.sides.receiver.payloads(rows)
        for index in range(count):
            seq, payload, position = self.published.popleft()
            assert int(rows[index]["seq"]) == seq
            assert int(rows[index]["data_position"]) == position
            assert bytes(payloads[index]) == payload
            assert bytes(self.sides.receiver.payload(rows[index])) == payload
            self.received.append((seq, payload, position))

    @precondition(lambda self: bool(self.received))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(1, len(self.received)))
        self.sides.receiver.release(count)
        for _ in range(count):
            self.received.popleft()

    @precondition(lambda self: self.refused is not None)
    @rule()
    def drain_then_retry_refused(self) -> None:
        """Once everything is released, the refused reservation must fit."""
        self.publish()
        while self.published:
            self.receive(None)
        self.sides.receiver.release(len(self.received))
        self.received.clear()
        assert self.refused is not None
        count, nbytes = self.refused
        self.refused = None
        sender = self.sides.sender
        if count == 1:
            assert sender.reserve(nbytes) is not None
        else:
            assert sender.reserve_batch(count, [nbytes] + [0] * (count - 1)) is not None
        sender.discard()

    @invariant()
    def live_payloads_intact(self) -> None:
        if not hasattr(self, "sides"):
            return
        for group in (self.unpublished, self.published, self.received):
            for seq, payload, position in group:
                found = bytes(self.data[position : position + len(payload)])
                assert found == payload, f"payload {seq} overwritten"
        statistics = self.sides.ring.statistics()
        assert 0 <= statistics.head - statistics.tail <= self.capacity
        assert statistics.head - statistics.tail == len(self.published) + len(
            self.received
        )


TestRingMachine = RingMachine.TestCase
TestRingMachine.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- edge cases -----------------------------------------------------------------


def test_ring_payload_skips_to_start_when_it_does_not_fit_before_end(endpoints) -> None:
    sides = endpoints(capacity=4, data_bytes=100)
    first = sides.sender.reserve(60)
    assert first is not None and first.start == 0
    del first
    sides.sender.publish()
    assert len(sides.receiver.receive()) == 1
    sides.receiver.release(1)

    second = sides.sender.reserve(60)

    assert second is not None
    assert second.start == 0
    row = second.descriptors[0]
    assert (int(row["data_position"]), int(row["data_end"])) == (0, 160)
    del second, row
    sides.sender.publish()
    statistics = sides.ring.statistics()
    assert (statistics.data_head, statistics.data_tail) == (160, 60)
    sides.receiver.receive()
    sides.receiver.release(1)
    assert sides.ring.statistics().data_tail == 160


def test_ring_reserve_refused_when_bytes_full_until_released(endpoints) -> None:
    sides = endpoints(capacity=8, data_bytes=100)
    assert sides.sender.reserve(70) is not None
    sides.sender.publish()

    assert sides.sender.reserve(40) is None
    assert sides.sender.has_space(30)
    assert not sides.sender.has_space(31)
    assert sides.ring.statistics().sender_refusals == 1

    sides.receiver.receive()
    sides.receiver.release(1)
    assert sides.sender.reserve(40) is not None


def test_ring_reserve_refused_when_descriptors_full(endpoints) -> None:
    sides = endpoints(capacity=2, data_bytes=1000)
    assert sides.sender.reserve(1) is not None
    assert sides.sender.reserve(1) is not None
    assert sides.sender.reserve(1) is None
    assert sides.sender.reserve_batch(2, [1, 1]) is None
    sides.sender.publish()
    sides.receiver.receive()
    sides.receiver.release(1)
    assert sides.sender.reserve(1) is not None


def test_ring_descriptor_only_ring_carries_batches(endpoints) -> None:
    sides = endpoints(capacity=8, data_bytes=0, fields=COMPLETION_FIELDS)
    reservation = sides.sender.reserve_batch(5)
    assert reservation is not None and len(reservation.data) == 0
    reservation.descriptors["request_slot"] = np.arange(5)
    reservation.descriptors["base_offset"] = np.arange(5) * 1000
    reservation.descriptors["error_code"] = [0, 0, 6, 0, 0]
    del reservation
    assert sides.sender.publish() == 5

    rows = sides.receiver.receive()

    assert rows["request_slot"].tolist() == [0, 1, 2, 3, 4]
    assert rows["base_offset"].tolist() == [0, 1000, 2000, 3000, 4000]
    assert rows["error_code"].tolist() == [0, 0, 6, 0, 0]
    del rows
    sides.receiver.release(5)
    with pytest.raises(RingError, match="descriptor-only"):
        sides.sender.reserve(3)


def test_ring_batch_rows_arrive_in_order_when_they_wrap(endpoints) -> None:
    sides = endpoints(capacity=8, data_bytes=1024)
    for _ in range(6):
        assert sides.sender.reserve(4) is not None
    sides.sender.publish()
    sides.receiver.receive()
    sides.receiver.release(6)

    reservation = sides.sender.reserve_batch(4, [10, 20, 30, 40])
    assert reservation is not None
    reservation.descriptors["seq"] = [100, 101, 102, 103]
    reservation.data[:] = bytes(range(100))
    del reservation
    sides.sender.publish()

    before_wrap = sides.receiver.receive()
    after_wrap = sides.receiver.receive()
    seqs = before_wrap["seq"].tolist() + after_wrap["seq"].tolist()
    payloads = sides.receiver.payloads(before_wrap) + sides.receiver.payloads(
        after_wrap
    )
    assert (len(before_wrap), len(after_wrap)) == (2, 2)
    assert seqs == [100, 101, 102, 103]
    assert [bytes(p) for p in payloads] == [
        bytes(range(0, 10)),
        bytes(range(10, 30)),
        bytes(range(30, 60)),
        bytes(range(60, 100)),
    ]


def test_ring_put_fills_descriptor_and_payload_when_published(endpoints) -> None:
    sides = endpoints(capacity=4, data_bytes=100)

    assert sides.sender.put(b"abc", 10, 1)
    assert sides.sender.put(bytearray(b"defgh"), 11, 2)
    assert sides.sender.put(memoryview(np.arange(2, dtype=np.int32)), 12, 3)
    assert len(sides.receiver.receive()) == 0
    assert sides.sender.publish() == 3

    rows = sides.receiver.receive()
    assert rows["seq"].tolist() == [10, 11, 12]
    assert rows["tag"].tolist() == [1, 2, 3]
    assert rows["data_length"].tolist() == [3, 5, 8]
    assert rows["data_end"].tolist() == [3, 8, 16]
    assert [bytes(p) for p in sides.receiver.payloads(rows)] == [
        b"abc",
        b"defgh",
        np.arange(2, dtype=np.int32).tobytes(),
    ]
    del rows
    sides.receiver.release(3)
    assert sides.ring.statistics().data_tail == 16


def test_ring_put_refused_when_full_until_released(endpoints) -> None:
    sides = endpoints(capacity=2, data_bytes=100)
    assert sides.sender.put(b"x" * 70, 1, 0)
    assert not sides.sender.put(b"y" * 40, 2, 0)
    assert sides.sender.put(b"z" * 30, 3, 0)
    assert not sides.sender.put(b"", 4, 0)
    assert sides.sender.unpublished == 2
    assert sides.ring.statistics().sender_refusals == 2
    sides.sender.publish()

    rows = sides.receiver.receive()
    assert rows["seq"].tolist() == [1, 3]
    del rows
    sides.receiver.release(1)

    assert sides.sender.put(b"y" * 40, 2, 0)
    sides.sender.publish()
    rows = sides.receiver.receive()
    assert rows["seq"].tolist() == [2]
    assert bytes(sides.receiver.payload(rows[0])) == b"y" * 40


def test_ring_put_rejects_bad_fields_and_reserves_nothing(endpoints) -> None:
    sides = endpoints(capacity=4, data_bytes=64)
    with pytest.raises(RingError, match=r"\('seq', 'tag'\)"):
        sides.sender.put(b"abc", 1)
    with pytest.raises(RingError, match="cannot write descriptor fields"):
        sides.sender.put(b"abc", 1, 2**40)
    with pytest.raises(RingError, match="65 bytes can never fit"):
        sides.sender.put(b"x" * 65, 1, 2)
    assert sides.sender.unpublished == 0
    assert sides.sender.publish() == 0

    # The failed calls left the slot and bytes free.
    assert sides.sender.put(b"ok", 7, 8)
    sides.sender.publish()
    rows = sides.receiver.receive()
    assert (rows["seq"].tolist(), rows["data_position"].tolist()) == ([7], [0])


def test_ring_put_descriptor_only_and_after_wrapped_batch(endpoints) -> None:
    sides = endpoints(capacity=4, data_bytes=0, fields=COMPLETION_FIELDS)
    assert sides.sender.put(b"", 9, 3, 1234, 6)
    assert sides.sender.put(b"", 10, 3, 1235, 0)
    sides.sender.publish()
    rows = sides.receiver.receive()
    names = ["request_slot", "partition", "base_offset", "error_code"]
    assert rows[names].tolist() == [(9, 3, 1234, 6), (10, 3, 1235, 0)]
    del rows
    sides.receiver.release(2)
    with pytest.raises(RingError, match="descriptor-only"):
        sides.sender.put(b"x", 1, 1, 1, 1)

    # A batch whose rows wrap (slots 2, 3, 0) is staged; a put after it
    # lands in slot 1 and all arrive in order.
    reservation = sides.sender.reserve_batch(3)
    assert reservation is not None and len(sides.sender._staged) == 1
    reservation.descriptors["request_slot"] = [1, 2, 3]
    del reservation
    assert sides.sender.put(b"", 4, 0, 0, 0)
    assert sides.sender.publish() == 4
    seqs = sides.receiver.receive()["request_slot"].tolist()
    seqs += sides.receiver.receive()["request_slot"].tolist()
    assert seqs == [1, 2, 3, 4]


def test_ring_put_refuses_field_types_it_cannot_write(endpoints) -> None:
    fields = np.dtype([("seq", np.int64), ("pair", np.int32, (2,))])
    sides = endpoints(capacity=4, data_bytes=64, fields=fields)
    with pytest.raises(RingError, match="'pair' has type"):
        sides.sender.put(b"a", 1, (2, 3))
    assert sides.sender.reserve(1) is not None


def test_ring_discard_drops_unpublished_when_called(endpoints) -> None:
    sides = endpoints(capacity=4, data_bytes=64)
    assert sides.sender.reserve(10) is not None
    sides.sender.publish()
    assert sides.sender.reserve(50) is not None
    assert sides.sender.unpublished == 1

    assert sides.sender.discard() == 1

    assert sides.sender.publish() == 0
    assert len(sides.receiver.receive()) == 1
    assert sides.ring.statistics().data_head == 10


def test_ring_rejects_misuse_with_clear_errors(endpoints, prefix: str) -> None:
    sides = endpoints(capacity=4, data_bytes=64)
    with pytest.raises(RingError, match="65 bytes can never fit"):
        sides.sender.reserve(65)
    with pytest.raises(RingError, match="cannot reserve 5 descriptors"):
        sides.sender.reserve_batch(5)
    with pytest.raises(RingError, match="lengths has shape"):
        sides.sender.reserve_batch(2, [1, 2, 3])
    with pytest.raises(RingError, match="cannot release 1 descriptors"):
        sides.receiver.release(1)
    with pytest.raises(RingError, match="already has a sender here"):
        sides.ring.sender(sides.data_ready, sides.space_ready)
    with pytest.raises(ValueError, match="reserved for the ring"):
        Ring.create(prefix + "x", [("data_length", np.int32)], 4, 64)
    with pytest.raises(RegionLayoutError, match="ring descriptor is"):
        Ring.attach(sides.ring.name, COMPLETION_FIELDS)


def test_ring_close_raises_while_payload_views_alive(prefix: str) -> None:
    ring = Ring.create(prefix + "r", FIELDS, capacity=4, data_bytes=64)
    notifier = Notifier.create()
    sender = ring.sender(notifier, notifier)
    receiver = ring.receiver(notifier, notifier)
    sender.reserve(8)
    sender.publish()
    rows = receiver.receive()
    payload = receiver.payload(rows[0])

    with pytest.raises(RegionError, match="still alive"):
        ring.close()

    del rows, payload
    ring.close()
    ring.unlink()
    notifier.close()


def test_ring_event_loop_wakes_receiver_when_sender_publishes(endpoints) -> None:
    sides = endpoints(capacity=16, data_bytes=1024)

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        loop.add_reader(sides.data_ready, woken.set)
        try:
            assert sides.receiver.arm() is False
            assert sides.ring.statistics().receiver_waiting

            def send() -> None:
                reservation = sides.sender.reserve_batch(3, [5, 5, 5])
                assert reservation is not None
                reservation.descriptors["seq"] = [7, 8, 9]
                del reservation
                sides.sender.publish()

            threading.Timer(0.02, send).start()
            await asyncio.wait_for(woken.wait(), 5.0)
            sides.receiver.disarm()
            sides.data_ready.drain()
            return sides.receiver.receive()["seq"].tolist()
        finally:
            loop.remove_reader(sides.data_ready)

    assert asyncio.run(scenario()) == [7, 8, 9]
    assert sides.ring.statistics().sender_notifies == 1
    # Data already there: arm() says so and leaves the flag down.
    sides.sender.reserve(1)
    sides.sender.publish()
    assert sides.receiver.arm() is True
    assert not sides.ring.statistics().receiver_waiting


def test_ring_sender_wait_for_space_wakes_when_receiver_releases(endpoints) -> None:
    sides = endpoints(capacity=2, data_bytes=64)
    sides.sender.reserve(40)
    sides.sender.reserve(10)
    sides.sender.publish()
    assert sides.sender.arm_for_space(30) is False
    sides.sender.disarm()

    def release_later() -> None:
        time.sleep(0.05)
        sides.receiver.receive()
        sides.receiver.release(1)

    worker = threading.Thread(target=release_later)
    worker.start()
    assert sides.sender.wait_for_space(30, 1, timeout=5.0) is True
    worker.join()
    statistics = sides.ring.statistics()
    assert statistics.receiver_notifies == 1
    assert statistics.sender_backstop_wakeups == 0
    assert sides.sender.wait_for_space(64, 1, timeout=0.01) is False


# -- real processes ---------------------------------------------------------------


def _ring_with_notifiers(name: str, capacity: int, data_bytes: int):
    ring = Ring.create(name, FIELDS, capacity=capacity, data_bytes=data_bytes)
    return ring, Notifier.create(), Notifier.create()


@pytest.mark.timeout(240)
def test_ring_moves_million_descriptors_byte_exact_across_processes(
    prefix: str, peers: Peers
) -> None:
    total, max_length, max_batch = 1_000_000, 300, 64
    ring, data_ready, space_ready = _ring_with_notifiers(prefix + "r", 512, 64 * 1024)
    fds = (data_ready.fileno(), space_ready.fileno())
    # A long recheck interval: progress must come from wake-ups, not polling.
    recheck = 10.0
    sender = peers.start(
        "ring-send",
        ring.name,
        *fds,
        recheck,
        total,
        max_length,
        max_batch,
        200,
        pass_fds=fds,
    )
    receiver = ring.receiver(data_ready, space_ready, recheck_interval=recheck)

    batches = receive_sequence(
        receiver, ring.data_array(), total, max_length, time.monotonic() + 200
    )

    peers.finish(sender, timeout=30)
    statistics = ring.statistics()
    assert statistics.head == statistics.tail == total
    assert statistics.data_head == statistics.data_tail
    # Both directions of wake-up were used, none was lost.
    assert statistics.sender_waits > 0 and statistics.receiver_notifies > 0
    assert statistics.receiver_waits > 0 and statistics.sender_notifies > 0
    assert statistics.sender_backstop_wakeups == 0
    assert statistics.receiver_backstop_wakeups == 0
    print(f"batches={batches} {statistics}")
    ring.close()


@pytest.mark.timeout(120)
def test_ring_wakes_every_wait_when_capacity_is_one(prefix: str, peers: Peers) -> None:
    """Every descriptor makes both sides wait for the other: thousands of
    handshakes, none may be lost (a lost one shows as a backstop wake-up
    after a 1 s slice)."""
    total = 5000
    ring, data_ready, space_ready = _ring_with_notifiers(prefix + "r", 1, 1024)
    fds = (data_ready.fileno(), space_ready.fileno())
    sender = peers.start(
        "ring-send", ring.name, *fds, 10.0, total, 100, 1, 100, pass_fds=fds
    )
    receiver = ring.receiver(data_ready, space_ready, recheck_interval=10.0)

    receive_sequence(receiver, ring.data_array(), total, 100, time.monotonic() + 100)

    peers.finish(sender, timeout=30)
    statistics = ring.statistics()
    assert statistics.tail == total
    assert statistics.sender_waits > 100 and statistics.receiver_waits > 100
    assert statistics.sender_backstop_wakeups == 0
    assert statistics.receiver_backstop_wakeups == 0
    ring.close()


@pytest.mark.timeout(120)
def test_ring_sender_refused_when_full_then_proceeds_after_release(
    prefix: str, peers: Peers
) -> None:
    total, max_length = 3000, 200
    ring, data_ready, space_ready = _ring_with_notifiers(prefix + "r", 32, 4096)
    fds = (data_ready.fileno(), space_ready.fileno())
    sender = peers.start(
        "ring-send", ring.name, *fds, 30.0, total, max_length, 8, 100, pass_fds=fds
    )

    # Nobody receives: the sender fills the ring, is refused and sleeps.
    deadline = time.monotonic() + 30
    while not ring.statistics().sender_waiting:
        assert time.monotonic() < deadline, "sender never waited"
        time.sleep(0.01)
    blocked = ring.statistics()
    assert blocked.sender_refusals > 0
    assert 0 < blocked.head < total
    time.sleep(0.3)
    assert ring.statistics().head == blocked.head

    # Receiving releases space; the sender resumes and nothing is missing.
    receiver = ring.receiver(data_ready, space_ready, recheck_interval=30.0)
    receive_sequence(receiver, ring.data_array(), total, max_length, deadline)

    report = json.loads(peers.finish(sender, timeout=30))
    assert report["refusals"] >= blocked.sender_refusals
    statistics = ring.statistics()
    assert statistics.tail == total
    assert statistics.receiver_notifies > 0
    assert statistics.sender_backstop_wakeups == 0
    ring.close()


def _read_log(path: Path) -> list[tuple[str, int, int]]:
    return [
        (kind, int(first), int(end))
        for kind, first, end in (line.split() for line in path.read_text().splitlines())
    ]


@pytest.mark.timeout(180)
def test_ring_receiver_resumes_from_tail_when_killed(
    prefix: str, peers: Peers, tmp_path: Path
) -> None:
    total, max_length = 60_000, 200
    ring, data_ready, space_ready = _ring_with_notifiers(prefix + "r", 256, 16 * 1024)
    fds = (data_ready.fileno(), space_ready.fileno())
    logs = tmp_path / "logs"
    logs.mkdir()

    def start_receiver(label: str, hang_after: int, pause: float):
        return peers.start(
            "ring-receive-logged",
            ring.name,
            *fds,
            1.0,
            total,
            max_length,
            logs / label,
            120,
            hang_after,
            pause,
            pass_fds=fds,
        )

    sender = peers.start(
        "ring-send", ring.name, *fds, 1.0, total, max_length, 32, 150, pass_fds=fds
    )

    # A: commits a batch it never releases, receives more, then dies.
    first = start_receiver("a", 5000, 0.0)
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "hanging"
    first.kill()
    first.wait(timeout=30)
    tail_after_first = ring.statistics().tail

    # B: killed at whatever point it has reached mid-stream.
    second = start_receiver("b", -1, 0.002)
    deadline = time.monotonic() + 60
    while ring.statistics().tail < tail_after_first + 10_000:
        assert second.poll() is None, second.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    second.kill()
    second.wait(timeout=30)
    assert ring.statistics().tail < total, "B finished before it was killed"

    # C: runs to the end.
    third = start_receiver("c", -1, 0.0)
    peers.finish(third, timeout=120)
    peers.finish(sender, timeout=30)

    a_log, b_log, c_log = (_read_log(logs / label) for label in "abc")
    processed = sorted(
        (first_seq, end)
        for kind, first_seq, end in a_log + b_log + c_log
        if kind == "batch"
    )
    # The processed ranges tile 0..total: nothing lost, nothing twice.
    position = 0
    for first_seq, end in processed:
        assert first_seq == position, f"gap or overlap at {position}: {first_seq}"
        position = end
    assert position == total

    # B started at A's stored tail and got A's committed-but-unreleased
    # batch again; released descriptors never came back.
    _, b_tail, b_committed = b_log[0]
    assert b_log[0][0] == "start"
    a_batches = [entry for entry in a_log if entry[0] == "batch"]
    assert b_tail == tail_after_first == a_batches[-1][1]
    assert b_committed == a_batches[-1][2]
    redelivered = [entry for entry in b_log if entry[0] == "redelivered"]
    assert redelivered and redelivered[0][1] == b_tail
    assert (
        sum(end - first_seq for _, first_seq, end in redelivered)
        == b_committed - b_tail
    )
    ring.close()


def test_ring_prefault_touches_block_only_while_created(prefix: str) -> None:
    ring = Ring.create(
        prefix + "r", FIELDS, capacity=4, data_bytes=1 << 20, prefault=True
    )
    attached = Ring.attach(prefix + "r", FIELDS)
    with pytest.raises(RegionError, match="prefault only a block being created"):
        attached.region.prefault()
    with pytest.raises(RegionError, match="prefault only a block being created"):
        ring.region.prefault()
    attached.close()
    ring.close()
