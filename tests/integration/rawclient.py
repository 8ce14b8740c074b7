"""A minimal blocking Kafka client over a real socket, built on net.kafka.

For tests that need exact control of what goes on the wire (a batch resent
by hand, a fetch with particular limits); real client libraries cover
everything else.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from net.kafka import codec


class RawClient:
    """One connection; ``call`` sends a request and returns its response."""

    def __init__(self, bootstrap: str, timeout_s: float = 30.0) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.correlation_id = 0

    def send(self, api_key: int, version: int, body: dict[str, Any]) -> int:
        self.correlation_id += 1
        frame = codec.encode_request(
            api_key, version, self.correlation_id, "raw-test", body
        )
        self.sock.sendall(frame)
        return self.correlation_id

    def receive(self, api_key: int, version: int) -> tuple[int, dict[str, Any]]:
        size = struct.unpack(">i", self._exactly(4))[0]
        frame = self._exactly(size)
        return codec.decode_response(api_key, version, memoryview(frame))

    def call(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any]:
        sent = self.send(api_key, version, body)
        correlation_id, response = self.receive(api_key, version)
        assert correlation_id == sent
        return response

    def _exactly(self, count: int) -> bytes:
        parts = bytearray()
        while len(parts) < count:
            chunk = self.sock.recv(count - len(parts))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            parts += chunk
        return bytes(parts)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
