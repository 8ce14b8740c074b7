"""Servers a perf run starts for itself: on 127.0.0.1, in a temporary directory.

A ``ManagedServer`` owns one child process from start to stop: it picks a
free loopback port, makes a fresh temporary directory (the server's data and
log live there), waits until the server accepts connections, and on exit
stops it by its own PID - SIGTERM, then SIGKILL after a grace period - and
removes the directory. No system service is ever touched.

Used for the peers (redis-server, nats-server) now and for a Ringbus broker
(``python -m broker``) by the Kafka-side load generators.

Not safe: ``free_port`` releases the port before the server binds it, so
another process could take it in between; the start then fails with the
server's own log in the error.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from broker.logs import event

logger = logging.getLogger(__name__)

ArgvFactory = Callable[[Path, int], list[str]]


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    # LIMITATION: the port is released before the server binds it; a race
    # with another process shows up as a ServerStartError naming the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_accepts(port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


class ManagedServer:
    """One server process, started on enter and stopped by PID on exit.

    ``argv_factory(directory, port)`` builds the command line; ``ready(port)``
    says when the server is usable (default: the port accepts connections).
    """

    def __init__(
        self,
        name: str,
        argv_factory: ArgvFactory,
        *,
        ready: Callable[[int], bool] = port_accepts,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 15.0,
        env: dict[str, str] | None = None,
        keep_directory: bool = False,
    ) -> None:
        self.name = name
        self._argv_factory = argv_factory
        self._ready = ready
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._env = env
        self._keep_directory = keep_directory
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.directory = Path()
        self.log_path = Path()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> ManagedServer:
        if self._process is not None:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.directory = Path(tempfile.mkdtemp(prefix=f"ringbus-perf-{self.name}-"))
        self.port = free_port()
        self.log_path = self.directory / "server.log"
        argv = self._argv_factory(self.directory, self.port)

        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        event(
            logger,
            logging.INFO,
            "perf.server_started",
            server=self.name,
            pid=self._process.pid,
            port=self.port,
            directory=self.directory,
        )

        # Wait for readiness, but notice a server that died on the way.
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                message = (
                    f"{self.name} exited with code {code} before it was ready "
                    f"(port {self.port}); its log ends with:\n{self.log_tail()}"
                )
                self.stop()
                raise ServerStartError(message)
            if self._ready(self.port):
                return self
            if time.monotonic() >= deadline:
                # Stop first so the log holds everything the server wrote.
                self.stop_process()
                message = (
                    f"{self.name} was not ready on port {self.port} within "
                    f"{self._start_timeout_s} s; its log ends with:\n{self.log_tail()}"
                )
                self.stop()
                raise ServerStartError(message)
            time.sleep(0.05)

    def stop(self) -> int | None:
        """Stop the server by its PID and remove its directory; returns its
        exit code (None if it was not running)."""
        code = self.stop_process()
        if not self._keep_directory and self.directory != Path():
            shutil.rmtree(self.directory, ignore_errors=True)
        return code

    def stop_process(self) -> int | None:
        """Stop the server by its PID, keeping its directory."""
        process = self._process
        code: int | None = None
        if process is not None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self._stop_timeout_s)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            code = process.returncode
            event(
                logger,
                logging.INFO,
                "perf.server_stopped",
                server=self.name,
                pid=process.pid,
                exit_code=code,
            )
            self._process = None
        return code

    def __enter__(self) -> ManagedServer:
        # ``with start_server() as server`` enters a server already started:
        # starting it again would leave the first process running unowned.
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
