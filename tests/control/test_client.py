"""ControlClient against an in-process ControlServer over a real abstract
Unix socket, on uvloop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from broker.control.client import ControlClient, ControlUnavailableError
from broker.control.forwarding import ForwardingError
from broker.control.server import ControlServer
from broker.control.service import ControlService
from broker.settings import Settings
from net.kafka.codec import decode_response, encode_request
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.control.support import listen, make_service, run_uvloop, unique_address

MAX_FRAME = 1 << 20


async def start(service: ControlService, address: str) -> ControlServer:
    server = ControlServer(service, listen(address), max_frame_bytes=MAX_FRAME)
    await server.start()
    return server


def join_frame(correlation_id: int) -> bytes:
    body = {
        "group_id": "g",
        "session_timeout_ms": 10_000,
        "rebalance_timeout_ms": 10_000,
        "member_id": "",
        "protocol_type": "consumer",
        "protocols": [{"name": "range", "metadata": b""}],
    }
    return encode_request(ApiKey.JOIN_GROUP, 2, correlation_id, "c", body)


def decode(api_key: int, version: int, response: bytes | None) -> dict[str, Any]:
    assert response is not None
    _, body = decode_response(api_key, version, response[4:])
    return body


def test_replies_return_out_of_order_while_a_join_is_parked(settings: Settings) -> None:
    async def scenario() -> tuple[list[str], dict[str, Any]]:
        address = unique_address()
        service = make_service(settings, initial_rebalance_delay_ms=300)
        server = await start(service, address)
        client = ControlClient(address, max_frame_bytes=MAX_FRAME)
        finished: list[str] = []

        async def track(name: str, frame: bytes) -> bytes | None:
            response = await client.call(frame)
            finished.append(name)
            return response

        find = encode_request(ApiKey.FIND_COORDINATOR, 1, 2, "c", {"key": "g"})
        join, found = await asyncio.gather(
            track("join", join_frame(1)), track("find", find)
        )
        assert decode(ApiKey.FIND_COORDINATOR, 1, found)["node_id"] == 3
        await client.close()
        await service.close()
        await server.close()
        return finished, decode(ApiKey.JOIN_GROUP, 2, join)

    finished, join = run_uvloop(scenario())
    assert finished == ["find", "join"]
    assert join["error_code"] == 0 and join["generation_id"] == 1


def test_helpers_create_topics_commit_and_list(settings: Settings) -> None:
    async def scenario() -> tuple[Any, ...]:
        address = unique_address()
        service = make_service(settings)
        server = await start(service, address)
        client = ControlClient(address, max_frame_bytes=MAX_FRAME)
        created = await client.create_topics(["orders", "orders"])
        again = await client.create_topics(["orders"], partitions=2)
        commit = {
            "group_id": "lagging",
            "generation_id_or_member_epoch": -1,
            "member_id": "",
            "topics": [
                {
                    "name": "orders",
                    "partitions": [
                        {"partition_index": 0, "committed_offset": 10},
                        {"partition_index": 1, "committed_offset": 30},
                    ],
                }
            ],
        }
        await client.request(ApiKey.OFFSET_COMMIT, 2, commit)
        groups = await client.list_groups()
        offsets = await client.committed_offsets("lagging")
        await client.close()
        await service.close()
        await server.close()
        return created, again, groups, offsets

    created, again, groups, offsets = run_uvloop(scenario())
    assert created == {"orders": ErrorCode.INVALID_REQUEST}  # named twice
    assert again == {"orders": 0}
    assert groups == [("lagging", "", "Empty")]
    assert offsets == {("orders", 0): 10, ("orders", 1): 30}


def test_call_returns_none_for_request_control_does_not_serve(
    settings: Settings,
) -> None:
    async def scenario() -> bytes | None:
        address = unique_address()
        service = make_service(settings)
        server = await start(service, address)
        client = ControlClient(address, max_frame_bytes=MAX_FRAME)
        produce = encode_request(ApiKey.PRODUCE, 8, 9, "c", {"acks": 1})
        response = await client.call(produce)
        with pytest.raises(ForwardingError):
            await client.call(produce[:-1])
        await client.close()
        await server.close()
        return response

    assert run_uvloop(scenario()) is None


def test_client_reconnects_after_control_restart(settings: Settings) -> None:
    async def scenario() -> tuple[str, dict[str, Any], int]:
        address = unique_address()
        service = make_service(settings, initial_rebalance_delay_ms=60_000)
        server = await start(service, address)
        client = ControlClient(
            address, max_frame_bytes=MAX_FRAME, reconnect_timeout_s=10
        )

        # A call in flight when the control process goes away fails at once.
        parked = asyncio.ensure_future(client.call(join_frame(1)))
        await asyncio.sleep(0.05)
        await server.close()
        try:
            await parked
            failure = "none"
        except ControlUnavailableError as exc:
            failure = str(exc)
        await service.close()

        # A call made while it is down waits for the restarted process.
        later = asyncio.ensure_future(
            client.call(encode_request(ApiKey.LIST_GROUPS, 0, 3, "c", {}))
        )
        await asyncio.sleep(0.3)
        assert not later.done()
        service = make_service(settings)
        server = await start(service, address)
        listed = decode(ApiKey.LIST_GROUPS, 0, await later)
        connects = client.statistics().connects
        await client.close()
        await service.close()
        await server.close()
        return failure, listed, connects

    failure, listed, connects = run_uvloop(scenario())
    assert "may or may not have taken effect" in failure
    assert listed["error_code"] == 0
    assert connects == 2


def test_client_gives_up_after_reconnect_bound() -> None:
    async def scenario() -> float:
        client = ControlClient(
            unique_address(), max_frame_bytes=MAX_FRAME, reconnect_timeout_s=0.3
        )
        started = time.monotonic()
        with pytest.raises(ControlUnavailableError, match=r"within 0\.3 s"):
            await client.call(encode_request(ApiKey.LIST_GROUPS, 0, 1, "c", {}))
        return time.monotonic() - started

    assert 0.2 <= run_uvloop(scenario()) < 5


def test_call_times_out_when_no_reply_comes(settings: Settings) -> None:
    async def scenario() -> None:
        address = unique_address()
        service = make_service(settings, initial_rebalance_delay_ms=60_000)
        server = await start(service, address)
        client = ControlClient(address, max_frame_bytes=MAX_FRAME, call_timeout_s=0.2)
        with pytest.raises(ControlUnavailableError, match="no reply"):
            await client.call(join_frame(1))
        await client.close()
        await service.close()
        await server.close()

    run_uvloop(scenario())
