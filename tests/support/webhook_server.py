"""A real HTTP server on localhost standing in for Slack/Teams/any webhook, with scripted answers."""

from __future__ import annotations

import json
import ssl
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.local_http import LocalHttpServer


class WebhookServer(LocalHttpServer):
    """Answers POSTs with the scripted statuses (then 200), recording every request body.

    ``received`` has every POST as it arrived (headers, body), answered or not; ``delays`` makes
    the next answers wait that many seconds first (a slow receiver, for the crash tests).
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server-side context; the server then speaks HTTPS only."""
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: deque[tuple[int, dict[str, str]]] = deque()
        self.received: list[tuple[dict[str, str], Any]] = []
        self.delays: deque[float] = deque()
        self.default_status = 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with server._lock:
                    server.received.append((dict(self.headers.items()), body))
                    delay = server.delays.popleft() if server.delays else 0.0
                if delay and server.stopping.wait(delay):
                    return
                with server._lock:
                    status, extra = server.script.popleft() if server.script else (server.default_status, {})
                    if status == 200:
                        server.requests.append(body)
                        server.headers.append(dict(self.headers.items()))
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client is gone (killed while waiting)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler, tls=tls)

    @property
    def url(self) -> str:
        return f"{self.origin}/hook"

    def delivered(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)
