"""The control process: its Unix-socket server for forwarded requests and
its main loop.

The supervisor binds an abstract Unix stream socket (``\\0<prefix>control``)
and passes it as ``plan.fds["control_listener"]``; net processes (and the
metrics process) each keep one connection to it and send tagged request
frames (``broker.control.forwarding``). Every message becomes a task that
runs ``ControlService.handle`` and writes the tagged reply when it is done,
so a JoinGroup parked for seconds does not hold up the heartbeats behind it.
A connection has at most ``MAX_IN_FLIGHT`` requests running; beyond that
the server stops reading from it until one finishes.

After every metadata change the process sets its
``metadata_version_gauge`` counter to the new version; net processes and
the writer reload ``metadata.json`` when it moves.

Main loop: uvloop; every ``HEARTBEAT_INTERVAL_S`` it beats (the supervisor
kills a control process whose heartbeat stops) and checks that the
supervisor is alive. SIGTERM stops it in order: stop accepting, answer
parked JoinGroup/SyncGroup requests with COORDINATOR_NOT_AVAILABLE, let
in-flight requests finish (bounded), fsync the offsets log, exit 0. A failed
fsync of the offsets log exits 1 so the supervisor restarts the process.

Imported by ``broker.control.__main__``; single event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
from collections.abc import Callable

import uvloop

from broker.control.forwarding import (
    ForwardingError,
    Message,
    MessageReader,
    encode_reply,
)
from broker.control.offsets import OffsetLogError
from broker.control.producer_ids import ProducerIdError
from broker.control.service import ControlService
from broker.logs import event
from broker.process import HEARTBEAT_INTERVAL_S, ChildRuntime

logger = logging.getLogger(__name__)

# Requests one connection may have running at once. A guess: far above what
# a net process has in flight for its clients' control-plane requests, low
# enough to bound memory if one misbehaves.
MAX_IN_FLIGHT = 4096

READ_CHUNK_BYTES = 256 * 1024

# How long a stopping control process waits for in-flight requests (an
# OffsetCommit waiting for its fsync) before closing connections.
DRAIN_TIMEOUT_S = 5.0

# The counter column other processes watch for metadata changes.
METADATA_VERSION_GAUGE = "metadata_version_gauge"

# Room for the envelope around the largest Kafka frame.
ENVELOPE_ALLOWANCE = 64


class ControlServer:
    """Accepts forwarded-request connections on ``listener`` and answers them
    through ``service``."""

    def __init__(
        self, service: ControlService, listener: socket.socket, *, max_frame_bytes: int
    ) -> None:
        self.service = service
        self.listener = listener
        self.max_payload_bytes = max_frame_bytes + ENVELOPE_ALLOWANCE
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._connection_ids = itertools.count()

    async def start(self) -> None:
        self.listener.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._on_connection, sock=self.listener
        )

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Wait for in-flight requests; return how many were still running
        at the bound (they are cancelled)."""
        if not self._tasks:
            return 0
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        return len(pending)

    async def close(self) -> None:
        """Stop accepting and close every connection."""
        self.stop_accepting()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = next(self._connection_ids)
        self._writers.add(writer)
        event(logger, logging.INFO, "control.connection_opened", connection=connection)
        messages = MessageReader(self.max_payload_bytes, frames_required=True)
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        reason = "closed by peer"
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                try:
                    batch = messages.feed(data)
                except ForwardingError as exc:
                    reason = exc.reason
                    event(
                        logger,
                        logging.WARNING,
                        "control.connection_protocol_error",
                        connection=connection,
                        reason=exc.reason,
                    )
                    break
                for message in batch:
                    await slots.acquire()
                    task = asyncio.create_task(self._serve(message, writer, slots))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except ConnectionError as exc:
            reason = str(exc)
        finally:
            self._writers.discard(writer)
            writer.close()
            event(
                logger,
                logging.INFO,
                "control.connection_closed",
                connection=connection,
                reason=reason,
            )

    async def _serve(
        self, message: Message, writer: asyncio.StreamWriter, slots: asyncio.Semaphore
    ) -> None:
        try:
            response = await self.service.handle(message.payload)
            if writer.is_closing():
                # The net process went away; its requests still took effect.
                return
            writer.write(encode_reply(message.tag, response))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            slots.release()


async def serve(
    service: ControlService,
    listener: socket.socket,
    *,
    max_frame_bytes: int,
    stop: asyncio.Event,
    beat: Callable[[], None] | None = None,
    parent_alive: Callable[[], bool] | None = None,
) -> None:
    """Serve until ``stop`` is set (or the parent dies), then shut down in
    order (see the module docstring). ``beat`` runs every heartbeat."""
    server = ControlServer(service, listener, max_frame_bytes=max_frame_bytes)
    await server.start()
    event(
        logger,
        logging.INFO,
        "control.serving",
        groups_offsets=len(service.offsets.groups()),
    )

    # Each turn waits at most one heartbeat interval.
    while not stop.is_set():
        if beat is not None:
            beat()
        if parent_alive is not None and not parent_alive():
            event(logger, logging.WARNING, "control.parent_gone")
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL_S)

    event(logger, logging.INFO, "control.stopping")
    server.stop_accepting()
    service.groups.shutdown()
    cancelled = await server.drain()
    if cancelled:
        event(
            logger,
            logging.WARNING,
            "control.requests_cancelled",
            count=cancelled,
            reason=f"still running after {DRAIN_TIMEOUT_S} s",
        )
    await service.close()
    await server.close()


def main(runtime: ChildRuntime) -> int:
    """The control process (``python -m broker.control``)."""
    return uvloop.run(_run(runtime))


async def _run(runtime: ChildRuntime) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    exit_code = 0

    def on_sigterm() -> None:
        runtime.request_stop()
        stop.set()

    def on_fatal(_exc: Exception) -> None:
        nonlocal exit_code
        exit_code = 1
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    fd = runtime.plan.fds.get("control_listener", -1)
    if fd < 0:
        event(
            logger,
            logging.ERROR,
            "control.start_failed",
            error="no control_listener fd",
        )
        return 2
    listener = socket.socket(fileno=fd)
    settings = runtime.settings
    try:
        service = ControlService(settings)
    except (OffsetLogError, ProducerIdError, OSError, ValueError) as exc:
        event(logger, logging.ERROR, "control.start_failed", error=str(exc))
        return 1
    service.on_fatal = on_fatal

    # Net processes and the writer watch this gauge to reload metadata.json.
    gauges = runtime.counters.row
    version_column = runtime.memory.counters.counter_id(METADATA_VERSION_GAUGE)

    def publish_version(version: int) -> None:
        gauges[version_column] = version

    service.on_metadata_version = publish_version
    service.publish_metadata_version()

    # The coordinator counts completed rebalances itself; the heartbeat
    # copies the growth into this process's counter row for the metrics.
    rebalances_column = runtime.memory.counters.counter_id("group_rebalances")
    counted = 0

    def beat() -> None:
        nonlocal counted
        runtime.beat()
        completed = service.groups.statistics().rebalances_completed
        if completed > counted:
            runtime.counters.add(rebalances_column, completed - counted)
            counted = completed

    await serve(
        service,
        listener,
        max_frame_bytes=settings.max_request_bytes,
        stop=stop,
        beat=beat,
        parent_alive=runtime.parent_alive,
    )
    return exit_code
