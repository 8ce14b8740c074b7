"""Tests of perf.produce helpers (partition split, kcat input file, timed tool
runs, merged worker results)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from perf.cli import PerfError
from perf.produce import (
    merged_measurement,
    merged_or_raise,
    run_tool_timed,
    split_partitions,
    write_line_file,
)
from perf.workers import WorkerResult


def test_split_partitions_deals_round_robin_when_more_partitions() -> None:
    assert split_partitions(5, 2) == [(0, 2, 4), (1, 3)]
    assert split_partitions(1, 1) == [(0,)]


def test_split_partitions_shares_when_more_processes_than_partitions() -> None:
    assert split_partitions(2, 3) == [(0,), (1,), (0,)]


def test_write_line_file_writes_records_of_exact_size(tmp_path: Path) -> None:
    path = tmp_path / "records.txt"
    write_line_file(path, 100, 25_000)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == 25_000
    assert {len(line) for line in lines[:-1]} == {100}
    assert all(line.isalpha() for line in lines[:10])


def test_run_tool_timed_returns_the_output_wall_and_cpu_seconds() -> None:
    script = "import time; time.sleep(0.2); print('a'); print('b')"

    done, seconds, cpu = run_tool_timed(
        [sys.executable, "-c", script], 30.0, "too slow", text=False
    )

    assert done.returncode == 0
    assert done.stdout.count(b"\n") == 2
    assert 0.2 <= seconds < 30.0
    assert cpu > 0.0


def test_run_tool_timed_leaves_a_failed_exit_to_the_caller() -> None:
    done, _seconds, _cpu = run_tool_timed(
        [sys.executable, "-c", "import sys; sys.exit('no broker')"],
        30.0,
        "too slow",
        text=True,
    )

    assert done.returncode == 1
    assert "no broker" in done.stderr


def test_run_tool_timed_raises_the_callers_message_when_the_tool_overruns() -> None:
    started = time.monotonic()

    with pytest.raises(PerfError, match=r"did not read 10 records in 0\.3 s"):
        run_tool_timed(
            [sys.executable, "-c", "import time; time.sleep(30)"],
            0.3,
            "kcat did not read 10 records in 0.3 s",
            text=False,
        )

    assert time.monotonic() - started < 10.0


def _worker(records: int, finished_s: float, errors: list[str]) -> WorkerResult:
    return WorkerResult(
        records=records,
        value_bytes=records * 100,
        wire_bytes=records * 120,
        finished_ns=int(finished_s * 1e9),
        timeline=[(0.5, records / finished_s, records * 100 / finished_s)],
        errors=errors,
        stop_reason="count",
    )


def test_merged_or_raise_adds_up_the_workers() -> None:
    merged = merged_or_raise([_worker(1000, 1.0, []), _worker(3000, 2.0, [])], 0, "x")

    assert (merged.records, merged.value_bytes, merged.seconds) == (4000, 400_000, 2.0)


def test_merged_or_raise_names_the_run_and_the_first_five_errors() -> None:
    results = [_worker(0, 1.0, [f"e{i}"]) for i in range(7)]

    with pytest.raises(PerfError) as raised:
        merged_or_raise(results, 0, "ringbus.produce-pipelined warm-up")

    assert str(raised.value) == (
        "ringbus.produce-pipelined warm-up: e0; e1; e2; e3; e4"
    )


def test_merged_measurement_reports_the_counted_value_bytes() -> None:
    merged = merged_or_raise([_worker(2000, 2.0, [])], 0, "x")

    m = merged_measurement(
        "ringbus.consume-raw", "consume", 100, merged, params={"mode": "raw"}, note="n"
    )

    assert (m.name, m.system, m.workload, m.record_bytes) == (
        "ringbus.consume-raw",
        "ringbus",
        "consume",
        100,
    )
    assert (m.records, m.bytes, m.seconds) == (2000, 200_000, 2.0)
    assert m.timeline == merged.timeline
    assert m.latency is None
    assert (m.params, m.note) == ({"mode": "raw"}, "n")
