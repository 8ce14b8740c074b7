"""Servers started by the harness: loopback port, temp dir, stopped by PID."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from perf.servers import ManagedServer, ServerStartError, free_port, port_accepts

# A tiny TCP server: listens on the port it is given, writes a file in its
# working directory, and serves until it is signalled.
LISTENER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
open("marker", "w").write("here")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _listener_argv(directory: Path, port: int) -> list[str]:
    return [sys.executable, "-c", LISTENER, str(port)]


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_managed_server_runs_in_its_temp_dir_and_stops_by_pid() -> None:
    with ManagedServer("listener", _listener_argv, start_timeout_s=10) as server:
        pid = server.pid
        directory = server.directory
        assert port_accepts(server.port)
        assert directory.is_dir()
        os.kill(pid, 0)

    # The process is gone (reaped) and its directory removed.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not directory.exists()
    assert not port_accepts(server.port)


def test_managed_server_entered_after_start_runs_one_process_only() -> None:
    starts: list[int] = []

    def argv(directory: Path, port: int) -> list[str]:
        starts.append(port)
        return _listener_argv(directory, port)

    server = ManagedServer("once", argv, start_timeout_s=10).start()
    with server as entered:
        assert entered is server
        pid = server.pid
        with pytest.raises(RuntimeError, match="already running"):
            server.start()

    assert len(starts) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_managed_server_that_exits_early_raises_with_its_log() -> None:
    def argv(directory: Path, port: int) -> list[str]:
        return [sys.executable, "-c", "print('cannot bind, giving up'); exit(3)"]

    server = ManagedServer("broken", argv, start_timeout_s=10)
    with pytest.raises(ServerStartError, match=r"exited with code 3[\s\S]*giving up"):
        server.start()
    assert not server.directory.exists()


def test_managed_server_that_never_listens_times_out_and_is_stopped() -> None:
    def argv(directory: Path, port: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    server = ManagedServer("silent", argv, start_timeout_s=0.5, stop_timeout_s=5)
    with pytest.raises(ServerStartError, match="not ready on port"):
        server.start()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.pid
