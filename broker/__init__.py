"""Ringbus broker: supervisor, settings, log writer, storage and control."""
