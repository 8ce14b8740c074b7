"""Tests of the perf harness (perf/ is run from the repository root)."""
