"""Smoke test: ``python -m perf produce`` (pipelined) and ``consume`` against
a real broker, each for about two seconds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perf.ringbus import broker_target

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def perf(out: Path, name: str, *argv: str) -> dict[str, Any]:
    """Run one perf command (bounded) and return its result document."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "perf",
            *argv,
            "--out",
            str(out),
            "--name",
            name,
            "--no-plot",
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert document["errors"] == []
    return document


def test_produce_pipelined_and_consume_run_against_a_real_broker(
    tmp_path: Path,
) -> None:
    options = argparse.Namespace(
        bootstrap=None,
        net_procs=2,
        broker_env=[],
        keep_broker_dir=False,
        profile=None,
    )
    with broker_target(options) as target:
        produced = perf(
            tmp_path,
            "produce",
            "produce",
            "--bootstrap",
            target.bootstrap,
            "--seconds",
            "2",
            "--records",
            "1000000000",
            "--partitions",
            "2",
            "--in-flight",
            "4",
        )
        (m,) = produced["measurements"]
        assert m["name"] == "ringbus.produce-pipelined"
        assert m["records"] > 0 and m["bytes"] == m["records"] * 100
        assert m["params"]["stop_reasons"] == ["time"]
        assert 1.5 < m["seconds"] < 30
        assert m["latency_us"]["count"] == m["params"]["requests"]
        # The command itself checked the log end offsets against the acks.
        assert m["params"]["wire_bytes"] > m["bytes"]

        consumed = perf(
            tmp_path,
            "consume-raw",
            "consume",
            "--bootstrap",
            target.bootstrap,
            "--mode",
            "raw",
            "--records",
            "400000",
            "--seconds",
            "20",
        )
        fill, read = consumed["measurements"]
        assert fill["name"] == "ringbus.consume-fill"
        assert read["name"] == "ringbus.consume-raw"
        assert read["records"] == fill["records"] >= 400_000

        again = perf(
            tmp_path,
            "consume-client",
            "consume",
            "--bootstrap",
            target.bootstrap,
            "--mode",
            "client",
            "--from-topic",
            read["params"]["topic"],
            "--seconds",
            "20",
        )
        (client,) = again["measurements"]
        assert client["name"] == "ringbus.consume-client"
        assert client["records"] == fill["records"]


def test_hops_measures_produce_fetch_and_echo_after_each_pause(
    tmp_path: Path,
) -> None:
    # Started by the command itself: a fresh broker on loopback, stopped by PID.
    document = perf(tmp_path, "hops", "hops", "--pauses", "0,1ms", "--count", "50")

    names = [m["name"] for m in document["measurements"]]
    assert names == [
        "ringbus.hops-ack-0us",
        "ringbus.hops-fetch-0us",
        "machine.echo-0us",
        "ringbus.hops-ack-1000us",
        "ringbus.hops-fetch-1000us",
        "machine.echo-1000us",
    ]
    for m in document["measurements"]:
        assert m["records"] == 50
        assert m["latency_us"]["count"] == 50
        assert 0 < m["latency_us"]["p50"] <= m["latency_us"]["max"]
    # A round trip through the broker cannot beat an echo between two
    # processes: it crosses more of them.
    by_name = {m["name"]: m for m in document["measurements"]}
    assert (
        by_name["ringbus.hops-ack-0us"]["latency_us"]["min"]
        > by_name["machine.echo-0us"]["latency_us"]["min"]
    )
