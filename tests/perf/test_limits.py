"""The limits subcommand: each measurement, and one bounded end-to-end run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf.harness import MonotonicClock
from perf.limits import (
    measure_memcpy,
    measure_pagecache_write,
    measure_sendfile,
    measure_tcp_loopback,
)
from perf.report import Phase, load_json

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def test_tcp_loopback_sample_counts_every_byte_the_receiver_got() -> None:
    sample = measure_tcp_loopback(
        8 * MIB, MIB, 30.0, MonotonicClock(), Phase(None, None)
    )

    assert sample.nbytes == 8 * MIB
    assert sample.stop_reason == "count"
    assert sample.gb_per_s > 0


def test_sendfile_sample_wraps_around_the_file_and_removes_it(tmp_path: Path) -> None:
    sample = measure_sendfile(
        5 * MIB + 123, 2 * MIB, tmp_path, 30.0, MonotonicClock(), Phase(None, None)
    )

    assert sample.nbytes == 5 * MIB + 123
    assert not list(tmp_path.iterdir())


def test_pagecache_write_sample_writes_exactly_the_new_bytes(tmp_path: Path) -> None:
    path = tmp_path / "fresh.bin"

    sample = measure_pagecache_write(
        path, 3 * MIB + 7, MIB, 30.0, MonotonicClock(), Phase(None, None)
    )

    assert sample.nbytes == 3 * MIB + 7
    assert path.stat().st_size == 3 * MIB + 7


def test_pagecache_write_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        measure_pagecache_write(
            path, MIB, MIB, 30.0, MonotonicClock(), Phase(None, None)
        )
    assert path.read_bytes() == b"old"


def test_memcpy_sample_stops_at_the_time_bound() -> None:
    sample = measure_memcpy(1 << 50, MIB, 0.2, MonotonicClock(), Phase(None, None))

    assert sample.stop_reason == "time"
    assert 0.2 <= sample.seconds < 5
    assert sample.nbytes % MIB == 0


def test_limits_runs_end_to_end_with_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "perf",
            "limits",
            "--bytes",
            "16MiB",
            "--write-bytes",
            "8MiB",
            "--file-bytes",
            "4MiB",
            "--memcpy-buffer",
            "4MiB",
            "--repeat",
            "2",
            "--seconds",
            "10",
            "--dir",
            str(tmp_path / "files"),
            "--out",
            str(out),
            "--name",
            "smoke",
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    assert done.returncode == 0, done.stderr
    document = load_json(out / "smoke.json")
    by_name = {m["name"]: m for m in document["measurements"]}
    assert set(by_name) == {
        "machine.tcp_loopback",
        "machine.sendfile",
        "machine.pagecache_write",
        "machine.pagecache_rewrite",
        "machine.memcpy",
    }
    assert by_name["machine.tcp_loopback"]["bytes"] == 16 * MIB
    assert by_name["machine.pagecache_write"]["bytes"] == 8 * MIB
    for measurement in by_name.values():
        assert measurement["gb_per_s"] > 0
        assert len(measurement["params"]["samples_gb_per_s"]) == 2
    assert (out / "smoke.png").read_bytes()[:4] == b"\x89PNG"
    assert "machine.sendfile" in done.stdout
    # Every file it wrote is gone.
    assert not list((tmp_path / "files").iterdir())


def test_limits_rejects_an_unknown_measurement(tmp_path: Path) -> None:
    from perf.__main__ import COMMANDS
    from perf.cli import main

    code = main(
        ["limits", "--only", "tcp,disk", "--out", str(tmp_path), "--no-progress"],
        COMMANDS,
    )
    assert code == 1
    assert not list(tmp_path.iterdir())
