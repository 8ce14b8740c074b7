"""Helpers for the shm tests: start and stop peer processes by their pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).with_name("shm_peers.py")


class Peers:
    """Starts ``shm_peers.py`` commands; kills leftovers by their pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(
        self, *args: object, pass_fds: tuple[int, ...] = ()
    ) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        process = subprocess.Popen(
            [sys.executable, str(PEERS), *map(str, args)],
            pass_fds=pass_fds,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def finish(self, process: subprocess.Popen[str], timeout: float) -> str:
        """Wait for a peer to exit 0 and return its stdout."""
        stdout, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"peer failed ({process.returncode}): {stderr}"
        return stdout

    def stop_all(self) -> None:
        for process in self.started:
            if process.returncode is None:
                process.kill()
                process.communicate(timeout=10)
