"""The control process: topic metadata, consumer groups, committed offsets
and producer ids, behind one Unix socket that net processes forward
control-plane requests to.

Modules:
- ``forwarding``: the tagged envelope around forwarded Kafka frames (sans-IO).
- ``client``: ``ControlClient``, the net and metrics processes' side.
- ``server``: the process main loop and the Unix-socket server.
- ``service``: the request entry point (frame in, frame out), fsync batching
  of the offsets log and the group timers.
- ``group_api`` / ``admin``: the Kafka request handlers.
- ``groups``: the classic group coordinator state machine (sans-IO).
- ``offsets``: committed offsets and their append-only log.
- ``metadata``: topics, partitions and configs (``metadata.json``).
- ``configs``: config defaults and descriptions; ``producer_ids``: producer
  id allocation; ``responses``: whole-request error responses.
"""
