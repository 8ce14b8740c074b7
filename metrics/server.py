"""The metrics process's HTTP/1.1 server (aiohttp) on the listening socket
the supervisor bound and passed down.

Routes (metrics/API.md documents each):

    GET /                         the live UI (metrics/static/index.html)
    GET /static/<file>            the UI's script and style sheet
    GET /metrics                  Prometheus text (metrics.prometheus)
    GET /api/v1/broker            broker summary
    GET /api/v1/processes         every process
    GET /api/v1/topics            topics with partitions
    GET /api/v1/topics/{name}     one topic (404 if unknown)
    GET /api/v1/groups            consumer groups, members, lag
    GET /api/v1/timeseries        ?seconds=N: the last N s at 1 s resolution
    GET /api/v1/stream            Server-Sent Events: one event per sample

The stream's event is encoded once per sample and the same bytes go to
every listener; a listener that cannot keep up only delays itself. At most
MAX_STREAMS listeners are served at once (more get 503), so a page left open
in many tabs cannot make the metrics process do unbounded work.

The UI is served with a Content-Security-Policy of 'self': the page loads
nothing from any other origin, so it works without network access.

Imported by the metrics process; everything runs on its event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from broker.logs import event
from metrics.api import BadRequestError, MetricsApi, parse_seconds
from shm.counters import CounterSlot

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Concurrent stream listeners served; a guess: a team watching one broker.
MAX_STREAMS = 64
# A comment line keeps idle streams (no sample yet) alive through proxies.
KEEPALIVE_S = 15.0
# How long stopping waits for requests in progress.
SHUTDOWN_TIMEOUT_S = 2.0

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

# The classic text format, which every Prometheus version reads; the names
# are all legacy-valid, so the body is the same in every format version.
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_dumps = partial(json.dumps, separators=(",", ":"), allow_nan=False)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsServer:
    """The aiohttp application and the live stream's fan-out."""

    def __init__(
        self,
        api: MetricsApi,
        registry: CollectorRegistry,
        own: CounterSlot | None = None,
    ) -> None:
        self.api = api
        self.registry = registry
        self.own = own
        self.streams = 0
        self.stopping = False
        self._event: bytes | None = None
        self._published: asyncio.Future[None] | None = None
        self._runner: web.AppRunner | None = None
        self._http_requests = (
            api.reader.counters.counter_id("metrics_http_requests") if own else -1
        )
        self.app = self._build()

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/api/v1/broker", self.broker)
        app.router.add_get("/api/v1/processes", self.processes)
        app.router.add_get("/api/v1/topics", self.topics)
        app.router.add_get("/api/v1/topics/{name}", self.topic)
        app.router.add_get("/api/v1/groups", self.groups)
        app.router.add_get("/api/v1/timeseries", self.timeseries)
        app.router.add_get("/api/v1/stream", self.stream)
        return app

    # -- life cycle -------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (already bound and listening)."""
        sock.setblocking(False)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await site.start()

    async def stop(self) -> None:
        """End the streams, then stop serving."""
        self.stopping = True
        self._wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- live stream fan-out -----------------------------------------------------

    def publish(self) -> None:
        """Called after each sample: encode the event once, wake listeners."""
        if self.streams == 0:
            self._event = None
            return
        document = self.api.stream_event()
        if document is None:
            return
        self._event = b"event: sample\ndata: " + _dumps(document).encode() + b"\n\n"
        self._wake()

    def _wake(self) -> None:
        if self._published is not None and not self._published.done():
            self._published.set_result(None)
        self._published = None

    async def _next_event(self) -> None:
        if self._published is None:
            self._published = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(asyncio.shield(self._published), KEEPALIVE_S)

    # -- handlers -----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> Any:
        if self.own is not None:
            self.own.add(self._http_requests)
        try:
            return await handler(request)
        except BadRequestError as exc:
            return _json({"error": str(exc)}, status=400)
        except web.HTTPException as exc:
            if request.path.startswith("/api/"):
                return _json({"error": exc.reason}, status=exc.status)
            raise

    async def index(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    async def broker(self, _: web.Request) -> web.Response:
        return _json(self.api.broker())

    async def processes(self, _: web.Request) -> web.Response:
        return _json(self.api.processes())

    async def topics(self, _: web.Request) -> web.Response:
        return _json(self.api.topics())

    async def topic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        document = self.api.topic(name)
        if document is None:
            return _json({"error": f"topic {name!r} does not exist"}, status=404)
        return _json(document)

    async def groups(self, _: web.Request) -> web.Response:
        return _json(self.api.groups_document())

    async def timeseries(self, request: web.Request) -> web.Response:
        seconds = parse_seconds(request.query.get("seconds"))
        return _json(self.api.timeseries(seconds))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.streams >= MAX_STREAMS:
            return _json(
                {"error": f"too many stream listeners (limit {MAX_STREAMS})"},
                status=503,
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self.streams += 1
        try:
            await response.prepare(request)
            # The browser reconnects after 2 s if the stream breaks.
            await response.write(b"retry: 2000\n\n")
            if self._event is None:
                self.publish()
            if self._event is not None:
                await response.write(self._event)
            while not self.stopping:
                try:
                    await self._next_event()
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if self._event is not None and not self.stopping:
                    await response.write(self._event)
        except ConnectionResetError:
            # The listener went away.
            pass
        finally:
            self.streams -= 1
        event(logger, logging.DEBUG, "metrics.stream_closed", streams=self.streams)
        return response


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(document, status=status, dumps=_dumps)
