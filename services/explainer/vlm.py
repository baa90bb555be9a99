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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
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
from services.explainer.i18n import LANGUAGE_NAMES
from services.explainer.prompt import Prompt
from shared.errors import ConfigError, LineguardError
from shared.settings import ExplainerSettings
from shared.telemetry.logging import log_event
from shared.tls import client_context

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
    if settings.api_key is not None and settings.api_key.get_secret_value().strip():
        return settings.api_key.get_secret_value().strip()
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


class ResponseTooLarge(LineguardError):
    """The endpoint's answer is over ``max_response_bytes``: refused before it is read whole."""

    default_reason = "response_too_large"


class _BoundedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.limit:
                raise ResponseTooLarge(f"answer over {self.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class BoundedTransport(httpx2.AsyncBaseTransport):
    """The HTTP transport with a cap on the response body: a declared length over the cap is
    refused at once, an undeclared one as soon as it passes the cap. Memory stays bounded however
    much a misbehaving endpoint sends."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await response.aclose()
            raise ResponseTooLarge(f"answer of {declared} bytes, over {self.limit}")
        response.stream = _BoundedStream(response.stream, self.limit)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def http_client(settings: ExplainerSettings) -> httpx2.AsyncClient:
    """The HTTP client under the openai client: verified TLS, bounded answers, no redirects (a
    compatible endpoint never redirects a completion; a redirect is a misconfiguration)."""
    transport = BoundedTransport(
        httpx2.AsyncHTTPTransport(verify=client_context(settings.ca_file, "LINEGUARD_EXPLAINER__CA_FILE")),
        settings.max_response_bytes,
    )
    return openai.DefaultAsyncHttpxClient(transport=transport, follow_redirects=False)


def make_openai_client(settings: ExplainerSettings) -> openai.AsyncOpenAI | None:
    """The async client, or None when no endpoint is configured (fallback reports only).

    A missing or empty optional secret (no key file, an empty one, Azure without a key) is not a
    reason to stop: the explainer runs in its fallback mode and says why, once, at start."""
    try:
        key = resolve_api_key(settings)
    except ConfigError as exc:
        if not settings.base_url and not settings.azure_endpoint:
            return None  # no endpoint either: the plain offline mode
        log_event(log, "vlm_disabled", logging.WARNING, reason="api_key_unusable", detail=str(exc))
        return None
    common: dict[str, Any] = {
        "timeout": settings.request_timeout_s,
        "max_retries": 0,
        "http_client": http_client(settings),
    }
    if settings.provider == "azure":
        if not settings.azure_endpoint:
            return None
        if key is None:
            log_event(
                log,
                "vlm_disabled",
                logging.WARNING,
                reason="no_api_key",
                detail="Azure needs an API key (LINEGUARD_EXPLAINER__API_KEY[_FILE] or AZURE_OPENAI_API_KEY)",
            )
            return None
        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.azure_endpoint,
            api_version=settings.azure_api_version,
            api_key=key,
            **common,
        )
    if not settings.base_url:
        return None
    # Local servers (vLLM, Ollama) ignore the key, but the client insists on having one.
    return openai.AsyncOpenAI(base_url=settings.base_url, api_key=key or "no-key", **common)


class BadCompletion(LineguardError):
    """An HTTP 200 whose body is not a usable chat completion (not JSON, not a completion, no
    choice, no message): the endpoint misbehaved, like a 5xx."""

    default_reason = "bad_response"


@dataclass(frozen=True)
class _Completion:
    usage: Usage | None  # None: not reported
    content: str | None
    refusal: str | None


def read_completion(response: object) -> _Completion:
    """What a completion says, checked field by field: the client builds its objects without
    validating them, so any shape can arrive here. Raises ``BadCompletion``."""
    if not isinstance(response, ChatCompletion):
        raise BadCompletion(f"not a chat completion ({type(response).__name__})")
    raw_usage = getattr(response, "usage", None)
    usage = None
    if raw_usage is not None:
        prompt, completion = (
            getattr(raw_usage, "prompt_tokens", 0),
            getattr(raw_usage, "completion_tokens", 0),
        )
        if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
            raise BadCompletion("usage is not two token counts")
        usage = Usage(prompt, completion)
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise BadCompletion("no choices")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise BadCompletion("a choice without a message")
    content, refusal = getattr(message, "content", None), getattr(message, "refusal", None)
    if getattr(choices[0], "finish_reason", None) == "content_filter" and not refusal:
        refusal = "content_filter"
    if content is not None and not isinstance(content, str):
        raise BadCompletion("message content is not text")
    if refusal is not None and not isinstance(refusal, str):
        raise BadCompletion("refusal is not text")
    if content is None and not refusal:
        raise BadCompletion("a message with neither content nor refusal")
    return _Completion(usage, content, refusal or None)


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
        """One logical request, retried on transient errors. Returns the answer text.

        Every attempt ends in exactly one of: success, a counted failure (retried), a final
        refusal, or cancellation; each settles the breaker's permit (``finally``), is metered by
        outcome and has its latency observed."""
        detail = "no attempt made"
        for attempt in range(self.settings.max_attempts):
            await self.limiter.acquire()  # first: a permit covers the request alone
            permit = self.breaker.allow()
            if permit is None:
                metrics.BREAKER_OPEN.set(1)
                raise VlmFailure("endpoint_down", f"circuit open ({detail})", later=True)
            settled = False
            try:
                started = time.monotonic()
                outcome, detail, hint = await self._attempt(messages, structured, exchange)
                settled = True
                if outcome == "ok":
                    return detail  # the answer text
                self.breaker.record_failure()
                self._meter(outcome, started)
            finally:
                if not settled:
                    self.breaker.abandon(permit)
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

    def _meter(self, outcome: str, started: float) -> None:
        metrics.VLM_REQUESTS.labels(outcome).inc()
        metrics.VLM_LATENCY.observe(time.monotonic() - started)
        metrics.BREAKER_OPEN.set(1 if self.breaker.is_open else 0)

    async def _attempt(
        self, messages: list[Message], structured: bool, exchange: VlmExchange
    ) -> tuple[str, str, float | None]:
        """One HTTP request: ``("ok", answer text, None)`` or ``(failure outcome, detail, Retry-After)``.
        A refusal or a client error is final and raised (after settling the breaker: the endpoint
        is up)."""
        started = time.monotonic()
        try:
            # Messages are built as plain dicts; the client's TypedDicts describe the same JSON.
            create: Any = self.client.chat.completions.create
            response = await create(
                model=self.model,
                messages=messages,
                response_format=response_format(structured),
                max_tokens=self.settings.max_output_tokens,
                temperature=self.settings.temperature,
                timeout=self.settings.request_timeout_s,
            )
            completion = read_completion(response)
        except openai.APITimeoutError:
            return "timeout", f"no answer within {self.settings.request_timeout_s:g} s", None
        except openai.APIConnectionError as exc:
            return "connection_error", type(exc.__cause__ or exc).__name__, None
        except openai.RateLimitError as exc:
            return "rate_limited", "HTTP 429", _retry_after(exc)
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code == 408:
                return "server_error", f"HTTP {exc.status_code}", _retry_after(exc)
            self.breaker.record_success()  # the endpoint answered; the request was refused
            self._meter("rejected", started)
            if structured and exc.status_code in (400, 422):
                raise _StructuredRejected() from None
            raise VlmFailure("rejected", f"HTTP {exc.status_code}", later=False) from None
        except Exception as exc:
            # A 200 that is not a completion: not JSON, truncated, another shape, no choice, too
            # big. Never let it escape uncounted: it is a failure like a 5xx (issue 9).
            detail = str(exc) if isinstance(exc, LineguardError) else type(exc).__name__
            return "bad_response", detail[:200], None
        self.breaker.record_success()
        # Charged as reported, else at the pessimistic estimate: the call was made.
        usage = completion.usage or Usage(INITIAL_PROMPT_TOKENS, self.settings.max_output_tokens)
        self._charge(exchange, usage)
        if completion.refusal is not None:
            self._meter("refused", started)
            raise VlmFailure("refused", completion.refusal[:200], later=False)
        self._meter("ok", started)
        return "ok", completion.content or "", None

    def can_afford_a_call(self) -> bool:
        """Does what is left of today's budget cover one more call at its expected cost?"""
        return self.budget.can_spend(self.budget.estimate(self.model))

    async def explain(self, prompt: Prompt, exchange: VlmExchange | None = None) -> VlmExchange:
        """Ask, repair once if the answer is invalid, and follow up once if confidence is low.
        ``exchange`` (filled as it goes) keeps what was spent even if the caller cancels."""
        if exchange is None:
            exchange = VlmExchange()
        exchange.structured = self.structured_supported
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
            note = f"Keep all free text in {LANGUAGE_NAMES[self.settings.language]}."
            repaired_text = await self._call_final(repair_messages(note, text, first.detail), exchange)
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
