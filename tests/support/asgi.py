"""One HTTP request straight into an ASGI application (no server, no HTTP client library)."""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode


@dataclass
class AsgiResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


async def request(
    app: Any,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    form: dict[str, str | list[str]] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    client: str = "127.0.0.1",
) -> AsgiResponse:
    """``method path`` against ``app``; ``form`` is sent url-encoded. Streams are read to their end."""
    raw_headers = {"host": "console.test", **(headers or {})}
    if form is not None:
        body = urlencode(form, doseq=True).encode()
        raw_headers.setdefault("content-type", "application/x-www-form-urlencoded")
    if cookies:
        raw_headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(query or {}).encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in raw_headers.items()],
        "client": (client, 50000),
        "server": ("console.test", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body or b"", "more_body": False}

    status = 0
    response_headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers.extend((k.decode(), v.decode()) for k, v in message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    jar: dict[str, str] = {}
    for name, value in response_headers:
        if name == "set-cookie":
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(value)
            jar.update({k: m.value for k, m in parsed.items()})
    return AsgiResponse(status, dict(response_headers), b"".join(chunks), jar)
