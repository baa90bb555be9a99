"""A real HTTP server on localhost that speaks the OpenAI chat-completions protocol, for tests and
benchmarks: the only stand-in for the paid VLM API.

Each test scripts the replies (status, answer text, delay, headers) and afterwards reads what the
server received. Requests are checked the way the real endpoint checks them (a model name, a list of
messages, image parts as base64 data URLs, a known ``response_format``); a malformed request gets a
400 like it would from the real API, so a client bug cannot pass unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.local_http import LocalHttpServer

MAX_BODY_BYTES = 64 << 20


@dataclass
class Reply:
    """One scripted reply. ``content`` is the assistant message; ``status`` != 200 sends an error.

    Misbehaviour, for the failure-mode tests: ``raw_body`` is sent as it is (with ``content_type``)
    instead of a completion, ``drop`` closes the connection without an answer, ``refusal`` answers
    with a refusal and no content, ``choices`` replaces the completion's choices (``[]``: none).
    """

    status: int = 200
    content: str | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 1200
    completion_tokens: int = 300
    raw_body: bytes | None = None
    content_type: str = "application/json"
    drop: bool = False
    refusal: str | None = None
    choices: list[dict[str, Any]] | None = None


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    def images(self) -> list[bytes]:
        """Decoded bytes of every image part, in message order."""
        found = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"]
                        found.append(base64.b64decode(url.split(",", 1)[1]))
        return found

    def texts(self) -> list[str]:
        found = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                found.append(content)
            elif isinstance(content, list):
                found += [p["text"] for p in content if p.get("type") == "text"]
        return found


def request_problem(body: Any) -> str | None:
    """Why the real API would refuse this request body, or None."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty array"
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant", "developer"):
            return f"unknown role {message.get('role')!r}"
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return "content must be a string or an array of parts"
        for part in content:
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image_url":
                url = part.get("image_url", {}).get("url", "")
                if not url.startswith("data:image/") or ";base64," not in url:
                    return "image_url must be a base64 data URL"
                try:
                    base64.b64decode(url.split(",", 1)[1], validate=True)
                except (binascii.Error, ValueError):
                    return "image data is not valid base64"
                continue
            return f"unsupported content part {kind!r}"
    fmt = body.get("response_format")
    if fmt is not None:
        if fmt.get("type") == "json_schema":
            schema = fmt.get("json_schema", {})
            if not isinstance(schema.get("name"), str) or not isinstance(schema.get("schema"), dict):
                return "json_schema needs a name and a schema"
        elif fmt.get("type") not in ("json_object", "text"):
            return f"unknown response_format {fmt.get('type')!r}"
    return None


Responder = Callable[[ReceivedRequest], Reply]


class FakeOpenAIServer(LocalHttpServer):
    """``with FakeOpenAIServer() as server: server.script(Reply(content=...)); ... server.requests``.

    Replies are taken from the script in order; when it is empty, ``responder`` (if set) makes one,
    otherwise the server answers 500. ``supports_json_schema=False`` makes it refuse structured-output
    requests with a 400, as many OpenAI-compatible servers do.
    """

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        supports_json_schema: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a server-side context; the server then speaks HTTPS only."""
        self.responder = responder
        self.supports_json_schema = supports_json_schema
        self.requests: list[ReceivedRequest] = []
        self._script: deque[Reply] = deque()
        super().__init__(self._handler_class(), tls=tls, wait_for_handlers=False)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def chat_requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next_reply(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.popleft()
        if self.responder is not None:
            return self.responder(request)
        return Reply(status=500, content="no scripted reply left")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._send(
                        413, {"error": {"message": "request too large", "type": "invalid_request_error"}}
                    )
                    return
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(
                        400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
                    )
                    return
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                problem = request_problem(body)
                fmt = body.get("response_format") if isinstance(body, dict) else None
                if (
                    problem is None
                    and fmt
                    and fmt.get("type") == "json_schema"
                    and not server.supports_json_schema
                ):
                    problem = "response_format json_schema is not supported by this server"
                request = ReceivedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if problem is not None:
                    with server._lock:
                        server.requests.append(request)
                    self._send(400, {"error": {"message": problem, "type": "invalid_request_error"}})
                    return
                reply = server._next_reply(request)
                if reply.delay_s and server.stopping.wait(reply.delay_s):
                    return
                if reply.drop:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if reply.raw_body is not None:
                    self._send_raw(reply.status, reply.raw_body, reply.content_type, reply.headers)
                    return
                if reply.status != 200:
                    error = {"message": reply.content or f"HTTP {reply.status}", "type": "server_error"}
                    self._send(reply.status, {"error": error}, reply.headers)
                    return
                completion = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": reply.content,
                                "refusal": reply.refusal,
                            },
                            "finish_reason": "stop",
                        }
                    ]
                    if reply.choices is None
                    else reply.choices,
                    "usage": {
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    },
                }
                self._send(200, completion, reply.headers)

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_raw(
                self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

        return Handler
