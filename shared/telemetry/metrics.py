"""Prometheus exposition. Each service owns its metrics and its registry (``services/<name>/metrics.py``).

A service that knows whether it is making progress also answers ``/healthz`` on the same port:
HTTP 200 with ``{"status": "ok", ...}`` while it is, 503 with the status and why otherwise.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.exposition import ThreadingWSGIServer

HealthCheck = Callable[[], tuple[bool, dict[str, str]]]


def start_metrics_server(
    port: int,
    registry: CollectorRegistry | None = None,
    addr: str = "0.0.0.0",
    health: HealthCheck | None = None,
) -> None:
    """Serve ``/metrics`` (and ``/healthz`` when given ``health``) on ``port``; port 0 means the
    service exports no HTTP endpoint."""
    if not port:
        return
    if health is None:
        start_http_server(port, addr=addr, registry=registry or DEFAULT_REGISTRY)
        return
    app = _with_health(make_wsgi_app(registry or DEFAULT_REGISTRY), health)
    server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()


def _with_health(metrics_app: Any, health: HealthCheck) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)
        healthy, body = health()
        data = json.dumps(body).encode()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""
