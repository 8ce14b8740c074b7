"""Network I/O processes: Kafka codec, record batch checks, connections."""
