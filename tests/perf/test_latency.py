"""Tests of the latency stamp path: intended send time into the value, out
of it at the consumer, into the histogram."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from perf.harness import (
    Bounds,
    LatencyHistogram,
    ManualClock,
    make_value,
    read_stamp,
    run_fixed_rate,
    stamp_value,
)
from perf.latency import record_stamps


def test_record_stamps_records_receive_minus_intended_for_each_value() -> None:
    value = make_value(100)
    values = [stamp_value(value, intended) for intended in (1_000, 2_000, 3_000)]
    histogram = LatencyHistogram()

    assert record_stamps(histogram, values, received_ns=1_000_000) == 3

    summary = histogram.summary()
    assert summary.count == 3
    assert summary.min_us == pytest.approx(997, rel=1e-3)
    assert summary.max_us == pytest.approx(999, rel=1e-3)


def test_record_stamps_raises_when_a_value_is_too_short_to_hold_a_stamp() -> None:
    with pytest.raises(ValueError, match="too short to carry a time stamp"):
        record_stamps(LatencyHistogram(), [b"1234"], received_ns=0)


def test_stamp_path_keeps_the_backlog_wait_when_the_sender_stalls() -> None:
    """A fixed-rate producer stamps intended times; a stall of the sender
    shows in the consumer's latencies for every record it delayed."""
    clock = ManualClock()
    value = make_value(16)
    delivered: list[tuple[int, bytes]] = []

    def send(intended: Sequence[int]) -> None:
        for intended_ns in intended:
            delivered.append((clock.now, stamp_value(value, intended_ns)))
        # The 10th send stalls for 50 ms; the records due meanwhile wait.
        if len(delivered) == 10:
            clock.advance(50_000_000)

    report = run_fixed_rate(1000.0, Bounds(100, 10.0), send, clock=clock)
    assert report.records == 100 == len(delivered)

    # The consumer sees each record 1 ms after it was really sent; its
    # latency counts from the intended time the value carries.
    histogram = LatencyHistogram()
    for sent_ns, stamped in delivered:
        record_stamps(histogram, [stamped], received_ns=sent_ns + 1_000_000)
    stamps = [read_stamp(stamped) for _sent, stamped in delivered]
    assert stamps == sorted(stamps)
    assert stamps[1] - stamps[0] == 1_000_000

    summary = histogram.summary()
    assert summary.min_us == pytest.approx(1_000, rel=1e-3)
    # The record due right after the stall began waited the whole 50 ms.
    assert summary.max_us == pytest.approx(50_000, rel=2e-2)
    # About 50 records were due during the stall, each delayed.
    delayed = sum(
        1 for sent, stamped in delivered if sent - read_stamp(stamped) > 1_000_000
    )
    assert 45 <= delayed <= 50
