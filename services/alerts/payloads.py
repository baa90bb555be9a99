"""Webhook bodies for operator alerts: generic JSON, Slack (Block Kit) and Teams (Adaptive Card).

Payloads carry the alert's facts and frame ids, never images or the webhook URL.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.messages.schemas import AlertEvent
from shared.settings import WebhookFormat

_ICONS = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}
_MAX_FRAMES_SHOWN = 5


def headline(alert: AlertEvent) -> str:
    return f"[{alert.severity.upper()}] {alert.summary}"


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
