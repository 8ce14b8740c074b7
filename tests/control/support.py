"""Helpers for the control process tests: a fake clock, a bounded runner,
and a caller that sends encoded Kafka frames through
``ControlService.handle`` and decodes the responses."""

from __future__ import annotations

import asyncio
import itertools
import socket
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from broker.control.groups import GroupConfig
from broker.control.service import ControlService
from broker.settings import Settings
from net.kafka.codec import decode_response, encode_request

T = TypeVar("T")

# Every test coroutine is bounded.
TEST_TIMEOUT_S = 30.0

NODE_ID = 3
ADVERTISED_HOST = "ringbus.test"
KAFKA_PORT = 19092


class FakeClock:
    """Monotonic milliseconds that move only when told."""

    def __init__(self) -> None:
        self.now = 5_000_000.0

    def __call__(self) -> float:
        return self.now


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, TEST_TIMEOUT_S))


def make_service(
    settings: Settings,
    clock: FakeClock | None = None,
    *,
    initial_rebalance_delay_ms: int = 0,
    min_session_timeout_ms: int = 6_000,
) -> ControlService:
    config = GroupConfig(
        initial_rebalance_delay_ms=initial_rebalance_delay_ms,
        min_session_timeout_ms=min_session_timeout_ms,
    )
    if clock is None:
        return ControlService(settings, group_config=config)
    return ControlService(settings, clock=clock, group_config=config, auto_tick=False)


class Caller:
    """Sends one request through the service's entry point."""

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self._correlation_ids = itertools.count(100)

    async def __call__(
        self,
        api_key: int,
        version: int,
        body: dict[str, Any],
        client_id: str = "tester",
    ) -> dict[str, Any]:
        correlation_id = next(self._correlation_ids)
        frame = encode_request(api_key, version, correlation_id, client_id, body)
        response = await self.service.handle(frame)
        assert response is not None, f"no response to api key {api_key} v{version}"
        answered, decoded = decode_response(api_key, version, response[4:])
        assert answered == correlation_id
        return decoded


def unique_address() -> str:
    """A fresh abstract Unix socket address for one test."""
    return f"\0ringbus-test-{uuid.uuid4().hex}-control"


def listen(address: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    return listener


def run_uvloop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop, as the control and net processes do; bounded."""
    return uvloop.run(asyncio.wait_for(coroutine, TEST_TIMEOUT_S))
