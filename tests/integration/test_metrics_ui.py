"""The live UI in a real headless Chromium (Debian ``chromium``, driven by
Playwright with the system browser), loaded while records are produced:
the charts redraw with new values every second, the tables show the
broker's topics, groups and processes, and the page asks nothing of any
other origin. A screenshot is saved in the test's temporary directory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import BrokerProcess, require_tool
from tests.metrics.live import create_topic, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# TESTING.md: without the networking flags Chromium tries to reach the
# internet at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOPIC = "ui-load"
GROUP = "ui-readers"

READ_STATE = """() => {
  const chart = (id) => {
    const element = document.getElementById(id);
    const values = {};
    for (const item of element.querySelectorAll('.legend .item')) {
      values[item.dataset.series] = item.dataset.value;
    }
    return {
      draws: Number(element.dataset.draws || 0),
      lastTime: Number(element.dataset.lastTime || 0),
      values,
      pixels: element.querySelector('canvas').toDataURL(),
    };
  };
  const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr:not(.empty)`)]
    .map((tr) => [...tr.cells].map((td) => td.textContent));
  return {
    records: chart('chart-records'),
    bytes: chart('chart-bytes'),
    latency: chart('chart-latency'),
    lag: chart('chart-lag'),
    cpu: chart('chart-cpu'),
    memory: chart('chart-memory'),
    ring: chart('chart-ring'),
    topics: rows('topics'),
    groups: rows('groups'),
    processes: rows('processes'),
    status: document.getElementById('status').textContent,
  };
}"""


class Load:
    """Produces records in a background thread until stopped."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.stop = threading.Event()
        self.sent = 0
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ui-load")

    def _run(self) -> None:
        try:
            producer = Producer(
                {"bootstrap.servers": self.broker.bootstrap, "linger.ms": 5}
            )
            value = b"x" * 200
            deadline = time.monotonic() + 120
            while not self.stop.is_set() and time.monotonic() < deadline:
                for _ in range(500):
                    producer.produce(TOPIC, value=value)
                    self.sent += 1
                producer.poll(0)
                # About 5,000 records a second: visible, gentle on 2 cores.
                time.sleep(0.1)
            assert producer.flush(30) == 0
        except BaseException as exc:  # reported by the test thread
            self.failure = exc

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(60)
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def loaded_broker(broker_factory: type[BrokerProcess]) -> Iterator[BrokerProcess]:
    require_tool("chromium")
    broker = broker_factory().start()
    create_topic(broker, TOPIC, 2)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": GROUP})
    try:
        consumer.commit(offsets=[TopicPartition(TOPIC, 0, 0)], asynchronous=False)
    finally:
        consumer.close()
    try:
        yield broker
    finally:
        assert broker.stop() == 0, broker.log_text()[-3000:]


def test_ui_charts_update_while_records_are_produced(
    loaded_broker: BrokerProcess, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    chromium = require_tool("chromium")
    origin = f"http://127.0.0.1:{loaded_broker.http_port}"
    requested: list[str] = []
    errors: list[str] = []

    with Load(loaded_broker) as load, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda m: errors.append(m.text) if m.type == "error" else None,
            )
            page.goto(origin + "/", wait_until="domcontentloaded")

            def state() -> dict[str, Any]:
                result: dict[str, Any] = page.evaluate(READ_STATE)
                return result

            first = wait_for(
                state,
                lambda s: (
                    s["records"]["draws"] >= 2
                    and float(s["records"]["values"].get("records_in_per_s") or 0) > 0
                ),
                30,
                "records chart drawn with records coming in",
            )
            time.sleep(2.5)
            second = wait_for(
                state,
                lambda s: s["records"]["lastTime"] > first["records"]["lastTime"],
                10,
                "a newer sample on the chart",
            )
            # The one-minute window shows the short history best.
            page.click(".window button[data-seconds='60']")
            page.wait_for_function(
                '() => document.querySelector(".window button.active")'
                ".dataset.seconds === '60'"
            )
            page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        finally:
            browser.close()

    assert load.sent > 0
    for chart in ("records", "bytes", "cpu", "memory", "ring"):
        assert second[chart]["draws"] > first[chart]["draws"], chart
        assert second[chart]["pixels"] != first[chart]["pixels"], chart
    assert float(second["bytes"]["values"]["bytes_in_per_s"]) > 0
    assert second["records"]["values"] != first["records"]["values"] or (
        second["bytes"]["values"] != first["bytes"]["values"]
    )
    assert set(second["cpu"]["values"]) == {
        "supervisor",
        "writer",
        "control",
        "metrics",
        "net-0",
        "net-1",
    }
    assert float(second["latency"]["values"]["latency_p99_ms"]) > 0
    assert float(second["lag"]["values"]["lag_records"]) > 0
    assert second["status"] == "live"

    assert [row[0] for row in second["topics"]] == [TOPIC]
    assert second["groups"][0][0] == GROUP
    assert len(second["processes"]) == 6
    assert all(row[-1] == "running" for row in second["processes"])

    assert (tmp_path / "ui.png").stat().st_size > 10_000
    assert requested and all(url.startswith(origin + "/") for url in requested)
    assert not errors, errors
