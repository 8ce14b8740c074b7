"""Helpers for the metrics integration tests (tests/integration/test_metrics*):
HTTP reads of a running broker's metrics process, exact record loads with
confluent-kafka, and bounded waits."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import BrokerProcess

T = TypeVar("T")


def http_get(broker: BrokerProcess, path: str, timeout_s: float = 10.0) -> bytes:
    url = f"http://127.0.0.1:{broker.http_port}{path}"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def get_json(broker: BrokerProcess, path: str) -> Any:
    return json.loads(http_get(broker, path))


def scrape(broker: BrokerProcess) -> dict[str, list[Sample]]:
    """/metrics parsed with prometheus_client's parser: samples by family
    (counters under their ``_total`` name)."""
    text = http_get(broker, "/metrics").decode()
    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = list(family.samples)
    return families


def sample_value(
    families: dict[str, list[Sample]], name: str, **labels: str
) -> float | None:
    """The value of the one sample ``name{labels}``, None if absent."""
    family = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
    found = [
        s.value
        for s in families.get(family, families.get(name, []))
        if s.name == name and s.labels == labels
    ]
    assert len(found) <= 1, (name, labels)
    return found[0] if found else None


def wait_for(
    read: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str
) -> T:
    """Call ``read`` until ``done(value)``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not reached in {timeout_s} s; last {value!r}"
            )
        time.sleep(0.2)


def create_topic(broker: BrokerProcess, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)])
    futures[topic].result(timeout=30)


def produce(
    broker: BrokerProcess,
    topic: str,
    count: int,
    partition: int = -1,
    size: int = 100,
    **config: Any,
) -> None:
    """Produce exactly ``count`` records and wait for every acknowledgement."""
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 5, **config}
    )
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    value = b"v" * size
    for i in range(count):
        producer.produce(
            topic,
            value=value,
            key=f"k{i}".encode(),
            partition=partition,
            on_delivery=delivered,
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures
