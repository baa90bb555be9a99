"""Budget, circuit breaker and rate limit: the cost and load controls on VLM calls."""

import asyncio
from pathlib import Path

import pytest

from services.explainer.controls import (
    BreakerState,
    CircuitBreaker,
    DailyBudget,
    RateLimiter,
    Usage,
    seconds_to_next_day,
)
from shared.settings import ModelPrice


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PRICES = {"vision-1": ModelPrice(input_per_mtok=2.0, output_per_mtok=10.0)}
DEFAULT = ModelPrice(input_per_mtok=5.0, output_per_mtok=15.0)


def test_cost_uses_the_price_table_and_the_default() -> None:
    budget = DailyBudget(1.0, PRICES, DEFAULT, max_output_tokens=500)
    assert budget.cost("vision-1", Usage(1_000_000, 100_000)) == pytest.approx(3.0)
    assert budget.cost("other", Usage(1000, 1000)) == pytest.approx(0.02)


def test_budget_spends_down_estimates_from_real_calls_and_persists(tmp_path: Path) -> None:
    clock = Clock()
    budget = DailyBudget(0.015, PRICES, DEFAULT, max_output_tokens=500, state_dir=tmp_path, clock=clock)
    first_estimate = budget.estimate("vision-1")
    assert first_estimate == pytest.approx((4000 * 2 + 500 * 10) / 1e6)  # pessimistic before any call
    assert budget.can_spend(first_estimate)
    assert budget.charge("vision-1", Usage(2000, 200)) == pytest.approx(0.006)
    assert budget.estimate("vision-1") == pytest.approx(0.006)  # now from real calls
    assert budget.can_spend(budget.estimate("vision-1"))
    budget.charge("vision-1", Usage(2000, 200))
    assert budget.remaining() == pytest.approx(0.003)
    assert not budget.can_spend(budget.estimate("vision-1"))
    # A restart the same day remembers the spending; the next day starts afresh.
    again = DailyBudget(0.015, PRICES, DEFAULT, max_output_tokens=500, state_dir=tmp_path, clock=clock)
    assert again.spent_usd == pytest.approx(0.012) and again.calls == 2
    clock.now += seconds_to_next_day(clock.now) + 1
    assert again.remaining() == pytest.approx(0.015)


def test_zero_budget_allows_nothing(tmp_path: Path) -> None:
    budget = DailyBudget(0.0, PRICES, DEFAULT, max_output_tokens=500, state_dir=tmp_path)
    assert not budget.can_spend(0.0)


def test_corrupt_budget_state_is_a_clear_error(tmp_path: Path) -> None:
    clock = Clock()
    budget = DailyBudget(1.0, PRICES, DEFAULT, max_output_tokens=500, state_dir=tmp_path, clock=clock)
    budget.charge("vision-1", Usage(10, 10))
    next(tmp_path.glob("budget-*.json")).write_text("{nope")
    with pytest.raises(ValueError, match="unreadable"):
        DailyBudget(1.0, PRICES, DEFAULT, max_output_tokens=500, state_dir=tmp_path, clock=clock)


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock(0.0)
    breaker = CircuitBreaker(3, 10.0, clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.now = 10.0
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.record_failure()  # the trial failed: open again
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def test_rate_limiter_spaces_requests() -> None:
    clock = Clock(0.0)
    limiter = RateLimiter(60.0, burst=2, clock=clock)  # one per second, bursts of two
    assert limiter.wait_time() == 0
    limiter._tokens -= 2
    assert limiter.wait_time() == pytest.approx(1.0)
    clock.now = 0.5
    assert limiter.wait_time() == pytest.approx(0.5)
    clock.now = 10.0
    assert limiter.wait_time() == 0 and limiter._tokens == 2  # never more than the burst
    with pytest.raises(ValueError):
        RateLimiter(0)


async def test_rate_limiter_blocks_until_a_token_is_free() -> None:
    limiter = RateLimiter(600.0, burst=1)  # 10 per second
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(4):
        await limiter.acquire()
    assert loop.time() - start >= 0.27  # three waits of ~0.1 s
