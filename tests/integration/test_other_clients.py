"""aiokafka and kafkajs against a real broker: produce, groups, consume."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BrokerProcess, require_tool
from tests.integration.test_kafka_clients import unique_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JS_DIR = Path(__file__).resolve().parent / "js"


def test_aiokafka_produces_and_consumes_in_a_group(
    module_broker: BrokerProcess,
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = unique_topic("aio")
    sent = [(f"k{i}".encode(), f"v{i}".encode() * 10) for i in range(300)]

    async def run() -> list[tuple[bytes, bytes]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=module_broker.bootstrap,
            acks="all",
            compression_type="gzip",
        )
        await producer.start()
        try:
            for key, value in sent:
                await producer.send(topic, value=value, key=key, partition=0)
            await producer.flush()
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=module_broker.bootstrap,
            group_id=f"aio-{topic}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        received: list[tuple[bytes, bytes]] = []
        try:
            async with asyncio.timeout(60):
                async for message in consumer:
                    received.append((message.key, message.value))
                    if len(received) == len(sent):
                        break
            await consumer.commit()
        finally:
            await consumer.stop()
        return received

    assert asyncio.run(run()) == sent


def test_kafkajs_round_trip_with_a_group(module_broker: BrokerProcess) -> None:
    node = require_tool("node")
    if not (JS_DIR / "node_modules" / "kafkajs").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed to install kafkajs"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300
        )
    topic = unique_topic("js")
    count = 200
    result = subprocess.run(
        [
            node,
            str(JS_DIR / "roundtrip.js"),
            module_broker.bootstrap,
            topic,
            str(count),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    values = sorted(int(m["value"].split("-")[1]) for m in seen)
    assert values == list(range(count))
    by_value = {m["value"]: m for m in seen}
    assert by_value["value-3"]["headers"] == {"h": "3"}
    assert by_value["value-4"]["key"] is None
    assert by_value["value-5"]["key"] == "key-5"
