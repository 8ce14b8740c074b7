"""Shared-memory building blocks: rings, shared tables, counters, notifiers.

Nothing here knows about Kafka; the broker gives meaning to the bytes.
"""
