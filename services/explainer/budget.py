"""The daily spending budget, from token usage and a price table.

Spending is kept per UTC day in a small JSON file next to the reports, so a restart does not
forget what today already cost. Before a call, the explainer asks whether an estimated call still
fits; after it, the real usage is charged (repairs and follow-ups included).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
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


class DailyBudget:
    def __init__(
        self,
        limit_usd: float,
        prices: dict[str, ModelPrice],
        default_price: ModelPrice,
        *,
        max_output_tokens: int,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit_usd = limit_usd
        self.prices = prices
        self.default_price = default_price
        self.max_output_tokens = max_output_tokens
        self.state_dir = state_dir
        self.clock = clock
        self._day = ""
        self.spent_usd = 0.0
        self.calls = 0
        self.usage = Usage()
        self._recent_costs: list[float] = []
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
