"""The control process: topic metadata, consumer groups, committed offsets."""
