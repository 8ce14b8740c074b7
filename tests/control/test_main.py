"""``python -m broker.control`` as a real process: it serves on the inherited
listener, keeps its heartbeat, keeps committed offsets through kill -9, and
stops cleanly on SIGTERM. Bounded; stopped by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.control.client import ControlClient, control_address
from broker.layout import CONTROL_SLOT, BrokerMemory
from broker.process import ProcessPlan
from broker.settings import load_settings
from net.kafka.schema import ApiKey
from tests.control.support import run_uvloop

ROOT = Path(__file__).resolve().parents[2]
MAX_FRAME = 1 << 20


class ControlProcess:
    """The shared memory and listener a supervisor would own, and one
    control process started from them."""

    def __init__(self, tmp_path: Path) -> None:
        self.prefix = f"rbt{uuid.uuid4().hex[:8]}_"
        self.data_dir = tmp_path / "data"
        self.log_path = tmp_path / "control.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RINGBUS_")}
        self.env.update(
            {
                "RINGBUS_DATA_DIR": str(self.data_dir),
                "RINGBUS_NET_PROCS": "1",
                "RINGBUS_RING_BYTES": str(1 << 20),
                "RINGBUS_MAX_PARTITIONS": "64",
                "RINGBUS_LOG_LEVEL": "INFO",
            }
        )
        settings = load_settings(self.env)
        self.memory = BrokerMemory.create(settings, self.prefix, CONTROL_SLOT + 3)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(control_address(self.prefix))
        self.listener.listen(16)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fds = {**self.memory.notifier_fds(), "control_listener": self.listener.fileno()}
        plan = ProcessPlan("control", 0, CONTROL_SLOT, self.prefix, os.getpid(), fds)
        self.memory.register_process(CONTROL_SLOT, "control", 0, 0)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "broker.control", "--plan", plan.to_argument()],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(fds.values()),
            )

    def stop(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.listener.close()
        self.memory.close()
        self.memory.unlink()


@pytest.fixture
def control(tmp_path: Path) -> Iterator[ControlProcess]:
    process = ControlProcess(tmp_path)
    try:
        yield process
    finally:
        process.close()


async def commit(client: ControlClient, offset: int) -> Any:
    body = {
        "group_id": "g",
        "generation_id_or_member_epoch": -1,
        "member_id": "",
        "topics": [
            {
                "name": "orders",
                "partitions": [{"partition_index": 0, "committed_offset": offset}],
            }
        ],
    }
    return await client.request(ApiKey.OFFSET_COMMIT, 2, body)


def test_control_process_keeps_offsets_through_kill_and_stops_cleanly(
    control: ControlProcess,
) -> None:
    async def first_life() -> None:
        client = ControlClient.for_prefix(
            control.prefix, max_frame_bytes=MAX_FRAME, reconnect_timeout_s=20
        )
        assert await client.create_topics(["orders"], partitions=1) == {"orders": 0}
        for offset in range(1, 51):
            response = await commit(client, offset)
            assert response["topics"][0]["partitions"][0]["error_code"] == 0
        await client.close()

    async def second_life() -> dict[tuple[str, int], int]:
        client = ControlClient.for_prefix(
            control.prefix, max_frame_bytes=MAX_FRAME, reconnect_timeout_s=20
        )
        offsets = await client.committed_offsets("g")
        await commit(client, 51)
        await client.close()
        return offsets

    control.start()
    run_uvloop(first_life())

    # The topic's metadata version is announced in the control row.
    counters = control.memory.counters
    column = counters.counter_id("metadata_version_gauge")
    assert int(counters.counters[CONTROL_SLOT, column]) == 1

    # Its heartbeat is fresh while it serves.
    time.sleep(1.0)
    assert control.memory.heartbeat_age_s(CONTROL_SLOT) < 2.0

    # kill -9: every answered commit must survive.
    assert control.stop(signal.SIGKILL) == -signal.SIGKILL
    control.start()
    assert run_uvloop(second_life()) == {("orders", 0): 50}

    assert control.stop(signal.SIGTERM) == 0
    log = control.log_path.read_text()
    assert "control.stopping" in log and "process.stopped" in log

    control.start()

    async def third_life() -> dict[tuple[str, int], int]:
        client = ControlClient.for_prefix(
            control.prefix, max_frame_bytes=MAX_FRAME, reconnect_timeout_s=20
        )
        offsets = await client.committed_offsets("g")
        await client.close()
        return offsets

    assert run_uvloop(third_life()) == {("orders", 0): 51}
    assert control.stop(signal.SIGTERM) == 0


def test_control_process_exits_when_started_without_listener(
    control: ControlProcess,
) -> None:
    fds = control.memory.notifier_fds()
    plan = ProcessPlan("control", 0, CONTROL_SLOT, control.prefix, os.getpid(), fds)
    result = subprocess.run(
        [sys.executable, "-m", "broker.control", "--plan", plan.to_argument()],
        cwd=ROOT,
        env=control.env,
        capture_output=True,
        timeout=30,
        pass_fds=tuple(fds.values()),
    )
    assert result.returncode == 2
    assert b"control.start_failed" in result.stderr


def test_asyncio_default_loop_can_use_the_client(control: ControlProcess) -> None:
    # The metrics process may run the default asyncio loop rather than uvloop.
    control.start()

    async def scenario() -> list[tuple[str, str, str]]:
        client = ControlClient.for_prefix(
            control.prefix, max_frame_bytes=MAX_FRAME, reconnect_timeout_s=20
        )
        groups = await client.list_groups()
        await client.close()
        return groups

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == []
    assert control.stop(signal.SIGTERM) == 0
