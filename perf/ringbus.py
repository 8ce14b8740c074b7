"""The Ringbus broker a Kafka-side load generator runs against, and its options.

Owns the options every Kafka-side command shares (``--bootstrap``,
``--net-procs``, ``--keep-broker-dir``, ``--profile``) and the broker they
lead to: by default a fresh ``python -m broker`` started by
``perf.servers.ManagedServer`` in a temporary data directory on 127.0.0.1
with a free Kafka port and the metrics process off (``RINGBUS_HTTP_PORT=0``),
stopped by its PID at the end; with ``--bootstrap HOST:PORT`` an existing
broker, which is never stopped.

The started broker's log names each child's PID (``process.spawned``);
``child_pids`` reads them so a run can profile the net and writer processes
with py-spy (``Profiler``), each recording stopped by its own PID.

Imported by the load-generating process of ``perf`` only.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from broker.logs import event
from perf.cli import PerfError, positive_int
from perf.servers import ManagedServer, ServerStartError

logger = logging.getLogger(__name__)

SYSTEM = "ringbus"
READY_EVENT = "broker.ready"
_SPAWNED = re.compile(r"process\.spawned process=(\S+) pid=(\d+)")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument(
        "--bootstrap",
        default=None,
        metavar="HOST:PORT",
        help="use this running broker instead of starting one",
    )
    group.add_argument(
        "--net-procs",
        type=positive_int,
        default=2,
        help="RINGBUS_NET_PROCS of the broker started here",
    )
    group.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="RINGBUS_NAME=VALUE",
        help="another setting for the broker started here (repeatable)",
    )
    group.add_argument(
        "--keep-broker-dir",
        action="store_true",
        help="keep the started broker's data directory and log",
    )
    group.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record py-spy profiles of the started broker's net and writer "
        "processes during the timed phases into DIR",
    )


@contextmanager
def failures_as_perf_errors(what: str) -> Iterator[None]:
    """Turn a refused request or a broken connection into a ``PerfError``
    naming ``what`` (the CLI reports those as one line, exit code 1)."""
    from perf.kafka_wire import WireError

    try:
        yield
    except (WireError, OSError) as exc:
        raise PerfError(f"{what}: {type(exc).__name__}: {exc}") from exc


def parse_bootstrap(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PerfError(f"--bootstrap: expected HOST:PORT, got {text!r}")
    return host, int(port)


def _broker_env(args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGBUS_")}
    env["RINGBUS_NET_PROCS"] = str(args.net_procs)
    for item in args.broker_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("RINGBUS_"):
            raise PerfError(f"--broker-env: expected RINGBUS_NAME=VALUE, got {item!r}")
        env[name] = value
    return env


@dataclass
class BrokerTarget:
    """Where the load goes, and the broker process behind it if started here."""

    host: str
    port: int
    server: ManagedServer | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def child_pids(self) -> dict[str, int]:
        """The latest PID of each child role (``net-0``, ``writer`` ...) from
        the started broker's log; empty for an external broker."""
        if self.server is None:
            return {}
        pids: dict[str, int] = {}
        for role, pid in _SPAWNED.findall(self.server.log_tail(100_000)):
            pids[role] = int(pid)
        return pids

    def check_alive(self) -> None:
        """Raise when the started broker has exited."""
        if self.server is None:
            return
        try:
            alive = psutil.Process(self.server.pid).status() != psutil.STATUS_ZOMBIE
        except (RuntimeError, psutil.NoSuchProcess):
            alive = False
        if not alive:
            raise PerfError(
                f"the broker exited; its log ends with:\n{self.server.log_tail()}"
            )

    def describe(self) -> dict[str, object]:
        return {
            "bootstrap": self.bootstrap,
            "started_here": self.server is not None,
            **({"settings": self.settings} if self.server is not None else {}),
        }


@contextmanager
def broker_target(args: argparse.Namespace) -> Iterator[BrokerTarget]:
    """The broker of a run: the one at ``--bootstrap``, or a fresh one."""
    if args.bootstrap:
        host, port = parse_bootstrap(args.bootstrap)
        yield BrokerTarget(host, port)
        return

    env = _broker_env(args)
    settings = {k: v for k, v in env.items() if k.startswith("RINGBUS_")}
    server: ManagedServer

    def argv(directory: Path, port: int) -> list[str]:
        # env(1) execs the broker, so the PID ManagedServer stops is the
        # supervisor's own.
        return [
            "env",
            "RINGBUS_HOST=127.0.0.1",
            f"RINGBUS_KAFKA_PORT={port}",
            "RINGBUS_HTTP_PORT=0",
            f"RINGBUS_DATA_DIR={directory / 'data'}",
            sys.executable,
            "-m",
            "broker",
        ]

    def ready(port: int) -> bool:
        return READY_EVENT in server.log_tail(200)

    server = ManagedServer(
        "ringbus",
        argv,
        ready=ready,
        start_timeout_s=60.0,
        stop_timeout_s=60.0,
        env=env,
        keep_directory=args.keep_broker_dir,
    )
    try:
        server.start()
    except ServerStartError as exc:
        raise PerfError(str(exc)) from exc
    try:
        yield BrokerTarget("127.0.0.1", server.port, server, settings)
    finally:
        code = server.stop_process()
        if args.keep_broker_dir:
            event(
                logger,
                logging.WARNING,
                "perf.broker_dir_kept",
                directory=server.directory,
            )
        else:
            server.stop()
        if code not in (0, None):
            event(logger, logging.WARNING, "perf.broker_exit", exit_code=code)


# -- profiling ---------------------------------------------------------------


@dataclass
class Profile:
    """One py-spy recording: the process, its raw (collapsed) stacks file."""

    role: str
    pid: int
    path: Path
    summary: list[tuple[str, float]] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0

    @property
    def busy(self) -> float:
        """Samples taken over samples possible: about the share of one core
        the process kept busy (py-spy skips a thread that sleeps)."""
        possible = self.seconds * PROFILE_RATE_HZ
        return self.samples / possible if possible > 0 else 0.0


PROFILE_RATE_HZ = 200
_profile_sequence = itertools.count()


class Profiler:
    """py-spy ``record`` of the broker's net and writer processes during one
    timed phase; each py-spy is started and stopped by its own PID.

    A no-op when ``directory`` is None, the broker was not started here, or
    py-spy is not installed (then ``skipped`` says why).
    """

    def __init__(self, directory: Path | None, target: BrokerTarget, label: str):
        self.directory = directory
        self.target = target
        self.label = label
        self.profiles: list[Profile] = []
        self.skipped: str | None = None
        self._running: list[tuple[subprocess.Popen[bytes], Profile]] = []
        self._started = 0.0

    @staticmethod
    def py_spy() -> str | None:
        beside = Path(sys.executable).parent / "py-spy"
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def __enter__(self) -> Profiler:
        if self.directory is None:
            return self
        binary = self.py_spy()
        if binary is None:
            self.skipped = "py-spy is not installed (.venv/bin/pip install py-spy)"
            return self
        pids = {
            role: pid
            for role, pid in self.target.child_pids().items()
            if role.startswith("net") or role == "writer"
        }
        if not pids:
            self.skipped = "no broker started here: nothing to profile"
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        # A run may profile the same phase twice (one per record size).
        sequence = next(_profile_sequence)
        for role, pid in sorted(pids.items()):
            path = self.directory / f"{sequence:03d}-{self.label}-{role}-{pid}.txt"
            process = subprocess.Popen(
                [
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(PROFILE_RATE_HZ),
                    "--nonblocking",
                    "--output",
                    str(path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._running.append((process, Profile(role, pid, path)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        seconds = time.monotonic() - self._started
        for process, profile in self._running:
            # SIGINT makes py-spy write what it sampled and exit.
            if process.poll() is None:
                os.kill(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            if profile.path.exists():
                text = profile.path.read_text()
                profile.summary = summarize_collapsed(text)
                profile.samples = count_samples(text)
                profile.seconds = seconds
                self.profiles.append(profile)
        self._running = []

    def notes(self) -> dict[str, object]:
        """Per profiled process: file and top functions by own time."""
        if self.skipped:
            return {"profile_skipped": self.skipped}
        return {
            f"profile_{p.role}": {
                "file": str(p.path),
                "samples": p.samples,
                "busy": round(p.busy, 3),
                "top_self": [[name, round(share, 3)] for name, share in p.summary],
            }
            for p in self.profiles
        }


def count_samples(text: str) -> int:
    """Samples in py-spy's raw collapsed format (``a;b;c count`` lines)."""
    total = 0
    for line in text.splitlines():
        _stack, _, count_text = line.rpartition(" ")
        if count_text.isdigit():
            total += int(count_text)
    return total


def summarize_collapsed(text: str, top: int = 12) -> list[tuple[str, float]]:
    """Functions by share of samples where they are on top of the stack
    (own time), from py-spy's raw collapsed format (``a;b;c count``)."""
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frame = stack.rsplit(";", 1)[-1]
        own[frame.strip()] += count
        total += count
    if total == 0:
        return []
    return [(name, count / total) for name, count in own.most_common(top)]
