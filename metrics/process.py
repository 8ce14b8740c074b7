"""The metrics process: wires the reader, the group monitor, the sampler and
the HTTP server on one uvloop event loop.

Tasks on the loop:
- heartbeat: ``runtime.beat()`` every 0.25 s; stops the process if the
  supervisor is gone;
- sampling: one sample per second on a fixed schedule (a late sample does
  not shift the next ones; missed seconds are skipped, not caught up),
  then one stream event for the UI;
- groups: asks the control process for groups and committed offsets once a
  second (``metrics.groups``);
- the HTTP server (``metrics.server``) on the inherited socket
  ``plan.fds["http"]``.

The process never writes shared memory other than its own counter slot
(slot 3): it cannot slow the data path except by the CPU it uses, which is
one read of the counters block, the tables and the ring control arrays per
second and per scrape.

SIGTERM: the server stops (streams end, requests in progress get
SHUTDOWN_TIMEOUT_S), the control connection closes, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time

import uvloop

from broker.control.client import ControlClient
from broker.logs import event
from broker.process import ChildRuntime
from metrics.api import MetricsApi
from metrics.groups import GroupMonitor, GroupsSnapshot
from metrics.prometheus import RingbusCollector, registry_for
from metrics.reader import BrokerReader, MetadataView
from metrics.sampler import SAMPLE_INTERVAL_S, Sampler
from metrics.server import MetricsServer

logger = logging.getLogger(__name__)

BEAT_INTERVAL_S = 0.25
GROUP_REFRESH_INTERVAL_S = 1.0
# The metrics process gives up on the control process quickly: the groups
# it shows are then marked stale, and the next refresh tries again.
CONTROL_RECONNECT_TIMEOUT_S = 2.0
CONTROL_CALL_TIMEOUT_S = 5.0
# At most one logged sampling failure per this many seconds.
FAILURE_LOG_INTERVAL_S = 60.0


class MetricsProcess:
    """Everything the metrics process runs (see module docstring)."""

    def __init__(self, runtime: ChildRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop
        settings = runtime.settings
        counters = runtime.memory.counters
        self.reader = BrokerReader(
            runtime.memory,
            MetadataView(settings.data_dir, settings.max_partitions),
            runtime.plan.supervisor_pid,
        )
        self.client = ControlClient.for_prefix(
            runtime.plan.prefix,
            loop=loop,
            name=runtime.plan.name,
            reconnect_timeout_s=CONTROL_RECONNECT_TIMEOUT_S,
            call_timeout_s=CONTROL_CALL_TIMEOUT_S,
        )
        self.monitor = GroupMonitor(self.client)
        self.sampler = Sampler(self.reader, self.group_snapshot, runtime.counters)
        collector = RingbusCollector(self.reader, self.group_snapshot)
        self.api = MetricsApi(self.reader, self.sampler, self.group_snapshot, settings)
        self.server = MetricsServer(self.api, registry_for(collector), runtime.counters)
        self._control_failures = counters.counter_id("metrics_control_failures")
        self._last_failure_log = 0.0

    def group_snapshot(self) -> GroupsSnapshot:
        return self.monitor.snapshot

    async def run(self) -> int:
        fd = self.runtime.plan.fds.get("http")
        if fd is None:
            event(
                logger,
                logging.ERROR,
                "metrics.no_listener",
                reason="the supervisor passed no HTTP socket (RINGBUS_HTTP_PORT=0?)",
            )
            return 1
        stop = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGTERM, stop.set)
        if self.runtime.stopping:
            stop.set()

        sock = socket.socket(fileno=fd)
        await self.server.start(sock)
        host, port = sock.getsockname()[:2]
        event(logger, logging.INFO, "metrics.serving", address=f"{host}:{port}")

        tasks = [
            self.loop.create_task(self._heartbeat(stop), name="metrics-heartbeat"),
            self.loop.create_task(self._sampling(stop), name="metrics-sampling"),
            self.loop.create_task(self._groups(stop), name="metrics-groups"),
        ]
        await stop.wait()

        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.stop()
        await self.client.close()
        return 0

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.runtime.beat()
            if not self.runtime.parent_alive():
                stop.set()
                return
            await asyncio.sleep(BEAT_INTERVAL_S)

    async def _sampling(self, stop: asyncio.Event) -> None:
        loop = self.loop
        due = loop.time()
        while not stop.is_set():
            try:
                self.sampler.sample()
                self.server.publish()
            except Exception:
                # Handled here: one bad read must not end the sampling.
                self._log_failure("metrics.sample_failed")
            due += SAMPLE_INTERVAL_S
            now = loop.time()
            if due < now:
                # Behind (a long pause): skip the missed seconds.
                due = now + SAMPLE_INTERVAL_S - (now - due) % SAMPLE_INTERVAL_S
            await asyncio.sleep(due - now)

    async def _groups(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = self.loop.time()
            snapshot = await self.monitor.refresh()
            if snapshot.error is not None:
                self.runtime.counters.add(self._control_failures)
            elapsed = self.loop.time() - started
            await asyncio.sleep(max(0.0, GROUP_REFRESH_INTERVAL_S - elapsed))

    def _log_failure(self, name: str) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_INTERVAL_S:
            self._last_failure_log = now
            event(logger, logging.ERROR, name, exc_info=True)


def main(runtime: ChildRuntime) -> int:
    uvloop.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(MetricsProcess(runtime, loop).run())
    finally:
        loop.close()
