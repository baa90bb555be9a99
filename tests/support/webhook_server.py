"""A real HTTP server on localhost standing in for Slack/Teams/any webhook, with scripted answers."""

from __future__ import annotations

import json
import ssl
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookServer:
    """Answers POSTs with the scripted statuses (then 200), recording every request body.

    ``received`` has every POST as it arrived (headers, body), answered or not; ``delays`` makes
    the next answers wait that many seconds first (a slow receiver, for the crash tests).
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: a server-side context; the server then speaks HTTPS only."""
        self.tls = tls
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: deque[tuple[int, dict[str, str]]] = deque()
        self.received: list[tuple[dict[str, str], Any]] = []
        self.delays: deque[float] = deque()
        self.default_status = 200
        self._closing = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with server._lock:
                    server.received.append((dict(self.headers.items()), body))
                    delay = server.delays.popleft() if server.delays else 0.0
                if delay and server._closing.wait(delay):
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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}/hook"

    def delivered(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
