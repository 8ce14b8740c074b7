"""Metrics process: counter aggregation, Prometheus text, REST API and live UI.

Modules: ``reader`` (shared memory, metadata, psutil), ``groups`` (consumer
groups and lag from the control process), ``sampler`` and ``timeseries``
(the fifteen-minute history), ``prometheus`` (the collector), ``api`` (JSON
documents), ``server`` (aiohttp routes and the live stream), ``process``
(the process main). ``static/`` holds the UI, ``grafana/`` a dashboard.
"""
