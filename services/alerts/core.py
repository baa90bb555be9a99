"""The alerts service's logic, without Kafka or HTTP: which alerts to send, when, and as what body.

Which and when: de-duplication, a token-bucket rate limit, digests, retry timing. The clock is
passed in. De-duplication is by (kind, line, station, class) within a window measured on the
alerts' own ``raised_at``, so a replay after a restart decides the same. Alerts over the rate limit
are not dropped: they are held and sent together as one digest as soon as the bucket has a token
again.

As what: webhook bodies in generic JSON, Slack (Block Kit) and Teams (Adaptive Card). Payloads
carry the alert's facts and frame ids, never images or the webhook URL.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from services.alerts import metrics
from services.alerts.ledger import DedupKey, dedup_key
from shared.messages.schemas import AlertEvent
from shared.settings import Settings, WebhookFormat, config_error

_NS_PER_S = 1_000_000_000
_ICONS = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}
_MAX_FRAMES_SHOWN = 5


def webhook_url(settings: Settings) -> str | None:
    """The configured URL (from the variable or the secret file), checked but never echoed.

    None when there is none: unset, empty, or a secret file that is missing or empty (a compose
    deployment mounts an empty file when no webhook is wanted). The service then runs without a
    webhook. A URL that is there but not http(s) is a configuration error."""
    cfg = settings.alerts
    url = (cfg.webhook_url or "").strip()
    if not url and cfg.webhook_url_file is not None:
        try:
            url = cfg.webhook_url_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            url = ""
        except OSError as exc:
            raise config_error(f"LINEGUARD_ALERTS__WEBHOOK_URL_FILE: cannot read: {exc.strerror}") from None
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise config_error("LINEGUARD_ALERTS__WEBHOOK_URL: must be an http(s) URL")
    return url


class Admission(StrEnum):
    SEND = "send"
    DUPLICATE = "duplicate"
    HELD = "held"  # over the rate limit: goes out in the next digest
    RESEND = "resend"  # was being sent when the process died: again, with the same idempotency key


class TokenBucket:
    def __init__(self, per_minute: float, burst: int, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until a token is available."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


class Forwarder:
    """De-duplication window and rate limit. What was delivered before a restart is in the
    delivery ledger; ``remember`` seeds the window from it so a replay decides the same."""

    def __init__(
        self, dedup_window_s: float, per_minute: float, burst: int, now: float, *, max_keys: int = 100_000
    ) -> None:
        self.dedup_window_ns = int(dedup_window_s * _NS_PER_S)
        self.bucket = TokenBucket(per_minute, burst, now)
        self.held: list[AlertEvent] = []
        self.max_keys = max_keys
        self._last_sent: dict[DedupKey, int] = {}  # keyed by wire values: capped at max_keys

    def remember(self, key: DedupKey, raised_at: int) -> None:
        """An alert with ``key`` raised at ``raised_at`` was sent (oldest keys go past the cap)."""
        if raised_at >= self._last_sent.get(key, -1):
            self._last_sent.pop(key, None)
            self._last_sent[key] = raised_at
        while len(self._last_sent) > self.max_keys:
            del self._last_sent[next(iter(self._last_sent))]
            metrics.EVICTIONS.labels("dedup").inc()

    def admit(self, alert: AlertEvent, now: float) -> Admission:
        key = dedup_key(alert)
        last = self._last_sent.get(key)
        held_already = any(h.alert_id == alert.alert_id for h in self.held)
        if held_already or (last is not None and 0 <= alert.raised_at - last < self.dedup_window_ns):
            return Admission.DUPLICATE
        self.remember(key, alert.raised_at)
        if not self.held and self.bucket.take(now):
            return Admission.SEND
        self.held.append(alert)
        return Admission.HELD

    def digest_wait_s(self, now: float) -> float | None:
        """None when nothing is held, else seconds until the digest may go."""
        return None if not self.held else self.bucket.wait_s(now)

    def take_digest(self, now: float) -> list[AlertEvent]:
        if not self.held or not self.bucket.take(now):
            return []
        digest, self.held = self.held, []
        return digest


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    give_up_after_s: float

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Exponential backoff (attempt 1, 2, ...), at least what the server asked for, at most max_s."""
        backoff = min(self.max_s, self.initial_s * 2 ** (attempt - 1))
        if retry_after_s is not None:
            backoff = max(backoff, min(retry_after_s, self.max_s))
        return backoff


# ---- webhook bodies ------------------------------------------------------------------------


def headline(alert: AlertEvent) -> str:
    return f"[{alert.severity.upper()}] {alert.summary}"


def log_fields(alert: AlertEvent) -> dict[str, Any]:
    """The alert as the fields of its log line: the delivery when no webhook is configured. Its
    frames by count (the ids are on the ``alerts`` topic), its details left out."""
    return {
        "alert_id": alert.alert_id,
        "kind": alert.kind,
        "severity": alert.severity,
        "line_id": alert.line_id,
        "station_id": alert.station_id,
        "product_class": alert.product_class,
        "summary": alert.summary,
        "frames": len(alert.frame_ids),
    }


def _facts(alert: AlertEvent) -> list[tuple[str, str]]:
    facts = [("kind", alert.kind), ("line", alert.line_id), ("station", alert.station_id)]
    if alert.product_class:
        facts.append(("class", alert.product_class))
    facts += sorted(alert.details.items())
    if alert.frame_ids:
        shown = ", ".join(alert.frame_ids[-_MAX_FRAMES_SHOWN:])
        more = len(alert.frame_ids) - _MAX_FRAMES_SHOWN
        facts.append(("frames", shown + (f" (+{more} more)" if more > 0 else "")))
    return facts


def digest_text(alerts: list[AlertEvent]) -> str:
    return f"{len(alerts)} alerts held back by the rate limit:\n" + "\n".join(
        f"- {headline(a)}" for a in alerts
    )


def payload(alerts: list[AlertEvent], fmt: WebhookFormat) -> dict[str, Any]:
    """One alert, or a digest of several that the rate limit held back."""
    if not alerts:
        raise ValueError("no alerts to send")
    single = len(alerts) == 1
    text = headline(alerts[0]) if single else digest_text(alerts)
    if fmt is WebhookFormat.SLACK:
        return _slack(alerts, text, single)
    if fmt is WebhookFormat.TEAMS:
        return _teams(alerts, text, single)
    body: dict[str, Any] = {"source": "lineguard", "text": text}
    if single:
        body["alert"] = dataclasses.asdict(alerts[0])
    else:
        body["digest"] = [dataclasses.asdict(a) for a in alerts]
    return body


def _slack(alerts: list[AlertEvent], text: str, single: bool) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    for alert in alerts if single else alerts[:20]:  # Slack caps a message at 50 blocks
        facts = "\n".join(f"*{k}*: {v}" for k, v in _facts(alert))
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"{_ICONS[alert.severity]} {headline(alert)}"},
            }
        )
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": facts}})
    if not single and len(alerts) > 20:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"+{len(alerts) - 20} more"}]}
        )
    return {"text": text, "blocks": blocks}


def _teams(alerts: list[AlertEvent], text: str, single: bool) -> dict[str, Any]:
    body: list[dict[str, Any]] = []
    for alert in alerts if single else alerts[:20]:
        body.append(
            {
                "type": "TextBlock",
                "text": headline(alert),
                "weight": "Bolder",
                "wrap": True,
                "color": "Attention" if alert.severity == "critical" else "Warning",
            }
        )
        body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(alert)]})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
        "fallbackText": text,
    }
    return {
        "type": "message",
        "summary": text.splitlines()[0],
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }
