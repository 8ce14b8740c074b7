"""Metrics process: counter aggregation, Prometheus text, REST API and live UI."""
