"""A circuit breaker for the VLM endpoint: after enough consecutive failures, stop calling for a
while, then let a single trial call through; its result closes or re-opens the circuit."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from shared.errors import ConfigError


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, failure_threshold: int, reset_after_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial at a time."""
        if self.state is BreakerState.OPEN and self.clock() - self._opened_at >= self.reset_after_s:
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

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
