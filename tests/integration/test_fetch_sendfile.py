"""Fetch sends record bytes with os.sendfile and never reads them into Python.

strace watches the net processes while a consumer reads a topic of a few
megabytes: the bytes returned by sendfile must cover the topic, and the
bytes the net processes read from files (read/pread) must be a small
fraction of it (batch headers only).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import BrokerProcess, require_tool
from tests.integration.test_kafka_clients import (
    confluent_consume,
    confluent_produce,
    unique_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SYSCALL = re.compile(r"^\d+\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>-?\d+)")


def net_pids(broker: BrokerProcess) -> list[int]:
    pids = []
    for child in psutil.Process(broker.pid).children():
        command = child.cmdline()
        if "-m" in command and command[command.index("-m") + 1] == "net":
            pids.append(child.pid)
    return pids


def test_fetch_uses_sendfile_for_record_bytes(
    module_broker: BrokerProcess, tmp_path: Path
) -> None:
    strace = require_tool("strace")
    topic = unique_topic("zerocopy")
    records = [(None, bytes([i % 251]) * 4000, []) for i in range(1000)]
    confluent_produce(module_broker, topic, records)  # type: ignore[arg-type]
    payload = sum(len(value) for _, value, _ in records)

    trace_file = tmp_path / "net.strace"
    command = [
        strace,
        "-f",
        "-qq",
        "-e",
        "trace=sendfile,read,pread64",
        "-o",
        str(trace_file),
    ]
    for pid in net_pids(module_broker):
        command += ["-p", str(pid)]
    tracer = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # strace attaches asynchronously
        consumed = confluent_consume(module_broker, topic, len(records))
        assert len(consumed) == len(records)
        time.sleep(0.5)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)

    sent = 0
    read = 0
    for line in trace_file.read_text().splitlines():
        match = SYSCALL.match(line)
        if not match or int(match["result"]) <= 0:
            continue
        if match["name"] == "sendfile":
            sent += int(match["result"])
        else:
            read += int(match["result"])
    assert sent >= payload, f"sendfile moved {sent} bytes of {payload}"
    assert read < payload // 20, f"net processes read {read} bytes from files"
