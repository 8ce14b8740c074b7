"""Load generators and benchmark scenarios for Ringbus and its peers.

Run from the repository root as ``python -m perf <command>``; see
``perf/README.md``. The package is a tool, not part of the broker: nothing in
``broker/``, ``shm/``, ``net/`` or ``metrics/`` imports it.

Modules:

- ``harness``: clock, fixed-rate schedule, run bounds, latency histogram,
  throughput series, payload stamping, GC pausing.
- ``report``: measurements, the JSON result file, the final table, the plot,
  the live progress bar.
- ``servers``: servers started on 127.0.0.1 in a temporary directory and
  stopped by their PID.
- ``cli``: the subcommand registry and the shared run/report flow.
- ``limits``, ``peers``: the subcommands.
"""
