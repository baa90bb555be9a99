"""Step three of an event's path: the VLM's answer, from an OpenAI-compatible chat-completions
endpoint, with the cost and load controls.

Retries (429, 5xx, timeouts, connection errors; exponential backoff with jitter, honouring
Retry-After) are done here rather than by the openai client so that each attempt passes the rate
limit and the circuit breaker and is counted. A 400 to a structured-output request downgrades to
JSON mode once per client: many compatible servers do not implement ``json_schema``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from services.explainer import metrics
from services.explainer.answer import (
    AnswerError,
    Message,
    VlmAnswer,
    follow_up_messages,
    parse_answer,
    repair_messages,
    response_format,
)
from services.explainer.controls import INITIAL_PROMPT_TOKENS, CircuitBreaker, DailyBudget, RateLimiter, Usage
from services.explainer.prompt import Prompt
from shared.errors import ConfigError, LineguardError
from shared.settings import ExplainerSettings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.explainer.vlm")


class VlmFailure(LineguardError):
    """No usable answer. ``later``: the endpoint is down or busy, so the same call may work later
    (hold policy applies); otherwise the failure is final for this event (fallback report).
    ``kind`` (also the ``reason``): endpoint_down, rejected or invalid_answer."""

    def __init__(self, kind: str, detail: str, *, later: bool) -> None:
        super().__init__(f"{kind}: {detail}", reason=kind)
        self.kind = kind
        self.detail = detail
        self.later = later
        self.exchange: VlmExchange | None = None  # what was spent before failing


class _StructuredRejected(LineguardError):
    """The endpoint refused a structured-output request (400/422): retry it in JSON mode."""

    default_reason = "structured_outputs_unsupported"


@dataclass
class VlmExchange:
    answer: VlmAnswer | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    calls: int = 0
    repaired: bool = False
    follow_up: bool = False
    structured: bool = True


def resolve_api_key(settings: ExplainerSettings, environ: dict[str, str] | None = None) -> str | None:
    """The key from the settings, else the secret file, else the provider's usual variable."""
    env = os.environ if environ is None else environ
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    if settings.api_key_file is not None:
        path = Path(settings.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"the API key file {path} is empty")
        return key
    name = "AZURE_OPENAI_API_KEY" if settings.provider == "azure" else "OPENAI_API_KEY"
    return env.get(name) or None


def make_openai_client(settings: ExplainerSettings) -> openai.AsyncOpenAI | None:
    """The async client, or None when no endpoint is configured (fallback reports only).

    The key is read only for an endpoint: without one an empty or absent key secret is fine."""
    common: dict[str, Any] = {"timeout": settings.request_timeout_s, "max_retries": 0}
    if settings.provider == "azure":
        if not settings.azure_endpoint:
            return None
        key = resolve_api_key(settings)
        if key is None:
            raise ConfigError(
                "Azure provider needs an API key (LINEGUARD_EXPLAINER__API_KEY[_FILE] or "
                "AZURE_OPENAI_API_KEY)"
            )
        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.azure_endpoint,
            api_version=settings.azure_api_version,
            api_key=key,
            **common,
        )
    if not settings.base_url:
        return None
    key = resolve_api_key(settings)
    # Local servers (vLLM, Ollama) ignore the key, but the client insists on having one.
    return openai.AsyncOpenAI(base_url=settings.base_url, api_key=key or "no-key", **common)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class VlmClient:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        settings: ExplainerSettings,
        *,
        budget: DailyBudget,
        breaker: CircuitBreaker,
        limiter: RateLimiter,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.settings = settings
        self.model = settings.model
        self.budget = budget
        self.breaker = breaker
        self.limiter = limiter
        self.sleep = sleep
        self.structured_supported = settings.structured_outputs

    def _backoff(self, attempt: int, hint: float | None) -> float:
        delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt)
        delay *= 0.5 + random.random() / 2
        if hint is not None:
            delay = max(delay, hint)
        return min(delay, self.settings.backoff_max_s)

    def _charge(self, exchange: VlmExchange, usage: Usage) -> None:
        cost = self.budget.charge(self.model, usage)
        exchange.usage = exchange.usage + usage
        exchange.cost_usd += cost
        exchange.calls += 1
        metrics.VLM_TOKENS.labels("prompt").inc(usage.prompt_tokens)
        metrics.VLM_TOKENS.labels("completion").inc(usage.completion_tokens)
        metrics.VLM_COST.inc(cost)
        metrics.BUDGET_REMAINING.set(self.budget.remaining())

    async def _call(self, messages: list[Message], structured: bool, exchange: VlmExchange) -> str:
        """One logical request, retried on transient errors. Returns the answer text."""
        detail = "no attempt made"
        for attempt in range(self.settings.max_attempts):
            if not self.breaker.allow():
                raise VlmFailure("endpoint_down", f"circuit open ({detail})", later=True)
            await self.limiter.acquire()
            started = time.monotonic()
            hint: float | None = None
            try:
                # Messages are built as plain dicts; the client's TypedDicts describe the same JSON.
                create: Any = self.client.chat.completions.create
                response: ChatCompletion = await create(
                    model=self.model,
                    messages=messages,
                    response_format=response_format(structured),
                    max_tokens=self.settings.max_output_tokens,
                    temperature=self.settings.temperature,
                    timeout=self.settings.request_timeout_s,
                )
            except openai.APITimeoutError:
                outcome, detail = "timeout", f"no answer within {self.settings.request_timeout_s:g} s"
            except openai.APIConnectionError as exc:
                outcome, detail = "connection_error", type(exc).__name__
            except openai.RateLimitError as exc:
                outcome, detail, hint = "rate_limited", "HTTP 429", _retry_after(exc)
            except openai.APIStatusError as exc:
                if exc.status_code >= 500 or exc.status_code == 408:
                    outcome, detail, hint = "server_error", f"HTTP {exc.status_code}", _retry_after(exc)
                else:
                    self.breaker.record_success()  # the endpoint answered; the request was refused
                    metrics.VLM_REQUESTS.labels("rejected").inc()
                    metrics.VLM_LATENCY.observe(time.monotonic() - started)
                    if structured and exc.status_code in (400, 422):
                        raise _StructuredRejected() from None
                    raise VlmFailure("rejected", f"HTTP {exc.status_code}", later=False) from None
            else:
                self.breaker.record_success()
                metrics.BREAKER_OPEN.set(0)
                metrics.VLM_REQUESTS.labels("ok").inc()
                metrics.VLM_LATENCY.observe(time.monotonic() - started)
                usage = response.usage
                if usage is None:  # not reported: charge the pessimistic estimate
                    self._charge(exchange, Usage(INITIAL_PROMPT_TOKENS, self.settings.max_output_tokens))
                else:
                    self._charge(exchange, Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0))
                if not response.choices:
                    return ""
                return response.choices[0].message.content or ""
            self.breaker.record_failure()
            metrics.VLM_REQUESTS.labels(outcome).inc()
            metrics.VLM_LATENCY.observe(time.monotonic() - started)
            metrics.BREAKER_OPEN.set(0 if self.breaker.state == "closed" else 1)
            log_event(
                log,
                "vlm_attempt_failed",
                logging.WARNING,
                attempt=attempt + 1,
                outcome=outcome,
                detail=detail,
            )
            if attempt + 1 < self.settings.max_attempts:
                await self.sleep(self._backoff(attempt, hint))
        raise VlmFailure("endpoint_down", f"{detail} after {self.settings.max_attempts} attempts", later=True)

    def can_afford_a_call(self) -> bool:
        """Does what is left of today's budget cover one more call at its expected cost?"""
        return self.budget.can_spend(self.budget.estimate(self.model))

    async def explain(self, prompt: Prompt) -> VlmExchange:
        """Ask, repair once if the answer is invalid, and follow up once if confidence is low."""
        exchange = VlmExchange(structured=self.structured_supported)
        try:
            return await self._explain(exchange, prompt)
        except VlmFailure as failure:
            failure.exchange = exchange
            raise

    async def _explain(self, exchange: VlmExchange, prompt: Prompt) -> VlmExchange:
        messages = prompt.structured if exchange.structured else prompt.json_mode
        try:
            text = await self._call(messages, exchange.structured, exchange)
        except _StructuredRejected:
            log_event(log, "structured_outputs_unsupported", logging.WARNING, model=self.model)
            self.structured_supported = exchange.structured = False
            messages = prompt.json_mode
            try:
                text = await self._call(messages, False, exchange)
            except _StructuredRejected:  # cannot happen with structured=False; keeps mypy honest
                raise VlmFailure("rejected", "HTTP 400", later=False) from None
        try:
            answer = parse_answer(text)
        except AnswerError as first:
            if not self.can_afford_a_call():
                raise VlmFailure(
                    "invalid_answer", f"{first.detail}; no budget left to repair", later=False
                ) from None
            metrics.REPAIRS.inc()
            repaired_text = await self._call_final(repair_messages(messages, text, first.detail), exchange)
            try:
                answer = parse_answer(repaired_text)
            except AnswerError as second:
                raise VlmFailure("invalid_answer", second.detail, later=False) from None
            exchange.repaired = True
            text = repaired_text
        exchange.answer = answer
        threshold = self.settings.follow_up_below
        if answer.confidence < threshold and self.can_afford_a_call():
            try:
                again = await self._call_final(
                    follow_up_messages(
                        messages, answer.model_dump_json(), answer.confidence, prompt.top_position
                    ),
                    exchange,
                )
                exchange.answer = parse_answer(again)
                exchange.follow_up = True
            except (AnswerError, VlmFailure) as exc:  # optional: the first answer stands
                log_event(log, "follow_up_failed", logging.WARNING, detail=str(exc)[:200])
        return exchange

    async def _call_final(self, messages: list[Message], exchange: VlmExchange) -> str:
        try:
            return await self._call(messages, exchange.structured, exchange)
        except _StructuredRejected:
            raise VlmFailure("rejected", "HTTP 400 on a follow-up request", later=False) from None
