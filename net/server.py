"""The net process: accepts Kafka connections and routes their requests.

One process per ``RINGBUS_NET_PROCS``, each on its own SO_REUSEPORT
listening socket (bound by the supervisor and inherited), one uvloop event
loop, no threads. Requests are routed by API key:

    ApiVersions, Metadata, SaslHandshake    answered here
    Produce, DeleteRecords                  produce ring -> writer (net.produce)
    Fetch, ListOffsets                      partition state + sendfile (net.fetch)
    everything else advertised              forwarded to the control process

The process wakes on its eventfd (``net_wake_<i>``) for writer completions,
produce ring space and parked fetches; a short periodic check backs the
eventfd up. SIGTERM stops accepting, lets in-flight requests finish for a
bounded time, then exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import uvloop

from broker.control.client import ControlClient
from broker.control.metadata import Topic
from broker.control.responses import unavailable_response
from broker.layout import REQUEST_APIS, error_code_counter
from broker.logs import event
from broker.process import HEARTBEAT_INTERVAL_S, ChildRuntime
from net.connection import Connection
from net.fetch import FetchPath
from net.kafka import codec
from net.kafka.codec_errors import CodecError, UnsupportedApiError
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from net.kafka.versions import api_versions_response, is_accepted
from net.produce import ProducePath
from net.topics import TopicView, cluster_id

logger = logging.getLogger(__name__)

# Backstop for a lost wake-up and the cadence of the heartbeat.
POLL_INTERVAL_S = 0.05

# How long in-flight requests get to finish after SIGTERM.
DRAIN_TIMEOUT_S = 5.0

ANSWERED_HERE = frozenset(
    {
        ApiKey.API_VERSIONS,
        ApiKey.METADATA,
        ApiKey.PRODUCE,
        ApiKey.FETCH,
        ApiKey.LIST_OFFSETS,
        ApiKey.DELETE_RECORDS,
        ApiKey.SASL_HANDSHAKE,
        ApiKey.SASL_AUTHENTICATE,
    }
)


class NetProcess:
    """See the module docstring."""

    def __init__(self, runtime: ChildRuntime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.memory = runtime.memory
        self.loop = loop
        self.index = runtime.plan.index
        self.auto_create = self.settings.auto_create_topics
        self.node_id = self.settings.node_id
        self.cluster_id = cluster_id(str(self.settings.data_dir.resolve()))

        self.listener = socket.socket(fileno=runtime.plan.fds["kafka"])
        self.listener.setblocking(False)
        self.wake = self.memory.net_wakes[self.index]

        produce_ring = self.memory.produce_rings[self.index]
        completion_ring = self.memory.completion_rings[self.index]
        sender = produce_ring.sender(self.memory.writer_wake, self.wake)
        receiver = completion_ring.receiver(self.wake, self.memory.writer_wake)
        self.produce = ProducePath(self, sender, receiver)
        self.fetch = FetchPath(self)
        self.topics = TopicView(self)
        self.control = ControlClient.for_prefix(
            runtime.plan.prefix,
            loop=loop,
            name=runtime.plan.name,
            max_frame_bytes=self.settings.max_request_bytes,
        )

        self.connections: dict[int, Connection] = {}
        self.next_connection_id = 1
        self.background: set[asyncio.Task[Any]] = set()
        self.stopping = False

        counters = self.memory.counters
        self.counters = runtime.counters
        self.c_accepted = counters.counter_id("connections_accepted")
        self.c_active = counters.counter_id("connections_active_gauge")
        self.c_requests = counters.counter_id("requests")
        self.c_errors = counters.counter_id("request_errors")
        self.h_latency = counters.histogram_id("request_latency_us")
        # api key -> (requests column, errors column, latency histogram)
        self.api_columns = {
            key: (
                counters.counter_id(f"requests_{name}"),
                counters.counter_id(f"request_errors_{name}"),
                counters.histogram_id(f"request_latency_us_{name}"),
            )
            for key, name in REQUEST_APIS.items()
        }
        self._error_columns: dict[int, int] = {}
        self.row = counters.counters[runtime.plan.slot]

    # -- life cycle -------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_reader(self.listener.fileno(), self._accept)
        loop.add_reader(self.wake.fileno(), self._on_wake)
        self.produce.receiver.arm()
        ticker = loop.create_task(self._tick(stop))

        await stop.wait()
        self.stopping = True
        loop.remove_reader(self.listener.fileno())
        await self._drain()
        ticker.cancel()
        for connection in list(self.connections.values()):
            connection.close("broker stopping", level=logging.DEBUG)
        await self.control.close()
        self.fetch.close()
        return 0

    async def _tick(self, stop: asyncio.Event) -> None:
        last_beat = 0.0
        while not stop.is_set():
            await asyncio.sleep(POLL_INTERVAL_S)
            self._service()
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_INTERVAL_S:
                self.runtime.beat()
                last_beat = now
                if not self.runtime.parent_alive():
                    stop.set()

    async def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.produce.pending and time.monotonic() < deadline:
            self._service()
            await asyncio.sleep(POLL_INTERVAL_S)

    # -- wake-ups ---------------------------------------------------------------

    def _on_wake(self) -> None:
        self.wake.drain()
        self._service()

    def _service(self) -> None:
        produce = self.produce
        produce.receiver.disarm()
        produce.drain_completions()
        if produce.stalled:
            produce.sender.disarm()
            produce.retry_stalled()
        self.fetch.wake()

        # Arm for the next completion; if some arrived meanwhile, take them
        # and arm again (bounded: the writer cannot outrun us forever).
        for _ in range(64):
            if not produce.receiver.arm():
                return
            produce.receiver.disarm()
            produce.drain_completions()

    # -- connections ------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                event(logger, logging.ERROR, "listener.accept_failed", error=exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection_id = self.next_connection_id
            self.next_connection_id += 1
            peer = f"{address[0]}:{address[1]}"
            connection = Connection(self, sock, peer, connection_id)
            self.connections[connection_id] = connection
            self.counters.add(self.c_accepted)
            self.row[self.c_active] = len(self.connections)
            event(
                logger,
                logging.DEBUG,
                "conn.accepted",
                connection=connection_id,
                peer=peer,
            )
            connection.start_reading()

    def connection_closed(self, connection: Connection) -> None:
        self.connections.pop(connection.connection_id, None)
        self.row[self.c_active] = len(self.connections)
        self.produce.connection_closed(connection)

    def request_done(
        self, api_key: int, started_ns: int, error_codes: Sequence[int] = ()
    ) -> None:
        """Count a finished request: totals and per API, latency, and each
        non-zero error code its response carries."""
        columns = self.api_columns.get(api_key)
        latency_us = (time.monotonic_ns() - started_ns) // 1000
        counters = self.counters
        counters.add(self.c_requests)
        counters.observe(self.h_latency, latency_us)
        if columns is not None:
            counters.add(columns[0])
            counters.observe(columns[2], latency_us)
        failed = False
        for code in error_codes:
            if code:
                failed = True
                counters.add(self.error_columns(code))
        if failed:
            counters.add(self.c_errors)
            if columns is not None:
                counters.add(columns[1])

    def error_columns(self, code: int) -> int:
        column = self._error_columns.get(code)
        if column is None:
            column = self.memory.counters.counter_id(error_code_counter(code))
            self._error_columns[code] = column
        return column

    # -- requests ---------------------------------------------------------------

    def handle_frame(self, connection: Connection, frame: memoryview) -> bool:
        """Handle one request frame; False if it stalled (retried later)."""
        try:
            header, offset = codec.decode_request_header(frame)
        except UnsupportedApiError as exc:
            connection.close("unsupported api", api=exc.reason)
            return True
        except CodecError as exc:
            connection.close("bad request header", error=exc.reason)
            return True

        api_key = header.api_key
        if not is_accepted(api_key, header.api_version):
            connection.close(
                "unsupported api version",
                api_key=api_key,
                api_version=header.api_version,
            )
            return True
        if api_key == ApiKey.API_VERSIONS:
            started = time.monotonic_ns()
            connection.send_now(
                [api_versions_response(header.correlation_id, header.api_version)]
            )
            self.request_done(api_key, started)
            return True
        if api_key not in ANSWERED_HERE:
            self._forward(connection, header, frame)
            return True

        try:
            body = codec.decode_request_body(header, frame, offset)
        except CodecError as exc:
            connection.close("bad request body", api_key=api_key, error=exc.reason)
            return True

        try:
            return self._dispatch(connection, header, body)
        except Exception:
            # An internal fault: this connection cannot trust its response
            # order any more; others are unaffected.
            event(
                logger,
                logging.ERROR,
                "request.failed",
                exc_info=True,
                api_key=api_key,
                peer=connection.peer,
            )
            connection.close("internal error", level=logging.ERROR)
            return True

    def _dispatch(
        self, connection: Connection, header: codec.RequestHeader, body: dict[str, Any]
    ) -> bool:
        api_key = header.api_key
        if api_key == ApiKey.PRODUCE:
            return self.produce.handle_produce(connection, header, body)
        if api_key == ApiKey.FETCH:
            self.fetch.handle_fetch(connection, header, body)
            return True
        if api_key == ApiKey.LIST_OFFSETS:
            self.fetch.handle_list_offsets(connection, header, body)
            return True
        if api_key == ApiKey.METADATA:
            self._metadata(connection, header, body)
            return True
        if api_key == ApiKey.DELETE_RECORDS:
            return self.produce.handle_delete_records(connection, header, body)
        if api_key in (ApiKey.SASL_HANDSHAKE, ApiKey.SASL_AUTHENTICATE):
            self._sasl(connection, header)
            return True
        raise AssertionError(f"api key {api_key} has no handler")

    # -- forwarding to the control process ------------------------------------------

    def _forward(
        self, connection: Connection, header: codec.RequestHeader, frame: memoryview
    ) -> None:
        slot = connection.reserve_slot()
        started = time.monotonic_ns()
        # The control process gets the request exactly as the client sent it.
        request = len(frame).to_bytes(4, "big") + bytes(frame)

        async def relay() -> None:
            reply: bytes | None
            try:
                reply = await self.control.call(request)
            except Exception as exc:
                # The control process is restarting or overloaded: answer
                # with the retriable error clients expect for this API.
                event(
                    logger,
                    logging.WARNING,
                    "control.forward_failed",
                    api_key=header.api_key,
                    error=exc,
                )
                reply = unavailable_response(request)
            if reply is None:
                connection.close(
                    "control process refused the request", api_key=header.api_key
                )
                return
            self.request_done(header.api_key, started, _error_codes(header, reply))
            connection.complete(slot, [reply])

        task = self.loop.create_task(relay())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- Metadata -----------------------------------------------------------------

    def _metadata(
        self, connection: Connection, header: codec.RequestHeader, body: dict[str, Any]
    ) -> None:
        started = time.monotonic_ns()
        slot = connection.reserve_slot()
        requested = body.get("topics")
        if header.api_version == 0 and requested == []:
            requested = None  # v0: an empty list means every topic
        names = None if requested is None else [t["name"] for t in requested]
        allow_create = self.auto_create and body.get("allow_auto_topic_creation", True)

        missing = []
        if names is not None and allow_create:
            missing = [n for n in names if n and self.topics.topic(n) is None]
        if missing:

            async def create_then_answer() -> None:
                try:
                    await self.topics.create(missing)
                except Exception:
                    event(
                        logger, logging.ERROR, "topic.auto_create_error", exc_info=True
                    )
                self._answer_metadata(connection, header, slot, names, started)

            task = self.loop.create_task(create_then_answer())
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            return
        self._answer_metadata(connection, header, slot, names, started)

    def _answer_metadata(
        self,
        connection: Connection,
        header: codec.RequestHeader,
        slot: Any,
        names: list[str] | None,
        started: int,
    ) -> None:
        node = self.node_id
        listed: list[tuple[str, Topic | None]]
        if names is None:
            listed = [(t.name, t) for t in self.topics.all_topics()]
        else:
            listed = [(name, self.topics.topic(name)) for name in names]

        topics_out: list[dict[str, Any]] = []
        for name, topic in listed:
            if topic is None:
                topics_out.append(
                    {
                        "error_code": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                        "name": name,
                        "partitions": [],
                    }
                )
                continue
            topics_out.append(
                {
                    "error_code": 0,
                    "name": name,
                    "topic_id": _uuid(topic.topic_id),
                    "is_internal": False,
                    "partitions": [
                        {
                            "error_code": 0,
                            "partition_index": partition,
                            "leader_id": node,
                            "leader_epoch": 0,
                            "replica_nodes": [node],
                            "isr_nodes": [node],
                            "offline_replicas": [],
                        }
                        for partition in range(len(topic.partitions))
                    ],
                    "topic_authorized_operations": -2147483648,
                }
            )
        response = {
            "throttle_time_ms": 0,
            "brokers": [
                {
                    "node_id": node,
                    "host": self.settings.advertised,
                    "port": self.settings.kafka_port,
                    "rack": None,
                }
            ],
            "cluster_id": self.cluster_id,
            "controller_id": node,
            "topics": topics_out,
            "cluster_authorized_operations": -2147483648,
        }
        chunks = codec.encode_response(
            ApiKey.METADATA, header.api_version, header.correlation_id, response
        )
        self.request_done(
            ApiKey.METADATA, started, [t["error_code"] for t in topics_out]
        )
        connection.complete(slot, chunks)

    # -- SASL ---------------------------------------------------------------------

    def _sasl(self, connection: Connection, header: codec.RequestHeader) -> None:
        # LIMITATION: no SASL mechanism is offered; clients configured for
        # SASL get UNSUPPORTED_SASL_MECHANISM / ILLEGAL_SASL_STATE.
        if header.api_key == ApiKey.SASL_HANDSHAKE:
            body: dict[str, Any] = {
                "error_code": ErrorCode.UNSUPPORTED_SASL_MECHANISM,
                "mechanisms": [],
            }
        else:
            body = {
                "error_code": ErrorCode.ILLEGAL_SASL_STATE,
                "error_message": "SASL is not enabled on this broker",
                "auth_bytes": b"",
                "session_lifetime_ms": 0,
            }
        connection.send_now(
            codec.encode_response(
                header.api_key, header.api_version, header.correlation_id, body
            )
        )


def _error_codes(header: codec.RequestHeader, reply: bytes) -> list[int]:
    """Every error code in a control-plane response (for the counters)."""
    try:
        _, body = codec.decode_response(
            header.api_key, header.api_version, memoryview(reply)[4:]
        )
    except Exception:
        return []
    found: list[int] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "error_code" and isinstance(item, int):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body)
    return found


def _uuid(hex_id: str) -> uuid.UUID:
    return uuid.UUID(hex=hex_id)


def main(runtime: ChildRuntime) -> int:
    uvloop.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        process = NetProcess(runtime, loop)
        # The codecs, schemas and rings built so far live as long as the
        # process: frozen, a full collection does not rescan them (about
        # 7 ms of pause per full collection at start, measured).
        gc.freeze()
        return loop.run_until_complete(process.run())
    finally:
        loop.close()
