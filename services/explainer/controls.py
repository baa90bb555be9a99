"""The cost and load controls on VLM calls: the daily budget, the circuit breaker and the rate
limit. Plain classes with an injectable clock; ``vlm.VlmClient`` applies them to every attempt.

Budget: spending is kept per UTC day in a small JSON file next to the reports, so a restart does
not forget what today already cost. Before a call, the explainer asks whether an estimated call
still fits; after it, the real usage is charged (repairs and follow-ups included).

Breaker: after enough consecutive failures, stop calling for a while, then let a single trial call
through; its result closes or re-opens the circuit.

Rate limit: a token bucket shared by all concurrent VLM calls of one process.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from enum import StrEnum
from pathlib import Path

from shared.errors import ConfigError
from shared.settings import ModelPrice

# Until real calls have been seen, a call is assumed to cost this many tokens (three images,
# the grounding text, the schema and a full answer): deliberately on the high side.
INITIAL_PROMPT_TOKENS = 4000


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens
        )


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def seconds_to_next_day(now: float) -> float:
    return 86400.0 - (now % 86400.0)


@dataclass(eq=False)
class DailyBudget:
    """Today's VLM spending against ``limit_usd`` (UTC days; kept in ``state_dir`` when given)."""

    limit_usd: float
    prices: dict[str, ModelPrice]
    default_price: ModelPrice
    _: KW_ONLY
    max_output_tokens: int
    state_dir: Path | None = None
    clock: Callable[[], float] = time.time
    spent_usd: float = field(default=0.0, init=False)
    calls: int = field(default=0, init=False)
    usage: Usage = field(default_factory=Usage, init=False)
    _day: str = field(default="", init=False)
    _recent_costs: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._roll()

    def price(self, model: str) -> ModelPrice:
        return self.prices.get(model, self.default_price)

    def cost(self, model: str, usage: Usage) -> float:
        price = self.price(model)
        return (
            usage.prompt_tokens * price.input_per_mtok + usage.completion_tokens * price.output_per_mtok
        ) / 1e6

    def estimate(self, model: str) -> float:
        """Expected cost of the next call: the largest of the recent real costs, or a pessimistic
        guess before any call has been made."""
        if self._recent_costs:
            return max(self._recent_costs)
        return self.cost(model, Usage(INITIAL_PROMPT_TOKENS, self.max_output_tokens))

    def remaining(self) -> float:
        self._roll()
        return max(0.0, self.limit_usd - self.spent_usd)

    def can_spend(self, amount: float) -> bool:
        return self.remaining() >= amount and self.remaining() > 0

    def charge(self, model: str, usage: Usage) -> float:
        self._roll()
        cost = self.cost(model, usage)
        self.spent_usd += cost
        self.calls += 1
        self.usage = self.usage + usage
        self._recent_costs = [*self._recent_costs[-19:], cost]
        self._save()
        return cost

    def seconds_until_reset(self) -> float:
        return seconds_to_next_day(self.clock())

    def _path(self, day: str) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"budget-{day}.json"

    def _roll(self) -> None:
        day = utc_day(self.clock())
        if day == self._day:
            return
        self._day, self.spent_usd, self.calls, self.usage = day, 0.0, 0, Usage()
        path = self._path(day)
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                self.spent_usd = float(data["spent_usd"])
                self.calls = int(data["calls"])
                self.usage = Usage(int(data["prompt_tokens"]), int(data["completion_tokens"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"budget state {path} is unreadable ({exc}); fix or remove it") from None

    def _save(self) -> None:
        path = self._path(self._day)
        if path is None:
            return
        data = {
            "day": self._day,
            "spent_usd": self.spent_usd,
            "calls": self.calls,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Permit:
    """Leave for one attempt. ``trial``: it is the half-open trial, whose outcome decides."""

    trial: bool = False


class CircuitBreaker:
    """After ``failure_threshold`` consecutive failures, no calls for ``reset_after_s``; then one
    trial. Every permit ends in ``record_success``, ``record_failure`` or ``abandon`` (the caller
    guarantees it with ``finally``), and a trial that has not ended after ``trial_timeout_s``
    counts as failed: the breaker never stays half-open with nobody trying."""

    def __init__(
        self,
        failure_threshold: int,
        reset_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        trial_timeout_s: float = math.inf,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.trial_timeout_s = trial_timeout_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._trial_started = 0.0

    def allow(self) -> Permit | None:
        """A permit if a call may go out now, else None. In half-open state one trial at a time."""
        now = self.clock()
        if self.state is BreakerState.OPEN and now - self._opened_at >= self.reset_after_s:
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if (
            self.state is BreakerState.HALF_OPEN
            and self._trial_in_flight
            and now - self._trial_started > self.trial_timeout_s
        ):
            self.record_failure()  # a trial that never ended: count it failed, wait again
            return None
        if self.state is BreakerState.CLOSED:
            return Permit()
        if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            self._trial_started = now
            return Permit(trial=True)
        return None

    def retry_after(self) -> float:
        if self.state is BreakerState.OPEN:
            return max(0.0, self.reset_after_s - (self.clock() - self._opened_at))
        return 0.0

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.failures += 1
        self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self.clock()

    def abandon(self, permit: Permit) -> None:
        """The attempt ended with no verdict on the endpoint (cancelled): a trial's turn passes on."""
        if permit.trial and self.state is BreakerState.HALF_OPEN:
            self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self.state is not BreakerState.CLOSED


class RateLimiter:
    def __init__(
        self, per_minute: float, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ConfigError("per_minute must be positive and burst at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        async with self._lock:  # first come, first served
            while (delay := self.wait_time()) > 0:
                await asyncio.sleep(delay)
            self._tokens -= 1
