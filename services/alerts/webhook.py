"""One HTTP POST of a JSON body to the webhook, classified for the retry loop.

The standard library's client runs in a worker thread: alerts are few, and it keeps the service
free of another HTTP dependency. The URL is a secret for Slack and Teams and is never logged. TLS
is always verified (certificate and host name), against the system CAs or ``CA_FILE``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook answers; it does not redirect. A redirect is refused (an HTTP error), so the body
    never goes anywhere but the configured URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    retryable: bool
    status: int | None  # HTTP status, None when no answer came
    detail: str
    retry_after_s: float | None = None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def post_json(
    url: str,
    body: dict[str, Any],
    timeout_s: float,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> DeliveryResult:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json; charset=utf-8")
    request.add_header("User-Agent", "lineguard-alerts")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context or ssl.create_default_context()), _NoRedirect()
        )
        with opener.open(request, timeout=timeout_s) as response:
            response.read(65536)
            return DeliveryResult(True, False, response.status, "delivered")
    except urllib.error.HTTPError as exc:
        status = exc.code
        return DeliveryResult(
            False, status in _RETRYABLE_STATUS, status, f"HTTP {status}", _retry_after(exc.headers)
        )
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return DeliveryResult(False, True, None, f"no answer: {type(reason).__name__}")
