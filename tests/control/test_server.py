"""The control server: framing errors, and the ordered shutdown of
``serve`` over a real abstract Unix socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from broker.control.client import ControlClient
from broker.control.forwarding import encode_request
from broker.control.offsets import OffsetStore
from broker.control.server import ControlServer, serve
from broker.settings import Settings
from net.kafka.codec import decode_response
from net.kafka.codec import encode_request as encode_kafka_request
from net.kafka.errors import ErrorCode
from net.kafka.schema import ApiKey
from tests.control.support import listen, make_service, run_uvloop, unique_address

MAX_FRAME = 1 << 20


def test_server_closes_connection_on_bad_envelope(settings: Settings) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        address = unique_address()
        service = make_service(settings)
        server = ControlServer(service, listen(address), max_frame_bytes=MAX_FRAME)
        await server.start()
        loop = asyncio.get_running_loop()

        # A good request first: answered.
        good = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        good.setblocking(False)
        await loop.sock_connect(good, address)
        frame = encode_kafka_request(ApiKey.LIST_GROUPS, 0, 5, "c", {})
        await loop.sock_sendall(good, encode_request(41, frame))
        reply = await loop.sock_recv(good, 4096)
        good.close()

        # Then a length no message can have: the server hangs up.
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.setblocking(False)
        await loop.sock_connect(bad, address)
        await loop.sock_sendall(bad, struct.pack(">iq", 2**30, 1))
        closed = await loop.sock_recv(bad, 4096)
        bad.close()
        await server.close()
        return reply, closed

    reply, closed = run_uvloop(scenario())
    length, tag = struct.unpack_from(">iq", reply)
    assert tag == 41 and length == len(reply) - 4
    _, body = decode_response(ApiKey.LIST_GROUPS, 0, reply[16:])
    assert body["error_code"] == 0
    assert closed == b""


def test_serve_stops_in_order_answering_parked_joins(settings: Settings) -> None:
    async def scenario() -> tuple[dict[str, Any], int]:
        address = unique_address()
        service = make_service(settings, initial_rebalance_delay_ms=60_000)
        stop = asyncio.Event()
        beats: list[int] = []
        serving = asyncio.ensure_future(
            serve(
                service,
                listen(address),
                max_frame_bytes=MAX_FRAME,
                stop=stop,
                beat=lambda: beats.append(1),
                parent_alive=lambda: True,
            )
        )
        client = ControlClient(address, max_frame_bytes=MAX_FRAME)
        topic = {"name": "orders", "num_partitions": 1, "replication_factor": 1}
        await client.request(ApiKey.CREATE_TOPICS, 4, {"topics": [topic]})
        commit = {
            "group_id": "g",
            "generation_id_or_member_epoch": -1,
            "member_id": "",
            "topics": [
                {
                    "name": "orders",
                    "partitions": [{"partition_index": 0, "committed_offset": 8}],
                }
            ],
        }
        await client.request(ApiKey.OFFSET_COMMIT, 2, commit)
        join = {
            "group_id": "waiting",
            "session_timeout_ms": 10_000,
            "member_id": "",
            "protocol_type": "consumer",
            "protocols": [{"name": "range", "metadata": b""}],
        }
        parked = asyncio.ensure_future(client.request(ApiKey.JOIN_GROUP, 2, join))
        await asyncio.sleep(0.6)
        assert not parked.done()

        stop.set()
        answer = await parked
        await serving
        await client.close()
        return answer, len(beats)

    answer, beats = run_uvloop(scenario())
    assert answer["error_code"] == ErrorCode.COORDINATOR_NOT_AVAILABLE
    assert beats >= 2
    # The commit is on disk after the stop.
    store = OffsetStore.open(settings.data_dir)
    assert store.fetch("g")[("orders", 0)].offset == 8
    store.close()
