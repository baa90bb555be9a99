"""Prometheus exposition. Each service owns its metrics and its registry (``services/<name>/metrics.py``)."""

from __future__ import annotations

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, start_http_server


def start_metrics_server(port: int, registry: CollectorRegistry | None = None, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``port``; port 0 means the service exports no HTTP endpoint."""
    if port:
        start_http_server(port, addr=addr, registry=registry or DEFAULT_REGISTRY)
