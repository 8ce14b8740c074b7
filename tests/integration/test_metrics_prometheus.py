"""A real Prometheus server scrapes a real broker's /metrics: the series it
stores carry the values of a known load, and every query of the Grafana
dashboard runs on them.

Prometheus (Debian ``prometheus``) listens on 127.0.0.1 with a temporary
config (scrape interval 1 s) and data directory, and is stopped by its PID.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metrics.prometheus import FAMILIES, series_names
from tests.conftest import BrokerProcess, free_port, require_tool
from tests.metrics.live import create_topic, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DASHBOARD = Path(__file__).resolve().parents[2] / "metrics" / "grafana" / "ringbus.json"
RECORDS = 1500
GROUP = "prometheus-readers"
COMMITTED = 1000


class PrometheusServer:
    """``prometheus`` on loopback, scraping one target every second."""

    def __init__(self, directory: Path, target_port: int) -> None:
        self.port = free_port()
        self.log_path = directory / "prometheus.log"
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: ringbus\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    require_tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def get(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        document = self.get("/api/v1/query", query=expr)
        assert document["status"] == "success", document
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited: {self.log_path.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/-/ready", timeout=2
                ) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {timeout_s} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def scraped(
    broker_factory: type[BrokerProcess], tmp_path: Path
) -> Iterator[tuple[BrokerProcess, PrometheusServer]]:
    """A fresh broker after a known load, and a Prometheus scraping it."""
    require_tool("prometheus")
    broker = broker_factory().start()
    create_topic(broker, "scraped", 2)
    produce(broker, "scraped", RECORDS, partition=0)
    _commit(broker, GROUP, "scraped", COMMITTED)

    server = PrometheusServer(tmp_path, broker.http_port)
    try:
        server.wait_ready(60)
        yield broker, server
    finally:
        server.stop()
        assert broker.stop() == 0, broker.log_text()[-3000:]


def _commit(broker: BrokerProcess, group: str, topic: str, offset: int) -> None:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        consumer.close()


def test_prometheus_stores_ringbus_series_with_the_load_values(
    scraped: tuple[BrokerProcess, PrometheusServer],
) -> None:
    _, prometheus = scraped

    up = wait_for(
        lambda: prometheus.value('up{job="ringbus"}'), lambda v: v == 1, 60, "up"
    )
    assert up == 1
    high_watermark = 'ringbus_partition_high_watermark{topic="scraped",partition="0"}'
    assert wait_for(
        lambda: prometheus.value(high_watermark), lambda v: v == RECORDS, 30, "hw"
    )
    assert prometheus.value("ringbus_produce_records_total") == RECORDS
    assert (
        prometheus.value(
            'ringbus_partition_high_watermark{topic="scraped",partition="1"}'
        )
        == 0
    )
    lag = (
        "ringbus_consumer_group_lag_records"
        f'{{group="{GROUP}",topic="scraped",partition="0"}}'
    )
    assert wait_for(
        lambda: prometheus.value(lag), lambda v: v == RECORDS - COMMITTED, 30, "lag"
    )
    assert prometheus.value("sum(ringbus_process_up)") == 6
    assert prometheus.value("count(ringbus_process_cpu_seconds_total > 0)") == 6
    assert prometheus.value("sum(ringbus_ring_capacity_bytes)") == 2 * 64 * 2**20
    produce_bytes = prometheus.value("ringbus_produce_bytes_total")
    size = prometheus.value('sum(ringbus_partition_size_bytes{topic="scraped"})')
    assert produce_bytes == size and size is not None and size > RECORDS * 100
    latency_count = prometheus.value("ringbus_request_latency_seconds_count")
    assert latency_count is not None and latency_count > 0

    names = set(prometheus.get("/api/v1/label/__name__/values")["data"])
    ringbus = {name for name in names if name.startswith("ringbus_")}
    exported = {name for family in FAMILIES for name in series_names(family)}
    assert ringbus <= exported, ringbus - exported
    for required in (
        "ringbus_produce_bytes_total",
        "ringbus_fetch_bytes_total",
        "ringbus_request_latency_seconds_bucket",
        "ringbus_fsync_seconds_bucket",
        "ringbus_consumer_group_lag_records",
        "ringbus_process_resident_memory_bytes",
        "ringbus_ring_fill_ratio",
        "ringbus_partition_log_start_offset",
    ):
        assert required in ringbus, required


def test_every_grafana_query_runs_on_the_scraped_series(
    scraped: tuple[BrokerProcess, PrometheusServer],
) -> None:
    _, prometheus = scraped
    # Enough scrapes for rate() over the dashboard's intervals.
    wait_for(
        lambda: prometheus.value("count_over_time(up[1m])"),
        lambda v: v is not None and v >= 6,
        60,
        "six scrapes",
    )
    instance = prometheus.query("ringbus_build_info")[0]["metric"]["instance"]

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    empty = []
    for expr in exprs:
        concrete = expr.replace("$instance", instance).replace("$__rate_interval", "4s")
        if not prometheus.query(concrete):
            empty.append(expr)

    # Queries of counters nothing has counted yet may be empty (a `> 0`
    # filter, per-API series); the core charts must have data.
    for expr in exprs:
        if any(
            name in expr
            for name in (
                "ringbus_produce_records_total",
                "ringbus_process_cpu_seconds_total",
                "ringbus_process_resident_memory_bytes",
                "ringbus_consumer_group_lag_records",
                "ringbus_ring_fill_ratio",
                "ringbus_partition_size_bytes",
            )
        ):
            assert expr not in empty, expr
