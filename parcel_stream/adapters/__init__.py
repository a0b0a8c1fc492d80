"""I/O edges: Redis, Kafka, Prometheus, the embedded dev stack."""
