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
- ``workers``: load-generating child processes started together, their
  results merged.
- ``kafka_wire``: pre-built record batches, pipelined Produce and Fetch
  frames over raw sockets.
- ``ringbus``: the broker a run targets (started for the run or given), and
  py-spy profiles of its processes.
- ``produce``, ``consume``, ``latency``, ``hops``, ``scale``: the Ringbus
  subcommands.
- ``limits``: the machine's ceilings; ``peers`` (with ``peers.redis_streams``
  and ``peers.nats_jetstream``): the same shapes against other servers.
- ``compare``, ``targets``: everything in one run, and the verdict per target.
- ``bench_ring``, ``bench_log``, ``bench_writer``, ``bench_metrics``: component
  benchmarks, run as scripts.
"""
