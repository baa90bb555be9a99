"""Which alerts to send and when: de-duplication, a token-bucket rate limit, digests, retry timing.

Pure logic; the clock is passed in. De-duplication is by (kind, line, station, class) within a
window measured on the alerts' own ``raised_at``, so a replay after a restart decides the same.
Alerts over the rate limit are not dropped: they are held and sent together as one digest as soon
as the bucket has a token again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.messages.schemas import AlertEvent

_NS_PER_S = 1_000_000_000


class Admission(StrEnum):
    SEND = "send"
    DUPLICATE = "duplicate"
    HELD = "held"  # over the rate limit: goes out in the next digest


def dedup_key(alert: AlertEvent) -> tuple[str, str, str, str]:
    return (alert.kind, alert.line_id, alert.station_id, alert.product_class)


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
    def __init__(self, dedup_window_s: float, per_minute: float, burst: int, now: float) -> None:
        self.dedup_window_ns = int(dedup_window_s * _NS_PER_S)
        self.bucket = TokenBucket(per_minute, burst, now)
        self.held: list[AlertEvent] = []
        self._last_sent: dict[tuple[str, str, str, str], int] = {}
        self._ids: dict[str, None] = {}  # alert ids already admitted (re-deliveries)

    def admit(self, alert: AlertEvent, now: float) -> Admission:
        key = dedup_key(alert)
        last = self._last_sent.get(key)
        if alert.alert_id in self._ids or (
            last is not None and 0 <= alert.raised_at - last < self.dedup_window_ns
        ):
            return Admission.DUPLICATE
        self._last_sent[key] = alert.raised_at
        self._ids[alert.alert_id] = None
        if len(self._ids) > 100_000:
            del self._ids[next(iter(self._ids))]
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
