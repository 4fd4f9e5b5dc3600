"""Observability: Prometheus metrics, the log format, and log redaction."""
