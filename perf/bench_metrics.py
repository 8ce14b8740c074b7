"""Produce throughput with the metrics process serving a live UI, against
metrics turned off.

Usage: .venv/bin/python perf/bench_metrics.py [--rounds N] [--seconds S]
       [--warmup N] [--json FILE]

Two brokers run side by side on loopback, each in its own temporary data
directory: one with ``RINGBUS_HTTP_PORT=0`` (no metrics process), one with
the metrics process on and an open UI. The UI's traffic is reproduced from
the broker's side: one client reads ``/api/v1/stream`` (the Server-Sent
Events the page listens to) and fetches ``/api/v1/timeseries`` once, as the
page does on load, and a Prometheus-style scraper reads ``/metrics`` every
second. A real browser would add its own CPU use to this 2-core machine,
which is the browser's cost, not the broker's.

A warm-up round (both brokers, not counted) comes first: the first run
on a fresh machine writes into page cache that is still free, and came out
up to 1.5 times faster than the runs after it, which would favour
whichever broker goes first. Each round runs the pipelined load generator
(``python -m perf produce --mode pipelined``) for ``--seconds`` against one
broker, then the other, alternating which goes first, so a burst of load
elsewhere hits both alike. The ratio is the median of "metrics on" over the
median of "metrics off", from this one invocation. Target: >= 0.97.

Each round also records the CPU seconds every broker process used during
the run (supervisor and children, from psutil; the metrics process
included for the broker that has one), divided by the records produced:
the broker's CPU cost per million records, printed per round and as a
ratio of medians. It tells whether a gap in throughput comes with more
work in the broker. Neither figure is steady on this shared 2-core
machine: two brokers both without metrics (an A/A run) gave medians 3 %
apart over six rounds, so a 3 % target needs many rounds to settle.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """A ``python -m broker`` in a temporary directory, stopped by PID."""

    def __init__(self, metrics: bool, directory: Path) -> None:
        self.kafka_port = free_port()
        self.http_port = free_port() if metrics else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGBUS_")}
        env.update(
            {
                "RINGBUS_HOST": "127.0.0.1",
                "RINGBUS_KAFKA_PORT": str(self.kafka_port),
                "RINGBUS_HTTP_PORT": str(self.http_port),
                "RINGBUS_DATA_DIR": str(directory / "data"),
                "RINGBUS_LOG_LEVEL": "WARNING",
            }
        )
        self.log = (directory / "broker.log").open("wb")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "broker"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.kafka_port), 0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("broker did not start") from None
                time.sleep(0.1)
        time.sleep(1.0)  # children finish starting after the port opens

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU seconds of the supervisor and each child, by
        PID (a child that exits between the listing and the read is left
        out)."""
        seconds: dict[int, float] = {}
        supervisor = psutil.Process(self.process.pid)
        for process in [supervisor, *supervisor.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seconds[process.pid] = times.user + times.system
        return seconds

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


class OpenUi:
    """The HTTP traffic of one open UI page plus a 1-second scraper."""

    def __init__(self, http_port: int) -> None:
        self.base = f"http://127.0.0.1:{http_port}"
        self.stop_event = threading.Event()
        self.events = 0
        self.scrapes = 0
        self.threads = [
            threading.Thread(target=self._stream, daemon=True),
            threading.Thread(target=self._scrape, daemon=True),
        ]

    def start(self) -> OpenUi:
        with urllib.request.urlopen(
            self.base + "/api/v1/timeseries?seconds=900", timeout=10
        ):
            pass
        for thread in self.threads:
            thread.start()
        return self

    def _stream(self) -> None:
        with urllib.request.urlopen(self.base + "/api/v1/stream", timeout=30) as stream:
            while not self.stop_event.is_set():
                line = stream.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    self.events += 1

    def _scrape(self) -> None:
        while not self.stop_event.wait(1.0):
            with urllib.request.urlopen(self.base + "/metrics", timeout=10) as reply:
                reply.read()
            self.scrapes += 1

    def stop(self) -> None:
        self.stop_event.set()


def produce(bootstrap: str, seconds: float, out: Path, name: str) -> tuple[int, float]:
    """Records produced and their seconds, of one pipelined produce run."""
    subprocess.run(
        [
            PYTHON,
            "-m",
            "perf",
            "produce",
            "--mode",
            "pipelined",
            "--bootstrap",
            bootstrap,
            "--record-bytes",
            "1024",
            "--seconds",
            str(seconds),
            "--no-progress",
            "--no-plot",
            "--out",
            str(out),
            "--name",
            name,
        ],
        cwd=ROOT,
        check=True,
        timeout=seconds + 120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    document = json.loads((out / f"{name}.json").read_text())
    measurement = document["measurements"][0]
    return int(measurement["records"]), float(measurement["seconds"])


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings by the processes in both (a
    child restarted in between would be missing from one: left out)."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--warmup", type=int, default=1, help="uncounted rounds before the first"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ringbus-bench-metrics-") as temporary:
        root = Path(temporary)
        (root / "off").mkdir()
        (root / "on").mkdir()
        off = Broker(metrics=False, directory=root / "off")
        on = Broker(metrics=True, directory=root / "on")
        ui = OpenUi(on.http_port).start()
        rates: dict[str, list[float]] = {"off": [], "on": []}
        # Broker CPU seconds per million records, per round.
        costs: dict[str, list[float]] = {"off": [], "on": []}
        try:
            for warmup in range(args.warmup):
                for label, broker in (("off", off), ("on", on)):
                    produce(
                        broker.bootstrap, args.seconds, root, f"warm-{label}-{warmup}"
                    )
            for round_number in range(args.rounds):
                order = [("off", off), ("on", on)]
                if round_number % 2:
                    order.reverse()
                for label, broker in order:
                    before = broker.cpu_seconds()
                    records, seconds = produce(
                        broker.bootstrap, args.seconds, root, f"{label}-{round_number}"
                    )
                    cost = cpu_used(before, broker.cpu_seconds()) / records * 1e6
                    rates[label].append(records / seconds)
                    costs[label].append(cost)
                    print(
                        f"round {round_number + 1} {label}:"
                        f" {records / seconds:,.0f} records/s,"
                        f" broker CPU {cost:.2f} s per million records"
                    )
        finally:
            ui.stop()
            off.stop()
            on.stop()

    median_off = statistics.median(rates["off"])
    median_on = statistics.median(rates["on"])
    ratio = median_on / median_off
    cost_off = statistics.median(costs["off"])
    cost_on = statistics.median(costs["on"])
    load = os.getloadavg()
    print(
        f"metrics off {median_off:,.0f} records/s, on with an open UI"
        f" {median_on:,.0f} records/s: ratio {ratio:.3f} (target 0.97);"
        f" UI events {ui.events}, scrapes {ui.scrapes}; load average {load[0]:.1f}"
    )
    print(
        f"broker CPU per million records: off {cost_off:.2f} s, on {cost_on:.2f} s;"
        f" cost ratio off / on {cost_off / cost_on:.3f}"
    )
    if args.json:
        result: dict[str, Any] = {
            "rates": rates,
            "median_off": median_off,
            "median_on": median_on,
            "ratio": ratio,
            "cpu_seconds_per_million": costs,
            "cost_ratio": cost_off / cost_on,
            "ui_events": ui.events,
            "scrapes": ui.scrapes,
            "load_average": load,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
