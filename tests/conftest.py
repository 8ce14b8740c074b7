"""Shared test helpers: a real broker process, free ports, tool checks."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Path of a system tool; skip the test if missing, fail under CI."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("RINGBUS_REQUIRE_ALL") == "1":
            pytest.fail(reason + "; RINGBUS_REQUIRE_ALL=1 forbids skipping")
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int, timeout_s: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited early with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout_s} s")


class BrokerProcess:
    """A real ``python -m broker`` in its own process group and data dir."""

    def __init__(self, data_dir: Path, **settings: str | int) -> None:
        self.data_dir = data_dir
        self.kafka_port = int(settings.pop("kafka_port", free_port()))
        self.http_port = int(settings.pop("http_port", free_port()))
        self.log_path = data_dir.parent / f"{data_dir.name}-broker.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("RINGBUS_")
        }
        env.update(
            {
                "RINGBUS_HOST": "127.0.0.1",
                "RINGBUS_DATA_DIR": str(data_dir),
                "RINGBUS_KAFKA_PORT": str(self.kafka_port),
                "RINGBUS_HTTP_PORT": str(self.http_port),
                "RINGBUS_NET_PROCS": "2",
            }
        )
        env.update({f"RINGBUS_{k.upper()}": str(v) for k, v in settings.items()})
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def start(self, timeout_s: float = 30.0) -> BrokerProcess:
        # Several runs on one data dir share the log file; this run's lines
        # start here.
        self.log_offset = len(self.log_text())
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.kafka_port, timeout_s, self.process)
        self.wait_for_log("broker.ready", timeout_s)
        return self

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        """Wait until the broker's log contains ``text`` (bounded)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while text not in self.run_log():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"broker exited early with code {self.process.returncode}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout_s} s")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def run_log(self) -> str:
        """The log lines of the current (or last) run only."""
        return self.log_text()[self.log_offset :]

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def stop(self, timeout_s: float = 40.0) -> int:
        """SIGTERM, then SIGKILL of the whole group after ``timeout_s``."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode

    def kill(self) -> None:
        """kill -9 the supervisor alone (children must follow by themselves)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def cleanup(self) -> None:
        """Last resort after a test: nothing of this broker may survive it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def free_client_cycles() -> Iterator[None]:
    """Collect reference cycles after each module: a Kafka client caught in
    one (a failed future's traceback holds the frame that holds the client)
    otherwise lives, reconnecting to a stopped broker, until the cyclic GC
    happens to run."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def module_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrokerProcess]:
    """One broker shared by the tests of a module (start-up costs add up)."""
    broker = BrokerProcess(tmp_path_factory.mktemp("broker") / "data")
    broker.start()
    yield broker
    try:
        assert broker.stop() == 0, broker.log_text()[-4000:]
    finally:
        broker.cleanup()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[type[BrokerProcess]]:
    """Build brokers in this test's temporary directory; all are cleaned up."""
    started: list[BrokerProcess] = []

    class _Factory(BrokerProcess):
        def __init__(self, name: str = "data", **settings: str | int) -> None:
            super().__init__(tmp_path / name, **settings)
            started.append(self)

    yield _Factory
    for broker in started:
        broker.cleanup()
